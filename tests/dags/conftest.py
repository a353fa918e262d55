"""Airflow settings for the DAG tests: a throwaway AIRFLOW_HOME, this repo's dags/ and plugins/, no examples.

AIRFLOW_HOME is set before Airflow is first imported (it reads its configuration once); the DAG files import
``dealrec_airflow`` from plugins/, which Airflow puts on ``sys.path`` itself, and so do these tests.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS, PLUGINS = REPO / "dags", REPO / "plugins"


def airflow_env(home: Path) -> dict[str, str]:
    """The settings every Airflow process of these tests runs with (SQLite in ``home``)."""
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
    }


# In-process parsing needs only a throwaway home (never the user's ~/airflow); Airflow subprocesses get the
# whole airflow_env() explicitly, so nothing else of this session's environment is changed.
if "airflow" not in sys.modules:
    os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="dealrec-airflow-home-")
if str(PLUGINS) not in sys.path:
    sys.path.append(str(PLUGINS))


# The DAGs as the dag-processor parses them, shared by the structure and Param tests.
@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    return bag


@pytest.fixture(scope="module")
def daily(dagbag):
    return dagbag.dags["dealrec_daily"]


@pytest.fixture(scope="module")
def finetune(dagbag):
    return dagbag.dags["dealrec_finetune"]
