"""Issue 29, item 7: the last tracebacks. Every case is one line naming the parameter, file or path, and exit 2 (or,
for bad log content, a rejected row or file with its reason and raw value while the day goes on); every
subcommand's --help works."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from dealrec_tasks import steps
from dealrec_tasks.catalogue import INTERACTIONS, REJECTS, SURROGATE
from dealrec_tasks.cli import build_parser, main
from dealrec_tasks.config import IngestConfig
from dealrec_tasks.steps.surrogate import train_surrogate
from dealrec_tasks.storage import Lake, join_uri
from dealrec_tasks.surrogate.config import SurrogateConfig
from tests.conftest import synthetic_lake

DT = "2026-01-04"
SUBCOMMANDS = sorted(
    next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices  # noqa: SLF001
)


@pytest.fixture(scope="module")
def day_lake(tmp_path_factory) -> Lake:
    """Synthetic logs of 4 days ingested, samples and a one-member surrogate at DT (seconds)."""
    root = tmp_path_factory.mktemp("cli-errors") / "lake"
    lake = synthetic_lake(root, DT, max_len=10, users=80, items=40, days=4, events_per_day=150)
    train_surrogate(lake, DT, SurrogateConfig.tiny(hidden=8, max_epochs=1, members=1, checkpoints=1))
    return lake


def copy_of(lake: Lake, tmp_path: Path) -> Lake:
    shutil.copytree(lake.root.removeprefix("file://"), tmp_path / "lake")
    return Lake(str(tmp_path / "lake"))


def refused(capsys, lake: str, *argv: str) -> str:
    """The one error line of ``dealrec argv`` (exit 2, no traceback)."""
    assert main(["--lake", lake, *argv]) == 2, argv
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1 and lines[0].startswith(f"dealrec {argv[0]}: error: "), err
    return lines[0]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_a_working_help(command, capsys):
    """Discovered from the parser: a '%' in a config's help text ("cosine to 10 %") broke argparse's formatting."""
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: dealrec {command}")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["synthetic", "--seed", "-1"], "seed=-1: must be in [0, 2147483647]"),
        (["synthetic", "--zipf-a", "inf"], "zipf_a=inf: must be finite"),
        (["synthetic", "--zipf-a", "1e300"], "zipf_a=1e+300: must be in (0, 10]"),
        (["finetune", "--dt", DT, "--lr", "inf"], "lr=inf: must be finite"),
        (["finetune", "--dt", DT, "--epochs", "1000000000000"], "epochs=1000000000000: must be in [1, 1000]"),
        (["evaluate", "--dt", DT, "--ks", "100000"], "ks=(100000,): must be in [1, 1000]"),
        (["tiny-llm", "--pretrain-lr", "nan"], "pretrain_lr=nan: must be finite"),
        (["rollback", "--reason", "x", "--tracking-uri", "file:///etc"], "tracking_uri='file:///etc': MLflow 3"),
        (["rollback", "--reason", "x", "--retry-wait-s", "inf"], "retry_wait_s=inf: must be finite"),
        (["rollback", "--reason", "x", "--retry-wait-s", "1e300"], "retry_wait_s=1e+300: must be in [0, 600]"),
        (["select", "--dt", DT, "--ratio", "1e-300"], "ratio=1e-300: must be in [1e-06, 1]"),
        (["select", "--dt", DT, "--n", "1000000000000"], "n=1000000000000: must be in [1, 10000000]"),
        (["surrogate", "--dt", DT, "--max-epochs", "1000000000000"], "max_epochs=1000000000000: must be in"),
        (["select", "--dt", DT, "--lam", "nan"], "lam=nan"),
    ],
)
def test_bad_numbers_are_one_line_before_anything_runs(argv, message, tmp_path, capsys):
    line = refused(capsys, str(tmp_path / "lake"), *argv)
    assert message in line, line


def test_a_target_module_the_model_lacks_is_named(day_lake, capsys):
    line = refused(capsys, day_lake.root, "effort", "--dt", DT, "--target-modules", "nope")
    assert "target_modules=['nope']: the model has no ['nope']" in line and "v_proj" in line, line


def test_an_unwritable_model_directory_is_named_before_pretraining(day_lake, capsys):
    line = refused(capsys, day_lake.root, "tiny-llm", "--out", "/proc/x", "--pretrain-steps", "1")
    assert "out='/proc/x': cannot write the model there" in line, line


def test_a_small_synthetic_catalogue_is_generated(tmp_path, capsys):
    """10 items leave some of the 8 genres empty: users who like those genres pick from the whole catalogue."""
    argv = ["--lake", str(tmp_path / "lake"), "synthetic", "--items", "10", "--days", "2", "--users", "50"]
    assert main(argv) == 0
    assert "items 10" in capsys.readouterr().out


def test_an_edited_surrogate_manifest_is_named_not_a_traceback(day_lake, tmp_path, capsys):
    lake = copy_of(day_lake, tmp_path)
    path = Path(lake.partition(SURROGATE, DT).removeprefix("file://")) / "_manifest.json"
    original = json.loads(path.read_text())
    for items in (original["counts"]["items"] + 1, 10**12, "x"):
        edited = json.loads(json.dumps(original))
        edited["counts"]["items"] = items
        path.write_text(json.dumps(edited))
        line = refused(capsys, lake.root, "influence-solve", "--dt", DT, "--negatives", "8", "--hvp-negatives", "4")
        # The file edited, in this lake: a copied lake's manifest still records the lake it was written in.
        assert f"{lake.partition(SURROGATE, DT)}/_manifest.json: counts.items={items!r}" in line, line
        assert "republish the surrogate" in line


def test_samples_of_the_last_day_a_date_can_hold(day_lake, tmp_path, capsys):
    """9999-12-31 has no next day in Python's dates: the samples' end of day overflowed."""
    lake = copy_of(day_lake, tmp_path)
    far = "9999-12-31"
    lake.storage.write_bytes(
        join_uri(lake.partition(INTERACTIONS, far), "a.csv"),
        b"user_id,item_id,ts\nU000001,I00001,9999-12-31T10:00:00Z\n",
    )
    steps.ingest(lake, far, IngestConfig(), allow_future=True)
    assert main(["--lake", lake.root, "samples", "--dt", far]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "samples: train" in captured.out


def test_log_content_beyond_the_parsers_limits_is_rejected_and_the_day_goes_on(tmp_path, capsys):
    """A CSV field over the csv module's limit (128 KiB), a 5,000-digit JSON integer and 100,000-deep JSON nesting
    each stopped the day with a traceback; now each is a reject with its reason and raw value."""
    lake = Lake(str(tmp_path / "lake"))
    day = "2026-01-01"
    huge = "x" * 200_000
    csv_text = f"user_id,item_id,ts\nu1,i1,{day}T01:00:00Z\nu2,{huge},{day}T02:00:00Z\nu3,i3,{day}T03:00:00Z\n"
    ok = json.dumps({"user_id": "u4", "item_id": "i4", "ts": f"{day}T04:00:00Z"})
    digits = '{"user_id": ' + "7" * 5000 + f', "item_id": "i5", "ts": "{day}T05:00:00Z"}}'
    deep = '{"user_id": ' + "[" * 100_000 + "]" * 100_000 + f', "item_id": "i6", "ts": "{day}T06:00:00Z"}}'
    huge_header = f"user_id,item_id,ts,{huge}\nu7,i7,{day}T07:00:00Z\n"
    where = lake.partition(INTERACTIONS, day)
    lake.storage.write_bytes(join_uri(where, "a.csv"), csv_text.encode())
    lake.storage.write_bytes(join_uri(where, "b.jsonl"), "\n".join([ok, digits, deep]).encode() + b"\n")
    lake.storage.write_bytes(join_uri(where, "c.csv"), huge_header.encode())
    assert main(["--lake", lake.root, "ingest", "--dt", day]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "accepted 3" in captured.out, captured
    rejects = {(r["source_file"], r["row"]): r for r in lake.read(REJECTS, day, "rejects.parquet").to_pylist()}
    row = rejects[("a.csv", 3)]
    assert row["reason"].startswith("malformed: unreadable CSV row (field larger than field limit")
    assert row["raw"] == f"u2,{huge},{day}T02:00:00Z"
    row = rejects[("b.jsonl", 2)]
    assert row["reason"].startswith("malformed: invalid JSON (Exceeds the limit (4300 digits)") and row["raw"] == digits
    row = rejects[("b.jsonl", 3)]
    assert row["reason"] == "malformed: invalid JSON (nested too deeply)" and row["raw"] == deep
    assert rejects[("c.csv", 0)]["reason"].startswith("malformed: unreadable CSV header in c.csv")
