"""A ``dealrec`` step's own wall and CPU seconds and peak RSS, measured by forking it from a small launcher.

Why a launcher: a process's ru_maxrss starts at the peak RSS of the memory image it exec'ed from, so a step started
straight from a benchmark (which may hold gigabytes of generated logs) would report at least the benchmark's peak
(measured: a 0.8 GB parent made ``python -c pass`` report 814 MiB; through this launcher, 13 MiB). Shared by
``bench/ingest_memory.py`` and ``bench/influence_memory.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

LAUNCHER = """
import json, os, sys, time
result, argv = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(argv[0], argv)
_, status, usage = os.wait4(pid, 0)
with open(result, "w") as f:
    json.dump({"exit": os.waitstatus_to_exitcode(status), "maxrss_kib": usage.ru_maxrss,
               "s": time.perf_counter() - t0, "cpu_s": usage.ru_utime + usage.ru_stime}, f)
"""


def run_step(args: list[str], log: Path, env: dict[str, str], cwd: Path | None = None) -> tuple[dict, str]:
    """``python -m dealrec_tasks.cli ARGS`` as its own process, its stdout and stderr to ``log``: (usage, output),
    usage holding ``s``, ``cpu_s`` and ``maxrss_kib``. A step that fails ends the benchmark with its output's tail."""
    result = log.with_suffix(".rusage.json")
    cmd = [sys.executable, "-c", LAUNCHER, str(result), sys.executable, "-m", "dealrec_tasks.cli", *args]
    with open(log, "wb") as sink:
        subprocess.run(cmd, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT, check=True)
    usage = json.loads(result.read_text())
    text = log.read_text(errors="replace")
    if usage["exit"] != 0:
        where = f" ({cwd})" if cwd else ""
        raise SystemExit(f"dealrec {' '.join(args)}{where} failed (exit {usage['exit']}):\n{text[-3000:]}")
    return usage, text
