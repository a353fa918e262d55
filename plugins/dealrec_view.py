"""The DEALRec view inside the Airflow UI: a FastAPI app served by the api-server under ``/dealrec/`` and a "DEALRec"
entry in the navigation that shows it (Airflow 3.1+ plugin: ``fastapi_apps`` + ``external_views``).

Pages: ``/dealrec/`` lists the days, ``/dealrec/day/<dt>`` shows one day (coreset, strata, pruned count,
coverage against random, the report figure, score distributions, fine-tuning metrics per arm, the MLflow runs and
the champion/challenger decision, links to the Airflow run and MLflow), ``/dealrec/day/<dt>/report.png`` is the
figure, ``/dealrec/api/days[/<dt>]`` the same data as JSON.

Behind Airflow's own login: every request needs Airflow's JWT (the UI's cookie, or a bearer token) and read access
to ``dealrec_daily``; a browser without a session is sent to Airflow's login page. The lake and MLflow come from
the same environment as the DAGs (``dealrec_airflow``). Nothing heavy is imported when Airflow loads plugins: the
library is imported inside the handlers. ``DEALREC_MLFLOW_UI_URL`` (e.g. ``http://localhost:5000``) turns MLflow
ids into links.
"""

from __future__ import annotations

import asyncio
import os

from airflow.plugins_manager import AirflowPlugin
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

URL_PREFIX = "/dealrec"
GUARD_DAG = "dealrec_daily"

app = FastAPI(title="DEALRec view", docs_url=None, redoc_url=None, openapi_url=None)


class _LoginRequired(Exception):
    pass


async def _authorize(request: Request) -> None:
    """Airflow's user of this request (cookie or bearer JWT), who must be allowed to read ``dealrec_daily``."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi.security import HTTPAuthorizationCredentials

    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    creds = HTTPAuthorizationCredentials(scheme=scheme, credentials=token) if token else None
    try:
        user = await get_user(request, None, creds)
    except HTTPException as exc:
        if exc.status_code in (401, 403) and creds is None:
            raise _LoginRequired from exc
        raise
    allowed = get_auth_manager().is_authorized_dag(method="GET", details=DagDetails(id=GUARD_DAG), user=user)
    if not allowed:
        raise HTTPException(status_code=403, detail=f"not allowed to read the DAG {GUARD_DAG}")


@app.exception_handler(_LoginRequired)
async def _to_login(request: Request, _exc: _LoginRequired):
    from airflow.api_fastapi.app import get_auth_manager

    if "/api/" in request.url.path or request.url.path.endswith(".png"):
        return JSONResponse({"detail": "Not authenticated"}, status_code=401)
    return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), status_code=303)


def _lake():
    import dealrec_airflow as dx

    return dx.lake()


def _tracking_and_links():
    import dealrec_airflow as dx

    from dealrec_tasks.days import MlflowLinks

    return dx.tracking(), MlflowLinks(os.environ.get("DEALREC_MLFLOW_UI_URL") or None)


def _airflow_root(request: Request) -> str:
    """The Airflow UI's root as seen by the browser (the app is mounted under ``URL_PREFIX``)."""
    root = request.scope.get("root_path", "")
    return root[: -len(URL_PREFIX)] if root.endswith(URL_PREFIX) else "/"


async def _in_thread(fn, *args):
    """Lake and MLflow reads are blocking: keep them off the api-server's event loop."""
    from dealrec_tasks.errors import ConfigError, InputError

    try:
        return await asyncio.to_thread(fn, *args)
    except InputError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    except ConfigError as exc:  # a malformed dt (ConfigError is not a ValueError: this was a 500)
        raise HTTPException(status_code=400, detail=str(exc)) from exc


def _days():
    from dealrec_tasks.days import list_days

    lake = _lake()
    return list_days(lake), lake.uri()


def _day(dt: str):
    from dealrec_tasks.days import day_detail

    tracking, links = _tracking_and_links()
    return day_detail(_lake(), dt, tracking, links)


def _report(dt: str) -> bytes:
    from dealrec_tasks.days import report_png

    return report_png(_lake(), dt)


@app.get("/", response_class=HTMLResponse)
async def days_html(request: Request):
    from dealrec_tasks.days_page import days_page

    await _authorize(request)
    days, lake = await _in_thread(_days)
    return HTMLResponse(days_page(days, lake))


@app.get("/day/{dt}/", response_class=HTMLResponse)  # the slash: "report.png" and "../" resolve from here
async def day_html(request: Request, dt: str):
    from dealrec_tasks.days_page import day_page

    await _authorize(request)
    detail = await _in_thread(_day, dt)
    return HTMLResponse(day_page(detail, _airflow_root(request)))


@app.get("/day/{dt}/report.png")
async def day_report(request: Request, dt: str):
    await _authorize(request)
    return Response(await _in_thread(_report, dt), media_type="image/png")


@app.get("/day/{dt}/arms.png")
async def day_gate_plot(request: Request, dt: str):
    from dealrec_tasks.days import gate_png

    await _authorize(request)
    return Response(await _in_thread(gate_png, _lake(), dt), media_type="image/png")


@app.get("/api/days")
async def days_json(request: Request):
    await _authorize(request)
    days, lake = await _in_thread(_days)
    return {"lake": lake, "days": list(days), "notes": days.notes}  # notes: folders that are no day, ignored


@app.get("/api/days/{dt}")
async def day_json(request: Request, dt: str):
    await _authorize(request)
    return await _in_thread(_day, dt)


class DealrecViewPlugin(AirflowPlugin):
    name = "dealrec_view"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "DEALRec view"}]
    external_views = [
        {
            "name": "DEALRec",
            "href": URL_PREFIX.lstrip("/") + "/",
            "destination": "nav",
            "url_route": "dealrec",
        }
    ]
