"""The demo's Airflow home, opened as the README says (``AIRFLOW_HOME=var/airflow airflow standalone``), runs a
scheduled task (issue 29, item 14).

Every Airflow 3 process signs or checks the task runners' tokens with ``[api_auth] jwt_secret``; a home that does
not set it gives each process a random one, and every scheduled task then fails with an empty log while the
api-server logs "Signature verification failed". Real ``airflow standalone`` (api-server, scheduler with the local
executor, dag-processor, triggerer) on a free port; about two minutes on 2 cores.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DAG_ID = "demo_home_probe"
PROBE_DAG = f'''
from datetime import datetime
from airflow.sdk import dag, task

@dag(dag_id="{DAG_ID}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def probe():
    @task
    def hello():
        return 42
    hello()

probe()
'''


def _demo():
    spec = importlib.util.spec_from_file_location("demo_script", REPO / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_demo_home_holds_the_shared_secrets_privately_and_keeps_them(tmp_path):
    demo = _demo()
    env = demo.settings(tmp_path / "var", str(tmp_path / "lake"))
    cfg = Path(env["AIRFLOW_HOME"]) / "airflow.cfg"
    # An older demo's file (no secrets): they are added, its settings kept.
    cfg.parent.mkdir(parents=True)
    cfg.write_text("[core]\nload_examples = False\nparallelism = 3\n")
    demo.write_airflow_cfg(env)
    text = cfg.read_text()
    assert "parallelism = 3" in text and "jwt_secret = " in text and "secret_key = " in text
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    demo.write_airflow_cfg(env)
    assert cfg.read_text() == text  # a rerun keeps the secrets (running processes stay valid)


def test_a_scheduled_task_runs_in_the_demo_home_under_airflow_standalone(tmp_path):
    demo = _demo()
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "probe.py").write_text(PROBE_DAG)
    env = demo.settings(tmp_path / "var", str(tmp_path / "lake")) | {"AIRFLOW__CORE__DAGS_FOLDER": str(dags)}
    demo.write_airflow_cfg(env)
    home = Path(env["AIRFLOW_HOME"])
    port = _free_port()
    # As the README runs it: only AIRFLOW_HOME (and a free port instead of 8080) in the environment.
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")} | {
        "AIRFLOW_HOME": str(home),
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{port}/execution/",
    }
    log = (tmp_path / "standalone.log").open("w")
    proc = subprocess.Popen(
        [str(BIN / "airflow"), "standalone"], env=run_env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True, cwd=tmp_path,
    )  # fmt: skip

    def airflow(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "airflow"), *args], env=run_env, capture_output=True, text=True, timeout=120, cwd=tmp_path
        )

    def query(sql: str) -> tuple | None:
        try:
            with sqlite3.connect(home / "airflow.db") as db:
                return db.execute(sql, (DAG_ID,)).fetchone()
        except sqlite3.Error:
            return None

    def parsed() -> bool:
        return query("SELECT dag_id FROM dag WHERE dag_id = ?") is not None

    def state() -> str | None:
        row = query("SELECT state FROM task_instance WHERE dag_id = ? AND task_id = 'hello'")
        return row[0] if row else None

    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not parsed():
            assert proc.poll() is None, (tmp_path / "standalone.log").read_text()[-4000:]
            time.sleep(3)  # until the dag-processor has parsed the probe
        assert airflow("dags", "unpause", DAG_ID).returncode == 0
        assert airflow("dags", "trigger", DAG_ID).returncode == 0
        while time.monotonic() < deadline and state() not in ("success", "failed", "up_for_retry"):
            assert proc.poll() is None, (tmp_path / "standalone.log").read_text()[-4000:]
            time.sleep(2)
        final = state()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        log.close()
    output = (tmp_path / "standalone.log").read_text()
    assert final == "success", f"task state {final}:\n{output[-4000:]}"
    assert "Signature verification failed" not in output


pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="process groups")
