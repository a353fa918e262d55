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
    """A PNG over the gated days: each arm's metric, the champion's on the same users, the days a version was
    promoted; what a person checks to see whether the primary strategy keeps beating its random control."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = history[-1]["metric"]
    days = [h["dt"] for h in history]
    x = np.arange(len(days))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(days) + 3), 4.2))
    strategies = list(dict.fromkeys(a["strategy"] for h in history for a in h["arms"]))
    for strategy in strategies:
        ys = [next((a[metric] for a in h["arms"] if a["strategy"] == strategy), np.nan) for h in history]
        ax.plot(x, ys, "o-", lw=1.2, ms=4, label=f"arm {strategy}")
    champ = [h["champion_value"] if h["champion_same_users"] else np.nan for h in history]
    ax.plot(x, champ, "s--", color="black", lw=1, ms=4, label="champion, same users")
    promoted = [i for i, h in enumerate(history) if h["decision"] == "champion"]
    if promoted:
        ax.scatter(x[promoted], [history[i]["best"][metric] for i in promoted], s=120, facecolors="none",
                   edgecolors="tab:red", label="promoted")  # fmt: skip
    ax.set_xticks(x, days, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel(metric)
    last = history[-1]
    lift = last["lift_vs_random"]
    shown = "n/a (no random arm)" if lift is None else f"{lift:+.4g}"
    ax.set_title(f"arms and champion by day; {last['dt']}: lift vs random {shown}, {last['decision']}", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()
