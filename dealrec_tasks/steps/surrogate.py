"""Surrogate step: train an ensemble of SASRec surrogates on a day's samples and publish their checkpoints.

``cfg.members`` surrogates (seeds seed, seed+1, ...) go into the one ``surrogate/dt=D/`` partition. Member i's
best weights are ``model.pt`` (i = 0: what single-surrogate readers, GraNd / EL2N and older partitions have) or
``model_i.pt``; each warm-starts from the same member of the previous day's checkpoint. Its other kept checkpoints
(up to ``cfg.checkpoints - 1`` evaluated epochs right before the best one) are ``ckpt_{i}_e{epoch}.pt``.

Influence averages over every member and every kept checkpoint, because the influence ranking moves a lot with
the training seed and even between consecutive epochs of one run (measured agreements in
``bench/results/coreset_quality_cold.json``; two ensembles of 3 x 6 agree better than two single surrogates, at
0.50, not yet at a stable ranking). The files influence uses, in order, are the manifest's top-level
``influence_weights``: ``[{"file", "member", "epoch", "best"}, ...]``, member-major, epochs ascending, the best
(``model*.pt``) last per member (``steps/readers.py`` loads them). A partition without that list (older
ones) stands for its member best files, so older lakes still load and score.
"""

from __future__ import annotations

import dataclasses
import io
import json
from typing import Any

import torch

from dealrec_tasks.catalogue import SAMPLES, SURROGATE, Source, source
from dealrec_tasks.errors import InputError
from dealrec_tasks.finite import check_finite, check_state
from dealrec_tasks.progress import report
from dealrec_tasks.steps.common import StepResult
from dealrec_tasks.steps.readers import (
    INFLUENCE_WEIGHTS,
    checkpoint_file,
    load_checkpoints,
    member_file,
    read_samples,
    samples_sha256,
)
from dealrec_tasks.storage import Lake
from dealrec_tasks.surrogate.batching import eval_set, train_seqs
from dealrec_tasks.surrogate.config import SurrogateConfig
from dealrec_tasks.surrogate.evaluate import evaluate
from dealrec_tasks.surrogate.train import train

ARCH_FIELDS = ("hidden", "blocks", "heads", "max_len")


def state_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, buf)
    return buf.getvalue()


def _previous(
    lake: Lake, dt: str, cfg: SurrogateConfig
) -> tuple[list[dict[str, torch.Tensor]] | None, str | None, str]:
    """Every member of the latest checkpoint before ``dt`` with the same architecture, or why there is none."""
    earlier = [d for d in lake.partitions(SURROGATE) if d < dt]
    if not earlier:
        return None, None, "no earlier checkpoint"
    prev = earlier[-1]
    states, manifest = load_checkpoints(lake, Source(prev))
    old = manifest.get("config", {})
    if any(old.get(k) != getattr(cfg, k) for k in ARCH_FIELDS):
        return None, prev, f"checkpoint dt={prev} has another architecture"
    for i, state in enumerate(states):  # a diverged checkpoint published before training refused one
        check_state(state, f"surrogate dt={prev} {member_file(i)}", "retrain that day, or train this one --cold-start")
    return states, prev, f"warm start from dt={prev}"


def _member_init(
    states: list[dict[str, torch.Tensor]] | None, prev: str | None, i: int
) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    """Member ``i``'s warm start: the same member of the previous checkpoint, else its member 0 (with a note)."""
    if states is None:
        return None, None
    if i < len(states):
        return states[i], None
    return states[0], f"member {i}: dt={prev} has {len(states)} member(s), warm start from its member 0"


def train_surrogate(lake: Lake, dt: str | None, cfg: SurrogateConfig, *, dataset: str | None = None) -> StepResult:
    """Train ``cfg.members`` surrogates on the ``train`` rows, early-stop on ``valid``, report ``test``; publish
    ``surrogate/dt=D/``.

    Member i is ``cfg`` with seed ``cfg.seed + i``. A daily run starts member i from member i of the latest
    checkpoint before ``dt`` (new items get fresh rows; member 0 of it when it has fewer members) unless
    ``cfg.cold_start``; imported datasets always start cold. Every member's best weights are ``member_file(i)``,
    its other kept checkpoints ``checkpoint_file(i, epoch)``; the manifest's ``influence_weights`` lists them in
    the order influence uses. ``counts`` keep member 0's keys (what a reader of a single surrogate expects) plus
    ``members``, ``per_member``, ``checkpoints`` (the config value) and ``influence_files`` (the list's length).

    A no-op when the partition is published with ``cfg`` from the same samples (their checksum), on every entry
    point (CLI, DAG, demo).
    """
    src = source(dt, dataset)
    inputs = {"samples": samples_sha256(lake, src)}
    done = lake.current(src.path(SURROGATE), src.dt, cfg.to_dict(), inputs)
    if done is not None:
        # Training is not bit-reproducible on CPU threads (and its metrics carry timings): a retrain would
        # republish, and with it every score, the coreset and a second MLflow run, for unchanged inputs.
        why = f"surrogate {src.label}: already trained with this config on these samples ({done['created_at']})"
        uris = {"surrogate": lake.partition(src.path(SURROGATE), src.dt)}
        return StepResult("surrogate", uris, done.get("counts", {}), False, [why])
    # The warm start's checkpoints are verified before any Parquet read: an error raised within milliseconds of one
    # can make the interpreter abort at exit (SIGABRT: a pyarrow pool thread still releasing the read's bytes).
    if dt is None:
        states, prev, why = None, None, "imported dataset: cold start"
    elif cfg.cold_start:
        states, prev, why = None, None, "cold start requested"
    else:
        states, prev, why = _previous(lake, dt, cfg)
    samples, n_items = read_samples(lake, src)
    seqs = train_seqs(samples, n_items)
    if len(seqs) == 0:
        raise InputError(f"{lake.partition(src.path(SAMPLES), src.dt)}: no train rows to fit a surrogate on")
    valid, test = eval_set(samples, "valid", n_items), eval_set(samples, "test", n_items)
    notes = [f"surrogate {src.label}: {why}"]

    blobs: dict[str, bytes] = {}
    weights: list[dict[str, Any]] = []  # the influence_weights list
    per_member: list[dict[str, Any]] = []
    member_metrics: list[dict[str, Any]] = []
    for i in range(cfg.members):
        member_cfg = dataclasses.replace(cfg, seed=cfg.seed + i)
        init, fallback = _member_init(states, prev, i)
        if fallback:
            notes.append(f"surrogate {src.label}: {fallback}")
        label = f"{src.label} member {i}/{cfg.members}"

        def log(row: dict[str, Any], label: str = label) -> None:  # progress per epoch, as it happens
            shown = {k: round(float(v), 4) if isinstance(v, float) else v for k, v in row.items() if "50" not in k}
            report(f"surrogate {label}: epoch {shown}")

        result = train(seqs, valid, n_items, member_cfg, init_state=init, on_epoch=log)
        test_metrics = evaluate(result.model, test, cfg.eval_batch_size) if len(test.inputs) else {}
        summary = result.summary()
        tests = {f"test_{k}": round(float(v), 5) for k, v in test_metrics.items() if k != "users"}
        per_member.append(
            {
                "seed": member_cfg.seed,
                "epochs": result.epochs,
                "best_epoch": result.best_epoch,
                "warm_start": result.warm_start,
                "valid_recall": round(result.best_metric, 5),
                "mean_epoch_s": summary["mean_epoch_s"],
                **tests,
            }
        )
        member_metrics.append({"summary": summary, "test": test_metrics, "history": result.history})
        # train() refuses a diverged epoch; checked again here, as the last thing before the weights are published.
        check_state(result.model.state_dict(), f"surrogate {label}", f"lower --lr (lr={cfg.lr})")
        check_finite(list(test_metrics.values()), f"surrogate {label}: test metrics {test_metrics}")
        blobs[member_file(i)] = state_bytes(result.model.state_dict())
        kept = result.checkpoints or [(result.best_epoch, result.model.state_dict())]  # oldest first, best last
        for epoch, state in kept[:-1]:
            blobs[checkpoint_file(i, epoch)] = state_bytes(state)
            weights.append({"file": checkpoint_file(i, epoch), "member": i, "epoch": epoch, "best": False})
        weights.append({"file": member_file(i), "member": i, "epoch": kept[-1][0], "best": True})
    first = {k: v for k, v in per_member[0].items() if k != "seed"}
    # per_member stays short (it is in every summary line); every member's full metrics are in metrics.json.
    short = ("seed", "epochs", "best_epoch", "warm_start", "valid_recall", f"test_recall@{cfg.metric_k}")
    counts: dict[str, Any] = {
        "items": n_items,
        "train_samples": len(seqs),
        **first,
        "members": cfg.members,
        "per_member": [{k: m[k] for k in short if k in m} for m in per_member],
        "checkpoints": cfg.checkpoints,
        "influence_files": len(weights),
    }
    # metrics.json: member 0 at the top level (as before ensembles: tracking reads its history), every member below.
    metrics = member_metrics[0] | {"warm_start_from": prev, "members": member_metrics}
    blobs["metrics.json"] = (json.dumps(metrics, indent=2, default=float) + "\n").encode()
    pub = lake.publish(
        src.path(SURROGATE),
        src.dt,
        {},
        config=cfg.to_dict(),
        extra={
            "counts": counts,
            "source": {"samples": lake.partition(src.path(SAMPLES), src.dt), "warm": prev},
            INFLUENCE_WEIGHTS: weights,
        },
        blobs=blobs,
        inputs=inputs,
    )
    return StepResult("surrogate", {"surrogate": pub.uri}, counts, pub.changed, notes)
