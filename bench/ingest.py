"""Ingest throughput on the Games replay: import, 30-day replay, day-by-day ingest, samples.

Prints a table, writes bench/results/ingest.json and ingest.png. Checks the replay's invariants on the way
(total interactions equal to the source, zero rejects). Usage: .venv/bin/python bench/ingest.py [--days 30]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dealrec_tasks import steps  # noqa: E402
from dealrec_tasks.config import ImportConfig, IngestConfig, ReplayConfig, SamplesConfig  # noqa: E402
from dealrec_tasks.storage import Lake  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GAMES = REPO.parent / "shared" / "data" / "games"
OUT = REPO / "bench" / "results"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def same_samples_as_paper(lake: Lake, last_dt: str) -> bool:
    """The daily samples at the last replayed day equal the paper's protocol on the release (by item id)."""
    steps.samples_from_dataset(lake, "games", SamplesConfig())
    paper = lake.read("datasets/games/samples", None, "samples.parquet").to_pylist()
    daily = lake.read("samples", last_dt, "samples.parquet").to_pylist()
    vocab = {r["item_idx"]: r["item_id"] for r in lake.read("vocab", last_dt, "items.parquet").to_pylist()}
    asin = {r["item_idx"]: r["item_id"] for r in lake.read("datasets/games", None, "item_vocab").to_pylist()}

    def key(rows, to_id):
        return sorted(
            (r["sample_id"], r["split"], [to_id[i] for i in r["history"]], [to_id[i] for i in r["targets"]])
            for r in rows
        )

    return key(daily, vocab) == key(paper, asin)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--source", default=str(GAMES))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    lake = Lake(str(work / "lake"))
    try:
        t0 = time.perf_counter()
        imported = steps.import_dealrec(args.source, lake, ImportConfig(dataset="games"))
        t_import = time.perf_counter() - t0
        t0 = time.perf_counter()
        rep = steps.replay(lake, ReplayConfig(dataset="games", days=args.days))
        t_replay = time.perf_counter() - t0
        per_day = []
        for dt in steps.pending_days(lake):
            t0 = time.perf_counter()
            r = steps.ingest(lake, dt, IngestConfig())
            per_day.append({"dt": dt, "seconds": time.perf_counter() - t0, **r.counts})
        t0 = time.perf_counter()
        smp = steps.samples(lake, per_day[-1]["dt"], SamplesConfig())
        t_samples = time.perf_counter() - t0
        protocol_match = same_samples_as_paper(lake, per_day[-1]["dt"])
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = sum(d["rows_read"] for d in per_day)
    accepted = sum(d["accepted"] for d in per_day)
    rejected = sum(d["rejected"] for d in per_day)
    t_ingest = sum(d["seconds"] for d in per_day)
    result = {
        "source": args.source,
        "days": args.days,
        "source_interactions": imported.counts["interactions"],
        "replayed_interactions": rep.counts["interactions"],
        "ingested_accepted": accepted,
        "ingested_rejected": rejected,
        "totals_match": accepted == imported.counts["interactions"] and rejected == 0,
        "samples_equal_paper_protocol": protocol_match,
        "seconds": {"import": t_import, "replay": t_replay, "ingest_all_days": t_ingest, "samples": t_samples},
        "ingest_rows_per_second": rows / t_ingest,
        "peak_rss_mb": peak_rss_mb(),
        "samples_counts": smp.counts,
        "users_final": per_day[-1]["users"],
        "items_final": per_day[-1]["items"],
        "per_day": per_day,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "ingest.json").write_text(json.dumps(result, indent=2) + "\n")

    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    days = list(range(1, len(per_day) + 1))
    ax[0].bar(days, [d["rows_read"] for d in per_day], color="tab:blue")
    ax[0].set(title="Games replay: rows per day", xlabel="replayed day", ylabel="rows")
    ax[1].plot(days, [d["rows_read"] / d["seconds"] for d in per_day], marker="o", color="tab:green")
    ax[1].set(title="ingest throughput per day", xlabel="replayed day", ylabel="rows / s")
    fig.suptitle(f"{accepted:,} interactions ingested over {args.days} replayed days, {rejected} rejects")
    fig.tight_layout()
    fig.savefig(OUT / "ingest.png", dpi=110)

    print(f"{'phase':<22}{'seconds':>10}")
    for k, v in result["seconds"].items():
        print(f"{k:<22}{v:>10.2f}")
    print(f"rows ingested: {rows:,}  ({result['ingest_rows_per_second']:,.0f} rows/s)  rejects: {rejected}")
    print(f"source interactions: {imported.counts['interactions']:,}  totals match: {result['totals_match']}")
    print(f"samples at the last day: {smp.counts}  equal to the paper's protocol: {protocol_match}")
    print(f"peak RSS: {result['peak_rss_mb']:.0f} MB")
    print(f"wrote {OUT / 'ingest.json'} and {OUT / 'ingest.png'}")


if __name__ == "__main__":
    main()
