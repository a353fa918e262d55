"""Coverage-enhanced sampling and the baseline selectors: parity with the paper, exactly n, seeds, validation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dealrec_tasks.errors import ConfigError, InputError
from dealrec_tasks.selection import (
    STRATEGIES,
    Candidates,
    SelectConfig,
    allocate,
    hard_prune,
    minmax,
    overall_score,
    proportional,
    select,
    strata,
    stratified,
)
from tests.conftest import SHARED

PARITY = SHARED / "data" / "selection" / "parity_vectors.json"


def paper_allocation(sizes: list[int], m: int) -> list[int]:
    """The paper's loop, written plainly: smallest stratum first (ties: lower first), min(size, m // left)."""
    order = sorted(range(len(sizes)), key=lambda i: (sizes[i], i))
    out = [0] * len(sizes)
    for j, i in enumerate(order):
        out[i] = min(sizes[i], m // (len(sizes) - j))
        m -= out[i]
    return out


@pytest.fixture(scope="module")
def parity():
    if not PARITY.exists():
        pytest.skip(f"{PARITY} not present")
    return json.loads(PARITY.read_text())


def _is_lost_max_case(case) -> bool:
    return case["distribution"] == "lognormal" and case["k"] == 50


def test_parity_with_the_paper_case_by_case(parity):
    """Stratum sizes and budgets equal the paper's in every case but lognormal k=50, where we keep the max."""
    exact = 0
    for case in parity["cases"]:
        scores = np.asarray(parity["scores"][case["distribution"]], dtype=np.float64)
        n, k, prune = case["n_fewshot"], case["k"], case["hard_prune"]
        sel = stratified(scores, n, k, prune, np.random.default_rng(0))
        sizes, budgets = sel.groups.sizes.tolist(), sel.groups.budgets.tolist()
        paper_sizes, paper_budgets = case["stratum_sizes"], case["budget_per_stratum"]
        label = f"{case['distribution']} n={n} k={k} prune={prune}"
        # The reference loop reproduces the paper's own budgets from the paper's own sizes.
        assert paper_allocation(paper_sizes, n) == paper_budgets, label
        assert len(sel.indices) == n and sum(budgets) == n, label
        assert np.bincount(sel.group, minlength=k).tolist() == budgets, label  # what each stratum gave
        # Where the paper's floors leave a remainder, handing it out is the only difference to allow.
        leftover = n - case["total_selected"]
        assert sel.groups.remainder == 0 and leftover >= 0, label
        if not _is_lost_max_case(case):
            assert sizes == paper_sizes, label
            if leftover == 0:
                assert budgets == paper_budgets, label
            else:
                diff = np.asarray(budgets) - np.asarray(paper_budgets)
                assert diff.min() >= 0 and diff.sum() == leftover, label
            exact += 1
            continue
        # lognormal, k = 50: the paper's float32 last edge lost the highest remaining score (4,499 of 4,500).
        n_kept = len(scores) - math.floor(prune * len(scores))
        assert sum(paper_sizes) == n_kept - 1 and sum(sizes) == n_kept, label
        assert sizes[:-1] == paper_sizes[:-1] and sizes[-1] == paper_sizes[-1] + 1, label
        kept = scores[hard_prune(scores, prune)]
        assert sel.groups.edges[-1] == kept.max()
        assert budgets == paper_allocation(sizes, n), label  # same rule; budgets follow from the one extra sample
    assert exact == len(parity["cases"]) - 2


def test_paper_loop_never_leaves_a_remainder_when_the_strata_can_hold_n():
    """Why ``allocate``'s remainder step is a guard: smallest-first floors always spend m <= sum(sizes)."""
    rng = np.random.default_rng(1)
    for _ in range(2000):
        k = int(rng.integers(1, 12))
        sizes = rng.integers(0, 30, size=k)
        if rng.random() < 0.3:
            sizes[rng.integers(k)] = 0
        m = int(rng.integers(0, sizes.sum() + 1))
        budgets, order, remainder = allocate(sizes, m)
        assert remainder == 0 and budgets.sum() == m and np.all(budgets <= sizes)
        assert budgets.tolist() == paper_allocation(sizes.tolist(), m)
        assert sizes[order].tolist() == sorted(sizes.tolist())
    budgets, _, remainder = allocate(np.array([2, 3]), 9)  # more than the strata hold: all of them, no loop
    assert budgets.tolist() == [2, 3] and remainder == 4


def test_strata_edges_keep_the_maximum_and_constant_scores():
    x = np.array([0.0, 0.1, 0.5, 1.0, 1.0])
    edges, s = strata(x, 4)
    assert edges[0] == 0.0 and edges[-1] == 1.0 and s.tolist() == [0, 0, 1, 3, 3]
    edges, s = strata(np.full(5, 0.3), 3)
    assert s.tolist() == [0] * 5
    np.testing.assert_array_equal(minmax(np.full(4, 7.0)), np.zeros(4))
    np.testing.assert_allclose(overall_score(np.array([1.0, 3.0]), np.array([5.0, 5.0]), 0.3), [0.0, 1.0])
    np.testing.assert_allclose(overall_score(np.array([1.0, 3.0]), np.array([2.0, 0.0]), 0.5), [0.5, 1.0])
    assert hard_prune(np.array([0.1, 0.9, 0.9, 0.3]), 0.5).tolist() == [0, 3]


def _candidates(n: int, seed: int = 0, dim: int = 4) -> Candidates:
    rng = np.random.default_rng(seed)
    return Candidates(
        n,
        influence=rng.standard_normal(n),
        effort=rng.lognormal(size=n),
        grand=rng.random(n),
        el2n=rng.random(n),
        user_repr=rng.standard_normal((n, dim)),
        interactions=rng.integers(1, 40, n),
    )


def test_exactly_n_over_many_settings():
    rng = np.random.default_rng(2)
    for trial in range(150):
        size = int(rng.integers(5, 400))
        cands = _candidates(size, seed=trial)
        prune = float(rng.choice([0.0, 0.05, 0.1, 0.3, 0.6]))
        kept = size - math.floor(prune * size)
        n = int(rng.integers(1, kept + 1))
        k = int(rng.integers(1, 60))
        for strategy in ("dealrec", "no_effort", "ccs"):
            cfg = SelectConfig(strategy=strategy, n=n, k=k, hard_prune=prune, seed=trial)
            sel = select(cands, cfg)
            assert len(sel.indices) == n == len(np.unique(sel.indices)) == sel.groups.budgets.sum()
            assert np.all(sel.groups.budgets <= sel.groups.sizes) and sel.groups.sizes.sum() == kept
            assert np.all(np.diff(sel.indices) > 0)
    with pytest.raises(ConfigError, match=r"n=91 exceeds the 90 candidates left after hard_prune=0.1"):
        select(_candidates(100), SelectConfig(n=91))


def test_ratio_and_the_hard_prune_never_picks_the_top():
    cands = _candidates(1000)
    sel = select(cands, SelectConfig(n=None, ratio=0.05, hard_prune=0.2))
    assert len(sel.indices) == 50
    score = overall_score(cands.influence, cands.effort, 0.3)
    assert score[sel.indices].max() < np.sort(score)[-200]


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_returns_n_distinct_candidates_deterministically(strategy):
    cands = _candidates(500)
    cfg = SelectConfig(strategy=strategy, n=64, k=10)
    a, b = select(cands, cfg), select(cands, cfg)
    assert len(a.indices) == 64 == len(np.unique(a.indices))
    assert a.indices.min() >= 0 and a.indices.max() < 500
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.group, b.group)
    other = select(cands, SelectConfig(strategy=strategy, n=64, k=10, seed=1))
    if strategy in ("grand", "el2n", "greedy"):  # deterministic rankings: the seed does not matter
        np.testing.assert_array_equal(a.indices, other.indices)
    else:
        assert not np.array_equal(a.indices, other.indices)


def test_baseline_rankings_and_ablations():
    cands = _candidates(300)
    n = 30
    top = lambda s: np.sort(np.argsort(-s, kind="stable")[:n])  # noqa: E731
    np.testing.assert_array_equal(select(cands, SelectConfig(strategy="grand", n=n)).indices, top(cands.grand))
    np.testing.assert_array_equal(select(cands, SelectConfig(strategy="el2n", n=n)).indices, top(cands.el2n))
    overall = overall_score(cands.influence, cands.effort, 0.3)
    np.testing.assert_array_equal(select(cands, SelectConfig(strategy="greedy", n=n)).indices, top(overall))
    # Ablations stratify their own score: only effort, or only influence.
    no_inf = select(cands, SelectConfig(strategy="no_influence", n=n))
    np.testing.assert_allclose(no_inf.score, 0.3 * minmax(cands.effort))
    no_eff = select(cands, SelectConfig(strategy="no_effort", n=n))
    np.testing.assert_allclose(no_eff.score, minmax(cands.influence))
    ccs = select(cands, SelectConfig(strategy="ccs", n=n))
    np.testing.assert_allclose(ccs.score, cands.el2n)
    assert ccs.groups.pruned == 30


def test_recranker_spreads_over_clusters_and_prefers_active_users():
    rng = np.random.default_rng(3)
    centres = np.array([[10.0, 0], [0, 10.0], [-10.0, 0]])
    blob = np.repeat([0, 1, 2], [600, 300, 100])
    reps = centres[blob] + rng.standard_normal((1000, 2))
    interactions = np.where(rng.random(1000) < 0.5, 1, 30)
    cands = Candidates(1000, user_repr=reps, interactions=interactions)
    sel = select(cands, SelectConfig(strategy="recranker", n=100, clusters=3))
    assert sorted(sel.groups.sizes.tolist()) == [100, 300, 600]
    assert sorted(sel.groups.budgets.tolist()) == [10, 30, 60]  # proportional to the clusters
    assert np.bincount(sel.group, minlength=3).tolist() == sel.groups.budgets.tolist()
    assert (interactions[sel.indices] == 30).mean() > 0.6  # weights log(1 + 30) vs log(2)
    assert proportional(np.array([5, 3, 2]), 7).tolist() == [4, 2, 1]


def test_missing_or_bad_inputs_name_the_score():
    with pytest.raises(InputError, match="'influence'"):
        select(Candidates(10, effort=np.ones(10)), SelectConfig(n=2))
    with pytest.raises(InputError, match="non-finite"):
        select(Candidates(3, influence=np.array([1.0, np.nan, 2.0]), effort=np.ones(3)), SelectConfig(n=1, k=2))
    with pytest.raises(ConfigError, match=r"n=11: more than the 10 candidates"):
        select(Candidates(10), SelectConfig(strategy="random", n=11))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 10, "ratio": 0.1}, r"n=10 and ratio=0.1: give exactly one"),
        ({"n": None, "ratio": None}, r"n=None and ratio=None: give exactly one"),
        ({"lam": -0.1}, r"lam=-0.1: must be in \[0, 1000\]"),
        ({"lam": float("inf")}, r"lam=inf: must be in \[0, 1000\]"),
        ({"lam": float("nan")}, r"lam=nan: must be in \[0, 1000\]"),
        ({"k": 0}, r"k=0: must be in \[1, 100000\]"),
        ({"k": 10**8}, r"k=100000000: must be in \[1, 100000\] \(strata are allocated up front\)"),
        ({"hard_prune": 1.0}, r"hard_prune=1.0: must be in \[0, 1\)"),
        ({"hard_prune": -0.1}, r"hard_prune=-0.1: must be in \[0, 1\)"),
        ({"strategy": "magic"}, r"strategy='magic': choose one of \['dealrec'"),
        ({"n": 0}, r"n=0: must be >= 1"),
        ({"n": None, "ratio": 1.5}, r"ratio=1.5: must be in \(0, 1\]"),
        ({"block": "emb"}, r"block='emb'"),
    ],
)
def test_validation_messages_name_the_parameter(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SelectConfig(**kwargs)


def test_size_from_n_or_ratio():
    assert SelectConfig().size(5000) == 1024
    assert SelectConfig(n=None, ratio=0.02).size(49_999) == 999
    with pytest.raises(ConfigError, match=r"n=1024: more than the 1000 candidates"):
        SelectConfig().size(1000)
    with pytest.raises(ConfigError, match=r"ratio=0.001: selects no sample"):
        SelectConfig(n=None, ratio=0.001).size(100)


# ---------------------------------------------------------------------------------------------------------
# quantile: top pool share, equal-count strata of the ranks
# ---------------------------------------------------------------------------------------------------------
def naive_quantile_strata(score: np.ndarray, n: int, k: int, pool: float) -> tuple[list[list[int]], list[int]]:
    """Members of each stratum (lowest scores first) and the paper's budgets, written plainly with a full sort."""
    size = max(math.ceil(pool * len(score)), n)
    best_first = sorted(range(len(score)), key=lambda i: (-score[i], i))[:size]
    k = min(k, size)
    groups: list[list[int]] = [[] for _ in range(k)]
    for rank, row in enumerate(best_first):
        groups[k - 1 - (rank * k) // size].append(row)
    return groups, paper_allocation([len(g) for g in groups], n)


@pytest.mark.parametrize(
    ("n_rows", "n", "k", "pool"), [(1000, 64, 10, 0.2), (997, 50, 7, 0.1), (300, 200, 50, 0.3), (40, 10, 50, 0.5)]
)
def test_quantile_strata_match_a_plain_reference(n_rows, n, k, pool):
    rng = np.random.default_rng(n_rows)
    score = -rng.lognormal(0, 1.5, n_rows)  # a long low tail, as influence has
    score[::13] = score[0]  # ties
    groups, budgets = naive_quantile_strata(score, n, k, pool)
    sel = stratified_quantile(score, n, k, pool, seed=3)
    assert len(sel.indices) == n == len(np.unique(sel.indices))
    assert sel.groups.sizes.tolist() == [len(g) for g in groups]
    assert sel.groups.budgets.tolist() == budgets
    pool_rows = {r for g in groups for r in g}
    assert set(sel.indices.tolist()) <= pool_rows  # nothing below the pool
    for g, members in enumerate(groups):  # each stratum gives exactly its budget, from its own members
        picked = set(sel.indices[sel.group == g].tolist())
        assert len(picked) == budgets[g] and picked <= set(members)
    assert sel.groups.pruned == n_rows - len(pool_rows) and sel.groups.dropped == "low"
    edges = sel.groups.edges
    assert np.all(np.diff(edges) >= 0) and edges[-1] == score.max()


def stratified_quantile(score, n, k, pool, seed):
    from dealrec_tasks.selection import quantile_strata

    return quantile_strata(score, n, k, pool, np.random.default_rng(seed))


def test_quantile_takes_no_sample_below_the_pool_and_the_pool_grows_to_n():
    score = np.arange(100, dtype=np.float64)
    sel = stratified_quantile(score, 10, 5, 0.2, seed=0)
    assert sel.indices.min() >= 80  # the top 20
    assert sel.info["pool"] == 20
    wide = stratified_quantile(score, 30, 5, 0.2, seed=0)  # pool * N < n: the pool holds n, i.e. the top n
    np.testing.assert_array_equal(wide.indices, np.arange(70, 100))
    everything = stratified_quantile(score, 10, 5, 1.0, seed=0)  # pool 1: stratified over all ranks
    assert np.bincount(everything.group, minlength=5).tolist() == [2] * 5


def test_quantile_through_select_uses_the_overall_score():
    cands = _candidates(400)
    sel = select(cands, SelectConfig(strategy="quantile", n=40, pool=0.25, lam=0.3))
    overall = overall_score(cands.influence, cands.effort, 0.3)
    assert overall[sel.indices].min() >= np.sort(overall)[-100]
    assert sel.info["strategy"] == "quantile" and sel.info["pool"] == 100
    with pytest.raises(ConfigError, match="pool=0"):
        SelectConfig(strategy="quantile", pool=0.0)


def test_quantile_fit_prune_drops_the_worst_fitted_before_normalising():
    cands = _candidates(500, seed=3)
    cfg = SelectConfig(strategy="quantile", n=40, pool=0.3, fit_prune=0.2, k=5, seed=2)
    assert cfg.needs == ("influence", "effort", "el2n")
    assert SelectConfig(strategy="quantile").needs == ("influence", "effort")  # off by default
    sel = select(cands, cfg)
    worst = set(np.argsort(-cands.el2n, kind="stable")[:100].tolist())  # floor(0.2 * 500), highest EL2N
    assert not worst & set(sel.indices.tolist())
    fit = np.asarray(sorted(set(range(500)) - worst))
    # The same as the plain rule on the fitted rows alone, with the pool holding its share of all 500 (150 rows).
    plain = quantile_strata_of(overall_score(cands.influence[fit], cands.effort[fit], 0.3), 40, 5, 150 / 400, seed=2)
    np.testing.assert_array_equal(sel.indices, fit[plain.indices])
    assert sel.info["fit_pruned"] == 100 and sel.groups.pruned == 500 - 150
    assert set(sel.groups.kept.tolist()) <= set(fit.tolist()) and len(sel.groups.kept) == 150
    assert np.isfinite(sel.score).all() and len(sel.score) == 500
    with pytest.raises(ConfigError, match="fit_prune"):
        select(cands, SelectConfig(strategy="quantile", n=450, fit_prune=0.2))
    with pytest.raises(ConfigError, match="fit_prune=1"):
        SelectConfig(strategy="quantile", fit_prune=1.0)


def quantile_strata_of(score, n, k, pool, seed):
    from dealrec_tasks.selection import quantile_strata

    return quantile_strata(score, n, k, pool, np.random.default_rng(seed))
