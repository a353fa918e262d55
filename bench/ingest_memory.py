"""Ingest's memory on a large day (issue 29, item 12): peak RSS and seconds of ``dealrec ingest`` on one generated
CSV day of S MB, each run its own process (peak RSS by wait4, through a launcher), for this tree's code (streaming,
chunked) and, side by side in the same run, for the code before it (a ``git worktree`` of ``--old-ref``) on smaller
days: a 200 MB CSV day peaked at 5.3 GB with that code, so its 1 GB day would need about 27 GB (more than this
machine's memory) and is not run. Target: a 1 GB day under 2 GiB peak RSS.

The day: one file ``day.csv`` of lines ``U0123456789,I01234567,2026-03-01T12:34:56Z`` (43 bytes): 10-digit user
ids (a fixed random bijection of the user index), 8-digit item ids, ISO timestamps; users about one per 12 rows,
drawn with a skew (index = users * u^2), items from a 200,000-item catalogue (items * u^3), timestamps rising over
the day block by block, shuffled within a block. A share of bad rows (``BAD_SHARE``: null user written as text,
an empty item, a timestamp that is not one, one of another day, a line with 2 fields) and of duplicates
(``DUP_SHARE``: a row repeated later in its block, or in the next block) is planted, so every rule runs.

Each code version ingests its own lake (the CSV hard-linked into it); where both versions ingest a day of the same
size, the sha256 of every published file (rejects, vocab, sequence delta) is compared: equal means the streaming
code publishes byte for byte what the old code did.

Usage: nice -n 10 .venv/bin/python bench/ingest_memory.py [--sizes-mb 64 128 200 512 1024] [--old-sizes-mb 64 128 200]
       [--old-ref REF] [--keep] [--replot bench/results/ingest_memory.json]
(about 8 minutes with the defaults on 2 busy cores; the old code's 200 MB day needs about 5 GB of memory)
Writes ``bench/results/ingest_memory.json`` and ``.png``; days, lakes and the worktree live under
``bench/results/tmp/ingest_memory/`` (gitignored, removed at the end unless ``--keep``). Progress on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from rusage import run_step  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
WORK = RESULTS / "tmp" / "ingest_memory"
DT = "2026-03-01"
TARGET_MIB = 2048
#: The commit before the streaming ingest (issue 29, item 12): ``git worktree add`` of it is the old code.
OLD_REF = "6d232968e93569be49e0ad165ddfafdd2727f860"
LINE = 43  # bytes of one good line
HEADER = b"user_id,item_id,ts\n"
ROWS_PER_USER = 12
CATALOGUE = 200_000
BLOCK_ROWS = 1_000_000
BAD_SHARE = 0.003  # of rows, split evenly over the five kinds of bad row
DUP_SHARE = 0.005  # of rows: a repeat of an earlier row


def _digits(out: np.ndarray, values: np.ndarray, first: int, width: int) -> None:
    """Write ``values`` as zero-padded decimal text into columns ``first .. first + width - 1`` of ``out``."""
    for d in range(width):
        out[:, first + width - 1 - d] = ord("0") + (values // 10**d) % 10


def _lines(rng: np.random.Generator, k: int, n_users: int, start_s: int, span_s: int) -> np.ndarray:
    """[k, LINE] uint8: k good lines of the block that covers seconds [start_s, start_s + span_s) of the day."""
    out = np.zeros((k, LINE), dtype=np.uint8)
    user = (n_users * rng.random(k) ** 2).astype(np.int64)
    out[:, 0] = ord("U")
    _digits(out, (user * 2654435761 + 97531) % 10**10, 1, 10)  # a bijection of [0, 10^10): distinct users stay so
    out[:, 11] = out[:, 21] = ord(",")
    out[:, 12] = ord("I")
    _digits(out, (CATALOGUE * rng.random(k) ** 3).astype(np.int64), 13, 8)
    out[:, 22:33] = np.frombuffer(f"{DT}T".encode(), dtype=np.uint8)
    sec = start_s + rng.integers(0, max(span_s, 1), k)
    for first, value in ((33, sec // 3600), (36, sec // 60 % 60), (39, sec % 60)):
        _digits(out, value, first, 2)
    out[:, 35] = out[:, 38] = ord(":")
    out[:, 41], out[:, 42] = ord("Z"), ord("\n")
    return out


BAD = {  # kind -> (first column, bytes of the same width): every kind keeps the line 43 bytes
    "null_id: user written as text": (0, b"null       "),
    "null_id: empty item": (12, b"         "),
    "malformed: ts": (22, b"not-a-timestamp-at-a"),
    "wrong_day": (22, b"2026-02-28"),
    "malformed: 2 fields": (21, b";"),
}


def write_day(path: Path, size_mb: int, seed: int = 0) -> dict:
    """The day's CSV (see the module docstring); returns what was planted."""
    rng = np.random.default_rng(seed)
    rows = max(size_mb * 10**6 // LINE, 1000)
    n_users = max(rows // ROWS_PER_USER, 1000)
    blocks = -(-rows // BLOCK_ROWS)
    span = 86_400 // blocks
    previous = None
    planted = {"bad": 0, "duplicates": 0}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(HEADER)
        for b in range(blocks):
            k = min(BLOCK_ROWS, rows - b * BLOCK_ROWS)
            lines = _lines(rng, k, n_users, b * span, span)
            dups = int(k * DUP_SHARE)
            src, dst = np.sort(rng.choice(k, size=(2, dups), replace=False), axis=0)  # a repeat comes after its row
            lines[dst] = lines[src]
            if previous is not None:  # a few repeats of the previous block's rows (across chunk boundaries)
                at = rng.choice(k, size=dups // 10, replace=False)
                lines[at] = previous[rng.choice(len(previous), size=len(at), replace=False)]
                dups += len(at)
            bad_rows = rng.choice(k, size=int(k * BAD_SHARE), replace=False)
            for kind, rows_of_kind in zip(BAD, np.array_split(bad_rows, len(BAD))):
                first, text = BAD[kind]
                lines[rows_of_kind, first : first + len(text)] = np.frombuffer(text, dtype=np.uint8)
            planted["bad"] += len(bad_rows)
            planted["duplicates"] += dups
            f.write(lines.tobytes())
            previous = lines[rng.choice(k, size=min(k, 10_000), replace=False)].copy()
            print(f"  writing {path.name}: block {b + 1}/{blocks}", end="\r", flush=True)
    print()
    return {"rows": rows, "bytes": path.stat().st_size, "users_drawn_from": n_users, **planted}


def _launch(args: list[str], code: Path, log: Path) -> dict:
    """``dealrec ARGS`` of the code in ``code`` as its own process: wall and CPU seconds, peak RSS (MiB)."""
    env = os.environ | {"DEALREC_PROGRESS": "0", "PYTHONPATH": str(code)}
    usage, text = run_step(args, log, env, cwd=code)
    summary = [line for line in text.splitlines() if line.startswith("ingest:")]
    return {"wall_s": round(usage["s"], 1), "cpu_s": round(usage["cpu_s"], 1),
            "peak_rss_mib": round(usage["maxrss_kib"] / 1024, 1), "out": (summary or [""])[-1][:300]}  # fmt: skip


def _which_code(code: Path) -> str:
    """The ``dealrec_tasks`` a child started as ``_launch`` starts it imports (it must be the one meant)."""
    env = os.environ | {"PYTHONPATH": str(code)}
    probe = [sys.executable, "-c", "import dealrec_tasks; print(dealrec_tasks.__file__)"]
    return subprocess.run(probe, cwd=code, env=env, capture_output=True, text=True, check=True).stdout.strip()


def ingest_day(code: Path, name: str, day_csv: Path, day: dict) -> dict:
    """Ingest the day with the code in ``code`` in a lake of its own; the run's numbers and what it published."""
    from dealrec_tasks.storage import Lake  # this tree's reader: manifests are the same format in both versions

    root = WORK / f"lake-{name}-{day_csv.stem}"
    shutil.rmtree(root, ignore_errors=True)
    folder = root / "interactions" / f"dt={DT}"
    folder.mkdir(parents=True)
    os.link(day_csv, folder / "day.csv")
    run = _launch(["--lake", str(root), "ingest", "--dt", DT], code, WORK / f"{name}-{day_csv.stem}.log")
    lake = Lake(str(root))
    published = {ds: {f: e["sha256"] for f, e in lake.require_manifest(ds, DT)["files"].items()}
                 for ds in ("rejects", "vocab", "sequences")}  # fmt: skip
    counts = lake.require_manifest("sequences", DT)["counts"]
    shutil.rmtree(root)
    mb = day["bytes"] / 10**6
    return {"size_mb": round(mb, 1), "bytes": day["bytes"], "rows": day["rows"], **run,
            "rss_per_file_byte": round(run["peak_rss_mib"] * 2**20 / day["bytes"], 2),
            "mb_per_s": round(mb / run["wall_s"], 2), "counts": counts, "published_sha256": published}  # fmt: skip


def machine() -> dict:
    return {"cpus": os.cpu_count(), "memory_gib": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            / 2**30, 1), "python": platform.python_version(), "platform": platform.platform(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
            "note": "shared 2-core machine; other jobs may run at the same time, so seconds are noisy (peak RSS "
            "is not)"}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes-mb", type=int, nargs="+", default=[64, 128, 200, 512, 1024], help="days, this code")
    ap.add_argument("--old-sizes-mb", type=int, nargs="*", default=[64, 128, 200], help="days for the old code")
    ap.add_argument("--old-ref", default=OLD_REF, help="the old code's commit (a git worktree of it is made)")
    ap.add_argument("--keep", action="store_true", help=f"keep {WORK.relative_to(REPO)} (days, logs, worktree)")
    ap.add_argument("--replot", help="only redraw this JSON's plot from its numbers")
    args = ap.parse_args()
    if args.replot:
        plot(json.loads(Path(args.replot).read_text()), Path(args.replot).with_suffix(".png"))
        return
    started, info = time.perf_counter(), machine()
    WORK.mkdir(parents=True, exist_ok=True)
    old_code = WORK / "old-code"
    if args.old_sizes_mb and not old_code.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(old_code), args.old_ref], cwd=REPO, check=True,
                       capture_output=True)  # fmt: skip
    codes = {"new": REPO, "old": old_code}
    imports = {k: _which_code(c) for k, c in codes.items() if k == "new" or args.old_sizes_mb}
    for key, path in imports.items():
        if not path.startswith(str(codes[key])):
            raise SystemExit(f"the {key} code's child imports {path}, not the code in {codes[key]}")
    runs: dict[str, list[dict]] = {"new": [], "old": []}
    days = {}
    try:
        for size in sorted(set(args.sizes_mb) | set(args.old_sizes_mb)):
            csv = WORK / f"day-{size}mb.csv"
            print(f"[{size} MB] writing the day", flush=True)
            days[size] = write_day(csv, size)
            for key, sizes in (("old", args.old_sizes_mb), ("new", args.sizes_mb)):
                if size in sizes:
                    print(f"[{size} MB] ingest, {key} code ...", flush=True)
                    r = ingest_day(codes[key], key, csv, days[size])
                    runs[key].append(r)
                    counts = r["counts"]
                    print(f"[{size} MB] {key} code: peak RSS {r['peak_rss_mib']:,.0f} MiB "
                          f"({r['rss_per_file_byte']}x the file), {r['wall_s']} s (CPU {r['cpu_s']} s), "
                          f"accepted {counts['accepted']:,}, rejected {counts['rejected']:,}", flush=True)  # fmt: skip
            csv.unlink()
    finally:
        if not args.keep:
            if old_code.exists():
                subprocess.run(["git", "worktree", "remove", "--force", str(old_code)], cwd=REPO, check=False)
            shutil.rmtree(WORK, ignore_errors=True)
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    same = {}
    for o in runs["old"]:
        n = next((r for r in runs["new"] if r["bytes"] == o["bytes"]), None)
        if n is not None:
            same[str(round(o["size_mb"]))] = n["published_sha256"] == o["published_sha256"]
    biggest = max(runs["new"], key=lambda r: r["bytes"])
    result = {
        "what": "peak RSS (wait4, own process) and seconds of `dealrec ingest --dt D` on one generated CSV day, "
        "this tree's streaming code against the code before it (old ref) on smaller days",
        "command": "python bench/ingest_memory.py " + " ".join(sys.argv[1:]),
        "machine": info,
        "target_peak_rss_mib": TARGET_MIB,
        "day": {
            "format": "one CSV file, 43-byte lines",
            "rows_per_user": ROWS_PER_USER,
            "catalogue": CATALOGUE,
            "bad_share": BAD_SHARE,
            "bad_kinds": list(BAD),
            "duplicate_share": DUP_SHARE,
            "days": {str(k): v for k, v in days.items()},
        },  # fmt: skip
        "new": {"label": "this tree: streamed, chunked (CHUNK_ROWS), compact day arrays", "runs": runs["new"]},
        "old": {
            "ref": args.old_ref,
            "label": "before issue 29 item 12: whole files as bytes, Python rows, pandas object columns",
            "runs": runs["old"],
            "note": "measured on smaller days only: its peak grows about 26x the file (5.3 GB for 200 MB), so a "
            "1 GB day would need more memory than this machine has",
        },
        "same_output": same,
        "summary": {
            "largest_day_mb": biggest["size_mb"],
            "largest_day_peak_rss_mib": biggest["peak_rss_mib"],
            "within_target": biggest["peak_rss_mib"] <= TARGET_MIB,
            "new_rss_per_file_byte": {str(round(r["size_mb"])): r["rss_per_file_byte"] for r in runs["new"]},
            "old_rss_per_file_byte": {str(round(r["size_mb"])): r["rss_per_file_byte"] for r in runs["old"]},
        },
        "wall_s": round(time.perf_counter() - started, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "ingest_memory.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, path.with_suffix(".png"))
    summary = result["summary"]
    verdict = "met" if summary["within_target"] else "MISSED"
    print(f"largest day {biggest['size_mb']:,.0f} MB: peak RSS {biggest['peak_rss_mib']:,.0f} MiB (target "
          f"{TARGET_MIB} MiB: {verdict}); RSS / file: new {summary['new_rss_per_file_byte']}, old "
          f"{summary['old_rss_per_file_byte']}; same output: {same}")  # fmt: skip
    print(f"wrote {path} and .png ({result['wall_s']} s)")


def plot(result: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for key, marker, color in (("new", "o", "C0"), ("old", "s", "C3")):
        runs = result[key]["runs"]
        if not runs:
            continue
        x = [r["size_mb"] for r in runs]
        label = f"{key}: {result[key]['label'].split(':')[0]}"
        axes[0].plot(x, [r["peak_rss_mib"] for r in runs], marker=marker, ls="-", color=color, label=label)
        for r in runs:
            axes[0].annotate(f"{r['rss_per_file_byte']:.1f}x", (r["size_mb"], r["peak_rss_mib"]), fontsize=8,
                             textcoords="offset points", xytext=(4, -12))  # fmt: skip
        axes[1].plot(x, [r["wall_s"] for r in runs], marker=marker, ls="-", color=color, label=f"{label}, wall")
        axes[1].plot(x, [r["cpu_s"] for r in runs], marker=marker, ls=":", color=color, alpha=0.5,
                     label=f"{key}, CPU (user + system)")  # fmt: skip
    axes[0].axhline(result["target_peak_rss_mib"], color="k", lw=1, ls="--",
                    label=f"target ({result['target_peak_rss_mib']:,} MiB)")  # fmt: skip
    axes[0].set(xlabel="day size (MB of CSV)", ylabel="peak RSS (MiB, the ingest process)",
                title="ingest: peak memory (labels: peak RSS / file size)")  # fmt: skip
    axes[1].set(xlabel="day size (MB of CSV)", ylabel="seconds", title="ingest: seconds")
    for ax in axes:
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    load = result["machine"]
    fig.suptitle(f"`dealrec ingest` of one generated CSV day (shared {load['cpus']}-core machine, load "
                 f"{load['loadavg_start'][0]} -> {load['loadavg_end'][0]})")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)


if __name__ == "__main__":
    main()
