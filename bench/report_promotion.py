"""Generate the numbers of docs/promotion.md from committed results, never typed by hand.

Two blocks between markers: the gate's measured promotion rates (``bench/results/gate_power.json``, written by
``python -m bench.gate_power``) and the worked example, the demo's own day (``bench/results/demo_gate.json``: the
``gate/dt=D/gate.json`` that ``make demo`` published, copied with ``--from-demo``).

    .venv/bin/python bench/report_promotion.py              # rewrite the blocks
    .venv/bin/python bench/report_promotion.py --check      # exit 1 when docs/promotion.md is stale
    .venv/bin/python bench/report_promotion.py --from-demo var/lake   # take the demo's newest gate record first
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from generated_text import update_between_markers

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "promotion.md"
POWER = REPO / "bench" / "results" / "gate_power.json"
DEMO = REPO / "bench" / "results" / "demo_gate.json"
BLOCKS = ("power", "example")


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def _interval(row: dict | None, digits: int = 4) -> str:
    if not row or row.get("mean") is None:
        return "n/a"
    if row.get("lower") is None:
        return f"{row['mean']:+.{digits}f} (unresolved)"
    return f"{row['mean']:+.{digits}f}, 95% [{row['lower']:+.{digits}f}, {row['upper']:+.{digits}f}]"


def power_block(result: dict) -> str:
    users = sorted({r["users"] for r in result["rows"]})
    lifts = sorted({r["lift"] for r in result["rows"]})
    rate = {(r["users"], r["lift"]): r for r in result["rows"]}
    head = "| test users a day | " + " | ".join("null (no lift)" if x == 0 else f"lift {x:+.0%}" for x in lifts)
    lines = [
        f"From `bench/results/gate_power.json` ({result['days_per_setting']:,} simulated days per cell, margin "
        f"{result['margin']:g}; `python -m bench.gate_power`, {result['seconds']} s). Share of days promoted:",
        "",
        head + " | old best-of-arms rule, null |",
        "|---:|" + "---:|" * (len(lifts) + 1),
    ]
    for u in users:
        cells = " | ".join(f"{rate[(u, x)]['promotion_rate']:.3f}" for x in lifts)
        lines.append(f"| {u:,} | {cells} | {rate[(u, 0.0)]['old_rule_rate']:.3f} |")
    lines.append("")
    for r in result["running_verdict"]:
        lines.append(
            f"- Running verdict over random, {r['days']} days x {r['users']} users, lift {r['lift']:+.0%}: on the last "
            f'day it says "beats" in {r["final_beats"]:.1%} and "loses" in {r["final_loses"]:.1%} of '
            f"histories; some verdict on at least one day in {r['any_day_verdict']:.1%}."
        )
    return "\n".join(lines)


def example_block(demo: dict) -> str:
    g = demo["gate"]
    metric = g["metric"]
    arms = ", ".join(f"{a['strategy']} {a[metric]:.4f} ({a['users']} users, version {a['version']})" for a in g["arms"])
    vs, running = g.get("primary_vs_random") or {}, g.get("running_vs_random") or {}
    lines = [
        f"From `bench/results/demo_gate.json`: the `gate/dt={g['dt']}/gate.json` that `make demo` published on "
        f"{demo['run_on']} (commit {demo['commit']}).",
        "",
        f"- Arms, mean {metric} over the same test users: {arms}.",
        f"- Challenger: the primary arm, `{g['challenger']['strategy']}`, version {g['challenger']['version']}. "
        f"Champion before: {g['champion_before'] if g['champion_before'] is not None else 'none'}.",
        f"- Decision: **{g['decision']}**, because: {g['reason']}.",
        f"- `{g['challenger']['strategy']}` minus random that day ({vs.get('users', 0)} users, {g['test']}): "
        f"{_interval(vs)}, p = {vs['p']:.3g}."
        if vs.get("p") is not None
        else "- No random arm that day.",
        f"- Running estimate ({running.get('days', 0)} day(s), {running.get('observations', 0)} user-days): "
        f"{_interval(running)}; verdict: **{running.get('verdict', 'n/a')}**.",
    ]
    return "\n".join(lines)


def blocks() -> list[tuple[str, str, str]]:
    """(start marker, end marker, the block with its markers) of each generated part of docs/promotion.md."""
    bodies = {
        "power": power_block(json.loads(POWER.read_text())),
        "example": example_block(json.loads(DEMO.read_text())),
    }
    out = []
    for name in BLOCKS:
        start, end = _markers(name)
        out.append((start, end, f"{start}\n{bodies[name]}\n{end}"))
    return out


def from_demo(lake: Path) -> None:
    """Copy the demo lake's newest gate record to bench/results/demo_gate.json, with the commit and date."""
    import datetime
    import subprocess

    days = sorted(p.name[3:] for p in (lake / "gate").glob("dt=*") if (p / "_manifest.json").exists())
    if not days:
        raise SystemExit(f"{lake}/gate: no published gate record (run `make demo` first)")
    record = json.loads((lake / "gate" / f"dt={days[-1]}" / "gate.json").read_text())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    out = {
        "command": "make demo",
        "run_on": datetime.date.today().isoformat(),
        "commit": commit.stdout.strip() or "unknown",
        "gate": record,
    }
    DEMO.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when docs/promotion.md differs")
    ap.add_argument("--from-demo", type=Path, help="a demo lake (var/lake): copy its newest gate record first")
    args = ap.parse_args()
    if args.from_demo:
        from_demo(args.from_demo)
    return update_between_markers(DOC, blocks(), args.check, "python bench/report_promotion.py")


if __name__ == "__main__":
    raise SystemExit(main())
