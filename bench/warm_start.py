"""Warm vs cold start of the daily surrogate on the Games replay: epochs to early stop, time, quality.

Replays Games as 30 days, trains the surrogate cold on day 29, then on day 30 both warm (from day 29's
checkpoint, the daily default) and cold. Prints a table, writes bench/results/warm_start.json.
Usage: .venv/bin/python bench/warm_start.py
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from dealrec_tasks import steps
from dealrec_tasks.config import ImportConfig, IngestConfig, ReplayConfig, SamplesConfig
from dealrec_tasks.steps.surrogate import train_surrogate
from dealrec_tasks.storage import Lake
from dealrec_tasks.surrogate.config import SurrogateConfig

REPO = Path(__file__).resolve().parents[1]
GAMES = REPO.parent / "shared" / "data" / "games"


def run(lake: Lake, dt: str, cold: bool) -> dict:
    t0 = time.perf_counter()
    result = train_surrogate(lake, dt, SurrogateConfig(cold_start=cold))
    return {"dt": dt, "cold_start": cold, "seconds": time.perf_counter() - t0, **result.counts}


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-warm-"))
    lake = Lake(str(work / "lake"))
    try:
        steps.import_dealrec(str(GAMES), lake, ImportConfig(dataset="games"))
        steps.replay(lake, ReplayConfig(dataset="games", days=30))
        for dt in steps.pending_days(lake):
            steps.ingest(lake, dt, IngestConfig())
        days = steps.log_days(lake)
        d29, d30 = days[-2], days[-1]
        for dt in (d29, d30):
            steps.samples(lake, dt, SamplesConfig())
        runs = [run(lake, d29, cold=True), run(lake, d30, cold=False), run(lake, d30, cold=True)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = REPO / "bench" / "results" / "warm_start.json"
    out.write_text(json.dumps({"runs": runs, "note": "Games replay, 30 days; day 30 adds the test items"}, indent=2))
    print(f"{'run':<26}{'epochs':>7}{'best':>6}{'seconds':>9}{'valid R@20':>11}{'test R@20':>10}{'test N@20':>10}")
    for r in runs:
        name = f"{r['dt']} {'cold' if r['cold_start'] else 'warm'}"
        print(
            f"{name:<26}{r['epochs']:>7}{r['best_epoch']:>6}{r['seconds']:>9.1f}{r['valid_recall']:>11.4f}"
            f"{r.get('test_recall@20', float('nan')):>10.4f}{r.get('test_ndcg@20', float('nan')):>10.4f}"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
