#!/usr/bin/env bash
# Start the local PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) when they are down. Used by .ci/run and
# by tests/e2e (which stand the Celery topology up on them); idempotent, never restarts a running service.
start_services() {
  if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    echo "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    echo "starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
  fi
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  start_services
fi
