"""Daily cost against the age of the lake (issue 19): 60 synthetic days, each step as its own `dealrec` process,
timed, with that process's peak RSS, on two lakes fed the same logs side by side:

- ``before``: the code of commit ``BEFORE_COMMIT`` (extracted with ``git archive``), as it was before the sequence
  deltas: ingest rewrites every user's whole sequence each day, effort scores every training sample
  (``--no-cache``) and the surrogate starts cold (``--cold-start``);
- ``after``: this checkout's defaults: ingest writes the day's events only and ``compact`` folds them into a
  snapshot every 7 days, effort scores only the prompts its cache lacks (without tokenizing the others), the
  surrogate warm-starts from the previous day's (trained on the day before each full day for that).

Every day runs the daily steps (ingest; compact; samples, effort and merge-effort on "after"). Every
one of ``--full-days`` (and on the last day) both lakes run the whole scoring cycle: samples, surrogate,
influence (solve, one shard, merge), effort, merge-effort and select: its seconds summed are that day's cycle time
(fine-tuning and evaluation are sized by the coreset, not by the lake, and are left out). On the other days the
"before" lake only ingests (its days must be ingested in order).

Users arrive and return (``daily_logs``: 40% of sessions by new users), so the lake grows while the active users
per day stay about constant. Writes ``bench/results/daily_growth.json`` and ``.png``.

Usage: .venv/bin/python bench/daily_growth.py [--days 60] [--users 300000] [--events 22000] [--session-max 10]
                                              [--full-days 10,60]
"""

from __future__ import annotations

import argparse
import datetime as dt_mod
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from dealrec_tasks import steps  # noqa: E402
from dealrec_tasks.catalogue import INTERACTIONS  # noqa: E402
from dealrec_tasks.config import SyntheticConfig  # noqa: E402
from dealrec_tasks.data.schema import INTERACTIONS_SCHEMA  # noqa: E402
from dealrec_tasks.storage import Lake  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
BEFORE_COMMIT = "edaea9b"  # the last commit before sequence deltas and title digests
SURROGATE = ["--members", "1", "--max-epochs", "30"]  # one member: the measure is epochs to early stop, per day
TINY = ["--vocab-size", "800", "--hidden-size", "64", "--intermediate-size", "128", "--num-layers", "2",
        "--pretrain-steps", "30", "--corpus-gap-days", "3"]  # fmt: skip
# One thread per step: on a shared 2-core machine two torch threads fighting another process for a core ran 3x
# slower on some days than on others; one thread each is slower but the same from day 1 to day 60.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
DAILY = ("ingest", "compact", "samples", "effort", "merge_effort")
CYCLE = ("ingest", "compact", "samples", "surrogate", "influence_solve", "influence", "merge_influence", "effort",
         "merge_effort", "select")  # fmt: skip


def run_child(args: list[str], code: Path | None = None) -> dict:
    """Run ``dealrec ARGS`` as a child (of the code in ``code``, else this checkout): its wall seconds (start-up
    included) and its own peak RSS (MiB, wait4)."""
    env = os.environ | {"DEALREC_PROGRESS": "0", **ONE_THREAD} | ({"PYTHONPATH": str(code)} if code else {})
    # The working directory comes first on sys.path: the before code's own folder, so this checkout is not found.
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "dealrec_tasks.cli", *args], env=env, cwd=code or REPO,
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


def ingest_written_mib(root: Path, day: str) -> float:
    """What ingest wrote for the day: its sequences and vocab partitions (the rejects are the day's bad rows)."""
    parts = [root / "sequences" / f"dt={day}", root / "vocab" / f"dt={day}"]
    return round(sum(p.stat().st_size for d in parts for p in d.rglob("*") if p.is_file()) / 2**20, 3)


def count(summary: str, key: str) -> int | None:
    """``key N`` from a step's summary line (``effort: samples 2,000, scored 735, ...``)."""
    found = re.search(rf"\b{key} ([\d,]+)", summary)
    return int(found.group(1).replace(",", "")) if found else None


def daily_logs(
    users: int, items: int, days: int, events: int, start: str, session_max: int = 3, seed: int = 0
) -> dict[str, pa.Table]:
    """Logs at scale, vectorised (``dealrec synthetic`` draws each returning user with a pass over every user seen:
    quadratic in users). Sessions of 1 to ``session_max`` events; 40% of sessions by new users, the others by users
    seen before, drawn by a lognormal activity; items by Zipf popularity shifted by each user's taste (a learnable
    signal)."""
    rng = np.random.default_rng(seed)
    activity = rng.lognormal(0.0, 1.0, users)
    taste = rng.integers(0, items, users)
    popular = rng.zipf(1.3, size=10 * items * days) % items  # drawn once, consumed in order
    used, next_new, out = 0, 0, {}
    first = np.datetime64(dt_mod.date.fromisoformat(start), "us").astype(np.int64)
    for day in range(days):
        sessions = int(rng.poisson(events / ((1 + session_max) / 2)))
        new = (rng.random(sessions) > 0.6) | (next_new == 0)
        new &= next_new + np.cumsum(new) <= users
        who = np.empty(sessions, np.int64)
        who[new] = next_new + np.arange(int(new.sum()))
        if (~new).any():
            cdf = np.cumsum(activity[: max(next_new, 1)])
            who[~new] = np.searchsorted(cdf, rng.random(int((~new).sum())) * cdf[-1])
        next_new += int(new.sum())
        per_user = np.repeat(who, rng.integers(1, session_max + 1, sessions))
        n = len(per_user)
        drawn = popular[used : used + n]
        used += n
        own = rng.random(n) < 0.7
        item = np.where(own, (taste[per_user] + drawn) % items, drawn)
        ts = first + day * 86_400_000_000 + np.sort(rng.integers(0, 86_400_000_000, n))
        dt = (dt_mod.date.fromisoformat(start) + dt_mod.timedelta(days=day)).isoformat()
        out[dt] = pa.table(
            {"user_id": [f"U{u:07d}" for u in per_user], "item_id": [f"I{i:05d}" for i in item],
             "ts": pa.array(ts, pa.int64()).cast(INTERACTIONS_SCHEMA.field("ts").type)},
            schema=INTERACTIONS_SCHEMA,
        )  # fmt: skip
    return out


def old_code(out: Path) -> Path:
    """``BEFORE_COMMIT``'s package, extracted beside the lakes; the child imports it first through PYTHONPATH."""
    dest = out / "before-code"
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", BEFORE_COMMIT, "dealrec_tasks"], check=True,
                             capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    env = os.environ | {"PYTHONPATH": str(dest)}
    probe = [sys.executable, "-c", "import dealrec_tasks; print(dealrec_tasks.__file__)"]
    probe = subprocess.run(probe, env=env, cwd=dest, capture_output=True, text=True, check=True)
    if not probe.stdout.startswith(str(dest)):
        raise SystemExit(f"the before code does not import from {dest}: {probe.stdout}")
    return dest


def day_steps(name: str, lake: list[str], day: str, full: bool, model: str, code: Path | None) -> dict:
    """One lake's steps of one day; ``full``: the whole scoring cycle."""
    before = name == "before"
    r = {"ingest": run_child([*lake, "ingest", "--dt", day], code)}
    if not before:
        r["compact"] = run_child([*lake, "compact", "--dt", day])
    if before and not full:
        return r
    r["samples"] = run_child([*lake, "samples", "--dt", day], code)
    if not Path(model, "config.json").exists():  # built once, on the "after" lake's first day with samples
        run_child([*lake, "tiny-llm", "--dt", day, "--out", model, *TINY])
    if full:
        r["surrogate"] = run_child([*lake, "surrogate", "--dt", day, *SURROGATE, *(["--cold-start"] if before else [])],
                                   code)  # fmt: skip
        r["surrogate_epochs"] = count(r["surrogate"]["out"], "epochs")
        r["influence_solve"] = run_child([*lake, "influence-solve", "--dt", day], code)
        r["influence"] = run_child([*lake, "influence", "--dt", day, "--shard", "0/1"], code)
        r["merge_influence"] = run_child([*lake, "merge-influence", "--dt", day, "--shards", "1"], code)
    effort = [*lake, "effort", "--dt", day, "--model", model, *(["--no-cache"] if before else [])]
    r["effort"] = run_child(effort, code)
    r["merge_effort"] = run_child([*lake, "merge-effort", "--dt", day, "--shards", "1"], code)
    if full:
        r["select"] = run_child([*lake, "select", "--dt", day, "--ratio", "0.02"], code)
        r["cycle_s"] = round(sum(r[k]["s"] for k in CYCLE if k in r), 2)
    r["daily_s"] = round(sum(r[k]["s"] for k in DAILY if k in r), 2)
    r["train_samples"] = count(r["effort"]["out"], "samples")
    r["scored"] = count(r["effort"]["out"], "scored")
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--users", type=int, default=300_000, help="users who can arrive over the run")
    ap.add_argument("--events", type=int, default=22_000, help="mean interactions per day")
    ap.add_argument("--session-max", type=int, default=10, help="events per session: 1 to this, uniformly")
    ap.add_argument("--full-days", default="10,60", help="days (1-based) with the whole scoring cycle on both lakes")
    ap.add_argument("--out", default=str(REPO / "var" / "bench" / "daily_growth"))
    ap.add_argument("--plot-only", action="store_true", help="redraw the PNG from the JSON")
    args = ap.parse_args()
    if args.plot_only:
        plot(json.loads((RESULTS / "daily_growth.json").read_text())["days"], RESULTS / "daily_growth.png")
        return
    out = Path(args.out).resolve()
    if out.exists():
        raise SystemExit(f"{out}: exists; remove it or pass --out (the run starts from empty lakes)")
    full_days = {int(d) for d in args.full_days.split(",") if d}
    code = old_code(out)
    # The catalogue from `dealrec synthetic` (titles), the logs from daily_logs, the same on both lakes.
    synth = SyntheticConfig(users=1, items=3000, days=args.days, events_per_day=0)
    logs = daily_logs(args.users, synth.items, args.days, args.events, synth.start, args.session_max)
    lakes = {"after": out / "after", "before": out / "before"}  # after first: it builds the tiny LLM on day 4
    for root in lakes.values():
        lake = Lake(str(root))
        steps.synthetic(lake, synth)
        for dt, table in logs.items():
            lake.publish(INTERACTIONS, dt, {"part-0.parquet": table}, config={"bench": "daily_growth"})
    days = [(dt_mod.date.fromisoformat(synth.start) + dt_mod.timedelta(days=i)).isoformat() for i in range(args.days)]
    model = str(out / "tiny-llm")
    rows = []
    started = time.perf_counter()
    for i, day in enumerate(days):
        row: dict = {"dt": day, "day": i + 1, "active_users": len(set(logs[day].column("user_id").to_pylist()))}
        full = i + 1 in full_days or i + 1 == args.days
        for name, root in lakes.items():
            lake = ["--lake", str(root)]
            if i < 3:  # samples need a validation and a test day behind at least one training day
                r = {"ingest": run_child([*lake, "ingest", "--dt", day], code if name == "before" else None)}
                if name == "after":
                    r["compact"] = run_child([*lake, "compact", "--dt", day])
            else:
                r = day_steps(name, lake, day, full, model, code if name == "before" else None)
                if name == "after" and (i + 2 in full_days or i + 2 == args.days):
                    # The day before a full day: a surrogate, so tomorrow's warm-starts from yesterday's as daily.
                    r["surrogate_warmup"] = run_child([*lake, "surrogate", "--dt", day, *SURROGATE])
            r["users"] = count(r["ingest"]["out"], "users")
            r["interactions"] = count(r["ingest"]["out"], "interactions_total")
            r["lake_mib"] = lake_mib(root)
            r["ingest_written_mib"] = ingest_written_mib(root, day)
            row[name] = r
        rows.append(row)
        a, b = row["after"], row["before"]
        print(f"[{day}] {time.perf_counter() - started:7.0f} s  interactions {a['interactions']:,}  lake after "
              f"{a['lake_mib']} MiB  ingest before {b['ingest']['s']} s after {a['ingest']['s']} s"
              + (f"  effort after {a['effort']['s']} s ({a['scored']}/{a['train_samples']})" if "effort" in a else "")
              + (f"  cycle before {b['cycle_s']} s after {a['cycle_s']} s" if "cycle_s" in a else ""),
              flush=True)  # fmt: skip
    config = {"days": args.days, "users": args.users, "events_per_day": args.events,
              "session_max": args.session_max, "full_days": sorted(full_days),
              "before_commit": BEFORE_COMMIT, "surrogate": SURROGATE, "tiny_llm": TINY,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
              "threads": ONE_THREAD}  # fmt: skip
    result = {"config": config, "summary": summarise(rows), "days": rows,
              "note": "each step is one process (start-up included); before = the code of before_commit"}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "daily_growth.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, RESULTS / "daily_growth.png")
    print(json.dumps(result["summary"], indent=2))
    print(f"wrote {RESULTS / 'daily_growth.json'} and .png")


def summarise(rows: list[dict]) -> dict:
    """The issue's targets: from day 10 to the last, ingest and effort seconds within 2x while the lake grows 5x."""
    by_day = {r["day"]: r for r in rows}
    first, last = by_day[min(10, len(rows))], rows[-1]

    def ratio(lake: str, key: str, metric: str = "s") -> float | None:
        a, b = first[lake].get(key), last[lake].get(key)
        if a is None or b is None:
            return None
        a, b = (a[metric], b[metric]) if isinstance(a, dict) else (a, b)
        return round(b / a, 2) if a else None

    out = {
        "from_day": first["day"],
        "active_users_range": [min(r["active_users"] for r in rows), max(r["active_users"] for r in rows)],
        "to_day": last["day"],
        "interactions_growth": ratio("after", "interactions"),
        "users_growth": ratio("after", "users"),
        "lake_mib_growth_after": ratio("after", "lake_mib"),
        "ingest_growth_after": ratio("after", "ingest"),
        "ingest_growth_before": ratio("before", "ingest"),
        "ingest_written_growth_after": ratio("after", "ingest_written_mib"),
        "ingest_written_growth_before": ratio("before", "ingest_written_mib"),
        "effort_growth_after": ratio("after", "effort"),
        "effort_growth_before": ratio("before", "effort"),
        "peak_rss_mib_after": max(v["rss_mib"] for r in rows for v in r["after"].values() if isinstance(v, dict)),
        "peak_rss_mib_before": max(v["rss_mib"] for r in rows for v in r["before"].values() if isinstance(v, dict)),
    }
    lake_grew = (out["interactions_growth"] or 0) >= 5
    out["targets_met"] = {
        "lake_grew_5x": lake_grew,
        "ingest_within_2x": out["ingest_growth_after"] is not None and out["ingest_growth_after"] <= 2,
        "effort_within_2x": out["effort_growth_after"] is not None and out["effort_growth_after"] <= 2,
    }
    full = [r for r in rows if "cycle_s" in r["after"]]
    out["cycle_s"] = {r["day"]: {"before": r["before"]["cycle_s"], "after": r["after"]["cycle_s"]} for r in full}
    epochs = {r["day"]: (r["before"]["surrogate_epochs"], r["after"]["surrogate_epochs"]) for r in full}
    out["surrogate_epochs"] = {day: {"cold": cold, "warm": warm} for day, (cold, warm) in epochs.items()}
    return out


def plot(rows: list[dict], path: Path) -> None:
    days = [r["day"] for r in rows]
    scored = [r for r in rows if "effort" in r["after"]]
    full = [r for r in rows if "cycle_s" in r["after"]]
    fig, axes = plt.subplots(1, 5, figsize=(27, 4.8))
    ax = axes[0]
    ax.plot(days, [r["before"]["ingest"]["s"] for r in rows], "s--", color="C3", label="ingest, full rewrite (before)")
    ax.plot(days, [r["after"]["ingest"]["s"] for r in rows], "s-", color="C2", label="ingest, day's events (after)")
    compacted = [r for r in rows if "compact" in r["after"]]
    ax.plot([r["day"] for r in compacted], [r["after"]["compact"]["s"] for r in compacted], ".:", color="C7",
            label="compact (after)")  # fmt: skip
    ax.plot([r["day"] for r in scored], [r["after"]["samples"]["s"] for r in scored], "^-", color="C4",
            label="samples (same code)")  # fmt: skip
    ax.plot([r["day"] for r in full], [r["before"]["effort"]["s"] for r in full], "o--", color="C1",
            label="effort, every prompt (before)")  # fmt: skip
    ax.plot([r["day"] for r in scored], [r["after"]["effort"]["s"] for r in scored], "o-", color="C0",
            label="effort, new prompts (after)")  # fmt: skip
    ax.set_xlabel("day")
    ax.set_ylabel("seconds (one process each, start-up included)")
    ax.set_title("per-day seconds by step")
    ax.legend(fontsize=7)
    ax = axes[1]
    ax.plot([r["day"] for r in full], [r["before"]["scored"] for r in full], "o--", color="C1",
            label="prompts scored, before")  # fmt: skip
    ax.plot([r["day"] for r in scored], [r["after"]["scored"] for r in scored], "o-", color="C0",
            label="prompts scored, after")  # fmt: skip
    ax.plot([r["day"] for r in scored], [r["after"]["train_samples"] for r in scored], "k:",
            label="training samples (users so far)")  # fmt: skip
    ax.set_xlabel("day")
    ax.set_ylabel("prompts")
    ax.set_title("effort work per day")
    ax.legend(fontsize=7)
    ax = axes[2]
    x = [r["after"]["interactions"] / 1000 for r in rows]
    ax.plot(x, [r["before"]["ingest"]["s"] for r in rows], "s--", color="C3", label="ingest before")
    ax.plot(x, [r["after"]["ingest"]["s"] for r in rows], "s-", color="C2", label="ingest after")
    xf = [r["after"]["interactions"] / 1000 for r in full]
    ax.plot(xf, [r["before"]["cycle_s"] for r in full], "D--", color="C5", label="whole cycle before")
    ax.plot(xf, [r["after"]["cycle_s"] for r in full], "D-", color="C6", label="whole cycle after")
    ax.set_xlabel("interactions in the lake (thousands)")
    ax.set_ylabel("seconds")
    ax.set_yscale("log")
    ax.set_title("per-day seconds against the lake's size")
    ax.legend(fontsize=7)
    ax = axes[3]
    if "ingest_written_mib" in rows[0]["after"]:
        before = [r["before"]["ingest_written_mib"] for r in rows]
        ax.plot(days, before, "s--", color="C3", label="full rewrite (before)")
        ax.plot(days, [r["after"]["ingest_written_mib"] for r in rows], "s-", color="C2", label="day's delta (after)")
    ax.set_xlabel("day")
    ax.set_ylabel("MiB")
    ax.set_title("what ingest writes per day (sequences + vocab)")
    ax.legend(fontsize=7)
    ax = axes[4]
    width = 0.38
    xs = range(len(full))
    ax.bar([i - width / 2 for i in xs], [r["before"]["surrogate_epochs"] for r in full], width, color="0.6",
           label="surrogate epochs, cold (before)")  # fmt: skip
    ax.bar([i + width / 2 for i in xs], [r["after"]["surrogate_epochs"] for r in full], width, color="k",
           label="surrogate epochs, warm (after)")  # fmt: skip
    ax.set_xticks(list(xs), [f"day {r['day']}" for r in full])
    ax.set_ylabel("epochs to early stop")
    ax.set_title("surrogate on full-cycle days")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)


if __name__ == "__main__":
    main()
