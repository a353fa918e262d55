"""The compose stack's Airflow login tells users apart (issue 29, item 13): the FAB auth manager, for real.

Airflow's SimpleAuthManager (its development manager) knows one admin, so the DEALRec view's check (read access to
``dealrec_daily``) could never refuse anyone. docker-compose.yaml runs the FAB auth manager instead; its
``airflow-init`` job creates the admin of .env and the read-only role ``DEALRecViewer``
(docker/create_airflow_users.py). Here the same auth manager, read from docker-compose.yaml, on a throwaway SQLite
home: ``airflow db migrate``, the init script through docker/entrypoint.sh (twice: the second run rotates the admin
password), a real ``airflow api-server`` with plugins/, two users made through FAB's own REST API, and the view asked
by each. About a minute on 2 cores.
"""

from __future__ import annotations

import os
import secrets
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.e2e.stack import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
VIEW = "/dealrec"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(sys.platform != "linux", reason="process groups"),
]


def _compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yaml").read_text())


def _init_script() -> Path:
    """The users script the compose file's airflow-init job runs, as a path of this repository."""
    command = _compose()["services"]["airflow-init"]["command"]
    script = " ".join(command) if isinstance(command, list) else command
    found = [w for w in shlex.split(script.replace("&&", " ")) if w.startswith("/opt/dealrec/") and "users" in w]
    assert found, f"airflow-init does not run a users script: {script}"
    return REPO / "docker" / Path(found[0]).name


def test_the_dealrec_view_refuses_a_user_without_read_access_to_dealrec_daily(tmp_path):
    import requests

    auth_manager = _compose()["services"]["airflow-apiserver"]["environment"].get("AIRFLOW__CORE__AUTH_MANAGER", "")
    assert auth_manager.endswith(".FabAuthManager"), f"the stack's auth manager is {auth_manager or 'the default'}"
    port, home = free_port(), tmp_path / "airflow"
    (tmp_path / "dags").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_", "DEALREC_"))}
    env |= {
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__AUTH_MANAGER": auth_manager,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(tmp_path / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW__API__WORKERS": "1",
        "DEALREC_LAKE": str(tmp_path / "lake"),
    }
    (tmp_path / "lake").mkdir()

    def run(argv: list[str], **extra: str) -> str:
        proc = subprocess.run(argv, env=env | extra, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{argv}: {proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        return proc.stdout

    run([str(BIN / "airflow"), "db", "migrate"])
    admin, first, second = "ops-admin", secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    init = ["bash", str(REPO / "docker" / "entrypoint.sh"), "python", str(_init_script())]
    init_env = {"AIRFLOW_ADMIN_USER": admin, "DEALREC_REQUIRED_SECRETS": "AIRFLOW_ADMIN_PASSWORD"}
    out = run(init, **init_env, AIRFLOW_ADMIN_PASSWORD=first)
    assert f"Airflow admin {admin!r} created" in out, out
    out = run(init, **init_env, AIRFLOW_ADMIN_PASSWORD=second)  # .env's password changed: rotated
    assert f"Airflow admin {admin!r} updated; role DEALRecViewer: 0 permission(s) added" in out, out

    log = open(tmp_path / "api-server.log", "w")  # noqa: SIM115 (closed in the finally below, after the server)
    server = subprocess.Popen(
        [str(BIN / "airflow"), "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    api = f"http://127.0.0.1:{port}"

    def server_log() -> str:
        return (tmp_path / "api-server.log").read_text(errors="replace")[-4000:]

    def token(user: str, password: str) -> requests.Response:
        return requests.post(f"{api}/auth/token", json={"username": user, "password": password}, timeout=60)

    def bearer(user: str, password: str) -> dict[str, str]:
        got = token(user, password)
        assert got.status_code == 201, f"{user}: {got.status_code} {got.text[:300]}"
        return {"Authorization": f"Bearer {got.json()['access_token']}"}

    try:
        wait_for(
            "the api-server", lambda: requests.get(f"{api}/api/v2/monitor/health", timeout=5).ok, 180, 1, server_log
        )
        assert token(admin, first).status_code == 401, "the old admin password still logs in"
        as_admin = bearer(admin, second)

        # Two users, made the way an admin of the stack makes them (FAB's REST API): one with the role the init job
        # created, one with the same role minus read access to dealrec_daily (it still reads dealrec_finetune).
        fab = f"{api}/auth/fab/v1"
        viewer = requests.get(f"{fab}/roles/DEALRecViewer", headers=as_admin, timeout=60)
        assert viewer.status_code == 200, viewer.text
        actions = viewer.json()["actions"]
        pairs = {(a["action"]["name"], a["resource"]["name"]) for a in actions}
        assert {("can_read", "DAG:dealrec_daily"), ("can_read", "DAG:dealrec_finetune")} <= pairs, pairs
        writes = {p for p in pairs if p[0] not in ("can_read", "menu_access") and not p[1].startswith("My ")}
        assert not writes, f"DEALRecViewer is read-only (but its own password and profile): {writes}"
        assert ("can_read", "DAGs") not in pairs, "DEALRecViewer must not read every DAG"
        others = [a for a in actions if a["resource"]["name"] != "DAG:dealrec_daily"]
        made = requests.post(
            f"{fab}/roles", json={"name": "NoDailyDag", "actions": others}, headers=as_admin, timeout=60
        )
        assert made.status_code == 200, made.text
        users = {"reader": "DEALRecViewer", "outsider": "NoDailyDag"}
        passwords = {name: secrets.token_urlsafe(12) for name in users}
        for name, role in users.items():
            body = {"username": name, "password": passwords[name], "email": f"{name}@example.org"}
            body |= {"first_name": name, "last_name": "test", "roles": [{"name": role}]}
            made = requests.post(f"{fab}/users", json=body, headers=as_admin, timeout=60)
            assert made.status_code == 200, made.text

        as_reader, as_outsider = bearer("reader", passwords["reader"]), bearer("outsider", passwords["outsider"])
        for path in ("/api/days", "/"):
            url = f"{api}{VIEW}{path}"
            assert requests.get(url, headers=as_admin, timeout=60).status_code == 200, path
            assert requests.get(url, headers=as_reader, timeout=60).status_code == 200, path
            refused = requests.get(url, headers=as_outsider, timeout=60)
            assert refused.status_code == 403, f"{path}: {refused.status_code} {refused.text[:300]}"
            assert "not allowed to read the DAG dealrec_daily" in refused.text
        assert requests.get(f"{api}{VIEW}/api/days", timeout=60).status_code == 401
        login = requests.get(f"{api}{VIEW}/", allow_redirects=False, timeout=60)
        assert login.status_code == 303 and "/auth/login/" in login.headers["location"], login.headers
        assert requests.get(f"{api}{VIEW}/api/days", headers=as_reader, timeout=60).json()["days"] == []

        # Read-only: the reader can neither trigger the DAG nor read another one.
        trigger = requests.post(
            f"{api}/api/v2/dags/dealrec_daily/dagRuns", json={"logical_date": None}, headers=as_reader, timeout=60
        )
        assert trigger.status_code == 403, trigger.text
        assert requests.get(f"{api}/api/v2/dags/other_dag", headers=as_reader, timeout=60).status_code == 403
    except BaseException:
        print(server_log())
        raise
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        log.close()
