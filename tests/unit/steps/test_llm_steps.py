"""LLM steps on a small synthetic lake: sharded effort merges to the unsharded result; fine-tune then evaluate."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from dealrec_tasks.errors import InputError
from dealrec_tasks.llm.config import EffortConfig, EvalConfig, FinetuneConfig, LoRAConfig
from dealrec_tasks.steps import llm as llm_steps
from dealrec_tasks.storage import Lake
from tests.conftest import synthetic_lake

DT = "2026-01-05"


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Lake:
    return synthetic_lake(tmp_path_factory.mktemp("lake"), DT, 8, users=40, items=120, days=5, events_per_day=60)


def test_sharded_effort_merges_to_the_unsharded_scores(lake, tiny_dir):
    cfg = EffortConfig(batch_size=4)
    one = llm_steps.effort(lake, DT, tiny_dir, cfg, LoRAConfig(), (0, 1))
    llm_steps.effort(lake, DT, tiny_dir, cfg, LoRAConfig(), (0, 2))
    with pytest.raises(InputError, match=r"shard\(s\) \[1\] of 2 are not published"):
        llm_steps.merge_effort(lake, DT, 2)
    llm_steps.effort(lake, DT, tiny_dir, cfg, LoRAConfig(), (1, 2))
    merged = llm_steps.merge_effort(lake, DT, 2)
    n_train = lake.read("samples", DT, "samples.parquet").column("split").to_pylist().count("train")
    assert merged.counts["samples"] == one.counts["samples"] == n_train > 20
    single = lake.read(f"effort/dt={DT}/shard=0-of-1", None, "effort.parquet").to_pydict()
    both = lake.read("scores_effort", DT, "effort.parquet").to_pydict()
    order = np.argsort(single["sample_id"])
    assert both["sample_id"] == list(np.asarray(single["sample_id"])[order])
    np.testing.assert_allclose(both["effort"], np.asarray(single["effort"])[order], rtol=1e-5)
    assert not llm_steps.merge_effort(lake, DT, 2).changed  # a retried merge is a no-op


def test_effort_rerun_with_the_same_inputs_reuses_the_shard_without_recomputing(lake, tiny_dir, monkeypatch):
    from dealrec_tasks.llm.effort import EffortScorer

    cfg = EffortConfig(batch_size=4)
    llm_steps.effort(lake, DT, tiny_dir, cfg, LoRAConfig(), (0, 1))
    before = lake.manifest(f"effort/dt={DT}/shard=0-of-1")

    def recompute(*_a, **_k):
        raise AssertionError("effort recomputed for unchanged inputs")

    with monkeypatch.context() as m:
        m.setattr(EffortScorer, "score", recompute)
        again = llm_steps.effort(lake, DT, tiny_dir, cfg, LoRAConfig(), (0, 1))
    assert not again.changed and again.counts["reused"] is True
    assert lake.manifest(f"effort/dt={DT}/shard=0-of-1") == before
    other = llm_steps.effort(lake, DT, tiny_dir, EffortConfig(batch_size=4, seed=1), LoRAConfig(), (0, 1))
    assert other.changed  # another LoRA init: recomputed and republished
    assert lake.manifest(f"effort/dt={DT}/shard=0-of-1")["inputs"]["samples"]


def test_finetune_without_coreset_needs_an_explicit_choice(lake, tiny_dir, tmp_path):
    with pytest.raises(InputError, match="no published coreset"):
        llm_steps.finetune(lake, DT, tiny_dir, FinetuneConfig(), LoRAConfig(), str(tmp_path))


def test_finetune_then_evaluate(lake, tiny_dir, tmp_path):
    cfg = FinetuneConfig(epochs=2, batch_size=8, micro_batch_size=8)
    result = llm_steps.finetune(lake, DT, tiny_dir, cfg, LoRAConfig(), str(tmp_path), from_samples=16)
    manifest = lake.require_manifest("adapters", DT)
    assert {"adapter_model.safetensors", "adapter_config.json"} <= set(manifest["files"])
    assert manifest["base_model"]["fingerprint"] and result.counts["train_samples"] == 16
    # A retry of the same task resumes from the finished checkpoint: nothing is trained or published again.
    assert not llm_steps.finetune(lake, DT, tiny_dir, cfg, LoRAConfig(), str(tmp_path), from_samples=16).changed
    # Another worker, without the first run's checkpoints, finds the published adapter: nothing is trained.
    other = llm_steps.finetune(lake, DT, tiny_dir, cfg, LoRAConfig(), str(tmp_path / "other"), from_samples=16)
    assert not other.changed and not (tmp_path / "other").exists()
    ev = llm_steps.evaluate(lake, DT, tiny_dir, EvalConfig(num_beams=2, max_new_tokens=8), str(tmp_path / "c"))
    metrics = lake.storage.read_json(ev.uris["evaluation"] + "/metrics.json")
    assert metrics["users"] == ev.counts["users"] > 0
    assert 0.0 <= metrics["recall@50"] <= 1.0
    # BIGRec's popularity-aware grounding beside the plain one, its weight chosen on validation users and stored.
    assert metrics["popaware_gamma"] in [float(g) for g in range(100)] and metrics["popaware_valid_users"] > 0
    assert 0.0 <= metrics["popaware_recall@50"] <= 1.0
    again = llm_steps.evaluate(lake, DT, tiny_dir, EvalConfig(num_beams=2, max_new_tokens=8), str(tmp_path / "d"))
    assert not again.changed and again.counts == ev.counts and not (tmp_path / "d").exists()
    # Other fine-tuning settings train again, and the evaluation follows the new adapter.
    assert llm_steps.finetune(
        lake,
        DT,
        tiny_dir,
        FinetuneConfig(epochs=1, batch_size=8, micro_batch_size=8),
        LoRAConfig(),
        str(tmp_path / "e1"),
        from_samples=16,
    ).changed
    assert llm_steps.evaluate(
        lake, DT, tiny_dir, EvalConfig(num_beams=2, max_new_tokens=8), str(tmp_path / "c")
    ).changed


def test_finetune_reads_the_announced_coreset_uri_and_only_inside_the_lake(lake, tmp_path):
    """The DAG passes the coreset URI of the asset event: that partition is the one read, and a URI outside the
    lake (an event's extra is data anyone with asset-event rights can post) is refused before anything is read."""
    rows = lake.read("samples", DT, "samples.parquet").slice(0, 3)
    other = "coreset_arm/dt=" + DT  # another partition than the day's default coreset/dt=D
    table = pa.table({"sample_id": rows.column("sample_id"), "history": rows.column("history")})
    lake.publish(other.split("/")[0], DT, {"coreset.parquet": table})
    got, source = llm_steps.training_rows(lake, DT, 0, 0, coreset=lake.partition("coreset_arm", DT))
    assert (
        source == lake.partition("coreset_arm", DT)
        and [r["sample_id"] for r in got] == rows.column("sample_id").to_pylist()
    )
    with pytest.raises(InputError, match="not a partition of the lake"):
        llm_steps.training_rows(lake, DT, 0, 0, coreset=f"file://{tmp_path}/elsewhere/coreset/dt={DT}")
    with pytest.raises(InputError, match="no published coreset"):
        llm_steps.training_rows(lake, DT, 256, 0, coreset=lake.partition("coreset_missing", DT))


def test_finetune_follows_the_base_models_preset(lake, tiny_dir, tmp_path):
    """A base model that ships a fine-tuning preset gets it (recorded in the adapter's config); another keeps
    BIGRec's defaults, and ``preset="none"`` takes the settings as given."""
    import json
    import shutil

    from dealrec_tasks.llm.finetune import PRESET_FILE

    model = tmp_path / "with-preset"
    shutil.copytree(tiny_dir, model)
    (model / PRESET_FILE).write_text(json.dumps({"name": "test preset", "finetune": {"lr": 3e-3, "epochs": 1}}))
    cfg = FinetuneConfig(batch_size=8, micro_batch_size=8)
    result = llm_steps.finetune(lake, DT, str(model), cfg, LoRAConfig(), str(tmp_path / "w"), from_samples=16)
    config = lake.require_manifest("adapters", DT)["config"]
    assert (config["lr"], config["epochs"], config["preset"]) == (3e-3, 1, "auto")
    assert result.counts["preset"].startswith("test preset (lr 0.003, epochs 1") and result.counts["epochs"] == 1
    none = FinetuneConfig(preset="none", epochs=1, batch_size=8, micro_batch_size=8)
    llm_steps.finetune(lake, DT, str(model), none, LoRAConfig(), str(tmp_path / "w2"), from_samples=16)
    assert lake.require_manifest("adapters", DT)["config"]["lr"] == FinetuneConfig().lr
