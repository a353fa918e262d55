"""Daily cost against the age of the lake (issue 19): every day of a synthetic log, each step as its own `dealrec`
process, timed, with that process's peak RSS, on two lakes fed the same logs side by side:

- ``before``: effort scores every training sample each day (``effort --no-cache``: today's code path without the
  effort cache, as before it existed), and the surrogate starts cold every day (``--cold-start``);
- ``after``: effort scores only the prompts the cache lacks, and the surrogate warm-starts from the previous day
  (both the defaults).

Ingest and samples run the same code on both lakes (incremental ingest, item 2 of the issue, is not built: they are
measured to show how they grow). Users arrive and return (``SyntheticConfig.return_rate``), so the lake grows while
the active users per day stay about constant. Writes ``bench/results/daily_growth.json`` and ``.png``.

Usage: .venv/bin/python bench/daily_growth.py [--days 16] [--users 12000] [--events 1500] [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt_mod
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dealrec_tasks import steps  # noqa: E402
from dealrec_tasks.config import SyntheticConfig  # noqa: E402
from dealrec_tasks.storage import Lake  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SURROGATE = ["--members", "2", "--max-epochs", "60"]  # 2 members: the measure is epochs to early stop, per day
TINY = ["--vocab-size", "800", "--hidden-size", "64", "--intermediate-size", "128", "--num-layers", "2",
        "--pretrain-steps", "30", "--corpus-gap-days", "3"]  # fmt: skip


def run_child(args: list[str]) -> dict:
    """Run ``dealrec ARGS`` as a child: its wall seconds (start-up included) and its own peak RSS (MiB, wait4)."""
    env = os.environ | {"DEALREC_PROGRESS": "0"}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "dealrec_tasks.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    out = proc.stdout.read().decode()
    err = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"dealrec {' '.join(args)} failed:\n{err[-3000:]}")
    first_line = out.strip().splitlines()[0] if out.strip() else ""  # the step's summary (counts first)
    return {"s": round(seconds, 2), "rss_mib": round(usage.ru_maxrss / 1024, 1), "out": first_line[:400]}


def lake_mib(root: Path) -> float:
    return round(sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20, 2)


def count(summary: str, key: str) -> int | None:
    """``key N`` from a step's summary line (``effort: samples 2,000, scored 735, ...``)."""
    found = re.search(rf"\b{key} ([\d,]+)", summary)
    return int(found.group(1).replace(",", "")) if found else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=int, default=16)
    ap.add_argument("--users", type=int, default=12000)
    ap.add_argument("--events", type=int, default=1500, help="mean interactions per day")
    ap.add_argument("--out", default=str(REPO / "var" / "bench" / "daily_growth"))
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"{out}: exists; remove it or pass --out (the run starts from empty lakes)")
    synth = SyntheticConfig(users=args.users, items=3000, days=args.days, events_per_day=args.events)
    lakes = {"before": out / "before", "after": out / "after"}
    for root in lakes.values():
        steps.synthetic(Lake(str(root)), synth)
    days = [(dt_mod.date.fromisoformat(synth.start) + dt_mod.timedelta(days=i)).isoformat() for i in range(args.days)]
    model = str(out / "tiny-llm")
    rows = []
    for i, day in enumerate(days):
        row: dict = {"dt": day, "day": i + 1}
        for name, root in lakes.items():
            lake = ["--lake", str(root)]
            r = {"ingest": run_child([*lake, "ingest", "--dt", day])}
            if i < 3:  # samples need a validation and a test day behind at least one training day
                r["lake_mib"] = lake_mib(root)
                row[name] = r
                continue
            r["samples"] = run_child([*lake, "samples", "--dt", day])
            # The surrogate: warm-started from the previous day on "after" (the default), cold on "before".
            cold = ["--cold-start"] if name == "before" else []
            r["surrogate"] = run_child([*lake, "surrogate", "--dt", day, *SURROGATE, *cold])
            r["surrogate_epochs"] = count(r["surrogate"]["out"], "epochs")
            if not Path(model, "config.json").exists():
                run_child([*lake, "tiny-llm", "--dt", day, "--out", model, *TINY])
            effort = [*lake, "effort", "--dt", day, "--model", model] + (["--no-cache"] if name == "before" else [])
            r["effort"] = run_child(effort)
            r["merge_effort"] = run_child([*lake, "merge-effort", "--dt", day, "--shards", "1"])
            r["train_samples"] = count(r["effort"]["out"], "samples")
            r["scored"] = count(r["effort"]["out"], "scored")
            r["lake_mib"] = lake_mib(root)
            row[name] = r
        rows.append(row)
        a, b = row["after"], row["before"]
        print(f"[{day}] lake {a['lake_mib']} MiB  ingest {a['ingest']['s']} s"
              + (f"  effort before {b['effort']['s']} s ({b['scored']} scored)  after {a['effort']['s']} s "
                 f"({a['scored']} of {a['train_samples']})" if "effort" in a else ""), flush=True)  # fmt: skip
    config = {"days": args.days, "users": args.users, "events_per_day": args.events, "tiny_llm": TINY}
    note = "effort: before = every prompt, after = the cache; ingest and samples: the same code on both lakes"
    result = {"config": config, "days": rows, "note": note}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "daily_growth.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, RESULTS / "daily_growth.png")
    print(f"wrote {RESULTS / 'daily_growth.json'} and .png")


def plot(rows: list[dict], path: Path) -> None:
    scored = [r for r in rows if "effort" in r["after"]]
    x = [r["day"] for r in scored]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    ax = axes[0]
    ax.plot(x, [r["before"]["effort"]["s"] for r in scored], "o-", label="effort, every prompt (before)")
    ax.plot(x, [r["after"]["effort"]["s"] for r in scored], "o-", label="effort, new prompts only (after)")
    ax.plot([r["day"] for r in rows], [r["after"]["ingest"]["s"] for r in rows], "s--", label="ingest (unchanged)")
    ax.plot(x, [r["after"]["samples"]["s"] for r in scored], "^--", label="samples (unchanged)")
    ax.set_xlabel("day")
    ax.set_ylabel("seconds (one process each, incl. start-up)")
    ax.set_title("per-day seconds by step")
    ax.legend(fontsize=7)
    ax = axes[1]
    twin = ax.twinx()
    twin.plot(x, [r["before"]["surrogate_epochs"] for r in scored], "x:", color="0.5", label="surrogate epochs, cold")
    twin.plot(x, [r["after"]["surrogate_epochs"] for r in scored], "+:", color="k", label="surrogate epochs, warm")
    twin.set_ylabel("surrogate epochs (member 0)")
    twin.legend(fontsize=7, loc="center right")
    ax.plot(x, [r["before"]["scored"] for r in scored], "o-", label="prompts scored, before")
    ax.plot(x, [r["after"]["scored"] for r in scored], "o-", label="prompts scored, after")
    ax.plot(x, [r["after"]["train_samples"] for r in scored], "k:", label="training samples (users so far)")
    ax.set_xlabel("day")
    ax.set_ylabel("prompts")
    ax.set_title("effort work per day; surrogate epochs")
    ax.legend(fontsize=7)
    ax = axes[2]
    ax.plot([r["after"]["lake_mib"] for r in rows], [r["after"]["ingest"]["s"] for r in rows], "s-", label="ingest")
    ax.plot([r["after"]["lake_mib"] for r in scored], [r["before"]["effort"]["s"] for r in scored], "o-",
            label="effort before")  # fmt: skip
    ax.plot([r["after"]["lake_mib"] for r in scored], [r["after"]["effort"]["s"] for r in scored], "o-",
            label="effort after")  # fmt: skip
    ax.set_xlabel("lake size (MiB)")
    ax.set_ylabel("seconds")
    ax.set_title("per-day seconds against the lake's size")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)


if __name__ == "__main__":
    main()
