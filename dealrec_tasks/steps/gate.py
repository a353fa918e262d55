"""Gate step: a day's arms and the current champion, measured on the same users, decide what gets promoted.

Every day the pipeline fine-tunes one adapter per arm (the primary strategy and its controls, e.g. ``random``)
and evaluates them on the same test users. ``evaluate_champion`` evaluates the champion's adapter on those users
too (cached in ``evaluation/version=N/dt=D/``), so ``gate`` compares like with like: the best arm becomes
``challenger``, and ``champion`` only if it beats the champion's same-day number by more than ``margin``. The
day's numbers, the decision and ``lift_vs_random`` (best arm minus the random arm) go to ``gate/dt=D/`` with a plot
over days, and to a parent MLflow run of the day under which every arm's pruning run (and its fine-tuning run)
is nested.
"""

from __future__ import annotations

import json
from typing import Any

from dealrec_tasks.catalogue import ADAPTERS, GATE, version_evaluation
from dealrec_tasks.config import Day
from dealrec_tasks.errors import InputError
from dealrec_tasks.llm.config import EvalConfig
from dealrec_tasks.steps.common import StepResult
from dealrec_tasks.storage import Lake
from dealrec_tasks.tracking.config import TrackingConfig

DAY = "day"  # the MLflow run kind of a day's parent run
GATE_FILE, PLOT_FILE = "gate.json", "arms.png"
RANDOM = "random"


def evaluate_champion(
    lake: Lake,
    dt: str,
    model_dir: str,
    eval_cfg: EvalConfig,
    cfg: TrackingConfig,
    cache_dir: str | None = None,
    max_users: int = 0,
    seed: int = 0,
) -> StepResult:
    """The current champion's adapter evaluated on ``dt``'s test users, with the arms' settings (``max_users`` and
    ``seed`` pick the same users). A no-op when already published for this version and evaluation set (a retry, or a
    second day's rerun); skipped, with a note saying why, when there is no champion, when it is one of ``dt``'s own
    versions, when it was trained on another base model, or when its adapter is not in this lake."""
    from dealrec_tasks.llm.evaluate import model_fingerprint
    from dealrec_tasks.steps.llm import evaluate_version
    from dealrec_tasks.tracking import registry as reg
    from dealrec_tasks.tracking.client import Tracking

    dt = Day(dt)
    tr = Tracking(cfg)
    tr.ping()
    champion = reg.alias_version(tr, cfg.model_name, reg.CHAMPION)
    if champion is None:
        return StepResult("evaluate-champion", {}, {"champion": None}, False, ["no champion yet: nothing to compare"])
    version, tags = int(champion.version), champion.tags
    skip = None
    if tags.get("dt") == dt:
        skip = f"champion {version} is a version of dt={dt}: its own evaluation is on these users"
    elif tags.get("base_model_fingerprint") and tags["base_model_fingerprint"] != model_fingerprint(model_dir):
        skip = f"champion {version} was trained on another base model ({tags.get('base_model')}); promote by hand"
    adapter_uri = tags.get("adapter_uri") or (lake.partition(ADAPTERS, tags["dt"]) if tags.get("dt") else "")
    if skip is None:
        dataset, day = lake.locate(adapter_uri) if adapter_uri else ("", None)
        if not adapter_uri or lake.manifest(dataset, day) is None:
            skip = f"champion {version}: its adapter {adapter_uri or '(no adapter_uri tag)'} is not in this lake"
    if skip is not None:
        return StepResult("evaluate-champion", {}, {"champion": version, "evaluated": False}, False, [skip])
    result = evaluate_version(lake, dt, model_dir, eval_cfg, version, adapter_uri, cache_dir, max_users, seed)
    return StepResult(
        "evaluate-champion",
        result.uris,
        {"champion": version, "evaluated": True} | result.counts,
        result.changed,
    )


def _same_day_champion(lake: Lake, dt: str, champion, eval_set: str) -> dict[str, float] | None:
    """The champion's verified metrics on ``dt``'s users when ``evaluate_champion`` published them with the arms'
    evaluation set, else None."""
    from dealrec_tasks.steps.tracking import evaluation_set_id, verified_metrics

    if champion is None:
        return None
    dataset = version_evaluation(int(champion.version))
    manifest = lake.manifest(dataset, dt)
    if manifest is None or evaluation_set_id(lake, dt, manifest) != eval_set:
        return None
    return verified_metrics(lake, dt, manifest, dataset)


def gate(
    lake: Lake,
    dt: str,
    cfg: TrackingConfig,
    versions: list[int],
    orchestrator_run_id: str,
    *,
    run_tags: dict[str, str] | None = None,
) -> StepResult:
    """Promote the best of ``dt``'s arm ``versions`` when it beats the champion on the same users; record the day.

    The decision is taken once (``registry.promote_if_better``: a retry keeps it). The best arm is the highest
    ``cfg.metric`` (ties: the earlier arm). Its comparison uses the champion's same-day evaluation when
    ``evaluate_champion`` published one for these users, else the champion's registered number (flagged not
    comparable, as before the gate measured both).
    """
    from dealrec_tasks.tracking import registry as reg
    from dealrec_tasks.tracking.client import Tracking
    from dealrec_tasks.tracking.runs import log_run

    dt = str(Day(dt))  # a plain str for MLflow
    if not versions:
        raise InputError(f"gate dt={dt}: no registered versions to compare (the arms' register tasks gave none)")
    tr = Tracking(cfg)
    tr.ping()
    name, metric = cfg.model_name, cfg.metric
    arms = [reg.get_version(tr, name, v) for v in dict.fromkeys(int(v) for v in versions)]
    values = [reg.metric_of(mv, metric) for mv in arms]
    missing = [int(mv.version) for mv, v in zip(arms, values) if v is None]
    if missing:
        raise InputError(f"gate dt={dt}: version(s) {missing} of {name} have no {reg.eval_tag(metric)} tag")
    best = max(range(len(arms)), key=lambda i: (values[i], -i))
    champion = reg.alias_version(tr, name, reg.CHAMPION)
    same_day = _same_day_champion(lake, dt, champion, arms[best].tags.get(reg.EVAL_SET_TAG, ""))
    champion_value = None if same_day is None else same_day.get(metric)
    tags, changed = reg.promote_if_better(
        tr, name, int(arms[best].version), metric, cfg.margin, cfg.require_comparable, champion_value
    )
    by_arm = {mv.tags.get("strategy") or mv.tags.get("arm", str(mv.version)): v for mv, v in zip(arms, values)}
    lift = values[best] - by_arm[RANDOM] if RANDOM in by_arm else None
    # The primary arm (the pipeline's strategy) against random: negative when random won the day.
    primary = values[0] - by_arm[RANDOM] if RANDOM in by_arm and list(by_arm)[0] != RANDOM else None
    record = {
        "dt": dt,
        "metric": metric,
        "margin": cfg.margin,
        "arms": [
            {"strategy": s, "version": int(mv.version), "arm": mv.tags.get("arm"), metric: v}
            for (s, v), mv in zip(by_arm.items(), arms)
        ],
        "best": {"strategy": list(by_arm)[best], "version": int(arms[best].version), metric: values[best]},
        "lift_vs_random": lift,
        "primary_vs_random": primary,
        # From the recorded decision (a retry rebuilds the same record, whatever the champion is now).
        "champion_before": _none_or(tags["promotion.champion_version"], str),
        "champion_value": _none_or(tags["promotion.champion_value"], float),
        "champion_same_users": reg.SAME_USERS in tags["promotion.reason"],
        "decision": tags["promotion.decision"],
        "reason": tags["promotion.reason"],
    }
    pub = _publish(lake, dt, record)
    day_run, run_changed = log_run(
        tr, DAY, dt, orchestrator_run_id, pub.manifest["files"][GATE_FILE]["sha256"], f"day dt={dt}",
        lambda _run_id: _day_content(lake, dt, record, run_tags),
    )  # fmt: skip
    for mv in arms:  # every arm's pruning run (its fine-tuning run nested below it) under the day's run
        child = mv.tags.get("pruning_run_id")
        child = child if child and child != "none" else mv.tags.get("run_id")
        if child:
            tr.call("set parent run", tr.client.set_tag, child, "mlflow.parentRunId", day_run)
    counts = reg.decision_summary(tr, name, int(arms[best].version), tags) | {
        "best_arm": record["best"]["strategy"],
        "arms": len(arms),
        "lift_vs_random": None if lift is None else round(lift, 6),
        "primary_vs_random": None if primary is None else round(primary, 6),
    }
    uris = {"gate": pub.uri, "run": tr.run_link(day_run), "model": f"models:/{name}/{arms[best].version}"}
    return StepResult("gate", uris, counts, changed or run_changed or pub.changed)


def _none_or(tag: str, kind):
    return None if tag == "none" else kind(tag)


def _publish(lake: Lake, dt: str, record: dict[str, Any]):
    """``gate/dt=D/``: the day's record and the plot over every gated day up to ``dt``."""
    from dealrec_tasks import reports

    history = [lake.read_verified_json(GATE, d, GATE_FILE)[0] for d in lake.partitions(GATE) if d < dt] + [record]
    png = reports.gate_history_png(history)
    data = (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()
    return lake.publish(GATE, dt, {}, config={"metric": record["metric"], "margin": record["margin"]},
                        inputs={"versions": [a["version"] for a in record["arms"]]},
                        blobs={GATE_FILE: data, PLOT_FILE: png})  # fmt: skip


def _day_content(lake: Lake, dt: str, record: dict[str, Any], run_tags: dict[str, str] | None):
    """The day's parent run: each arm's metric, the champion's on the same users, the lift over random, the
    decision; the plot and the record as artifacts."""
    from dealrec_tasks.tracking.runs import RunContent

    metric = record["metric"]
    c = RunContent()
    for arm in record["arms"]:
        c.add_metric(f"arm.{arm['strategy']}.{metric}", arm[metric])
    c.add_metric(f"best.{metric}", record["best"][metric])
    if record["champion_same_users"]:
        c.add_metric(f"champion_same_users.{metric}", record["champion_value"])
    c.add_metric("lift_vs_random", record["lift_vs_random"])
    c.add_metric("primary_vs_random", record.get("primary_vs_random"))
    c.params.update({"metric": metric, "margin": record["margin"], "dt": dt})
    c.tags.update(
        {
            "best_arm": record["best"]["strategy"],
            "decision": record["decision"],
            "mlflow.note.content": f"dt={dt}: {record['decision']} ({record['reason']})",
        }
        | (run_tags or {})
    )
    c.artifacts[f"gate/{GATE_FILE}"] = lake.read_verified_bytes(GATE, dt, GATE_FILE)
    c.artifacts[f"gate/{PLOT_FILE}"] = lake.read_verified_bytes(GATE, dt, PLOT_FILE)
    return c
