"""What users see, in a real Chromium (Debian's, driven by Playwright) on the e2e Celery stack (``stack.py``).

Airflow: the DEALRec view is behind Airflow's login; a bad Param is refused by the trigger form with a message and
starts nothing; both DAGs' trigger forms are valid with their defaults, and runs triggered from them (``dt`` and
``n`` set by hand for the daily one) succeed; the DEALRec view, in Airflow's navigation, shows that day with its
numbers and its figure. MLflow: model ``dealrec-bigrec`` with alias ``champion``, the day's runs with their metrics.

Screenshots are kept in ``var/test-artifacts/ui/`` (``DEALREC_TEST_ARTIFACTS`` to change). Runs after
``test_celery_stack.py`` on the same stack (its daily run unpaused the DAG); alone, it starts one paused-safe run
itself first. Outside CI a missing ``chromium`` skips it with the command that installs it.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.e2e.stack import ADMIN, DAILY_CONF, DAILY_TIMEOUT_S, FINETUNE_TIMEOUT_S, PASSWORD, REPO, Stack, wait_for

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(os.environ.get("DEALREC_TEST_ARTIFACTS", REPO / "var" / "test-artifacts")) / "ui"
UI_N = 20  # the coreset size typed into the form (the celery test's run used another, so this day republishes)


@pytest.fixture(scope="module")
def page():
    chromium = shutil.which("chromium")
    if chromium is None:
        msg = "chromium not installed: `apt-get install -y chromium` (or run .ci/services.sh as root)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(30_000)
        yield pg
        browser.close()


def shot(page, name: str, full: bool = False) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full)


def runs_of(st: Stack, dag_id: str) -> dict[str, dict]:
    return {r["dag_run_id"]: r for r in st.rest("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100})["dag_runs"]}


def open_trigger_form(page, st: Stack, dag_id: str):
    page.goto(f"{st.api}/dags/{dag_id}")
    page.get_by_role("button", name=re.compile("^trigger", re.I)).first.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Run Parameters").first.wait_for()
    dialog.locator("[name=element_dt]").wait_for()
    return dialog


def trigger_from_form(page, st: Stack, dag_id: str, values: dict[str, str], name: str) -> str:
    """Open the form, check it is valid with its defaults, type ``values``, trigger; the new run's id."""
    dialog = open_trigger_form(page, st, dag_id)
    submit = dialog.get_by_role("button", name="Trigger", exact=True)
    assert submit.is_enabled(), f"{dag_id}: the trigger form refuses its own defaults"
    assert dialog.get_by_text("Empty: the embedded tiny LLM").count() == 1  # descriptions shown
    for key, value in values.items():
        dialog.locator(f"[name=element_{key}]").fill(value)
    shot(page, f"{name}-form")
    before = set(runs_of(st, dag_id))
    submit.click()
    new = wait_for(f"the {dag_id} run triggered from the form", lambda: set(runs_of(st, dag_id)) - before, 60, 1)
    (run_id,) = new
    assert runs_of(st, dag_id)[run_id]["run_type"] == "manual"
    return run_id


def test_airflow_and_mlflow_uis_in_chromium(stack: Stack, page):
    import requests
    from mlflow import MlflowClient

    st = stack
    for dag_id in ("dealrec_daily", "dealrec_finetune"):
        wait_for(f"{dag_id} parsed", lambda d=dag_id: st.rest("GET", f"/dags/{d}"), 240, 3, st.diagnostics)
    dt = st.last_synthetic_day()
    if st.rest("GET", "/dags/dealrec_daily")["is_paused"]:  # alone: unpause without a scheduled run slipping in
        first = st.start_paused_daily({**DAILY_CONF, "dt": dt})
        wait_for("the first daily run", lambda: st.run_done("dealrec_daily", first), DAILY_TIMEOUT_S, 3)

    # The view is behind Airflow's login: no session -> the login page (HTML) or 401 (JSON); a token -> data.
    anon = requests.get(f"{st.api}/dealrec/", allow_redirects=False, timeout=30)
    assert anon.status_code == 303 and "/auth/login" in anon.headers["location"], anon.status_code
    assert requests.get(f"{st.api}/dealrec/api/days", timeout=30).status_code == 401
    bearer = {"Authorization": f"Bearer {st.token()}"}
    days = requests.get(f"{st.api}/dealrec/api/days", headers=bearer, timeout=60).json()
    assert days["lake"] == f"s3://{st.bucket}/lake" and dt in [d["dt"] for d in days["days"]]

    page.goto(f"{st.api}/dealrec/")
    page.get_by_label(re.compile("username", re.I)).fill(ADMIN)
    page.get_by_label(re.compile("password", re.I)).fill(PASSWORD)
    page.get_by_role("button", name=re.compile("sign in|log in|login", re.I)).click()
    page.get_by_text("DEALRec: coresets by day").first.wait_for()  # back on the view after the login

    # A bad value is refused with a message and starts nothing.
    dialog = open_trigger_form(page, st, "dealrec_daily")
    before = set(runs_of(st, "dealrec_daily"))
    dialog.locator("[name=element_base_model]").fill("models/not-an-absolute-path")
    dialog.get_by_role("button", name="Trigger", exact=True).click()
    page.get_by_text("Failed to Trigger Dag").first.wait_for()
    shot(page, "daily-form-refuses-a-bad-param")
    page.wait_for_timeout(2000)
    assert set(runs_of(st, "dealrec_daily")) == before, "a refused trigger started a run"

    # dealrec_daily from its form: dt and n typed, every other field on its default.
    daily = trigger_from_form(page, st, "dealrec_daily", {"dt": dt, "n": str(UI_N)}, "daily")
    assert runs_of(st, "dealrec_daily")[daily]["conf"]["base_model"] is None
    wait_for("the daily run from the form", lambda: st.run_done("dealrec_daily", daily), DAILY_TIMEOUT_S, 3)
    page.goto(f"{st.api}/dags/dealrec_daily/runs/{daily}")
    page.get_by_text(daily).first.wait_for()
    shot(page, "daily-run")

    # dealrec_finetune from its form (the coreset asset also starts one; max_active_runs=1 queues them).
    finetune = trigger_from_form(page, st, "dealrec_finetune", {"dt": dt}, "finetune")
    wait_for(
        "the finetune run from the form",
        lambda: st.run_done("dealrec_finetune", finetune),
        2 * FINETUNE_TIMEOUT_S,
        3,
    )

    # The DEALRec view in Airflow's navigation (an iframe of /dealrec/), then the day's page.
    page.goto(f"{st.api}/plugin/dealrec")
    frame = page.frame_locator("iframe").first
    frame.get_by_role("link", name=dt).first.wait_for()
    shot(page, "dealrec-view-in-airflow")
    frame.get_by_role("link", name=dt).first.click()
    frame.get_by_text(f"DEALRec: day {dt}").first.wait_for()
    page.goto(f"{st.api}/dealrec/day/{dt}/")
    page.get_by_text("fine-tuned and evaluated").first.wait_for()
    body = page.inner_text("body")
    assert re.search(rf"selected / candidates\s+{UI_N} / \d", body), body[:2000]
    assert "distinct items" in body and "random, same size" in body and "ndcg@20" in body
    assert page.locator("svg[aria-label='influence histogram']").count() == 1
    width = page.locator("img[src='report.png']").evaluate("img => img.complete ? img.naturalWidth : 0")
    assert width > 500, "the report figure did not load"
    # One pruning run per arm (the coreset and its random control), both logged by the daily run from the form.
    assert page.get_by_role("link", name=f"dealrec_daily / {daily}").count() == 2
    assert "dealrec − random today" in body and "running estimate over" in body and "verdict" in body
    assert "challenger (declared: the primary arm)" in body
    gate_width = page.locator("img[src='arms.png']").evaluate("img => img.complete ? img.naturalWidth : 0")
    assert gate_width > 500, "the gate's plot did not load"
    shot(page, "dealrec-day", full=True)

    # MLflow UI: the registered model with its champion alias; the day's fine-tuning run with its metrics.
    mlflow_url = st.env["MLFLOW_TRACKING_URI"]
    client = MlflowClient(tracking_uri=mlflow_url)
    champion = client.get_model_version_by_alias("dealrec-bigrec", "champion")
    page.goto(f"{mlflow_url}/#/models/dealrec-bigrec")
    page.get_by_text(re.compile(r"^@?\s*champion$")).first.wait_for()  # the alias chip, not the history tag
    page.get_by_text(f"Version {champion.version}").first.wait_for()
    shot(page, "mlflow-model")
    runs = client.search_runs(
        [client.get_experiment_by_name("dealrec").experiment_id], f"tags.dt = '{dt}' and tags.dealrec_kind = 'finetune'"
    )
    assert runs, "no fine-tuning run of the day in MLflow"
    run = runs[0]
    page.goto(f"{mlflow_url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}")
    page.get_by_text("eval.ndcg_at_20").first.wait_for()
    shot(page, "mlflow-finetune-run", full=True)
    page.goto(f"{mlflow_url}/#/experiments/{run.info.experiment_id}/runs")
    # The day's parent run on top; the arms' pruning (and, below them, fine-tuning) runs are nested under it.
    page.get_by_text(f"day dt={dt}").first.wait_for()
    shot(page, "mlflow-runs")
