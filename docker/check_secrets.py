"""Refuse to start a container whose secrets are missing, empty or still the placeholder of .env.example.

docker/entrypoint.sh runs this before anything else. The variables to check are named in
``DEALREC_REQUIRED_SECRETS`` (comma or space separated), set per service in docker-compose.yaml, so each service
checks the secrets it holds and only those. Compose's ``${VAR:?}`` already stops on an unset or empty .env entry;
this catches what compose cannot: ``change-me`` left in place, a password hidden inside a database or broker URL
(or missing from it), a Fernet key that is not one, an MLflow password MLflow would refuse. Exit 1 with one line per
bad variable; a secret's value is never printed.
"""

from __future__ import annotations

import os
import re
import sys
from urllib.parse import unquote, urlsplit

PLACEHOLDERS = frozenset({"change-me", "changeme"})
MAKE_SECRET = 'python3 -c "import secrets; print(secrets.token_urlsafe(32))"'
MAKE_FERNET = 'python3 -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'
# The container variable -> the .env entry a person edits (the message names both).
DOTENV_NAME = {
    "AIRFLOW__CORE__FERNET_KEY": "AIRFLOW_FERNET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET": "AIRFLOW_JWT_SECRET",
    "AIRFLOW__API__SECRET_KEY": "AIRFLOW_API_SECRET_KEY",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "AIRFLOW_DB_PASSWORD",
    "AIRFLOW__CELERY__RESULT_BACKEND": "AIRFLOW_DB_PASSWORD",
    "AIRFLOW__CELERY__BROKER_URL": "REDIS_PASSWORD",
    "MLFLOW_AUTH_DATABASE_URI": "MLFLOW_DB_PASSWORD",
    "MLFLOW_AUTH_ADMIN_PASSWORD": "MLFLOW_ADMIN_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY": "MLFLOW_SERVER_SECRET_KEY",
}
# MLflow's basic-auth app rejects shorter passwords (mlflow.utils.validation._validate_password).
MIN_LENGTH = dict.fromkeys(
    ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_WORKER_PASSWORD"), 12
)
_URL_WITH_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@]*:[^/@]*@", re.I)


def _fernet_problem(value: str) -> str | None:
    """Airflow takes one key or a comma-separated list (the first encrypts, the others still decrypt)."""
    from cryptography.fernet import Fernet

    for key in value.split(","):
        try:
            Fernet(key.strip().encode())
        except (ValueError, TypeError):
            return f" is not a Fernet key (32 url-safe base64-encoded bytes); make one with {MAKE_FERNET}"
    return None


def _is_server_url(value: str) -> bool:
    try:
        return bool(re.match(r"^[a-z][a-z0-9+.-]*://", value, re.I) and urlsplit(value).hostname)
    except ValueError:
        return False


def problem(name: str, value: str | None) -> str | None:
    """Why ``value`` is not acceptable for ``name`` (a phrase that follows the name), or None."""
    if value is None:
        return " is not set"
    secret, subject = value, ""
    if _URL_WITH_PASSWORD.match(value):  # a database or broker URL: the secret is its password
        secret, subject = unquote(urlsplit(value).password or ""), ": its password"
    elif _is_server_url(value):  # redis://redis:6379/0 listed as a secret: the server would take anyone
        return " is a URL without a password; put the password in it (user:PASSWORD@host, or :PASSWORD@host)"
    how = MAKE_FERNET if name == "AIRFLOW__CORE__FERNET_KEY" else MAKE_SECRET
    if not secret.strip():
        return f"{subject} is empty; make one with {how}"
    if secret.strip().lower() in PLACEHOLDERS:
        return f"{subject} is still the .env.example placeholder {secret!r}; make one with {how}"
    if name == "AIRFLOW__CORE__FERNET_KEY":
        return _fernet_problem(value)
    if len(secret) < MIN_LENGTH.get(name, 0):
        return f" is shorter than {MIN_LENGTH[name]} characters (MLflow refuses it); make one with {MAKE_SECRET}"
    return None


def check(env: dict[str, str]) -> list[str]:
    names = [n for n in re.split(r"[,\s]+", env.get("DEALREC_REQUIRED_SECRETS", "")) if n]
    errors = []
    for name in dict.fromkeys(names):
        why = problem(name, env.get(name))
        if why:
            label = f"{name} ({DOTENV_NAME[name]} in .env)" if name in DOTENV_NAME else name
            errors.append(f"refusing to start: {label}{why}")
    return errors


def main() -> int:
    errors = check(dict(os.environ))
    for line in errors:
        print(line, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
