#!/usr/bin/env bash
# Entry point of both images. Two jobs before handing over to the official Airflow entrypoint:
# - write the simple auth manager's passwords file from AIRFLOW_ADMIN_USER/AIRFLOW_ADMIN_PASSWORD, so the login of
#   the UI and of the REST API (/auth/token) is the one in .env instead of a random one printed once in a log;
# - run the non-Airflow programs of this image (the MLflow server, the bucket job, the dealrec CLI) directly: the
#   official entrypoint would wait for the Airflow database and run anything else as `airflow <args>` (so
#   `celery worker -q gpu` is `airflow celery worker -q gpu`).
set -euo pipefail

if [[ -n "${AIRFLOW_ADMIN_PASSWORD:-}" ]]; then
  passwords_file="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-${AIRFLOW_HOME:-/opt/airflow}/simple_auth_manager_passwords.json.generated}"
  python - "${passwords_file}" <<'PY'
import json, os, sys
path = sys.argv[1]
os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
tmp = path + ".tmp"
with open(tmp, "w") as f:
    json.dump({os.environ.get("AIRFLOW_ADMIN_USER", "admin"): os.environ["AIRFLOW_ADMIN_PASSWORD"]}, f)
os.replace(tmp, path)
PY
fi

case "${1:-}" in
  mlflow | dealrec | python)
    exec "$@"
    ;;
  *)
    exec /entrypoint "$@"
    ;;
esac
