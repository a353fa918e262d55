"""Influence against the day's size (issue 19, item 3): seconds and peak RSS of every step of a synthetic day of
``scale`` x Games' users, each step as its own ``dealrec`` process (wall seconds with start-up, peak RSS by wait4).

The question: does influence stay linear in the samples, and does a shard worker's memory stay bounded (target: a
10x Games day on 2 shards within 4096 MiB per shard)? Steps measured per scale, in the DAG's order: ``ingest
--all``, ``samples``, ``surrogate`` (1 member, 1 epoch: only there to give influence its weights; the measure is
influence), ``influence-solve``, ``influence --shard i/2`` for each shard, ``merge-influence``.

The day: ``scale`` blocks of our synthetic generator (``dealrec_tasks.data.synthetic.generate``, the code behind
``dealrec synthetic``), each 49,156 users (Games' count) over 8 days with 50,000 events a day (about 6 training
items per user, Games has about 7) and a Games-size catalogue (17,332 items). Block k has seed k and its users are
renamed ``b{k}:U...``, so a 10x day holds 491,560 distinct users, all with training items. One generator call of
491,560 users would draw each returning user in O(users) (hours); ten blocks of 49,156 cost ten times one block.
Items of every block are the same ids (block 0's catalogue), each block with its own popularity order.

Usage: nice .venv/bin/python bench/influence_memory.py [--scale 1 10] [--out var/bench/influence_memory] [--reuse]
       [--repeat 1] [--threads 1] [--name influence_memory] [--label TEXT] [--compare OTHER.json]

``--reuse`` keeps a scale's lake when it already has the surrogate (its build steps' numbers are read back from
``build.json``) and reruns the influence steps only, after removing their partitions (how to measure other code on
the same days). ``--compare`` plots another run of this bench (e.g. the code before a change) beside this one and
copies its influence numbers into the JSON. ``--repeat R`` runs the influence steps R times, the scales
interleaved, and keeps each step's fewest seconds and largest peak RSS. ``--threads`` (default 1) is the influence
steps' torch threads: on the shared 2-core machine, 2 threads made the same step's seconds vary 5-fold (a
descheduled thread stalls every parallel op), while one thread's CPU seconds measure the work. Writes
``bench/results/<name>.json`` and ``.png``; progress on stdout. A 1x day takes a few minutes, a 10x day about half an
hour on 2 cores (the logs: ~1 min a block; the surrogate).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402
from rusage import run_step  # noqa: E402

from dealrec_tasks.catalogue import INFLUENCE, INTERACTIONS, ITEMS, SAMPLES, SCORES_INFLUENCE, SURROGATE  # noqa: E402
from dealrec_tasks.config import SyntheticConfig  # noqa: E402
from dealrec_tasks.data.synthetic import generate  # noqa: E402
from dealrec_tasks.storage import Lake  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
TARGET_MIB = 4096  # per shard worker, at 10x (issue 19 item 3)
GAMES_USERS, GAMES_ITEMS = 49_156, 17_332
DAYS, EVENTS_PER_DAY, SHARDS = 8, 50_000, 2
SURROGATE_ARGS = ["--members", "1", "--max-epochs", "1"]
BUILD_STEPS = ("ingest", "samples", "surrogate")
INFLUENCE_STEPS = ("influence_solve", *(f"influence_{i}" for i in range(SHARDS)), "merge_influence")


def step_summary(text: str) -> str:
    """A step's last summary line (``samples: train 491,560, ...``; ``ingest --all`` prints one a day), else its
    first line."""
    lines = [line for line in text.splitlines() if line.strip()]
    found = [line for line in lines if re.match(r"^[a-z-]+: ", line) and " -> " in line]
    return (found or lines or [""])[-1 if found else 0]


def run_child(args: list[str], log: Path) -> dict:
    """Run ``dealrec ARGS`` as its own process: wall seconds (start-up included), CPU seconds (user + system: less
    noisy than wall seconds on a shared machine), its own peak RSS (MiB; wait4 through ``rusage.LAUNCHER``) and the
    1-minute load average as it started. Its stdout and stderr go to ``log``."""
    env = os.environ | {"DEALREC_PROGRESS": "0"}
    load1 = round(os.getloadavg()[0], 2)
    log.parent.mkdir(parents=True, exist_ok=True)
    usage, text = run_step(args, log, env)
    summary = step_summary(text)
    rss = round(usage["maxrss_kib"] / 1024, 1)
    return {"s": round(usage["s"], 2), "cpu_s": round(usage["cpu_s"], 2), "rss_mib": rss, "load1": load1,
            "out": summary[:300]}  # fmt: skip


def write_day(root: Path, scale: int) -> dict:
    """The synthetic logs of ``scale`` blocks (see the module docstring) and block 0's catalogue, published as
    ``dealrec synthetic`` publishes them (one Parquet file per day)."""
    lake = Lake(str(root))
    per_day: dict[str, list[pa.Table]] = {}
    items = None
    for k in range(scale):
        t0 = time.perf_counter()
        cfg = SyntheticConfig(users=GAMES_USERS, items=GAMES_ITEMS, days=DAYS, events_per_day=EVENTS_PER_DAY, seed=k)
        block_items, days, _ = generate(cfg)
        items = items if items is not None else block_items
        for day, table in days.items():
            users = pc.binary_join_element_wise(f"b{k}:", table.column("user_id"), "")
            per_day.setdefault(day, []).append(table.set_column(0, "user_id", users))
        print(f"  block {k + 1}/{scale}: {sum(t.num_rows for t in days.values()):,} events "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
    config = {"blocks": scale, "block_users": GAMES_USERS, "items": GAMES_ITEMS, "days": DAYS,
              "events_per_day_per_block": EVENTS_PER_DAY}  # fmt: skip
    lake.publish(ITEMS, None, {"items.parquet": items}, config=config)
    events = 0
    for day, tables in per_day.items():
        table = pa.concat_tables(tables)
        table = table.take(pc.sort_indices(table, [("ts", "ascending")]))  # stable: a user's order is kept
        lake.publish(INTERACTIONS, day, {"part-0.parquet": table}, config=config, extra={"synthetic": True})
        events += table.num_rows
    return {"events": events, "days": sorted(per_day)}


def lake_counts(root: Path, dt: str) -> dict:
    """Training samples (and their loss positions: the scoring's work), validation rows and items of the day."""
    lake = Lake(str(root))
    samples = lake.manifest(SAMPLES, dt)["counts"]
    surrogate = lake.manifest(SURROGATE, dt)
    table = pq.read_table(root / SAMPLES / f"dt={dt}" / "samples.parquet", columns=["split", "history"])
    history = pc.list_value_length(table.filter(pc.equal(table.column("split"), "train")).column("history"))
    max_len = surrogate["config"]["max_len"]  # a training row [BOS, history, target] has min(len + 1, max_len)
    positions = pc.sum(pc.min_element_wise(pc.add(history, 1), max_len)).as_py()
    return {"train_samples": samples["train"], "train_positions": positions, "valid_rows": samples["valid"],
            "test_rows": samples["test"], "items": surrogate["counts"]["items"]}  # fmt: skip


def build(root: Path, scale: int) -> dict:
    """Logs, then ingest, samples and the surrogate, each a timed child; returns the day and those numbers."""
    t0 = time.perf_counter()
    print(f"[x{scale}] writing synthetic logs ({scale} block(s) of {GAMES_USERS:,} users)", flush=True)
    day = write_day(root, scale)
    rec: dict = {"scale": scale, "dt": day["days"][-1], "events": day["events"], "logs_s": 0.0, "steps": {}}
    rec["logs_s"] = round(time.perf_counter() - t0, 1)
    lake = ["--lake", str(root)]
    for name, args in (
        ("ingest", ["ingest", "--all"]),
        ("samples", ["samples", "--dt", rec["dt"]]),
        ("surrogate", ["surrogate", "--dt", rec["dt"], *SURROGATE_ARGS]),
    ):
        rec["steps"][name] = r = run_child([*lake, *args], root / "logs" / f"{name}.log")
        print(f"[x{scale}] {name}: {r['s']} s, peak RSS {r['rss_mib']} MiB", flush=True)
    (root / "build.json").write_text(json.dumps(rec, indent=2) + "\n")
    return rec


def measure(root: Path, rec: dict, repeat: int) -> None:
    """The influence steps from scratch (their partitions removed first), each a timed child, into
    ``rec["runs"]`` (one dict of steps per repeat)."""
    lake, dt, scale = ["--lake", str(root)], rec["dt"], rec["scale"]
    for name in (INFLUENCE, SCORES_INFLUENCE):  # the bench's own lake
        shutil.rmtree(root / name, ignore_errors=True)
    threads = ["--threads", str(rec["threads"])]
    runs = [("influence_solve", ["influence-solve", "--dt", dt, *threads])]
    runs += [(f"influence_{i}", ["influence", "--dt", dt, "--shard", f"{i}/{SHARDS}", *threads]) for i in range(SHARDS)]
    runs += [("merge_influence", ["merge-influence", "--dt", dt, "--shards", str(SHARDS)])]
    steps = {}
    for name, args in runs:
        steps[name] = r = run_child([*lake, *args], root / "logs" / f"{name}.log")
        print(f"[x{scale}] run {repeat}: {name}: {r['s']} s (CPU {r['cpu_s']} s), peak RSS {r['rss_mib']} MiB, "
              f"load {r['load1']}", flush=True)  # fmt: skip
    rec.setdefault("runs", []).append(steps)


def prepare(out: Path, scale: int, reuse: bool) -> dict:
    """A scale's day: built (logs, ingest, samples, surrogate), or with ``reuse`` read back from ``build.json``."""
    root = out / f"x{scale}"
    built = root / "build.json"
    if reuse and built.exists():
        rec = json.loads(built.read_text())
        for name in BUILD_STEPS:  # their summary lines, as this version of the bench picks them
            rec["steps"][name]["out"] = step_summary((root / "logs" / f"{name}.log").read_text())[:300]
        print(f"[x{scale}] reusing {root} (build steps from build.json)", flush=True)
        return rec
    if root.exists():
        raise SystemExit(f"{root}: exists; remove it, pass --reuse, or pass another --out")
    return build(root, scale)


def finish(out: Path, rec: dict) -> dict:
    """Per influence step over the repeats: the fewest seconds (wall, CPU: the least disturbed run) and the largest
    peak RSS; the day's counts; the shard target."""
    for name in INFLUENCE_STEPS:
        runs = [r[name] for r in rec["runs"]]
        rec["steps"][name] = {"s": min(r["s"] for r in runs), "cpu_s": min(r["cpu_s"] for r in runs),
                              "rss_mib": max(r["rss_mib"] for r in runs), "out": runs[-1]["out"]}  # fmt: skip
    rec |= lake_counts(out / f"x{rec['scale']}", rec["dt"])
    shards = [rec["steps"][f"influence_{i}"]["rss_mib"] for i in range(SHARDS)]
    rec["shard_peak_rss_mib"] = max(shards)
    rec["solve_peak_rss_mib"] = rec["steps"]["influence_solve"]["rss_mib"]
    rec["shard_within_target"] = max(shards) <= TARGET_MIB
    rec["influence_s"] = round(sum(rec["steps"][s]["s"] for s in INFLUENCE_STEPS), 2)
    rec["influence_cpu_s"] = round(sum(rec["steps"][s]["cpu_s"] for s in INFLUENCE_STEPS), 2)
    return rec


def machine() -> dict:
    import torch

    return {"cpus": os.cpu_count(), "memory_gib": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            / 2**30, 1), "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform(), "loadavg_start": [round(x, 2) for x in os.getloadavg()],
            "note": "shared 2-core machine; other jobs may run at the same time, so seconds are noisy"}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, nargs="+", default=[1, 10], help="days of scale x Games' users (1 10)")
    ap.add_argument("--out", default=str(REPO / "var" / "bench" / "influence_memory"), help="working directory")
    ap.add_argument("--reuse", action="store_true", help="keep built lakes, rerun the influence steps only")
    ap.add_argument("--repeat", type=int, default=1, help="runs of the influence steps (min seconds, max RSS)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the influence steps (0: torch's default)")
    ap.add_argument("--name", default="influence_memory", help="results file stem in bench/results/")
    ap.add_argument("--label", default="", help="what code this run measures (stored in the JSON)")
    ap.add_argument("--compare", help="a JSON of this bench from other code (e.g. before a change): plotted beside")
    ap.add_argument("--replot", help="only redraw this JSON's plot (and its fit) from its numbers")
    args = ap.parse_args()
    if args.replot:
        path = Path(args.replot)
        result = json.loads(path.read_text())
        result["fit"] = fit(result["scales"])
        path.write_text(json.dumps(result, indent=2) + "\n")
        plot(result, path.with_suffix(".png"))
        return
    out = Path(args.out)
    compare = json.loads(Path(args.compare).read_text()) if args.compare else None
    started, info = time.perf_counter(), machine()
    recs = [prepare(out, s, args.reuse) for s in sorted(set(args.scale))]
    for r in range(args.repeat):  # repeats interleave the scales, so a busy spell of the machine hits them alike
        for rec in recs:
            rec["threads"] = args.threads
            measure(out / f"x{rec['scale']}", rec, r + 1)
    scales = [finish(out, rec) for rec in recs]
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result = {
        "what": "seconds (wall and CPU) and peak RSS of each step (own process, wait4) against the day's training "
        "samples; influence steps on 2 shards, the target is per shard worker; influence steps: the fewest seconds "
        "and the largest RSS over `repeat` runs (each run in `runs`), the build steps ran once",
        "repeat": args.repeat,
        "influence_threads": args.threads,
        "label": args.label,
        "target_shard_rss_mib": TARGET_MIB,
        "shards": SHARDS,
        "day": {
            "block_users": GAMES_USERS,
            "items": GAMES_ITEMS,
            "days": DAYS,
            "events_per_day_per_block": EVENTS_PER_DAY,
            "generator": "dealrec_tasks.data.synthetic.generate, one block of users per 1x, block k seeded k",
        },
        "surrogate": {
            "args": SURROGATE_ARGS,
            "note": "1 member, 1 epoch: only the weights influence needs; the measure is influence (default "
            "InfluenceConfig: target valid, K 4096, CG on a 4096-sample Hessian)",
        },
        "machine": info,
        "scales": scales,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    if len(scales) >= 2:
        lo, hi = scales[0], scales[-1]
        growth = {"samples_ratio": round(hi["train_samples"] / lo["train_samples"], 2)}
        for s in INFLUENCE_STEPS:
            for key in ("s", "cpu_s", "rss_mib"):
                growth[f"{s}_{key}_ratio"] = round(hi["steps"][s][key] / lo["steps"][s][key], 2)
        result["growth"] = growth
    result["fit"] = fit(scales)
    if compare is not None:
        keep = ("scale", "train_samples", "shard_peak_rss_mib", "solve_peak_rss_mib", "influence_s", "steps")
        result["compare"] = {"label": compare.get("label", ""), "scales": [
            {k: r[k] for k in keep if k in r} | {"steps": {s: r["steps"][s] for s in INFLUENCE_STEPS}}
            for r in compare["scales"]]}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{args.name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, path.with_suffix(".png"))
    print(f"wrote {path} and .png ({result['wall_s']} s)")


def fit(scales: list[dict]) -> dict:
    """Straight lines a + b n (n: training samples) through each influence step's seconds and their total, with the
    largest relative residual: near 0 means linear in the samples (a: start-up and fixed costs). Three or more
    scales only."""
    if len(scales) < 3:
        return {}
    x = np.array([r["train_samples"] for r in scales], dtype=np.float64)
    out: dict = {}
    for key in ("s", "cpu_s"):
        series = {s: [r["steps"][s][key] for r in scales] for s in INFLUENCE_STEPS}
        series["total"] = [sum(r["steps"][s][key] for s in INFLUENCE_STEPS) for r in scales]
        out[key] = {}
        for name, ys in series.items():
            y = np.array(ys, dtype=np.float64)
            b, a = np.polyfit(x, y, 1)
            out[key][name] = {"intercept_s": round(float(a), 2), "per_100k_samples_s": round(float(b) * 1e5, 2),
                              "max_rel_residual": round(float(np.max(np.abs(a + b * x - y) / y)), 3)}  # fmt: skip
    return out


LABELS = {"influence_solve": "influence-solve", "merge_influence": "merge-influence"}
LABELS |= {f"influence_{i}": f"influence shard {i}/{SHARDS}" for i in range(SHARDS)}


def plot(result: dict, path: Path) -> None:
    scales = result["scales"]
    x = [r["train_samples"] for r in scales]
    steps = [*BUILD_STEPS, *INFLUENCE_STEPS]
    style = {s: ("o-" if s in INFLUENCE_STEPS else "s--") for s in steps}
    color = {s: f"C{i}" for i, s in enumerate(steps)}  # the same step, the same colour in every panel
    fig, axes = plt.subplots(1, 3, figsize=(18, 5))
    for ax in axes:
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax = axes[0]
    for s in steps:
        ax.plot(x, [r["steps"][s]["rss_mib"] for r in scales], style[s], color=color[s], label=LABELS.get(s, s))
    if "compare" in result:
        old = result["compare"]["scales"]
        label = (result["compare"]["label"] or "compared run").split(" (")[0]  # the full label is in the JSON
        ox = [r["train_samples"] for r in old]
        ax.plot(ox, [r["shard_peak_rss_mib"] for r in old], "v:", color="0.4", label=f"shard (max), {label}")
        ax.plot(ox, [r["solve_peak_rss_mib"] for r in old], "^:", color="0.7", label=f"influence-solve, {label}")
    ax.axhline(result["target_shard_rss_mib"], color="r", lw=1, ls="--",
               label=f"target per shard ({result['target_shard_rss_mib']} MiB)")  # fmt: skip
    ax.set_ylim(0, result["target_shard_rss_mib"] * 1.1)
    ax.set_xlabel("training samples of the day")
    ax.set_ylabel("peak RSS (MiB, own process)")
    ax.set_title("peak memory per step")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, 0.92), ncol=2)
    for ax, key, what in ((axes[1], "s", "wall seconds"), (axes[2], "cpu_s", "CPU seconds (user + system)")):
        for s in INFLUENCE_STEPS:  # the build steps' seconds are in the JSON (the surrogate's would squash these)
            ax.plot(x, [r["steps"][s][key] for r in scales], style[s], color=color[s], label=LABELS.get(s, s))
        total = [sum(r["steps"][s][key] for s in INFLUENCE_STEPS) for r in scales]
        ax.plot(x, total, "kx-", label="influence total (solve + shards + merge)")
        line = result.get("fit", {}).get(key, {}).get("total")
        if line:  # a + b n: linear in the samples, with a fixed start-up cost
            xs = np.linspace(0, max(x), 50)
            ax.plot(xs, line["intercept_s"] + line["per_100k_samples_s"] * xs / 1e5, "k:", lw=1,
                    label=f"straight-line fit of the total: {line['intercept_s']:.0f} s + "
                    f"{line['per_100k_samples_s']:.1f} s per 100k samples")  # fmt: skip
        ax.set_xlabel("training samples of the day")
        ax.set_ylabel(f"{what}, one process each")
        ax.set_title(f"influence: {what} per step")
        ax.legend(fontsize=7)
    load = result["machine"]
    fig.suptitle(f"Influence against the day's size (synthetic days, a {result['day']['items']:,}-item catalogue, "
                 f"{SHARDS} shards, {result.get('influence_threads', 0)} torch thread(s); shared {load['cpus']}-core "
                 f"machine, load {load['loadavg_start'][0]} -> {load['loadavg_end'][0]})")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)


if __name__ == "__main__":
    main()
