"""Statistics of the coreset-quality benchmark, shared by the benchmark and the README report (light: numpy and
scipy only, so the report does not import torch)."""

from __future__ import annotations

import numpy as np
from scipy import stats


def interval(values: list[float]) -> dict[str, float]:
    """Mean and 95% t-interval half-width over seeds."""
    x = np.asarray(values, np.float64)
    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")
    return {"mean": float(x.mean()), "ci95": half, "std": float(x.std(ddof=1)) if len(x) > 1 else 0.0, "n": len(x)}


def versus(a: list[float], b: list[float]) -> dict[str, float | bool]:
    """a - b: difference of means, its 95% Welch interval, p-value; resolved = the interval excludes 0."""
    a_, b_ = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a_) < 2 or len(b_) < 2:
        return {"diff": float(a_.mean() - b_.mean()), "ci95": float("nan"), "p": float("nan"), "resolved": False}
    va, vb = a_.var(ddof=1) / len(a_), b_.var(ddof=1) / len(b_)
    se = float(np.sqrt(va + vb))
    dof = (va + vb) ** 2 / (va**2 / (len(a_) - 1) + vb**2 / (len(b_) - 1)) if se > 0 else 1.0
    diff = float(a_.mean() - b_.mean())
    half = float(stats.t.ppf(0.975, dof) * se)
    p = float(stats.ttest_ind(a_, b_, equal_var=False).pvalue) if se > 0 else float("nan")
    return {"diff": diff, "ci95": half, "p": p, "resolved": bool(abs(diff) > half)}


def versus_value(a: list[float], value: float) -> dict[str, float | bool]:
    """mean(a) - a fixed reference (popularity), with a's 95% t-interval."""
    row = interval(a)
    diff = row["mean"] - value
    return {"diff": diff, "ci95": row["ci95"], "resolved": bool(abs(diff) > row["ci95"])}
