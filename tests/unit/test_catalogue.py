"""The lake's layout in one place: typed days, the catalogue, locating an announced URI, "published from these
inputs"."""

from __future__ import annotations

import re

import pyarrow as pa
import pytest

from dealrec_tasks import catalogue
from dealrec_tasks.config import Day
from dealrec_tasks.errors import ConfigError, InputError, PartitionNotFound
from dealrec_tasks.storage import Lake
from tests.conftest import REPO


def test_a_day_is_checked_once_and_stays_a_string():
    day = Day("2026-01-04")
    assert isinstance(day, str) and day == "2026-01-04" and f"dt={day}" == "dt=2026-01-04"
    assert Day(day) is day  # passing a Day on does not parse it again
    assert day.minus(5) == "2025-12-30" and isinstance(day.minus(5), Day)
    assert day.date.isoformat() == "2026-01-04"
    for bad in ("2026-1-4", "2026-02-30", "2026-01-04/../x", "", None, 20260104):
        with pytest.raises(ConfigError, match="dt="):
            Day(bad)


def test_every_dataset_is_declared_once_with_its_writer_and_listed_in_the_readme():
    readme = (REPO / "README.md").read_text()
    listing = readme[readme.index("## The lake") :]
    for name, entry in catalogue.CATALOGUE.items():
        assert entry.name == name and entry.writer and entry.about
        first = entry.pattern.split(" | ")[0].split("{")[0]
        assert first.startswith(name if name != catalogue.DATASETS else "datasets/")
        assert re.search(rf"^<lake>/{re.escape(name)}/", listing, re.M), f"{name}/ missing in the README's lake listing"
    assert catalogue.writer("datasets/x/samples") == catalogue.CATALOGUE["samples"].writer
    assert catalogue.writer("influence/dt=2026-01-04/solve") == catalogue.CATALOGUE["influence"].writer
    assert catalogue.writer("nowhere") == "the step that writes it"


def test_locations_of_daily_and_imported_sources():
    daily, imported = catalogue.source("2026-01-04"), catalogue.source(None, "games")
    assert catalogue.influence_solve(daily) == "influence/dt=2026-01-04/solve"
    assert catalogue.influence_shard(imported, (1, 4)) == "datasets/games/influence/all/shard=1-of-4"
    assert catalogue.effort_shard(daily, (0, 2)) == "effort/dt=2026-01-04/shard=0-of-2"
    assert imported.path("samples") == "datasets/games/samples" and imported.label == "dataset=games"
    with pytest.raises(InputError, match="exactly one of dt"):
        catalogue.source("2026-01-04", "games")
    with pytest.raises(ConfigError):
        catalogue.source("2026-01-04/../x")


def test_locate_an_announced_uri_only_inside_the_lake(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    assert lake.locate(lake.partition("coreset", "2026-01-04")) == ("coreset", "2026-01-04")
    assert lake.locate(lake.partition("datasets/games/samples")) == ("datasets/games/samples", None)
    for outside in (
        f"file://{tmp_path}/elsewhere/coreset/dt=2026-01-04",
        lake.root + "/coreset/../samples/dt=2026-01-04",
        lake.root,
        "s3://bucket/coreset/dt=2026-01-04",
    ):
        with pytest.raises(InputError, match="not a partition of the lake"):
            lake.locate(outside)
    with pytest.raises(ConfigError):
        lake.locate(lake.root + "/coreset/dt=2026-13-01")


def test_current_compares_config_and_inputs_and_publish_records_new_inputs(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    table = pa.table({"x": [1, 2]})
    assert lake.current("scores", "2026-01-04", {"k": 1}, {"samples": "a"}) is None
    first = lake.publish("scores", "2026-01-04", {"t.parquet": table}, config={"k": (1, 2)}, inputs={"samples": "a"})
    assert first.changed and first.manifest["inputs"] == {"samples": "a"}
    assert lake.current("scores", "2026-01-04", {"k": (1, 2)}, {"samples": "a"}) is not None  # tuple == list
    assert lake.current("scores", "2026-01-04", {"k": (1, 2)}, {"samples": "b"}) is None
    assert lake.current("scores", "2026-01-04", {"k": (1, 3)}, {"samples": "a"}) is None
    same = lake.publish("scores", "2026-01-04", {"t.parquet": table}, config={"k": (1, 2)}, inputs={"samples": "a"})
    assert not same.changed
    # Equal files from other inputs republish, so the next run sees the new inputs as current.
    moved = lake.publish("scores", "2026-01-04", {"t.parquet": table}, config={"k": (1, 2)}, inputs={"samples": "b"})
    assert moved.changed and lake.current("scores", "2026-01-04", {"k": [1, 2]}, {"samples": "b"}) is not None
    assert lake.file_sha256("scores", "2026-01-04", "t.parquet") == moved.manifest["files"]["t.parquet"]["sha256"]
    with pytest.raises(PartitionNotFound, match=r"no published partition .*dealrec select"):
        lake.require_manifest("coreset", "2026-01-04")


def test_verified_reads_refuse_a_changed_byte(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    lake.publish("evaluation", "2026-01-04", {}, blobs={"metrics.json": b'{"ndcg@20": 0.1}'})
    values, raw = lake.read_verified_json("evaluation", "2026-01-04", "metrics.json")
    assert values == {"ndcg@20": 0.1} and raw == b'{"ndcg@20": 0.1}'
    (tmp_path / "lake/evaluation/dt=2026-01-04/metrics.json").write_bytes(b'{"ndcg@20": 0.9}')
    with pytest.raises(InputError, match="checksum differs"):
        lake.read_verified_json("evaluation", "2026-01-04", "metrics.json")
    with pytest.raises(InputError, match="checksum differs.*republish it"):
        lake.read_verified_torch("evaluation", "2026-01-04", "metrics.json", "republish it")


def test_arms_have_their_own_partitions_and_a_crafted_arm_is_refused():
    assert catalogue.arm_dataset("coreset", None) == "coreset"
    assert catalogue.arm_dataset("adapters", "random") == "adapters/arm=random"
    assert catalogue.arm_of("evaluation/arm=random") == "random" and catalogue.arm_of("evaluation") is None
    assert catalogue.version_evaluation(7) == "evaluation/version=7"
    for bad in ("../samples", "Random", "a/b", ""):
        with pytest.raises(ConfigError, match="arm="):
            catalogue.arm_dataset("coreset", bad)
