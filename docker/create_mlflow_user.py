"""Create (or re-password) the MLflow user the Airflow tasks log in as: the ``mlflow-init`` job.

The bundled MLflow server runs its basic-auth app: every request needs a login, a user may change only what it
created or was granted (the default permission, READ, lets a logged-in user look, not write), and only the admin
may create users. The tasks log in as their own non-admin user, created here by the admin, so they own the
experiment and the registered model they create, and a leaked task login cannot create users or touch anything
else. Idempotent: an existing user gets the password of .env, so rotating it means editing .env and rerunning this.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import requests

API = "/api/2.0/mlflow/users"


def _wait_healthy(uri: str, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while True:  # the server may still be starting (its /health needs no login)
        try:
            if requests.get(f"{uri}/health", timeout=5).ok:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"create_mlflow_user: MLflow at {uri} not healthy after {wait_s:.0f} s")
        time.sleep(2)


def ensure_user(uri: str, admin: tuple[str, str], user: str, password: str, wait_s: float = 120.0) -> str:
    """Make ``user`` exist with ``password``; returns "created" or "updated"."""
    uri = uri.rstrip("/")
    if user == admin[0]:
        raise SystemExit(f"create_mlflow_user: the tasks' user {user!r} must not be the admin")
    _wait_healthy(uri, wait_s)
    got = requests.get(f"{uri}{API}/get", params={"username": user}, auth=admin, timeout=30)
    if got.status_code == 401:
        raise SystemExit(
            f"create_mlflow_user: MLflow refused the admin login {admin[0]!r}. The admin password is set only when "
            "the server first starts; after that change it with the update-password API, then in .env"
        )
    if got.ok:
        resp = requests.patch(
            f"{uri}{API}/update-password", json={"username": user, "password": password}, auth=admin, timeout=30
        )
        action = "updated"
    elif got.status_code == 404:
        resp = requests.post(
            f"{uri}{API}/create", json={"username": user, "password": password}, auth=admin, timeout=30
        )
        action = "created"
    else:
        raise SystemExit(f"create_mlflow_user: {got.status_code} {got.text[:300]}")
    if not resp.ok:
        raise SystemExit(f"create_mlflow_user: {action[:-1]} {user!r}: {resp.status_code} {resp.text[:300]}")
    return action


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the server (default 120)")
    args = parser.parse_args(argv)
    env = os.environ
    missing = [n for n in ("MLFLOW_TRACKING_URI", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_WORKER_PASSWORD") if not env.get(n)]
    if missing:
        raise SystemExit(f"create_mlflow_user: set {', '.join(missing)}")
    user = env.get("MLFLOW_WORKER_USER") or "dealrec"
    admin = (env.get("MLFLOW_ADMIN_USER") or "admin", env["MLFLOW_ADMIN_PASSWORD"])
    action = ensure_user(env["MLFLOW_TRACKING_URI"], admin, user, env["MLFLOW_WORKER_PASSWORD"], args.wait)
    print(f"MLflow user {user!r} {action}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
