"""BIGRec's grounding (plain L2 and popularity-aware) against naive float64 references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dealrec_tasks.llm import grounding


def _naive_scores(q: np.ndarray, e: np.ndarray, pop: np.ndarray | None, gamma: float) -> np.ndarray:
    out = np.zeros((len(q), len(e)))
    for i in range(len(q)):
        d = np.array([math.sqrt(sum((float(a) - float(b)) ** 2 for a, b in zip(q[i], row))) for row in e])
        if pop is not None:
            d = (d - d.min()) / (d.max() - d.min()) * np.array([(1.0 + p) ** -gamma for p in pop])
        out[i] = d
    return out


@pytest.fixture
def data():
    rng = np.random.default_rng(3)
    return rng.normal(size=(13, 6)).astype(np.float32), rng.normal(size=(40, 6)).astype(np.float32), rng


def test_popularity_is_the_min_max_scaled_share(data):
    counts = np.array([0, 3, 9, 1, 0, 7], dtype=float)
    share = counts / counts.sum()
    expected = (share - share.min()) / (share.max() - share.min())
    assert np.allclose(grounding.popularity(counts), expected)
    assert np.array_equal(grounding.popularity(np.full(4, 5.0)), np.zeros(4))


@pytest.mark.parametrize("gamma", [0.0, 1.0, 7.0, 50.0])
def test_topk_matches_the_naive_ranking(data, gamma):
    q, e, rng = data
    pop = grounding.popularity(rng.integers(0, 50, size=len(e)).astype(float))
    for p in (None, pop):
        naive = np.argsort(_naive_scores(q, e, p, gamma), axis=1, kind="stable")[:, :10]
        assert np.array_equal(grounding.topk(q, e, 10, p, gamma), naive)


def test_gamma_zero_ranks_as_plain_l2(data):
    q, e, rng = data
    pop = grounding.popularity(rng.integers(0, 50, size=len(e)).astype(float))
    assert np.array_equal(grounding.topk(q, e, 20, pop, 0.0), grounding.topk(q, e, 20))


def test_choose_gamma_matches_a_naive_grid_search(data):
    q, e, rng = data
    pop = grounding.popularity(rng.integers(0, 50, size=len(e)).astype(float))
    targets = rng.integers(0, len(e), size=len(q))
    grid = (0.0, 0.5, 2.0, 10.0)
    best, values = grounding.choose_gamma(q, e, targets, pop, cutoff=5, grid=grid)
    for gamma in grid:
        scores = _naive_scores(q, e, pop, gamma)
        gains = []
        for i, t in enumerate(targets):
            rank = int((scores[i] < scores[i, t]).sum())
            gains.append(1.0 / math.log2(rank + 2) if rank < 5 else 0.0)
        assert values[gamma] == pytest.approx(float(np.mean(gains)), abs=1e-12)
    assert values[best] == max(values.values())


def test_choose_gamma_finds_popularity_when_the_targets_are_the_popular_items():
    rng = np.random.default_rng(0)
    items = rng.normal(size=(200, 8))
    counts = np.ones(200)
    counts[:5] = 1000.0  # five hits everybody buys
    queries = items[rng.integers(5, 200, size=60)] + 0.01 * rng.normal(size=(60, 8))  # answers near other items
    targets = rng.integers(0, 5, size=60)
    best, values = grounding.choose_gamma(queries, items, targets, grounding.popularity(counts), cutoff=20)
    assert best > 0 and values[best] > values[0.0]
    near = grounding.topk(queries, items, 1)[:, 0]  # now the targets are the answers themselves
    best_near, _ = grounding.choose_gamma(queries, items, near, grounding.popularity(counts), cutoff=20)
    assert best_near == 0.0


def test_choose_gamma_refuses_mismatched_targets(data):
    q, e, _ = data
    with pytest.raises(ValueError, match="one per query"):
        grounding.choose_gamma(q, e, [0, 1], np.zeros(len(e)))
