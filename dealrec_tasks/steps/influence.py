"""Influence steps: solve once, score shards in parallel, merge.

Layout (daily; an imported dataset puts the same under ``datasets/<name>/``):
- ``influence/dt=D/solve/``: v, u = (H + damping I)^-1 v and the negative set (optional: a worker without it
  computes the same solve itself, deterministically, from every training row);
- ``influence/dt=D/shard=i-of-n/``: ``influence.parquet`` (sample_id, influence) of shard i;
- ``scores_influence/dt=D/``: the merged ``influence.parquet``, written once every shard is there.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pyarrow as pa
import torch

from dealrec_tasks.data.schema import INFLUENCE, SCORES_INFLUENCE, SURROGATE
from dealrec_tasks.errors import InputError
from dealrec_tasks.scoring.config import InfluenceConfig
from dealrec_tasks.scoring.influence import influence, score_rows, solve, to_dtype
from dealrec_tasks.sharding import shard_name, shard_rows
from dealrec_tasks.steps.common import StepResult, merge_shards
from dealrec_tasks.steps.surrogate import MODEL_FILE, Source, load_model, read_samples, source
from dealrec_tasks.storage import Lake, join_uri, sha256
from dealrec_tasks.surrogate.batching import train_seqs
from dealrec_tasks.surrogate.model import negatives_from_payload

SCORES_SCHEMA = pa.schema([("sample_id", pa.int64()), ("influence", pa.float64())])


def _part(src: Source, name: str) -> str:
    """``influence/dt=D/<name>`` as a dataset path (the partition itself carries the manifest)."""
    where = f"dt={src.dt}" if src.dt else "all"
    return f"{src.path(INFLUENCE)}/{where}/{name}"


def _inputs(lake: Lake, src: Source):
    model, manifest = load_model(lake, src)
    samples, n_items = read_samples(lake, src)
    if n_items != model.n_items:
        raise InputError(f"surrogate {src.label} has {model.n_items} items, the samples' vocab {n_items}")
    identity = {"surrogate_sha256": manifest["files"][MODEL_FILE]["sha256"]}
    return model, train_seqs(samples, n_items), identity


def solve_influence(lake: Lake, dt: str | None, cfg: InfluenceConfig, *, dataset: str | None = None) -> StepResult:
    """Pass over every training row and solve; publish v, u and the negatives for the shard workers."""
    src = source(dt, dataset)
    model, seqs, identity = _inputs(lake, src)
    sol = solve(to_dtype(model, cfg), seqs, cfg)
    buf = io.BytesIO()
    negatives = sol.negatives.to_payload() if hasattr(sol.negatives, "to_payload") else {"negatives": sol.negatives}
    torch.save({"v": sol.v, "u": sol.u, **negatives}, buf)
    info = {"solve": sol.info.to_dict(), "timings": sol.timings}
    pub = lake.publish(
        _part(src, "solve"),
        None,
        {},
        config=cfg.to_dict() | identity,
        extra={"counts": {"train_samples": len(seqs)}, **info},
        blobs={"solve.pt": buf.getvalue(), "solve.json": (json.dumps(info, indent=2) + "\n").encode()},
    )
    counts = {"train_samples": len(seqs), "iterations": sol.info.iterations, "rel_residual": sol.info.rel_residual}
    return StepResult("influence-solve", {"solve": pub.uri}, counts, pub.changed)


def _published_solve(lake: Lake, src: Source, cfg: InfluenceConfig, identity: dict) -> dict[str, torch.Tensor] | None:
    manifest = lake.manifest(_part(src, "solve"))
    if manifest is None or manifest.get("config") != cfg.to_dict() | identity:
        return None
    uri = join_uri(lake.partition(_part(src, "solve")), "solve.pt")
    data = lake.storage.read_bytes(uri)
    if sha256(data) != manifest["files"]["solve.pt"]["sha256"]:
        raise InputError(f"{uri}: checksum differs from the manifest; rerun the solve")
    return torch.load(io.BytesIO(data), weights_only=True)


def score_influence(
    lake: Lake, dt: str | None, cfg: InfluenceConfig, shard: tuple[int, int] = (0, 1), *, dataset: str | None = None
) -> StepResult:
    """Score shard ``i`` of ``n`` of the training rows (ordered by sample_id) and publish it.

    Uses the published solve when it matches this config and surrogate (one pass over the shard's rows only);
    otherwise computes the same solve locally (one pass over every row).
    """
    src = source(dt, dataset)
    i, n = shard
    model, seqs, identity = _inputs(lake, src)
    rows = shard_rows(len(seqs), shard)
    pre = _published_solve(lake, src, cfg, identity)
    notes = []
    if pre is not None:
        scores = score_rows(to_dtype(model, cfg), seqs, pre["u"], negatives_from_payload(pre), cfg, rows)
        timings: dict[str, Any] = {"used_published_solve": True}
    else:
        res = influence(model, seqs, cfg, shard)
        scores, timings = res.influence, dict(res.timings, solve=res.solution.info.to_dict())
        notes.append(f"influence shard {i}/{n}: no matching published solve, solved locally ({res.solution.info})")
    table = pa.table({"sample_id": seqs.sample_id[rows], "influence": scores}, schema=SCORES_SCHEMA)
    pub = lake.publish(
        _part(src, shard_name(shard)),
        None,
        {"influence.parquet": table},
        config=cfg.to_dict() | identity,
        extra={"shard": [i, n], "timings": timings, "counts": {"rows": len(rows), "train_samples": len(seqs)}},
    )
    counts = {"shard": f"{i}/{n}", "rows": len(rows)}
    return StepResult("influence", {"shard": pub.uri}, counts, pub.changed, notes)


def merge_influence(lake: Lake, dt: str | None, n: int, *, dataset: str | None = None) -> StepResult:
    """Concatenate the n shards (same config and surrogate, every training row exactly once) and publish."""
    src = source(dt, dataset)
    parts = [_part(src, shard_name((i, n))) for i in range(n)]
    first = lake.manifest(parts[0])
    expected = first["counts"]["train_samples"] if first else 0
    pub, table = merge_shards(
        lake,
        parts,
        "influence.parquet",
        src.path(SCORES_INFLUENCE),
        src.dt,
        expected,
        extra={"surrogate": lake.partition(src.path(SURROGATE), src.dt)},
    )
    return StepResult("merge-influence", {"scores": pub.uri}, {"samples": table.num_rows, "shards": n}, pub.changed)
