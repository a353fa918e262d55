"""The DAGs as Airflow parses them: no import error, nothing heavy at parse time, the agreed shape and Params."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from datetime import timedelta

import dealrec_airflow as dx
import pytest

from tests.dags.conftest import DAGS, airflow_env

HEAVY = ("torch", "transformers", "peft", "pandas", "mlflow", "sklearn")
GPU_TASKS = {"influence_solve", "influence", "base_model", "effort"}


def test_parsing_in_a_fresh_interpreter_imports_no_heavy_library(tmp_path):
    code = (
        "import json, sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(DAGS)!r})\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print(json.dumps({'errors': bag.import_errors, 'dags': sorted(bag.dags), 'heavy': heavy}))\n"
    )
    env = os.environ | airflow_env(tmp_path)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"errors": {}, "dags": ["dealrec_daily", "dealrec_finetune"], "heavy": []}


def test_the_view_plugin_loads_through_airflow_and_imports_no_heavy_library(tmp_path):
    """Airflow's plugin manager finds the DEALRec view (FastAPI app under /dealrec, a nav entry) and loading it
    pulls in nothing heavy: every Airflow component loads plugins. (``dealrec_airflow``'s retry policy resolves
    ``dealrec_tasks.errors``, a module without imports; nothing else of the library is loaded.)"""
    code = (
        "import json, sys\n"
        "from airflow import plugins_manager as pm\n"
        "apps, _ = pm.get_fastapi_plugins()\n"
        "views, _ = pm._get_ui_plugins()  # the list the UI's menu is built from\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {(*HEAVY, 'dealrec_tasks', 'pyarrow')!r})\n"
        "print(json.dumps({'apps': [(a['name'], a['url_prefix']) for a in apps],\n"
        "  'views': [(v['name'], v['destination'], v['url_route'], v['href']) for v in views], 'heavy': heavy}))\n"
    )
    env = os.environ | airflow_env(tmp_path)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {
        "apps": [["DEALRec view", "/dealrec"]],
        "views": [["DEALRec", "nav", "dealrec", "dealrec/"]],
        "heavy": ["dealrec_tasks", "dealrec_tasks.errors"],
    }


def test_daily_dag_shape(daily):
    assert daily.schedule == "@daily"
    assert daily.catchup is False and daily.max_active_runs == 1
    assert daily.doc_md and "dealrec" in daily.tags and daily.owner == "dealrec"
    up = {t.task_id: set(t.upstream_task_ids) for t in daily.tasks}
    assert up["ingest"] == {"plan"}
    assert up["samples"] == {"plan", "ingest"}
    assert up["compact"] == {"plan", "samples"} and not daily.get_task("compact").downstream_task_ids  # off the path
    assert up["surrogate"] == {"plan", "samples"}
    assert up["influence_solve"] == {"plan", "surrogate", "base_model"}  # no scoring before the model is found
    assert up["influence"] == {"plan", "shards", "influence_solve"}
    assert up["merge_influence"] == {"plan", "shards", "influence"}
    assert up["base_model"] == {"plan", "samples"}  # built for the day: its corpus ends before that day's tests
    assert up["effort"] == {"plan", "shards", "base_model"}
    assert up["merge_effort"] == {"plan", "shards", "effort"}
    assert up["arms"] == set()
    assert up["select"] == {"plan", "arms", "merge_influence", "merge_effort"}
    assert up["log_pruning"] == {"plan", "select"}
    # The scoring tasks are mapped over the shards task's list, select over the arms (dynamic task mapping).
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    assert {t.task_id for t in daily.tasks if isinstance(t, MappedOperator)} == {"influence", "effort", "select"}
    # The coreset asset is emitted once lineage is recorded, and it is what the fine-tuning DAG runs on.
    assert daily.get_task("log_pruning").outlets == [dx.CORESET]
    assert dx.CORESET.uri == "dealrec://coreset/"


def test_finetune_dag_shape(finetune):
    assert finetune.max_active_runs == 1 and finetune.doc_md and finetune.owner == "dealrec"
    assert list(finetune.timetable.asset_condition.objects) == [dx.CORESET]
    up = {t.task_id: set(t.upstream_task_ids) for t in finetune.tasks}
    assert up == {
        "plan": set(),
        "base_model": {"plan"},
        "arms": {"plan"},
        "finetune": {"plan", "base_model", "arms"},
        "evaluate": {"plan", "base_model", "arms", "finetune"},
        "register": {"plan", "base_model", "arms", "evaluate"},
        "evaluate_champion": {"plan", "base_model", "register"},
        "gate": {"plan", "register", "evaluate_champion"},
    }
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    mapped = {t.task_id for t in finetune.tasks if isinstance(t, MappedOperator)}
    assert mapped == {"finetune", "evaluate", "register"}  # one of each per arm


@pytest.mark.parametrize("dag_id", ["dealrec_daily", "dealrec_finetune"])
def test_queues_pools_retries_timeouts(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    gpu = GPU_TASKS | ({"finetune", "evaluate", "evaluate_champion"} if dag_id == "dealrec_finetune" else set())
    for t in dag.tasks:
        where = (t.queue, t.pool)
        assert where == (("gpu", "gpu") if t.task_id in gpu else ("default", "default_pool")), t.task_id
        assert t.retries >= 2 and t.retry_exponential_backoff > 1, t.task_id
        assert t.max_retry_delay is not None and t.retry_policy is not None, t.task_id
        assert timedelta(0) < t.execution_timeout <= timedelta(hours=12), t.task_id


def test_retry_policy_fails_fast_on_errors_a_retry_cannot_fix(daily):
    from airflow.sdk.definitions.retry_policy import RetryAction

    from dealrec_tasks.errors import ConfigError, InputError, OrderError, PartitionNotFound

    policy = daily.get_task("ingest").retry_policy
    decide = lambda exc: policy.evaluate(exc, 1, 3).action  # noqa: E731
    assert decide(ConfigError("k=0")) == RetryAction.FAIL
    assert decide(OrderError("dt")) == RetryAction.FAIL
    # Bad input fails at once (issue 29, item 15: "no test rows to evaluate on" was retried 3 times) ...
    assert decide(InputError("no test rows to evaluate on")) == RetryAction.FAIL
    # ... but a partition not published yet, or hidden while it is republished, may come: retried.
    assert decide(PartitionNotFound("not yet published")) == RetryAction.DEFAULT
    assert decide(OSError("S3 timeout")) == RetryAction.DEFAULT


def test_params_defaults_are_valid_and_the_arms_enum_is_the_librarys(daily, finetune):
    from dealrec_tasks.selection import STRATEGIES, SelectConfig

    daily.params.validate()
    finetune.params.validate()
    assert set(daily.params) >= {"dt", "n", "ratio", "lambda", "k", "hard_prune", "arms", "base_model", "shards"}
    assert set(finetune.params) >= {"dt", "base_model", "epochs", "eval_users", "margin"}
    arms = daily.params.get_param("arms")
    assert arms.schema["items"]["enum"] == list(STRATEGIES) and arms.schema["uniqueItems"] is True
    assert arms.value == [SelectConfig.strategy, "random"]  # the default strategy and its random control


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("dt", "2026-13-01"),
        ("dt", "yesterday"),
        ("dt", "01/02/2026"),
        ("n", 0),
        ("n", 2.5),
        ("ratio", 0),
        ("ratio", 1.5),
        ("lambda", -0.1),
        ("lambda", 1e12),
        ("k", 0),
        ("k", 10**8),
        ("hard_prune", 1.0),
        ("hard_prune", -0.1),
        ("arms", ["best"]),
        ("arms", ["dealrec", "dealrec"]),
        ("arms", []),
        ("arms", "dealrec"),
        ("influence_target", "test"),
        ("base_model", 7),
        ("base_model", ""),
        ("base_model", "relative/dir"),
        ("shards", 0),
        ("shards", 65),
        ("surrogate_max_epochs", 0),
    ],
)
def test_daily_params_refuse_bad_values(daily, key, value):
    from airflow.sdk.exceptions import ParamValidationError

    params = copy.deepcopy(daily.params)
    with pytest.raises(ParamValidationError, match=key):
        params[key] = value


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("dt", "2026-02-30"),
        ("epochs", 0),
        ("eval_users", -1),
        ("margin", -1.5),
        ("margin", 1.0),
        ("base_model", 7),
        ("base_model", "models/llama"),
    ],
)
def test_finetune_params_refuse_bad_values(finetune, key, value):
    from airflow.sdk.exceptions import ParamValidationError

    params = copy.deepcopy(finetune.params)
    with pytest.raises(ParamValidationError, match=key):
        params[key] = value


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("dt", "2026-01-07"),
        ("dt", None),
        ("ratio", 0.05),
        ("ratio", None),
        ("arms", ["dealrec"]),
        ("arms", ["quantile", "random", "dealrec"]),
        ("shards", 64),
        ("base_model", None),
        ("base_model", "/models/Llama-3.2-1B"),
    ],
)
def test_daily_params_accept_good_values(daily, key, value):
    params = copy.deepcopy(daily.params)
    params[key] = value
    assert params[key] == value


def test_every_param_has_a_title_and_a_description_and_base_model_is_optional(daily, finetune):
    """What the trigger form shows: a label and a help text per field; the base model may stay empty (null), which
    is what the form submits for an untouched text field."""
    for dag in (daily, finetune):
        for key in dag.params:
            schema = dag.params.get_param(key).schema
            assert schema.get("title") and len(dag.params.get_param(key).description or "") > 10, (dag.dag_id, key)
        assert dag.params["base_model"] is None
        assert "null" in dag.params.get_param("base_model").schema["type"]


# Param -> (module, config class, field) of the Params generated from a config; the others are hand-written.
FROM_CONFIG = {
    "dealrec_daily": {
        "n": ("dealrec_tasks.selection", "SelectConfig", "n"),
        "ratio": ("dealrec_tasks.selection", "SelectConfig", "ratio"),
        "lambda": ("dealrec_tasks.selection", "SelectConfig", "lam"),
        "k": ("dealrec_tasks.selection", "SelectConfig", "k"),
        "hard_prune": ("dealrec_tasks.selection", "SelectConfig", "hard_prune"),
        "influence_target": ("dealrec_tasks.scoring.config", "InfluenceConfig", "target"),
        "surrogate_max_epochs": ("dealrec_tasks.surrogate.config", "SurrogateConfig", "max_epochs"),
    },
    "dealrec_finetune": {
        "epochs": ("dealrec_tasks.llm.config", "FinetuneConfig", "epochs"),
        "margin": ("dealrec_tasks.tracking.config", "TrackingConfig", "margin"),
    },
}


def test_param_names_and_defaults(daily, finetune):
    """The Params the DAGs read, and what an untouched trigger form runs with."""
    assert dict(daily.params) == {
        "dt": None,
        "n": 1024,
        "ratio": None,
        "lambda": 0.3,
        "k": 50,
        "hard_prune": 0.1,
        "arms": ["dealrec", "random"],
        "influence_target": "valid",
        "base_model": None,
        "shards": 2,
        "surrogate_max_epochs": 200,
        "allow_future": False,  # a dt after tomorrow (UTC) is refused unless a run asks for it (issue 29, item 4)
    }
    assert dict(finetune.params) == {"dt": None, "base_model": None, "epochs": 10, "eval_users": 0, "margin": 0.0}


@pytest.mark.parametrize(("dag_id", "key"), [(d, k) for d, keys in FROM_CONFIG.items() for k in keys])
def test_params_from_a_config_have_its_default_help_and_type(dagbag, dag_id, key):
    """The form's defaults and help texts are the configs' (one truth: they cannot drift apart)."""
    import dataclasses
    import importlib

    module, cls_name, name = FROM_CONFIG[dag_id][key]
    field = {f.name: f for f in dataclasses.fields(getattr(importlib.import_module(module), cls_name))}[name]
    param = dagbag.dags[dag_id].params.get_param(key)
    assert param.value == field.default
    assert type(param.value) is type(field.default)
    assert param.description == field.metadata["help"]
    # The JSON type of the annotation; n, optional in the config (exclusive with ratio), stays required in the form.
    expected = {"int": "integer", "float": "number", "str": "string", "int | None": ["null", "integer"]}
    expected["float | None"] = ["null", "number"]
    assert param.schema["type"] == ("integer" if key == "n" else expected[field.type])


def test_config_param_types_and_refusals():
    from dealrec_tasks.config import IngestConfig, S3Config
    from dealrec_tasks.llm.config import LoRAConfig
    from dealrec_tasks.selection import SelectConfig

    assert dx.config_param(SelectConfig, "ratio", title="r").schema["type"] == ["null", "number"]
    assert dx.config_param(S3Config, "endpoint_url", title="e").schema["type"] == ["null", "string"]
    assert dx.config_param(IngestConfig, "allow_extra_columns", title="a").schema["type"] == "boolean"
    assert dx.config_param(SelectConfig, "n", title="n", type="integer").schema["type"] == "integer"
    with pytest.raises(KeyError, match="lambda"):
        dx.config_param(SelectConfig, "lambda", title="l")
    with pytest.raises(TypeError, match="JSON-schema type"):
        dx.config_param(LoRAConfig, "target_modules", title="t")


def test_influence_target_enum_is_the_librarys(daily):
    from dealrec_tasks.scoring.config import TARGETS

    assert daily.params.get_param("influence_target").schema["enum"] == list(TARGETS)
