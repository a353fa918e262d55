"""The Airflow side of the DAGs in a few helpers: where things live, which day a run is for, Params, retries.

DAG files import this module (Airflow puts ``plugins/`` on ``sys.path``) and stay wiring only. Nothing here
imports torch, pandas or transformers: ``dealrec_tasks`` is imported inside the functions a task calls.

Locations come from the environment, so the same DAGs run on the embedded defaults (a local lake, SQLite MLflow)
and on the full stack (S3, an MLflow server):

- ``DEALREC_LAKE``: lake root, a path or ``file://`` / ``s3://`` URI (default ``<repo>/var/lake``);
- ``DEALREC_MODEL_DIR``: models folder (default ``<repo>/var/models``); the embedded LLM ships in the package;
- ``DEALREC_WORK_DIR``: fine-tuning checkpoints and embedding caches (default ``<repo>/var/work``);
- ``MLFLOW_TRACKING_URI``: MLflow (default ``sqlite:///<repo>/var/mlflow.db``);
- S3 credentials: the Airflow connection ``dealrec_s3`` (``DEALREC_S3_CONN_ID``) when it exists (login, password,
  extra ``endpoint_url`` and ``region_name``), else the usual ``AWS_*`` / ``DEALREC_S3_ENDPOINT_URL`` variables.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, Param
from airflow.sdk.definitions.retry_policy import ExceptionRetryPolicy, RetryAction, RetryRule

if TYPE_CHECKING:
    from dealrec_tasks.steps.common import StepResult
    from dealrec_tasks.storage import Lake
    from dealrec_tasks.tracking.config import TrackingConfig

REPO = Path(__file__).resolve().parents[1]
VAR = REPO / "var"

#: The published coreset of a day: ``dealrec_daily`` emits it (extra: dt, uri), ``dealrec_finetune`` runs on it.
CORESET = Asset(name="dealrec_coreset", uri="dealrec://coreset", group="dealrec")

#: Where the scoring and LLM tasks run: the GPU workers' Celery queue, one pool slot per GPU.
GPU = {"queue": "gpu", "pool": "gpu"}
OWNER = "dealrec"
TAGS = ["dealrec"]

# Bad parameters, bad or missing input ("no test rows to evaluate on") and out-of-order days do not get better by
# retrying: fail at once, with the library's message. Transient failures (a killed worker, S3 or MLflow down) retry.
_NO_RETRY = ExceptionRetryPolicy(
    rules=[
        RetryRule(  # first match wins: a partition not published yet (or hidden mid-republish) may come
            exception="dealrec_tasks.errors.PartitionNotFound",
            action=RetryAction.DEFAULT,
            reason="an upstream partition is not published yet, or is being republished",
        ),
        RetryRule(
            exception=[
                "dealrec_tasks.errors.ConfigError",
                "dealrec_tasks.errors.OrderError",
                "dealrec_tasks.errors.InputError",
            ],
            action=RetryAction.FAIL,
            reason="a parameter, the input data or the order of days is wrong; a retry would fail the same way",
        ),
    ]
)


def default_args(retries: int = 2) -> dict[str, Any]:
    """Every task: retries with exponential backoff (1, 2, 4 ... minutes, at most 30), a default timeout."""
    return {
        "owner": OWNER,
        "retries": retries,
        "retry_delay": timedelta(minutes=1),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=30),
        "retry_policy": _NO_RETRY,
        "execution_timeout": timedelta(hours=1),
    }


# ---------------------------------------------------------------------------------------------------------
# Locations
# ---------------------------------------------------------------------------------------------------------
def _env_path(name: str, default: Path) -> str:
    value = os.environ.get(name) or str(default)
    return value if "://" in value else str(Path(value).resolve())


def lake_root() -> str:
    return _env_path("DEALREC_LAKE", VAR / "lake")


def models_dir() -> str:
    return _env_path("DEALREC_MODEL_DIR", VAR / "models")


def work_dir() -> str:
    return _env_path("DEALREC_WORK_DIR", VAR / "work")


def s3_config():
    """S3 settings from the Airflow connection ``dealrec_s3`` when it is defined, else from the environment."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    from dealrec_tasks.config import S3Config

    try:
        conn = Connection.get(os.environ.get("DEALREC_S3_CONN_ID", "dealrec_s3"))
    except AirflowNotFoundException:
        return S3Config.from_env()
    extra = conn.extra_dejson
    env = S3Config.from_env()
    return S3Config(
        endpoint_url=extra.get("endpoint_url") or env.endpoint_url,
        region=extra.get("region_name") or env.region,
        access_key=conn.login or env.access_key,
        secret_key=conn.password or env.secret_key,
    )


def lake() -> Lake:
    from dealrec_tasks.storage import Lake, Storage

    root = lake_root()
    return Lake(root, Storage(s3_config() if root.startswith("s3://") else None))


def tracking(**overrides: Any) -> TrackingConfig:
    from dealrec_tasks.tracking.config import TrackingConfig

    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{VAR / 'mlflow.db'}"
    return TrackingConfig(tracking_uri=uri, **overrides)


def result(step: StepResult) -> dict[str, Any]:
    """What a task returns to XCom: the step's URIs and counts (small, JSON only; never data)."""
    print(step.summary())
    return json.loads(json.dumps(step.to_dict(), default=str))


# ---------------------------------------------------------------------------------------------------------
# Which day a run is for (never the wall clock)
# ---------------------------------------------------------------------------------------------------------
def checked_dt(value: Any, source: str = "dt") -> str:
    """A day from a Param or an asset event's extra, refused in one line unless it is a date YYYY-MM-DD: it names
    partitions and folders, so ``2026-01-04/../../samples/dt=2026-01-04`` must not get as far as a task."""
    from dealrec_tasks.config import parse_dt
    from dealrec_tasks.errors import ConfigError

    if not isinstance(value, str) or len(value) > 10:  # too long for a date: shown cut, never printed whole
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise ConfigError(f"{source}={shown}: expected a date YYYY-MM-DD")
    parse_dt(value, source)
    return value


def _day(value: datetime | date | str) -> str:
    return value.isoformat()[:10] if not isinstance(value, str) else value[:10]


def daily_dt(context: dict[str, Any]) -> str:
    """The ``dt`` Param; else, for a scheduled run, the day that just ended (the data interval's start, or the
    day before the run's logical date when the timetable gives no interval); else the logical date's day, or
    yesterday (UTC) when that day is not over yet.

    A ``dt`` Param after tomorrow (UTC) is refused unless the run's ``allow_future`` Param (or conf key) is true: a
    typo such as 2062 for 2026 would ingest a day that refuses every real day after it."""
    from dealrec_tasks.config import check_not_future
    from dealrec_tasks.errors import ConfigError

    params = context["params"]
    if params.get("dt"):
        dt = checked_dt(params["dt"])
        check_not_future(dt, params.get("allow_future") is True, 'trigger it with "allow_future": true beside dt')
        return dt
    dag_run = context["dag_run"]
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    logical = context.get("logical_date")
    if getattr(dag_run.run_type, "value", dag_run.run_type) == "scheduled":
        if start is not None and end is not None and end > start:
            return _day(start)
        if logical is not None:
            return _day(logical - timedelta(days=1))
    if logical is not None:
        # A manual run (the form's defaults) or `airflow dags test DAG DATE`: the logical date's day once it is
        # over, else the last complete day, as a scheduled run would take. Today has no complete logs yet: a run
        # triggered at 08:00 UTC published the unfinished day and fine-tuning then had no test rows (issue 29,
        # item 15).
        day = logical.astimezone(UTC).date() if isinstance(logical, datetime) else date.fromisoformat(_day(logical))
        return min(day, datetime.now(UTC).date() - timedelta(days=1)).isoformat()
    raise ConfigError(f"dt: run {dag_run.run_id} has no logical date; trigger it with the dt Param (YYYY-MM-DD)")


def finetune_dt(context: dict[str, Any], lake: Lake) -> str:
    """The ``dt`` Param; else the newest day among the triggering coreset events; else the newest published
    coreset (``airflow dags test`` and manual runs have no triggering event)."""
    from dealrec_tasks.catalogue import CORESET as CORESET_DATASET
    from dealrec_tasks.errors import InputError

    if context["params"].get("dt"):
        return checked_dt(context["params"]["dt"])
    events = context.get("triggering_asset_events") or {}
    # An event's extra is data anyone with asset-event rights can post: checked like a Param.
    days = [
        checked_dt(e.extra["dt"], "asset event dt") for evs in events.values() for e in evs if (e.extra or {}).get("dt")
    ]
    if days:
        return max(days)
    published = lake.partitions(CORESET_DATASET)
    if not published:
        raise InputError(f"{lake.uri(CORESET_DATASET)}: no published coreset to fine-tune on; run dealrec_daily")
    return published[-1]


def arms(values: list[str]) -> list[list]:
    """What the select task is mapped over: ``[[strategy, control], ...]``, the first arm primary; unknown or
    repeated strategies are refused by the library (the form's schema refuses them too)."""
    from dealrec_tasks.selection import check_arms

    return [[strategy, i > 0] for i, strategy in enumerate(check_arms(values))]


def arm_of(lake: Lake, coreset_uri: str) -> str | None:
    """The control arm a coreset URI of the lake names (None for the primary one)."""
    from dealrec_tasks.catalogue import arm_of as arm_of_dataset

    return arm_of_dataset(lake.locate(coreset_uri)[0])


def announced_arms(context: dict[str, Any], lake: Lake, dt: str) -> list[dict[str, str]]:
    """The arms to fine-tune for ``dt``: the coreset URIs the triggering asset event announced for that day (its
    ``arms``), else the published coresets of the day in the lake (a manual run, ``airflow dags test``)."""
    from dealrec_tasks.steps.select import published_arms

    events = context.get("triggering_asset_events") or {}
    for evs in events.values():
        for e in reversed(list(evs)):
            extra = e.extra or {}
            if extra.get("dt") == dt and isinstance(extra.get("arms"), dict) and extra["arms"]:
                return [{"strategy": str(k), "coreset": str(v)} for k, v in extra["arms"].items()]
    return published_arms(lake, dt)


def run_key(context: dict[str, Any], dt: str) -> str:
    """The orchestrator run id given to MLflow: the DAG and the day, not Airflow's run id.

    MLflow finds a run or model version by (day, this key, digest of the inputs). A retry, a cleared task or a
    second manual run for the same day with unchanged inputs thus finds what the first one logged instead of
    duplicating it, while changed inputs (another digest) still get their own run and version.
    """
    return f"{context['dag'].dag_id}/dt={dt}"


def run_tags(context: dict[str, Any]) -> dict[str, str]:
    """Airflow's own ids for MLflow, beside the coarser ``run_key``: which DAG run logged a run or a version."""
    return {"airflow.dag_id": context["dag"].dag_id, "airflow.run_id": str(context["run_id"])}


def shards(n: int) -> list[list[int]]:
    """``[[0, n], [1, n], ...]``: what the sharded tasks are mapped over."""
    return [[i, n] for i in range(n)]


# ---------------------------------------------------------------------------------------------------------
# Params of the trigger form (JSON schema: the form refuses invalid values)
# ---------------------------------------------------------------------------------------------------------
_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean"}
# A config bound (``opt(..., ge=...)``) as the JSON-schema keyword that says the same, and the keywords of its side.
_SCHEMA_BOUNDS = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum"}
_SIDE = {"ge": {"minimum", "exclusiveMinimum"}, "le": {"maximum", "exclusiveMaximum"}}
_SIDE |= {"gt": _SIDE["ge"], "lt": _SIDE["le"]}
#: Refuses NaN and nothing else: jsonschema compares NaN false with everything, so NaN passes ``minimum`` and
#: ``maximum`` alike (a NaN lambda went through the form), yet no real number is both >= 0 and <= -1. (The form
#: cannot type NaN; ``airflow dags trigger -c`` and the API's JSON parser accept it.)
NOT_NAN = {"type": "number", "minimum": 0, "maximum": -1}


def _json_type(annotation: Any) -> str | list[str]:
    """JSON-schema type of a config field's annotation: ``int`` -> ``"integer"``, ``float | None`` ->
    ``["null", "number"]`` (the trigger form submits an empty field as null)."""
    args = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    names = [_JSON_TYPES.get(a) for a in args if a is not type(None)]
    if len(names) != 1 or names[0] is None:
        raise TypeError(f"{annotation!r}: no JSON-schema type for a Param (int, float, str, bool, X | None)")
    return ["null", names[0]] if type(None) in args else names[0]


def config_param(cfg_cls: type, name: str, *, title: str, **schema: Any) -> Param:
    """A Param made from the field ``name`` of the config dataclass ``cfg_cls``: its default, its help text (the
    description), the JSON-schema type of its annotation and the bounds the config enforces (``number_bounds``:
    its declared ones, [0, INT_MAX] for an integer; NaN refused for a number). ``schema`` adds the form's bounds
    (from the library's constants; one given for a side replaces the config's there) and may override ``type``
    where the form must be stricter than the config."""
    from dealrec_tasks.config import number_bounds

    fields = {f.name: f for f in dataclasses.fields(cfg_cls)}
    if name not in fields:
        raise KeyError(f"{cfg_cls.__name__} has no field {name!r}")
    f = fields[name]
    if f.default is dataclasses.MISSING or "help" not in f.metadata:
        raise TypeError(f"{cfg_cls.__name__}.{name}: a Param needs a field made with opt(default, help)")
    schema.setdefault("type", _json_type(typing.get_type_hints(cfg_cls)[name]))
    given = set(schema)
    for key, bound in number_bounds(cfg_cls, name).items():
        if not given & _SIDE[key]:
            schema[_SCHEMA_BOUNDS[key]] = bound
    if "number" in ([schema["type"]] if isinstance(schema["type"], str) else schema["type"]):
        schema.setdefault("not", NOT_NAN)
    return Param(f.default, title=title, description=f.metadata["help"], **schema)


def _dt_param(what: str) -> Param:
    return Param(
        None,
        type=["null", "string"],
        format="date",
        title="Day (dt)",
        description=f"Partition day YYYY-MM-DD. Empty: {what}.",
    )


def _base_model_param() -> Param:
    """Optional: null (an empty field in the trigger form) means the embedded tiny LLM. A required string whose
    default is "" made the form refuse its own defaults (the UI turns an empty field into null). The pattern
    (``BASE_MODEL_PATTERN``) refuses '/', whitespace and a trailing newline; the library refuses at run time what
    only the GPU worker can tell (``/etc/passwd``: no model directory)."""
    from dealrec_tasks.llm.config import BASE_MODEL_PATTERN

    return Param(
        None,
        type=["null", "string"],
        pattern=BASE_MODEL_PATTERN,
        title="Base model",
        description="Absolute path of a local Hugging Face causal LM directory on the GPU workers (LLaMA, Qwen, "
        "Mistral). Empty: the embedded tiny LLM, built once under DEALREC_MODEL_DIR.",
    )


def daily_params() -> dict[str, Param]:
    """The daily DAG's form: selection, influence and surrogate options from their configs (torch-free modules),
    plus the run's own settings (dt, base model, shards)."""
    from dealrec_tasks.scoring.config import TARGETS, InfluenceConfig
    from dealrec_tasks.selection import MAX_LAMBDA, MAX_STRATA, STRATEGIES, SelectConfig
    from dealrec_tasks.surrogate.config import SurrogateConfig

    return {
        "dt": _dt_param("the day the scheduled run covers, or the logical date's day"),
        # n is optional in the config (exclusive with ratio); in the form ratio replaces it, so n stays a number.
        "n": config_param(SelectConfig, "n", title="Coreset size n", type="integer"),
        "ratio": config_param(SelectConfig, "ratio", title="Coreset ratio"),
        "lambda": config_param(SelectConfig, "lam", title="lambda", minimum=0, maximum=MAX_LAMBDA),
        "k": config_param(SelectConfig, "k", title="Strata k", minimum=1, maximum=MAX_STRATA),
        "hard_prune": config_param(SelectConfig, "hard_prune", title="Hard prune", minimum=0, exclusiveMaximum=1),
        "arms": Param(
            [SelectConfig.strategy, "random"],
            type="array",
            items={"type": "string", "enum": list(STRATEGIES)},
            minItems=1,
            uniqueItems=True,
            title="Arms",
            description="Selection strategies, each its own coreset, fine-tune and evaluation on the same users. The "
            "first is the pipeline's strategy (coreset/dt=D/); the others are controls measured beside it "
            "(coreset/arm=<strategy>/dt=D/), one per line. Default: the default strategy and random; only the "
            f"first to turn the control off. One of: {', '.join(STRATEGIES)}.",
        ),
        "influence_target": config_param(InfluenceConfig, "target", title="Influence target", enum=list(TARGETS)),
        "base_model": _base_model_param(),
        "shards": Param(
            2,
            type="integer",
            minimum=1,
            maximum=64,
            title="Shards",
            description="Influence and effort scoring run as this many parallel GPU tasks.",
        ),
        "surrogate_max_epochs": config_param(SurrogateConfig, "max_epochs", title="Surrogate epochs"),
        "allow_future": Param(
            False,
            type="boolean",
            title="Allow a future day",
            description="Ingest a dt after tomorrow (UTC). Off: such a day is refused, since a typo (2062 for 2026) "
            "would ingest an empty day that refuses every real day after it.",
        ),
    }


def finetune_params() -> dict[str, Param]:
    """The fine-tuning DAG's form: epochs and the promotion margin from their configs, plus dt, the base model and
    how many test users are evaluated."""
    from dealrec_tasks.llm.config import MAX_EVAL_USERS, FinetuneConfig
    from dealrec_tasks.tracking.config import TrackingConfig

    return {
        "dt": _dt_param("the day of the triggering coreset, or the newest published coreset"),
        "base_model": _base_model_param(),
        "epochs": config_param(FinetuneConfig, "epochs", title="Epochs"),
        "eval_users": Param(
            0,
            type="integer",
            minimum=0,
            maximum=MAX_EVAL_USERS,
            title="Evaluation users",
            description="Test users evaluated (0: all).",
        ),
        "margin": config_param(
            TrackingConfig, "margin", title="Promotion margin", exclusiveMinimum=-1, exclusiveMaximum=1
        ),
    }


# ---------------------------------------------------------------------------------------------------------
# The configs a run's Params make, checked by the library in the first task (before any scoring)
# ---------------------------------------------------------------------------------------------------------
# The form's schema is the first check, not the only one: a run triggered with -c or through the API gets values
# the schema cannot refuse (NaN passes jsonschema's bounds where NOT_NAN is missing; no schema knows that
# /etc/passwd holds no model). The plan task builds every config the run's tasks will build, so a bad value fails
# the run in one line at its start instead of after hours of surrogate training and scoring.
def select_config(params: dict[str, Any], strategy: str | None = None):
    """The select task's config: ``ratio`` when given replaces ``n``; ``lambda``, ``k``, ``hard_prune``."""
    from dealrec_tasks.selection import SelectConfig

    size = {"n": None, "ratio": params["ratio"]} if params["ratio"] is not None else {"n": params["n"]}
    knobs = {"lam": params["lambda"], "k": params["k"], "hard_prune": params["hard_prune"]}
    return SelectConfig(strategy=strategy or SelectConfig.strategy, **knobs, **size)


def surrogate_config(params: dict[str, Any]):
    from dealrec_tasks.surrogate.config import SurrogateConfig

    return SurrogateConfig(max_epochs=params["surrogate_max_epochs"])


def influence_config(params: dict[str, Any]):
    from dealrec_tasks.scoring.config import InfluenceConfig

    return InfluenceConfig(target=params["influence_target"])


def finetune_config(params: dict[str, Any]):
    from dealrec_tasks.llm.config import FinetuneConfig

    return FinetuneConfig(epochs=params["epochs"])


def check_daily_params(params: dict[str, Any]) -> None:
    """Every Param of a daily run, refused in one line (ConfigError) by the configs its tasks build."""
    from dealrec_tasks.llm.config import check_base_model

    for strategy, _ in arms(params["arms"]):
        select_config(params, strategy)
    surrogate_config(params)
    influence_config(params)
    check_base_model(params["base_model"])


def check_finetune_params(params: dict[str, Any]) -> None:
    """Every Param of a fine-tuning run, refused in one line (ConfigError) by the configs its tasks build."""
    from dealrec_tasks.llm.config import check_base_model, check_max_users

    finetune_config(params)
    tracking(margin=params["margin"])
    check_max_users(params["eval_users"], "eval_users")
    check_base_model(params["base_model"])
