"""The coreset report without a lake: coverage against a naive reference, and the figure for each kind of selection."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from dealrec_tasks import reports
from dealrec_tasks.reports import ACTIVITY_BINS, ACTIVITY_LABELS, coreset_report_png, coverage
from dealrec_tasks.selection import Candidates, SelectConfig, random_baseline, select

# (history, target) per candidate row; interactions = len(history) + 1, as the step counts them.
ROWS = [
    ([1, 2, 3], 4),
    ([], 5),
    ([2, 2, 6], 1),
    ([7], 7),
    ([1, 8, 9, 10, 11, 12, 13, 14], 15),
    ([3], 2),
    ([16] * 20, 17),
    ([4, 5], 5),
    (list(range(20, 60)), 60),
    ([], 1),
]


def _train(rows: list[tuple[list[int], int]]) -> tuple[pa.Table, np.ndarray]:
    table = pa.table(
        {
            "history": pa.array([h for h, _ in rows], pa.list_(pa.int32())),
            "target": pa.array([t for _, t in rows], pa.int32()),
        }
    )
    return table, np.asarray([len(h) + 1 for h, _ in rows], dtype=np.int64)


def _bin(n: int) -> int:
    """Index of the activity bin of n interactions, by a linear scan of the edges."""
    for i in range(len(ACTIVITY_LABELS)):
        if ACTIVITY_BINS[i] <= n < ACTIVITY_BINS[i + 1]:
            return i
    raise AssertionError(n)


def _naive(rows: list[tuple[list[int], int]], picks: list[int]) -> tuple[int, int, list[int]]:
    items = {i for r in picks for i in rows[r][0]} | {rows[r][1] for r in picks}
    targets = {rows[r][1] for r in picks}
    hist = [0] * len(ACTIVITY_LABELS)
    for r in picks:
        hist[_bin(len(rows[r][0]) + 1)] += 1
    return len(items), len(targets), hist


def test_coverage_matches_a_naive_count():
    train, interactions = _train(ROWS)
    chosen, rand = np.array([0, 2, 6, 8]), np.array([1, 3, 5, 9])
    got = coverage(train, chosen, rand, interactions)
    assert got["users_by_activity"]["bins"] == ACTIVITY_LABELS
    for name, picks in (("coreset", chosen), ("random", rand), ("candidates", np.arange(len(ROWS)))):
        items, targets, hist = _naive(ROWS, picks.tolist())
        assert got["items"][name] == items, name
        assert got["target_items"][name] == targets, name
        assert got["users_by_activity"][name] == hist, name
    # Hand-checked anchors of the reference itself: rows 0, 2, 6, 8 hold items 1-4, 6, 16, 17, 20-60.
    assert got["items"]["coreset"] == 7 + 41 and got["target_items"]["coreset"] == 4
    assert got["users_by_activity"]["candidates"] == [2, 2, 3, 0, 1, 1, 1]


def test_coverage_on_random_histories():
    rng = np.random.default_rng(1)
    rows = [(rng.integers(1, 50, rng.integers(0, 70)).tolist(), int(rng.integers(1, 50))) for _ in range(200)]
    train, interactions = _train(rows)
    chosen, rand = np.sort(rng.choice(200, 30, replace=False)), random_baseline(200, 30, 7)
    got = coverage(train, chosen, rand, interactions)
    for name, picks in (("coreset", chosen), ("random", rand), ("candidates", np.arange(200))):
        assert (got["items"][name], got["target_items"][name], got["users_by_activity"][name]) == _naive(
            rows, picks.tolist()
        )


@pytest.mark.parametrize(
    ("strategy", "kind"), [("dealrec", "stratum"), ("quantile", "stratum"), ("recranker", "cluster"), ("random", None)]
)
def test_report_png_for_each_kind_of_selection(strategy, kind):
    """Strata (with the hard-pruned / below-the-pool rows), clusters, and no groups each draw their first panel."""
    rng = np.random.default_rng(0)
    n_cand = 120
    rows = [(rng.integers(1, 40, rng.integers(0, 30)).tolist(), int(rng.integers(1, 40))) for _ in range(n_cand)]
    train, interactions = _train(rows)
    cands = Candidates(
        n_cand,
        influence=rng.standard_normal(n_cand),
        effort=rng.lognormal(size=n_cand),
        interactions=interactions,
        user_repr=rng.standard_normal((n_cand, 4)),
    )
    cfg = SelectConfig(strategy=strategy, n=20, k=5, clusters=3, pool=0.5)
    sel = select(cands, cfg)
    assert (sel.groups.kind if sel.groups is not None else None) == kind
    cov = coverage(train, sel.indices, random_baseline(n_cand, 20, cfg.seed + 1), interactions)
    png = coreset_report_png(sel, cfg, cov, interactions, "2026-01-04")
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    assert png == coreset_report_png(sel, cfg, cov, interactions, "2026-01-04")  # no timestamp: reruns are no-ops


def test_the_gate_history_plot_draws_every_arm_the_champion_and_the_paired_lift_over_days():
    def day(dt, dealrec, random, champion, decision, lift=None, running=None):
        return {
            "dt": dt,
            "metric": "ndcg@20",
            "arms": [{"strategy": "dealrec", "ndcg@20": dealrec}, {"strategy": "random", "ndcg@20": random}],
            "champion_value": champion,
            "champion_same_users": champion is not None,
            "decision": decision,
            "primary_vs_random": lift,
            "running_vs_random": running,
        }

    history = [
        day("2026-01-01", 0.10, 0.09, None, "champion", {"mean": 0.01, "lower": -0.02, "upper": 0.04},
            {"mean": 0.01, "lower": -0.02, "upper": 0.04, "verdict": "not resolved after 1 day"}),
        day("2026-01-02", 0.11, 0.10, 0.095, "champion"),  # no random arm that day
        day("2026-01-03", 0.10, 0.12, 0.115, "kept", {"mean": -0.02, "lower": -0.03, "upper": -0.01},
            {"mean": -0.01, "lower": -0.015, "upper": -0.005, "verdict": "dealrec loses to random"}),
    ]  # fmt: skip
    fig = reports.gate_history_figure(history)
    arms_ax, lift_ax = fig.axes
    lines = {line.get_label(): line.get_ydata() for line in arms_ax.get_lines()}
    assert list(lines["arm dealrec"]) == [0.10, 0.11, 0.10] and list(lines["arm random"]) == [0.09, 0.10, 0.12]
    assert np.isnan(lines["champion, same users"][0]) and list(lines["champion, same users"][1:]) == [0.095, 0.115]
    promoted = [c for c in arms_ax.collections if c.get_label() == "primary promoted"]
    assert promoted and promoted[0].get_offsets().tolist() == [[0, 0.10], [1, 0.11]]
    [daily] = lift_ax.containers  # the errorbar: the daily estimates and their intervals
    points, _, (bars,) = daily
    assert points.get_xdata().tolist() == [0, 2] and points.get_ydata().tolist() == [0.01, -0.02]
    assert np.allclose([seg[:, 1] for seg in bars.get_segments()], [[-0.02, 0.04], [-0.03, -0.01]])
    running = {line.get_label(): line for line in lift_ax.get_lines()}["running estimate, all days so far"]
    assert running.get_ydata()[[0, 2]].tolist() == [0.01, -0.01] and np.isnan(running.get_ydata()[1])
    assert lift_ax.get_title() == "dealrec vs random: dealrec loses to random"
    png = reports.gate_history_png(history)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and png == reports.gate_history_png(history)
    assert reports.gate_history_png(history[:1]) != png
