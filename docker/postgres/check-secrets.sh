#!/bin/sh
# Entry point of the postgres service: refuse to start (one line naming the variable) while a database password is
# empty, still .env.example's `change-me`, or holds a character that would break the database URLs it is pasted
# into (docker-compose.yaml builds postgresql://user:PASSWORD@postgres/db from it); then the image's own entrypoint.
# POSTGRES_PASSWORD matters most on the first start, when initdb sets it: checking it later costs nothing.
set -eu

for name in POSTGRES_PASSWORD AIRFLOW_DB_PASSWORD MLFLOW_DB_PASSWORD; do
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
      echo "refusing to start: ${name} has a character other than A-Z a-z 0-9 . _ ~ - (it goes into database URLs)" >&2
      exit 1
      ;;
  esac
done

exec docker-entrypoint.sh "$@"
