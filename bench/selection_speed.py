"""Selection speed: 1024 of 1e6 synthetic scored samples, per strategy that needs no model.

Influence ~ normal, effort ~ lognormal (skewed, as measured effort scores are). Each strategy runs ``--repeats``
times on the same candidates; the table shows the best and the median wall time. Writes
bench/results/selection_speed.json. Usage: .venv/bin/python bench/selection_speed.py [--samples 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from dealrec_tasks.selection import Candidates, SelectConfig, select

OUT = Path(__file__).resolve().parents[1] / "bench" / "results"
STRATEGIES = ("dealrec", "random", "greedy", "no_influence", "no_effort")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(OUT / "selection_speed.json"))
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    cands = Candidates(
        args.samples, influence=rng.standard_normal(args.samples), effort=rng.lognormal(size=args.samples)
    )
    rows = []
    print(f"{'strategy':<14}{'best s':>10}{'median s':>10}  strata used")
    for name in STRATEGIES:
        cfg = SelectConfig(strategy=name, n=args.n)  # paper defaults: k 50, hard_prune 0.1, lambda 0.3
        times, sel = [], None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            sel = select(cands, cfg)
            times.append(time.perf_counter() - t0)
        assert sel is not None and len(np.unique(sel.indices)) == args.n
        used = int((sel.groups.budgets > 0).sum()) if sel.groups is not None else None
        rows.append({"strategy": name, "best_s": min(times), "median_s": statistics.median(times), "strata_used": used})
        print(f"{name:<14}{min(times):>10.4f}{statistics.median(times):>10.4f}  {used if used is not None else '-'}")
    result = {
        "samples": args.samples,
        "n": args.n,
        "repeats": args.repeats,
        "config": {"k": 50, "hard_prune": 0.1, "lam": 0.3},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__},
        "note": "shared 2-core machine, another benchmark running; wall times are upper bounds",
        "strategies": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
