"""Settings of the SASRec surrogate (paper defaults) and its training loop.

``members``: the step trains that many surrogates (seeds seed, seed+1, ...) and influence averages over them.
Two surrogates trained with different seeds rank the samples' influence differently (Games, at their best epochs:
Spearman 0.12-0.65 for the paper's training-risk influence, 0.64-0.82 for influence toward the validation rows),
so one training run's luck would decide the coreset; an ensemble (as in TRAK / TracIn) averages that luck out:
two disjoint ensembles of 4 surrogates agree at 0.93 with the validation target, the default
(``bench/results/coreset_quality_cold_valid4.json``; 3 x 6 checkpoints of the training risk: 0.50).
``checkpoints``: weights kept per member, its best epoch and the ones before it (TracIn-style). With the validation
target 1 (the best epoch) is enough; earlier epochs of the training risk even lowered the agreement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dealrec_tasks.config import _Config, _require, opt


@dataclass(frozen=True)
class SurrogateConfig(_Config):
    """``surrogate``: SASRec trained with the paper's loss, early-stopped on validation Recall@K."""

    hidden: int = opt(64, "hidden size (item and position embeddings, attention, feed-forward)")
    blocks: int = opt(2, "number of transformer blocks")
    heads: int = opt(2, "attention heads per block")
    dropout: float = opt(0.5, "dropout rate (embeddings, attention weights, feed-forward)")
    max_len: int = opt(50, "input positions kept (most recent)")
    lr: float = opt(1e-3, "Adam learning rate")
    l2: float = opt(0.0, "Adam weight decay")
    batch_size: int = opt(500, "training samples per batch")
    max_epochs: int = opt(200, "upper bound on training epochs", ge=1, le=10_000)
    patience: int = opt(5, "stop after this many evaluations without a better validation metric")
    eval_every: int = opt(1, "evaluate on the validation rows every this many epochs")
    metric_k: int = opt(20, "early stopping watches validation Recall@metric_k")
    eval_batch_size: int = opt(1024, "users per batch in full-ranking evaluation")
    cold_start: bool = opt(False, "ignore the previous day's checkpoint and train from a fresh initialisation")
    seed: int = opt(0, "seed of initialisation, batch order, negatives and dropout")
    members: int = opt(
        4,
        "surrogates trained with seeds seed..seed+members-1; influence averages their scores "
        "(stability across retrains)",
    )
    checkpoints: int = opt(
        1,
        "weights kept per member for influence: the best epoch and the checkpoints-1 evaluated epochs before it "
        "(TracIn-style averaging over training; 1 = the best epoch only)",
    )
    threads: int = opt(0, "torch intra-op threads; 0 keeps torch's default (the cores given to the process)")

    def validate(self) -> None:
        _require(self.hidden >= 2, f"hidden={self.hidden}: must be >= 2")
        _require(self.blocks >= 1, f"blocks={self.blocks}: must be >= 1")
        _require(self.heads >= 1 and self.hidden % self.heads == 0, f"heads={self.heads}: must divide hidden")
        _require(0.0 <= self.dropout < 1.0, f"dropout={self.dropout}: must be in [0, 1)")
        _require(self.max_len >= 1, f"max_len={self.max_len}: must be >= 1")
        _require(0 < self.lr < math.inf, f"lr={self.lr}: must be finite and > 0")
        _require(0 <= self.l2 < math.inf, f"l2={self.l2}: must be finite and >= 0")
        _require(self.batch_size >= 1, f"batch_size={self.batch_size}: must be >= 1")
        _require(self.max_epochs >= 1, f"max_epochs={self.max_epochs}: must be >= 1")
        _require(self.patience >= 1, f"patience={self.patience}: must be >= 1")
        _require(self.eval_every >= 1, f"eval_every={self.eval_every}: must be >= 1")
        _require(self.metric_k >= 1, f"metric_k={self.metric_k}: must be >= 1")
        _require(self.eval_batch_size >= 1, f"eval_batch_size={self.eval_batch_size}: must be >= 1")
        _require(self.members >= 1, f"members={self.members}: must be >= 1")
        _require(self.checkpoints >= 1, f"checkpoints={self.checkpoints}: must be >= 1")
        _require(self.threads >= 0, f"threads={self.threads}: must be >= 0")

    @classmethod
    def tiny(cls, **overrides) -> SurrogateConfig:
        """A preset for tests: a few weights, a few epochs, no dropout, two members (an ensemble, at 2/3 the cost)."""
        values = dict(
            hidden=8,
            blocks=2,
            heads=2,
            dropout=0.0,
            max_len=10,
            batch_size=32,
            max_epochs=3,
            patience=2,
            members=2,
            checkpoints=2,
        )
        return cls(**(values | overrides))
