"""How often the promotion gate promotes when nothing is better (null rate), and when something is (power).

Simulated days, each with a champion and the day's arms evaluated on the same users. A user's per-user NDCG@20 is
drawn the way the grounded evaluation produces it: most users get 0 (no target in the top 20), the others
1/log2(rank + 2) for a rank in [0, 20). Each user has a hit probability shared by every model (some users are easy,
most are hard: Beta(a, b)), so the models' results are correlated user by user, as on a real day; under the null
every model draws from the same per-user distribution, and a planted lift raises the challenger's hit probability.

The gate's own functions decide (``dealrec_tasks.paired.paired_t`` and ``decide``), so this measures the shipped
rule. The old rule (best of the arms against the champion's mean, margin 0) is measured on the same days.
Also measured: the running verdict over random, pooled across 30 days, at its last day and at any day (peeking).

    .venv/bin/python -m bench.gate_power            # 1,000 days per setting, a few seconds
Writes bench/results/gate_power.json and .png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from dealrec_tasks.paired import decide, paired_t, pooled_paired, verdict

RESULTS = Path(__file__).resolve().parent / "results"
RANK_CUTOFF = 20


def day_values(rng: np.random.Generator, hit: np.ndarray, lift: float = 0.0) -> np.ndarray:
    """One model's per-user NDCG@20 on users with hit probabilities ``hit`` [U]; ``lift`` multiplies them."""
    p = np.clip(hit * (1.0 + lift), 0.0, 1.0)
    hits = rng.random(len(hit)) < p
    ranks = rng.integers(0, RANK_CUTOFF, len(hit))
    return np.where(hits, 1.0 / np.log2(ranks + 2.0), 0.0)


def user_hit_probabilities(rng: np.random.Generator, users: int, a: float = 0.3, b: float = 3.0) -> np.ndarray:
    """Per-user hit probabilities, mean a / (a + b) ~ 0.09: NDCG@20 around 0.04, as the demo's arms score."""
    return rng.beta(a, b, users)


def simulate(days: int, users: int, lift: float, margin: float = 0.0, seed: int = 0) -> dict[str, float]:
    """Share of ``days`` on which the gate promotes the primary arm over the champion (the primary arm's hit
    probability raised by ``lift``; the champion and a random arm drawn from the base distribution), and the share
    on which the old best-of-arms rule would have promoted."""
    rng = np.random.default_rng(seed)
    promoted = old_rule = 0
    for _ in range(days):
        hit = user_hit_probabilities(rng, users)
        champion, primary, random = day_values(rng, hit), day_values(rng, hit, lift), day_values(rng, hit)
        promoted += decide(paired_t(primary, champion, null=margin), margin, "ndcg@20").promote
        old_rule += max(primary.mean(), random.mean()) > champion.mean() + margin
    return {"promotion_rate": promoted / days, "old_rule_rate": old_rule / days}


def running_verdicts(histories: int, days: int, users: int, lift: float, seed: int = 0) -> dict[str, float]:
    """Over ``histories`` runs of ``days`` days (the same users come back each day), the share whose running
    verdict says the primary arm beats (or loses to) random on the last day, and on any day (a person who looks every
    day and stops at the first verdict)."""
    rng = np.random.default_rng(seed)
    ids = np.arange(users).astype(str)
    final_beats = final_loses = ever = 0
    for _ in range(histories):
        hit = user_hit_probabilities(rng, users)
        pooled_days, said = [], False
        for _ in range(days):
            diff = day_values(rng, hit, lift) - day_values(rng, hit)
            pooled_days.append((ids, diff))
            line = verdict(pooled_paired(pooled_days), "dealrec", "random")
            said |= not line.startswith("not resolved")
        final_beats += line == "dealrec beats random"
        final_loses += line == "dealrec loses to random"
        ever += said
    return {
        "final_beats": final_beats / histories,
        "final_loses": final_loses / histories,
        "any_day_verdict": ever / histories,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=int, default=1000, help="simulated days per setting")
    ap.add_argument("--users", type=int, nargs="+", default=[20, 200, 1000, 4000], help="test users per day")
    ap.add_argument("--lifts", type=float, nargs="+", default=[0.0, 0.1, 0.25, 0.5], help="relative hit-rate lifts")
    ap.add_argument("--histories", type=int, default=200, help="simulated 30-day histories for the running verdict")
    ap.add_argument("--out", default=str(RESULTS / "gate_power"))
    args = ap.parse_args(argv)
    started = time.perf_counter()
    rows = []
    for users in args.users:
        for lift in args.lifts:
            rate = simulate(args.days, users, lift, seed=users * 1000 + int(lift * 100))
            rows.append({"users": users, "lift": lift} | rate)
            what = "null promotion rate" if lift == 0 else f"power at lift {lift:+.0%}"
            print(f"users {users:>5}: {what:<24} {rate['promotion_rate']:.3f}  (old best-of-arms rule "
                  f"{rate['old_rule_rate']:.3f})", flush=True)  # fmt: skip
    running = []
    for lift in (0.0, 0.25):
        r = running_verdicts(args.histories, 30, 200, lift, seed=7 + int(lift * 100))
        running.append({"lift": lift, "days": 30, "users": 200} | r)
        print(f"running verdict, 30 days x 200 users, lift {lift:+.0%}: final 'beats' {r['final_beats']:.3f}, "
              f"final 'loses' {r['final_loses']:.3f}, any day {r['any_day_verdict']:.3f}", flush=True)  # fmt: skip
    result = {
        "what": "promotion rate of the paired gate (lower bound of the 95% paired t interval above margin 0)",
        "days_per_setting": args.days,
        "margin": 0.0,
        "rows": rows,
        "running_verdict": running,
        "seconds": round(time.perf_counter() - started, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".png").write_bytes(plot(result))
    print(f"wrote {out.with_suffix('.json')} and .png in {result['seconds']} s")
    return 0


def plot(result: dict) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    for users in sorted({r["users"] for r in rows}):
        mine = [r for r in rows if r["users"] == users]
        ax.plot([r["lift"] for r in mine], [r["promotion_rate"] for r in mine], "o-", label=f"{users} users")
    null_old = [r["old_rule_rate"] for r in rows if r["lift"] == 0]
    ax.axhline(0.05, color="tab:red", lw=0.8, ls="--", label="5% (the null target)")
    ax.axhline(float(np.mean(null_old)), color="0.4", lw=0.8, ls=":",
               label=f"old best-of-arms rule under the null ({np.mean(null_old):.2f})")  # fmt: skip
    ax.set_xlabel("planted relative lift of the primary arm's hit rate (0: the null)")
    ax.set_ylabel(f"share of {result['days_per_setting']} simulated days promoted")
    ax.set_ylim(0, 1.02)
    ax.set_title("paired gate: promotion rate by lift and test users", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


if __name__ == "__main__":
    raise SystemExit(main())
