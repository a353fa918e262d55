"""Recall@K and NDCG@K exactly as the paper's evaluation defines them (DESIGN.md section 3).

Shared by the surrogate's evaluation and the LLM's grounded evaluation, so both report the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def ranking_metrics(topk: np.ndarray, targets: Sequence[Sequence[int]], ks: Sequence[int]) -> dict[str, float]:
    """Mean over users of Recall@K and NDCG@K.

    ``topk[u]`` lists user u's best items in rank order (at least max(ks) columns); ``targets[u]`` its held-out
    items. With 0-based ranks r(t): Recall@K = |{t: r(t) < K}| / |T|;
    NDCG@K = sum_{t: r(t) < K} 1/log2(r(t)+2) / sum_{i < min(|T|, K)} 1/log2(i+2).
    """
    if len(topk) != len(targets):
        raise ValueError(f"topk has {len(topk)} users, targets {len(targets)}")
    width = max(ks)
    if topk.shape[1] < width:
        raise ValueError(f"topk has {topk.shape[1]} columns, need {width}")
    discount = 1.0 / np.log2(np.arange(width) + 2.0)
    out = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg")}
    users = 0
    for row, tgt in zip(topk[:, :width], targets):
        tgt = set(int(t) for t in tgt)
        if not tgt:
            continue
        users += 1
        hit = np.fromiter((int(i) in tgt for i in row), dtype=bool, count=width)
        for k in ks:
            hits = hit[:k]
            out[f"recall@{k}"] += hits.sum() / len(tgt)
            out[f"ndcg@{k}"] += discount[:k][hits].sum() / discount[: min(len(tgt), k)].sum()
    return {name: value / max(users, 1) for name, value in out.items()} | {"users": users}
