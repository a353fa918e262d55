"""Recall@K and NDCG@K exactly as the paper's evaluation defines them (DESIGN.md section 3).

Shared by the surrogate's evaluation and the LLM's grounded evaluation, so both report the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def metrics_from_ranks(ranks: Sequence[np.ndarray], ks: Sequence[int]) -> dict[str, float]:
    """Mean Recall@K / NDCG@K over users from each user's 0-based target ranks (users without targets skipped).

    With ranks r(t): Recall@K = |{t: r(t) < K}| / |T|; NDCG@K = sum_{t: r(t) < K} 1/log2(r(t)+2) / IDCG,
    IDCG = sum_{i < min(|T|, K)} 1/log2(i+2).
    """
    out = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg")}
    users = 0
    for r in ranks:
        r = np.asarray(r, dtype=np.float64)
        if len(r) == 0:
            continue
        users += 1
        for k in ks:
            hit = r[r < k]
            ideal = (1.0 / np.log2(np.arange(min(len(r), k)) + 2.0)).sum()
            out[f"recall@{k}"] += len(hit) / len(r)
            out[f"ndcg@{k}"] += float((1.0 / np.log2(hit + 2.0)).sum()) / ideal
    return {name: value / max(users, 1) for name, value in out.items()} | {"users": users}


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
