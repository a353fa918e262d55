"""BIGRec's grounding step, as published: L2 distance to every item, and its popularity-aware variant.

Plain grounding ranks items by the L2 distance between the generated answer's embedding and each item title's.
The popularity-aware variant (BIGRec, Bao et al. 2023, section 3.3; their ``adjust_pda.py``) rescales each query's
distances to [0, 1] (min-max over the catalogue), the items' interaction counts to a popularity in [0, 1] (share of
all interactions, then min-max), and ranks by ``dist_norm * (1 + pop) ** -gamma``: a popular item comes closer.
``gamma`` is chosen on validation users (BIGRec's grid: 0, 1, ..., 99) and stored with the evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

GAMMA_GRID = tuple(float(g) for g in range(100))
CHUNK = 512  # queries per distance block: [512, items] float64 at a time


def popularity(counts: np.ndarray) -> np.ndarray:
    """BIGRec's popularity of each item in [0, 1]: its share of all interactions, min-max scaled."""
    share = np.asarray(counts, dtype=np.float64)
    share = share / max(share.sum(), 1.0)
    span = share.max() - share.min() if len(share) else 0.0
    return (share - share.min()) / span if span > 0 else np.zeros_like(share)


def _distances(queries: np.ndarray, items: np.ndarray) -> torch.Tensor:
    q = torch.from_numpy(np.asarray(queries)).double()
    e = torch.from_numpy(np.asarray(items)).double()
    sq = (q * q).sum(1, keepdim=True) + (e * e).sum(1)[None, :] - 2.0 * q @ e.T
    return sq.clamp(min=0).sqrt()


def _normalised(dist: torch.Tensor) -> torch.Tensor:
    """Each row min-max scaled to [0, 1] (BIGRec's ``dist_norm``)."""
    low, high = dist.min(1, keepdim=True).values, dist.max(1, keepdim=True).values
    return (dist - low) / (high - low).clamp(min=1e-300)


def topk(
    queries: np.ndarray, items: np.ndarray, k: int, pop: np.ndarray | None = None, gamma: float = 0.0
) -> np.ndarray:
    """The ``k`` best items per query: [Q, k] row indices into ``items``, best first.

    ``pop`` None: nearest by L2. Otherwise BIGRec's popularity-aware score ``dist_norm * (1 + pop) ** -gamma``
    (lowest first); with ``gamma`` 0 it ranks as plain L2 (a per-row increasing affine map keeps the order)."""
    k = min(k, len(items))
    out = np.zeros((len(queries), k), dtype=np.int64)
    weight = None if pop is None else torch.from_numpy((1.0 + np.asarray(pop, np.float64)) ** -gamma)
    for start in range(0, len(queries), CHUNK):
        dist = _distances(queries[start : start + CHUNK], items)
        if weight is not None:
            dist = _normalised(dist) * weight[None, :]
        out[start : start + CHUNK] = torch.topk(dist, k=k, dim=1, largest=False).indices.numpy()
    return out


def choose_gamma(
    queries: np.ndarray,
    items: np.ndarray,
    targets: Sequence[int],
    pop: np.ndarray,
    cutoff: int = 20,
    grid: Sequence[float] = GAMMA_GRID,
) -> tuple[float, dict[float, float]]:
    """The ``gamma`` of ``grid`` with the highest mean NDCG@``cutoff`` of the (validation) queries' ``targets``
    (one item row each, BIGRec's validation), and the value at every gamma. Ties go to the smallest gamma.

    A target's rank is the number of items scored strictly better (ties in its favour); the normalised distances
    are computed once per block of queries and rescaled for every gamma."""
    targets = np.asarray(targets, dtype=np.int64)
    if len(targets) != len(queries) or len(targets) == 0:
        raise ValueError(f"choose_gamma: {len(queries)} queries, {len(targets)} targets (one per query, at least 1)")
    weights = torch.from_numpy(np.stack([(1.0 + np.asarray(pop, np.float64)) ** -g for g in grid]))  # [G, N]
    gains = torch.zeros(len(grid), dtype=torch.float64)
    for start in range(0, len(queries), CHUNK):
        norm = _normalised(_distances(queries[start : start + CHUNK], items))  # [c, N]
        t = torch.from_numpy(targets[start : start + CHUNK])
        rows = torch.arange(len(t))
        for g in range(len(grid)):
            score = norm * weights[g][None, :]
            rank = (score < score[rows, t][:, None]).sum(1)
            gains[g] += torch.where(rank < cutoff, 1.0 / torch.log2(rank.double() + 2.0), 0.0).sum()
    values = {float(g): float(v) / len(targets) for g, v in zip(grid, gains)}
    best = max(values, key=lambda g: (values[g], -g))
    return best, values
