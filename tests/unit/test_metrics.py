"""Recall/NDCG against a plain float64 transcription of the paper's formulas."""

import math

import numpy as np

from dealrec_tasks.metrics import mean_metrics, per_user_metrics, ranking_metrics, ranks_in_topk


def naive(ranked: list[int], targets: list[int], k: int) -> tuple[float, float]:
    rank = {item: r for r, item in enumerate(ranked)}
    hits = [rank[t] for t in targets if t in rank and rank[t] < k]
    recall = len(hits) / len(targets)
    dcg = sum(1 / math.log2(r + 2) for r in hits)
    idcg = sum(1 / math.log2(i + 2) for i in range(min(len(targets), k)))
    return recall, dcg / idcg


def test_matches_naive_formula_with_several_targets():
    rng = np.random.default_rng(0)
    topk = np.stack([rng.permutation(200)[:50] for _ in range(40)])
    targets = [list(rng.choice(200, size=int(rng.integers(1, 6)), replace=False)) for _ in range(40)]
    targets[3] = list(topk[3, :3])  # perfect user
    targets[5] = []  # users without targets are skipped
    got = ranking_metrics(topk, targets, ks=(10, 20, 50))
    for k in (10, 20, 50):
        pairs = [naive(list(row), t, k) for row, t in zip(topk, targets) if t]
        assert np.isclose(got[f"recall@{k}"], np.mean([p[0] for p in pairs]))
        assert np.isclose(got[f"ndcg@{k}"], np.mean([p[1] for p in pairs]))
    assert got["users"] == 39
    assert naive(list(topk[3]), targets[3], 10) == (1.0, 1.0)


def test_per_user_values_match_the_naive_formula_user_by_user():
    rng = np.random.default_rng(1)
    topk = np.stack([rng.permutation(100)[:50] for _ in range(30)])
    targets = [list(rng.choice(100, size=int(rng.integers(1, 4)), replace=False)) for _ in range(30)]
    targets[7] = []
    kept, per_user = per_user_metrics(ranks_in_topk(topk, targets), ks=(10, 20))
    assert kept.tolist() == [bool(t) for t in targets] and len(per_user["ndcg@20"]) == 29
    scored = [(row, t) for row, t in zip(topk, targets) if t]
    for k in (10, 20):
        expected = np.array([naive(list(row), t, k) for row, t in scored])  # [U, 2] recall, ndcg
        assert np.allclose(per_user[f"recall@{k}"], expected[:, 0], rtol=0, atol=1e-15)
        assert np.allclose(per_user[f"ndcg@{k}"], expected[:, 1], rtol=0, atol=1e-15)
    assert mean_metrics(per_user)["users"] == 29
