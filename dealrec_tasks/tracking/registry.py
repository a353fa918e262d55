"""Registry: idempotent model versions, aliases ``challenger``/``champion``, promotion decisions, hand moves.

Aliases, not stages (stages are deprecated in MLflow). Every move of ``champion`` is recorded twice: as version
tags a person reads in the UI (who, when, why, with which numbers), and as a registered-model tag
``dealrec_champion_history`` (the versions that held the alias, oldest first) that ``rollback`` walks back.
The alias itself stays the truth: when someone moved it by hand in the UI, the history is reconciled first.

Promotion is two-phase so a retry never decides twice: the decision and both numbers are written as version
tags, then the alias moves, then ``promotion.applied`` is set. A retry that finds a decision only finishes it.
"""

from __future__ import annotations

import datetime as dt_mod
import json
import math
from dataclasses import dataclass
from typing import Any

from dealrec_tasks.errors import ConfigError, InputError
from dealrec_tasks.tracking.client import Tracking, quote
from dealrec_tasks.tracking.config import redact_uri

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "dealrec_champion_history"
HISTORY_KEEP = 200
EVAL_SET_TAG = "eval_set"
SAME_USERS = "re-evaluated on the same users"  # in a decision's reason: the champion was measured on those users


def metric_key(name: str) -> str:
    """An evaluation metric's name as MLflow accepts it for metrics and tags: ``ndcg@20`` -> ``ndcg_at_20``."""
    out = name.replace("@", "_at_")
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in out)


def eval_tag(metric: str) -> str:
    return f"eval.{metric_key(metric)}"


def now() -> str:
    return dt_mod.datetime.now(dt_mod.UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------------------
# The decision (pure)
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str

    @property
    def name(self) -> str:
        return "champion" if self.promote else "kept"


def decide(
    challenger: float,
    champion: float | None,
    margin: float,
    comparable: bool | None,
    require_comparable: bool = False,
    metric: str = "metric",
) -> Decision:
    """Promote the first version; later ones only when ``challenger > champion + margin`` (strictly).

    ``comparable`` is None without a champion, else whether both were evaluated on the same users and config.
    """
    if not math.isfinite(challenger):
        return Decision(False, f"challenger {metric} is {challenger}: not a number, never promoted")
    if champion is None:
        return Decision(True, "first version: no champion yet")
    if not comparable and require_comparable:
        return Decision(False, "not comparable: evaluated on other users or with another config")
    caveat = "" if comparable else " (caveat: evaluated on other users or with another config)"
    if challenger > champion + margin:
        return Decision(True, f"{metric} {challenger:.6g} > champion {champion:.6g} + margin {margin:g}{caveat}")
    return Decision(False, f"{metric} {challenger:.6g} <= champion {champion:.6g} + margin {margin:g}{caveat}")


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


def metric_of(mv, metric: str) -> float | None:
    raw = mv.tags.get(eval_tag(metric))
    return None if raw is None else float(raw)


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


# ---------------------------------------------------------------------------------------------------------
# Promotion: decide once (recorded as tags), then apply
# ---------------------------------------------------------------------------------------------------------
def promotion_tags(
    mv,
    champion,
    metric: str,
    margin: float,
    require_comparable: bool = False,
    champion_same_users: float | None = None,
) -> dict[str, str]:
    """The decision on challenger ``mv`` against ``champion`` (the version behind the alias, or None) and the numbers
    it was taken on, as the version tags that record it. Reads only the two versions' tags, unless
    ``champion_same_users`` gives the champion's ``metric`` measured on the challenger's users (the fair gate):
    then that number decides, and the two are comparable.

    ``mv`` must carry ``metric`` (see ``promote_if_better``); a champion without it is kept, for a person to decide.
    """
    challenger = metric_of(mv, metric)
    champion_value = None
    comparable: bool | None = None
    if champion is not None and int(champion.version) == int(mv.version):
        decision = Decision(True, "already champion")
        champion_value = challenger
        comparable = True
    elif champion is not None and champion_same_users is not None:
        champion_value, comparable = champion_same_users, True
        decision = decide(challenger, champion_value, margin, True, require_comparable, metric)
        decision = Decision(decision.promote, decision.reason + f" (champion {SAME_USERS})")
    elif champion is not None and metric_of(champion, metric) is None:
        decision = Decision(False, f"champion {champion.version} has no {metric}; promote by hand")
    else:
        if champion is not None:
            champion_value = metric_of(champion, metric)
            comparable = champion.tags.get(EVAL_SET_TAG) == mv.tags.get(EVAL_SET_TAG)
        decision = decide(challenger, champion_value, margin, comparable, require_comparable, metric)
    return {
        "promotion.metric": metric,
        "promotion.margin": repr(margin),
        "promotion.challenger_value": repr(challenger),
        "promotion.champion_value": "none" if champion_value is None else repr(champion_value),
        "promotion.champion_version": "none" if champion is None else str(champion.version),
        "promotion.comparable": "n/a" if comparable is None else str(comparable).lower(),
        "promotion.reason": decision.reason,
        "promotion.decided_at": now(),
        "promotion.decision": decision.name,  # last: its presence means the whole decision is recorded
    }


def promote_if_better(
    tr: Tracking,
    name: str,
    version: int,
    metric: str,
    margin: float,
    require_comparable: bool = False,
    champion_same_users: float | None = None,
) -> tuple[dict[str, str], bool]:
    """``version`` gets ``challenger``, then the decision is recorded and applied; returns (its tags, changed).

    Two-phase so that a retry never decides twice: a version that already has ``promotion.decision`` keeps it
    (whatever the config says now), and only the alias move it may still lack is finished.
    """
    mv = get_version(tr, name, version)
    set_alias(tr, name, CHALLENGER, version)
    recorded = mv.tags.get("promotion.decision")
    if recorded is not None:
        changed = False
        if recorded == "champion" and mv.tags.get("promotion.applied") != "true":
            move_champion(tr, name, version, {"champion.reason": "automatic: " + mv.tags["promotion.reason"]})
            set_tags(tr, name, version, {"promotion.applied": "true"})
            changed = True
        return dict(mv.tags), changed
    if metric_of(mv, metric) is None:
        have = sorted(k for k in mv.tags if k.startswith("eval."))
        raise InputError(
            f"{name} version {version}: no tag {eval_tag(metric)} (has {have}); "
            "register versions with `dealrec register`, or set metric to one it has"
        )
    champion = alias_version(tr, name, CHAMPION)
    tags = promotion_tags(mv, champion, metric, margin, require_comparable, champion_same_users)
    set_tags(tr, name, version, tags)
    if tags["promotion.decision"] == "champion":
        move_champion(tr, name, version, {"champion.reason": "automatic: " + tags["promotion.reason"]})
    set_tags(tr, name, version, {"promotion.applied": "true"})
    return tags, True


def decision_summary(tr: Tracking, name: str, version: int, tags: dict[str, str]) -> dict[str, Any]:
    """What a promotion decided, from its tags, and which version is champion now."""
    champion = alias_version(tr, name, CHAMPION)
    return {
        "decision": tags["promotion.decision"],
        "version": version,
        "champion": int(champion.version) if champion is not None else None,
        "metric": tags["promotion.metric"],
        "challenger_value": tags["promotion.challenger_value"],
        "champion_value": tags["promotion.champion_value"],
        "comparable": tags["promotion.comparable"],
    }
