"""A projection (not a measurement) of one day's cycle at 1M and 10M users with N workers, from the per-step costs
that ``bench/daily_growth.py`` measured on this machine (``bench/results/daily_growth.json``, the "after" lake).

Each step's seconds are fitted, over the run's days, to the work that step does (least squares, non-negative):

- ingest: a constant (process start-up, the day's logs: about constant in the run) + per user (the user map read);
- samples, merge-effort, select: a constant + per user or training sample;
- compact: a constant + per interaction, on the days it writes a snapshot (one day in 7);
- surrogate: a constant + per training sample and epoch (epochs: the run's warm-started mean);
- influence (one shard): a constant + per training sample; the solve: a constant;
- effort: a constant + per new prompt scored + per training sample (the cache lookup and the scores).

A day at U users with a share ``active`` of them active then costs those fits at U, with the influence and effort
shards divided over N workers (their start-up paid on each), and compaction's cost spread over its 7 days. The
rates are this CPU's with the embedded 2-layer model: a 7B model on a GPU changes effort's (and the surrogate's)
rates, not the shape; ``--effort-prompts-per-s`` replaces the measured effort rate by yours (e.g. from
``bench/effort.py`` on your GPU). Writes ``bench/results/daily_cost_projection.json`` and ``.png``.

Usage: .venv/bin/python bench/project_daily_cost.py [--active 0.01] [--workers 1,4,16] [--effort-prompts-per-s R]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.optimize import nnls  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"
SHARDED = ("influence", "effort")
COMPACT_EVERY = 7


def fit(rows: list[dict], step: str, *features: str) -> dict:
    """seconds = const + sum(rate_f * f), non-negative, over the days that ran ``step``."""
    days = [r for r in rows if step in r]
    x = np.array([[1.0] + [float(r[f]) for f in features] for r in days])
    y = np.array([r[step]["s"] for r in days])
    coef, _ = nnls(x, y)
    residual = y - x @ coef
    rates = {f"per_{f}": float(c) for f, c in zip(features, coef[1:])}
    return {"const_s": float(coef[0]), **rates, "days": len(days), "max_abs_residual_s": float(np.abs(residual).max())}


def measured_rows(result: dict) -> list[dict]:
    """The "after" lake's per-day records with the features each fit uses."""
    rows = []
    for day in result["days"]:
        r = dict(day["after"])
        r["train_samples"] = r.get("train_samples") or 0
        r["scored"] = r.get("scored") or 0
        if "surrogate" in r:
            r["sample_epochs"] = r["train_samples"] * r["surrogate_epochs"]
        if "compact" in r and "written True" not in r["compact"]["out"]:
            r.pop("compact")  # not due: only start-up, counted in its constant below
        rows.append(r)
    return rows


def fits(result: dict) -> dict:
    rows = measured_rows(result)
    compacts = [d["after"]["compact"] for d in result["days"] if "compact" in d["after"]]
    not_due = [c["s"] for c in compacts if "written False" in c["out"]]
    full = [r for r in rows if "surrogate" in r]
    return {
        "ingest": fit(rows, "ingest", "users"),
        "compact_written": fit(rows, "compact", "interactions"),
        "compact_not_due_s": float(np.median(not_due)) if not_due else 0.0,
        "samples": fit(rows, "samples", "users"),
        "surrogate": fit(full, "surrogate", "sample_epochs"),
        "surrogate_epochs_warm_mean": float(np.mean([r["surrogate_epochs"] for r in full])),
        "influence_solve": fit(full, "influence_solve"),
        "influence": fit(full, "influence", "train_samples"),
        "merge_influence": fit(full, "merge_influence", "train_samples"),
        "effort": fit(rows, "effort", "scored", "train_samples"),
        "merge_effort": fit(rows, "merge_effort", "train_samples"),
        "select": fit(full, "select", "train_samples"),
        "interactions_per_user": rows[-1]["interactions"] / rows[-1]["users"],
        "train_samples_per_user": rows[-1]["train_samples"] / rows[-1]["users"],
    }


def project(f: dict, users: int, active: float, workers: int, effort_rate: float | None) -> dict[str, float]:
    """Seconds per step of one day at ``users`` on ``workers`` parallel workers (influence and effort shards)."""
    samples = users * f["train_samples_per_user"]
    interactions = users * f["interactions_per_user"]
    new_prompts = users * active
    per_prompt = 1.0 / effort_rate if effort_rate else f["effort"]["per_scored"]
    effort_work = new_prompts * per_prompt + samples * f["effort"]["per_train_samples"]
    compact = f["compact_written"]["const_s"] + f["compact_written"]["per_interactions"] * interactions
    return {
        "ingest": f["ingest"]["const_s"] + f["ingest"]["per_users"] * users,
        "compact": (compact + (COMPACT_EVERY - 1) * f["compact_not_due_s"]) / COMPACT_EVERY,
        "samples": f["samples"]["const_s"] + f["samples"]["per_users"] * users,
        "surrogate": f["surrogate"]["const_s"]
        + f["surrogate"]["per_sample_epochs"] * samples * f["surrogate_epochs_warm_mean"],
        "influence_solve": f["influence_solve"]["const_s"],
        "influence": f["influence"]["const_s"] + f["influence"]["per_train_samples"] * samples / workers,
        "merge_influence": f["merge_influence"]["const_s"] + f["merge_influence"]["per_train_samples"] * samples,
        "effort": f["effort"]["const_s"] + effort_work / workers,
        "merge_effort": f["merge_effort"]["const_s"] + f["merge_effort"]["per_train_samples"] * samples,
        "select": f["select"]["const_s"] + f["select"]["per_train_samples"] * samples,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--active", type=float, default=0.01, help="share of the users active (new prompts) per day")
    ap.add_argument("--workers", default="1,4,16", help="parallel workers for the influence and effort shards")
    ap.add_argument("--users", default="1000000,10000000")
    ap.add_argument("--effort-prompts-per-s", type=float, default=None, help="your effort rate per worker")
    args = ap.parse_args()
    result = json.loads((RESULTS / "daily_growth.json").read_text())
    f = fits(result)
    workers = [int(w) for w in args.workers.split(",")]
    table = []
    for users in (int(u) for u in args.users.split(",")):
        for n in workers:
            steps = project(f, users, args.active, n, args.effort_prompts_per_s)
            total = sum(steps.values())
            top = max(steps, key=steps.get)
            table.append({"users": users, "workers": n, "day_s": round(total, 1), "dominant": top,
                          "dominant_share": round(steps[top] / total, 3),
                          "steps_s": {k: round(v, 1) for k, v in steps.items()}})  # fmt: skip
    out = {
        "label": "PROJECTION from the per-step fits of bench/results/daily_growth.json (this CPU, embedded model)",
        "measured_run": result["config"],
        "active_share": args.active,
        "effort_prompts_per_s": args.effort_prompts_per_s,
        "fits": f,
        "days": table,
    }
    (RESULTS / "daily_cost_projection.json").write_text(json.dumps(out, indent=2) + "\n")
    plot(table, RESULTS / "daily_cost_projection.png")
    for row in table:
        print(f"{row['users']:>10,} users, {row['workers']:>2} workers: {row['day_s'] / 3600:7.2f} h a day; "
              f"{row['dominant']} {row['dominant_share']:.0%}")  # fmt: skip
    print(f"wrote {RESULTS / 'daily_cost_projection.json'} and .png")


def plot(table: list[dict], path: Path) -> None:
    names = list(table[0]["steps_s"])
    sizes = sorted({r["users"] for r in table})
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 5), squeeze=False)
    for ax, users in zip(axes[0], sizes):
        rows = [r for r in table if r["users"] == users]
        bottom = np.zeros(len(rows))
        for i, name in enumerate(names):
            hours = np.array([r["steps_s"][name] / 3600 for r in rows])
            ax.bar(range(len(rows)), hours, bottom=bottom, label=name, color=plt.cm.tab10(i % 10))
            bottom += hours
        ax.set_xticks(range(len(rows)), [f"{r['workers']} worker(s)" for r in rows])
        ax.set_ylabel("hours per day")
        ax.set_title(f"{users:,} users (PROJECTION)")
        ax.legend(fontsize=7)
    fig.suptitle("One day's cycle projected from the per-step rates measured by bench/daily_growth.py "
                 "(this CPU, embedded model)", fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)


if __name__ == "__main__":
    main()
