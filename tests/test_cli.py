"""The CLI as a person uses it: summaries, non-zero exits with a message naming the parameter or file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dealrec_tasks.cli import main
from tests.conftest import GAMES, needs_games


def run(*args: str, lake: Path) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "dealrec_tasks.cli", "--lake", str(lake), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_demo_runs_the_whole_pipeline(tmp_path):
    """The README's first command, end to end on embedded defaults (a few minutes)."""
    lake = tmp_path / "lake"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dealrec_tasks.cli",
            "--lake",
            str(lake),
            "demo",
            "--work-dir",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "synthetic: days 7" in out and out.count("ingest:") == 7
    assert "rejected 25" in out  # the demo's producer sends some bad rows every day
    for step in (
        "samples:",
        "surrogate:",
        "influence-solve:",
        "merge-influence:",
        "merge-effort:",
        "select:",
        "finetune:",
        "evaluate:",
    ):
        assert step in out, step
    dt = "2026-01-07"
    assert "tiny-llm:" not in out  # the shipped model: nothing is pretrained
    finetune_line = next(line for line in out.splitlines() if line.startswith("finetune:"))
    assert "preset games-tiny-v1 preset" in finetune_line  # the shipped model's own fine-tuning settings
    for partition in ("coreset", "adapters", "evaluation", "scores_influence", "scores_effort"):
        assert (lake / partition / f"dt={dt}" / "_manifest.json").exists(), partition
    assert (lake / "coreset" / f"dt={dt}" / "report.png").stat().st_size > 10_000
    assert "Done for dt=2026-01-07" in out


def test_bad_parameters_exit_2_with_a_clear_message(tmp_path, capsys):
    assert main(["--lake", str(tmp_path), "samples", "--dt", "2026-01-01", "--max-len", "0"]) == 2
    assert "max_len=0: must be >= 1" in capsys.readouterr().err
    assert main(["--lake", str(tmp_path), "ingest", "--dt", "01/02/2026"]) == 2
    assert "dt='01/02/2026'" in capsys.readouterr().err
    assert main(["--lake", str(tmp_path), "samples", "--dt", "2026-01-01"]) == 2
    assert "sequences/dt=2026-01-01: no published partition" in capsys.readouterr().err
    assert main(["--lake", str(tmp_path), "import-dealrec", str(tmp_path / "nowhere")]) == 2
    assert "missing sequential_train.txt" in capsys.readouterr().err
    assert main(["--lake", str(tmp_path), "ingest"]) == 2
    assert "exactly one of --dt" in capsys.readouterr().err
    assert main(["--lake", str(tmp_path), "surrogate", "--dt", "2026-01-01", "--members", "0"]) == 2
    assert "members=0: must be >= 1" in capsys.readouterr().err
    # These ended in tracebacks (issue 14, item 7): one line naming the parameter now, exit 2.
    for cmd, message in (
        (["merge-effort", "--dt", "2026-01-01", "--shards", "0"], "shards=0: must be >= 1"),
        (["merge-influence", "--dt", "2026-01-01", "--shards", "0"], "shards=0: must be >= 1"),
        (["evaluate", "--dt", "2026-01-01", "--max-users", "-5"], "max_users=-5: must be >= 0"),
        (["effort", "--dt", "2026-01-01", "--model", str(tmp_path / "no-model")], "not a local Hugging Face model"),
        (["merge-effort", "--dt", "2026-01-01/../../x", "--shards", "1"], "dt='2026-01-01/../../x'"),
    ):
        assert main(["--lake", str(tmp_path), *cmd]) == 2, cmd
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (cmd, err)


def test_import_of_a_malformed_release_names_file_and_line(tmp_path, capsys):
    src = tmp_path / "release"
    src.mkdir()
    (src / "sequential_train.txt").write_text("1 1 2\n2 2 x3\n")
    (src / "sequential_valid.txt").write_text("1\n2\n")
    (src / "sequential_test.txt").write_text("1\n2\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"item_id": [1, 2], "asin": ["A", "B"], "title": ["a", "b"]}), src / "items.parquet")
    assert main(["--lake", str(tmp_path / "lake"), "import-dealrec", str(src)]) == 2
    assert "sequential_train.txt:2: expected integer ids" in capsys.readouterr().err


@needs_games()
def test_import_games_counts(tmp_path):
    code, out, err = run("import-dealrec", str(GAMES), lake=tmp_path / "lake")
    assert code == 0, err
    assert "users 49,156, items 17,332, test_users 8,696" in out


@pytest.mark.parametrize("cmd", ["import-dealrec", "replay", "synthetic", "ingest", "samples", "demo"])
def test_every_command_has_help(cmd):
    proc = subprocess.run([sys.executable, "-m", "dealrec_tasks.cli", cmd, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "usage:" in proc.stdout
