"""The docker-compose topology on this machine (``tests/e2e/stack.py``): Airflow 3 on the Celery executor.

One daily run is triggered through the REST API (JWT from /auth/token) on synthetic logs in S3. While one of its
scoring tasks runs on the gpu worker, that worker is killed with SIGKILL (a lost machine) and a new one started:
the task must be retried and the run still succeed, with every published partition whole (manifest = files,
checksums) and no duplicated scores. ``dealrec_finetune`` then starts on the coreset asset and must register a
model version that becomes ``champion``. Every GPU-queue task must have run on the gpu worker, every other one on
the default worker. No process may be left behind.
"""

from __future__ import annotations

import hashlib
import json
import time

import pytest

from tests.e2e.stack import CPU_HOST, DAILY_CONF, DAILY_TIMEOUT_S, FINETUNE_TIMEOUT_S, GPU_HOST, Stack, wait_for

pytestmark = pytest.mark.e2e

# ---------------------------------------------------------------------------------------------------------
# The test
# ---------------------------------------------------------------------------------------------------------
SCORING_TASKS = ("influence", "effort")


def _published_partitions_are_whole(objects: dict[str, bytes], lake_prefix: str) -> dict[str, int]:
    """Every manifest's directory holds exactly its listed files, each with its checksum. Returns counts."""
    manifests = {k: json.loads(v) for k, v in objects.items() if k.endswith("/_manifest.json")}
    assert manifests, f"no published partition under s3://.../{lake_prefix}"
    for key, manifest in manifests.items():
        folder = key.rsplit("/", 1)[0] + "/"
        nested = {m.rsplit("/", 1)[0] + "/" for m in manifests if m != key and m.startswith(folder)}
        present = {
            k[len(folder) :]
            for k in objects
            if k.startswith(folder) and k != key and not any(k.startswith(n) for n in nested)
        }
        listed = set(manifest["files"])
        assert present == listed, f"{folder}: files {sorted(present)} but the manifest lists {sorted(listed)}"
        for name, entry in manifest["files"].items():
            digest = hashlib.sha256(objects[folder + name]).hexdigest()
            assert digest == entry["sha256"], f"{folder}{name}: checksum differs from its manifest"
    staging = [k for k in objects if k.startswith(f"{lake_prefix}/_staging/")]
    return {"partitions": len(manifests), "staging_leftovers": len(staging)}


def test_daily_and_finetune_on_celery_with_a_gpu_worker_killed_mid_scoring(stack: Stack):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from mlflow import MlflowClient

    st = stack
    t0 = time.monotonic()
    try:
        for dag_id in ("dealrec_daily", "dealrec_finetune"):
            wait_for(f"{dag_id} parsed", lambda d=dag_id: st.rest("GET", f"/dags/{d}"), 240, 3, st.diagnostics)
        st.rest("PATCH", "/dags/dealrec_finetune", json={"is_paused": False})
        finetune_runs_before = st.rest("GET", "/dags/dealrec_finetune/dagRuns")["total_entries"]

        dt = st.last_synthetic_day()
        run_id = st.start_paused_daily({**DAILY_CONF, "dt": dt})
        print(f"triggered dealrec_daily {run_id} for dt={dt} after {time.monotonic() - t0:.0f} s")

        # Kill the gpu worker (SIGKILL to it and its task processes) while a scoring task runs on it, and start a
        # replacement. Should the task have finished in the instant before the kill, catch the next one.
        gpu_worker = next(p for p in st.procs if p.name == "worker-gpu-0")

        def scoring_running():
            tis = st.task_instances("dealrec_daily", run_id)
            run = st.rest("GET", f"/dags/dealrec_daily/dagRuns/{run_id}")
            assert run["state"] != "failed", "the daily run failed before the fault:\n" + st.diagnostics()
            return next((t for t in tis if t["task_id"] in SCORING_TASKS and t["state"] == "running"), None)

        def same_ti(tis: list[dict], ti: dict) -> dict:
            return next(t for t in tis if (t["task_id"], t["map_index"]) == (ti["task_id"], ti["map_index"]))

        for _ in range(3):
            victim = wait_for("a scoring task running on the gpu worker", scoring_running, DAILY_TIMEOUT_S, 0.5)
            st.kill(gpu_worker)
            gpu_worker = st.start_worker("gpu")
            after = same_ti(st.task_instances("dealrec_daily", run_id), victim)
            if not (after["state"] == "success" and after["try_number"] == victim["try_number"]):
                break
        else:
            pytest.fail("every scoring task finished before the gpu worker could be killed")
        print(f"killed the gpu worker during {victim['task_id']}[{victim['map_index']}] try {victim['try_number']}")

        wait_for("dealrec_daily to succeed", lambda: st.run_done("dealrec_daily", run_id), DAILY_TIMEOUT_S, 3)
        print(f"dealrec_daily succeeded after {time.monotonic() - t0:.0f} s")
        daily_tis = st.task_instances("dealrec_daily", run_id)
        daily_runs = st.rest("GET", "/dags/dealrec_daily/dagRuns")["dag_runs"]
        assert [r["dag_run_id"] for r in daily_runs] == [run_id], "a scheduled run slipped in"
        retried = same_ti(daily_tis, victim)
        assert retried["state"] == "success" and retried["try_number"] > victim["try_number"], retried
        assert retried["hostname"] == GPU_HOST, retried
        path = f"/dags/dealrec_daily/dagRuns/{run_id}/taskInstances/{victim['task_id']}/{victim['map_index']}/tries"
        tries = {t["try_number"]: t for t in st.rest("GET", path)["task_instances"]}
        killed = tries[victim["try_number"]]
        assert killed["state"] == "failed" and killed["hostname"] == GPU_HOST, killed  # failed by the heartbeat check

        def finetune_run():
            runs = st.rest("GET", "/dags/dealrec_finetune/dagRuns", params={"limit": 100})
            if runs["total_entries"] <= finetune_runs_before:
                return None
            return max(runs["dag_runs"], key=lambda r: r["run_after"])

        ft = wait_for("dealrec_finetune to start on the coreset asset", finetune_run, 180, 3, st.diagnostics)
        assert ft["run_type"] == "asset_triggered", ft
        wait_for(
            "dealrec_finetune to succeed",
            lambda: st.run_done("dealrec_finetune", ft["dag_run_id"]),
            FINETUNE_TIMEOUT_S,
            3,
        )
        print(f"dealrec_finetune succeeded after {time.monotonic() - t0:.0f} s")
        finetune_tis = st.task_instances("dealrec_finetune", ft["dag_run_id"])

        # GPU-queue tasks ran on the gpu worker, the others on the default one.
        for ti in daily_tis + finetune_tis:
            assert ti["state"] == "success", ti
            expected = GPU_HOST if ti["queue"] == "gpu" else CPU_HOST
            assert ti["hostname"] == expected, f"{ti['dag_id']}.{ti['task_id']}[{ti['map_index']}] on {ti['hostname']}"
        gpu_tasks = {t["task_id"] for t in daily_tis + finetune_tis if t["queue"] == "gpu"}
        assert {"influence", "effort", "finetune"} <= gpu_tasks, gpu_tasks

        # The coreset in S3: Parquet + manifest, whole; every published partition whole; no duplicated scores.
        objects = st.objects("lake/")
        counts = _published_partitions_are_whole(objects, "lake")
        coreset_key = f"lake/coreset/dt={dt}/coreset.parquet"
        assert coreset_key in objects and f"lake/coreset/dt={dt}/_manifest.json" in objects
        coreset = pq.read_table(pa.BufferReader(objects[coreset_key])).to_pydict()
        assert len(coreset["sample_id"]) == len(set(coreset["sample_id"])) == DAILY_CONF["n"]
        for dataset, column in (("scores_influence", "influence"), ("scores_effort", "effort")):
            key = next(k for k in objects if k.startswith(f"lake/{dataset}/dt={dt}/") and k.endswith(".parquet"))
            table = pq.read_table(pa.BufferReader(objects[key])).to_pydict()
            assert len(table["sample_id"]) == len(set(table["sample_id"])) > DAILY_CONF["n"], dataset
            assert all(v is not None for v in table[column]), f"{dataset}: missing scores"
        print(f"lake: {counts}")

        # The control arm: a random coreset of the same size beside the primary one, each fine-tuned and evaluated.
        control_key = f"lake/coreset/arm=random/dt={dt}/coreset.parquet"
        assert control_key in objects and f"lake/gate/dt={dt}/gate.json" in objects
        assert pq.read_table(pa.BufferReader(objects[control_key])).num_rows == DAILY_CONF["n"]
        assert {"finetune", "evaluate", "register"} <= {t["task_id"] for t in finetune_tis if t["map_index"] == 1}

        # MLflow: one registered version per arm of this day, the better one holding the champion alias, registered
        # once each.
        client = MlflowClient(tracking_uri=st.env["MLFLOW_TRACKING_URI"])
        champion = client.get_model_version_by_alias("dealrec-bigrec", "champion")
        assert champion.tags.get("dt") == dt, champion.tags
        arms = {
            "dealrec": f"s3://{st.bucket}/lake/coreset/dt={dt}",
            "random": f"s3://{st.bucket}/lake/coreset/arm=random/dt={dt}",
        }
        assert champion.tags.get("coreset_uri") == arms[champion.tags.get("strategy")], champion.tags
        assert champion.tags.get("orchestrator_run_id"), champion.tags
        versions = client.search_model_versions("name='dealrec-bigrec'")
        assert sorted(v.tags.get("strategy") for v in versions) == ["dealrec", "random"], "a retry registered twice"
        print(f"champion: version {champion.version}; whole test {time.monotonic() - t0:.0f} s after start-up")
    except BaseException:
        print(st.diagnostics(60))
        raise
