#!/usr/bin/env bash
# Start the local PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) when they are down, and install Debian's
# chromium when it is missing (the browser tests drive it with Playwright; Playwright's own browser download cannot
# reach its servers here). Used by .ci/run and by tests/e2e; idempotent, never restarts a running service.
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

install_browser() {
  if ! command -v chromium >/dev/null 2>&1; then
    echo "installing chromium (browser tests)"
    if [ "$(id -u)" -ne 0 ]; then
      echo "not root: install it with 'sudo apt-get install -y chromium'"
      return 0
    fi
    apt-get install -y -q chromium >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } ||
      echo "chromium could not be installed: the browser tests will fail in CI"
  fi
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  start_services
  install_browser
fi
