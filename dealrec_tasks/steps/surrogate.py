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
(``model*.pt``) last per member (``load_influence_models`` loads them). A partition without that list (older
ones) stands for its member best files, so older lakes still load and score.
"""

from __future__ import annotations

import dataclasses
import io
import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import torch

from dealrec_tasks.config import parse_dt
from dealrec_tasks.data.schema import DATASETS, SAMPLES, SURROGATE, VOCAB
from dealrec_tasks.errors import InputError
from dealrec_tasks.progress import report
from dealrec_tasks.steps.common import StepResult
from dealrec_tasks.storage import Lake, join_uri
from dealrec_tasks.surrogate.batching import eval_set, train_seqs
from dealrec_tasks.surrogate.config import SurrogateConfig
from dealrec_tasks.surrogate.evaluate import evaluate
from dealrec_tasks.surrogate.model import SASRec
from dealrec_tasks.surrogate.train import train

MODEL_FILE = "model.pt"  # member 0; member i > 0 is model_i.pt (see member_file)
INFLUENCE_WEIGHTS = "influence_weights"  # manifest key: the ordered weight files influence uses
ARCH_FIELDS = ("hidden", "blocks", "heads", "max_len")


@dataclass(frozen=True)
class Source:
    """Where a step's samples and checkpoints live: the daily lake (``dt``) or an imported dataset."""

    dt: str | None
    dataset: str | None

    def path(self, kind: str) -> str:
        return f"{DATASETS}/{self.dataset}/{kind}" if self.dataset else kind

    @property
    def label(self) -> str:
        return f"dataset={self.dataset}" if self.dataset else f"dt={self.dt}"


def source(dt: str | None, dataset: str | None) -> Source:
    if dt is not None:
        parse_dt(dt)  # part of paths (influence/dt=D/...): a crafted dt must not reach another partition
    if (dt is None) == (dataset is None):
        raise InputError("give exactly one of dt (daily samples) or dataset (an imported dataset's samples)")
    if dt is not None:
        parse_dt(dt)
    return Source(dt, dataset)


def read_samples(lake: Lake, src: Source) -> tuple[pa.Table, int]:
    """The samples table and the item count (largest item index of the vocab the samples were built with)."""
    samples = lake.read(src.path(SAMPLES), src.dt, "samples.parquet")
    vocab = lake.read(f"{DATASETS}/{src.dataset}", None, "item_vocab") if src.dataset else None
    if vocab is None:
        vocab = lake.read(VOCAB, src.dt, "items.parquet")
    n_items = int(pc.max(vocab.column("item_idx")).as_py() or 0)
    return samples, n_items


def state_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, buf)
    return buf.getvalue()


def member_file(i: int) -> str:
    """The checkpoint file of ensemble member ``i``: ``model.pt`` for member 0 (backward compatible)."""
    return MODEL_FILE if i == 0 else f"model_{i}.pt"


def member_files(manifest: dict[str, Any]) -> list[str]:
    """The checkpoint files a surrogate manifest lists, member 0 first (one for partitions older than ensembles)."""
    files = manifest["files"]
    out: list[str] = []
    while member_file(len(out)) in files:
        out.append(member_file(len(out)))
    if not out:
        raise InputError(
            f"{manifest.get('uri', 'surrogate')}: no {MODEL_FILE} in the manifest; republish the surrogate"
        )
    return out


def checkpoint_file(i: int, epoch: int) -> str:
    """A kept checkpoint of member ``i`` other than its best: its weights after evaluated epoch ``epoch``."""
    return f"ckpt_{i}_e{epoch}.pt"


def influence_weights(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The weight files influence uses, in order: ``[{"file", "member", "epoch", "best"}, ...]``, member-major,
    epochs ascending, each member's best last. A partition without the list (older than checkpoint averaging)
    gives its member best files (``epoch`` None)."""
    listed = manifest.get(INFLUENCE_WEIGHTS)
    if listed is None:
        return [{"file": f, "member": i, "epoch": None, "best": True} for i, f in enumerate(member_files(manifest))]
    missing = [w.get("file") for w in listed if w.get("file") not in manifest["files"]]
    if not listed or missing:
        raise InputError(
            f"{manifest.get('uri', 'surrogate')}: {INFLUENCE_WEIGHTS} lists {missing or 'no'} file(s) the manifest "
            "does not hold; republish the surrogate"
        )
    return listed


def influence_sha256(manifest: dict[str, Any]) -> list[str]:
    """Identity of the weights influence uses: the checksums of the ``influence_weights`` files, in order (the
    member checksums for a partition older than checkpoint averaging)."""
    return [manifest["files"][w["file"]]["sha256"] for w in influence_weights(manifest)]


def load_verified_pt(
    lake: Lake, dataset: str, dt: str | None, name: str, remedy: str, manifest: dict[str, Any] | None = None
) -> Any:
    """``torch.load`` (weights_only) of a partition's file, only once its bytes match the sha256 the manifest lists.

    Why: torch.load of a file with a flipped byte mostly succeeds (24 of 25 random flips of a solve.pt: the byte
    lands in tensor data) and returns wrong numbers, so a damaged file must be an InputError naming it (and
    ``remedy``) before torch sees it. ``manifest``: the one already read (what the caller's other checks used),
    else the partition's current one.
    """
    uri = join_uri(lake.partition(dataset, dt), name)
    data = lake.read_verified_bytes(dataset, dt, name, manifest, remedy)
    try:
        return torch.load(io.BytesIO(data), weights_only=True)
    except Exception as exc:  # checksum fine, yet unreadable here (e.g. a torch that cannot read its format)
        raise InputError(f"{uri}: not a loadable torch file ({type(exc).__name__}: {exc}); {remedy}") from None


def _read_state(lake: Lake, src: Source, manifest: dict[str, Any], name: str) -> dict[str, torch.Tensor]:
    return load_verified_pt(lake, src.path(SURROGATE), src.dt, name, "republish the surrogate", manifest)


def load_checkpoint(lake: Lake, src: Source) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """state_dict of member 0 and the manifest of a published surrogate, checksum-verified, weights_only."""
    manifest = lake.require_manifest(src.path(SURROGATE), src.dt)
    return _read_state(lake, src, manifest, MODEL_FILE), manifest


def load_checkpoints(lake: Lake, src: Source) -> tuple[list[dict[str, torch.Tensor]], dict[str, Any]]:
    """state_dicts of every member (one for an older single-surrogate partition) and the manifest they match."""
    manifest = lake.require_manifest(src.path(SURROGATE), src.dt)
    return [_read_state(lake, src, manifest, name) for name in member_files(manifest)], manifest


def _build(state: dict[str, torch.Tensor], manifest: dict[str, Any]) -> SASRec:
    cfg = SurrogateConfig.from_dict(manifest["config"])
    model = SASRec(int(manifest["counts"]["items"]), cfg)
    model.load_state_dict(state)
    return model.eval()


def load_model(lake: Lake, src: Source) -> tuple[SASRec, dict[str, Any]]:
    """Member 0 of the published surrogate (what single-model readers, e.g. GraNd / EL2N, use)."""
    state, manifest = load_checkpoint(lake, src)
    return _build(state, manifest), manifest


def load_ensemble(lake: Lake, src: Source) -> tuple[list[SASRec], dict[str, Any]]:
    """Every member's best weights (one for an older single-surrogate partition), checksum-verified each,
    weights_only, and the manifest they were verified against."""
    states, manifest = load_checkpoints(lake, src)
    return [_build(state, manifest) for state in states], manifest


def load_influence_models(lake: Lake, src: Source) -> tuple[list[SASRec], dict[str, Any]]:
    """The models of every ``influence_weights`` file, in that order (every member's kept checkpoints, best last;
    the member best files for an older partition), checksum-verified each, weights_only, and the manifest."""
    manifest = lake.require_manifest(src.path(SURROGATE), src.dt)
    states = [_read_state(lake, src, manifest, w["file"]) for w in influence_weights(manifest)]
    return [_build(state, manifest) for state in states], manifest


def _previous(
    lake: Lake, dt: str, cfg: SurrogateConfig
) -> tuple[list[dict[str, torch.Tensor]] | None, str | None, str]:
    """Every member of the latest checkpoint before ``dt`` with the same architecture, or why there is none."""
    earlier = [d for d in lake.partitions(SURROGATE) if d < dt]
    if not earlier:
        return None, None, "no earlier checkpoint"
    prev = earlier[-1]
    states, manifest = load_checkpoints(lake, Source(prev, None))
    old = manifest.get("config", {})
    if any(old.get(k) != getattr(cfg, k) for k in ARCH_FIELDS):
        return None, prev, f"checkpoint dt={prev} has another architecture"
    return states, prev, f"warm start from dt={prev}"


def samples_sha256(lake: Lake, src: Source) -> str:
    """Identity of the samples a surrogate is trained on (their file's checksum in the samples manifest)."""
    return lake.require_manifest(src.path(SAMPLES), src.dt)["files"]["samples.parquet"]["sha256"]


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
    """
    src = source(dt, dataset)
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
            shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items() if "50" not in k}
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
            "source": {
                "samples": lake.partition(src.path(SAMPLES), src.dt),
                "samples_sha256": samples_sha256(lake, src),
                "warm": prev,
            },
            INFLUENCE_WEIGHTS: weights,
        },
        blobs=blobs,
    )
    return StepResult("surrogate", {"surrogate": pub.uri}, counts, pub.changed, notes)
