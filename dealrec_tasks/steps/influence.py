"""Influence steps: solve once, score shards in parallel, merge; over every weight file the surrogate lists.

One training run's influence ranking depends on its seed and on the epoch it stopped at (Games, measured in
``bench/results/coreset_quality_cold.json``: two seeds 0.12-0.65 Spearman, consecutive epochs ~0.6-0.8). So the
surrogate step publishes ``members`` surrogates and,
per member, its last ``checkpoints`` evaluated epochs up to the best one (the manifest's ``influence_weights``,
member-major, best last per member; an older partition: the member best files). These steps score the samples
with each of those weight files; the merge combines them (``combine_members``: each file's scores divided by their
RMS over all training rows, then the mean). With ``InfluenceConfig.target="valid"`` (the default: v from the
day's validation rows) two independent 4-member ensembles agree at Spearman 0.93 on Games; with the paper's
training risk, 3 members x 6 checkpoints agreed at 0.50.

Layout (daily; an imported dataset puts the same under ``datasets/<name>/``):
- ``influence/dt=D/solve/``: per weight file j, v and u = (H + damping I)^-1 v, and the negative set (shared by
  every file; optional: a worker without it computes the same solves itself, deterministically, from every row);
- ``influence/dt=D/shard=i-of-n/``: ``influence.parquet`` (sample_id, influence_m0, influence_m1, ...) of shard i:
  column ``influence_m{j}`` holds the raw scores of weight file j of ``influence_weights`` (a shard cannot
  normalise, the RMS needs every row); the manifest's ``weights`` names the files;
- ``scores_influence/dt=D/``: the merged ``influence.parquet`` (sample_id, influence, influence_m0, ...), written
  once every shard is there; ``influence`` is the combined score every downstream reader uses. Its scale is about 1
  (RMS-normalised; before ensembles it was the raw score): selection min-max normalises it anyway.

Memory (issue 19 item 3): a shard with a published solve reads only its own training rows (``_shard_seqs``), so
what it holds beyond one batch grows with its rows' tokens, not with the day; the batch's peak is bounded by
``batch_size`` x max_len positions. The solve reads every row. Measured in ``bench/influence_memory.py``.

A solve or a shard is tied to the weights by the list of the weight files' checksums (``surrogate_sha256``, in
``influence_weights`` order), so one made for other weights is never used. For a partition older than checkpoint
averaging the list is the member checksums, as before: its published solves and shards stay valid.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from dealrec_tasks.catalogue import (
    SAMPLES,
    SCORES_INFLUENCE,
    SURROGATE,
    Source,
    influence_shard,
    influence_solve,
    source,
)
from dealrec_tasks.errors import InputError
from dealrec_tasks.finite import check_finite, check_scores, check_state
from dealrec_tasks.scoring.config import InfluenceConfig
from dealrec_tasks.scoring.influence import combine_members, influence, score_rows, solve, to_dtype
from dealrec_tasks.sharding import check_shard_count, shard_rows
from dealrec_tasks.steps.common import StepResult, merge_shards
from dealrec_tasks.steps.readers import (
    checked_samples,
    influence_sha256,
    influence_weights,
    item_count,
    load_influence_models,
    samples_sha256,
)
from dealrec_tasks.storage import Lake
from dealrec_tasks.surrogate.batching import Seqs, shard_train_seqs, train_seqs, valid_seqs
from dealrec_tasks.surrogate.model import negatives_from_payload

_MEMBER_RE = re.compile(r"^influence_m(\d+)$")


def member_column(i: int) -> str:
    """The column of the raw scores of weight file ``i`` (of ``influence_weights``) in the shards and the merged
    table (named ``_m`` since ensembles; a file is a member's checkpoint since checkpoint averaging)."""
    return f"influence_m{i}"


def shard_schema(members: int) -> pa.Schema:
    return pa.schema([("sample_id", pa.int64())] + [(member_column(i), pa.float64()) for i in range(members)])


def member_columns(table: pa.Table) -> list[str]:
    """The weight files' columns of a scores table, in order (0..M-1, none missing)."""
    found = sorted((int(m.group(1)), name) for name in table.column_names if (m := _MEMBER_RE.match(name)))
    names = [name for _, name in found]
    if names != [member_column(i) for i in range(len(names))]:
        raise InputError(f"influence member columns {names}: expected influence_m0..influence_m{len(names) - 1}")
    return names


def _weights(lake: Lake, src: Source):
    """The models of the surrogate's ``influence_weights`` files (in order), the inputs' identity (the weight files'
    checksums, in order, and the samples' checksum) and the list."""
    models, manifest = load_influence_models(lake, src)
    weights = influence_weights(manifest)
    for model, w in zip(models, weights):  # a diverged surrogate published before training refused one
        check_state(model.state_dict(), f"surrogate {src.label} {w['file']}", "retrain it with a lower --lr")
    identity = {"surrogate_sha256": influence_sha256(manifest), "samples": samples_sha256(lake, src)}
    return models, identity, weights


def _release_arrow() -> None:
    """Hand the pages of freed Arrow buffers back to the OS. Why: Arrow's pool (mimalloc) keeps them for its own
    reuse, which torch never makes, so a read table stayed in the RSS of the scoring after it (measured on a 10x Games
    day: 94 MiB of a shard's 474 MiB after reading its rows)."""
    pa.default_memory_pool().release_unused()


def _rows(lake: Lake, src: Source, cfg: InfluenceConfig, n_items: int):
    """The training rows, and the validation rows when ``cfg.target`` is "valid" (else None)."""
    samples = checked_samples(lake, src, n_items)
    target = None
    if cfg.target == "valid":
        target = valid_seqs(samples, n_items)
        if len(target) == 0:
            raise InputError(f"samples of {src.label}: no validation rows, which influence target='valid' needs")
    seqs = train_seqs(samples, n_items)
    del samples
    _release_arrow()
    return seqs, target


def _shard_seqs(lake: Lake, src: Source, n_items_model: int, shard: tuple[int, int]) -> tuple[Seqs, int]:
    """The training rows of ``shard`` only (``shard_train_seqs``, from the checksum-verified samples file) and the
    day's training rows: a shard worker's memory then grows with its rows' tokens, not with the day.

    The vocab check is ``checked_samples``'s (a surrogate of other data is refused) without reading the samples."""
    n_items = item_count(lake, src)
    if n_items != n_items_model:
        raise InputError(f"surrogate {src.label} has {n_items_model} items, the samples' vocab {n_items}; retrain it")
    data = lake.read_verified_bytes(src.path(SAMPLES), src.dt, "samples.parquet")  # compressed: ~50 B a training sample
    seqs, n_train = shard_train_seqs(pq.ParquetFile(pa.BufferReader(data)), n_items, shard)
    del data
    _release_arrow()
    return seqs, n_train


def _sizes(weights: list[dict[str, Any]]) -> dict[str, int]:
    """``members`` (distinct members) and ``weights`` (files, i.e. score columns) of an influence weight list."""
    return {"members": len({w["member"] for w in weights}), "weights": len(weights)}


def solve_influence(lake: Lake, dt: str | None, cfg: InfluenceConfig, *, dataset: str | None = None) -> StepResult:
    """Pass over every training row and solve, for each weight file; publish v, u (lists, ``influence_weights``
    order) and the negatives (the same for every file: they depend on the config and the rows only) for the shard
    workers."""
    src = source(dt, dataset)
    models, identity, weights = _weights(lake, src)
    done = lake.current(influence_solve(src), None, cfg.to_dict(), identity)
    if done is not None:
        why = f"influence solve {src.label}: already published for this config and surrogate ({done['created_at']})"
        uris = {"solve": lake.partition(influence_solve(src))}
        return StepResult("influence-solve", uris, done.get("counts", {}), False, [why])
    seqs, target = _rows(lake, src, cfg, models[0].n_items)
    sols = [solve(to_dtype(model, cfg), seqs, cfg, target=target) for model in models]
    neg = sols[0].negatives
    negatives = neg.to_payload() if hasattr(neg, "to_payload") else {"negatives": neg}
    buf = io.BytesIO()
    torch.save({"v": [s.v for s in sols], "u": [s.u for s in sols], **negatives}, buf)
    info = {"solve": [s.info.to_dict() for s in sols], "timings": [s.timings for s in sols]}
    counts = {
        "train_samples": len(seqs),
        **_sizes(weights),
        "iterations": [s.info.iterations for s in sols],
        "rel_residual": [s.info.rel_residual for s in sols],
    }
    pub = lake.publish(
        influence_solve(src),
        None,
        {},
        config=cfg.to_dict(),
        inputs=identity,
        extra={"counts": {"train_samples": len(seqs), **_sizes(weights)}, "weights": [w["file"] for w in weights]}
        | info,
        blobs={"solve.pt": buf.getvalue(), "solve.json": (json.dumps(info, indent=2) + "\n").encode()},
    )
    return StepResult("influence-solve", {"solve": pub.uri}, counts, pub.changed)


def _published_solve(lake: Lake, src: Source, cfg: InfluenceConfig, identity: dict) -> dict[str, Any] | None:
    """The published solve when it was made with ``cfg`` from these inputs (same weight and samples checksums),
    else None. ``solve.pt`` is checksum-verified before torch.load (weights_only): a damaged one is an InputError,
    never a u."""
    manifest = lake.current(influence_solve(src), None, cfg.to_dict(), identity)
    if manifest is None:
        return None
    remedy = "rerun the solve (dealrec influence-solve)"
    payload = lake.read_verified_torch(influence_solve(src), None, "solve.pt", remedy, manifest)
    files = len(identity["surrogate_sha256"])
    if not isinstance(payload, dict) or not isinstance(payload.get("u"), list) or len(payload["u"]) != files:
        uri = f"{lake.partition(influence_solve(src))}/solve.pt"
        raise InputError(f"{uri}: does not hold one u per weight file ({files}); {remedy}")
    return payload


def score_influence(
    lake: Lake, dt: str | None, cfg: InfluenceConfig, shard: tuple[int, int] = (0, 1), *, dataset: str | None = None
) -> StepResult:
    """Score shard ``i`` of ``n`` of the training rows (ordered by sample_id) with every weight file; publish the
    raw scores, one column per file.

    Uses the published solve when it matches this config and these weights: reads the shard's rows only and makes
    one pass over them per file (memory: the batch, plus the shard's tokens). Otherwise computes the same solves
    locally (reads every row, one pass over them per file).
    """
    src = source(dt, dataset)
    i, n = shard
    models, identity, weights = _weights(lake, src)
    done = lake.current(influence_shard(src, shard), None, cfg.to_dict(), identity)
    if done is not None:
        counts = {"shard": f"{i}/{n}", "rows": done.get("counts", {}).get("rows"), **_sizes(weights)}
        return StepResult("influence", {"shard": lake.partition(influence_shard(src, shard))}, counts, False)
    # The solve is verified before any Parquet read: an error raised within milliseconds of one can make the
    # interpreter abort at exit (SIGABRT: a pyarrow pool thread still releasing the read's Python bytes).
    pre = _published_solve(lake, src, cfg, identity)
    notes = []
    if pre is not None:  # the shard's rows only: one pass over them per file
        seqs, n_train = _shard_seqs(lake, src, models[0].n_items, shard)
        n_rows = len(seqs)
        columns: dict[str, Any] = {"sample_id": seqs.sample_id}
        negatives = negatives_from_payload(pre)
        for m, (model, u) in enumerate(zip(models, pre["u"])):
            columns[member_column(m)] = score_rows(to_dtype(model, cfg), seqs, u, negatives, cfg)
        timings: dict[str, Any] = {"used_published_solve": True}
    else:  # every row: the solve needs them all
        seqs, target = _rows(lake, src, cfg, models[0].n_items)
        rows = shard_rows(len(seqs), shard)
        n_rows, n_train = len(rows), len(seqs)
        columns = {"sample_id": seqs.sample_id[rows]}
        per_file = []
        for m, model in enumerate(models):
            res = influence(model, seqs, cfg, shard, target)
            columns[member_column(m)] = res.influence
            per_file.append(dict(res.timings, solve=res.solution.info.to_dict()))
            notes.append(
                f"influence shard {i}/{n} weights {weights[m]['file']}: no matching published solve, "
                f"solved locally ({res.solution.info})"
            )
        timings = {"used_published_solve": False, "weights": per_file}
    for m, w in enumerate(weights):
        check_finite(columns[member_column(m)], f"influence shard {i}/{n} of weights {w['file']}")
    table = pa.table(columns, schema=shard_schema(len(models)))
    pub = lake.publish(
        influence_shard(src, shard),
        None,
        {"influence.parquet": table},
        config=cfg.to_dict(),
        inputs=identity,
        extra={
            "shard": [i, n],
            "timings": timings,
            "counts": {"rows": n_rows, "train_samples": n_train, **_sizes(weights)},
            "weights": [w["file"] for w in weights],
        },
    )
    counts = {"shard": f"{i}/{n}", "rows": n_rows, **_sizes(weights)}
    return StepResult("influence", {"shard": pub.uri}, counts, pub.changed, notes)


def combined_table(table: pa.Table, files: list[str] | None = None) -> pa.Table:
    """The merged shards [n rows, every training row] with ``influence`` = ``combine_members`` over the weight
    files' columns, placed after ``sample_id``. ``files``: the weight files of the columns, to name one in a refusal.

    Refused (``DegenerateError``): a column with a non-finite score, or a combined influence that is the same for
    every row (it would rank nothing: selection would follow the effort alone)."""
    names = member_columns(table)
    if not names:
        raise InputError("influence shards hold no member columns (made before ensembles); rescore the shards")
    labels = [f"{c} ({files[j]})" if files and j < len(files) else c for j, c in enumerate(names)]
    combined = combine_members([table.column(c).to_numpy() for c in names], labels)  # [n]
    check_scores(combined, "merged influence", "retrain the surrogate and rescore (dealrec surrogate, influence)")
    columns = {"sample_id": table.column("sample_id"), "influence": pa.array(combined, pa.float64())}
    return pa.table(columns | {c: table.column(c) for c in names})


def merge_influence(lake: Lake, dt: str | None, n: int, *, dataset: str | None = None) -> StepResult:
    """Concatenate the n shards (same config and weights, every training row exactly once), combine the weight
    files' scores over all rows, and publish."""
    src = source(dt, dataset)
    check_shard_count(n)
    parts = [influence_shard(src, (i, n)) for i in range(n)]
    files = (lake.manifest(parts[0]) or {}).get("weights")  # names the weight file of a refused column
    pub, table, first = merge_shards(
        lake,
        parts,
        "influence.parquet",
        src.path(SCORES_INFLUENCE),
        src.dt,
        lambda shard0: (
            {"surrogate": lake.partition(src.path(SURROGATE), src.dt)}
            | ({"weights": shard0["weights"]} if "weights" in shard0 else {})
        ),
        finish=lambda merged: combined_table(merged, files),
    )
    counts = {"samples": table.num_rows, "shards": n, "weights": len(member_columns(table))}
    members = first.get("counts", {}).get("members")  # shard 0's count of distinct members
    if members is not None:
        counts["members"] = members
    return StepResult("merge-influence", {"scores": pub.uri}, counts, pub.changed)
