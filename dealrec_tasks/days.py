"""What the pipeline did on each day, read back from the lake (and MLflow when asked): the data behind the DEALRec
view in Airflow and ``dealrec days``.

Users of a daily pruning job ask, day by day: how far did the day get, what was kept, how much was pruned, did the
coreset cover the catalogue and the users better than a random sample of the same size, and did the fine-tuned
model become champion. Everything here comes from published manifests and small files (never the wall clock),
works on file:// and s3:// lakes alike, and shows a partial day as partial instead of failing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dealrec_tasks.catalogue import (
    ADAPTERS,
    CORESET,
    EVALUATION,
    GATE,
    REJECTS,
    SAMPLES,
    SCORES_EFFORT,
    SCORES_INFLUENCE,
    SURROGATE,
)
from dealrec_tasks.config import parse_dt
from dealrec_tasks.errors import InputError
from dealrec_tasks.storage import Lake, join_uri

#: The day's stages in pipeline order: (dataset, label shown to users).
STAGES: tuple[tuple[str, str], ...] = (
    (SAMPLES, "samples"),
    (SURROGATE, "surrogate"),
    (SCORES_INFLUENCE, "influence"),
    (SCORES_EFFORT, "effort"),
    (CORESET, "coreset"),
    (ADAPTERS, "fine-tuned"),
    (EVALUATION, "evaluated"),
)
SCORE_FILES = {"influence": (SCORES_INFLUENCE, "influence.parquet"), "effort": (SCORES_EFFORT, "effort.parquet")}
REPORT_FILE = "report.png"
HIST_BINS = 30
#: The MLflow metrics the day's page shows per run (the runs hold many more).
HEADLINE_METRICS = (
    "selected",
    "candidates",
    "pruned",
    "coverage.items.coreset",
    "coverage.items.random",
    "eval.recall_at_20",
    "eval.ndcg_at_20",
    "best_epoch",
)


@dataclass(frozen=True)
class MlflowLinks:
    """Where the MLflow UI lives, for links (None: show ids without links, e.g. a SQLite store)."""

    ui_url: str | None = None

    def run(self, experiment_id: str, run_id: str) -> str | None:
        return f"{self.ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}" if self.ui_url else None

    def version(self, name: str, version: str) -> str | None:
        return f"{self.ui_url.rstrip('/')}/#/models/{name}/versions/{version}" if self.ui_url else None


class DayRows(list):
    """``list_days``' rows (a list, JSON as one), with ``notes``: what the lake holds that is not a day and was
    ignored, e.g. a folder ``samples/dt=2026-01-07.bak`` someone kept, so the view shows it instead of failing."""

    def __init__(self, rows: list[dict[str, Any]], notes: list[str]):
        super().__init__(rows)
        self.notes = notes


def list_days(lake: Lake) -> DayRows:
    """One row per day with any published stage, newest first: stages reached, status, coreset and evaluation
    headlines (``None`` where the stage is not published yet). A folder ``dt=...`` that is not exactly a day is no
    day (``Lake.partitions``): it is named in ``notes``, never an error."""
    days: set[str] = set()
    for dataset, _ in STAGES:
        days.update(lake.partitions(dataset))
    rows = [_summary(dt, _stages(lake, dt)) | gate_headline(lake, dt) for dt in sorted(days, reverse=True)]
    return DayRows(rows, lake.stray_notes(*(dataset for dataset, _ in STAGES)))


def gate_headline(lake: Lake, dt: str) -> dict[str, Any]:
    """The gate's decision, the primary arm minus random with its paired interval, and the running verdict of
    ``dt`` (None where the day has no gate record), from the checksummed gate.json."""
    out: dict[str, Any] = {"decision": None, "vs_random": None, "verdict": None}
    manifest = lake.manifest(GATE, dt)
    if manifest is None:
        return out
    record, _ = lake.read_verified_json(GATE, dt, "gate.json", manifest)
    running = record.get("running_vs_random") or {}
    return {"decision": record.get("decision"), "vs_random": record.get("primary_vs_random"),
            "verdict": running.get("verdict")}  # fmt: skip


def _stages(lake: Lake, dt: str) -> dict[str, dict[str, Any] | None]:
    return {label: lake.manifest(dataset, dt) for dataset, label in STAGES}


def _stale_because(stages: dict[str, dict[str, Any] | None]) -> str | None:
    """Why the day's adapter or evaluation is not of its current coreset, or None: a coreset republished after the
    fine-tuning (``select`` again, a manual run with another ``n``) left the old metrics beside the new coreset,
    and the page showed them as its own."""
    coreset, adapter, evaluation = stages["coreset"], stages["fine-tuned"], stages["evaluated"]
    if coreset is not None and adapter is not None:
        trained_on = (adapter.get("inputs") or {}).get("training")
        current = (coreset.get("files") or {}).get("coreset.parquet", {}).get("sha256")
        if trained_on is not None and trained_on != current:
            return "coreset republished after the fine-tuning: the adapter and metrics are of the previous coreset"
    if adapter is not None and evaluation is not None:
        scored = (evaluation.get("inputs") or {}).get("adapter")
        if scored is not None and scored != {n: e.get("sha256") for n, e in (adapter.get("files") or {}).items()}:
            return "fine-tuned again after the evaluation: the metrics are of the previous adapter"
    return None


def _status(stages: dict[str, dict[str, Any] | None]) -> str:
    done = [label for label, m in stages.items() if m is not None]
    if not done:
        return "nothing published"
    stale = _stale_because(stages)
    if stale:
        return stale
    if stages["evaluated"] is not None:
        return "fine-tuned and evaluated"
    if stages["fine-tuned"] is not None:
        return "fine-tuned, not evaluated yet"
    if stages["coreset"] is not None:
        return "coreset published, not fine-tuned yet"
    if stages["influence"] is not None or stages["effort"] is not None:
        return "scored, no coreset yet"
    return f"{done[-1]} published, not scored yet"


def _summary(dt: str, stages: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """A day's headline row from its stages' manifests (``_stages``)."""
    row: dict[str, Any] = {
        "dt": dt,
        "status": _status(stages),
        "stages": {label: m is not None for label, m in stages.items()},
        "candidates": None,
        "selected": None,
        "strategy": None,
        "pruned": None,
        "items_coreset": None,
        "items_random": None,
        "recall@20": None,
        "ndcg@20": None,
    }
    coreset = stages["coreset"]
    if coreset is not None:
        counts, cov = coreset.get("counts", {}), coreset.get("coverage", {})
        row |= {
            "candidates": counts.get("candidates"),
            "selected": counts.get("selected"),
            "strategy": coreset.get("strategy"),
            "pruned": (counts.get("groups") or {}).get("pruned"),
            "items_coreset": cov.get("items", {}).get("coreset"),
            "items_random": cov.get("items", {}).get("random"),
        }
    evaluation = stages["evaluated"]
    if evaluation is not None and _stale_because(stages) is None:  # never another coreset's metrics as this one's
        metrics = evaluation.get("metrics", {})
        row |= {"recall@20": metrics.get("recall@20"), "ndcg@20": metrics.get("ndcg@20")}
    return row


def day_detail(lake: Lake, dt: str, tracking=None, links: MlflowLinks | None = None) -> dict[str, Any]:
    """Everything the page of one day shows. ``tracking`` (a ``TrackingConfig``) adds the MLflow runs, the model
    versions of the day and the champion/challenger decision; an unreachable MLflow is reported, not raised."""
    parse_dt(dt)
    stages = _stages(lake, dt)
    if all(m is None for m in stages.values()):
        raise InputError(f"{lake.uri()}: nothing published for dt={dt}")
    out: dict[str, Any] = _summary(dt, stages)
    out["lake"] = lake.uri()
    out["published"] = {
        label: {"uri": m.get("uri"), "created_at": m.get("created_at")} if m else None for label, m in stages.items()
    }
    rejects = lake.manifest(REJECTS, dt)
    out["rejected_rows"] = None if rejects is None else _rows_of(rejects)
    samples = stages["samples"]
    out["samples"] = None if samples is None else samples.get("counts")
    out["surrogate"] = None if stages["surrogate"] is None else stages["surrogate"].get("counts")
    coreset = stages["coreset"]
    out["coreset"] = None
    if coreset is not None:
        out["coreset"] = {
            "uri": coreset.get("uri"),
            "config": {k: v for k, v in coreset.get("config", {}).items() if k != "source_sha256"},
            "counts": coreset.get("counts"),
            "coverage": coreset.get("coverage"),
            "has_report": REPORT_FILE in coreset.get("files", {}),
        }
    out["scores"] = _score_distributions(lake, dt, stages)
    out["arms"] = _arms(lake, dt, stages)
    gate = lake.manifest(GATE, dt)
    out["gate"] = None if gate is None else lake.read_verified_json(GATE, dt, "gate.json", gate)[0]
    out["mlflow"] = None if tracking is None else mlflow_of_day(tracking, dt, links or MlflowLinks())
    return out


def _arms(lake: Lake, dt: str, stages: dict[str, dict[str, Any] | None]) -> list[dict[str, Any]]:
    """The day's evaluated arms, the primary one first (named by its coreset's strategy), then the controls, then
    registered versions evaluated on the day's users (the champion, for the gate)."""
    out = []
    evaluation, coreset = stages["evaluated"], stages["coreset"]
    if evaluation is not None:
        name = f"{(coreset or {}).get('strategy', 'coreset')} (primary)"
        out.append({"arm": name, **evaluation.get("metrics", {})})
    for folder in lake.storage.list_dir(lake.uri(EVALUATION)):
        if folder.startswith(("arm=", "version=")):
            manifest = lake.manifest(f"{EVALUATION}/{folder}", dt)
            if manifest is not None:
                name = folder[4:] if folder.startswith("arm=") else f"champion v{folder[8:]}, same users"
                out.append({"arm": name, **manifest.get("metrics", {})})
    return out


def _rows_of(manifest: dict[str, Any]) -> int:
    return int(sum(f.get("rows", 0) for f in manifest.get("files", {}).values()))


def _score_distributions(lake: Lake, dt: str, stages: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """Histograms of the day's influence and effort scores over all candidates, with the coreset's share per bin
    (which part of the distribution the selection drew from). ``stages``: the day's manifests (``_stages``)."""
    chosen: set[int] = set()
    if stages["coreset"] is not None:
        chosen = set(lake.read(CORESET, dt, "coreset.parquet").column("sample_id").to_pylist())
    out: dict[str, Any] = {}
    for name, (dataset, file) in SCORE_FILES.items():  # the names are also the stages' labels
        if stages[name] is None:
            out[name] = None
            continue
        table = lake.read(dataset, dt, file)
        values = np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)
        ids = table.column("sample_id").to_numpy()
        finite = np.isfinite(values)
        out[name] = histogram(values[finite], np.isin(ids[finite], list(chosen)) if chosen else None)
    return out


def histogram(values: np.ndarray, kept: np.ndarray | None, bins: int = HIST_BINS) -> dict[str, Any]:
    """``edges`` [bins + 1], ``all`` [bins] counts, ``kept`` [bins] counts of the marked values (or None)."""
    if len(values) == 0:
        return {"edges": [], "all": [], "kept": None, "n": 0}
    lo, hi = float(values.min()), float(values.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    counts, _ = np.histogram(values, edges)
    marked = None if kept is None else np.histogram(values[kept], edges)[0].tolist()
    return {"edges": edges.tolist(), "all": counts.tolist(), "kept": marked, "n": int(len(values))}


def report_png(lake: Lake, dt: str) -> bytes:
    """The coreset report figure of ``dt`` (written by the select step)."""
    parse_dt(dt)
    lake.require_manifest(CORESET, dt)  # published, or refused by name
    # This lake's partition, never the manifest's recorded ``uri``: a lake moved or restored from a backup still
    # records where it was written, and the view then showed that other lake's figure (or none).
    return lake.storage.read_bytes(join_uri(lake.partition(CORESET, dt), REPORT_FILE))


def gate_png(lake: Lake, dt: str) -> bytes:
    """The gate's plot of ``dt`` (arms, champion and the lift over random by day), through its checksum."""
    parse_dt(dt)
    return lake.read_verified_bytes(GATE, dt, "arms.png")


def mlflow_of_day(tracking, dt: str, links: MlflowLinks) -> dict[str, Any]:
    """The day's MLflow runs (pruning, fine-tuning), its model versions with their promotion decision, and which
    version holds ``champion`` / ``challenger`` now."""
    from dealrec_tasks.steps.tracking import FINETUNE, PRUNING
    from dealrec_tasks.tracking.client import TAG_DT, TAG_KIND, Tracking, TrackingUnavailable, quote
    from dealrec_tasks.tracking.config import redact_uri
    from dealrec_tasks.tracking.registry import CHALLENGER, CHAMPION, alias_version, search_versions

    tr = Tracking(tracking)
    name = tracking.model_name
    try:
        runs = []
        for kind in (PRUNING, FINETUNE):
            for r in tr.search_runs(f"tags.{TAG_KIND} = '{kind}' and tags.{TAG_DT} = {quote(dt, 'dt')}"):
                runs.append(
                    {
                        "kind": kind,
                        "run_id": r.info.run_id,
                        "status": r.info.status,
                        "experiment_id": r.info.experiment_id,
                        "airflow_dag_id": r.data.tags.get("airflow.dag_id"),
                        "airflow_run_id": r.data.tags.get("airflow.run_id"),
                        "metrics": {k: r.data.metrics[k] for k in HEADLINE_METRICS if k in r.data.metrics},
                        "url": links.run(r.info.experiment_id, r.info.run_id),
                    }
                )
        versions = []
        aliases = {}
        for alias in (CHAMPION, CHALLENGER):
            mv = alias_version(tr, name, alias)
            aliases[alias] = None if mv is None else int(mv.version)
        for mv in search_versions(tr, name, {TAG_DT: dt}):  # [] while the model is not registered yet
            tags = mv.tags
            versions.append(
                {
                    "version": int(mv.version),
                    "decision": tags.get("promotion.decision"),
                    "reason": tags.get("promotion.reason"),
                    "metric": tags.get("promotion.metric"),
                    "difference": tags.get("promotion.difference"),
                    "interval": tags.get("promotion.interval"),
                    "aliases": [a for a, v in aliases.items() if v == int(mv.version)],
                    "url": links.version(name, mv.version),
                }
            )
    except TrackingUnavailable as exc:
        return {"error": str(exc), "model": name}  # the message names the URI redacted
    uri = redact_uri(tr.uri)  # the page and the JSON are shown to users: never the password
    return {"model": name, "tracking_uri": uri, "runs": runs, "versions": versions, "aliases": aliases}
