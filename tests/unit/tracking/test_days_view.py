"""The data and pages of the DEALRec view (``dealrec days``, the Airflow plugin): a whole day read back from a real
lake and a real SQLite MLflow store, a partial day, an empty lake, and the pages' escaping."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from dealrec_tasks.cli import main
from dealrec_tasks.days import MlflowLinks, day_detail, gate_png, histogram, list_days, report_png
from dealrec_tasks.days_page import day_page, days_page
from dealrec_tasks.errors import ConfigError, InputError
from dealrec_tasks.steps import tracking as steps
from dealrec_tasks.steps.gate import gate
from dealrec_tasks.storage import Lake
from tests.conftest import synthetic_lake


def test_a_moved_lake_shows_its_own_report(tracked, tmp_path):
    """A lake copied or restored elsewhere keeps the ``uri`` its manifests recorded; the view reads the figure of the
    lake it was given (it showed the original lake's, and none once that was gone)."""
    shutil.copytree(tracked.root / "lake", tmp_path / "moved")
    moved, dt = Lake(str(tmp_path / "moved")), tracked.dt
    assert tracked.root.as_posix() in moved.require_manifest("coreset", dt)["uri"]
    (tmp_path / "moved" / "coreset" / f"dt={dt}" / "report.png").write_bytes(b"\x89PNG the moved lake's")
    assert report_png(moved, dt) == b"\x89PNG the moved lake's"


def test_a_whole_day_with_its_mlflow_runs_versions_and_decision(tracked, cfg, tmp_path):
    shutil.copytree(tracked.root / "lake", tmp_path / "lake")  # the gate publishes into it
    lake, dt = Lake(str(tmp_path / "lake")), tracked.dt
    steps.log_pruning(
        lake,
        dt,
        cfg,
        f"dealrec_daily/dt={dt}",
        run_tags={"airflow.dag_id": "dealrec_daily", "airflow.run_id": "manual__x"},
    )
    version = steps.register(lake, dt, tracked.model_dir, cfg, f"dealrec_finetune/dt={dt}").counts["version"]
    gated = gate(lake, dt, cfg, [version], f"dealrec_finetune/dt={dt}")
    assert gated.counts["decision"] == "champion"

    days = list_days(lake)
    assert [d["dt"] for d in days] == [dt]
    row = days[0]
    coreset = lake.require_manifest("coreset", dt)
    assert row["status"] == "fine-tuned and evaluated" and all(row["stages"].values())
    assert row["selected"] == 16 == coreset["counts"]["selected"]
    assert row["candidates"] == coreset["counts"]["candidates"]
    assert row["items_coreset"] == coreset["coverage"]["items"]["coreset"]
    assert row["ndcg@20"] == lake.require_manifest("evaluation", dt)["metrics"]["ndcg@20"]

    d = day_detail(lake, dt, cfg, MlflowLinks("http://mlflow.example:5000"))
    assert d["coreset"]["has_report"] and report_png(lake, dt).startswith(b"\x89PNG")
    assert d["coreset"]["config"]["k"] == 4 and "source_sha256" not in d["coreset"]["config"]
    infl = d["scores"]["influence"]
    assert infl["n"] == row["candidates"] and sum(infl["all"]) == infl["n"] and sum(infl["kept"]) == 16
    assert d["arms"][0]["arm"] == "dealrec (primary)" and d["arms"][0]["ndcg@20"] == row["ndcg@20"]
    m = d["mlflow"]
    kinds = {r["kind"]: r for r in m["runs"]}
    assert set(kinds) == {"pruning", "finetune"}
    assert kinds["pruning"]["airflow_run_id"] == "manual__x"
    assert kinds["pruning"]["url"].startswith("http://mlflow.example:5000/#/experiments/")
    assert [v["version"] for v in m["versions"]] == [version]
    assert m["versions"][0]["decision"] == "champion" and "champion" in m["versions"][0]["aliases"]
    assert m["aliases"]["champion"] == version

    html = day_page(d, airflow_url="/")
    assert f"day {dt}" in html and 'src="report.png"' in html and "<svg" in html
    assert 'href="/dags/dealrec_daily/runs/manual__x"' in html and "version " + str(version) in html
    assert "champion" in html and "Gate (paired t" in html and 'src="arms.png"' in html
    assert "first version: no champion in production yet" in html
    assert row["decision"] == "champion" and row["vs_random"] is None  # one arm: nothing to pair with random
    assert gate_png(lake, dt).startswith(b"\x89PNG")
    listing = days_page(days, lake.uri())
    assert f'href="day/{dt}/"' in listing and "fine-tuned and evaluated" in listing and "champion" in listing


def test_a_partial_day_an_empty_lake_and_bad_days(tmp_path):
    empty = Lake(str(tmp_path / "empty"))
    assert list_days(empty) == []
    assert "No day published yet" in days_page([], empty.uri())

    dt = "2026-01-03"
    lake = synthetic_lake(tmp_path / "lake", dt, 8, users=40, items=30, days=3, events_per_day=80)
    [row] = list_days(lake)
    assert row["dt"] == dt and row["status"] == "samples published, not scored yet"
    assert row["stages"]["samples"] and not row["stages"]["coreset"] and row["selected"] is None
    d = day_detail(lake, dt)
    assert d["coreset"] is None and d["scores"] == {"influence": None, "effort": None} and d["arms"] == []
    assert d["mlflow"] is None and d["samples"]["train"] > 0
    html = day_page(d)
    assert "No coreset published for this day yet" in html and "Not fine-tuned and evaluated yet" in html
    with pytest.raises(InputError, match="nothing published for dt=2026-01-09"):
        day_detail(lake, "2026-01-09")
    with pytest.raises(ConfigError, match="dt='01/03/2026'"):
        day_detail(lake, "01/03/2026")
    with pytest.raises(InputError, match="coreset"):
        report_png(lake, dt)


def test_the_pages_escape_what_they_show():
    row = {
        "dt": "2026-01-01",
        "status": "<script>alert(1)</script>",
        "stages": {"samples": True},
        "selected": None,
        "candidates": None,
        "strategy": None,
        "pruned": None,
        "items_coreset": None,
        "items_random": None,
        "recall@20": None,
        "ndcg@20": None,
    }
    html = days_page([row], "s3://bucket/<lake>")
    assert "<script>" not in html and "&lt;script&gt;" in html and "s3://bucket/&lt;lake&gt;" in html


def test_histogram_matches_a_naive_count():
    rng = np.random.default_rng(0)
    values = rng.standard_normal(997)
    kept = rng.random(997) < 0.1
    h = histogram(values, kept, bins=13)
    edges = np.asarray(h["edges"], dtype=np.float64)
    naive = [0] * 13
    naive_kept = [0] * 13
    for v, k in zip(values.tolist(), kept.tolist(), strict=True):
        i = min(int((v - edges[0]) / (edges[-1] - edges[0]) * 13), 12)  # the last bin is closed
        naive[i] += 1
        naive_kept[i] += k
    assert h["all"] == naive and h["kept"] == naive_kept and h["n"] == 997
    assert histogram(np.array([2.0, 2.0]), None)["all"][0] == 2  # a constant score still gets a bin
    assert histogram(np.array([]), None)["n"] == 0


def test_cli_days(tracked, capsys):
    assert main(["--lake", tracked.lake.root, "days"]) == 0
    out = capsys.readouterr().out
    assert tracked.dt in out and "fine-tuned and evaluated" in out
    assert main(["--lake", tracked.lake.root, "--json", "days", "--dt", tracked.dt]) == 0
    detail = json.loads(capsys.readouterr().out)
    assert detail["coreset"]["counts"]["selected"] == 16 and detail["mlflow"] is None


def test_a_coreset_republished_after_its_fine_tuning_does_not_show_the_old_metrics(tracked, tmp_path):
    """Found on a fresh demo (2026-12-03): a manual run with the form's default n=1024 republished the day's
    coreset while dealrec_finetune was paused; the view said "fine-tuned and evaluated" and showed the 100-row
    coreset's recall beside the new 1,024-row coreset. The adapter records the coreset it trained on."""
    from dealrec_tasks.selection import SelectConfig
    from dealrec_tasks.steps.select import select

    shutil.copytree(tracked.root / "lake", tmp_path / "lake")
    lake, dt = Lake(str(tmp_path / "lake")), tracked.dt
    assert list_days(lake)[0]["status"] == "fine-tuned and evaluated"
    select(lake, dt, SelectConfig(n=12, k=4))
    row = list_days(lake)[0]
    assert row["selected"] == 12
    assert row["status"].startswith("coreset republished after the fine-tuning")
    assert row["recall@20"] is None and row["ndcg@20"] is None  # not the previous coreset's numbers as this one's
    html = days_page(list_days(lake), lake.uri())
    assert "coreset republished after the fine-tuning" in html and "fine-tuned and evaluated" not in html
    select(lake, dt, SelectConfig(n=16, k=4))  # the coreset it was trained on, back: its metrics again
    assert list_days(lake)[0]["status"] == "fine-tuned and evaluated"
