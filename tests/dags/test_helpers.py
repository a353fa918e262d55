"""What the DAG tasks rely on: the day a run is for, locations from the environment, catch-up ingest, base model."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import dealrec_airflow as dx
import pytest

from dealrec_tasks.config import IngestConfig, SamplesConfig, SyntheticConfig
from dealrec_tasks.errors import ConfigError, InputError, OrderError
from dealrec_tasks.llm.shipped import SHIPPED_DIR
from dealrec_tasks.scoring.config import InfluenceConfig
from dealrec_tasks.steps import data
from dealrec_tasks.steps.data import ingest_until
from dealrec_tasks.steps.influence import solve_influence
from dealrec_tasks.steps.llm import base_model_dir
from dealrec_tasks.steps.surrogate import train_surrogate
from dealrec_tasks.storage import Lake
from dealrec_tasks.surrogate.config import SurrogateConfig


def at(day: int, hour: int = 0) -> datetime:
    return datetime(2026, 1, day, hour, tzinfo=UTC)


def context(run_type="manual", logical=None, start=None, end=None, dt=None, events=None) -> dict:
    """The keys of an Airflow task context that the helpers read."""
    return {
        "params": {"dt": dt},
        "dag_run": SimpleNamespace(run_type=run_type, run_id=f"{run_type}__x"),
        "dag": SimpleNamespace(dag_id="dealrec_daily"),
        "logical_date": logical,
        "data_interval_start": start,
        "data_interval_end": end,
        "triggering_asset_events": events or {},
    }


@pytest.mark.parametrize(
    ("ctx", "expected"),
    [
        # A scheduled run at midnight covers the day that just ended, whichever cron timetable Airflow uses.
        (context("scheduled", at(8), at(8), at(8)), "2026-01-07"),  # CronTriggerTimetable: a point in time
        (context("scheduled", at(7), at(7), at(8)), "2026-01-07"),  # CronDataIntervalTimetable: [07, 08)
        # Manual runs and `airflow dags test DAG DATE`: the logical date's day; the dt Param wins over all.
        (context("manual", at(7, 15), at(7, 15), at(7, 15)), "2026-01-07"),
        (context("manual", at(7), dt="2026-01-03"), "2026-01-03"),
        (context("scheduled", at(8), at(7), at(8), dt="2026-01-05"), "2026-01-05"),
        (context("asset_triggered", None), None),
    ],
)
def test_daily_dt(ctx, expected):
    if expected is None:
        with pytest.raises(ConfigError, match="dt: run asset_triggered__x has no logical date"):
            dx.daily_dt(ctx)
    else:
        assert dx.daily_dt(ctx) == expected


def test_a_manual_run_without_dt_takes_the_last_complete_day():
    """Triggered from the form at 08:00 UTC with its defaults: yesterday, not today's unfinished day (issue 29,
    item 15); a logical date in the past (``airflow dags test DAG DATE``) keeps its own day."""
    now = datetime.now(UTC)
    yesterday = (now.date() - timedelta(days=1)).isoformat()
    assert dx.daily_dt(context("manual", now, now, now)) == yesterday
    assert dx.daily_dt(context("manual", now + timedelta(days=3))) == yesterday
    assert dx.daily_dt(context("manual", at(7, 15))) == "2026-01-07"


def test_finetune_dt_from_param_event_or_newest_coreset(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    with pytest.raises(InputError, match="no published coreset to fine-tune on"):
        dx.finetune_dt(context(), lake)
    for day in ("2026-01-02", "2026-01-04"):
        lake.publish("coreset", day, {}, blobs={"x": b"x"})
    assert dx.finetune_dt(context(), lake) == "2026-01-04"  # `airflow dags test`: no triggering event
    event = lambda dt: SimpleNamespace(extra={"dt": dt, "coreset": "..."})  # noqa: E731
    events = {dx.CORESET: [event("2026-01-02"), event("2026-01-03")]}
    assert dx.finetune_dt(context(events=events), lake) == "2026-01-03"
    assert dx.finetune_dt(context(dt="2026-01-01", events=events), lake) == "2026-01-01"


def test_the_arms_of_the_triggering_event_are_the_ones_fine_tuned(tmp_path):
    """The asset event announces every arm's coreset URI; the finetune DAG maps over those (each step checks its URI
    lies in the lake) instead of rebuilding them from the day. A manual run has no event: the day's published
    coresets, the primary one first."""
    lake = Lake(str(tmp_path / "lake"))
    arms = {"dealrec": "s3://lake/coreset/dt=2026-01-02", "random": "s3://lake/coreset/arm=random/dt=2026-01-02"}
    event = lambda dt, arms: SimpleNamespace(extra={"dt": dt, "coreset": "x", "arms": arms})  # noqa: E731
    events = {dx.CORESET: [event("2026-01-02", arms), event("2026-01-03", {"dealrec": "u3"})]}
    assert dx.announced_arms(context(events=events), lake, "2026-01-02") == [
        {"strategy": "dealrec", "coreset": arms["dealrec"]},
        {"strategy": "random", "coreset": arms["random"]},
    ]
    with pytest.raises(InputError, match="no published coreset for dt=2026-01-04"):
        dx.announced_arms(context(events=events), lake, "2026-01-04")
    lake.publish("coreset/arm=random", "2026-01-04", {}, blobs={"x": b"x"})
    lake.publish("coreset", "2026-01-04", {}, blobs={"x": b"x"}, extra={"strategy": "dealrec"})
    assert dx.announced_arms(context(), lake, "2026-01-04") == [
        {"strategy": "dealrec", "coreset": lake.partition("coreset", "2026-01-04")},
        {"strategy": "random", "coreset": lake.partition("coreset/arm=random", "2026-01-04")},
    ]
    assert dx.arms(["dealrec", "random"]) == [["dealrec", False], ["random", True]]
    for bad, why in ((["dealrec", "dealrec"], "more than once"), (["nope"], "unknown"), ([], "one or more")):
        with pytest.raises(ConfigError, match=why):
            dx.arms(bad)


@pytest.mark.parametrize(
    "bad", ["2026-01-04/../../samples/dt=2026-01-04", "2026-01-04" + "x" * 5000, "2026-02-30", "2026-01-04\n", 20260104]
)
def test_a_crafted_dt_from_a_param_or_an_asset_event_is_refused_in_one_line(tmp_path, bad):
    """The day names partitions and folders: a Param or an event's extra that is not a date stops the run at once
    (ConfigError: no retry), with a short message, before any task gets it."""
    lake = Lake(str(tmp_path / "lake"))
    lake.publish("coreset", "2026-01-02", {}, blobs={"x": b"x"})
    event = lambda dt: SimpleNamespace(extra={"dt": dt, "coreset": "..."})  # noqa: E731
    calls = {
        "daily Param": lambda: dx.daily_dt(context("manual", at(7), dt=bad)),
        "finetune Param": lambda: dx.finetune_dt(context(dt=bad), lake),
        "asset event": lambda: dx.finetune_dt(context(events={dx.CORESET: [event("2026-01-02"), event(bad)]}), lake),
    }
    for where, call in calls.items():
        with pytest.raises(ConfigError, match=r"dt=.*: ") as err:
            call()
        message = str(err.value)
        assert "\n" not in message and len(message) < 200, where


def test_a_dt_param_after_tomorrow_is_refused_unless_the_run_allows_it():
    """Issue 29 item 4: ``dt`` 2062-01-08 (a typo for 2026) would ingest a day that refuses every real day after it."""
    ctx = context("manual", at(7), dt="2062-01-08")
    with pytest.raises(ConfigError, match=r"^dt=2062-01-08: after tomorrow \(.*allow_future"):
        dx.daily_dt(ctx)
    ctx["params"]["allow_future"] = True
    assert dx.daily_dt(ctx) == "2062-01-08"


def test_run_key_and_shards():
    assert dx.run_key(context(), "2026-01-07") == "dealrec_daily/dt=2026-01-07"
    assert dx.shards(3) == [[0, 3], [1, 3], [2, 3]]


def test_locations_come_from_the_environment(monkeypatch, tmp_path):
    for name in ("DEALREC_LAKE", "DEALREC_MODEL_DIR", "DEALREC_WORK_DIR", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    assert dx.lake_root() == str(dx.REPO / "var" / "lake")
    assert dx.models_dir() == str(dx.REPO / "var" / "models")
    assert dx.tracking().resolved_uri() == f"sqlite:///{dx.REPO / 'var' / 'mlflow.db'}"
    monkeypatch.setenv("DEALREC_LAKE", "s3://bucket/lake")
    monkeypatch.setenv("DEALREC_MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("DEALREC_WORK_DIR", "relative/work")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert dx.lake().root == "s3://bucket/lake"
    assert dx.models_dir() == str(tmp_path / "models")
    assert dx.work_dir().endswith("/relative/work") and dx.work_dir().startswith("/")
    assert dx.tracking(margin=0.01).tracking_uri == "http://mlflow:5000"


def test_s3_settings_from_an_airflow_connection_else_the_environment(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_DEALREC_S3", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "env-key")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9999")
    assert (dx.s3_config().access_key, dx.s3_config().endpoint_url) == ("env-key", "http://127.0.0.1:9999")
    conn = {"conn_type": "aws", "login": "conn-key", "password": "conn-secret", "extra": {"region_name": "eu-west-1"}}
    monkeypatch.setenv("AIRFLOW_CONN_DEALREC_S3", json.dumps(conn))
    s3 = dx.s3_config()
    assert (s3.access_key, s3.secret_key, s3.region) == ("conn-key", "conn-secret", "eu-west-1")
    assert s3.endpoint_url == "http://127.0.0.1:9999"  # not in the connection: the environment's


def test_ingest_until_catches_up_in_order_and_is_idempotent(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    data.synthetic(lake, SyntheticConfig(users=60, items=30, days=4, events_per_day=80))
    first = ingest_until(lake, "2026-01-02", IngestConfig())
    assert first.counts["days_ingested"] == 2 and first.counts["first_dt"] == "2026-01-01" and first.changed
    assert lake.partitions("sequences") == ["2026-01-01", "2026-01-02"]
    again = ingest_until(lake, "2026-01-02", IngestConfig())
    assert again.counts["days_ingested"] == 1 and not again.changed
    last = ingest_until(lake, "2026-01-04", IngestConfig())
    assert last.counts["days_ingested"] == 2 and lake.partitions("sequences")[-1] == "2026-01-04"
    with pytest.raises(OrderError):
        ingest_until(lake, "2025-12-31", IngestConfig())


def test_surrogate_and_solve_run_once_per_inputs_and_config(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    data.synthetic(lake, SyntheticConfig(users=60, items=30, days=3, events_per_day=80))
    ingest_until(lake, "2026-01-03", IngestConfig())
    data.samples(lake, "2026-01-03", SamplesConfig())
    cfg = SurrogateConfig(max_epochs=2)
    first = train_surrogate(lake, "2026-01-03", cfg)
    assert first.changed
    published = lake.manifest("surrogate", "2026-01-03")
    again = train_surrogate(lake, "2026-01-03", cfg)
    assert not again.changed and "already trained" in again.notes[0]
    assert lake.manifest("surrogate", "2026-01-03") == published
    assert train_surrogate(lake, "2026-01-03", SurrogateConfig(max_epochs=1)).changed  # another config
    assert solve_influence(lake, "2026-01-03", InfluenceConfig(negatives=64, damping=10.0)).changed
    solved = solve_influence(lake, "2026-01-03", InfluenceConfig(negatives=64, damping=10.0))
    assert not solved.changed and "already published" in solved.notes[0]
    assert data.samples(lake, "2026-01-03", SamplesConfig(max_len=5)).changed
    assert train_surrogate(lake, "2026-01-03", SurrogateConfig(max_epochs=1)).changed  # new samples


def test_base_model_dir(tmp_path):
    with pytest.raises(ConfigError, match="base_model='/nowhere': not a local Hugging Face model directory"):
        base_model_dir("/nowhere")
    given = tmp_path / "hf"
    given.mkdir()
    (given / "config.json").write_text("{}")
    assert base_model_dir(str(given)) == str(given)
    assert base_model_dir("") == base_model_dir(None) == str(SHIPPED_DIR)  # the shipped model, verified
