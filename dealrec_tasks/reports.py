"""Coreset report: item / user-activity coverage of a selection and its figure (report.png).

Pure (tables and arrays in, a dict or PNG bytes out, no lake access), so the select step only wires inputs to the
lake, and the figure can be tested or redrawn without one. matplotlib is imported inside the figure function (Agg
backend): the import is slow and only the step that draws needs it.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dealrec_tasks.selection import SelectConfig, Selection, hard_prune

ACTIVITY_BINS = np.array([1, 2, 3, 5, 9, 17, 33, 2**62])  # interactions per user: 1, 2, 3-4, 5-8, ...
ACTIVITY_LABELS = ["1", "2", "3-4", "5-8", "9-16", "17-32", "33+"]


def _items(train: pa.Table, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct items of the rows' histories + targets, and distinct targets."""
    sub = train.take(pa.array(rows, pa.int64()))
    hist = pc.list_flatten(sub.column("history")).to_numpy(zero_copy_only=False)
    target = sub.column("target").to_numpy()
    return np.unique(np.concatenate([hist, target])), np.unique(target)


def coverage(train: pa.Table, chosen: np.ndarray, random_rows: np.ndarray, interactions: np.ndarray) -> dict[str, Any]:
    """Items and user-activity groups covered by the coreset, a random selection of the same size, and all."""
    everything = np.arange(train.num_rows)
    out: dict[str, Any] = {"items": {}, "target_items": {}, "users_by_activity": {"bins": ACTIVITY_LABELS}}
    for name, rows in (("coreset", chosen), ("random", random_rows), ("candidates", everything)):
        items, targets = _items(train, rows)
        out["items"][name] = len(items)
        out["target_items"][name] = len(targets)
        hist, _ = np.histogram(interactions[rows], ACTIVITY_BINS)
        out["users_by_activity"][name] = hist.tolist()
    return out


def coreset_report_png(
    sel: Selection, cfg: SelectConfig, cov: dict[str, Any], interactions: np.ndarray, dt: str
) -> bytes:
    """A PNG: the score distribution with strata edges and per-stratum takes; item and user coverage vs random."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    ax = axes[0]
    g = sel.groups
    if g is not None and g.kind == "stratum" and sel.score is not None:
        score = sel.score
        kept = np.zeros(len(score), bool)
        kept[hard_prune(score, cfg.hard_prune) if g.kept is None else g.kept] = True
        edges = g.edges
        ax.hist(score[kept], bins=edges, color="0.75", label=f"candidates ({int(kept.sum())})")
        if g.pruned:
            what = "hard-pruned" if g.dropped == "top" else "below the pool"
            ax.hist(score[~kept], bins=30, color="tab:red", alpha=0.6, label=f"{what} ({g.pruned})")
        ax.hist(score[sel.indices], bins=edges, color="tab:blue", label=f"selected ({len(sel.indices)})")
        for e in edges:
            ax.axvline(e, color="0.4", lw=0.3)
        ax.set_yscale("log")
        ax.set_xlabel("selection score (strata edges as thin lines)")
        ax.set_ylabel("samples")
        twin = ax.twinx()
        centres = (edges[:-1] + edges[1:]) / 2
        twin.plot(centres, g.budgets, "o-", color="tab:green", ms=3, lw=1, label="taken per stratum")
        twin.set_ylabel("taken per stratum", color="tab:green")
        twin.set_ylim(bottom=0)
        if len(centres) <= 12:
            for x, b in zip(centres, g.budgets):
                twin.annotate(str(int(b)), (x, b), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=7)
        ax.legend(loc="upper right", fontsize=7)
        ax.set_title(f"{cfg.strategy}: {len(edges) - 1} strata, {int((g.budgets > 0).sum())} used", fontsize=10)
    elif g is not None and g.kind == "cluster":
        x = np.arange(len(g.sizes))
        ax.bar(x - 0.2, g.sizes, 0.4, color="0.7", label="users in cluster")
        ax.bar(x + 0.2, g.budgets, 0.4, color="tab:blue", label="selected")
        ax.set_yscale("log")
        ax.set_xlabel("user cluster (k-means)")
        ax.set_ylabel("samples")
        ax.legend(fontsize=7)
        ax.set_title(f"{cfg.strategy}: {len(g.sizes)} clusters", fontsize=10)
    else:
        values = sel.score if sel.score is not None else interactions.astype(np.float64)
        what = "selection score" if sel.score is not None else "interactions per user"
        bins = np.histogram_bin_edges(values, 50)
        ax.hist(values, bins=bins, color="0.75", label="candidates")
        ax.hist(values[sel.indices], bins=bins, color="tab:blue", label=f"selected ({len(sel.indices)})")
        ax.set_yscale("log")
        ax.set_xlabel(what)
        ax.set_ylabel("samples")
        ax.legend(fontsize=7)
        ax.set_title(f"{cfg.strategy}: no strata", fontsize=10)

    ax = axes[1]
    names = ("coreset", "random", "candidates")
    colours = ("tab:blue", "tab:orange", "0.6")
    for j, key in enumerate(("items", "target_items")):
        for i, (name, colour) in enumerate(zip(names, colours)):
            v = cov[key][name]
            ax.bar(j + (i - 1) * 0.27, v, 0.27, color=colour, label=name if j == 0 else None)
            ax.annotate(
                str(v), (j + (i - 1) * 0.27, v), textcoords="offset points", xytext=(0, 2), ha="center", fontsize=7
            )
    ax.set_xticks([0, 1], ["items in histories + targets", "target items"])
    ax.set_ylabel("distinct items")
    ax.set_title(f"item coverage (random: same size, seed {cfg.seed + 1})", fontsize=10)
    ax.legend(fontsize=7)

    ax = axes[2]
    x = np.arange(len(ACTIVITY_LABELS))
    for i, (name, colour) in enumerate(zip(names, colours)):
        counts = np.asarray(cov["users_by_activity"][name], dtype=np.float64)
        ax.bar(x + (i - 1) * 0.27, counts / max(counts.sum(), 1), 0.27, color=colour, label=name)
    ax.set_xticks(x, ACTIVITY_LABELS)
    ax.set_xlabel("interactions of the user (history + target)")
    ax.set_ylabel("share of selected users")
    ax.set_title("user coverage by activity", fontsize=10)
    ax.legend(fontsize=7)

    fig.suptitle(f"coreset dt={dt}: {len(sel.indices)} of {len(interactions)} training samples", fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def gate_history_png(history: list[dict[str, Any]]) -> bytes:
    """``gate_history_figure`` as PNG bytes (no timestamp: the same history gives the same bytes)."""
    import matplotlib.pyplot as plt

    fig = gate_history_figure(history)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def gate_history_figure(history: list[dict[str, Any]]):
    """The gated days' figure. Left: each arm's mean metric, the champion's on the same users, the days a version
    was promoted. Right: the primary arm minus random per day with its paired 95% interval, and the running estimate
    over all days so far: what a person checks to see whether the primary strategy beats its random control."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = history[-1]["metric"]
    days = [h["dt"] for h in history]
    x = np.arange(len(days))
    fig, (ax, lift_ax) = plt.subplots(1, 2, figsize=(max(11.0, 1.2 * len(days) + 6), 4.4))
    strategies = list(dict.fromkeys(a["strategy"] for h in history for a in h["arms"]))
    for strategy in strategies:
        ys = [next((a[metric] for a in h["arms"] if a["strategy"] == strategy), np.nan) for h in history]
        ax.plot(x, ys, "o-", lw=1.2, ms=4, label=f"arm {strategy}")
    champ = [h["champion_value"] if h.get("champion_same_users") else np.nan for h in history]
    ax.plot(x, champ, "s--", color="black", lw=1, ms=4, label="champion, same users")
    promoted = [i for i, h in enumerate(history) if h["decision"] == "champion"]
    if promoted:
        ys = [history[i]["arms"][0][metric] for i in promoted]
        ax.scatter(x[promoted], ys, s=120, facecolors="none", edgecolors="tab:red", label="primary promoted")
    ax.set_xticks(x, days, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel(f"{metric} (mean over the day's test users)")
    ax.set_title(f"arms and champion by day; {days[-1]}: {history[-1]['decision']}", fontsize=10)
    ax.legend(fontsize=7)

    def bounds(key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = [h.get(key) or {} for h in history]
        get = lambda r, k: np.nan if r.get(k) is None else r[k]  # noqa: E731
        return tuple(np.array([get(r, k) for r in rows], dtype=np.float64) for k in ("mean", "lower", "upper"))

    mean, lo, hi = bounds("primary_vs_random")
    have = np.isfinite(mean)
    primary = history[-1]["arms"][0]["strategy"]
    if have.any():
        err = np.vstack([mean - np.where(np.isfinite(lo), lo, mean), np.where(np.isfinite(hi), hi, mean) - mean])
        lift_ax.errorbar(x[have], mean[have], yerr=err[:, have], fmt="o", color="tab:blue", capsize=3,
                         label="that day, 95% interval")  # fmt: skip
        run_mean, run_lo, run_hi = bounds("running_vs_random")
        lift_ax.plot(x, run_mean, "s-", color="tab:green", lw=1.2, ms=3, label="running estimate, all days so far")
        lift_ax.fill_between(x, run_lo, run_hi, color="tab:green", alpha=0.15, label="running 95% interval")
    else:
        lift_ax.text(0.5, 0.5, "no random arm on these days", ha="center", va="center", transform=lift_ax.transAxes)
    lift_ax.axhline(0.0, color="0.3", lw=0.8)
    lift_ax.set_xticks(x, days, rotation=45, ha="right", fontsize=7)
    lift_ax.set_xlim(-0.5, len(days) - 0.5)
    lift_ax.set_ylabel(f"{metric}: {primary} minus random (paired)")
    shown = (history[-1].get("running_vs_random") or {}).get("verdict", "no random arm")
    lift_ax.set_title(f"{primary} vs random: {shown}", fontsize=10)
    lift_ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
