"""Issue 29's adversarial probes, re-run against this tree as a user meets them: real ``dealrec`` commands (each its
own process) on tiny synthetic lakes made in a temporary folder, one probe group at a time (G01..G50, one per probe
the issue names). Each group's verdict is computed, never written by hand: ``handled`` when every command of the
group refused in one line naming the value, option or file (exit 2, no traceback), or gave the right result, and
what it published is unchanged or correct (sequences, rejects, manifests' checksums before and after); otherwise
``NOT handled`` with why. Probes a short command cannot make (the lock takeover race, the trigger form's Params, the
DAG's day and retry policy, the compose stack's security, the demo's ``airflow standalone``) run the existing tests
that make them (``pytest -q tests/...::test``), verdict from pytest's exit; the 1 GB memory bench is not rerun, its
peak RSS is read from ``bench/results/ingest_memory.json``.

Usage: .venv/bin/python bench/adversarial_probes.py [--only G07 G12] [--slow] [--keep] [--out DIR]
(8 minutes on 2 busy cores; ``--slow`` adds tests/deploy/test_demo_airflow_home.py's real ``airflow
standalone``, 1 to 4 minutes more). Writes ``bench/results/adversarial_probes.json`` and ``.md`` (a table); ``--only``
reruns some groups and merges them into the existing results. One line per group on stdout as it finishes.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt_mod
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = REPO / ".venv" / "bin"
DEALREC = (
    [str(VENV_BIN / "dealrec")] if (VENV_BIN / "dealrec").exists() else [sys.executable, "-m", "dealrec_tasks.cli"]
)
PYTEST = [str(VENV_BIN / "pytest")] if (VENV_BIN / "pytest").exists() else [sys.executable, "-m", "pytest"]
TRACEBACK = "Traceback (most recent call last)"
D5 = "2026-01-05"  # the base lake's last day (synthetic: 2026-01-01 .. 2026-01-05)
DAY = "2026-03-01"  # the day of the hand-written log lakes
FUTURE = "2062-01-08"
BIG = "1000000000000"  # 10^12
# Every child: one thread (a 2-core machine shared with other jobs), no progress bars, no bytecode in the repo.
CHILD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "DEALREC_PROGRESS": "0",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "PYTHONDONTWRITEBYTECODE": "1",
}
DROPPED_ENV = ("DEALREC_LAKE", "MLFLOW_TRACKING_URI", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
SURROGATE = ["--hidden", "8", "--max-len", "10", "--members", "1", "--batch-size", "64", "--threads", "1"]
INFLUENCE = ["--negatives", "16", "--hvp-negatives", "8", "--threads", "1"]
FINETUNE = ["--epochs", "2", "--batch-size", "16", "--micro-batch-size", "16"]
EVALUATE = ["--base-only", "--max-users", "40", "--num-beams", "2", "--max-new-tokens", "8", "--no-popularity-aware"]


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    return env | CHILD_ENV


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifests(root: Path, *datasets: str) -> dict[str, str]:
    """Checksums of every ``_manifest.json`` under the datasets (all of the lake without any): what is published."""
    tops = [root / d for d in datasets] if datasets else [root]
    return {
        str(p.relative_to(root)): sha256(p)[:12]
        for top in tops
        if top.exists()
        for p in sorted(top.rglob("_manifest.json"))
    }


def changes(before: dict[str, str], after: dict[str, str]) -> str:
    """A one-line account of what a command published: nothing, or the manifests it added, removed or changed."""
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    if not (added or removed or changed):
        return f"unchanged ({len(after)} manifests)"
    parts = [f"+{k}" for k in added] + [f"-{k}" for k in removed] + [f"~{k} {before[k]}->{after[k]}" for k in changed]
    return "changed: " + ", ".join(parts)


def partitions(root: Path, dataset: str) -> list[str]:
    """The days a dataset has published (folders ``dt=YYYY-MM-DD`` holding a manifest)."""
    top = root / dataset
    days = [p.name[3:] for p in top.glob("dt=*") if (p / "_manifest.json").exists()] if top.exists() else []
    return sorted(d for d in days if re.fullmatch(r"\d{4}-\d\d-\d\d", d))


def put(path: Path, data: bytes) -> None:
    """Write a log (or a tampered file) without the library, so the setup cannot share a bug under test."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def csv_log(events: list[tuple[str, str, str]]) -> bytes:
    return ("user_id,item_id,ts\n" + "".join(f"{u},{i},{t}\n" for u, i, t in events)).encode()


def jsonl_log(rows: list[dict]) -> bytes:
    return "\n".join(json.dumps(r) for r in rows).encode() + b"\n"


def parquet_log(rows: list[dict]) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue()


def rejects(root: Path, dt: str) -> list[dict]:
    import pyarrow.parquet as pq

    path = root / "rejects" / f"dt={dt}" / "rejects.parquet"
    return pq.read_table(path).to_pylist() if path.exists() else []


def sequence_lengths(root: Path, dt: str) -> dict[str, int]:
    """user id -> events, of the published cumulative sequences at ``dt`` (read through the library's reader)."""
    from dealrec_tasks.steps.readers import read_sequences
    from dealrec_tasks.storage import Lake

    return {r["user_id"]: len(r["items"]) for r in read_sequences(Lake(str(root)), dt)[0].to_pylist()}


def shown(arg: str) -> str:
    """An argument as a shell would take it back: control characters as $'...'."""
    if any(ord(c) < 32 for c in arg):
        return "$'" + arg.encode("unicode_escape").decode().replace("'", "\\'") + "'"
    return shlex.quote(arg)


@dataclass
class Run:
    """One command of a probe: what ran and what it said."""

    cmd: str
    rc: int | None
    stdout: str
    stderr: str
    seconds: float
    tmp: str = ""  # the run's temporary folder, shown as $TMP

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if ": error: " in line]

    @property
    def last_line(self) -> str:
        line = self._last_line()
        return line.replace(self.tmp, "$TMP") if self.tmp else line

    def _last_line(self) -> str:
        """The error line of a refusal; else the last line it printed (the summary, on stdout, for a success)."""
        if self.rc is None:
            return "(timed out)"
        if self.rc != 0 and self.error_lines:
            return self.error_lines[-1]
        for text in (self.stdout, self.stderr) if self.rc == 0 else (self.stderr, self.stdout):
            lines = [line for line in text.splitlines() if line.strip()]
            if lines:
                return lines[-1].strip()
        return ""

    def row(self) -> dict:
        return {
            "cmd": self.cmd,
            "exit": self.rc,
            "last_line": self.last_line[:2000],
            "seconds": round(self.seconds, 1),
            "output_tail": self.output[-1500:] if self.rc not in (0, 2) or TRACEBACK in self.output else "",
        }


class SetupError(Exception):
    """A command that only builds a probe's lake failed: the group cannot be judged (and the pipeline is broken)."""


@dataclass
class Probe:
    """One group being probed: its commands, what they published, and every check that failed."""

    gid: str
    folder: Path
    tmp: Path
    runs: list[Run] = field(default_factory=list)
    main_runs: list[Run] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    published: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    slow: bool = False

    def display(self, argv: list[str]) -> str:
        text = " ".join(shown(a) for a in argv)
        return text.replace(str(self.tmp), "$TMP")

    def execute(self, argv: list[str], shown_as: list[str], cwd: Path, timeout: int, main: bool) -> Run:
        started = time.perf_counter()
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=child_env())
            rc, out, err = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as exc:
            rc = None
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
            err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        run = Run(self.display(shown_as), rc, out, err, time.perf_counter() - started, str(self.tmp))
        self.runs.append(run)
        if main:
            self.main_runs.append(run)
        return run

    def cli(self, lake: Path | None, *args: str, json_out: bool = False, main: bool = True, timeout: int = 300) -> Run:
        """``dealrec [--lake LAKE] [--json] args``, in the group's folder (so no default path lands in the repo)."""
        head = (["--lake", str(lake)] if lake is not None else []) + (["--json"] if json_out else [])
        return self.execute([*DEALREC, *head, *args], ["dealrec", *head, *args], self.folder, timeout, main)

    def setup(self, lake: Path | None, *args: str, timeout: int = 300) -> Run:
        """A command that builds the probe's state; it must succeed."""
        run = self.cli(lake, *args, main=False, timeout=timeout)
        if run.rc != 0:
            raise SetupError(f"setup `{run.cmd}` exit {run.rc}: {run.last_line}")
        return run

    def pytest(self, *nodes: str, timeout: int = 600) -> Run:
        argv = [*PYTEST, "-q", "-p", "no:cacheprovider", *nodes]
        run = self.execute(argv, ["pytest", "-q", *nodes], REPO, timeout, True)
        summary = next((line for line in reversed(run.stdout.splitlines()) if re.search(r" in [\d.]+s", line)), "")
        if run.rc != 0:
            self.fail(f"pytest exit {run.rc}: {summary or run.last_line}")
        elif re.search(r"\d+ (skipped|deselected|xfailed)", summary) or "passed" not in summary:
            self.fail(f"not every test ran: {summary}")
        self.published.append(f"pytest: {summary.strip('= ')}")
        return run

    def fail(self, why: str) -> None:
        self.failures.append(why)

    def expect(self, condition: bool, why: str) -> bool:
        if not condition:
            self.fail(why)
        return condition

    @contextlib.contextmanager
    def publishes_nothing(self, lake: Path) -> Iterator[None]:
        """The commands inside publish nothing in ``lake`` (every manifest's checksum before and after)."""
        before = manifests(lake)
        yield
        self.published.append(changes(before, manifests(lake)))
        self.expect(manifests(lake) == before, "something was published")

    def refused(self, run: Run, *needles: str) -> bool:
        """Exit 2, no traceback, exactly one ``dealrec CMD: error:`` line, naming every needle."""
        before = len(self.failures)
        short = run.cmd if len(run.cmd) < 120 else run.cmd[:117] + "..."
        if run.rc is None:
            self.fail(f"`{short}` timed out")
            return False
        if run.rc != 2:
            self.fail(f"`{short}` exit {run.rc}, not 2")
        if TRACEBACK in run.output:
            self.fail(f"`{short}` printed a traceback")
        lines = run.error_lines
        if len(lines) != 1:
            self.fail(f"`{short}`: {len(lines)} error lines, not one")
        else:
            missing = [n for n in needles if n not in lines[0]]
            if missing:
                self.fail(f"`{short}`: its error line does not name {missing}")
        return len(self.failures) == before

    def succeeded(self, run: Run, *needles: str) -> bool:
        """Exit 0, no traceback, every needle in what it printed."""
        before = len(self.failures)
        short = run.cmd if len(run.cmd) < 120 else run.cmd[:117] + "..."
        if run.rc != 0:
            self.fail(f"`{short}` exit {run.rc}, not 0: {run.last_line[:300]}")
        if TRACEBACK in run.output:
            self.fail(f"`{short}` printed a traceback")
        missing = [n for n in needles if n not in run.output]
        if missing:
            self.fail(f"`{short}` does not print {missing}")
        return len(self.failures) == before

    def json_result(self, run: Run) -> dict:
        """The step's result of ``dealrec --json``: its last stdout line."""
        lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else {}


# -------------------------------------------------------------------------------------------------------------
# Shared lakes: built once per run (only when a selected group needs one), copied by each group.
# -------------------------------------------------------------------------------------------------------------
def build_base(p: Probe, lake: Path) -> None:
    """5 synthetic days (600 users, 100 items) ingested, samples and a one-member surrogate at D5 (about 10 s)."""
    p.setup(lake, "synthetic", "--users", "600", "--items", "100", "--days", "5", "--events-per-day", "800")
    p.setup(lake, "ingest", "--all")
    p.setup(lake, "samples", "--dt", D5, "--max-len", "10")
    p.setup(lake, "surrogate", "--dt", D5, *SURROGATE, "--max-epochs", "2", "--cold-start")


class Fixtures:
    """The base lake (5 synthetic days ingested, samples and a one-member surrogate at D5), a tiny LLM built on its
    catalogue, and the base lake scored (influence and effort): what most probes start from."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.folder = tmp / "_fixtures"
        self.built: dict[str, Path] = {}
        self.setup_runs: list[dict] = []

    def _probe(self) -> Probe:
        self.folder.mkdir(parents=True, exist_ok=True)
        return Probe("setup", self.folder, self.tmp)

    def _record(self, name: str, probe: Probe, started: float) -> None:
        self.setup_runs.extend(r.row() for r in probe.runs)
        print(f"  setup: {name} ({time.perf_counter() - started:.0f} s)", flush=True)

    def base(self) -> Path:
        if "base" not in self.built:
            started, p, lake = time.perf_counter(), self._probe(), self.folder / "base"
            build_base(p, lake)
            self._record("base lake", p, started)
            self.built["base"] = lake
        return self.built["base"]

    def model(self) -> Path:
        if "model" not in self.built:
            base = self.base()
            started, p, out = time.perf_counter(), self._probe(), self.folder / "tiny-llm"
            lake = self.folder / "model-lake"
            shutil.copytree(base, lake)
            p.setup(
                lake,
                "tiny-llm",
                "--out",
                str(out),
                "--pretrain-steps",
                "0",
                "--hidden-size",
                "32",
                "--intermediate-size",
                "64",
                "--num-layers",
                "2",
                "--num-heads",
                "4",
                "--vocab-size",
                "600",
                "--corpus-gap-days",
                "3",
            )
            self._record("tiny LLM", p, started)
            self.built["model"] = out
        return self.built["model"]

    def scored(self) -> Path:
        if "scored" not in self.built:
            base, model = self.base(), self.model()
            started, p, lake = time.perf_counter(), self._probe(), self.folder / "scored"
            shutil.copytree(base, lake)
            p.setup(lake, "influence-solve", "--dt", D5, *INFLUENCE)
            p.setup(lake, "influence", "--dt", D5, "--shard", "0/1", *INFLUENCE)
            p.setup(lake, "merge-influence", "--dt", D5, "--shards", "1")
            p.setup(lake, "effort", "--dt", D5, "--model", str(model), "--shard", "0/1", "--batch-size", "32")
            p.setup(lake, "merge-effort", "--dt", D5, "--shards", "1")
            self._record("scored lake", p, started)
            self.built["scored"] = lake
        return self.built["scored"]

    def copy(self, which: str, to: Path) -> Path:
        shutil.copytree(getattr(self, which)(), to)
        return to


@dataclass
class Group:
    gid: str
    item: int
    title: str
    probe: str
    run: Callable[[Probe, Fixtures], None]
    slow: bool = False


GROUPS: list[Group] = []


def group(gid: str, item: int, title: str, probe: str):
    """Register a probe group (the order of registration is the order of the run)."""

    def register(fn: Callable[[Probe, Fixtures], None]) -> Callable[[Probe, Fixtures], None]:
        GROUPS.append(Group(gid, item, title, probe, fn))
        return fn

    return register


# -------------------------------------------------------------------------------------------------------------
# Item 1: stale state
# -------------------------------------------------------------------------------------------------------------
@group(
    "G01",
    1,
    "finetune resumes another coreset's state",
    "select --n 64; finetune --work-dir W; select --n 200; finetune --work-dir W (and a fresh W2 on a copy)",
)
def g01(p: Probe, fx: Fixtures) -> None:
    lake, model = fx.copy("scored", p.folder / "lake"), str(fx.model())
    adapter = lake / "adapters" / f"dt={D5}" / "adapter_model.safetensors"
    p.setup(lake, "select", "--dt", D5, "--n", "64")
    first = p.cli(lake, "finetune", "--dt", D5, "--model", model, "--work-dir", "W", *FINETUNE, main=False)
    if not p.succeeded(first) or not adapter.exists():
        return
    sha_64 = sha256(adapter)
    p.setup(lake, "select", "--dt", D5, "--n", "200")
    straight = p.folder / "straight"
    shutil.copytree(lake, straight)
    second = p.cli(lake, "finetune", "--dt", D5, "--model", model, "--work-dir", "W", *FINETUNE, json_out=True)
    fresh = p.cli(straight, "finetune", "--dt", D5, "--model", model, "--work-dir", "W2", *FINETUNE, main=False)
    if not (p.succeeded(second) and p.succeeded(fresh)):
        return
    counts = p.json_result(second).get("counts", {})
    sha_200, sha_fresh = sha256(adapter), sha256(straight / "adapters" / f"dt={D5}" / "adapter_model.safetensors")
    p.published.append(
        f"adapter of 64 rows {sha_64[:12]}, after select --n 200 {sha_200[:12]}, "
        f"fresh run on the 200 {sha_fresh[:12]}; "
        f"train_samples {counts.get('train_samples')}, resumed_from_epoch {counts.get('resumed_from_epoch')}"
    )
    p.expect(counts.get("train_samples") == 200, f"trained on {counts.get('train_samples')} rows, not the new 200")
    p.expect(counts.get("resumed_from_epoch") is None, f"resumed from epoch {counts.get('resumed_from_epoch')}")
    p.expect(sha_200 != sha_64, "the 64-row adapter was published byte for byte under the new coreset's name")
    p.expect(sha_200 == sha_fresh, "the adapter differs from a fresh run's on the same coreset")


@group(
    "G02",
    1,
    "a corrupted evaluation embedding cache items-*.npy",
    "evaluate --cache-dir C on lake 1; flip a byte / permute the rows of C/items-*.npy; evaluate on copies 2 and 3",
)
def g02(p: Probe, fx: Fixtures) -> None:
    import numpy as np

    model = str(fx.model())
    lakes = [fx.copy("base", p.folder / f"lake{i}") for i in (1, 2, 3)]
    cache = p.folder / "C"

    def evaluate(lake: Path, main: bool) -> dict | None:
        run = p.cli(lake, "evaluate", "--dt", D5, "--model", model, "--cache-dir", str(cache), *EVALUATE, main=main)
        metrics = lake / "evaluation" / f"dt={D5}" / "metrics.json"
        if p.succeeded(run) and p.expect(metrics.exists(), f"{metrics.name} not published"):
            return json.loads(metrics.read_text()) | {"_notes": run.stderr}
        return None

    reference = evaluate(lakes[0], main=False)
    arrays = sorted(cache.glob("items-*.npy"))
    if reference is None or not p.expect(len(arrays) == 1, f"{len(arrays)} cache arrays, not 1"):
        return
    path = arrays[0]
    good = np.load(path)

    def flipped_byte() -> None:
        data = bytearray(path.read_bytes())
        data[len(data) - good.nbytes + 3] ^= 0x40  # the sign/exponent byte of the first float
        path.write_bytes(bytes(data))

    def rows_permuted() -> None:
        np.save(path, good[np.random.default_rng(0).permutation(len(good))])

    for lake, damage in zip(lakes[1:], (flipped_byte, rows_permuted)):
        damage()
        got = evaluate(lake, main=True)
        if got is None:
            continue
        same = {k: v for k, v in got.items() if k != "_notes"} == {k: v for k, v in reference.items() if k != "_notes"}
        p.published.append(
            f"{damage.__name__}: ndcg@20 {reference['ndcg@20']:.4f} -> {got['ndcg@20']:.4f}, "
            f"cache {'restored' if np.array_equal(np.load(path), good) else 'NOT restored'}"
        )
        p.expect(same, f"{damage.__name__}: the metrics differ from those of an intact cache")
        p.expect(path.name in got["_notes"], f"{damage.__name__}: no note names {path.name}")
        p.expect(
            np.array_equal(np.load(path), good), f"{damage.__name__}: the cache was not replaced by the right array"
        )


# -------------------------------------------------------------------------------------------------------------
# Item 2: non-finite and degenerate numbers
# -------------------------------------------------------------------------------------------------------------
@group("G03", 2, "surrogate --lr 1e3 (NaN weights)", "surrogate --dt D --lr 1e3 --max-epochs 8 --dropout 0 ...")
def g03(p: Probe, fx: Fixtures) -> None:
    lake = fx.copy("base", p.folder / "lake")
    with p.publishes_nothing(lake):
        run = p.cli(lake, "surrogate", "--dt", D5, "--lr", "1e3", "--max-epochs", "8", "--dropout", "0", *SURROGATE)
        p.refused(run, "lr=1000.0", "non-finite")


@group(
    "G04",
    2,
    "NaN surrogate weights / a NaN influence member",
    "surrogate republished with NaN weights -> influence-solve; an influence shard with a NaN member -> "
    "merge-influence",
)
def g04(p: Probe, fx: Fixtures) -> None:
    import io

    import pyarrow as pa
    import pyarrow.compute as pc
    import torch

    from dealrec_tasks.storage import Lake

    torch.set_num_threads(1)
    standard = {"files", "created_at", "dataset", "dt", "manifest_version", "config", "inputs", "uri"}

    # A surrogate published with NaN weights (what `surrogate --lr 1e3` used to publish).
    root = fx.copy("base", p.folder / "nan-surrogate")
    lake = Lake(str(root))
    manifest = lake.manifest("surrogate", D5)
    part = root / "surrogate" / f"dt={D5}"
    blobs = {name: (part / name).read_bytes() for name in manifest["files"]}
    state = torch.load(io.BytesIO(blobs["model.pt"]), weights_only=True)
    state["item_emb.weight"][1:] = float("nan")
    buf = io.BytesIO()
    torch.save(state, buf)
    blobs["model.pt"] = buf.getvalue()
    extra = {k: v for k, v in manifest.items() if k not in standard}
    lake.publish("surrogate", D5, {}, config=manifest["config"], extra=extra, blobs=blobs, inputs=manifest["inputs"])
    before = manifests(root)
    run = p.cli(root, "influence-solve", "--dt", D5, *INFLUENCE)
    p.refused(run, "model.pt", "not finite")
    p.published.append("NaN surrogate: " + changes(before, manifests(root)))
    p.expect(not (root / "influence" / f"dt={D5}" / "solve" / "_manifest.json").exists(), "a solve was published")

    # An influence shard whose member column is NaN: never merged (was turned into 0.0).
    root = fx.copy("scored", p.folder / "nan-member")
    lake = Lake(str(root))
    shard = f"influence/dt={D5}/shard=0-of-1"
    manifest = lake.manifest(shard, None)
    table = lake.read(shard, None, "influence.parquet")
    column = next(c for c in table.column_names if c.startswith("influence_"))
    nan = pc.multiply(table.column(column), pa.scalar(float("nan")))
    table = table.set_column(table.column_names.index(column), column, nan)
    extra = {k: v for k, v in manifest.items() if k not in standard}
    lake.publish(
        shard, None, {"influence.parquet": table}, config=manifest["config"], extra=extra, inputs=manifest["inputs"]
    )
    before = manifests(root)
    run = p.cli(root, "merge-influence", "--dt", D5, "--shards", "1")
    p.refused(run, column)
    p.published.append("NaN member: scores_influence " + changes(before, manifests(root)))
    p.expect(manifests(root) == before, "merge-influence published scores from a NaN member")


@group("G05", 2, "influence-solve --damping inf", "influence-solve --dt D --damping inf")
def g05(p: Probe, fx: Fixtures) -> None:
    lake = fx.copy("base", p.folder / "lake")
    with p.publishes_nothing(lake):
        p.refused(p.cli(lake, "influence-solve", "--dt", D5, "--damping", "inf", *INFLUENCE), "damping=inf")


@group("G06", 2, "effort --alpha 0 (all-zero effort)", "effort --dt D --alpha 0")
def g06(p: Probe, fx: Fixtures) -> None:
    lake, model = fx.copy("base", p.folder / "lake"), str(fx.model())
    with p.publishes_nothing(lake):
        p.refused(p.cli(lake, "effort", "--dt", D5, "--model", model, "--alpha", "0"), "alpha=0")


@group("G07", 2, "samples --test-days 100000 (an empty day)", "samples --dt D --max-len 10 --test-days 100000")
def g07(p: Probe, fx: Fixtures) -> None:
    lake = fx.copy("base", p.folder / "lake")
    before = manifests(lake, "samples")
    p.refused(p.cli(lake, "samples", "--dt", D5, "--max-len", "10", "--test-days", "100000"), "test_days=100000")
    p.published.append("samples " + changes(before, manifests(lake, "samples")))
    p.expect(manifests(lake, "samples") == before, "the day's samples were replaced")


# -------------------------------------------------------------------------------------------------------------
# Item 3: file names are names
# -------------------------------------------------------------------------------------------------------------
def names_probe(p: Probe, logs: dict[str, str], bad_row_in: str) -> None:
    """Each log (name -> the one user whose 2 rows only it holds) beside ``a.csv``; ``bad_row_in`` also gets a row
    without a user. Every file's rows must be in the sequences once, the bad row in rejects under its own name."""
    lake = p.folder / "lake"
    t1, t2 = f"{DAY}T01:00:00Z", f"{DAY}T02:00:00Z"
    for name, user in logs.items():
        events = [(user, "i1", t1), (user, "i2", t2)]
        if name.endswith(".jsonl"):
            rows = [{"user_id": u, "item_id": i, "ts": t} for u, i, t in events]
            put(
                lake / "interactions" / f"dt={DAY}" / name,
                jsonl_log(rows + [{"user_id": None, "item_id": "i3", "ts": t1}] * (name == bad_row_in)),
            )
        else:
            put(lake / "interactions" / f"dt={DAY}" / name, csv_log(events + [("", "i3", t1)] * (name == bad_row_in)))
    run = p.cli(lake, "ingest", "--dt", DAY)
    if not p.succeeded(run):
        return
    seqs = sequence_lengths(lake, DAY)
    got = [(r["source_file"], r["reason"].split(":")[0]) for r in rejects(lake, DAY)]
    p.published.append(f"sequences {seqs}; rejects {got}")
    p.expect(seqs == {u: 2 for u in logs.values()}, f"sequences {seqs}, not each file's 2 rows once")
    p.expect(got == [(bad_row_in, "null_id")], f"rejects {got}, not one null_id row of {bad_row_in!r}")


@group("G08", 3, "a log named a.csv#.jsonl beside a.csv", "logs a.csv and a.csv#.jsonl; ingest --dt D")
def g08(p: Probe, fx: Fixtures) -> None:
    names_probe(p, {"a.csv": "plain", "a.csv#.jsonl": "hash"}, "a.csv#.jsonl")


@group("G09", 3, "a log named a.csv?x.csv beside a.csv", "logs a.csv and a.csv?x.csv; ingest --dt D")
def g09(p: Probe, fx: Fixtures) -> None:
    names_probe(p, {"a.csv": "plain", "a.csv?x.csv": "query"}, "a.csv?x.csv")


@group(
    "G10", 3, "log names with a tab, CR or newline", "logs a.csv, $'a\\t.csv', $'a\\r.csv', $'a\\n.csv'; ingest --dt D"
)
def g10(p: Probe, fx: Fixtures) -> None:
    names_probe(p, {"a.csv": "plain", "a\t.csv": "tab", "a\r.csv": "cr", "a\n.csv": "newline"}, "a\n.csv")


# -------------------------------------------------------------------------------------------------------------
# Item 4: future days
# -------------------------------------------------------------------------------------------------------------
@group(
    "G11",
    4,
    "ingest --dt 2062-01-08 when caught up",
    "ingest --dt 2062-01-08; ingest --all with a 2062 log folder; a later real day; --allow-future",
)
def g11(p: Probe, fx: Fixtures) -> None:
    lake = p.folder / "lake"
    days = ["2026-03-01", "2026-03-02", "2026-03-03"]
    log = lambda d: jsonl_log([{"user_id": "a", "item_id": f"i{d[-1]}", "ts": f"{d}T01:00:00Z"}])  # noqa: E731
    put(lake / "interactions" / f"dt={days[0]}" / "x.jsonl", log(days[0]))
    p.setup(lake, "ingest", "--dt", days[0])
    before = manifests(lake)
    p.refused(p.cli(lake, "ingest", "--dt", FUTURE), f"dt={FUTURE}", "--allow-future")
    p.expect(manifests(lake) == before, f"ingest --dt {FUTURE} published: {changes(before, manifests(lake))}")
    put(lake / "interactions" / f"dt={days[1]}" / "x.jsonl", log(days[1]))
    put(lake / "interactions" / f"dt={FUTURE}" / "x.jsonl", log(FUTURE))
    p.refused(p.cli(lake, "ingest", "--all"), f"dt={FUTURE}")
    p.expect(partitions(lake, "sequences") == days[:2], f"sequences {partitions(lake, 'sequences')} after --all")
    put(lake / "interactions" / f"dt={days[2]}" / "x.jsonl", log(days[2]))
    p.succeeded(p.cli(lake, "ingest", "--dt", days[2]))  # a later real day still goes in
    p.succeeded(p.cli(lake, "ingest", "--dt", FUTURE, "--allow-future"))  # asked for explicitly
    p.published.append(f"sequences {partitions(lake, 'sequences')}")
    p.expect(partitions(lake, "sequences") == [*days, FUTURE], "the days published are not the real ones + 2062")


@group(
    "G12",
    4,
    "the daily DAG's dt Param after tomorrow",
    "probed through tests/dags/test_helpers.py::test_a_dt_param_after_tomorrow_is_refused_unless_the_run_allows_it",
)
def g12(p: Probe, fx: Fixtures) -> None:
    p.pytest("tests/dags/test_helpers.py::test_a_dt_param_after_tomorrow_is_refused_unless_the_run_allows_it")


# -------------------------------------------------------------------------------------------------------------
# Item 5: Params the form lets through, and the library's CLI options
# -------------------------------------------------------------------------------------------------------------
@group(
    "G13",
    5,
    "trigger-form Params (NaN, 1e-300, 10^12, base_model paths)",
    "probed through tests/dags/test_param_schema.py (the form's schema, and the library in the first task)",
)
def g13(p: Probe, fx: Fixtures) -> None:
    p.pytest("tests/dags/test_param_schema.py")


@group(
    "G14",
    5,
    "NaN for lambda, ratio, hard_prune, margin",
    "select --lam nan; select --ratio nan; select --hard-prune nan; gate --versions 1 --margin nan",
)
def g14(p: Probe, fx: Fixtures) -> None:
    lake = fx.copy("scored", p.folder / "lake")
    with p.publishes_nothing(lake):
        p.refused(p.cli(lake, "select", "--dt", D5, "--lam", "nan"), "lam=nan")
        p.refused(p.cli(lake, "select", "--dt", D5, "--ratio", "nan"), "ratio=nan")
        p.refused(p.cli(lake, "select", "--dt", D5, "--hard-prune", "nan"), "hard_prune=nan")
        p.refused(p.cli(lake, "gate", "--dt", D5, "--versions", "1", "--margin", "nan"), "margin=nan")


@group("G15", 5, "select --ratio 1e-300", "select --dt D --ratio 1e-300 (on a scored day)")
def g15(p: Probe, fx: Fixtures) -> None:
    lake = fx.copy("scored", p.folder / "lake")
    with p.publishes_nothing(lake):
        p.refused(p.cli(lake, "select", "--dt", D5, "--ratio", "1e-300"), "ratio=1e-300")


@group(
    "G16",
    5,
    "n, epochs, eval_users, surrogate_max_epochs of 10^12",
    "select --n 10^12; finetune --epochs 10^12; evaluate --max-users 10^12; surrogate --max-epochs 10^12",
)
def g16(p: Probe, fx: Fixtures) -> None:
    lake = fx.copy("scored", p.folder / "lake")
    with p.publishes_nothing(lake):
        p.refused(p.cli(lake, "select", "--dt", D5, "--n", BIG), f"n={BIG}")
        p.refused(p.cli(lake, "finetune", "--dt", D5, "--epochs", BIG), f"epochs={BIG}")
        p.refused(p.cli(lake, "evaluate", "--dt", D5, "--max-users", BIG), f"max_users={BIG}")
        p.refused(p.cli(lake, "surrogate", "--dt", D5, "--max-epochs", BIG), f"max_epochs={BIG}")


@group(
    "G17",
    5,
    "base_model /, /etc/passwd, /dev/zero, a trailing newline",
    "finetune --model / | /etc/passwd | /dev/zero | $'<model>\\n'; effort --model /etc/passwd",
)
def g17(p: Probe, fx: Fixtures) -> None:
    lake, model = fx.copy("scored", p.folder / "lake"), str(fx.model())
    with p.publishes_nothing(lake):
        for bad in ("/", "/etc/passwd", "/dev/zero", model + "\n"):
            p.refused(p.cli(lake, "finetune", "--dt", D5, "--model", bad, timeout=120), "base_model=", bad.strip())
        run = p.cli(lake, "effort", "--dt", D5, "--model", "/etc/passwd", timeout=120)
        p.refused(run, "base_model=", "/etc/passwd")


# -------------------------------------------------------------------------------------------------------------
# Item 6: ids
# -------------------------------------------------------------------------------------------------------------
def ids_probe(p: Probe, files: dict[str, bytes], expected: dict[tuple[str, int], object], users: dict[str, int]):
    """Ingest the files; each expected (file, row) must be a ``bad_id`` reject whose raw value holds the user id as
    written; the sequences must be ``users`` (id -> events) exactly."""
    lake = p.folder / "lake"
    for name, data in files.items():
        put(lake / "interactions" / f"dt={DAY}" / name, data)
    if not p.succeeded(p.cli(lake, "ingest", "--dt", DAY)):
        return
    got = {(r["source_file"], r["row"]): r for r in rejects(lake, DAY)}
    seqs = sequence_lengths(lake, DAY)
    p.published.append(
        f"sequences {seqs}; rejects "
        + ", ".join(f"{f}:{row} {r['reason'][:70]}" for (f, row), r in sorted(got.items()))
    )
    for key, value in expected.items():
        row = got.get(key)
        if not p.expect(row is not None, f"{key[0]} row {key[1]} is not rejected"):
            continue
        p.expect(row["reason"].startswith("bad_id"), f"{key[0]} row {key[1]}: reason {row['reason']!r}, not bad_id")
        try:
            raw = json.loads(row["raw"])["user_id"]
        except (ValueError, KeyError, TypeError):
            raw = row["raw"]
        same = json.dumps(raw) == json.dumps(value)  # 1 == True == 1.0 in Python: compare as JSON
        p.expect(same, f"{key[0]} row {key[1]}: raw {str(row['raw'])[:80]!r} is not the value as written")
    p.expect(set(got) == set(expected), f"other rows rejected: {sorted(set(got) - set(expected))}")
    p.expect(seqs == users, f"sequences {seqs}, not {users}")


@group(
    "G18",
    6,
    "Parquet ids of float, bool, list, struct type",
    "float/bool/list/struct user_id Parquet files beside user '1' (CSV) and 1 (Parquet int); ingest --dt D",
)
def g18(p: Probe, fx: Fixtures) -> None:
    ts = f"{DAY}T01:00:00Z"
    values = {"floats.parquet": 1.0, "bools.parquet": True, "lists.parquet": ["a"], "structs.parquet": {"a": 1}}
    files = {name: parquet_log([{"user_id": v, "item_id": "i1", "ts": ts}]) for name, v in values.items()}
    files["ints.parquet"] = parquet_log([{"user_id": 1, "item_id": "i2", "ts": ts}])
    files["a.csv"] = csv_log([("1", "i3", ts)])
    ids_probe(p, files, {(name, 1): v for name, v in values.items()}, {"1": 2})


@group(
    "G19",
    6,
    "ids with NUL, newline, tab, padding, 1 MB",
    "JSONL user ids $'U\\x00x', $'U\\nx', $'U\\tx', ' U000001 ', 'u'*2^20 beside 'U000001'; ingest --dt D",
)
def g19(p: Probe, fx: Fixtures) -> None:
    ts = f"{DAY}T01:00:00Z"
    bad = ["U\x00x", "U\nx", "U\tx", " U000001 ", "u" * (1 << 20)]
    rows = [{"user_id": v, "item_id": "i1", "ts": ts} for v in bad] + [
        {"user_id": "U000001", "item_id": "i2", "ts": ts}
    ]
    ids_probe(p, {"log.jsonl": jsonl_log(rows)}, {("log.jsonl", i + 1): v for i, v in enumerate(bad)}, {"U000001": 1})


@group("G20", 6, 'JSONL ids 1.5, true, ["a"], {}', "JSONL user ids 1.5, true, [\"a\"], {} beside 'u1'; ingest --dt D")
def g20(p: Probe, fx: Fixtures) -> None:
    ts = f"{DAY}T01:00:00Z"
    bad = [1.5, True, ["a"], {}]
    rows = [{"user_id": v, "item_id": "i1", "ts": ts} for v in bad] + [{"user_id": "u1", "item_id": "i2", "ts": ts}]
    ids_probe(p, {"log.jsonl": jsonl_log(rows)}, {("log.jsonl", i + 1): v for i, v in enumerate(bad)}, {"u1": 1})


# -------------------------------------------------------------------------------------------------------------
# Item 7: the last tracebacks
# -------------------------------------------------------------------------------------------------------------
def parser_limit_probe(p: Probe, name: str, lines: list[str], bad: int, reason: str) -> None:
    """One log whose line ``lines[bad]`` is past a parser's limit: that row (``bad + 1``, a CSV's header is row 1) a
    ``malformed`` reject with its raw text, the other rows ingested."""
    lake = p.folder / "lake"
    put(lake / "interactions" / f"dt={DAY}" / name, ("\n".join(lines) + "\n").encode())
    good = len(lines) - 1 - name.endswith(".csv")
    if not p.succeeded(p.cli(lake, "ingest", "--dt", DAY), f"accepted {good}"):
        return
    got = {(r["source_file"], r["row"]): r for r in rejects(lake, DAY)}
    bad_row, raw = bad + 1, lines[bad]
    row = got.get((name, bad_row))
    p.published.append(
        f"sequences {sequence_lengths(lake, DAY)}; rejects "
        + ", ".join(f"{f}:{r} {v['reason'][:60]}" for (f, r), v in sorted(got.items()))
    )
    if p.expect(row is not None, f"row {bad_row} of {name} is not rejected"):
        p.expect(row["reason"].startswith(reason), f"reason {row['reason'][:100]!r}, not {reason!r}")
        p.expect(row["raw"] == raw, "the raw text of the rejected row is not the line as written")


@group("G21", 7, "a CSV field over the csv module's limit", "a.csv with a 200,000-character item_id; ingest --dt D")
def g21(p: Probe, fx: Fixtures) -> None:
    lines = [
        "user_id,item_id,ts",
        f"u1,i1,{DAY}T01:00:00Z",
        f"u2,{'x' * 200_000},{DAY}T02:00:00Z",
        f"u3,i3,{DAY}T03:00:00Z",
    ]
    parser_limit_probe(p, "a.csv", lines, 2, "malformed: unreadable CSV row")


@group("G22", 7, "a 5,000-digit JSON integer", "b.jsonl with user_id 777...7 (5,000 digits); ingest --dt D")
def g22(p: Probe, fx: Fixtures) -> None:
    ok = [json.dumps({"user_id": f"u{i}", "item_id": "i1", "ts": f"{DAY}T0{i}:00:00Z"}) for i in (1, 3)]
    digits = '{"user_id": ' + "7" * 5000 + f', "item_id": "i2", "ts": "{DAY}T02:00:00Z"}}'
    parser_limit_probe(p, "b.jsonl", [ok[0], digits, ok[1]], 1, "malformed: invalid JSON")


@group("G23", 7, "JSON nested 100,000 deep", "b.jsonl with user_id [[[...]]] 100,000 deep; ingest --dt D")
def g23(p: Probe, fx: Fixtures) -> None:
    ok = [json.dumps({"user_id": f"u{i}", "item_id": "i1", "ts": f"{DAY}T0{i}:00:00Z"}) for i in (1, 3)]
    deep = '{"user_id": ' + "[" * 100_000 + "]" * 100_000 + f', "item_id": "i2", "ts": "{DAY}T02:00:00Z"}}'
    parser_limit_probe(p, "b.jsonl", [ok[0], deep, ok[1]], 1, "malformed: invalid JSON (nested too deeply)")


@group(
    "G24",
    7,
    "samples --dt 9999-12-31",
    "a log day 9999-12-31; ingest --dt 9999-12-31 --allow-future; samples --dt 9999-12-31",
)
def g24(p: Probe, fx: Fixtures) -> None:
    lake, far = fx.copy("base", p.folder / "lake"), "9999-12-31"
    put(lake / "interactions" / f"dt={far}" / "a.csv", csv_log([("U000001", "I00001", f"{far}T10:00:00Z")]))
    p.setup(lake, "ingest", "--dt", far, "--allow-future")
    p.succeeded(p.cli(lake, "samples", "--dt", far, "--max-len", "10"), "samples: train")
    p.published.append(f"samples {partitions(lake, 'samples')}")
    p.expect(far in partitions(lake, "samples"), "no samples published for 9999-12-31")


@group("G25", 7, "synthetic --seed -1", "synthetic --seed -1")
def g25(p: Probe, fx: Fixtures) -> None:
    lake = p.folder / "lake"
    p.refused(p.cli(lake, "synthetic", "--seed", "-1"), "seed=-1")
    p.published.append(f"lake: {len(manifests(lake)) if lake.exists() else 'no'} manifests")
    p.expect(not lake.exists() or not manifests(lake), "something was published")


@group("G26", 7, "synthetic --zipf-a inf", "synthetic --zipf-a inf")
def g26(p: Probe, fx: Fixtures) -> None:
    lake = p.folder / "lake"
    p.refused(p.cli(lake, "synthetic", "--zipf-a", "inf"), "zipf_a=inf")
    p.published.append(f"lake: {len(manifests(lake)) if lake.exists() else 'no'} manifests")
    p.expect(not lake.exists() or not manifests(lake), "something was published")


@group("G27", 7, "synthetic --items 10", "synthetic --items 10 --days 2 --users 50; ingest --all")
def g27(p: Probe, fx: Fixtures) -> None:
    lake = p.folder / "lake"
    p.succeeded(p.cli(lake, "synthetic", "--items", "10", "--days", "2", "--users", "50"), "items 10")
    p.succeeded(p.cli(lake, "ingest", "--all"))
    p.published.append(f"interactions {partitions(lake, 'interactions')}, sequences {partitions(lake, 'sequences')}")
    p.expect(len(partitions(lake, "sequences")) == 2, "the 2 days were not ingested")


@group("G28", 7, "effort --target-modules nope", "effort --dt D --target-modules nope")
def g28(p: Probe, fx: Fixtures) -> None:
    lake, model = fx.copy("base", p.folder / "lake"), str(fx.model())
    with p.publishes_nothing(lake):
        p.refused(p.cli(lake, "effort", "--dt", D5, "--model", model, "--target-modules", "nope"), "target_modules=")


@group("G29", 7, "finetune --lr inf", "finetune --dt D --lr inf")
def g29(p: Probe, fx: Fixtures) -> None:
    lake = fx.copy("scored", p.folder / "lake")
    p.setup(lake, "select", "--dt", D5, "--n", "64")
    with p.publishes_nothing(lake):
        p.refused(p.cli(lake, "finetune", "--dt", D5, "--model", str(fx.model()), "--lr", "inf"), "lr=inf")


@group("G30", 7, "evaluate --ks 100000", "evaluate --dt D --ks 100000")
def g30(p: Probe, fx: Fixtures) -> None:
    lake = fx.copy("base", p.folder / "lake")
    with p.publishes_nothing(lake):
        p.refused(p.cli(lake, "evaluate", "--dt", D5, "--model", str(fx.model()), "--ks", "100000"), "ks=", "100000")


@group("G31", 7, "tiny-llm --out /proc/x", "tiny-llm --out /proc/x --pretrain-steps 1")
def g31(p: Probe, fx: Fixtures) -> None:
    lake = fx.copy("base", p.folder / "lake")
    p.refused(p.cli(lake, "tiny-llm", "--out", "/proc/x", "--pretrain-steps", "1"), "out='/proc/x'")
    p.published.append("no model written (/proc/x cannot hold one)")


@group("G32", 7, "tiny-llm --pretrain-lr nan", "tiny-llm --out M --pretrain-lr nan")
def g32(p: Probe, fx: Fixtures) -> None:
    lake = fx.copy("base", p.folder / "lake")
    p.refused(p.cli(lake, "tiny-llm", "--out", str(p.folder / "M"), "--pretrain-lr", "nan"), "pretrain_lr=nan")
    p.published.append(f"model directory M {'written' if (p.folder / 'M').exists() else 'not written'}")
    p.expect(not (p.folder / "M").exists(), "a model directory was written")


@group(
    "G33", 7, "dealrec tiny-llm --help (and every subcommand's)", "dealrec tiny-llm --help; dealrec CMD --help for all"
)
def g33(p: Probe, fx: Fixtures) -> None:
    from dealrec_tasks.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    commands = ["tiny-llm", *sorted(set(sub.choices) - {"tiny-llm"})]
    broken = []
    for command in commands:
        run = p.cli(None, command, "--help", main=command == "tiny-llm", timeout=120)
        if run.rc != 0 or not run.stdout.startswith(f"usage: dealrec {command}") or TRACEBACK in run.output:
            broken.append(f"{command} (exit {run.rc}: {run.last_line[:100]})")
    p.published.append(f"{len(commands) - len(broken)} of {len(commands)} subcommands' --help work")
    p.expect(not broken, f"--help broken: {broken}")


@group("G34", 7, "--tracking-uri file:///etc", "rollback --reason x --tracking-uri file:///etc")
def g34(p: Probe, fx: Fixtures) -> None:
    p.refused(p.cli(None, "rollback", "--reason", "x", "--tracking-uri", "file:///etc"), "tracking_uri='file:///etc'")


@group("G35", 7, "--retry-wait-s inf", "rollback --reason x --retry-wait-s inf")
def g35(p: Probe, fx: Fixtures) -> None:
    p.refused(p.cli(None, "rollback", "--reason", "x", "--retry-wait-s", "inf"), "retry_wait_s=inf")


@group(
    "G36",
    7,
    "a surrogate manifest whose counts.items was edited",
    "counts.items of surrogate/dt=D/_manifest.json set to items+1, 10^12, 'x'; influence-solve --dt D",
)
def g36(p: Probe, fx: Fixtures) -> None:
    lake = p.folder / "lake"
    build_base(p, lake)  # built in place: a copy's manifests still record where they were first published
    path = lake / "surrogate" / f"dt={D5}" / "_manifest.json"
    original = json.loads(path.read_text())
    for items in (original["counts"]["items"] + 1, 10**12, "x"):
        edited = json.loads(json.dumps(original))
        edited["counts"]["items"] = items
        path.write_text(json.dumps(edited))
        run = p.cli(lake, "influence-solve", "--dt", D5, *INFLUENCE)
        p.refused(run, f"file://{path}", f"counts.items={items!r}")
    p.expect(not manifests(lake, "influence"), "an influence solve was published")
    p.published.append(f"influence {changes({}, manifests(lake, 'influence'))}")
    # The same lake moved (or restored from a backup) elsewhere: which manifest does the line name?
    moved = p.folder / "moved"
    shutil.copytree(lake, moved)
    run = p.cli(moved, "influence-solve", "--dt", D5, *INFLUENCE, main=False)
    if run.rc == 2 and f"file://{moved}/" not in run.last_line:
        named = re.search(r"file://\S+?_manifest\.json", run.last_line)
        p.notes.append(
            "in a moved copy of the lake the line names the manifest where the lake was built "
            f"({p.display([named.group(0) if named else run.last_line[:120]])}), not the edited file "
            f"({p.display([str(moved / 'surrogate' / f'dt={D5}' / '_manifest.json')])})"
        )


# -------------------------------------------------------------------------------------------------------------
# Items 8, 9, 11: a changed middle day, backup folders, dataset names
# -------------------------------------------------------------------------------------------------------------
@group(
    "G37",
    8,
    "a middle day's logs changed after later days were built",
    "7 days ingested; day 05's log: a row appended | same size, other bytes | a file added; ingest --all",
)
def g37(p: Probe, fx: Fixtures) -> None:
    built = p.folder / "built"
    p.setup(
        built,
        "synthetic",
        "--users",
        "300",
        "--items",
        "100",
        "--days",
        "7",
        "--events-per-day",
        "200",
        "--bad-rows",
        "3",
    )
    p.setup(built, "ingest", "--all")
    middle = "2026-01-05"
    log = f"interactions/dt={middle}/part-1-bad-rows.jsonl"

    def appended(root: Path) -> None:
        with open(root / log, "ab") as f:
            f.write(jsonl_log([{"user_id": "U000001", "item_id": "I00001", "ts": f"{middle}T23:00:00Z"}]))

    def same_size(root: Path) -> None:
        data = (root / log).read_bytes()
        at = data.index(b'"item_id": "I') + len(b'"item_id": "I')
        (root / log).write_bytes(data[:at] + (b"9" if data[at : at + 1] != b"9" else b"8") + data[at + 1 :])

    def file_added(root: Path) -> None:
        put(
            root / f"interactions/dt={middle}/late.jsonl",
            jsonl_log([{"user_id": "U1", "item_id": "I1", "ts": f"{middle}T22:00:00Z"}]),
        )

    for change in (appended, same_size, file_added):
        root = p.folder / change.__name__
        shutil.copytree(built, root)
        before = manifests(root, "sequences", "vocab", "rejects")
        change(root)
        p.refused(p.cli(root, "ingest", "--all"), f"dt={middle}", "changed", "2026-01-06")
        after = manifests(root, "sequences", "vocab", "rejects")
        p.published.append(f"{change.__name__}: {changes(before, after)}")
        p.expect(after == before, f"{change.__name__}: something was republished")


@group(
    "G38",
    9,
    "a backup folder samples/dt=D.bak with a manifest",
    "samples/ and sequences/dt=2026-01-04.bak copied with manifests; ingest --dt 2026-01-05; days; the DEALRec view",
)
def g38(p: Probe, fx: Fixtures) -> None:
    from dealrec_tasks.days import list_days
    from dealrec_tasks.days_page import days_page
    from dealrec_tasks.storage import Lake

    lake, d4 = p.folder / "lake", "2026-01-04"
    p.setup(lake, "synthetic", "--users", "300", "--items", "100", "--days", "5", "--events-per-day", "300")
    for day in ("2026-01-01", "2026-01-02", "2026-01-03", d4):
        p.setup(lake, "ingest", "--dt", day)
    p.setup(lake, "samples", "--dt", d4, "--max-len", "10")
    for dataset in ("samples", "sequences"):
        shutil.copytree(lake / dataset / f"dt={d4}", lake / dataset / f"dt={d4}.bak")
    note = f"samples/dt={d4}.bak: ignored"
    p.succeeded(p.cli(lake, "ingest", "--dt", D5), note, f"sequences/dt={d4}.bak: ignored")
    p.succeeded(p.cli(lake, "days"), note)
    p.succeeded(p.cli(lake, "samples", "--dt", D5, "--max-len", "10"))
    try:
        days = list_days(Lake(str(lake)))
        page = days_page(days, Lake(str(lake)).uri())
        view = f"view days {[d['dt'] for d in days]}, notes {days.notes}"
        p.expect(note in page, "the DEALRec view does not name the .bak folder")
        p.expect(sorted(d["dt"] for d in days) == [d4, D5], f"the view's days are {[d['dt'] for d in days]}")
    except Exception as exc:  # noqa: BLE001 - the view breaking is the finding
        view = f"the DEALRec view raised {type(exc).__name__}: {exc}"
        p.fail(view)
    p.published.append(f"sequences {partitions(lake, 'sequences')}; samples {partitions(lake, 'samples')}; {view}")
    p.expect(partitions(lake, "sequences")[-1] == D5, "day 05 was not ingested")


@group(
    "G39",
    10,
    "two writers take over a dead holder's lock",
    "probed through tests/unit/test_storage.py (file:// and s3://): the takeover race and the compare-and-swap",
)
def g39(p: Probe, fx: Fixtures) -> None:
    p.pytest(
        "tests/unit/test_storage.py::test_writers_that_find_the_same_dead_lock_take_it_over_one_at_a_time",
        "tests/unit/test_storage.py::test_replace_if_unchanged_swaps_for_one_caller_only",
    )


@group(
    "G40",
    11,
    "--dataset ../../x",
    "samples | replay --days 3 | surrogate | select | finetune --dataset ../../x, beside a lake with an outside x",
)
def g40(p: Probe, fx: Fixtures) -> None:
    outside = p.folder / "b"
    put(outside / "x" / "_manifest.json", b"{}")  # what <lake>/datasets/../../x would reach
    lake = outside / "lake"
    (lake / "datasets").mkdir(parents=True)
    before = sorted(str(q.relative_to(outside)) for q in outside.rglob("*"))
    for command in (["samples"], ["replay", "--days", "3"], ["surrogate"], ["select"], ["finetune"]):
        p.refused(p.cli(lake, *command, "--dataset", "../../x"), "dataset='../../x'")
    after = sorted(str(q.relative_to(outside)) for q in outside.rglob("*"))
    p.published.append("files in and beside the lake " + ("unchanged" if after == before else f"{before} -> {after}"))
    p.expect(after == before, "something was written in or beside the lake")


# -------------------------------------------------------------------------------------------------------------
# Item 12: memory (read from the bench's results, not rerun)
# -------------------------------------------------------------------------------------------------------------
@group(
    "G41",
    12,
    "memory on a large day (target < 2 GiB for a 1 GB day)",
    "not rerun (about 8 min, 1.5 GB of memory): read from bench/results/ingest_memory.json",
)
def g41(p: Probe, fx: Fixtures) -> None:
    path = REPO / "bench" / "results" / "ingest_memory.json"
    if not p.expect(path.exists(), f"{path} missing"):
        return
    result = json.loads(path.read_text())
    summary, target = result.get("summary", {}), result.get("target_peak_rss_mib", 2048)
    size, peak = summary.get("largest_day_mb", 0), summary.get("largest_day_peak_rss_mib")
    p.published.append(f"{path.relative_to(REPO)}: {size:,.0f} MB CSV day peaked at {peak} MiB (target {target} MiB)")
    p.notes.append(f"from {path.relative_to(REPO)} ({result.get('command')})")
    p.expect(size >= 1024, f"the largest day measured is {size} MB, not 1 GB")
    p.expect(peak is not None and peak < 2048, f"peak {peak} MiB is not under 2 GiB")


# -------------------------------------------------------------------------------------------------------------
# Item 13: compose security (through its tests), and the tracking URI's tokens on the CLI
# -------------------------------------------------------------------------------------------------------------
@group(
    "G42",
    13,
    "FAB auth manager: 403 without read access to dealrec_daily",
    "probed through tests/deploy/test_fab_auth.py (a real api-server) and test_compose.py's FAB users test",
)
def g42(p: Probe, fx: Fixtures) -> None:
    p.pytest(
        "tests/deploy/test_fab_auth.py",
        "tests/deploy/test_compose.py::test_airflow_logins_are_fab_users_and_the_admin_is_made_at_init",
    )


@group(
    "G43",
    13,
    "the admin password only where needed",
    "probed through tests/deploy/test_compose.py::test_each_secret_reaches_only_the_services_that_need_it",
)
def g43(p: Probe, fx: Fixtures) -> None:
    p.pytest("tests/deploy/test_compose.py::test_each_secret_reaches_only_the_services_that_need_it")


@group(
    "G44",
    13,
    "secret files 0600",
    "probed through tests/deploy/test_compose.py::test_files_holding_secrets_are_for_their_owner_only",
)
def g44(p: Probe, fx: Fixtures) -> None:
    p.pytest("tests/deploy/test_compose.py::test_files_holding_secrets_are_for_their_owner_only")


@group(
    "G45",
    13,
    "the Redis password",
    "probed through tests/deploy/test_compose.py: Redis requires .env's password; the broker URL is masked",
)
def g45(p: Probe, fx: Fixtures) -> None:
    p.pytest(
        "tests/deploy/test_compose.py::test_redis_requires_the_password_of_env_and_refuses_a_bad_one",
        "tests/deploy/test_compose.py::test_the_broker_url_is_masked_where_it_is_printed",
    )


@group(
    "G46",
    13,
    "URL redaction of tokens",
    "rollback --tracking-uri https://TOKEN@127.0.0.1:9/ | http://127.0.0.1:9/?token=TOKEN (unreachable); "
    "tests/unit/tracking/test_tracking_registry.py's redaction tests",
)
def g46(p: Probe, fx: Fixtures) -> None:
    secret = "S3cr3tT0k3n"
    for uri in (f"https://{secret}@127.0.0.1:9/", f"http://127.0.0.1:9/?token={secret}&sig={secret}x"):
        run = p.cli(None, "rollback", "--reason", "x", "--tracking-uri", uri, "--retries", "1", "--retry-wait-s", "0")
        p.refused(run, "***")
        p.expect(secret not in run.output, f"`{run.cmd[:80]}` printed the token")
    p.pytest(
        "tests/unit/tracking/test_tracking_registry.py::test_redact_uri_hides_tokens_and_credential_parameters",
        "tests/unit/tracking/test_tracking_registry.py::test_a_token_in_the_tracking_uri_is_never_printed",
    )


# -------------------------------------------------------------------------------------------------------------
# Items 14 and 15: the demo's Airflow home, a manual run's day
# -------------------------------------------------------------------------------------------------------------
DEMO_HOME = "tests/deploy/test_demo_airflow_home.py"
DEMO_QUICK = f"{DEMO_HOME}::test_the_demo_home_holds_the_shared_secrets_privately_and_keeps_them"


@group(
    "G47",
    14,
    "the demo's airflow standalone home (a shared JWT secret)",
    f"probed through {DEMO_HOME} (its real `airflow standalone` test, ~200 s, only with --slow)",
)
def g47(p: Probe, fx: Fixtures) -> None:
    if p.slow:
        p.pytest(DEMO_HOME, timeout=600)
    else:
        p.notes.append("only the quick test ran; its real `airflow standalone` test needs --slow")
        p.pytest(DEMO_QUICK)


@group(
    "G48",
    15,
    "a manual run without dt takes the last complete day",
    "probed through tests/dags/test_helpers.py::test_a_manual_run_without_dt_takes_the_last_complete_day and "
    "::test_daily_dt",
)
def g48(p: Probe, fx: Fixtures) -> None:
    p.pytest(
        "tests/dags/test_helpers.py::test_a_manual_run_without_dt_takes_the_last_complete_day",
        "tests/dags/test_helpers.py::test_daily_dt",
    )


@group(
    "G49",
    15,
    "a day without logs is not published as a day to train on",
    "ingest --dt D2 (no log folder); a folder with only _SUCCESS; samples --dt D2",
)
def g49(p: Probe, fx: Fixtures) -> None:
    lake, d1, d2, d3 = p.folder / "lake", "2026-03-01", "2026-03-02", "2026-03-03"
    put(
        lake / "interactions" / f"dt={d1}" / "x.jsonl",
        jsonl_log([{"user_id": "a", "item_id": "i1", "ts": f"{d1}T01:00:00Z"}]),
    )
    p.setup(lake, "ingest", "--dt", d1)
    before = manifests(lake)
    p.succeeded(p.cli(lake, "ingest", "--dt", d2), f"dt={d2}: no log file in", "not published")
    put(lake / "interactions" / f"dt={d3}" / "_SUCCESS", b"")
    p.succeeded(p.cli(lake, "ingest", "--dt", d3))
    p.refused(p.cli(lake, "samples", "--dt", d2), "no published partition")
    p.published.append(changes(before, manifests(lake)))
    p.expect(partitions(lake, "sequences") == [d1], f"sequences {partitions(lake, 'sequences')}, not [{d1}]")


@group(
    "G50",
    15,
    "input errors fail at once, without retries",
    "probed through tests/dags/test_dag_structure.py::test_retry_policy_fails_fast_on_errors_a_retry_cannot_fix",
)
def g50(p: Probe, fx: Fixtures) -> None:
    p.pytest("tests/dags/test_dag_structure.py::test_retry_policy_fails_fast_on_errors_a_retry_cannot_fix")


# -------------------------------------------------------------------------------------------------------------
# Running and reporting
# -------------------------------------------------------------------------------------------------------------
def run_group(g: Group, fx: Fixtures, tmp: Path, slow: bool) -> dict:
    """Run one group in its own folder; its verdict is whether any check failed."""
    folder = tmp / g.gid
    folder.mkdir(parents=True, exist_ok=True)
    p = Probe(g.gid, folder, tmp, slow=slow)
    started = time.perf_counter()
    try:
        g.run(p, fx)
    except SetupError as exc:
        p.fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - a probe that breaks is reported, and the run goes on
        traceback.print_exc()
        p.fail(f"the probe itself raised {type(exc).__name__}: {exc}")
    if not p.runs and not p.failures and not p.published:
        p.fail("nothing was probed")
    mains = p.main_runs or p.runs[-1:]
    exits = [r.rc for r in mains]
    return {
        "id": g.gid,
        "item": g.item,
        "title": g.title,
        "probe": g.probe,
        "exit": (exits[0] if len(set(exits)) == 1 else exits) if exits else "-",
        "last_line": mains[0].last_line[:2000] if mains else "",
        "published": "; ".join(p.published),
        "verdict": "handled" if not p.failures else "NOT handled",
        "why": "; ".join(p.failures),
        "notes": p.notes,
        "seconds": round(time.perf_counter() - started, 1),
        "commands": [r.row() for r in p.runs],
    }


def cell(text: object, limit: int = 220) -> str:
    text = str(text).replace("\n", " ").replace("\r", " ").replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def write_markdown(path: Path, result: dict) -> None:
    c = result["counts"]
    lines = [
        "# Issue 29's adversarial probes against this tree",
        "",
        f"`{result['command']}` on {result['date']}, commit `{result['commit']}` ({result['seconds']:.0f} s). "
        f"**{c['handled']} handled, {c['not_handled']} NOT handled** of {c['groups']} groups. "
        "Verdicts are computed by the script (exit code, one error line naming the value, no traceback, what was "
        "published); `$TMP` is the run's temporary folder. Commands and outputs: the `.json` beside.",
        *(
            f"Rerun since, rows replaced: `{r['command']}` ({', '.join(r['groups'])}, {r['seconds']:.0f} s"
            + (f", commit `{r['commit'][:7]}`)." if r.get("commit") else ").")
            for r in result.get("reruns", [])
        ),
        "",
        "| id | item | probe | exit | last line | published | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["groups"]:
        verdict = r["verdict"] if r["verdict"] == "handled" else f"**NOT handled**: {r['why']}"
        if r.get("notes"):
            verdict += " (" + "; ".join(r["notes"]) + ")"
        lines.append(
            f"| {r['id']} | {r['item']} | {cell(r['title'] + ': ' + r['probe'], 260)} | {cell(r['exit'])} | "
            f"{cell(r['last_line'], 200)} | {cell(r['published'], 260)} | {cell(verdict, 600)} |"
        )
    path.write_text("\n".join(lines) + "\n")


def git_commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench/results/adversarial_probes", help="writes OUT.json and OUT.md")
    parser.add_argument("--only", nargs="+", metavar="GID", help="rerun these groups, merged into OUT.json")
    parser.add_argument("--slow", action="store_true", help="also the demo's real `airflow standalone` test")
    parser.add_argument("--keep", action="store_true", help="keep the temporary lakes (their folder is printed)")
    args = parser.parse_args()
    out = Path(args.out)
    out = out if out.is_absolute() else REPO / out
    known = {g.gid for g in GROUPS}
    only = [gid.upper() for gid in args.only or []]
    if unknown := sorted(set(only) - known):
        parser.error(f"unknown groups {unknown}; known: G01..{GROUPS[-1].gid}")
    selected = [g for g in GROUPS if not only or g.gid in only]
    tmp = Path(tempfile.mkdtemp(prefix="dealrec-probes-"))
    fx = Fixtures(tmp)
    started = time.perf_counter()
    rows = []
    print(f"{len(selected)} groups, lakes in {tmp}", flush=True)
    try:
        for g in selected:
            row = run_group(g, fx, tmp, args.slow)
            rows.append(row)
            line = f"{row['id']} item {row['item']:>2} {row['verdict']:<11} {row['seconds']:6.1f} s  {g.title}"
            print(line + (f"  -- {row['why'][:300]}" if row["why"] else ""), flush=True)
    finally:
        if args.keep:
            print(f"lakes kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    seconds = elapsed = time.perf_counter() - started
    command = " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    json_path, md_path = out.with_suffix(".json"), out.with_suffix(".md")
    if only and json_path.exists():  # a rerun of some groups replaces their rows in the last full run
        previous = json.loads(json_path.read_text())
        fresh = {r["id"]: r for r in rows}
        rows = [fresh.pop(r["id"], r) for r in previous["groups"]] + list(fresh.values())
        rows.sort(key=lambda r: r["id"])
        rerun = {"command": command, "groups": only, "seconds": round(seconds, 1), "commit": git_commit()}
        reruns = previous.get("reruns", []) + [rerun]
        command, seconds, commit, date = previous["command"], previous["seconds"], previous["commit"], previous["date"]
    else:
        reruns, commit, date = [], git_commit(), dt_mod.datetime.now(dt_mod.UTC).isoformat(timespec="seconds")
    handled = sum(r["verdict"] == "handled" for r in rows)
    result = {
        "what": "issue 29's adversarial probes re-run with the dealrec CLI on tiny synthetic lakes "
        "(bench/adversarial_probes.py); verdicts computed from exit codes, messages and what was published",
        "command": command,
        "date": date,
        "commit": commit,
        "cli": " ".join(DEALREC),
        "seconds": round(seconds, 1),
        "reruns": reruns,
        "counts": {"groups": len(rows), "handled": handled, "not_handled": len(rows) - handled},
        "setup": fx.setup_runs,
        "groups": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    write_markdown(md_path, result)
    print(f"{handled} handled, {len(rows) - handled} NOT handled in {elapsed:.0f} s -> {json_path}, {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
