"""Both DAGs end to end through ``airflow dags test`` on embedded defaults: SQLite Airflow DB, a local lake, SQLite
MLflow, the tiny LLM built on the fly, synthetic logs. Then both again for the same day: nothing is duplicated.

Real Airflow (its CLI, its metadata DB, every task through the task runner), real MLflow, no mocks. Small sizes
come from Params and environment variables, as in ``make demo``. About 4 minutes on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from dealrec_tasks.config import SyntheticConfig
from dealrec_tasks.steps import data
from dealrec_tasks.storage import Lake
from tests.dags.conftest import REPO, airflow_env

BIN = Path(sys.executable).parent
DT = "2026-01-03"
N = 20
SYNTHETIC = SyntheticConfig(users=400, items=100, days=3, events_per_day=600, bad_rows=5)
DAILY_CONF = {"n": N, "shards": 2}
FINETUNE_CONF = {"epochs": 1, "eval_users": 50}  # no dt: the newest published coreset (no asset event here)


def airflow(stack, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "airflow"), *args], env=stack.env, capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def dags_test(stack, dag_id: str, conf: dict) -> str:
    proc = airflow(stack, "dags", "test", dag_id, DT, "-c", json.dumps(conf))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{dag_id} failed:\n{out[-6000:]}"
    assert "state=success" in out, out[-3000:]
    return out


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("airflow-e2e")
    lake = root / "lake"
    env = (
        os.environ
        | airflow_env(root / "airflow")
        | {
            "DEALREC_LAKE": str(lake),
            "DEALREC_MODEL_DIR": str(root / "models"),
            "DEALREC_WORK_DIR": str(root / "work"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        }
    )
    stack = SimpleNamespace(env=env, root=root, lake=Lake(str(lake)), mlflow=env["MLFLOW_TRACKING_URI"])
    proc = airflow(stack, "db", "migrate", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data.synthetic(stack.lake, SYNTHETIC)
    return stack


def manifests(lake_root: Path) -> dict[str, str]:
    """Every published partition of the lake -> digest of its manifest (a republish changes created_at)."""
    return {
        str(p.parent.relative_to(lake_root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(lake_root.rglob("_manifest.json"))
    }


def mlflow_state(uri: str) -> dict:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name("dealrec")
    runs = client.search_runs([exp.experiment_id]) if exp else []
    versions = client.search_model_versions("name='dealrec-bigrec'")
    champion = client.get_model_version_by_alias("dealrec-bigrec", "champion")
    return {
        "runs": sorted((r.data.tags.get("dealrec_kind", r.info.run_name), r.info.status) for r in runs),
        "versions": sorted(int(v.version) for v in versions),
        "champion": int(champion.version),
        "champion_tags": champion.tags,
        "airflow_dags": sorted(r.data.tags.get("airflow.dag_id", "") for r in runs),
    }


def asset_events(stack) -> list[dict]:
    with sqlite3.connect(Path(stack.env["AIRFLOW_HOME"]) / "airflow.db") as db:
        return [json.loads(extra or "{}") for (extra,) in db.execute("select extra from asset_event order by id")]


def test_a_bad_param_is_refused_before_any_task_runs(stack):
    proc = airflow(stack, "dags", "test", "dealrec_daily", DT, "-c", json.dumps({"shards": 0}))
    assert proc.returncode != 0
    assert "shards" in proc.stdout + proc.stderr and "minimum of 1" in proc.stdout + proc.stderr
    assert stack.lake.partitions("sequences") == []


def test_daily_then_finetune_then_both_again_for_the_same_day(stack):
    lake_root = Path(stack.lake.root.removeprefix("file://"))

    out = dags_test(stack, "dealrec_daily", DAILY_CONF)
    assert f"dealrec_daily: dt={DT}" in out
    # Every day was ingested in order, scores came from 2 mapped shards each, the coreset has n rows + a manifest.
    assert stack.lake.partitions("sequences") == ["2026-01-01", "2026-01-02", DT]
    for kind in ("influence", "effort"):
        shards = sorted(p.name for p in (lake_root / kind / f"dt={DT}").glob("shard=*"))
        assert shards == ["shard=0-of-2", "shard=1-of-2"], kind
    # Two arms by default: the pipeline's strategy at coreset/dt=D/, its random control beside it, same size.
    for arm, strategy in (("coreset", "dealrec"), ("coreset/arm=random", "random")):
        manifest = stack.lake.require_manifest(arm, DT)
        assert stack.lake.read(arm, DT, "coreset.parquet").num_rows == N == manifest["counts"]["selected"]
        assert manifest["config"]["n"] == N and manifest["strategy"] == strategy
    assert (lake_root / "coreset" / f"dt={DT}" / "report.png").stat().st_size > 0
    arms = {"dealrec": stack.lake.partition("coreset", DT), "random": stack.lake.partition("coreset/arm=random", DT)}
    assert asset_events(stack) == [{"dt": DT, "coreset": arms["dealrec"], "arms": arms}]

    out = dags_test(stack, "dealrec_finetune", FINETUNE_CONF)
    assert f"dealrec_finetune: dt={DT}" in out
    for partition in ("adapters", "evaluation", "adapters/arm=random", "evaluation/arm=random", "gate"):
        assert stack.lake.manifest(partition, DT) is not None, partition
    # Both arms were evaluated on the same users with the same settings.
    evaluations = [stack.lake.require_manifest(p, DT) for p in ("evaluation", "evaluation/arm=random")]
    assert evaluations[0]["config"] == evaluations[1]["config"]
    assert evaluations[0]["metrics"]["users"] == evaluations[1]["metrics"]["users"] == FINETUNE_CONF["eval_users"]
    first = mlflow_state(stack.mlflow)
    assert first["versions"] == [1, 2] and first["champion"] in (1, 2)
    # The Airflow run that logged each run and the version (the MLflow key is the coarser dag/dt).
    assert first["airflow_dags"] == ["dealrec_daily", "dealrec_daily", "dealrec_finetune", "dealrec_finetune",
                                     "dealrec_finetune"]  # fmt: skip
    assert first["champion_tags"]["airflow.dag_id"] == "dealrec_finetune" and first["champion_tags"]["airflow.run_id"]
    assert first["champion_tags"]["dt"] == DT and first["champion_tags"]["promotion.decision"] == "champion"
    assert first["champion_tags"]["strategy"] == "dealrec"  # the primary arm, declared, is the challenger
    assert [kind for kind, status in first["runs"]] == ["day", "finetune", "finetune", "pruning", "pruning"]
    assert all(status == "FINISHED" for _, status in first["runs"])
    gate, _ = stack.lake.read_verified_json("gate", DT, "gate.json")
    assert [a["strategy"] for a in gate["arms"]] == ["dealrec", "random"] and "lift_vs_random" not in gate
    assert gate["primary_vs_random"]["users"] == FINETUNE_CONF["eval_users"] and gate["running_vs_random"]["days"] == 1
    for partition in ("evaluation", "evaluation/arm=random"):  # what the gate paired, user by user
        assert stack.lake.read(partition, DT, "per_user.parquet").num_rows == FINETUNE_CONF["eval_users"]
    # The shipped model moves under its fine-tuning preset: the two arms' adapters answer differently.
    answers = [
        [e["generated"] for e in json.loads(stack.lake.read_verified_bytes(p, DT, "examples.json"))]
        for p in ("evaluation", "evaluation/arm=random")
    ]
    assert answers[0] != answers[1]
    published = manifests(lake_root)

    dags_test(stack, "dealrec_daily", DAILY_CONF)
    dags_test(stack, "dealrec_finetune", FINETUNE_CONF)
    assert manifests(lake_root) == published  # every partition a no-op: same files, same config
    assert mlflow_state(stack.mlflow) == first  # no second run, version or alias move
    assert len(asset_events(stack)) == 2  # each daily run announces the (same) coreset
