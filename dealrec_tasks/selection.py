"""Coreset selection: normalisation, hard prune, coverage-enhanced stratified sampling, baseline selectors.

Pure numpy on score arrays, no IO and no model code (the GraNd / EL2N scores and the user representations of
the RecRanker-style selector are computed in ``dealrec_tasks.scoring.baselines``; the step wires them in).

DEALRec (DESIGN.md section 3): overall = minmax(influence) + lambda * minmax(effort); drop the top
floor(hard_prune * |D|) by overall score; cut [min, max] of the rest into k equal-width strata; visit the strata
from the smallest and take min(size, floor(m / strata_left)) at random from each, m -= taken.

Every selector is vectorised over the samples: the only Python loops run over the k strata (allocation) or the
k-means clusters.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dealrec_tasks.config import _Config, _require, opt
from dealrec_tasks.errors import ConfigError, InputError

# Linear blocks of the surrogate whose per-sample gradient norm GraNd can use (keys of surrogate.model.BLOCKS;
# repeated here so that this module does not import model code; a test keeps them equal).
GRAD_BLOCKS = ("attn_out", "ffn_in", "ffn_out")


# ---------------------------------------------------------------------------------------------------------
# Inputs and outputs
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Candidates:
    """Per-candidate inputs of the selectors, row i = candidate i; a selector uses only what it needs."""

    size: int
    influence: np.ndarray | None = None  # [N] float64
    effort: np.ndarray | None = None  # [N] float64
    grand: np.ndarray | None = None  # [N] per-sample gradient norm of the surrogate's loss
    el2n: np.ndarray | None = None  # [N] mean L2 norm of the surrogate's error
    user_repr: np.ndarray | None = None  # [N, H] user representation (RecRanker-style clustering)
    interactions: np.ndarray | None = None  # [N] interactions of the sample's user (history + target)

    def need(self, name: str) -> np.ndarray:
        value = getattr(self, name)
        if value is None:
            raise InputError(f"selection: the strategy needs the {name!r} scores of the candidates")
        if len(value) != self.size:
            raise InputError(f"selection: {name!r} has {len(value)} rows for {self.size} candidates")
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise InputError(f"selection: {name!r} has {int((~np.isfinite(value)).sum())} non-finite values")
        return value


@dataclass
class Groups:
    """How the budget was spread: strata of a score (``edges``) or clusters of users (no edges)."""

    kind: str  # "stratum" or "cluster"
    sizes: np.ndarray  # [k] candidates in each group (after the hard prune)
    budgets: np.ndarray  # [k] taken from each group
    order: np.ndarray  # [k] visiting order (stratified) or group ids (clusters)
    edges: np.ndarray | None = None  # [k + 1] stratum edges over [min, max] of the pruned scores
    pruned: int = 0  # candidates dropped by the hard prune
    prune_threshold: float | None = None  # lowest dropped score (None: nothing dropped)
    remainder: int = 0  # samples handed out after the floors (see ``allocate``)
    kept: np.ndarray | None = None  # [M] rows that entered the strata (None: every row)
    dropped: str = "top"  # which end the ``pruned`` rows came from: "top" (hard prune) or "low" (below the pool)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "sizes": self.sizes.tolist(),
            "budgets": self.budgets.tolist(),
            "visit_order": self.order.tolist(),
            "edges": None if self.edges is None else [float(e) for e in self.edges],
            "pruned": self.pruned,
            "prune_threshold": self.prune_threshold,
            "remainder": self.remainder,
            "dropped": self.dropped,
        }


@dataclass
class Selection:
    """The chosen candidate rows (ascending) and how they were chosen."""

    indices: np.ndarray  # [n] int64, ascending, distinct
    group: np.ndarray  # [n] int32 stratum / cluster of each chosen row, -1 when the strategy has none
    score: np.ndarray | None  # [N] the score the strategy ranked or stratified by (None: random)
    groups: Groups | None = None
    info: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------------------
def minmax(x: np.ndarray) -> np.ndarray:
    """(x - min) / (max - min) in float64; a constant vector maps to 0 (it carries no ranking)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x.copy()
    lo, hi = x.min(), x.max()
    if hi == lo:
        return np.zeros_like(x)
    return (x - lo) / (hi - lo)


def overall_score(influence: np.ndarray, effort: np.ndarray, lam: float) -> np.ndarray:
    """minmax(influence) + lam * minmax(effort) [N]."""
    return minmax(influence) + lam * minmax(effort)


# ---------------------------------------------------------------------------------------------------------
# Coverage-enhanced stratified sampling
# ---------------------------------------------------------------------------------------------------------
def top_rows(score: np.ndarray, m: int) -> np.ndarray:
    """Rows of the m highest scores, ascending (ties at the cut: lower row first). O(N): a partition, no sort."""
    n = len(score)
    if m <= 0:
        return np.zeros(0, dtype=np.int64)
    if m >= n:
        return np.arange(n)
    cut = np.partition(score, n - m)[n - m]  # the m-th highest score
    above = np.flatnonzero(score > cut)
    ties = np.flatnonzero(score == cut)[: m - len(above)]
    return np.sort(np.concatenate([above, ties]))


def hard_prune(score: np.ndarray, fraction: float) -> np.ndarray:
    """Rows kept (ascending) after dropping the top floor(fraction * N) by score (ties: lower row dropped first)."""
    keep = np.ones(len(score), dtype=bool)
    keep[top_rows(score, int(math.floor(fraction * len(score))))] = False
    return np.flatnonzero(keep)


def strata(score: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k equal-width strata over [min, max] of ``score``: edges [k + 1] and the stratum of each score [N].

    A score goes to the first stratum whose upper edge is >= it, as in the paper's code (edge i + 1 is
    min + (i + 1) * step, in float64); the maximum always lands in the last stratum (the paper's float32 edge can
    fall just below it and lose that sample).
    """
    lo, hi = float(score.min()), float(score.max())
    step = (hi - lo) / k
    edges = lo + step * np.arange(k + 1, dtype=np.float64)  # [k + 1]
    stratum = np.searchsorted(edges[1:], score, side="left")  # [N] first upper edge >= score
    edges[-1] = hi
    return edges, np.minimum(stratum, k - 1).astype(np.int64)


def allocate(sizes: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The paper's budgets: visit groups from the smallest (ties: lower group first), take
    min(size, floor(m / groups_left)), m -= taken. Returns budgets [k], visiting order [k] and the remainder.

    Remainder: whatever the floors leave is handed out one more per group with room, in visiting order, round
    after round, until m is spent. With the smallest-first order the floors never leave one when
    m <= sum(sizes) (induction: a group that takes floor(m / left) < its size leaves groups at least as large,
    whose room covers the rest), so on valid inputs this is a guard, and the paper's allocation is returned as is.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    k = len(sizes)
    order = np.argsort(sizes, kind="stable")  # [k] smallest first, ties: lower group first
    budgets = np.zeros(k, dtype=np.int64)
    for i, g in enumerate(order):
        budgets[g] = min(int(sizes[g]), m // (k - i))
        m -= int(budgets[g])
    remainder = m
    while m > 0:
        room = (sizes - budgets)[order] > 0  # [k] in visiting order
        if not room.any():
            break
        give = room & (np.cumsum(room) <= m)
        budgets[order[give]] += 1
        m -= int(give.sum())
    return budgets, order, remainder


def _take_per_group(
    group: np.ndarray, budgets: np.ndarray, rng: np.random.Generator, weights: np.ndarray | None = None
) -> np.ndarray:
    """Rows (indices into ``group``, grouped by group) with ``budgets[g]`` drawn without replacement from group g.

    One stable sort by group (radix for small k), then a loop over the groups, never over the rows. Uniform:
    ``rng.choice``; weighted: Efraimidis-Spirakis keys -log(u) / w, the ``budget`` smallest of each group.
    """
    k = len(budgets)
    order = np.argsort(group.astype(np.int16) if k < 2**15 else group, kind="stable")  # [N] by group
    sizes = np.bincount(group, minlength=k)
    start = np.cumsum(sizes) - sizes  # [k]
    key = None
    if weights is not None:
        with np.errstate(divide="ignore"):
            key = -np.log(rng.random(len(group))) / weights  # [N]; w = 0 -> inf (drawn last)
    picks = []
    for g in np.flatnonzero(budgets):
        members = order[start[g] : start[g] + sizes[g]]
        b = int(budgets[g])
        if key is None:
            picks.append(members[rng.choice(len(members), b, replace=False)])
        else:
            picks.append(members[np.argsort(key[members], kind="stable")[:b]])
    return np.concatenate(picks) if picks else np.zeros(0, dtype=np.int64)


def stratified(score: np.ndarray, n: int, k: int, prune: float, rng: np.random.Generator) -> Selection:
    """Coverage-enhanced sampling of exactly n rows of ``score`` [N]: hard prune, k strata, smallest first.

    Exactly n: the paper's floors always spend n when the pruned set holds n (see ``allocate``); when it does not
    (n > |D| - floor(hard_prune * |D|)) this refuses, naming n and hard_prune, instead of refilling from the
    pruned samples, which the hard prune is meant to keep out.
    """
    keep = hard_prune(score, prune)  # [M] rows left
    n_pruned = len(score) - len(keep)
    if n > len(keep):
        raise ConfigError(
            f"n={n} exceeds the {len(keep)} candidates left after hard_prune={prune} of {len(score)}; "
            "lower n or hard_prune"
        )
    kept = score[keep]
    edges, stratum = strata(kept, k)
    sizes = np.bincount(stratum, minlength=k)
    budgets, order, remainder = allocate(sizes, n)
    take = _take_per_group(stratum, budgets, rng)
    chosen = keep[take]
    sort = np.argsort(chosen)
    dropped = np.ones(len(score), dtype=bool)
    dropped[keep] = False
    threshold = float(score[dropped].min()) if n_pruned else None  # lowest dropped score
    groups = Groups("stratum", sizes, budgets, order, edges, n_pruned, threshold, remainder, keep)
    return Selection(chosen[sort], stratum[take][sort].astype(np.int32), score, groups)


def quantile_strata(score: np.ndarray, n: int, k: int, pool: float, rng: np.random.Generator) -> Selection:
    """n rows from the top ``pool`` share of ``score`` [N], spread evenly over k equal-count strata of its ranks.

    Why not the paper's equal-width strata: on a skewed score (influence has a long negative tail) most equal-width
    strata are nearly empty, the smallest-first allocation hands them most of the budget, and the coreset ends up
    in the low tail. Ranks make every stratum the same size, so the budget follows the pool's mass; dropping the
    low tail instead of the top keeps out what the surrogate finds unhelpful or harmful (negative influence, bots),
    and the strata keep the coverage of the score range inside the pool. The pool holds max(ceil(pool * N), n).
    """
    size = len(score)
    m = min(size, max(int(math.ceil(pool * size)), n))
    k = min(k, m)  # every stratum holds at least one row
    order = np.argsort(-score, kind="stable")[:m]  # [m] the pool, best first (ties: lower row first)
    rank_stratum = (np.arange(m) * k) // m  # [m] equal-count strata, 0 = the best scores
    stratum = (k - 1 - rank_stratum).astype(np.int64)  # 0 = the lowest scores, as the paper numbers them
    sizes = np.bincount(stratum, minlength=k)
    budgets, visit, remainder = allocate(sizes, n)
    take = _take_per_group(stratum, budgets, rng)
    chosen = order[take]
    sort = np.argsort(chosen)
    pooled = score[order]
    edges = np.asarray([pooled[stratum == g].min() for g in range(k)] + [pooled[0]])  # [k + 1] ascending
    groups = Groups("stratum", sizes, budgets, visit, edges, size - m, None, remainder, np.sort(order), "low")
    sel = Selection(chosen[sort], stratum[take][sort].astype(np.int32), score, groups)
    sel.info = {"pool": m, "pool_min_score": float(pooled[-1])}
    return sel


def top_n(score: np.ndarray, n: int) -> Selection:
    """The n highest scores (ties: lower row first); no strata, no prune."""
    return Selection(top_rows(score, n), np.full(n, -1, dtype=np.int32), score)


# ---------------------------------------------------------------------------------------------------------
# RecRanker-style: clusters of users, interaction-weighted draws
# ---------------------------------------------------------------------------------------------------------
def kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iters: int = 25) -> np.ndarray:
    """Cluster ids [N] of k-means (greedy k-means++ seeding, Lloyd steps; an empty cluster keeps its centre).

    Greedy seeding (as scikit-learn): each new centre is the best of 2 + log(k) draws, which avoids most of the
    bad local minima of plain k-means++ (two true clusters merged, one split) without restarts.
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    k = min(k, n)
    trials = 2 + int(math.log(k))
    sq = (x * x).sum(1)  # [N]

    def dist2(c: np.ndarray) -> np.ndarray:  # [C, H] -> [C, N] squared distances
        return np.maximum(sq[None, :] - 2 * c @ x.T + (c * c).sum(1)[:, None], 0)

    centres = np.empty((k, x.shape[1]))
    centres[0] = x[rng.integers(n)]
    d2 = dist2(centres[:1])[0]  # [N] to the nearest centre so far
    for c in range(1, k):
        total = d2.sum()
        picks = rng.choice(n, trials, p=d2 / total) if total > 0 else rng.integers(n, size=trials)
        cand = np.minimum(d2[None, :], dist2(x[picks]))  # [trials, N]
        best = int(cand.sum(1).argmin())
        centres[c], d2 = x[picks[best]], cand[best]
    assign = np.full(n, -1, dtype=np.int64)
    for _ in range(iters):
        dist = sq[:, None] - 2 * x @ centres.T + (centres * centres).sum(1)[None, :]  # [N, k]
        new = dist.argmin(1)
        if np.array_equal(new, assign):
            break
        assign = new
        counts = np.bincount(assign, minlength=k)
        sums = np.zeros_like(centres)
        np.add.at(sums, assign, x)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    return assign


def proportional(sizes: np.ndarray, n: int) -> np.ndarray:
    """Budgets [k] proportional to ``sizes``, summing to n: floors, then one more to the largest fractions."""
    sizes = np.asarray(sizes, dtype=np.int64)
    quota = n * sizes / sizes.sum()
    budgets = np.floor(quota).astype(np.int64)
    short = n - int(budgets.sum())
    frac_order = np.argsort(-(quota - budgets), kind="stable")
    budgets[frac_order[:short]] += 1  # a fraction > 0 means floor + 1 <= size
    return budgets


def recranker(user_repr: np.ndarray, interactions: np.ndarray, n: int, clusters: int, rng) -> Selection:
    """RecRanker-style adaptive user sampling (Luo et al. 2023), one sample per user here.

    Clustering-based: k-means on the users' representations, each cluster gets a share of n proportional to its
    size, so every kind of user is represented. Importance-aware: inside a cluster users are drawn without
    replacement with probability weights log(1 + interactions), so active users are likelier but none is excluded.
    """
    assign = kmeans(user_repr, clusters, rng)
    sizes = np.bincount(assign, minlength=int(assign.max()) + 1)
    budgets = proportional(sizes, n)
    take = _take_per_group(assign, budgets, rng, np.log1p(np.asarray(interactions, dtype=np.float64)))
    chosen = np.sort(take)
    groups = Groups("cluster", sizes, budgets, np.arange(len(sizes)))
    return Selection(chosen, assign[chosen].astype(np.int32), None, groups)


# ---------------------------------------------------------------------------------------------------------
# Config and strategies
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Strategy:
    """A selector: the candidate inputs it needs (names of ``Candidates`` fields) and the function."""

    needs: tuple[str, ...]
    run: Callable[[Candidates, SelectConfig, int, np.random.Generator], Selection]
    help: str


def _dealrec(c: Candidates, cfg: SelectConfig, n: int, rng) -> Selection:
    score = overall_score(c.need("influence"), c.need("effort"), cfg.lam)
    return stratified(score, n, cfg.k, cfg.hard_prune, rng)


def _no_influence(c: Candidates, cfg: SelectConfig, n: int, rng) -> Selection:
    return stratified(cfg.lam * minmax(c.need("effort")), n, cfg.k, cfg.hard_prune, rng)


def _no_effort(c: Candidates, cfg: SelectConfig, n: int, rng) -> Selection:
    return stratified(minmax(c.need("influence")), n, cfg.k, cfg.hard_prune, rng)


def _greedy(c: Candidates, cfg: SelectConfig, n: int, rng) -> Selection:
    return top_n(overall_score(c.need("influence"), c.need("effort"), cfg.lam), n)


def _quantile(c: Candidates, cfg: SelectConfig, n: int, rng) -> Selection:
    if cfg.fit_prune == 0:
        return quantile_strata(overall_score(c.need("influence"), c.need("effort"), cfg.lam), n, cfg.k, cfg.pool, rng)
    # The fit filter: the samples the surrogate fits worst (highest EL2N: bots, noise) leave before the scores are
    # normalised, so they neither enter the pool nor stretch the min-max scale of the others.
    fit = hard_prune(c.need("el2n"), cfg.fit_prune)  # [F] rows kept, ascending
    if n > len(fit):
        raise ConfigError(f"n={n} exceeds the {len(fit)} candidates left after fit_prune={cfg.fit_prune}; lower one")
    kept_score = overall_score(c.need("influence")[fit], c.need("effort")[fit], cfg.lam)  # [F]
    score = np.full(c.size, kept_score.min())  # [N] the filtered rows shown at the bottom (never selected)
    score[fit] = kept_score
    pool = min(1.0, math.ceil(cfg.pool * c.size) / len(fit))  # the pool keeps its share of all the candidates
    sub = quantile_strata(kept_score, n, cfg.k, pool, rng)
    groups = dataclasses.replace(sub.groups, pruned=c.size - len(sub.groups.kept), kept=fit[sub.groups.kept])
    info = sub.info | {"fit_pruned": c.size - len(fit)}
    return Selection(fit[sub.indices], sub.group, score, groups, info)


def _random(c: Candidates, cfg: SelectConfig, n: int, rng) -> Selection:
    return Selection(np.sort(rng.choice(c.size, n, replace=False)), np.full(n, -1, dtype=np.int32), None)


def _grand(c: Candidates, cfg: SelectConfig, n: int, rng) -> Selection:
    return top_n(np.asarray(c.need("grand"), dtype=np.float64), n)


def _el2n(c: Candidates, cfg: SelectConfig, n: int, rng) -> Selection:
    return top_n(np.asarray(c.need("el2n"), dtype=np.float64), n)


def _ccs(c: Candidates, cfg: SelectConfig, n: int, rng) -> Selection:
    return stratified(np.asarray(c.need("el2n"), dtype=np.float64), n, cfg.k, cfg.hard_prune, rng)


def _recranker(c: Candidates, cfg: SelectConfig, n: int, rng) -> Selection:
    return recranker(c.need("user_repr"), c.need("interactions"), n, cfg.clusters, rng)


STRATEGIES: dict[str, Strategy] = {
    "dealrec": Strategy(("influence", "effort"), _dealrec, "influence + lambda * effort, hard prune, k strata"),
    "quantile": Strategy(
        ("influence", "effort"), _quantile, "influence + lambda * effort, top pool share, k equal-count strata"
    ),
    "random": Strategy((), _random, "n uniformly random candidates"),
    "grand": Strategy(("grand",), _grand, "top n by the surrogate's per-sample gradient norm (GraNd)"),
    "el2n": Strategy(("el2n",), _el2n, "top n by the surrogate's error L2 norm (EL2N)"),
    "ccs": Strategy(("el2n",), _ccs, "coverage-centric coreset: hard prune + k strata of EL2N"),
    "recranker": Strategy(
        ("user_repr", "interactions"), _recranker, "user clusters, interaction-weighted draws (RecRanker-style)"
    ),
    "no_influence": Strategy(("effort",), _no_influence, "ablation: lambda * effort only, hard prune, k strata"),
    "no_effort": Strategy(("influence",), _no_effort, "ablation: influence only, hard prune, k strata"),
    "greedy": Strategy(("influence", "effort"), _greedy, "ablation: top n by overall score, no strata, no prune"),
}


#: Bounds that keep a typo from becoming an infinite score or a multi-terabyte allocation (1e8 strata: ~7 TiB).
MAX_LAMBDA = 1000.0
MAX_STRATA = 100_000
#: A coreset of 10 million samples is no few-shot fine-tuning any more; a larger n is a typo (10**12), refused before
#: any scoring instead of at select time, hours later, as "more than the candidates".
MAX_CORESET = 10_000_000
#: The smallest ratio: one sample in a million candidates; below it (1e-300) floor(ratio * |D|) is 0 for any day.
MIN_RATIO = 1e-6


def check_arms(strategies: list[str]) -> list[str]:
    """The daily arms: known strategies, each once, at least one (the first is the pipeline's own); refused by name."""
    if not isinstance(strategies, (list, tuple)) or not strategies:
        raise ConfigError(f"arms={strategies!r}: give a list of one or more strategies, e.g. ['dealrec', 'random']")
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ConfigError(f"arms={list(strategies)}: unknown strateg(ies) {unknown}; choose from {list(STRATEGIES)}")
    repeated = sorted({s for s in strategies if list(strategies).count(s) > 1})
    if repeated:
        raise ConfigError(f"arms={list(strategies)}: {repeated} given more than once; each arm is one strategy")
    return list(strategies)


@dataclass(frozen=True)
class SelectConfig(_Config):
    """``select``: which strategy picks the coreset of a day and how many samples it keeps."""

    strategy: str = opt("dealrec", f"selection strategy: {', '.join(STRATEGIES)}")
    n: int | None = opt(1024, "coreset size (paper: n_fewshot 1024); exclusive with ratio", ge=1, le=MAX_CORESET)
    ratio: float | None = opt(
        None,
        "coreset size as a fraction of the candidates, floor(ratio * |D|); on the CLI it replaces the default n",
        ge=MIN_RATIO,
        le=1,
    )
    lam: float = opt(0.3, "lambda, weight of the effort score (paper: 0.3 Games, 1.0 Book/MicroLens)")
    k: int = opt(50, "number of equal-width score strata")
    hard_prune: float = opt(0.1, "fraction of the highest-scored candidates dropped before the strata")
    pool: float = opt(0.2, "quantile: share of the candidates, best overall scores first, that it samples from")
    fit_prune: float = opt(
        0.0, "quantile: share of the candidates the surrogate fits worst (highest EL2N) dropped first; 0 = off"
    )
    clusters: int = opt(10, "recranker: k-means clusters of users")
    block: str = opt("attn_out", f"grand: surrogate Linear block of the gradient norm ({', '.join(GRAD_BLOCKS)})")
    negatives: int = opt(4096, "grand/el2n/ccs: fixed, seeded set of negative items of the surrogate's loss")
    neg_seed: int = opt(0, "grand/el2n/ccs: seed of the negative set")
    batch_size: int = opt(512, "grand/el2n/ccs/recranker: samples per surrogate batch")
    seed: int = opt(0, "seed of the random draws (strata, random, recranker) and of the report's random baseline")

    def validate(self) -> None:
        _require(self.strategy in STRATEGIES, f"strategy={self.strategy!r}: choose one of {list(STRATEGIES)}")
        _require(
            (self.n is None) != (self.ratio is None),
            f"n={self.n} and ratio={self.ratio}: give exactly one of them",
        )
        if self.n is not None:
            _require(self.n >= 1, f"n={self.n}: must be >= 1")
        if self.ratio is not None:
            _require(0 < self.ratio <= 1, f"ratio={self.ratio}: must be in (0, 1]")
        _require(
            math.isfinite(self.lam) and 0 <= self.lam <= MAX_LAMBDA, f"lam={self.lam}: must be in [0, {MAX_LAMBDA:g}]"
        )
        _require(1 <= self.k <= MAX_STRATA, f"k={self.k}: must be in [1, {MAX_STRATA}] (strata are allocated up front)")
        _require(0 <= self.hard_prune < 1, f"hard_prune={self.hard_prune}: must be in [0, 1)")
        _require(0 < self.pool <= 1, f"pool={self.pool}: must be in (0, 1]")
        _require(0 <= self.fit_prune < 1, f"fit_prune={self.fit_prune}: must be in [0, 1)")
        _require(self.clusters >= 1, f"clusters={self.clusters}: must be >= 1")
        _require(self.block in GRAD_BLOCKS, f"block={self.block!r}: choose one of {list(GRAD_BLOCKS)}")
        _require(self.negatives >= 1, f"negatives={self.negatives}: must be >= 1")
        _require(self.batch_size >= 1, f"batch_size={self.batch_size}: must be >= 1")

    @property
    def needs(self) -> tuple[str, ...]:
        fit = ("el2n",) if self.strategy == "quantile" and self.fit_prune > 0 else ()
        return STRATEGIES[self.strategy].needs + fit

    def size(self, n_candidates: int) -> int:
        """Samples to select out of ``n_candidates``: n, or floor(ratio * |D|); the error names the parameter."""
        if self.n is not None:
            _require(self.n <= n_candidates, f"n={self.n}: more than the {n_candidates} candidates (|D|)")
            return self.n
        n = int(math.floor(self.ratio * n_candidates))  # type: ignore[operator]
        _require(n >= 1, f"ratio={self.ratio}: selects no sample of the {n_candidates} candidates")
        return n


def select(candidates: Candidates, cfg: SelectConfig) -> Selection:
    """Exactly ``cfg.size(|D|)`` distinct candidates by ``cfg.strategy``, deterministic for a given seed."""
    n = cfg.size(candidates.size)
    rng = np.random.default_rng(cfg.seed)
    sel = STRATEGIES[cfg.strategy].run(candidates, cfg, n, rng)
    if len(sel.indices) != n or len(np.unique(sel.indices)) != n:  # an invariant, not an input error
        raise AssertionError(f"strategy {cfg.strategy!r} returned {len(sel.indices)} rows for n={n}")
    sel.info = {"strategy": cfg.strategy, "n": n, "candidates": candidates.size} | sel.info
    return sel


def random_baseline(n_candidates: int, n: int, seed: int) -> np.ndarray:
    """A uniformly random selection of the same size (report's coverage comparison), ascending."""
    return np.sort(np.random.default_rng(seed).choice(n_candidates, n, replace=False))
