"""Idempotent MLflow runs: a run is identified by (kind, dt, orchestrator run id, input digest) tags.

A retry of the same orchestrator task finds the FINISHED run and does nothing. A run left unfinished by a crash
(half-logged) is deleted and logged again from scratch, so a finished run is always complete.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dealrec_tasks.tracking.client import TAG_DIGEST, TAG_DT, TAG_KIND, TAG_ORCHESTRATOR_RUN, Tracking, quote
from dealrec_tasks.tracking.registry import metric_key

MAX_PARAM_VALUE = 6000  # MLflow's limit on a param value
BATCH = 100  # MLflow's limit on params (and tags) per log_batch


@dataclass
class RunContent:
    """What one run logs: params, metrics (``(key, value, step)``), tags, artifacts (path in run -> bytes)."""

    params: dict[str, Any] = field(default_factory=dict)
    metrics: list[tuple[str, float, int]] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, bytes] = field(default_factory=dict)
    dirs: dict[str, Path] = field(default_factory=dict)  # artifact path -> local folder logged as is

    def add_params(self, prefix: str, values: dict[str, Any]) -> None:
        for key, value in flatten(values, prefix).items():
            self.params[key] = value

    def add_metric(self, key: str, value: Any, step: int = 0) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        if math.isfinite(float(value)):
            self.metrics.append((metric_key(key), float(value), step))

    def add_metrics(self, prefix: str, values: dict[str, Any], step: int = 0) -> None:
        for key, value in flatten(values, prefix).items():
            self.add_metric(key, value, step)


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> dotted keys; lists stay whole (JSON) so a param reads like the config it came from."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return text if len(text) <= MAX_PARAM_VALUE else text[: MAX_PARAM_VALUE - 3] + "..."


def identity_filter(kind: str, dt: str, orchestrator_run_id: str, digest: str) -> str:
    return " and ".join(
        [
            f"tags.{TAG_KIND} = {quote(kind, 'kind')}",
            f"tags.{TAG_DT} = {quote(dt, 'dt')}",
            f"tags.{TAG_ORCHESTRATOR_RUN} = {quote(orchestrator_run_id, 'orchestrator_run_id')}",
            f"tags.{TAG_DIGEST} = {quote(digest, 'input_digest')}",
        ]
    )


def find_finished(tr: Tracking, filter_string: str):
    runs = tr.search_runs(filter_string)
    return next((r for r in runs if r.info.status == "FINISHED"), None), runs


def log_run(
    tr: Tracking,
    kind: str,
    dt: str,
    orchestrator_run_id: str,
    digest: str,
    run_name: str,
    content_fn,
) -> tuple[str, bool]:
    """The finished run of this identity, or a new one logged from ``content_fn(run_id) -> RunContent``.

    Returns (run_id, changed). ``content_fn`` gets the run id so it can log a model under the run's artifacts.
    """
    from mlflow.entities import Metric, Param, RunTag

    done, stale = find_finished(tr, identity_filter(kind, dt, orchestrator_run_id, digest))
    if done is not None:
        return done.info.run_id, False
    for run in stale:  # an earlier try crashed half-way: start over, never finish a half-logged run
        tr.call("delete unfinished run", tr.client.delete_run, run.info.run_id)
    identity = {TAG_KIND: kind, TAG_DT: dt, TAG_ORCHESTRATOR_RUN: orchestrator_run_id, TAG_DIGEST: digest}
    run = tr.call("create run", tr.client.create_run, tr.experiment_id(), run_name=run_name, tags=identity)
    run_id = run.info.run_id
    try:
        content: RunContent = content_fn(run_id)
        params = [Param(k, _param_value(v)) for k, v in sorted(content.params.items())]
        tags = [RunTag(k, str(v)) for k, v in sorted(content.tags.items())]
        stamp = run.info.start_time
        metrics = [Metric(k, v, stamp, step) for k, v, step in content.metrics]
        for i in range(0, max(len(params), len(tags), 1), BATCH):
            tr.call(
                "log params and tags",
                tr.client.log_batch,
                run_id,
                params=params[i : i + BATCH],
                tags=tags[i : i + BATCH],
            )
        for i in range(0, len(metrics), 1000):
            tr.call("log metrics", tr.client.log_batch, run_id, metrics=metrics[i : i + 1000])
        _log_artifacts(tr, run_id, content.artifacts.items(), content.dirs)
    except BaseException:
        # Leave no half-logged FINISHED run behind; the retry deletes this one and starts over.
        with contextlib.suppress(Exception):
            tr.call("mark run failed", tr.client.set_terminated, run_id, "FAILED")
        raise
    tr.call("finish run", tr.client.set_terminated, run_id, "FINISHED")
    return run_id, True


def _log_artifacts(tr: Tracking, run_id: str, files: Iterable[tuple[str, bytes]], dirs: dict[str, Path]) -> None:
    with tempfile.TemporaryDirectory(prefix="dealrec-artifacts-") as tmp:
        for rel, data in files:
            path = Path(tmp, rel)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        if any(Path(tmp).iterdir()):
            tr.call("log artifacts", tr.client.log_artifacts, run_id, tmp)
    for rel, local in dirs.items():
        tr.call(f"log artifacts {rel}", tr.client.log_artifacts, run_id, str(local), rel)
