"""The popularity ranking's metrics against a plain per-user loop in float64."""

from __future__ import annotations

import numpy as np

from dealrec_tasks.surrogate.batching import EvalSet, Seqs
from dealrec_tasks.surrogate.evaluate import popularity_metrics, popularity_ranks


def _ragged(rows: list[list[int]]) -> Seqs:
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    tokens = np.asarray([t for r in rows for t in r], np.int64)
    return Seqs(tokens, offsets, np.arange(len(rows), dtype=np.int64))


def test_popularity_ranks_match_a_plain_loop():
    rng = np.random.default_rng(0)
    n_items, users = 30, 57
    counts = rng.integers(0, 6, n_items).astype(np.float64)  # ties on purpose
    targets = [rng.choice(np.arange(1, n_items + 1), rng.integers(1, 4), replace=False).tolist() for _ in range(users)]
    masks = [sorted(set(rng.choice(np.arange(1, n_items + 1), rng.integers(0, 6)).tolist()) - set(t)) for t in targets]
    data = EvalSet(_ragged([[n_items + 1]] * users), _ragged(targets), _ragged(masks))
    got = popularity_ranks(counts, data, batch_size=8)
    for u in range(users):
        expected = []
        for t in targets[u]:
            ahead = [
                i for i in range(1, n_items + 1) if i != t and i not in masks[u] and counts[i - 1] >= counts[t - 1]
            ]
            expected.append(len(ahead))  # ties against the target (pessimistic rank), masked items never ahead
        assert got[u].tolist() == expected
    metrics = popularity_metrics(counts, data, ks=(5,))
    recall = np.mean([np.mean([r < 5 for r in got[u]]) for u in range(users)])
    assert abs(metrics["recall@5"] - recall) < 1e-12 and metrics["users"] == users
