"""Registry: idempotent model versions, aliases ``challenger``/``champion``, champion moves and rollbacks.

Aliases, not stages (stages are deprecated in MLflow). Every move of ``champion`` is recorded twice: as version
tags a person reads in the UI (who, when, why), and as a registered-model tag ``dealrec_champion_history`` (the
versions that held the alias, oldest first) that ``rollback`` walks back. The alias itself stays the truth: when
someone moved it by hand in the UI, the history is reconciled first.

What to promote is decided elsewhere (``steps/gate.py``, from the lake's checksummed evaluations): nothing here
reads a version's tags to decide anything.
"""

from __future__ import annotations

import datetime as dt_mod
import json
from typing import Any

from dealrec_tasks.errors import ConfigError, InputError
from dealrec_tasks.tracking.client import Tracking, quote
from dealrec_tasks.tracking.config import redact_uri

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "dealrec_champion_history"
HISTORY_KEEP = 200
EVAL_SET_TAG = "eval_set"


def metric_key(name: str) -> str:
    """An evaluation metric's name as MLflow accepts it for metrics and tags: ``ndcg@20`` -> ``ndcg_at_20``."""
    out = name.replace("@", "_at_")
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in out)


def eval_tag(metric: str) -> str:
    return f"eval.{metric_key(metric)}"


def now() -> str:
    return dt_mod.datetime.now(dt_mod.UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------------------
# Registry access
# ---------------------------------------------------------------------------------------------------------
def _error_code(exc: Exception) -> str | None:
    return getattr(exc, "error_code", None)


def ensure_registered_model(tr: Tracking, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        tr.call("create registered model", tr.client.create_registered_model, name)
    except MlflowException as exc:
        if _error_code(exc) != "RESOURCE_ALREADY_EXISTS":
            raise


def require_registered_model(tr: Tracking, name: str):
    """The registered model, or an error that says how to create it."""
    from mlflow.exceptions import MlflowException

    try:
        return tr.call("get registered model", tr.client.get_registered_model, name)
    except MlflowException as exc:
        if _error_code(exc) == "RESOURCE_DOES_NOT_EXIST":
            raise InputError(
                f"MLflow at {redact_uri(tr.uri)}: no registered model {name!r}; register a version first "
                "(`dealrec register`, or the fine-tuning DAG) or set model_name"
            ) from None
        raise


def get_version(tr: Tracking, name: str, version: int | str):
    from mlflow.exceptions import MlflowException

    require_registered_model(tr, name)
    try:
        return tr.call("get model version", tr.client.get_model_version, name, str(version))
    except MlflowException as exc:
        if _error_code(exc) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            have = sorted(int(v.version) for v in search_versions(tr, name))
            raise InputError(f"registered model {name!r} has no version {version} (versions: {have})") from None
        raise


def search_versions(tr: Tracking, name: str, tags: dict[str, str] | None = None) -> list:
    clauses = [f"name = {quote(name, 'model_name')}"]
    clauses += [f"tags.{k} = {quote(v, k)}" for k, v in (tags or {}).items()]
    found = tr.call("search model versions", tr.client.search_model_versions, " and ".join(clauses))
    return sorted(found, key=lambda v: int(v.version))


def alias_version(tr: Tracking, name: str, alias: str):
    """The version behind ``alias``, or None when the alias is not set."""
    from mlflow.exceptions import MlflowException

    try:
        return tr.call(f"get alias {alias}", tr.client.get_model_version_by_alias, name, alias)
    except MlflowException as exc:
        if _error_code(exc) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def set_alias(tr: Tracking, name: str, alias: str, version: int | str) -> None:
    tr.call(f"set alias {alias}", tr.client.set_registered_model_alias, name, alias, str(version))


def set_tags(tr: Tracking, name: str, version: int | str, tags: dict[str, object]) -> None:
    for key, value in tags.items():
        tr.call("set version tag", tr.client.set_model_version_tag, name, str(version), key, str(value))


def find_or_create_version(
    tr: Tracking,
    name: str,
    run_id: str,
    artifact_path: str,
    identity_tags: dict[str, str],
    tags: dict[str, str],
    description: str,
) -> tuple[Any, bool]:
    """The version of ``name`` tagged ``identity_tags``, else a new one of the model at ``artifact_path`` in run
    ``run_id``, tagged ``identity_tags | tags``; returns (version, created).

    A retry of the same task finds its version by those tags instead of registering a second one; a create whose
    answer was lost on the way back is searched for again before it is tried again, for the same reason.
    """
    ensure_registered_model(tr, name)
    found = search_versions(tr, name, identity_tags)
    if found:
        return found[0], False
    run = tr.call("get run", tr.client.get_run, run_id)

    def again():
        hit = search_versions(tr, name, identity_tags)
        return hit[0] if hit else None

    mv = tr.call(
        "create model version",
        tr.client.create_model_version,
        name,
        f"{run.info.artifact_uri}/{artifact_path}",
        run_id=run_id,
        tags=identity_tags | tags,
        description=description,
        before_retry=again,
    )
    return mv, True


# ---------------------------------------------------------------------------------------------------------
# Champion history
# ---------------------------------------------------------------------------------------------------------
def _history(tr: Tracking, name: str) -> list[int]:
    raw = require_registered_model(tr, name).tags.get(HISTORY_TAG)
    return [int(v) for v in json.loads(raw)] if raw else []


def _write_history(tr: Tracking, name: str, history: list[int]) -> None:
    value = json.dumps(history[-HISTORY_KEEP:])
    tr.call("set registered model tag", tr.client.set_registered_model_tag, name, HISTORY_TAG, value)


def _reconciled(tr: Tracking, name: str) -> tuple[list[int], int | None]:
    """History whose last entry is the current champion (the alias wins over a stale history)."""
    history = _history(tr, name)
    current = alias_version(tr, name, CHAMPION)
    cur = int(current.version) if current is not None else None
    if cur is not None and (not history or history[-1] != cur):
        history.append(cur)
    return history, cur


def move_champion(tr: Tracking, name: str, version: int, tags: dict[str, object]) -> int | None:
    """Point ``champion`` at ``version`` (tags first, then alias, then history); returns the previous champion."""
    history, previous = _reconciled(tr, name)
    if previous == version:
        return previous
    set_tags(tr, name, version, {"champion.since": now(), "champion.previous": previous or "none", **tags})
    set_alias(tr, name, CHAMPION, version)
    _write_history(tr, name, history + [version])
    return previous


def rollback_champion(tr: Tracking, name: str, reason: str) -> tuple[int, int]:
    """Champion back to the version that held it before the current one; returns (from, to)."""
    if not reason.strip():
        raise ConfigError("reason='': say why (it is stored as a tag on both versions)")
    require_registered_model(tr, name)
    history, current = _reconciled(tr, name)
    if current is None:
        raise InputError(f"registered model {name!r} has no champion to roll back")
    while history and history[-1] == current:
        history.pop()
    existing = {int(v.version) for v in search_versions(tr, name)}
    while history and history[-1] not in existing:  # a version deleted since it was champion
        history.pop()
    if not history:
        raise InputError(
            f"registered model {name!r}: version {current} is the first champion on record; nothing to roll back to "
            "(use `dealrec promote --version N` to choose one)"
        )
    target = history[-1]
    stamp = now()
    set_tags(tr, name, current, {"rollback.at": stamp, "rollback.reason": reason, "rollback.to": target})
    set_tags(tr, name, target, {"champion.restored_at": stamp, "champion.restored_reason": reason})
    set_alias(tr, name, CHAMPION, target)
    _write_history(tr, name, history)
    return current, target
