#!/bin/sh
# Entry point of the postgres and redis services (images we do not build, without Python for check_secrets.py):
# refuse to start (one line naming the variable) while a password is empty, still .env.example's `change-me`, or
# holds a character that would break the URLs it is pasted into (docker-compose.yaml builds
# postgresql://user:PASSWORD@postgres/db and redis://:PASSWORD@redis:6379/0 from them); then the image's own
# entrypoint. The variables are DEALREC_REQUIRED_SECRETS (set per service), by default the database passwords.
# POSTGRES_PASSWORD matters most on the first start, when initdb sets it: checking it later costs nothing.
set -eu

for name in ${DEALREC_REQUIRED_SECRETS:-POSTGRES_PASSWORD AIRFLOW_DB_PASSWORD MLFLOW_DB_PASSWORD}; do
  case "${name}" in
    "" | [0-9]* | *[!A-Za-z0-9_]*)
      echo "refusing to start: DEALREC_REQUIRED_SECRETS names '${name}', not a variable name" >&2
      exit 1
      ;;
  esac
  eval "value=\${${name}:-}"
  case "${value}" in
    "")
      echo "refusing to start: ${name} is empty; make one with python3 -c \"import secrets; print(secrets.token_urlsafe(32))\"" >&2
      exit 1
      ;;
    change-me | changeme)
      echo "refusing to start: ${name} is still the .env.example placeholder '${value}'; make one with python3 -c \"import secrets; print(secrets.token_urlsafe(32))\"" >&2
      exit 1
      ;;
    *[!A-Za-z0-9._~-]*)
      echo "refusing to start: ${name} has a character other than A-Z a-z 0-9 . _ ~ - (it goes into URLs)" >&2
      exit 1
      ;;
  esac
done

exec docker-entrypoint.sh "$@"
