#!/usr/bin/env bash
# Entry point of both images. Three jobs before handing over to the official Airflow entrypoint:
# - refuse to start when a secret this service holds (DEALREC_REQUIRED_SECRETS, set per service in
#   docker-compose.yaml) is unset, empty, still .env.example's `change-me`, or not valid (check_secrets.py);
# - write MLflow's basic-auth ini (it holds the database password) readable by its owner only;
# - run the non-Airflow programs of this image (the MLflow server, the bucket job, the dealrec CLI) directly: the
#   official entrypoint would wait for the Airflow database and run anything else as `airflow <args>` (so
#   `celery worker -q gpu` is `airflow celery worker -q gpu`).
set -euo pipefail

here="$(dirname "$(readlink -f "$0")")"
python "${here}/check_secrets.py"

# MLflow's basic-auth app reads its settings from an ini file, which cannot read the environment: write it from
# the environment (the admin login itself MLflow reads from MLFLOW_AUTH_ADMIN_USERNAME/PASSWORD directly).
if [[ -n "${MLFLOW_AUTH_CONFIG_PATH:-}" && -n "${MLFLOW_AUTH_DATABASE_URI:-}" ]]; then
  python - "${MLFLOW_AUTH_CONFIG_PATH}" <<'PY'
import configparser, os, sys
path = sys.argv[1]
cfg = configparser.RawConfigParser()
# MLflow reads the file with interpolation on: a literal % must be written %%.
cfg["mlflow"] = {
    "default_permission": os.environ.get("MLFLOW_AUTH_DEFAULT_PERMISSION", "READ"),
    "database_uri": os.environ["MLFLOW_AUTH_DATABASE_URI"].replace("%", "%%"),
}
os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.fchmod(fd, 0o600)  # a .tmp left by an earlier run keeps its old mode through O_CREAT
with os.fdopen(fd, "w") as f:
    cfg.write(f)
os.replace(path + ".tmp", path)
PY
fi

# Airflow's logins are the FAB auth manager's users, in Airflow's database: the airflow-init job creates the admin
# (create_airflow_users.py); no passwords file is written here.

case "${1:-}" in
  mlflow | dealrec | python)
    exec "$@"
    ;;
  *)
    exec /entrypoint "$@"
    ;;
esac
