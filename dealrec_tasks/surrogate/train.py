"""Training loop: the paper's loss, length-bucketed batches, early stopping on validation Recall@K, warm start.

Loss (the reference port's): at every real position, BCE of the next item against one negative drawn
uniformly from the other items, averaged over the positions of the batch. Each ``train`` row contributes the
predictions inside its history plus the final one (DESIGN.md section 3), and one more: x_1 from BOS.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dealrec_tasks.errors import DegenerateError
from dealrec_tasks.finite import check_state
from dealrec_tasks.progress import progress
from dealrec_tasks.surrogate.batching import EvalSet, Seqs, length_batches, train_batch
from dealrec_tasks.surrogate.config import SurrogateConfig
from dealrec_tasks.surrogate.evaluate import evaluate
from dealrec_tasks.surrogate.model import SASRec, bce_sampled, expand_state_dict


@dataclass
class TrainResult:
    model: SASRec
    epochs: int  # epochs run
    best_epoch: int
    best_metric: float
    history: list[dict[str, Any]] = field(default_factory=list)
    warm_start: bool = False
    seconds: float = 0.0
    # (epoch, state_dict) of the last ``cfg.checkpoints`` evaluated epochs up to the best one, oldest first
    checkpoints: list[tuple[int, dict[str, Tensor]]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        times = [h["train_s"] for h in self.history]
        return {
            "epochs": self.epochs,
            "best_epoch": self.best_epoch,
            "best_valid_metric": self.best_metric,
            "warm_start": self.warm_start,
            "seconds": round(self.seconds, 2),
            "mean_epoch_s": round(float(np.mean(times)), 3) if times else 0.0,
        }


def sample_negatives(pos: Tensor, n_items: int, gen: torch.Generator) -> Tensor:
    """One item per position, uniform over 1..n_items except the positive."""
    neg = torch.randint(1, n_items, pos.shape, generator=gen)  # 1..n-1
    return neg + (neg >= pos).long()  # skip the positive: uniform over the other n-1 items


def build_model(n_items: int, cfg: SurrogateConfig, init_state: dict[str, Tensor] | None = None) -> SASRec:
    """A fresh model (seeded), or a warm start from ``init_state`` (new items keep their fresh rows)."""
    torch.manual_seed(cfg.seed)
    model = SASRec(n_items, cfg)
    if init_state is not None:
        model.load_state_dict(expand_state_dict(init_state, model))
    return model


def _check_epoch(model: SASRec, loss: float, epoch: int, cfg: SurrogateConfig) -> None:
    """Stop at the first epoch whose loss or weights are not finite: such a model scores every item NaN, which no
    ranking, early stopping or influence may see (a NaN model once looked perfect: recall@20 1.0)."""
    where = f"at epoch {epoch} (lr={cfg.lr}, seed {cfg.seed})"
    if not math.isfinite(loss):
        raise DegenerateError(f"surrogate: non-finite loss ({loss}) {where}; lower --lr")
    check_state(model.named_parameters(), f"surrogate {where}", "lower --lr")


def train(
    train: Seqs,
    valid: EvalSet,
    n_items: int,
    cfg: SurrogateConfig,
    init_state: dict[str, Tensor] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train until validation Recall@metric_k stops improving for ``patience`` evaluations; keep the best weights.

    A non-finite loss or weight after any epoch is a ``DegenerateError`` naming the epoch and the learning rate:
    nothing of a diverged run is returned, so no caller can publish it."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    model = build_model(n_items, cfg, init_state)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.l2)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    key = f"recall@{cfg.metric_k}"
    lengths = np.minimum(train.lengths - 1, cfg.max_len)
    best, best_epoch, best_state, stale = -1.0, 0, None, 0
    window: list[tuple[int, dict[str, Tensor]]] = []  # the last cfg.checkpoints evaluated epochs
    kept: list[tuple[int, dict[str, Tensor]]] = []  # the window as it was at the best epoch
    history: list[dict[str, Any]] = []
    epoch = 0
    for epoch in progress(range(1, cfg.max_epochs + 1), desc="surrogate epochs", unit="epoch"):
        model.train()
        t0 = time.perf_counter()
        total, count = 0.0, 0
        for rows in length_batches(lengths, cfg.batch_size, rng):
            batch = train_batch(train, rows, cfg.max_len)
            h = model(batch.inputs)[batch.real]  # [N, H] real positions only
            neg = sample_negatives(batch.targets, n_items, gen)
            loss = bce_sampled(h, batch.targets, neg, model.item_weights()).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.item_emb.weight[0].zero_()  # padding stays zero (Adam would move it through weight decay)
            total += float(loss.detach()) * len(neg)
            count += len(neg)
        row: dict[str, Any] = {"epoch": epoch, "loss": total / max(count, 1), "train_s": time.perf_counter() - t0}
        _check_epoch(model, row["loss"], epoch, cfg)
        if epoch % cfg.eval_every == 0 or epoch == cfg.max_epochs:
            t1 = time.perf_counter()
            metrics = evaluate(model, valid, cfg.eval_batch_size) if len(valid.inputs) else {key: 0.0}
            row.update({f"valid_{k}": v for k, v in metrics.items() if k != "users"}, eval_s=time.perf_counter() - t1)
            improved = metrics[key] > best
            if improved or cfg.checkpoints > 1:  # a copy only when it may be kept
                window = [*window, (epoch, copy.deepcopy(model.state_dict()))][-cfg.checkpoints :]
            if improved:
                best, best_epoch, stale = metrics[key], epoch, 0
                best_state = window[-1][1]
                kept = list(window)
            else:
                stale += 1
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if stale >= cfg.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(
        model=model,
        epochs=epoch,
        best_epoch=best_epoch,
        best_metric=best,
        history=history,
        warm_start=init_state is not None,
        seconds=time.perf_counter() - started,
        checkpoints=kept if best_state is not None else [(epoch, copy.deepcopy(model.state_dict()))],
    )
