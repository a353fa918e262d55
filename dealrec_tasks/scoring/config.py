"""Settings of the influence scores (DESIGN.md section 3)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from dealrec_tasks.config import _Config, _require, opt

SOLVERS = ("cg", "explicit", "lissa")
TARGETS = ("train", "valid")

# Parameter blocks whose network above them is position-wise (only the last block's attention and feed-forward
# sit above them), so a block-level Hessian needs only the cached inputs of the layer, never the attention again.
# Defined here, without torch, so that the CLI and the DAGs can name them; ``surrogate.model`` imports them.
BLOCKS = {
    "attn_out": "attention output projection of the last block (the paper's block)",
    "ffn_in": "first feed-forward layer of the last block",
    "ffn_out": "second feed-forward layer of the last block",
}


@dataclass(frozen=True)
class InfluenceConfig(_Config):
    """``influence``: I(s) = grad L(s)^T (H + damping I)^-1 v over one Linear block of the surrogate."""

    target: str = opt(
        "valid",
        "what v is the gradient of: valid (the validation samples' loss, their sequences one item further: two "
        "retrained 4-surrogate ensembles rank Games at Spearman 0.93) or train (the paper's: the training samples' "
        "empirical risk, whose mean gradient is nearly 0 at a trained surrogate: 0.50)",
    )
    block: str = opt("attn_out", f"parameter block (its Linear weight): {', '.join(sorted(BLOCKS))}")
    negatives: int = opt(4096, "K: one fixed, seeded set of negative items shared by every sample")
    neg_seed: int = opt(0, "seed of the negative set (a score depends only on the sample and this seed)")
    exact_head: int = opt(0, "with stratified sampling: the most popular items always in the set, weighted")
    negative_sampling: str = opt(
        "stratified", "how the K negatives are drawn: stratified (systematic over items by popularity) or uniform"
    )
    damping: float = opt(0.25, "damping of (H + damping I); 0.25 is the paper's effective LiSSA damping")
    solver: str = opt("cg", f"how to solve (H + damping I) x = v: {', '.join(SOLVERS)}")
    hvp_samples: int = opt(4096, "training samples in the Hessian (seeded subsample; 0 = all)")
    hvp_seed: int = opt(0, "seed of the Hessian subsample and of LiSSA's draws")
    hvp_negatives: int = opt(1024, "negatives in the Hessian's loss (0 = the same K as the scores)")
    cg_tol: float = opt(1e-4, "CG stops when ||residual|| <= cg_tol * ||v||")
    cg_max_iter: int = opt(200, "CG iteration limit")
    lissa_depth: int = opt(5000, "LiSSA recursion depth (paper: 5000)")
    lissa_damp: float = opt(0.01, "LiSSA damping d (paper: 0.01); effective damping is d * scale")
    lissa_scale: float = opt(25.0, "LiSSA scale (paper: 25)")
    lissa_batch: int = opt(1, "samples per LiSSA step (paper: 1)")
    spill: bool = opt(True, "keep per-position (g, a) in temporary files so scoring needs no second pass")
    batch_size: int = opt(512, "samples per batch in the gradient and scoring passes (bounds memory)")
    hvp_chunk: int = opt(16384, "positions per chunk in a Hessian-vector product (bounds memory)")
    hvp_memory_mb: int = opt(
        1024,
        "memory budget (MiB) of one batched Hessian-vector product of the explicit Hessian (solver explicit, and "
        "CG's fallback on negative curvature): sets how many basis columns go through one product (and fewer "
        "positions per chunk when even one column would not fit); H itself (P x P) comes on top",
    )
    dtype: str = opt("float32", "float32 or float64")
    threads: int = opt(0, "torch intra-op threads; 0 keeps torch's default")

    def validate(self) -> None:
        _require(self.target in TARGETS, f"target={self.target!r}: choose one of {TARGETS}")
        _require(self.block in BLOCKS, f"block={self.block!r}: choose one of {sorted(BLOCKS)}")
        _require(self.negatives >= 1, f"negatives={self.negatives}: must be >= 1")
        _require(self.exact_head >= 0, f"exact_head={self.exact_head}: must be >= 0 (at most negatives - 1 are used)")
        _require(
            self.negative_sampling in ("stratified", "uniform"),
            f"negative_sampling={self.negative_sampling!r}: stratified or uniform",
        )
        _require(
            0 <= self.damping < math.inf,
            f"damping={self.damping}: must be finite and >= 0 (an infinite damping makes u = 0 / inf: NaN scores)",
        )
        _require(self.solver in SOLVERS, f"solver={self.solver!r}: choose one of {SOLVERS}")
        _require(self.hvp_samples >= 0, f"hvp_samples={self.hvp_samples}: must be >= 0")
        _require(self.hvp_negatives >= 0, f"hvp_negatives={self.hvp_negatives}: must be >= 0")
        _require(0 < self.cg_tol < math.inf, f"cg_tol={self.cg_tol}: must be finite and > 0")
        _require(self.cg_max_iter >= 1, f"cg_max_iter={self.cg_max_iter}: must be >= 1")
        _require(self.lissa_depth >= 1, f"lissa_depth={self.lissa_depth}: must be >= 1")
        _require(0 <= self.lissa_damp < 1, f"lissa_damp={self.lissa_damp}: must be in [0, 1)")
        _require(0 < self.lissa_scale < math.inf, f"lissa_scale={self.lissa_scale}: must be finite and > 0")
        _require(self.lissa_batch >= 1, f"lissa_batch={self.lissa_batch}: must be >= 1")
        _require(self.batch_size >= 1, f"batch_size={self.batch_size}: must be >= 1")
        _require(self.hvp_chunk >= 1, f"hvp_chunk={self.hvp_chunk}: must be >= 1")
        _require(self.hvp_memory_mb >= 1, f"hvp_memory_mb={self.hvp_memory_mb}: must be >= 1 (MiB)")
        _require(self.dtype in ("float32", "float64"), f"dtype={self.dtype!r}: float32 or float64")
        _require(self.threads >= 0, f"threads={self.threads}: must be >= 0")

    @property
    def effective_damping(self) -> float:
        """The damping actually solved with: LiSSA's fixed point is (H + d * scale I)^-1 v."""
        return self.lissa_damp * self.lissa_scale if self.solver == "lissa" else self.damping
