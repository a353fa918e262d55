"""Issue 29, items 3, 4, 9 and 11: a log file's name is a name (never parsed as a URI), a day after tomorrow or a
day without logs is never published as a day, a folder ``dt=...`` that is not a day is ignored with a note, and a
dataset name cannot lead outside the lake. On file:// and s3:// lakes, through the CLI where a user meets it."""

from __future__ import annotations

import datetime as dt_mod
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from dealrec_tasks import config, steps
from dealrec_tasks.catalogue import INTERACTIONS, REJECTS, SAMPLES, SEQUENCES, Source, imported, source
from dealrec_tasks.cli import main
from dealrec_tasks.config import ImportConfig, IngestConfig, ReplayConfig, SamplesConfig
from dealrec_tasks.data.schema import ITEM_VOCAB_SCHEMA, SPLIT_SEQUENCES_SCHEMA
from dealrec_tasks.days import list_days
from dealrec_tasks.days_page import days_page
from dealrec_tasks.errors import ConfigError, PartitionNotFound
from dealrec_tasks.steps.data import ingest_until
from dealrec_tasks.steps.readers import DELTA, read_sequences
from dealrec_tasks.storage import MANIFEST, Lake

D1, D2, D3 = "2026-03-01", "2026-03-02", "2026-03-03"
FUTURE = "2062-01-08"


def _raw_put(lake: Lake, request, relative: str, data: bytes) -> None:
    """Write a file under the lake root without our storage code (so the setup cannot share the bug under test)."""
    if lake.root.startswith("file://"):
        path = Path(lake.root.removeprefix("file://"), relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    else:
        bucket, _, prefix = lake.root.removeprefix("s3://").partition("/")
        request.getfixturevalue("s3_client").put_object(Bucket=bucket, Key=f"{prefix}/{relative}", Body=data)


def _log(lake: Lake, request, dt: str, name: str, data: bytes) -> None:
    _raw_put(lake, request, f"{INTERACTIONS}/dt={dt}/{name}", data)


def _jsonl(events: list[tuple[str | None, str, str]]) -> bytes:
    return "\n".join(json.dumps({"user_id": u, "item_id": i, "ts": t}) for u, i, t in events).encode()


def _csv(events: list[tuple[str, str, str]]) -> bytes:
    return ("user_id,item_id,ts\n" + "".join(f"{u},{i},{t}\n" for u, i, t in events)).encode()


@pytest.fixture
def cli(monkeypatch):
    """``dealrec --lake <lake> ...`` in-process, with the S3 settings of the lake in the environment as a user has
    them; returns (exit code, stderr)."""

    def run(lake: Lake, *args: str, capsys) -> tuple[int, str]:
        s3 = lake.storage.s3
        monkeypatch.setenv("DEALREC_PROGRESS", "0")
        for name, value in (
            ("DEALREC_S3_ENDPOINT_URL", s3.endpoint_url),
            ("AWS_ACCESS_KEY_ID", s3.access_key),
            ("AWS_SECRET_ACCESS_KEY", s3.secret_key),
            ("AWS_REGION", s3.region),
        ):
            if value:
                monkeypatch.setenv(name, value)
        capsys.readouterr()
        code = main(["--lake", lake.root, *args])
        return code, capsys.readouterr().err

    return run


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------------------------------------------------
# Item 3: a file name is a name
# ---------------------------------------------------------------------------------------------------------
def test_log_names_with_url_characters_tabs_and_newlines_are_read_as_themselves(lake: Lake, request, cli, capsys):
    t = f"{D1}T01:00:00Z"
    names = {  # name -> (format, the user whose rows only that file holds)
        "a.csv": ("csv", "plain"),
        "a.csv#.jsonl": ("jsonl", "hash"),  # was read as a.csv (the "fragment" cut off)
        "a.csv?x.csv": ("csv", "query"),  # was read as a.csv (the "query" cut off)
        "a\t.csv": ("csv", "tab"),  # the tab was dropped: a.csv again, or a missing file
        "a\r.csv": ("csv", "cr"),
    }
    if lake.root.startswith("file://"):  # an S3 server (moto) cannot store a key with a newline
        names["a\n.csv"] = ("csv", "newline")
    for name, (kind, user) in names.items():
        events = [(user, "i1", t), (user, "i2", f"{D1}T02:00:00Z")]
        _log(lake, request, D1, name, _jsonl(events + [(None, "i3", t)]) if kind == "jsonl" else _csv(events))

    code, err = cli(lake, "ingest", "--dt", D1, capsys=capsys)
    assert code == 0, err
    seqs = {r["user_id"]: len(r["items"]) for r in read_sequences(lake, D1)[0].to_pylist()}
    assert seqs == {user: 2 for _, user in names.values()}  # every file's rows, each once
    rejects = lake.read(REJECTS, D1, "rejects.parquet").to_pylist()
    assert [(r["source_file"], r["reason"]) for r in rejects] == [("a.csv#.jsonl", "null_id: user_id is empty")]
    counts = lake.require_manifest(SEQUENCES, D1)["counts"]
    assert (counts["files"], counts["skipped_files"], counts["rows_read"]) == (len(names), 0, 2 * len(names) + 1)


# ---------------------------------------------------------------------------------------------------------
# Item 4: a day after tomorrow, and a day without logs
# ---------------------------------------------------------------------------------------------------------
def test_a_day_after_tomorrow_is_refused_unless_asked_for(lake: Lake, request, cli, capsys):
    _log(lake, request, D1, "x.jsonl", _jsonl([("a", "i1", f"{D1}T01:00:00Z")]))
    assert cli(lake, "ingest", "--dt", D1, capsys=capsys)[0] == 0

    code, err = cli(lake, "ingest", "--dt", FUTURE, capsys=capsys)  # caught up: this published an empty day
    line = _one_error_line(err)
    assert code == 2 and f"dt={FUTURE}: after tomorrow" in line and "--allow-future" in line
    with pytest.raises(ConfigError, match=f"dt={FUTURE}: after tomorrow"):
        ingest_until(lake, FUTURE, IngestConfig())
    assert lake.partitions(SEQUENCES) == [D1]

    # A future log folder stops `ingest --all` there, after the real days before it.
    _log(lake, request, D2, "x.jsonl", _jsonl([("a", "i2", f"{D2}T01:00:00Z")]))
    _log(lake, request, FUTURE, "x.jsonl", _jsonl([("a", "i3", f"{FUTURE}T01:00:00Z")]))
    code, err = cli(lake, "ingest", "--all", capsys=capsys)
    assert code == 2 and f"dt={FUTURE}: after tomorrow" in _one_error_line(err)
    assert lake.partitions(SEQUENCES) == [D1, D2]  # every later real day still goes in

    tomorrow = (dt_mod.datetime.now(dt_mod.UTC).date() + dt_mod.timedelta(days=1)).isoformat()
    config.check_not_future(tomorrow, False, "")  # tomorrow is allowed: a producer east of UTC is there already
    code, err = cli(lake, "ingest", "--dt", FUTURE, "--allow-future", capsys=capsys)  # asked for explicitly
    assert code == 0, err
    assert lake.partitions(SEQUENCES) == [D1, D2, FUTURE]
    assert steps.ingest(lake, FUTURE, IngestConfig()).changed is False  # unchanged: a no-op, nothing created


def test_a_day_without_logs_is_not_published_and_its_logs_go_in_when_they_arrive(lake: Lake, request, cli, capsys):
    _log(lake, request, D1, "x.jsonl", _jsonl([("a", "i1", f"{D1}T01:00:00Z")]))
    steps.ingest(lake, D1, IngestConfig())

    code, err = cli(lake, "ingest", "--dt", D2, capsys=capsys)  # no folder for the day yet
    assert code == 0 and f"dt={D2}: no log file in" in err and "not published" in err
    assert lake.partitions(SEQUENCES) == [D1]
    with pytest.raises(PartitionNotFound):  # nothing to train on
        steps.samples(lake, D2, SamplesConfig())

    _log(lake, request, D3, "_SUCCESS", b"")  # a folder with no log file in it is no day either
    assert not steps.ingest(lake, D3, IngestConfig()).changed and lake.partitions(SEQUENCES) == [D1]

    _log(lake, request, D2, "x.jsonl", _jsonl([("a", "i2", f"{D2}T01:00:00Z")]))  # the logs arrive
    assert steps.pending_days(lake) == [D2, D3]
    assert steps.ingest(lake, D2, IngestConfig()).changed
    assert {r["user_id"]: r["items"] for r in read_sequences(lake, D2)[0].to_pylist()}.keys() == {"a"}
    assert len(read_sequences(lake, D2)[0].column("items")[0]) == 2


# ---------------------------------------------------------------------------------------------------------
# Item 9: a folder dt=... that is not a day
# ---------------------------------------------------------------------------------------------------------
def test_a_backup_folder_with_a_manifest_is_ignored_with_a_note(lake: Lake, request, cli, capsys):
    _log(lake, request, D1, "x.jsonl", _jsonl([("a", "i1", f"{D1}T01:00:00Z"), ("b", "i2", f"{D1}T02:00:00Z")]))
    _log(lake, request, D2, "x.jsonl", _jsonl([("a", "i3", f"{D2}T01:00:00Z"), ("b", "i1", f"{D2}T02:00:00Z")]))
    steps.ingest(lake, D1, IngestConfig())
    steps.ingest(lake, D2, IngestConfig())
    steps.samples(lake, D2, SamplesConfig(valid_days=0, test_days=1))
    for dataset, day, name in ((SAMPLES, D2, "samples.parquet"), (SEQUENCES, D2, DELTA)):
        for file in (MANIFEST, name):  # a copy someone kept beside the day
            data = lake.storage.read_bytes(lake.uri(dataset, f"dt={day}", file))
            _raw_put(lake, request, f"{dataset}/dt={day}.bak/{file}", data)

    _log(lake, request, D3, "x.jsonl", _jsonl([("a", "i2", f"{D3}T01:00:00Z")]))
    code, err = cli(lake, "ingest", "--dt", D3, capsys=capsys)
    assert code == 0, err
    for dataset in (SAMPLES, SEQUENCES):
        assert f"{dataset}/dt={D2}.bak: ignored, not a partition dt=YYYY-MM-DD" in err
    assert lake.partitions(SEQUENCES) == [D1, D2, D3] and lake.partitions(SAMPLES) == [D2]

    days = list_days(lake)  # the DEALRec view's data
    assert [d["dt"] for d in days] == [D2]
    assert days.notes == [lake.uri(SAMPLES, f"dt={D2}.bak") + ": ignored, not a partition dt=YYYY-MM-DD"]
    assert f"{SAMPLES}/dt={D2}.bak: ignored" in days_page(days, lake.uri())
    code, err = cli(lake, "days", capsys=capsys)
    assert code == 0 and f"{SAMPLES}/dt={D2}.bak: ignored" in err


# ---------------------------------------------------------------------------------------------------------
# Item 11: dataset names
# ---------------------------------------------------------------------------------------------------------
BAD_NAMES = ["../../x", "..", ".", "/tmp/x", "a/b", "x\x00y", "", "-x", "_x", "Games", "a" * 65, "x\n"]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_a_dataset_name_that_is_not_one_is_refused_everywhere(lake: Lake, bad):
    for call in (
        lambda: steps.samples_from_dataset(lake, bad, SamplesConfig()),
        lambda: ReplayConfig(dataset=bad),
        lambda: Source(None, bad),
        lambda: source(None, bad),
        lambda: imported(bad),
        lambda: ImportConfig(dataset=bad),
        lambda: config.check_dataset_name(bad),  # the one check all of the above go through
    ):
        with pytest.raises(ConfigError, match=r"^dataset=.*: not a dataset name \(1-64 characters"):
            call()
    for good in ("games", "ml-1m", "a_b", "0", "a" * 64):
        assert config.check_dataset_name(good) == good and imported(good) == f"datasets/{good}"


def test_dataset_dot_dot_does_not_read_or_write_outside_the_lake(tmp_path, cli, capsys):
    outside = Lake(str(tmp_path / "b"))  # <lake>/datasets/../../x is tmp/b/x
    rng = np.random.default_rng(0)
    rows = [
        {"user_idx": u, "user_id": str(u), "train": [int(x) for x in rng.integers(1, 9, 3)], "valid": [], "test": [2]}
        for u in range(1, 6)
    ]
    vocab = pa.table({"item_id": [f"i{i}" for i in range(1, 9)], "item_idx": pa.array(range(1, 9), pa.int32())})
    split = pa.Table.from_pylist(rows, schema=SPLIT_SEQUENCES_SCHEMA)
    outside.publish("x", None, {"sequences": split, "item_vocab": vocab.cast(ITEM_VOCAB_SCHEMA)})
    lake = Lake(str(tmp_path / "b" / "lake"))
    lake.publish(imported("toy"), None, {"sequences": split})  # so <lake>/datasets/ exists, as in any used lake
    before = sorted(p.name for p in (tmp_path / "b").rglob("*"))
    for args in (("samples", "--dataset", "../../x"), ("replay", "--dataset", "../../x", "--days", "3")):
        code, err = cli(lake, *args, capsys=capsys)
        assert code == 2 and "dataset='../../x': not a dataset name" in _one_error_line(err), args
    assert sorted(p.name for p in (tmp_path / "b").rglob("*")) == before  # nothing written, in the lake or beside
