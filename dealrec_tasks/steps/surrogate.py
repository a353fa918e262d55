"""Surrogate step: train SASRec on a day's samples (warm start from the previous day) and publish a checkpoint."""

from __future__ import annotations

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
from dealrec_tasks.storage import Lake, join_uri, sha256
from dealrec_tasks.surrogate.batching import eval_set, train_seqs
from dealrec_tasks.surrogate.config import SurrogateConfig
from dealrec_tasks.surrogate.evaluate import evaluate
from dealrec_tasks.surrogate.model import SASRec
from dealrec_tasks.surrogate.train import train

MODEL_FILE = "model.pt"
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


def load_checkpoint(lake: Lake, src: Source) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """state_dict and manifest of a published surrogate, checksum-verified, loaded with weights_only."""
    manifest = lake.require_manifest(src.path(SURROGATE), src.dt)
    uri = join_uri(lake.partition(src.path(SURROGATE), src.dt), MODEL_FILE)
    data = lake.storage.read_bytes(uri)
    if sha256(data) != manifest["files"][MODEL_FILE]["sha256"]:
        raise InputError(f"{uri}: checksum differs from the manifest; republish the surrogate")
    return torch.load(io.BytesIO(data), weights_only=True), manifest


def load_model(lake: Lake, src: Source) -> tuple[SASRec, dict[str, Any]]:
    state, manifest = load_checkpoint(lake, src)
    cfg = SurrogateConfig.from_dict(manifest["config"])
    model = SASRec(int(manifest["counts"]["items"]), cfg)
    model.load_state_dict(state)
    return model.eval(), manifest


def _previous(lake: Lake, dt: str, cfg: SurrogateConfig) -> tuple[dict[str, torch.Tensor] | None, str | None, str]:
    """The latest checkpoint before ``dt`` with the same architecture, or why there is none."""
    earlier = [d for d in lake.partitions(SURROGATE) if d < dt]
    if not earlier:
        return None, None, "no earlier checkpoint"
    prev = earlier[-1]
    state, manifest = load_checkpoint(lake, Source(prev, None))
    old = manifest.get("config", {})
    if any(old.get(k) != getattr(cfg, k) for k in ARCH_FIELDS):
        return None, prev, f"checkpoint dt={prev} has another architecture"
    return state, prev, f"warm start from dt={prev}"


def samples_sha256(lake: Lake, src: Source) -> str:
    """Identity of the samples a surrogate is trained on (their file's checksum in the samples manifest)."""
    return lake.require_manifest(src.path(SAMPLES), src.dt)["files"]["samples.parquet"]["sha256"]


def train_surrogate(lake: Lake, dt: str | None, cfg: SurrogateConfig, *, dataset: str | None = None) -> StepResult:
    """Train on the ``train`` rows, early-stop on ``valid``, report ``test``; publish ``surrogate/dt=D/``.

    A daily run starts from the latest checkpoint before ``dt`` (new items get fresh rows) unless
    ``cfg.cold_start``; imported datasets always start cold.
    """
    src = source(dt, dataset)
    samples, n_items = read_samples(lake, src)
    seqs = train_seqs(samples, n_items)
    if len(seqs) == 0:
        raise InputError(f"{lake.partition(src.path(SAMPLES), src.dt)}: no train rows to fit a surrogate on")
    valid, test = eval_set(samples, "valid", n_items), eval_set(samples, "test", n_items)
    if dt is None:
        init, prev, why = None, None, "imported dataset: cold start"
    elif cfg.cold_start:
        init, prev, why = None, None, "cold start requested"
    else:
        init, prev, why = _previous(lake, dt, cfg)
    notes = [f"surrogate {src.label}: {why}"]

    def log(row: dict[str, Any]) -> None:  # progress per epoch, as it happens
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items() if "50" not in k}
        report(f"surrogate {src.label}: epoch {shown}")

    result = train(seqs, valid, n_items, cfg, init_state=init, on_epoch=log)
    test_metrics = evaluate(result.model, test, cfg.eval_batch_size) if len(test.inputs) else {}
    summary = result.summary()
    counts: dict[str, Any] = {
        "items": n_items,
        "train_samples": len(seqs),
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "warm_start": result.warm_start,
        "valid_recall": round(result.best_metric, 5),
        "mean_epoch_s": summary["mean_epoch_s"],
        **{f"test_{k}": round(v, 5) for k, v in test_metrics.items() if k != "users"},
    }
    metrics = {"summary": summary, "test": test_metrics, "history": result.history, "warm_start_from": prev}
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
        },
        blobs={
            MODEL_FILE: state_bytes(result.model.state_dict()),
            "metrics.json": (json.dumps(metrics, indent=2, default=float) + "\n").encode(),
        },
    )
    return StepResult("surrogate", {"surrogate": pub.uri}, counts, pub.changed, notes)
