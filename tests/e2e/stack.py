"""The docker-compose topology, as processes on this machine: Airflow 3 on the Celery executor, for real.

PostgreSQL and Redis are the machine's (started when down, by .ci/services.sh); everything else is started by the
session-scoped ``stack`` fixture and torn down at the end: fresh throwaway databases for Airflow and MLflow, an empty
Redis db index, a moto S3 server (the lake and MLflow's artifacts), an MLflow server, Airflow's api-server,
scheduler, dag-processor and triggerer, and two Celery workers, one on the default queue and one on queue ``gpu``
(``--celery-hostname gpu@``). The lake is seeded with synthetic logs. No process may be left behind.

The tests using it run in file order on the one stack: ``test_celery_stack.py`` (a worker killed mid-run),
then ``test_ui_browser.py`` (the same pipeline driven from the Airflow and MLflow UIs in Chromium).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PG_HOST, PG_PORT, REDIS_HOST, REDIS_PORT = "127.0.0.1", 5432, "127.0.0.1", 6379
S3_KEY = S3_SECRET = "testing"
ADMIN, PASSWORD = "admin", secrets.token_urlsafe(12)
GPU_HOST, CPU_HOST = "gpu-worker.e2e", "cpu-worker.e2e"

# Tiny run settings: the whole test (start-up, one daily run with a worker killed and a retry, one fine-tuning
# run, teardown) takes a few minutes on 2 cores.
SYNTHETIC = ["--users", "200", "--items", "80", "--days", "4", "--events-per-day", "400", "--bad-rows", "3"]
DAILY_CONF = {"n": 24, "k": 4, "shards": 2, "surrogate_max_epochs": 5, "base_model": None}
DAILY_TIMEOUT_S, FINETUNE_TIMEOUT_S = 600, 420


# ---------------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 1.0, on_fail=None) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` (and diagnostics) after ``timeout``."""
    deadline, last_exc = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # a server still starting refuses connections
            last_exc = exc
        time.sleep(every)
    details = on_fail() if on_fail else ""
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last_exc!r})\n{details}")


def psql(sql: str, db: str = "postgres") -> str:
    proc = subprocess.run(
        ["psql", "-h", PG_HOST, "-p", str(PG_PORT), "-U", "postgres", "-d", db, "-tAc", sql],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, f"psql {sql!r}: {proc.stderr}"
    return proc.stdout.strip()


def redis_cli(*args: str) -> str:
    proc = subprocess.run(["redis-cli", "-h", REDIS_HOST, "-p", str(REDIS_PORT), *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def services_up() -> bool:
    pg = subprocess.run(["pg_isready", "-q", "-h", PG_HOST, "-p", str(PG_PORT)]).returncode == 0
    redis = subprocess.run(["redis-cli", "-h", REDIS_HOST, "-p", str(REDIS_PORT), "ping"], capture_output=True)
    return pg and redis.returncode == 0


def ensure_services() -> None:
    missing = [tool for tool in ("psql", "pg_isready", "redis-cli") if shutil.which(tool) is None]
    if not missing and not services_up():
        subprocess.run(["bash", str(REPO / ".ci" / "services.sh")], check=False)
        for _ in range(30):
            if services_up():
                break
            time.sleep(1)
    if missing or not services_up():
        reason = f"PostgreSQL/Redis not available on 127.0.0.1 (missing tools: {missing})"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


# ---------------------------------------------------------------------------------------------------------
# Processes: each in its own session, all marked with this stack's id, so teardown finds every descendant
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path


@dataclass
class Stack:
    tmp: Path
    env: dict[str, str]
    marker: str
    ports: dict[str, int]
    bucket: str
    procs: list[Proc] = field(default_factory=list)

    # -- processes --------------------------------------------------------------------------------------
    def start(self, name: str, argv: list[str], **env: str) -> Proc:
        log = self.tmp / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        out = open(log, "ab")  # noqa: SIM115 (closed with the process)
        popen = subprocess.Popen(
            argv,
            env={**self.env, **env},
            cwd=self.tmp,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        out.close()
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def start_worker(self, kind: str) -> Proc:
        """A Celery worker: queue `default`, or `gpu` with its own Celery node name (as in docker-compose.yaml).
        Each reports its own hostname on its task instances, so the test can tell where a task ran."""
        n = sum(p.name.startswith(f"worker-{kind}") for p in self.procs)
        # Task logs stay on this machine's disk (AIRFLOW_HOME/logs): no log server listening on every interface.
        argv = [
            str(BIN / "airflow"),
            "celery",
            "worker",
            "--skip-serve-logs",
            "--concurrency",
            "1" if kind == "gpu" else "2",
        ]
        if kind == "gpu":
            argv += ["-q", "gpu", "--celery-hostname", "gpu@%h"]
        else:
            argv += ["-q", "default", "--celery-hostname", "celery@%h"]
        return self.start(
            f"worker-{kind}-{n}",
            argv,
            AIRFLOW__CORE__HOSTNAME_CALLABLE=f"e2e_hostnames.{kind}",
        )

    def run(self, argv: list[str], timeout: float = 300) -> str:
        proc = subprocess.run(argv, env=self.env, cwd=self.tmp, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, (
            f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
        return proc.stdout

    def ours(self) -> list[Any]:
        """Every live process carrying this stack's marker (started here, or a descendant of one)."""
        import psutil

        found = []
        for p in psutil.process_iter():
            try:
                if p.environ().get("DEALREC_E2E_STACK") == self.marker:
                    found.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    def kill(self, proc: Proc, sig: int = signal.SIGKILL) -> None:
        """Kill a process, its process group and every descendant (tasks forked by a Celery worker included)."""
        import psutil

        try:
            family = [psutil.Process(proc.popen.pid), *psutil.Process(proc.popen.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            family = []
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.popen.pid, sig)
        for p in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(sig)
        psutil.wait_procs(family, timeout=10)
        proc.popen.wait(timeout=10)

    def teardown(self) -> list[str]:
        """Stop everything: SIGTERM to each group, then SIGKILL to whatever still carries the marker."""
        import psutil

        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.ours():
            time.sleep(0.5)
        for p in self.ours():
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(self.ours(), timeout=10)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=5)
        return [f"{p.pid} {' '.join(p.cmdline())[:120]}" for p in self.ours()]

    # -- diagnostics ------------------------------------------------------------------------------------
    def diagnostics(self, lines: int = 40) -> str:
        out = []
        for proc in self.procs:
            text = proc.log.read_text(errors="replace").splitlines() if proc.log.exists() else []
            out.append(f"--- {proc.name} (pid {proc.popen.pid}, exit {proc.popen.poll()}) ---")
            out += text[-lines:]
        task_logs = sorted((self.tmp / "airflow" / "logs").rglob("*.log"), key=lambda p: p.stat().st_mtime)
        for log in task_logs[-4:]:
            out.append(f"--- task log {log.relative_to(self.tmp)} ---")
            out += log.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(out)

    # -- REST API ---------------------------------------------------------------------------------------
    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    def token(self) -> str:
        import requests

        r = requests.post(f"{self.api}/auth/token", json={"username": ADMIN, "password": PASSWORD}, timeout=30)
        r.raise_for_status()
        return r.json()["access_token"]

    def rest(self, method: str, path: str, **kw) -> Any:
        import requests

        if not hasattr(self, "_token"):
            self._token = self.token()
        r = requests.request(
            method, f"{self.api}/api/v2{path}", headers={"Authorization": f"Bearer {self._token}"}, timeout=30, **kw
        )
        if r.status_code >= 400:
            raise AssertionError(f"{method} {path}: HTTP {r.status_code} {r.text[:500]}")
        return r.json() if r.content else None

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.rest("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 200})[
            "task_instances"
        ]

    # -- runs -------------------------------------------------------------------------------------------
    def last_synthetic_day(self) -> str:
        return sorted({k.split("dt=")[1][:10] for k in self.objects("lake/interactions/") if "dt=" in k})[-1]

    def start_paused_daily(self, conf: dict[str, Any]) -> str:
        """Trigger ``dealrec_daily`` while it is still paused, at the logical date of its next scheduled run, then
        unpause it: the scheduler finds that run already there and creates no scheduled run of its own (catchup is
        off, but the latest interval would still run, for another day, doubling the test). Returns the run id."""
        run_id = f"e2e_{conf.get('dt')}_{uuid.uuid4().hex[:6]}"
        logical = self.rest("GET", "/dags/dealrec_daily")["next_dagrun_logical_date"]
        self.rest(
            "POST", "/dags/dealrec_daily/dagRuns", json={"dag_run_id": run_id, "logical_date": logical, "conf": conf}
        )
        self.rest("PATCH", "/dags/dealrec_daily", json={"is_paused": False})
        return run_id

    def run_done(self, dag_id: str, run_id: str) -> bool:
        state = self.rest("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"]
        assert state != "failed", f"{dag_id} {run_id} failed:\n" + self.diagnostics()
        return state == "success"

    # -- S3 -----------------------------------------------------------------------------------------------
    def s3(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self.ports['s3']}",
            region_name="us-east-1",
            aws_access_key_id=S3_KEY,
            aws_secret_access_key=S3_SECRET,
        )

    def objects(self, prefix: str) -> dict[str, bytes]:
        s3, out = self.s3(), {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = s3.get_object(Bucket=self.bucket, Key=obj["Key"])["Body"].read()
        return out


def _airflow_env(tmp: Path, ports: dict[str, int], dbs: dict[str, str], redis_db: int, bucket: str) -> dict:
    """The settings NOTES.md lists for the Celery topology, and the DAGs' locations (plugins/dealrec_airflow.py)."""
    airflow_db = f"postgresql+psycopg2://postgres@{PG_HOST}:{PG_PORT}/{dbs['airflow']}"
    hostmods = tmp / "hostmods"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_", "AWS_", "DEALREC_"))}
    env.update(
        {
            "PATH": f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}",
            "PYTHONPATH": str(hostmods),
            "AIRFLOW_HOME": str(tmp / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_db,
            "AIRFLOW__CELERY__BROKER_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/{redis_db}",
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + airflow_db.replace("+psycopg2", ""),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{ports['api']}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(tmp / "passwords.json"),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
            # A task whose worker vanished is failed (then retried) after 30 s without a heartbeat, not 5 min.
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
            # The lake and MLflow's artifacts on the moto server; MLflow's metadata in PostgreSQL.
            "DEALREC_LAKE": f"s3://{bucket}/lake",
            "DEALREC_MODEL_DIR": str(tmp / "models"),
            "DEALREC_WORK_DIR": str(tmp / "work"),
            "DEALREC_PROGRESS": "0",
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports['mlflow']}",
            "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{ports['s3']}",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{ports['s3']}",
            "AWS_ACCESS_KEY_ID": S3_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET,
            "AWS_REGION": "us-east-1",
            "OMP_NUM_THREADS": "1",
        }
    )
    return env


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Iterator[Stack]:
    ensure_services()
    tmp = tmp_path_factory.mktemp("celery-stack")
    tag = uuid.uuid4().hex[:10]
    dbs = {"airflow": f"e2e_airflow_{tag}", "mlflow": f"e2e_mlflow_{tag}"}
    ports = {name: free_port() for name in ("api", "mlflow", "s3")}
    used = {int(line.split(":")[0][2:]) for line in redis_cli("info", "keyspace").splitlines() if line.startswith("db")}
    free = [i for i in range(15, 0, -1) if i not in used]
    assert free, "no empty Redis db index"
    redis_db = free[int(tag, 16) % len(free)]
    bucket = f"e2e-{tag}"

    (tmp / "hostmods").mkdir()
    (tmp / "hostmods" / "e2e_hostnames.py").write_text(
        f"def gpu():\n    return {GPU_HOST!r}\n\n\ndef cpu():\n    return {CPU_HOST!r}\n"
    )
    (tmp / "passwords.json").write_text(json.dumps({ADMIN: PASSWORD}))
    env = _airflow_env(tmp, ports, dbs, redis_db, bucket)
    env["DEALREC_E2E_STACK"] = marker = f"{tag}-{os.getpid()}"
    st = Stack(tmp=tmp, env=env, marker=marker, ports=ports, bucket=bucket)
    for db in dbs.values():
        psql(f"CREATE DATABASE {db}")
    try:
        started = time.monotonic()
        st.start("s3", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(ports["s3"])])
        wait_for("moto S3", lambda: st.s3().list_buckets() is not None, 60)
        st.s3().create_bucket(Bucket=bucket)
        st.start(
            "mlflow",
            [
                str(BIN / "mlflow"),
                "server",
                "--backend-store-uri",
                f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{dbs['mlflow']}",
                "--artifacts-destination",
                f"s3://{bucket}/mlflow",
                "--host",
                "127.0.0.1",
                "--port",
                str(ports["mlflow"]),
                "--workers",
                "1",
            ],
        )
        st.run([str(BIN / "airflow"), "db", "migrate"], timeout=300)
        st.run([str(BIN / "airflow"), "pools", "set", "gpu", "1", "GPU tasks, one slot per GPU"])
        airflow = str(BIN / "airflow")
        st.start(
            "api-server", [airflow, "api-server", "--host", "127.0.0.1", "--port", str(ports["api"]), "--workers", "1"]
        )
        st.start("scheduler", [airflow, "scheduler"])
        st.start("dag-processor", [airflow, "dag-processor"])
        st.start("triggerer", [airflow, "triggerer", "--skip-serve-logs"])
        st.start_worker("cpu")
        st.start_worker("gpu")
        # Seed the lake while the services come up: synthetic daily logs, written by the CLI to S3.
        st.run([str(BIN / "dealrec"), "--lake", env["DEALREC_LAKE"], "synthetic", *SYNTHETIC], timeout=300)

        import requests

        wait_for(
            "the api-server",
            lambda: requests.get(f"{st.api}/api/v2/monitor/health", timeout=5).ok,
            180,
            on_fail=st.diagnostics,
        )
        wait_for(
            "the MLflow server",
            lambda: requests.get(f"http://127.0.0.1:{ports['mlflow']}/health", timeout=5).ok,
            180,
            on_fail=st.diagnostics,
        )
        for proc in st.procs:
            if proc.name.startswith("worker-"):
                wait_for(f"{proc.name} ready", lambda p=proc: b" ready." in p.log.read_bytes(), 180, 2, st.diagnostics)
        print(f"stack up in {time.monotonic() - started:.0f} s: {json.dumps(ports)}; redis db {redis_db}")
        yield st
    finally:
        left = st.teardown()
        for db in dbs.values():
            psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        redis_cli("-n", str(redis_db), "flushdb")
        assert left == [], f"processes left behind: {left}"
