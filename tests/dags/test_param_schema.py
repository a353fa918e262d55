"""Issue 29, item 5: what the trigger form lets through. Each Param is validated as Airflow validates a run's conf
(``Param.resolve``: jsonschema with a FormatChecker), and the library refuses the same values again in the runs'
first task, before any training or scoring (a run triggered with ``-c`` or through the API reaches the tasks with
whatever jsonschema lets pass: NaN passes every ``minimum``/``maximum``)."""

from __future__ import annotations

import copy
import dataclasses
import importlib
import math
from types import SimpleNamespace

import dealrec_airflow as dx
import pytest

from dealrec_tasks.errors import ConfigError
from dealrec_tasks.steps.llm import base_model_dir

NAN = float("nan")


def refused(dag, key, value) -> bool:
    from airflow.sdk.exceptions import ParamValidationError

    params = copy.deepcopy(dag.params)
    try:
        params[key] = value
    except ParamValidationError as exc:
        assert key in str(exc)
        return True
    return False


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("lambda", NAN),
        ("ratio", NAN),
        ("hard_prune", NAN),
        ("ratio", 1e-300),  # floor(ratio * |D|) = 0 for any day: refused at select time, after the scoring
        ("n", 10**12),
        ("surrogate_max_epochs", 10**12),
        ("base_model", "/"),
        ("base_model", "//"),
        ("base_model", "/models/llama\n"),  # Python's `$` matches before a final newline: `^/\S*$` let it through
        ("base_model", "/models/llama "),
        ("base_model", "/models/ll\x00ama"),
    ],
)
def test_daily_form_refuses(daily, key, value):
    assert refused(daily, key, value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("margin", NAN),
        ("epochs", 10**12),
        ("eval_users", 10**12),
        ("base_model", "/"),
        ("base_model", "/models/llama\n"),
    ],
)
def test_finetune_form_refuses(finetune, key, value):
    assert refused(finetune, key, value)


@pytest.mark.parametrize(
    ("key", "value"),
    [("ratio", 1e-6), ("ratio", 1.0), ("n", 10_000_000), ("lambda", 0.0), ("base_model", "/models/Llama-3.2-1B")],
)
def test_daily_form_still_accepts(daily, key, value):
    assert not refused(daily, key, value)


def test_every_number_param_from_a_config_refuses_nan_and_has_the_configs_bounds(dagbag):
    """One declaration: a Param from a config carries the bounds the config enforces, and NaN is refused by both."""
    from dealrec_tasks.config import number_bounds

    from_config = {
        "dealrec_daily": {
            "n": ("dealrec_tasks.selection", "SelectConfig", "n"),
            "ratio": ("dealrec_tasks.selection", "SelectConfig", "ratio"),
            "lambda": ("dealrec_tasks.selection", "SelectConfig", "lam"),
            "k": ("dealrec_tasks.selection", "SelectConfig", "k"),
            "hard_prune": ("dealrec_tasks.selection", "SelectConfig", "hard_prune"),
            "surrogate_max_epochs": ("dealrec_tasks.surrogate.config", "SurrogateConfig", "max_epochs"),
        },
        "dealrec_finetune": {
            "epochs": ("dealrec_tasks.llm.config", "FinetuneConfig", "epochs"),
            "margin": ("dealrec_tasks.tracking.config", "TrackingConfig", "margin"),
        },
    }
    lower, upper = ("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")
    for dag_id, params in from_config.items():
        dag = dagbag.dags[dag_id]
        for key, (module, name, field) in params.items():
            cls = getattr(importlib.import_module(module), name)
            schema = dag.params.get_param(key).schema
            assert refused(dag, key, NAN), (dag_id, key)
            for bound in number_bounds(cls, field):  # the form bounds every side the config bounds
                assert any(k in schema for k in (lower if bound in ("ge", "gt") else upper)), (dag_id, key, bound)
            # and the config refuses what the form's maximum refuses
            if "maximum" in schema:
                over = schema["maximum"] + (1 if schema["type"] == "integer" else 1e-9)
                assert refused(dag, key, over)
                base = {"n": None, "ratio": 0.1} if field == "ratio" else {}
                with pytest.raises(ConfigError, match=field):
                    cls(**(base | {field: over}))


def test_the_library_refuses_the_same_values_in_the_first_task(daily, finetune):
    """What a run gets when its conf reached the tasks unchecked: the plan task, upstream of every other task,
    refuses it in one line before anything trains or scores."""
    good = dict(daily.params)
    dx.check_daily_params(good)
    for key, value, name in [
        ("lambda", NAN, "lam=nan"),
        ("ratio", NAN, "ratio=nan"),
        ("hard_prune", NAN, "hard_prune=nan"),
        ("ratio", 1e-300, "ratio=1e-300"),
        ("n", 10**12, "n=1000000000000"),
        ("surrogate_max_epochs", 10**12, "max_epochs=1000000000000"),
        ("base_model", "/models/llama\n", "base_model='/models/llama\\n'"),
    ]:
        with pytest.raises(ConfigError, match="^" + name.replace("\\", "\\\\")) as exc:
            dx.check_daily_params(good | {key: value})
        assert "\n" not in str(exc.value)
    good = dict(finetune.params)
    dx.check_finetune_params(good)
    for key, value, name in [
        ("margin", NAN, "margin=nan"),
        ("epochs", 10**12, "epochs=1000000000000"),
        ("eval_users", 10**12, "eval_users=1000000000000"),
        ("base_model", " /models/llama", "base_model=' /models/llama'"),
    ]:
        with pytest.raises(ConfigError, match="^" + name):
            dx.check_finetune_params(good | {key: value})


@pytest.mark.parametrize("path", ["/", "/etc/passwd", "/dev/zero", "/models/llama\n", "/nowhere/llama"])
def test_a_base_model_without_a_model_is_refused_in_one_line_naming_it(path):
    """What only the GPU worker can tell (no model there) is refused by the base_model task, which every scoring
    task now waits for."""
    with pytest.raises(ConfigError, match=r"^base_model=") as exc:
        base_model_dir(path)
    assert "\n" not in str(exc.value)


def test_the_plan_task_checks_the_params_and_no_scoring_starts_before_the_base_model(daily, finetune):
    from airflow.sdk.execution_time.context import set_current_context

    up = {t.task_id: set(t.upstream_task_ids) for t in daily.tasks}
    assert "base_model" in up["influence_solve"] and "base_model" in up["effort"]
    dag_run = SimpleNamespace(run_type="manual", run_id="manual__x")
    for dag, bad in ((daily, {"lambda": NAN}), (finetune, {"margin": NAN})):
        params = dict(dag.params) | {"dt": "2026-01-07"} | bad
        plan = dag.get_task("plan")
        context = {"params": params, "dag_run": dag_run, "dag": dag}
        with set_current_context(context), pytest.raises(ConfigError, match="=nan"):
            plan.python_callable()


def test_defaults_pass_the_library_as_they_pass_the_form(daily, finetune):
    assert math.isclose(daily.params["lambda"], 0.3)
    dx.check_daily_params(dict(daily.params))
    dx.check_finetune_params(dict(finetune.params))
    assert dataclasses.is_dataclass(dx.select_config(dict(daily.params)))
