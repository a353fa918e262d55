"""Paired statistics for the promotion gate: two models scored on the same users, compared user by user.

Why paired: two models evaluated on the same users share every user's difficulty, so the per-user difference
cancels it and its spread is far smaller than the spread of either model's mean. Why Student's t and not a
bootstrap: it is closed form and deterministic (a retried gate gets the same interval), fast enough to simulate
thousands of days in a test, and per-user Recall/NDCG are bounded in [0, 1], so the mean of a few hundred of them
is close to normal; ``bench/gate_power.py`` measures the promotion rate it gives under the null on zero-inflated
per-user metrics like ours, small samples included, instead of assuming it.

Pure: arrays in, dataclasses out (no lake, no MLflow).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

LEVEL = 0.95
TEST = "paired t (Student, n - 1 df), two-sided 95% interval"
POOLED_TEST = "pooled paired difference, users as clusters (cluster-robust t, G - 1 df), two-sided 95% interval"


def _t_quantile(q: float, df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(q, df))


def _t_two_sided_p(stat: float, df: int) -> float:
    from scipy.stats import t

    return float(2.0 * t.sf(abs(stat), df))


@dataclass(frozen=True)
class PairedInterval:
    """Mean of ``a - b`` over the same users with its two-sided interval; ``p`` tests a mean difference equal to
    ``null`` (the gate's margin; 0 against random). ``None`` bounds: fewer than two users, nothing to resolve."""

    test: str
    users: int
    mean: float | None
    lower: float | None
    upper: float | None
    p: float | None
    null: float = 0.0
    level: float = LEVEL

    @property
    def resolved(self) -> bool:
        return self.lower is not None

    def to_dict(self) -> dict:
        return asdict(self)


def paired_t(a: np.ndarray, b: np.ndarray, null: float = 0.0, level: float = LEVEL) -> PairedInterval:
    """Student's paired t on ``a - b`` (one value per user, same order in both)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_t: a {a.shape} and b {b.shape} must be two vectors over the same users")
    d = a - b
    n = len(d)
    if not np.all(np.isfinite(d)):
        raise ValueError("paired_t: a non-finite per-user value; refusing to decide on it")
    if n < 2:
        return PairedInterval(TEST, n, float(d.mean()) if n else None, None, None, None, null, level)
    mean = float(d.mean())
    se = float(d.std(ddof=1)) / math.sqrt(n)
    return _interval(TEST, n, mean, se, n - 1, null, level)


def _interval(test: str, users: int, mean: float, se: float, df: int, null: float, level: float) -> PairedInterval:
    if se == 0.0:  # every user differs by exactly the same amount (often: 0, two identical models)
        p = 1.0 if mean == null else 0.0
        return PairedInterval(test, users, mean, mean, mean, p, null, level)
    half = _t_quantile(0.5 + level / 2.0, df) * se
    p = _t_two_sided_p((mean - null) / se, df)
    return PairedInterval(test, users, mean, mean - half, mean + half, p, null, level)


@dataclass(frozen=True)
class PooledInterval(PairedInterval):
    """The paired difference pooled over days: ``observations`` (user, day) pairs of ``users`` distinct users."""

    observations: int = 0
    days: int = 0


def pooled_paired(days: list[tuple[np.ndarray, np.ndarray]], level: float = LEVEL) -> PooledInterval:
    """The mean per-user difference over every (day, user) pair of ``days`` (each: user ids, differences).

    A user evaluated on several days gives correlated differences, so the variance treats users as clusters (the
    sandwich estimator with the small-sample factor G / (G - 1), t with G - 1 degrees of freedom): treating every
    (day, user) pair as independent would narrow the interval for free.
    """
    ids = [np.asarray(u).astype(str) for u, _ in days]
    diffs = [np.asarray(d, dtype=np.float64) for _, d in days]
    n_days = sum(1 for d in diffs if len(d))
    if not n_days:
        return PooledInterval(POOLED_TEST, 0, None, None, None, None, 0.0, level, 0, 0)
    users = np.concatenate(ids)
    d = np.concatenate(diffs)
    if not np.all(np.isfinite(d)):
        raise ValueError("pooled_paired: a non-finite per-user difference; refusing to pool it")
    n = len(d)
    mean = float(d.mean())
    _, cluster = np.unique(users, return_inverse=True)
    g = int(cluster.max()) + 1
    if g < 2:
        return PooledInterval(POOLED_TEST, g, mean, None, None, None, 0.0, level, n, n_days)
    residual_sums = np.bincount(cluster, weights=d - mean, minlength=g)  # [G]
    se = math.sqrt(float((residual_sums**2).sum()) * g / (g - 1)) / n
    one = _interval(POOLED_TEST, g, mean, se, g - 1, 0.0, level)
    return PooledInterval(**(one.to_dict() | {"observations": n, "days": n_days}))


def verdict(pooled: PairedInterval, arm: str, control: str) -> str:
    """One line a person reads: the sign of the interval, or how long it has not been resolved."""
    days = getattr(pooled, "days", 1)
    if not pooled.resolved:
        return f"not resolved: fewer than 2 users compared ({arm} vs {control})"
    if pooled.lower > 0:
        return f"{arm} beats {control}"
    if pooled.upper < 0:
        return f"{arm} loses to {control}"
    return f"not resolved after {days} day{'s' if days != 1 else ''}"


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str


def decide(challenger_vs_champion: PairedInterval, margin: float, metric: str) -> GateDecision:
    """Promote only when the interval of challenger minus champion lies entirely above ``margin``."""
    c = challenger_vs_champion
    if not c.resolved:
        return GateDecision(False, f"{c.users} paired user(s): too few to resolve a difference; champion kept")
    shown = f"{metric} challenger - champion {c.mean:+.4f}, 95% [{c.lower:+.4f}, {c.upper:+.4f}] over {c.users} users"
    if c.lower > margin:
        return GateDecision(True, f"{shown}: lower bound above margin {margin:g}")
    if c.upper < margin:
        return GateDecision(False, f"{shown}: worse than the champion (+ margin {margin:g}); champion kept")
    return GateDecision(False, f"{shown}: not resolved above margin {margin:g}; champion kept")
