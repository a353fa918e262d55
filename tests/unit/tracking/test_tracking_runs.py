"""Pruning and fine-tuning runs on the embedded SQLite store: content, links, idempotent retries, the model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from peft import PeftModel

from dealrec_tasks.errors import InputError
from dealrec_tasks.llm.config import EvalConfig
from dealrec_tasks.llm.prompts import PromptTemplate, encode
from dealrec_tasks.llm.tiny import load
from dealrec_tasks.steps import tracking as steps
from dealrec_tasks.storage import join_uri
from dealrec_tasks.tracking.client import TAG_DIGEST, TAG_DT, TAG_KIND, TAG_ORCHESTRATOR_RUN
from dealrec_tasks.tracking.model import load_pyfunc, load_torch_model


def _client(cfg) -> MlflowClient:
    uri = cfg.resolved_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _artifacts(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    out = set()
    for f in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, f.path) if f.is_dir else {f.path}
    return out


def test_pruning_run_content_and_idempotent_retry(tracked, cfg):
    lake, dt = tracked.lake, tracked.dt
    first = steps.log_pruning(lake, dt, cfg, "daily__1")
    run_id = first.counts["run_id"]
    again = steps.log_pruning(lake, dt, cfg, "daily__1")
    assert again.counts["run_id"] == run_id and not again.changed and first.changed

    client = _client(cfg)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert tags[TAG_DT] == dt and tags[TAG_ORCHESTRATOR_RUN] == "daily__1" and tags[TAG_KIND] == "pruning"
    assert tags["coreset_uri"] == lake.partition("coreset", dt)
    assert params["select.strategy"] == "dealrec" and params["select.n"] == "16" and params["select.k"] == "4"
    assert params["influence.negatives"] == "64" and params["surrogate.hidden"] == "8"
    assert metrics["selected"] == 16 and metrics["candidates"] > 16
    assert metrics["coreset.overall.min"] <= metrics["coreset.overall.mean"] <= metrics["coreset.overall.max"]
    assert "scores.influence.std" in metrics and "scores.effort.p90" in metrics
    assert "surrogate.test_ndcg_at_20" in metrics and "surrogate.valid_recall" in metrics
    assert len(client.get_metric_history(run_id, "surrogate.epoch.loss")) == 2  # one point per surrogate epoch
    arts = _artifacts(client, run_id)
    assert {"coreset/report.png", "coreset/_manifest.json", "surrogate/metrics.json"} <= arts
    manifest = json.loads(Path(client.download_artifacts(run_id, "coreset/_manifest.json")).read_text())
    assert manifest == lake.require_manifest("coreset", dt)

    # Another orchestrator run of the same day is another MLflow run.
    other = steps.log_pruning(lake, dt, cfg, "manual__2")
    assert other.counts["run_id"] != run_id and other.changed


def test_register_links_runs_and_a_retry_registers_nothing_twice(tracked, cfg):
    lake, dt = tracked.lake, tracked.dt
    pruning = steps.log_pruning(lake, dt, cfg, "daily__1")
    reg = steps.register(lake, dt, tracked.model_dir, cfg, "finetune__1")
    assert reg.counts["version"] == 1 and reg.counts["pruning_run_id"] == pruning.counts["run_id"]
    retry = steps.register(lake, dt, tracked.model_dir, cfg, "finetune__1")
    assert retry.counts == reg.counts and not retry.changed

    client = _client(cfg)
    run = client.get_run(reg.counts["run_id"])
    assert run.data.tags["mlflow.parentRunId"] == pruning.counts["run_id"]  # nested under its pruning run
    assert run.data.tags["coreset_uri"] == lake.partition("coreset", dt)
    assert run.data.params["lora.r"] == "8" and run.data.params["finetune.lr"] == "0.005"
    assert run.data.params["base_model.path"] == str(Path(tracked.model_dir).resolve())
    evaluation = lake.require_manifest("evaluation", dt)["metrics"]
    for key in ("recall@10", "ndcg@10", "recall@20", "ndcg@20", "recall@50", "ndcg@50"):
        assert run.data.metrics["eval." + key.replace("@", "_at_")] == pytest.approx(evaluation[key])
    history = lake.require_manifest("adapters", dt)["metrics"]["history"]
    losses = client.get_metric_history(run.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in losses] == [(h["epoch"], pytest.approx(h["train_loss"])) for h in history]
    assert {"model/MLmodel", "evaluation/metrics.json", "adapter/_manifest.json"} <= _artifacts(client, run.info.run_id)

    versions = client.search_model_versions(f"name = '{cfg.model_name}'")
    assert len(versions) == 1
    tags = versions[0].tags
    assert tags[TAG_DT] == dt and tags[TAG_ORCHESTRATOR_RUN] == "finetune__1"
    assert tags["coreset_uri"] == lake.partition("coreset", dt) and tags["run_id"] == run.info.run_id
    assert float(tags["eval.ndcg_at_20"]) == pytest.approx(evaluation["ndcg@20"])

    # A crashed earlier try left a half-logged run of the same identity: it is replaced, not finished.
    stale = client.create_run(
        client.get_experiment_by_name(cfg.experiment).experiment_id,
        tags={
            TAG_KIND: "finetune",
            TAG_DT: dt,
            TAG_ORCHESTRATOR_RUN: "finetune__2",
            TAG_DIGEST: run.data.tags[TAG_DIGEST],
        },
    )
    second = steps.register(lake, dt, tracked.model_dir, cfg, "finetune__2")
    assert second.counts["version"] == 2 and second.counts["run_id"] != stale.info.run_id
    assert client.get_run(stale.info.run_id).info.lifecycle_stage == "deleted"


def test_logged_model_has_the_trained_logits_and_generates(tracked, cfg):
    """The NOTES.md trap: a reloaded PEFT model must give exactly the logits of the model that was logged."""
    lake, dt = tracked.lake, tracked.dt
    reg = steps.register(lake, dt, tracked.model_dir, cfg, "finetune__1")
    uri = f"models:/{cfg.model_name}/{reg.counts['version']}"

    # The model as fine-tuning and evaluation use it: base from its directory + the published adapter.
    tokenizer, base = load(tracked.model_dir)
    adapter_dir = tracked.root / "adapter-copy"
    adapter_dir.mkdir(exist_ok=True)
    for name in lake.require_manifest("adapters", dt)["files"]:
        data = lake.storage.read_bytes(join_uri(lake.partition("adapters", dt), name))
        (adapter_dir / name).write_bytes(data)
    with torch.no_grad():
        batch = tokenizer(["a title; another title", "one more game"], return_tensors="pt", padding=True)
        base_logits = base(**batch).logits
        trained = PeftModel.from_pretrained(base, adapter_dir).eval()
        want = trained(**batch).logits
        _, logged = load_torch_model(uri, cfg.resolved_uri())
        got = logged(**batch).logits
    assert (want - base_logits).abs().max() > 1e-4  # the adapter matters, so equality below is not vacuous
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)

    # Generation through the pyfunc interface equals generation with the trained model.
    pyfunc = load_pyfunc(uri, cfg.resolved_uri())
    histories = [["Game A", "Game B"], ["Game C"]]
    out = pyfunc.predict(pd.DataFrame({"history": histories}), params={"num_beams": 2, "max_new_tokens": 6})
    from dealrec_tasks.llm.evaluate import generate_titles

    prompts = [encode(tokenizer, PromptTemplate("games"), h, None, 512) for h in histories]
    assert out == generate_titles(trained, tokenizer, prompts, EvalConfig(num_beams=2, max_new_tokens=6))
    assert len(out) == 2 and all(isinstance(t, str) for t in out)

    # Only the adapter is stored: no copy of the base weights in the version.
    client = _client(cfg)
    stored = Path(client.download_artifacts(reg.counts["run_id"], "model"))
    files = [p for p in stored.rglob("*") if p.is_file()]
    assert not any(p.name == "model.safetensors" for p in files)
    assert sum(p.stat().st_size for p in files) < (Path(tracked.model_dir) / "model.safetensors").stat().st_size
    assert "python_function" in (stored / "MLmodel").read_text()
    assert "peft==" in (stored / "requirements.txt").read_text()


def test_base_model_is_checked_by_fingerprint(tracked, cfg, tmp_path):
    lake, dt = tracked.lake, tracked.dt
    other = tmp_path / "other-base"
    shutil.copytree(tracked.model_dir, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(config | {"note": "changed"}))
    with pytest.raises(InputError, match="fingerprint .* differs"):
        steps.register(lake, dt, str(other), cfg, "finetune__x")
    with pytest.raises(InputError, match="no Hugging Face model there"):
        steps.register(lake, dt, str(tmp_path), cfg, "finetune__x")
    reg = steps.register(lake, dt, tracked.model_dir, cfg, "finetune__1")
    uri = f"models:/{cfg.model_name}/{reg.counts['version']}"
    with pytest.raises(InputError, match="fingerprint .* differs"):
        load_pyfunc(uri, cfg.resolved_uri(), base_model=str(other))


def test_register_needs_the_days_adapter_and_evaluation(tracked, cfg):
    with pytest.raises(InputError, match=r"adapters/dt=2026-01-04: no published partition"):
        steps.register(tracked.lake, "2026-01-04", tracked.model_dir, cfg, "x")
