"""Recall@K and NDCG@K exactly as the paper's evaluation defines them (DESIGN.md section 3).

Shared by the surrogate's evaluation and the LLM's grounded evaluation, so both report the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# The rank of a target that cannot be ranked (its score is NaN or infinite, or it is masked): past every K, so it is
# never a hit. A model whose scores are not finite must never look good (a NaN compares false with everything, so
# "items scored above the target" counted none and every target of a NaN model was at rank 0).
UNRANKED = np.iinfo(np.int64).max


def per_user_metrics(ranks: Sequence[np.ndarray], ks: Sequence[int]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Each user's Recall@K / NDCG@K from its 0-based target ranks: (kept, {name: [U] values}), where ``kept``
    [len(ranks)] marks the users with targets (the others are skipped, as in the mean).

    With ranks r(t): Recall@K = |{t: r(t) < K}| / |T|; NDCG@K = sum_{t: r(t) < K} 1/log2(r(t)+2) / IDCG,
    IDCG = sum_{i < min(|T|, K)} 1/log2(i+2).
    """
    kept = np.asarray([len(r) > 0 for r in ranks], dtype=bool)
    out = {f"{m}@{k}": np.zeros(int(kept.sum()), dtype=np.float64) for k in ks for m in ("recall", "ndcg")}
    for u, r in enumerate(r for r in ranks if len(r)):
        r = np.asarray(r, dtype=np.float64)
        for k in ks:
            hit = r[r < k]
            ideal = (1.0 / np.log2(np.arange(min(len(r), k)) + 2.0)).sum()
            out[f"recall@{k}"][u] = len(hit) / len(r)
            out[f"ndcg@{k}"][u] = float((1.0 / np.log2(hit + 2.0)).sum()) / ideal
    return kept, out


def metrics_from_ranks(ranks: Sequence[np.ndarray], ks: Sequence[int]) -> dict[str, float]:
    """Mean Recall@K / NDCG@K over users (``per_user_metrics``; users without targets skipped)."""
    return mean_metrics(per_user_metrics(ranks, ks)[1])


def mean_metrics(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    """The means of ``per_user_metrics``' values, with the number of users they average."""
    users = len(next(iter(per_user.values()))) if per_user else 0
    return {name: float(v.sum()) / max(users, 1) for name, v in per_user.items()} | {"users": users}


def ranks_in_topk(topk: np.ndarray, targets: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """0-based rank of each target in its user's top list; targets outside it get rank = len(top list)."""
    if len(topk) != len(targets):
        raise ValueError(f"topk has {len(topk)} users, targets {len(targets)}")
    out = []
    for row, tgt in zip(topk, targets):
        where = {int(item): r for r, item in enumerate(row)}
        out.append(np.asarray([where.get(int(t), len(row)) for t in tgt], dtype=np.int64))
    return out


def ranking_metrics(topk: np.ndarray, targets: Sequence[Sequence[int]], ks: Sequence[int]) -> dict[str, float]:
    """Recall@K / NDCG@K from each user's best items in rank order (at least max(ks) columns)."""
    if topk.shape[1] < max(ks):
        raise ValueError(f"topk has {topk.shape[1]} columns, need {max(ks)}")
    return metrics_from_ranks(ranks_in_topk(topk, targets), ks)
