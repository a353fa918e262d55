"""The promotion gate decides on checksum-verified numbers only, and nothing tampered reaches MLflow.

Each test tampers with a copy of the session's lake the way someone with write access to the bucket could: an
edited manifest field, a changed byte in a checksummed file. The gate must neither promote on it nor log it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from dealrec_tasks.errors import InputError
from dealrec_tasks.steps import tracking as steps
from dealrec_tasks.storage import Lake


def _client(cfg) -> MlflowClient:
    return MlflowClient(tracking_uri=cfg.resolved_uri(), registry_uri=cfg.resolved_uri())


@pytest.fixture
def copy(tracked, tmp_path) -> Lake:
    shutil.copytree(tracked.root / "lake", tmp_path / "lake")
    return Lake(str(tmp_path / "lake"))


def _part(lake: Lake, dataset: str, dt: str) -> Path:
    return Path(lake.partition(dataset, dt).removeprefix("file://"))


def _nothing_logged(cfg) -> bool:
    client = _client(cfg)
    exp = client.get_experiment_by_name(cfg.experiment)
    runs = client.search_runs([exp.experiment_id]) if exp is not None else []
    return not runs and not client.search_model_versions(f"name = '{cfg.model_name}'")


def test_an_edited_metric_in_the_evaluation_manifest_is_not_what_gets_registered(tracked, cfg, copy):
    """ndcg@20 = 0.99 written into the manifest (no checksum covers its fields): register reads metrics.json. (The
    gate reads neither: it pairs per_user.parquet; tests/unit/tracking/test_gate.py.)"""
    dt = tracked.dt
    true = json.loads((_part(tracked.lake, "evaluation", dt) / "metrics.json").read_text())["ndcg@20"]
    assert true < 0.99

    path = _part(copy, "evaluation", dt) / "_manifest.json"
    manifest = json.loads(path.read_text())
    manifest["metrics"]["ndcg@20"] = 0.99
    path.write_text(json.dumps(manifest))
    reg = steps.register(copy, dt, tracked.model_dir, cfg, "run__2")
    assert reg.counts["ndcg@20"] == pytest.approx(true)
    tags = _client(cfg).get_model_version(cfg.model_name, str(reg.counts["version"])).tags
    assert float(tags["eval.ndcg_at_20"]) == pytest.approx(true)


@pytest.mark.parametrize(
    ("dataset", "file"),
    [
        ("evaluation", "metrics.json"),  # what the gate compares
        ("evaluation", "examples.json"),  # logged as an artifact
        ("adapters", "adapter_model.safetensors"),  # the weights the version serves
        ("adapters", "adapter_config.json"),
    ],
)
def test_a_changed_byte_in_a_checksummed_file_is_refused_before_mlflow(tracked, cfg, copy, dataset, file):
    path = _part(copy, dataset, tracked.dt) / file
    data = path.read_bytes()
    if file == "metrics.json":  # the attack that matters: a better number, still valid JSON
        metrics = json.loads(data)
        data = json.dumps(metrics | {"ndcg@20": 0.99}, indent=2).encode()
    else:
        data = bytearray(data)
        data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=rf"{dataset}/dt={tracked.dt}/{file.replace('.', '[.]')}: checksum differs"):
        steps.register(copy, tracked.dt, tracked.model_dir, cfg, "run__1")
    assert _nothing_logged(cfg)  # no run (not even a failed one), no version, so nothing to promote


def test_a_manifest_entry_outside_the_adapter_folder_is_refused_by_register(tracked, cfg, copy, tmp_path):
    path = _part(copy, "adapters", tracked.dt) / "_manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"]["../evil_written.txt"] = dict(manifest["files"]["adapter_config.json"])
    shutil.copy(path.parent / "adapter_config.json", path.parent.parent / "evil_written.txt")
    path.write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=r"_manifest.json: file entry '../evil_written.txt' is not a plain file"):
        steps.register(copy, tracked.dt, tracked.model_dir, cfg, "run__1")
    assert _nothing_logged(cfg)


def test_metrics_json_that_is_not_an_object_is_refused(tracked, cfg, copy):
    """Checksummed but not metrics (a republished partition of another shape): refused by name, not a crash."""
    part = _part(copy, "evaluation", tracked.dt)
    manifest = json.loads((part / "_manifest.json").read_text())
    copy.publish("evaluation", tracked.dt, {}, config=manifest["config"], blobs={"metrics.json": b"[1, 2]"})
    with pytest.raises(InputError, match=r"metrics\.json: expected an object of metrics, not a JSON list"):
        steps.register(copy, tracked.dt, tracked.model_dir, cfg, "run__1")


@pytest.mark.parametrize("file", ["report.png", "coreset.parquet"])
def test_the_pruning_run_logs_only_verified_files(tracked, cfg, copy, file):
    path = _part(copy, "coreset", tracked.dt) / file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=rf"coreset/dt={tracked.dt}/{file.replace('.', '[.]')}: checksum differs"):
        steps.log_pruning(copy, tracked.dt, cfg, "daily__1")


def test_the_pruning_run_refuses_a_selected_count_that_is_not_the_coresets(tracked, cfg, copy):
    path = _part(copy, "coreset", tracked.dt) / "_manifest.json"
    manifest = json.loads(path.read_text())
    manifest["counts"]["selected"] = 9999
    path.write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=r"counts.selected=9999 but the checksummed coreset.parquet has 16 rows"):
        steps.log_pruning(copy, tracked.dt, cfg, "daily__1")


def test_the_surrogate_metrics_are_logged_only_when_verified(tracked, cfg, copy):
    path = _part(copy, "surrogate", tracked.dt) / "metrics.json"
    path.write_bytes(path.read_bytes().replace(b"}", b" }", 1))
    with pytest.raises(InputError, match=rf"surrogate/dt={tracked.dt}/metrics[.]json: checksum differs"):
        steps.log_pruning(copy, tracked.dt, cfg, "daily__1")


def test_an_adapter_republished_after_its_evaluation_is_not_registered_with_the_old_numbers(tracked, cfg, copy):
    """A retried fine-tune republishes the adapter (valid checksums, other weights): the evaluation on file
    scored the previous weights, so register refuses until evaluate runs again."""
    dt = tracked.dt
    adapter = copy.require_manifest("adapters", dt)
    files = {name: copy.read_verified_bytes("adapters", dt, name) for name in adapter["files"]}
    weights = next(n for n in files if n.endswith(".safetensors"))
    files[weights] = files[weights][:-1] + bytes([files[weights][-1] ^ 0x01])
    extra = {k: v for k, v in adapter.items() if k not in ("files", "config", "uri", "dt", "dataset")}
    assert copy.publish("adapters", dt, {}, blobs=files, config=adapter["config"], extra=extra).changed
    with pytest.raises(InputError, match="scored other adapter weights"):
        steps.register(copy, dt, tracked.model_dir, cfg, "run__3")
    assert _nothing_logged(cfg)
