"""Influence scores I(s) = grad L(s)^T (H + damping I)^-1 v over one Linear block of the surrogate.

v is the mean per-sample gradient and H the Hessian of the mean training loss, both restricted to the block's
weight W [out, in]. L(s) is the scoring loss: the mean over the sample's positions of the BCE with the
expectation over negatives, estimated on one fixed seeded set of K items (``bce_expected``), so a score depends
only on the sample and the seed.

Why it is fast (the paper loops sample by sample through the whole network):

- The block is a Linear layer z_t = W a_t + b, so grad_W L(s) = sum_t g_t a_t^T with g_t = dL(s)/dz_t. One
  forward and one backward *to the block output* give g and a for a whole batch (samples are independent),
  and the score is sum_t g_t^T U a_t with U = (H + damping I)^-1 v: per-sample gradients are never formed.
- The network below the block runs without a graph; above it (the last block's residual, feed-forward and
  LayerNorm, then the item scores) everything is position-wise, so a position's loss is a function of
  (z_t, r_t) alone. Hessian-vector products therefore run on cached (a_t, r_t) of a subsample, never through
  the attention again.
- Batches are length-bucketed and only real positions reach the K-negative head.

Default solve: conjugate gradient on HVPs over a seeded subsample of 4096 training samples (``hvp_samples``).
Measured on Games (trained surrogate, damping 0.25): CG reaches a relative residual of 1e-4 in 3-4 HVPs,
because H is small next to the damping; an explicit 4096 x 4096 Hessian costs 4096 HVPs, and LiSSA 5000
single-sample steps, so CG wins by far. ``explicit`` stays for small blocks and tests, ``lissa`` for parity.

Memory: the pass for v also writes each scored position's (g_t, a_t) to temporary files (``spill``, disk grows
with the samples, RAM stays one batch), so the scores need no second pass; ``spill=False`` recomputes them in a
second pass instead. The Hessian cache holds only the subsample's positions.

Target (``cfg.target``): the paper's v is the mean gradient of the training risk, which is nearly 0 at a trained
surrogate (Games: norm 0.008-0.012 against 0.08-0.12 for the validation rows; bench/results/influence_target.json)
and points wherever early stopping left it, so two retrained surrogates rank the samples at Spearman 0.12-0.65.
The default v is the mean gradient of the validation rows (each user's training sequence one item further):
0.64-0.82 between single surrogates.
Ensembles: the pipeline scores every member of an ensemble of surrogates and ``combine_members`` averages their
scores (TRAK / TracIn-style), each member first divided by its root-mean-square over the training samples; two
4-member ensembles agree at 0.93 (``bench/results/coreset_quality_cold_valid4.json``).
"""

from __future__ import annotations

import contextlib
import copy
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dealrec_tasks.errors import DegenerateError, InputError
from dealrec_tasks.finite import check_finite
from dealrec_tasks.progress import progress
from dealrec_tasks.scoring.config import InfluenceConfig
from dealrec_tasks.sharding import shard_rows
from dealrec_tasks.surrogate.batching import Batch, Seqs, length_batches, n_positions, train_batch
from dealrec_tasks.surrogate.model import Negatives, SASRec, WeightedNegatives, bce_expected, bce_expected_grad

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def negative_set(
    n_items: int, k: int, seed: int, popularity: np.ndarray | None = None, exact_head: int = 0
) -> Negatives:
    """K distinct negative items whose (weighted) mean estimates the uniform expectation over the catalogue
    without bias (all items when K >= n_items).

    - no ``popularity``: a simple random draw, plain mean;
    - ``popularity`` [n_items]: systematic over the items sorted by popularity (a seeded offset, then every
      n/K-th item), so the head and the tail are always covered alike; plain mean (equal inclusion);
    - and ``exact_head`` M > 0: the M most popular items always (weight 1), the rest systematic over the tail
      with Horvitz-Thompson weights. Item scores, and with them the loss's terms, are largest for popular
      items, so computing those exactly removes most of the seed-to-seed variance.
    """
    if k >= n_items:
        return torch.arange(1, n_items + 1)
    if popularity is None:
        gen = torch.Generator().manual_seed(seed)
        return (torch.randperm(n_items, generator=gen)[:k] + 1).sort().values
    order = np.argsort(-np.asarray(popularity, dtype=np.float64), kind="stable")  # most popular first
    head = min(max(exact_head, 0), k - 1)
    tail, k_tail = order[head:], k - head
    step = len(tail) / k_tail
    offset = np.random.default_rng(seed).uniform(0.0, step)
    picks = tail[np.floor(offset + step * np.arange(k_tail)).astype(np.int64)]  # distinct: step > 1
    if head == 0:
        return torch.from_numpy(np.sort(picks + 1))
    items = np.concatenate([order[:head], picks]) + 1
    inverse_p = np.concatenate([np.ones(head), np.full(k_tail, step)])  # 1 / inclusion probability
    sort = np.argsort(items)
    weights = torch.from_numpy(inverse_p[sort] / (n_items - 1))
    return WeightedNegatives(torch.from_numpy(items[sort]), weights, 1.0 / (n_items - 1))


def item_popularity(seqs: Seqs, n_items: int) -> np.ndarray:
    """Occurrences of every item 1..n_items in the training rows (histories and targets)."""
    tokens = seqs.tokens[(seqs.tokens >= 1) & (seqs.tokens <= n_items)]
    return np.bincount(tokens, minlength=n_items + 1)[1:].astype(np.float64)


def subsample_rows(n_rows: int, size: int, seed: int) -> np.ndarray:
    """A seeded subset of row indices (sorted); all rows when ``size`` is 0 or >= n_rows."""
    if size == 0 or size >= n_rows:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size, replace=False))


@contextlib.contextmanager
def frozen(model: SASRec) -> Iterator[SASRec]:
    """Eval mode and no parameter gradients (only the block output is differentiated); restored afterwards."""
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    model.eval().requires_grad_(False)
    try:
        yield model
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        model.train(was_training)


@dataclass
class Positions:
    """Packed real positions of some samples: the block's input, the residual, the target, the sample."""

    a: Tensor  # [N, in]
    r: Tensor  # [N, H]
    targets: Tensor  # [N]
    sample: Tensor  # [N] index of the sample (0..n_samples-1, local to this object)
    inv_len: Tensor  # [N] 1 / positions of the sample
    n_samples: int

    def select(self, keep: Tensor, new_index: Tensor, n_samples: int) -> Positions:
        """The positions where ``keep`` [N] holds, samples renumbered by ``new_index`` [old samples]."""
        return Positions(
            self.a[keep], self.r[keep], self.targets[keep], new_index[self.sample[keep]], self.inv_len[keep], n_samples
        )


class BlockProblem:
    """The scoring loss of a trained surrogate seen as a function of one Linear block's weight."""

    def __init__(self, model: SASRec, block: str, negatives: Negatives):
        self.model = model
        self.block = block
        self.layer = model.block_linear(block)
        self.tail = model.block_tail(block)
        self.negatives = negatives
        self.max_len = model.max_len

    @property
    def weight(self) -> Tensor:
        return self.layer.weight.detach()  # [out, in]

    def positions(self, batch: Batch) -> Positions:
        """Block inputs at the batch's real positions; the network below the block runs without a graph."""
        with torch.no_grad():
            io = self.model.block_io(batch.inputs, self.block)
        dtype = io.a.dtype
        return Positions(
            io.a[batch.real], io.r[batch.real], batch.targets, batch.sample, batch.weight.to(dtype), batch.size
        )

    def losses(self, z: Tensor, p: Positions) -> Tensor:
        """Per-position loss [N] from the block output z [N, out]."""
        h = self.tail(z, p.r)  # [N, H]
        return bce_expected(h, p.targets, self.negatives, self.model.item_weights())

    def output_grads(self, p: Positions) -> Tensor:
        """g [N, out] = d(sum_s L(s))/dz: position t's part of its own sample's gradient.

        The head's gradient dL/dh comes in closed form (``bce_expected_grad``); autograd only runs the small
        position-wise tail between z and h.
        """
        z = F.linear(p.a, self.weight, self.layer.bias).requires_grad_(True)
        h = self.tail(z, p.r)  # [N, H]
        dh = bce_expected_grad(h.detach(), p.targets, self.negatives, self.model.item_weights())  # [N, H]
        (g,) = torch.autograd.grad(h, z, grad_outputs=dh * p.inv_len[:, None])
        return g

    def hvp(self, p: Positions, sample_weight: Tensor, vec: Tensor, chunk: int) -> Tensor:
        """sum_s w_s (d^2 L(s) / dW^2) vec, over the samples of ``p``; ``vec`` [out, in] or [M, out, in]."""
        batched = vec.dim() == 3
        out = torch.zeros_like(vec)
        w_pos = p.inv_len * sample_weight[p.sample]  # [N]
        for i in range(0, len(p.targets), chunk):
            sl = slice(i, i + chunk)
            part = Positions(p.a[sl], p.r[sl], p.targets[sl], p.sample[sl], p.inv_len[sl], p.n_samples)
            w = self.weight.clone().requires_grad_(True)
            with torch.enable_grad():
                z = F.linear(part.a, w, self.layer.bias)
                loss = (self.losses(z, part) * w_pos[sl]).sum()
                (gw,) = torch.autograd.grad(loss, w, create_graph=True)
                (hv,) = torch.autograd.grad(gw, w, grad_outputs=vec, is_grads_batched=batched)
            out += hv
        return out


# ---------------------------------------------------------------------------------------------------------
# Pass 1: mean gradient (and the Hessian cache)
# ---------------------------------------------------------------------------------------------------------
def batches(seqs: Seqs, rows: np.ndarray, batch_size: int, max_len: int) -> list[np.ndarray]:
    """Length-bucketed batches of ``rows`` (deterministic)."""
    lens = n_positions(seqs, max_len)[rows]
    return [rows[b] for b in length_batches(lens, batch_size)]


class Spill:
    """Per-position (g_t, a_t) of some rows in temporary files: RAM stays one batch, disk grows with the rows.

    With them, the score sum_t g_t^T U a_t needs no second pass through the network once U is known (float32
    Games: 49k samples, 294k positions, 150 MB on disk). ``close()`` removes the files.
    """

    def __init__(self, seqs: Seqs, rows: np.ndarray, width: tuple[int, int], dtype: torch.dtype, max_len: int):
        self.rows = np.asarray(rows)
        total = int(n_positions(seqs, max_len)[self.rows].sum())
        self._dir = tempfile.TemporaryDirectory(prefix="dealrec-influence-")
        np_dtype = np.float64 if dtype == torch.float64 else np.float32
        self.g = np.lib.format.open_memmap(f"{self._dir.name}/g.npy", "w+", np_dtype, (total, width[0]))
        self.a = np.lib.format.open_memmap(f"{self._dir.name}/a.npy", "w+", np_dtype, (total, width[1]))
        self.index = np.lib.format.open_memmap(f"{self._dir.name}/index.npy", "w+", np.int64, (total,))
        self.local = np.full(len(seqs), -1, dtype=np.int64)
        self.local[self.rows] = np.arange(len(self.rows))
        self.cursor = 0

    def add(self, rows: np.ndarray, p: Positions, g: Tensor) -> None:
        local = torch.from_numpy(self.local[rows])[p.sample]  # [N] index in self.rows, or -1
        keep = local >= 0
        n = int(keep.sum())
        if n:
            end = self.cursor + n
            self.g[self.cursor : end] = g[keep].numpy()
            self.a[self.cursor : end] = p.a[keep].numpy()
            self.index[self.cursor : end] = local[keep].numpy()
            self.cursor = end

    def scores(self, u: Tensor, chunk: int = 65536) -> np.ndarray:
        """sum_t g_t^T U a_t per row of ``self.rows`` (in that order)."""
        out = torch.zeros(len(self.rows), dtype=torch.float64)
        for i in range(0, self.cursor, chunk):
            g = torch.from_numpy(np.asarray(self.g[i : i + chunk]))
            a = torch.from_numpy(np.asarray(self.a[i : i + chunk]))
            per_pos = ((g @ u.to(g.dtype)) * a).sum(-1)  # [c]
            out.index_add_(0, torch.from_numpy(np.asarray(self.index[i : i + chunk])), per_pos.double())
        return out.numpy()

    def close(self) -> None:
        del self.g, self.a, self.index
        self._dir.cleanup()


def mean_gradient(
    problem: BlockProblem,
    seqs: Seqs,
    batch_size: int,
    cache_rows: np.ndarray | None = None,
    spill: Spill | None = None,
) -> tuple[Tensor, Positions | None]:
    """v = mean over all rows of grad_W L(s) [out, in]; also the positions of ``cache_rows`` (for HVPs).

    Cached samples are numbered by their order in ``cache_rows``. With ``spill``, the (g, a) of its rows go
    to disk on the way.
    """
    v = torch.zeros_like(problem.weight)
    want = np.full(len(seqs), -1, dtype=np.int64)
    if cache_rows is not None:
        want[cache_rows] = np.arange(len(cache_rows))
    parts: list[Positions] = []
    all_rows = np.arange(len(seqs))
    for rows in progress(batches(seqs, all_rows, batch_size, problem.max_len), desc="mean gradient", unit="batch"):
        p = problem.positions(train_batch(seqs, rows, problem.max_len))
        g = problem.output_grads(p)  # [N, out]
        v += g.T @ p.a  # sum over samples of sum_t g_t a_t^T
        if spill is not None:
            spill.add(rows, p, g)
        local = torch.from_numpy(want[rows])  # [B] cache index or -1
        keep = local[p.sample] >= 0
        if bool(keep.any()):
            parts.append(p.select(keep, local, len(cache_rows)))  # type: ignore[arg-type]
    v /= len(seqs)
    if cache_rows is None or not parts:
        return v, None
    cache = Positions(
        torch.cat([p.a for p in parts]),
        torch.cat([p.r for p in parts]),
        torch.cat([p.targets for p in parts]),
        torch.cat([p.sample for p in parts]),  # already numbered by position in cache_rows
        torch.cat([p.inv_len for p in parts]),
        len(cache_rows),
    )
    return v, cache


# ---------------------------------------------------------------------------------------------------------
# Solvers of (H + damping I) x = v
# ---------------------------------------------------------------------------------------------------------
@dataclass
class SolveInfo:
    solver: str
    damping: float
    iterations: int = 0
    rel_residual: float | None = None
    hvps: int = 0
    hvp_samples: int = 0
    min_eig: float | None = None
    max_eig: float | None = None
    residuals: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "residuals"}
        d["residuals"] = [float(f"{r:.3e}") for r in self.residuals]
        return d


class NonPositiveCurvature(ValueError):
    """CG met a direction p with p^T A p <= 0: A = H + damping I is not positive definite (H is indefinite)."""


def psd_solve(h: Tensor, v: Tensor, damping: float, info: SolveInfo) -> Tensor:
    """(H+ + damping I)^-1 v with H+ the projection of the symmetric H onto the PSD cone (negative eigenvalues set
    to 0): the usual remedy when the Hessian of a non-convex loss is indefinite beyond the damping (small data,
    an early surrogate), where CG and the plain inverse are meaningless."""
    eig, vecs = torch.linalg.eigh(h)
    info.min_eig, info.max_eig = float(eig[0]), float(eig[-1])
    coef = (vecs.T @ v.reshape(-1)) / (eig.clamp_min(0) + damping)
    return (vecs @ coef).view_as(v)


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor], b: Tensor, tol: float, max_iter: int, info: SolveInfo
) -> Tensor:
    """Solve A x = b for symmetric positive definite A given as ``matvec`` (x0 = 0)."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = float((r * r).sum())
    b_norm = rs**0.5
    info.residuals = [1.0]
    for it in range(1, max_iter + 1):
        ap = matvec(p)
        info.hvps += 1
        curv = float((p * ap).sum())
        if not math.isfinite(curv):  # NaN would run every iteration to a NaN u
            raise DegenerateError(
                f"influence solve (solver cg): curvature p^T (H + damping I) p = {curv} at iteration {it} is not "
                "finite; use a finite, moderate damping (the paper's effective value: 0.25)"
            )
        if curv <= 0:
            raise NonPositiveCurvature(
                f"CG: non-positive curvature {curv:.3e} at iteration {it}; H + damping I is not positive definite, "
                "raise the damping"
            )
        alpha = rs / curv
        x += alpha * p
        r -= alpha * ap
        rs_new = float((r * r).sum())
        info.iterations = it
        info.residuals.append(rs_new**0.5 / b_norm)
        if rs_new**0.5 <= tol * b_norm:
            break
        p = r + (rs_new / rs) * p
        rs = rs_new
    info.rel_residual = info.residuals[-1]
    return x


# Bytes per position per HVP column, in units of the dtype's size: the batched double backward keeps about 6
# [M, c, K] tensors of the K-negative head and a few [M, c, width] ones of the tail. Measured on CPU (peak RSS, c =
# 16384, float32, hidden 64): 6320 (K 1024), 1740-2340 (K 256), 854 (K 64); this bound is 7296, 2688, 1536 there.
HVP_PER_NEGATIVE = 6
HVP_PER_WIDTH = 6


def hvp_column_bytes(problem: BlockProblem, positions: int) -> int:
    """Upper bound on the memory one basis column adds to a batched HVP over ``positions`` positions per chunk
    (the product's unbatched part, its first-order graph, costs about as much again)."""
    out, in_ = problem.weight.shape
    per_position = HVP_PER_NEGATIVE * len(problem.negatives) + HVP_PER_WIDTH * (problem.model.hidden + out + in_)
    return problem.weight.element_size() * (positions * per_position + 4 * out * in_)  # + vec, basis, hv, out


def columns_per_hvp(budget_bytes: int, bytes_per_column: int) -> int:
    """Basis columns one batched HVP may carry: the budget holds the columns plus one column's worth for the
    unbatched part; at least 1 (``hvp_plan`` shrinks the positions per chunk until one column fits)."""
    return max(1, budget_bytes // bytes_per_column - 1)


def hvp_plan(problem: BlockProblem, cache: Positions, chunk: int, budget_bytes: int) -> tuple[int, int]:
    """(positions per chunk, columns per batched HVP) of the explicit Hessian within ``budget_bytes``.

    Why: a column's memory grows with the positions per chunk (min(chunk, cached positions)) times the head's K, so a
    fixed column count (256 before: about 110 GB on Games) follows the subsample size, not the machine.
    """
    positions = max(1, min(chunk, len(cache.targets)))
    while positions > 1 and 2 * hvp_column_bytes(problem, positions) > budget_bytes:
        positions = max(1, positions // 2)
    return positions, columns_per_hvp(budget_bytes, hvp_column_bytes(problem, positions))


def explicit_hessian(problem: BlockProblem, cache: Positions, chunk: int, budget_bytes: int) -> Tensor:
    """H [P, P] (P = out * in) of the mean loss over the cached samples, from batched HVPs on basis vectors.

    ``budget_bytes`` bounds each batched HVP (``hvp_plan``); H and its symmetrisation (2 P^2 values) come on top.
    """
    shape = problem.weight.shape
    n = shape[0] * shape[1]
    positions, columns = hvp_plan(problem, cache, chunk, budget_bytes)
    dtype = cache.a.dtype
    sw = torch.full((cache.n_samples,), 1.0 / cache.n_samples, dtype=dtype)
    h = torch.empty(n, n, dtype=dtype)
    for i in progress(range(0, n, columns), desc="explicit Hessian", unit="hvp"):
        m = min(columns, n - i)
        basis = torch.zeros(m, n, dtype=dtype)  # [m, P] rows i..i+m-1 of the identity
        basis[torch.arange(m), torch.arange(i, i + m)] = 1
        h[i : i + m] = problem.hvp(cache, sw, basis.view(m, *shape), positions).view(m, n)
    return (h + h.T).mul_(0.5)


def lissa(
    problem: BlockProblem, cache: Positions, draws: Tensor, v: Tensor, cfg: InfluenceConfig, info: SolveInfo
) -> Tensor:
    """The paper's recursion h <- v + (1 - d) h - H_j h / scale, H_j on the samples drawn for step j.

    Its fixed point is scale * (H + d * scale I)^-1 v; returned divided by scale, so it estimates the same x
    as the other solvers with damping d * scale (0.25 with the paper's settings).
    """
    # Positions of each cached sample, to gather a step's samples fast.
    order = torch.argsort(cache.sample, stable=True)
    counts = torch.bincount(cache.sample, minlength=cache.n_samples)
    starts = torch.cumsum(counts, 0) - counts
    h = v.clone()
    for step in progress(range(cfg.lissa_depth), desc="LiSSA", unit="step"):
        uniq, mult = draws[step].unique(return_counts=True)  # a sample drawn twice counts twice
        idx = torch.cat([order[starts[s] : starts[s] + counts[s]] for s in uniq.tolist()])
        part = Positions(
            cache.a[idx],
            cache.r[idx],
            cache.targets[idx],
            torch.searchsorted(uniq, cache.sample[idx]),
            cache.inv_len[idx],
            len(uniq),
        )
        hv = problem.hvp(part, mult.to(v.dtype) / draws.shape[1], h, cfg.hvp_chunk)
        h = v + (1 - cfg.lissa_damp) * h - hv / cfg.lissa_scale
        info.hvps += 1
    info.iterations = cfg.lissa_depth
    return h / cfg.lissa_scale


@dataclass
class Solution:
    """v, u = (H + damping I)^-1 v, and how they were obtained."""

    v: Tensor  # [out, in]
    u: Tensor  # [out, in]
    info: SolveInfo
    timings: dict[str, float]
    negatives: Negatives  # [K]


def solve(
    model: SASRec, seqs: Seqs, cfg: InfluenceConfig, spill: Spill | None = None, target: Seqs | None = None
) -> Solution:
    """Pass 1 over every training row (v, Hessian cache, optional spill), then the solve of ``cfg.solver``.

    ``cfg.target="valid"``: v is instead the mean gradient of ``target`` (the validation rows as sequences), one more
    pass over those rows; H stays the training loss's Hessian.
    """
    if cfg.target == "valid" and (target is None or len(target) == 0):
        raise InputError("influence target='valid': no validation samples to take the gradient of")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    popularity = item_popularity(seqs, model.n_items) if cfg.negative_sampling == "stratified" else None
    negatives = negative_set(model.n_items, cfg.negatives, cfg.neg_seed, popularity, cfg.exact_head)
    n = len(seqs)
    rng = np.random.default_rng(cfg.hvp_seed)
    if cfg.solver == "lissa":
        draws_rows = rng.integers(0, n, size=(cfg.lissa_depth, cfg.lissa_batch))
        cache_rows, draws = np.unique(draws_rows, return_inverse=True)
        draws = torch.from_numpy(draws.reshape(draws_rows.shape))
    else:
        cache_rows = subsample_rows(n, cfg.hvp_samples, cfg.hvp_seed)
    timings: dict[str, float] = {}
    with frozen(model):
        problem = BlockProblem(model, cfg.block, negatives)
        t0 = time.perf_counter()
        v, cache = mean_gradient(problem, seqs, cfg.batch_size, cache_rows, spill)
        timings["mean_gradient_s"] = time.perf_counter() - t0
        assert cache is not None
        if cfg.target == "valid":
            t0 = time.perf_counter()
            v, _ = mean_gradient(problem, target, cfg.batch_size)  # type: ignore[arg-type]
            timings["target_gradient_s"] = time.perf_counter() - t0
        check_finite(v, f"influence solve: v (the mean gradient of the {cfg.target} rows)", "retrain the surrogate")
        info = SolveInfo(cfg.solver, cfg.effective_damping, hvp_samples=len(cache_rows))
        t0 = time.perf_counter()
        if cfg.hvp_negatives and cfg.hvp_negatives < len(negatives):
            # The Hessian's expectation over negatives on a smaller stratified set: H is small next to the
            # damping, so its estimate moves u little, while the head's cost is linear in the set's size.
            head = cfg.exact_head * cfg.hvp_negatives // cfg.negatives
            hvp_negs = negative_set(model.n_items, cfg.hvp_negatives, cfg.neg_seed, popularity, head)
            problem = BlockProblem(model, cfg.block, hvp_negs)
        if cfg.solver == "lissa":
            u = lissa(problem, cache, draws, v, cfg, info)
        else:
            sw = torch.full((cache.n_samples,), 1.0 / cache.n_samples, dtype=v.dtype)
            if cfg.solver == "explicit":
                h = explicit_hessian(problem, cache, cfg.hvp_chunk, cfg.hvp_memory_mb * 2**20)
                info.hvps = h.shape[0]
                eig = torch.linalg.eigvalsh(h)
                info.min_eig, info.max_eig = float(eig[0]), float(eig[-1])
                a = h + cfg.damping * torch.eye(h.shape[0], dtype=h.dtype)
                u = torch.linalg.solve(a, v.reshape(-1)).view_as(v)
                info.rel_residual = float((a @ u.reshape(-1) - v.reshape(-1)).norm() / v.norm())
            else:

                def matvec(x: Tensor) -> Tensor:
                    return problem.hvp(cache, sw, x, cfg.hvp_chunk) + cfg.damping * x

                try:
                    u = conjugate_gradient(matvec, v, cfg.cg_tol, cfg.cg_max_iter, info)
                except NonPositiveCurvature:
                    # Indefinite beyond the damping: build H once (P HVPs) and solve on its PSD part.
                    h = explicit_hessian(problem, cache, cfg.hvp_chunk, cfg.hvp_memory_mb * 2**20)
                    info.solver, info.hvps = "cg->psd_explicit", info.hvps + h.shape[0]
                    u = psd_solve(h, v, cfg.damping, info)
                    info.rel_residual = None
        info.seconds = timings["solve_s"] = time.perf_counter() - t0
    _check_solution(u, info)
    return Solution(v, u, info, timings, negatives)


def _check_solution(u: Tensor, info: SolveInfo) -> None:
    """Refuse a solve whose u or residual is not finite (every score would be NaN), naming solver and damping."""
    what = f"influence solve (solver {info.solver}, damping={info.damping})"
    remedy = "use a finite, moderate damping (the paper's effective value: 0.25)"
    if info.rel_residual is not None and not math.isfinite(info.rel_residual):
        raise DegenerateError(f"{what}: residual ||(H + damping I) u - v|| / ||v|| is {info.rel_residual}; {remedy}")
    check_finite(u, f"{what}: u", remedy)


# ---------------------------------------------------------------------------------------------------------
# Pass 2: scores
# ---------------------------------------------------------------------------------------------------------
def score_rows(
    model: SASRec, seqs: Seqs, u: Tensor, negatives: Negatives, cfg: InfluenceConfig, rows: np.ndarray | None = None
) -> np.ndarray:
    """I(s) = sum_t g_t^T U a_t for ``rows`` (default all), in the order of ``rows``. Memory: one batch.

    ``cfg.threads`` applies here too (a shard with a published solve never runs ``solve``, which set it)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rows = np.arange(len(seqs)) if rows is None else np.asarray(rows)
    out = np.zeros(len(seqs), dtype=np.float64)
    with frozen(model):
        problem = BlockProblem(model, cfg.block, negatives)
        for b in progress(batches(seqs, rows, cfg.batch_size, model.max_len), desc="influence scores", unit="batch"):
            p = problem.positions(train_batch(seqs, b, model.max_len))
            g = problem.output_grads(p)  # [N, out]
            per_pos = ((g @ u) * p.a).sum(-1)  # [N] g_t^T U a_t
            s = torch.zeros(p.n_samples, dtype=per_pos.dtype).index_add_(0, p.sample, per_pos)
            out[b] = s.double().numpy()
    return out[rows]


def combine_members(scores: list[np.ndarray], names: list[str] | None = None) -> np.ndarray:
    """The ensemble's influence [n]: each member's scores [n] divided by their root-mean-square over the samples,
    then the mean over members.

    Why this normalisation: members trained with different seeds put their scores on different scales (the
    gradients' size and the conditioning of H + damping I differ), so a plain mean would let the member with the
    largest scores decide the ranking alone. Dividing by a positive number keeps each member's ranking, and the RMS
    is not centred, so every score's sign (helpful vs harmful) is kept and 0 stays 0. A member whose
    scores are all 0 contributes 0. The RMS needs every training row: combine after the shards are merged. With one
    member the result is its scores divided by their RMS (the scale of ``influence`` is thus about 1; selection
    min-max normalises anyway).

    A member with a NaN or infinite score is refused (``DegenerateError`` naming it: ``names[i]``, else its index):
    its RMS would be NaN, and dividing by it used to turn the member into zeros, so the coreset came from effort
    alone without a word.
    """
    if not scores:
        raise ValueError("combine_members: no member scores")
    stacked = np.stack([np.asarray(s, dtype=np.float64) for s in scores])  # [M, n]; ValueError if lengths differ
    if stacked.ndim != 2:
        raise ValueError(f"combine_members: expected M vectors of n scores, got shape {stacked.shape}")
    for i, member in enumerate(stacked):
        name = names[i] if names is not None else f"member {i}"
        check_finite(member, f"influence of {name}", "retrain the surrogate (lower --lr) and rescore")
    if stacked.shape[1] == 0:
        return np.zeros(0, dtype=np.float64)
    rms = np.sqrt(np.mean(np.square(stacked), axis=1, keepdims=True))  # [M, 1]
    scaled = np.divide(stacked, rms, out=np.zeros_like(stacked), where=rms > 0)  # [M, n]
    return scaled.mean(axis=0)


def per_sample_grads(problem: BlockProblem, seqs: Seqs, rows: np.ndarray) -> Tensor:
    """grad_W L(s) [B, out, in] of ``rows`` in one batch, by the Linear identity (for tests and small sets)."""
    p = problem.positions(train_batch(seqs, rows, problem.max_len))
    g = problem.output_grads(p)
    outer = g[:, :, None] * p.a[:, None, :]  # [N, out, in]
    return torch.zeros(p.n_samples, *outer.shape[1:], dtype=outer.dtype).index_add_(0, p.sample, outer)


def to_dtype(model: SASRec, cfg: InfluenceConfig) -> SASRec:
    """The model in the configured precision (a copy when it changes)."""
    dtype = DTYPES[cfg.dtype]
    if model.item_emb.weight.dtype == dtype:
        return model
    return copy.deepcopy(model).to(dtype)


@dataclass
class InfluenceResult:
    sample_id: np.ndarray  # [n] int64
    influence: np.ndarray  # [n] float64
    solution: Solution
    timings: dict[str, float]


def influence(
    model: SASRec, seqs: Seqs, cfg: InfluenceConfig, shard: tuple[int, int] = (0, 1), target: Seqs | None = None
) -> InfluenceResult:
    """Solve, then score the rows of ``shard`` (the solve always uses every row, so shards agree). ``target``: the
    validation rows, needed when ``cfg.target="valid"``.

    ``cfg.spill``: the shard's (g, a) are kept on disk during the solve's pass, so scoring costs no second pass.
    Otherwise a second pass recomputes them (RAM and disk both bounded by one batch).
    """
    model = to_dtype(model, cfg)
    rows = shard_rows(len(seqs), shard)
    shape = tuple(model.block_linear(cfg.block).weight.shape)
    spill = Spill(seqs, rows, shape, DTYPES[cfg.dtype], model.max_len) if cfg.spill else None
    try:
        sol = solve(model, seqs, cfg, spill, target)
        t0 = time.perf_counter()
        scores = spill.scores(sol.u) if spill else score_rows(model, seqs, sol.u, sol.negatives, cfg, rows)
    finally:
        if spill is not None:
            spill.close()
    timings = dict(sol.timings, scores_s=time.perf_counter() - t0)
    return InfluenceResult(seqs.sample_id[rows], scores, sol, timings)


# ---------------------------------------------------------------------------------------------------------
# Naive reference of the paper's procedure (tests, benchmark): whole network, one sample at a time
# ---------------------------------------------------------------------------------------------------------
def _sample_loss(model: SASRec, seqs: Seqs, rows: np.ndarray, negatives: Negatives, pad_to: int | None) -> Tensor:
    """sum over ``rows`` of L(s), through the whole network (inputs left-padded to ``pad_to`` if given)."""
    batch = train_batch(seqs, rows, model.max_len)
    x = batch.inputs
    if pad_to is not None and x.shape[1] < pad_to:
        x = F.pad(x, (pad_to - x.shape[1], 0))
    h = model(x)[x != 0]  # [N, H]
    dtype = h.dtype
    return (bce_expected(h, batch.targets, negatives, model.item_weights()) * batch.weight.to(dtype)).sum()


def reference_grad(
    model: SASRec, seqs: Seqs, rows: np.ndarray, block: str, negatives: Negatives, pad_to: int | None = None
) -> Tensor:
    """grad_W of sum_{rows} L(s) by plain autograd through the whole network."""
    w = model.block_linear(block).weight
    (g,) = torch.autograd.grad(_sample_loss(model, seqs, rows, negatives, pad_to), w)
    return g


def reference_hvp(
    model: SASRec,
    seqs: Seqs,
    rows: np.ndarray,
    block: str,
    negatives: Negatives,
    vec: Tensor,
    pad_to: int | None = None,
) -> Tensor:
    """(d^2 / dW^2 of mean_{rows} L(s)) vec by double backward through the whole network."""
    w = model.block_linear(block).weight
    (g,) = torch.autograd.grad(_sample_loss(model, seqs, rows, negatives, pad_to) / len(rows), w, create_graph=True)
    (hv,) = torch.autograd.grad(g, w, grad_outputs=vec)
    return hv


def reference_scores(
    model: SASRec, seqs: Seqs, rows: np.ndarray, block: str, negatives: Negatives, u: Tensor, pad_to: int | None = None
) -> np.ndarray:
    """One sample at a time: its gradient through the whole network, dotted with u (the paper's loop)."""
    out = np.zeros(len(rows))
    for i, row in enumerate(rows):
        g = reference_grad(model, seqs, np.asarray([row]), block, negatives, pad_to)
        out[i] = float((g * u).sum())
    return out
