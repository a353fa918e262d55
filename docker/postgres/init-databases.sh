#!/usr/bin/env bash
# Run once by the postgres image on an empty data directory (/docker-entrypoint-initdb.d): one role and one
# database each for Airflow's metadata and MLflow's tracking/registry store, so neither can touch the other's tables.
# Names and passwords come from the environment of the postgres service (see docker-compose.yaml and .env).
set -euo pipefail

create_db() {  # role password database
  psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
    -v role="$1" -v password="$2" -v db="$3" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'role', :'password')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role')
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \gexec
SQL
}

create_db "${AIRFLOW_DB_USER:-airflow}" "${AIRFLOW_DB_PASSWORD:?AIRFLOW_DB_PASSWORD is not set}" "${AIRFLOW_DB_NAME:-airflow}"
create_db "${MLFLOW_DB_USER:-mlflow}" "${MLFLOW_DB_PASSWORD:?MLFLOW_DB_PASSWORD is not set}" "${MLFLOW_DB_NAME:-mlflow}"
