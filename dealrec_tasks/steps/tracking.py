"""Tracking steps: what the lake holds for a day -> MLflow runs, a registered model version, the champion alias.

Every function is idempotent: a retry of the same orchestrator run finds its MLflow run and model version by
tags (dt, orchestrator run id, digest of the inputs) instead of creating a second one. Nothing is registered
before its run is complete, and the decision to promote is recorded before the alias moves.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dealrec_tasks.catalogue import (
    ADAPTERS,
    CORESET,
    EVALUATION,
    SAMPLES,
    SCORES_EFFORT,
    SCORES_INFLUENCE,
    SURROGATE,
    arm_dataset,
)
from dealrec_tasks.config import Day
from dealrec_tasks.errors import ConfigError, InputError
from dealrec_tasks.steps.common import StepResult
from dealrec_tasks.storage import MANIFEST, Lake, join_uri, sha256
from dealrec_tasks.tracking.config import TrackingConfig

PRUNING, FINETUNE = "pruning", "finetune"
# Evaluation settings that do not change which users are scored nor how: left out of the comparability key.
_EVAL_SET_IGNORES = ("batch_size", "embed_batch_size", "per_user")


def _check_run_id(orchestrator_run_id: str) -> None:
    if not orchestrator_run_id or not orchestrator_run_id.strip():
        raise ConfigError("orchestrator_run_id='': give the orchestrator's run id (it makes retries idempotent)")


def verified_metrics(lake: Lake, dt: str, evaluation: dict[str, Any], dataset: str = EVALUATION) -> dict[str, float]:
    """The metrics the promotion gate compares: from the evaluation's checksummed ``metrics.json``, never from the
    manifest's own ``metrics`` field, which no checksum covers (an edit there would otherwise pick the champion)."""
    values, _ = lake.read_verified_json(dataset, dt, "metrics.json", evaluation)
    if not isinstance(values, dict):
        uri = join_uri(lake.partition(dataset, dt), "metrics.json")
        raise InputError(f"{uri}: expected an object of metrics, not a JSON {type(values).__name__}")
    return {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _check_scored_adapter(
    lake: Lake, dt: str, evaluation: dict[str, Any], adapter: dict[str, Any], arm: str | None = None
) -> None:
    """The metrics must be the published adapter's: an adapter republished after its evaluation (a retried
    fine-tune) would otherwise be registered with the previous weights' numbers. Evaluations from before this
    record was kept have no ``scored_adapter.json`` and are taken as they are."""
    from dealrec_tasks.steps.llm import SCORED_ADAPTER

    if SCORED_ADAPTER not in evaluation.get("files", {}):
        return
    scored, _ = lake.read_verified_json(arm_dataset(EVALUATION, arm), dt, SCORED_ADAPTER, evaluation)
    published = {name: entry["sha256"] for name, entry in adapter["files"].items()}
    if scored != published:
        raise InputError(
            f"{lake.partition(arm_dataset(EVALUATION, arm), dt)}: scored other adapter weights than the ones "
            f"published in {lake.partition(arm_dataset(ADAPTERS, arm), dt)} (republished since?); run "
            f"`dealrec evaluate --dt {dt}` again"
        )


def _stats(values: np.ndarray) -> dict[str, float]:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return {}
    q = np.quantile(values, [0.1, 0.5, 0.9])
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
        "p10": float(q[0]),
        "p50": float(q[1]),
        "p90": float(q[2]),
    }


def _column(lake: Lake, dataset: str, dt: str, file: str, column: str) -> np.ndarray:
    table = lake.read(dataset, dt, file)
    return table.column(column).to_numpy(zero_copy_only=False).astype(np.float64)


# ---------------------------------------------------------------------------------------------------------
# Pruning run
# ---------------------------------------------------------------------------------------------------------
def log_pruning(
    lake: Lake,
    dt: str,
    cfg: TrackingConfig,
    orchestrator_run_id: str,
    *,
    run_tags: dict[str, str] | None = None,
    arm: str | None = None,
) -> StepResult:
    """The coreset of ``dt`` as an MLflow run: selection/scoring/surrogate configs as params; counts, coverage,
    score statistics and surrogate metrics as metrics; report.png and the coreset manifest as artifacts.

    ``run_tags`` (e.g. the orchestrator's own run id when ``orchestrator_run_id`` is a coarser key) are tagged on
    the run that is created; a retry that finds it leaves them as the first run wrote them."""
    from dealrec_tasks.tracking.client import Tracking
    from dealrec_tasks.tracking.runs import log_run

    dt = str(Day(dt))  # checked; a plain str for MLflow (its YAML cannot represent a str subclass)
    _check_run_id(orchestrator_run_id)
    coreset = arm_dataset(CORESET, arm)
    raw = lake.manifest_bytes(coreset, dt)
    manifest = json.loads(raw)
    coreset_uri = lake.partition(coreset, dt)

    def content(_run_id: str):
        return _pruning_content(lake, dt, raw, manifest, run_tags, coreset)

    tr = Tracking(cfg)
    tr.ping()
    name = f"pruning dt={dt}" + (f" arm={arm}" if arm else "")
    run_id, changed = log_run(tr, PRUNING, dt, orchestrator_run_id, sha256(raw), name, content)
    counts = {"run_id": run_id, "selected": manifest.get("counts", {}).get("selected")}
    return StepResult("track-pruning", {"run": tr.run_link(run_id), "coreset": coreset_uri}, counts, changed)


def _pruning_content(
    lake: Lake,
    dt: str,
    raw: bytes,
    manifest: dict[str, Any],
    run_tags: dict[str, str] | None,
    coreset: str = CORESET,
):
    """The pruning run's params, metrics, tags and artifacts. Built inside ``log_run``, once the run exists: a
    retry that finds the finished run reads nothing, and a corrupt partition found here marks the new run FAILED."""
    from dealrec_tasks.tracking.runs import RunContent

    coreset_uri = lake.partition(coreset, dt)
    c = RunContent()
    c.add_params("select", {k: v for k, v in manifest["config"].items() if k != "source_sha256"})
    counts = manifest.get("counts", {})
    c.add_metric("candidates", counts.get("candidates"))
    c.add_metric("selected", counts.get("selected"))
    groups = counts.get("groups") or {}
    if groups:
        c.add_metric("pruned", groups.get("pruned"))
        c.add_metric("groups_used", int(np.count_nonzero(groups.get("budgets") or [])))
        c.add_metric("groups", len(groups.get("budgets") or []))
    for key in ("items", "target_items"):
        c.add_metrics(f"coverage.{key}", manifest.get("coverage", {}).get(key, {}))
    table = lake.read(coreset, dt, "coreset.parquet")
    if counts.get("selected") is not None and counts["selected"] != table.num_rows:
        raise InputError(
            f"{join_uri(coreset_uri, MANIFEST)}: counts.selected={counts['selected']!r} but the checksummed "
            f"coreset.parquet has {table.num_rows} rows; the partition is corrupt, republish it"
        )
    for col in ("influence", "effort", "overall", "score"):
        values = table.column(col).to_numpy(zero_copy_only=False).astype(np.float64)
        c.add_metrics(f"coreset.{col}", _stats(values))
    _add_upstream(c, lake, dt)
    c.artifacts["coreset/_manifest.json"] = raw
    if "report.png" in manifest.get("files", {}):
        c.artifacts["coreset/report.png"] = lake.read_verified_bytes(coreset, dt, "report.png", manifest=manifest)
    c.tags.update(
        {
            "coreset_uri": coreset_uri,
            "strategy": str(manifest.get("strategy", manifest["config"].get("strategy", ""))),
            "mlflow.note.content": f"Coreset selection of dt={dt}: {coreset_uri}",
        }
        | (run_tags or {})
    )
    return c


def _add_upstream(c, lake: Lake, dt: str) -> None:
    """What the coreset was selected from, where the day has it: the two score tables and the surrogate."""
    for dataset, file, col in (
        (SCORES_INFLUENCE, "influence.parquet", "influence"),
        (SCORES_EFFORT, "effort.parquet", "effort"),
    ):
        scores_manifest = lake.manifest(dataset, dt)
        if scores_manifest is not None:
            c.add_params(col, scores_manifest.get("config", {}))
            c.add_metrics(f"scores.{col}", _stats(_column(lake, dataset, dt, file, col)))
            c.tags[f"{col}_uri"] = lake.partition(dataset, dt)
    surrogate = lake.manifest(SURROGATE, dt)
    if surrogate is not None:
        c.add_params("surrogate", surrogate.get("config", {}))
        c.add_metrics("surrogate", surrogate.get("counts", {}))
        if "metrics.json" in surrogate.get("files", {}):
            metrics, data = lake.read_verified_json(SURROGATE, dt, "metrics.json", surrogate)
            for row in metrics.get("history", []) if isinstance(metrics, dict) else []:
                step = int(row.get("epoch", 0))
                c.add_metrics("surrogate.epoch", {k: v for k, v in row.items() if k != "epoch"}, step)
            c.artifacts["surrogate/metrics.json"] = data


# ---------------------------------------------------------------------------------------------------------
# Fine-tuning run + model version
# ---------------------------------------------------------------------------------------------------------
def evaluation_set_id(lake: Lake, dt: str, evaluation: dict[str, Any]) -> str:
    """Who was evaluated and how: the evaluation config (less batch sizes) + the exact samples table it read.

    Two versions are comparable when these are equal: same test users and targets, same generation settings.
    """
    samples = lake.require_manifest(SAMPLES, dt)
    key = {
        "config": {k: v for k, v in evaluation.get("config", {}).items() if k not in _EVAL_SET_IGNORES},
        "samples_sha256": samples["files"]["samples.parquet"]["sha256"],
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def registration_digest(adapter_manifest: bytes, evaluation_manifest: bytes) -> str:
    """A registered version's identity (its run's and version's ``input_digest`` tag): both manifests as stored, so
    a republished adapter or evaluation is a new version, and the gate can tell from the lake alone which registered
    version is which arm's."""
    return hashlib.sha256(adapter_manifest + b"\x00" + evaluation_manifest).hexdigest()


def _pruning_run(tr, dt: str, coreset_digest: str | None):
    """The pruning run of the same coreset (same dt and manifest digest), else the latest one of ``dt``."""
    from dealrec_tasks.tracking.client import TAG_DIGEST, TAG_DT, TAG_KIND, quote

    base = f"tags.{TAG_KIND} = '{PRUNING}' and tags.{TAG_DT} = {quote(dt, 'dt')}"
    filters = [base + f" and tags.{TAG_DIGEST} = {quote(coreset_digest, 'digest')}"] if coreset_digest else []
    for flt in filters + [base]:
        finished = [r for r in tr.search_runs(flt) if r.info.status == "FINISHED"]
        if finished:
            return finished[0]
    return None


@dataclass(frozen=True)
class _Finetuned:
    """What ``register`` read of a day, every byte through its checksum, before MLflow is touched."""

    dt: str
    adapter_raw: bytes
    eval_raw: bytes
    adapter: dict[str, Any]
    evaluation: dict[str, Any]
    base_dir: Path
    fingerprint: str
    metrics: dict[str, float]
    eval_set: str
    coreset_uri: str
    coreset_digest: str | None
    eval_files: dict[str, bytes]
    arm: str | None = None
    strategy: str = ""
    adapter_uri: str = ""

    @property
    def digest(self) -> str:
        return registration_digest(self.adapter_raw, self.eval_raw)

    @property
    def eval_cfg(self) -> dict[str, Any]:
        return self.evaluation.get("config", {})


def register(
    lake: Lake,
    dt: str,
    model_dir: str,
    cfg: TrackingConfig,
    orchestrator_run_id: str,
    *,
    check_fingerprint: bool = True,
    run_tags: dict[str, str] | None = None,
    arm: str | None = None,
) -> StepResult:
    """Log the fine-tuning run of ``dt``'s arm (the primary one by default; linked as a child of its pruning run)
    and register its model version, tagged with the arm's strategy and its adapter's partition.

    The model is a pyfunc holding only the adapter; it loads the base model from ``model_dir`` (recorded with
    its fingerprint). The version is tagged dt / orchestrator_run_id / coreset_uri / input_digest, the
    evaluation metrics (``eval.ndcg_at_20`` ...) and ``eval_set`` (which users, which settings).

    Those metrics decide promotion, so they come from the checksummed ``metrics.json``; every file logged (it and
    examples.json, the adapter) is checked against its partition's manifest first, so a changed byte is refused by
    file name before MLflow holds anything of this version.
    """
    from dealrec_tasks.steps.llm import local_adapter
    from dealrec_tasks.tracking import registry as reg
    from dealrec_tasks.tracking.client import TAG_DIGEST, TAG_DT, TAG_ORCHESTRATOR_RUN, Tracking
    from dealrec_tasks.tracking.model import MODEL_ARTIFACT_PATH
    from dealrec_tasks.tracking.runs import log_run

    dt = str(Day(dt))  # checked; a plain str for MLflow (its YAML cannot represent a str subclass)
    _check_run_id(orchestrator_run_id)
    day = _read_finetuned(lake, dt, model_dir, cfg.metric, check_fingerprint, arm)
    # The adapter is copied and checked against the manifest the digest covers, before any run is created.
    copy = local_adapter(lake, dt, day.adapter, dataset=arm_dataset(ADAPTERS, arm))
    with copy as local, tempfile.TemporaryDirectory(prefix="dealrec-register-") as tmp:
        _check_scored_adapter(lake, dt, day.evaluation, day.adapter, arm)
        tr = Tracking(cfg)
        tr.ping()
        pruning = _pruning_run(tr, dt, day.coreset_digest)
        pruning_id = pruning.info.run_id if pruning is not None else None

        def content(_run_id: str):
            return _finetune_content(day, Path(tmp), local, pruning_id, run_tags)

        run_name = f"finetune dt={dt}" + (f" arm={arm}" if arm else "")
        run_id, run_changed = log_run(tr, FINETUNE, dt, orchestrator_run_id, day.digest, run_name, content)

    identity = {TAG_DT: dt, TAG_ORCHESTRATOR_RUN: orchestrator_run_id, TAG_DIGEST: day.digest}
    description = f"BIGRec LoRA adapter of dt={dt}, fine-tuned on {day.coreset_uri}"
    version_tags = _version_tags(day, run_id, pruning_id, run_tags)
    name = cfg.model_name
    mv, created = reg.find_or_create_version(tr, name, run_id, MODEL_ARTIFACT_PATH, identity, version_tags, description)
    version = int(mv.version)
    counts = {
        "version": version,
        "run_id": run_id,
        "pruning_run_id": pruning_id or "none",
        cfg.metric: round(float(day.metrics[cfg.metric]), 6),
    }
    uris = {"model": f"models:/{name}/{version}", "run": tr.run_link(run_id)}
    notes = [] if pruning is not None else [f"register dt={dt}: no pruning run logged for this day; not linked"]
    return StepResult("register", uris, counts, run_changed or created, notes)


def _read_finetuned(
    lake: Lake, dt: str, model_dir: str, metric: str, check_fingerprint: bool, arm: str | None = None
) -> _Finetuned:
    """The day's adapter and evaluation, refused with a clear error when they cannot be registered: an evaluation
    of the base model, another base model than the adapter's, a missing ``metric``, a file not matching its
    checksum."""
    from dealrec_tasks.llm.evaluate import model_fingerprint

    adapters, evaluations = arm_dataset(ADAPTERS, arm), arm_dataset(EVALUATION, arm)
    adapter_raw = lake.manifest_bytes(adapters, dt)
    eval_raw = lake.manifest_bytes(evaluations, dt)
    adapter, evaluation = json.loads(adapter_raw), json.loads(eval_raw)
    if not evaluation.get("config", {}).get("adapter", True):
        raise InputError(
            f"{lake.partition(evaluations, dt)}: evaluates the base model (adapter=false), not the adapter; "
            f"run `dealrec evaluate --dt {dt}` without --base-only before registering"
        )
    base_dir = Path(model_dir).resolve()
    trained_on = adapter.get("base_model", {})
    if not (base_dir / "config.json").exists():
        raise InputError(f"model_dir={model_dir!r}: no Hugging Face model there (config.json missing)")
    fingerprint = model_fingerprint(base_dir)
    if check_fingerprint and trained_on.get("fingerprint") and trained_on["fingerprint"] != fingerprint:
        raise InputError(
            f"model_dir={model_dir!r}: fingerprint {fingerprint} differs from {trained_on['fingerprint']}, the base "
            f"model the adapter of dt={dt} was trained on ({trained_on.get('path')})"
        )
    metrics = verified_metrics(lake, dt, evaluation, evaluations)
    if metric not in metrics:
        raise InputError(
            f"{lake.partition(evaluations, dt)}: no {metric!r} in its metrics ({sorted(metrics)}); "
            "set metric to one of them"
        )
    eval_set = evaluation_set_id(lake, dt, evaluation)
    coreset_uri = str(adapter.get("source", {}).get("training", ""))
    coreset_digest, strategy = None, ""
    coreset = arm_dataset(CORESET, arm)
    if lake.manifest(coreset, dt) is not None and coreset_uri == lake.partition(coreset, dt):
        coreset_raw = lake.manifest_bytes(coreset, dt)
        coreset_digest, strategy = sha256(coreset_raw), str(json.loads(coreset_raw).get("strategy", ""))
    # Everything logged is read through its checksum first, before MLflow is touched: a tampered file is refused
    # by name instead of being published (the manifests themselves are the reference, logged as read).
    eval_files = {
        name: lake.read_verified_bytes(evaluations, dt, name, manifest=evaluation)
        for name in ("metrics.json", "examples.json")
        if name in evaluation.get("files", {})
    }
    return _Finetuned(
        dt=dt,
        adapter_raw=adapter_raw,
        eval_raw=eval_raw,
        adapter=adapter,
        evaluation=evaluation,
        base_dir=base_dir,
        fingerprint=fingerprint,
        metrics=metrics,
        eval_set=eval_set,
        coreset_uri=coreset_uri,
        coreset_digest=coreset_digest,
        eval_files=eval_files,
        arm=arm,
        strategy=strategy or (arm or ""),
        adapter_uri=lake.partition(adapters, dt),
    )


def _model_config(day: _Finetuned) -> dict[str, Any]:
    """How the logged pyfunc loads and generates: the base model it checks by fingerprint, the evaluation's
    generation settings (so the served model answers as the evaluated one did)."""
    adapter_cfg, eval_cfg = day.adapter["config"], day.eval_cfg
    return {
        "base_model": str(day.base_dir),
        "base_model_fingerprint": day.fingerprint,
        "check_fingerprint": True,
        "domain": adapter_cfg.get("domain", "games"),
        "cutoff_len": int(eval_cfg.get("cutoff_len", adapter_cfg.get("cutoff_len", 512))),
        "num_beams": int(eval_cfg.get("num_beams", 4)),
        "max_new_tokens": int(eval_cfg.get("max_new_tokens", 48)),
        "ngram_repeat_limit": int(eval_cfg.get("ngram_repeat_limit", 0)),
        "batch_size": int(eval_cfg.get("batch_size", 16)),
        "dt": day.dt,
    }


def _finetune_content(
    day: _Finetuned, tmp: Path, adapter_dir: Path, pruning_id: str | None, run_tags: dict[str, str] | None
):
    """The fine-tuning run's content: the adapter as a pyfunc model, training and evaluation configs as params,
    the loss history and evaluation metrics, the verified evaluation files and both manifests as artifacts."""
    from dealrec_tasks.tracking import registry as reg
    from dealrec_tasks.tracking.model import MODEL_ARTIFACT_PATH, save_adapter_model
    from dealrec_tasks.tracking.runs import RunContent

    c = RunContent()
    c.dirs[MODEL_ARTIFACT_PATH] = save_adapter_model(tmp, adapter_dir, _model_config(day))
    config = dict(day.adapter.get("config", {}))
    c.add_params("lora", config.pop("lora", {}))
    c.add_params("finetune", config)
    c.add_params("eval", day.eval_cfg)
    c.params.update(
        {
            "base_model.path": str(day.base_dir),
            "base_model.fingerprint": day.fingerprint,
            "coreset_uri": day.coreset_uri,
            "dt": day.dt,
        }
    )
    adapter_metrics = day.adapter.get("metrics", {})
    for row in adapter_metrics.get("history", []):
        c.add_metrics("", {k: v for k, v in row.items() if k != "epoch"}, int(row.get("epoch", 0)))
    for key in ("best_epoch", "best_valid_loss"):
        c.add_metric(key, adapter_metrics.get(key))
    c.add_metrics("eval", day.metrics)
    for name, data in day.eval_files.items():
        c.artifacts[f"evaluation/{name}"] = data
    c.artifacts["evaluation/_manifest.json"] = day.eval_raw
    c.artifacts["adapter/_manifest.json"] = day.adapter_raw
    c.tags.update(
        {
            "coreset_uri": day.coreset_uri,
            "arm": day.arm or "primary",
            "strategy": day.strategy,
            "pruning_run_id": pruning_id or "none",
            reg.EVAL_SET_TAG: day.eval_set,
            "base_model_fingerprint": day.fingerprint,
            "mlflow.note.content": f"LoRA fine-tuning of dt={day.dt} on {day.coreset_uri}, base {day.base_dir}",
        }
        | (run_tags or {})
    )
    if pruning_id is not None:
        c.tags["mlflow.parentRunId"] = pruning_id  # the pruning run shows this run nested under it
    return c


def _version_tags(
    day: _Finetuned, run_id: str, pruning_id: str | None, run_tags: dict[str, str] | None
) -> dict[str, str]:
    """The model version's tags besides its identity: where it came from, and the evaluation that decides its
    promotion (``eval.*`` and ``eval_set``), so the decision needs only the registry."""
    from dealrec_tasks.tracking import registry as reg

    return {
        "coreset_uri": day.coreset_uri,
        "adapter_uri": day.adapter_uri,
        "arm": day.arm or "primary",
        "strategy": day.strategy,
        "run_id": run_id,
        "pruning_run_id": pruning_id or "none",
        reg.EVAL_SET_TAG: day.eval_set,
        "eval_users": str(day.metrics.get("users", "")),
        "base_model": str(day.base_dir),
        "base_model_fingerprint": day.fingerprint,
        **{reg.eval_tag(k): repr(float(v)) for k, v in day.metrics.items()},
        **(run_tags or {}),
    }


# ---------------------------------------------------------------------------------------------------------
# Aliases
# ---------------------------------------------------------------------------------------------------------
def _who() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return "unknown"


def promote(cfg: TrackingConfig, version: int, reason: str) -> StepResult:
    """By hand: ``champion`` -> ``version``, with the reason and who did it as version tags."""
    from dealrec_tasks.tracking import registry as reg
    from dealrec_tasks.tracking.client import Tracking

    if not reason or not reason.strip():
        raise ConfigError("reason='': say why (it is stored as a tag on the version)")
    tr = Tracking(cfg)
    tr.ping()
    name = cfg.model_name
    reg.get_version(tr, name, version)
    current = reg.alias_version(tr, name, reg.CHAMPION)
    uris = {"model": f"models:/{name}@{reg.CHAMPION}"}
    if current is not None and int(current.version) == int(version):
        return StepResult("promote", uris, {"champion": int(version), "previous": int(version)}, False)
    previous = reg.move_champion(
        tr, name, int(version), {"champion.reason": f"by hand: {reason}", "champion.by": _who()}
    )
    return StepResult("promote", uris, {"champion": int(version), "previous": previous}, True)


def rollback(cfg: TrackingConfig, reason: str) -> StepResult:
    """By hand: ``champion`` back to the version that held it before (undo of the last move)."""
    from dealrec_tasks.tracking import registry as reg
    from dealrec_tasks.tracking.client import Tracking

    tr = Tracking(cfg)
    tr.ping()
    name = cfg.model_name
    frm, to = reg.rollback_champion(tr, name, f"{reason} (by {_who()})" if reason.strip() else reason)
    return StepResult("rollback", {"model": f"models:/{name}@{reg.CHAMPION}"}, {"champion": to, "rolled_back": frm})
