"""The full MLflow setup for real: an ``mlflow server`` process on 127.0.0.1 with a PostgreSQL backend (a
throwaway database for this session) and artifacts on the moto S3 server; register/promote/rollback over HTTP."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pandas as pd
import pytest
import torch
from peft import PeftModel

from dealrec_tasks.errors import InputError
from dealrec_tasks.llm.tiny import load
from dealrec_tasks.steps import tracking as steps
from dealrec_tasks.steps.gate import gate
from dealrec_tasks.storage import Lake, join_uri
from dealrec_tasks.tracking.config import TrackingConfig
from dealrec_tasks.tracking.model import load_pyfunc, load_torch_model
from tests.conftest import S3_KEY, S3_SECRET
from tests.unit.tracking.tracked_lake import TrackedLake, build

pytestmark = pytest.mark.integration
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
ARTIFACT_PREFIX = "mlflow"


@pytest.fixture(scope="module")
def tracked(tmp_path_factory) -> TrackedLake:
    return build(tmp_path_factory)


@pytest.fixture(scope="module")
def postgres_url():
    """A database of its own, dropped at the end (connections of the stopped server included)."""
    import psycopg2

    name = f"mlflow_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg2.connect(dbname="postgres", connect_timeout=5, **PG)
    except psycopg2.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {PG['host']}:{PG['port']} (user {PG['user']}) is not reachable: {exc}")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{PG['user']}@{PG['host']}:{PG['port']}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="module")
def artifact_bucket(s3_endpoint) -> str:
    import boto3

    name = f"mlflow-{uuid.uuid4().hex[:10]}"
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=S3_KEY,
        aws_secret_access_key=S3_SECRET,
    )
    s3.create_bucket(Bucket=name)
    return name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(postgres_url, artifact_bucket, s3_endpoint, tmp_path_factory):
    """``mlflow server`` in its own process group; the whole group is terminated at teardown."""
    port = _free_port()
    log = tmp_path_factory.mktemp("mlflow-server") / "server.log"
    env = os.environ | {
        "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": S3_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        # The server's background job runner (7 huey consumers) serves GenAI features this pipeline does not use.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        postgres_url,
        "--artifacts-destination",
        f"s3://{artifact_bucket}/{ARTIFACT_PREFIX}",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 150  # the first start migrates the PostgreSQL schema
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not healthy after 150 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_register_promote_rollback_over_http(tracked, mlflow_server, artifact_bucket, s3_client, tmp_path):
    lake, dt = tracked.lake, tracked.dt
    shutil.copytree(tracked.root / "lake", tmp_path / "gate-lake")  # the gate publishes into it
    gate_lake = Lake(str(tmp_path / "gate-lake"))
    tag = uuid.uuid4().hex[:6]
    cfg = TrackingConfig(tracking_uri=mlflow_server, experiment=f"it-{tag}", model_name=f"bigrec-{tag}")

    pruning = steps.log_pruning(lake, dt, cfg, "scheduled__2026-01-05T00:00:00+00:00")
    assert pruning.uris["run"].startswith(f"{mlflow_server}/#/experiments/")
    first = steps.register(lake, dt, tracked.model_dir, cfg, "manual__2026-01-05T01:00:00+00:00")
    assert first.counts["version"] == 1 and first.counts["pruning_run_id"] == pruning.counts["run_id"]
    retry = steps.register(lake, dt, tracked.model_dir, cfg, "manual__2026-01-05T01:00:00+00:00")
    assert retry.counts["version"] == 1 and not retry.changed  # a retried task finds its version by tag
    gated = gate(gate_lake, dt, cfg, [1], "manual__2026-01-05T01:00:00+00:00")
    assert gated.counts["decision"] == "champion" and gated.counts["champion"] == 1

    # The same adapter and evaluation registered again: paired with the champion (itself), nothing to promote.
    second = steps.register(lake, dt, tracked.model_dir, cfg, "manual__2026-01-05T02:00:00+00:00")
    decided = gate(gate_lake, dt, cfg, [second.counts["version"]], "manual__2026-01-05T02:00:00+00:00")
    assert decided.counts["decision"] == "kept" and decided.counts["champion"] == 1
    assert steps.promote(cfg, 2, "checked by hand").counts == {"champion": 2, "previous": 1}
    assert steps.rollback(cfg, "regression").counts == {"champion": 1, "rolled_back": 2}

    # The artifacts went through the server to S3: the report, and the model holding only the adapter.
    keys = []
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=artifact_bucket, Prefix=ARTIFACT_PREFIX):
        keys += [o["Key"] for o in page.get("Contents", [])]
    assert any(k.endswith("coreset/report.png") for k in keys)
    model_keys = [k for k in keys if "/model/" in k]
    assert any(k.endswith("model/MLmodel") for k in model_keys)
    assert any(k.endswith("adapter_model.safetensors") for k in model_keys)
    assert not any(k.endswith("/model.safetensors") for k in model_keys)

    # The champion loads back from the server (S3 artifacts) with the logits of the trained model, and generates.
    uri = f"models:/{cfg.model_name}@champion"
    tokenizer, model = load_torch_model(uri, mlflow_server)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    for name in lake.require_manifest("adapters", dt)["files"]:
        (adapter / name).write_bytes(lake.storage.read_bytes(join_uri(lake.partition("adapters", dt), name)))
    trained = PeftModel.from_pretrained(load(tracked.model_dir)[1], adapter).eval()
    batch = tokenizer(["a title; another title"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, trained(**batch).logits, rtol=0, atol=1e-6)
    histories = pd.DataFrame({"history": [["Game A", "Game B"]]})
    titles = load_pyfunc(uri, mlflow_server).predict(histories, params={"max_new_tokens": 6})
    assert len(titles) == 1 and isinstance(titles[0], str)


def test_missing_model_name_is_a_clear_error_over_http(mlflow_server):
    cfg = TrackingConfig(tracking_uri=mlflow_server, model_name=f"never-registered-{uuid.uuid4().hex[:6]}")
    with pytest.raises(InputError, match=r"no registered model 'never-registered-\w+'; register a version first"):
        steps.promote(cfg, 1, "x")
    with pytest.raises(InputError, match="no registered model"):
        steps.rollback(cfg, "x")
