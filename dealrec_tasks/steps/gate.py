"""Gate step: the day's primary arm against the champion, user by user on the same users, decides promotion.

Every day the pipeline fine-tunes one adapter per arm (the primary strategy and its controls, e.g. ``random``) and
evaluates them on the same test users, each user's metrics kept in the evaluation's ``per_user.parquet``.
``evaluate_champion`` evaluates the champion's adapter on those users too (``evaluation/version=N/dt=D/``).

The challenger is declared before any result is seen: the primary arm, the strategy the pipeline stands for
(control arms are measurements, never promoted, so there is no best-of-N to correct for). It becomes ``champion``
only when the paired difference challenger minus champion over the same users has a 95% interval whose lower bound
is above ``margin`` (``dealrec_tasks.paired``). A champion that could not be re-evaluated on these users is kept,
with the reason: nothing is decided on numbers from other users. The first version (no champion yet) is promoted:
there is no production model to protect, and every later day is tested against it.

Everything decided comes from the lake's checksummed files, never from MLflow tags: which registered version is
which arm is found by its identity digest, computed from the arm's manifests. The decision is published to
``gate/dt=D/`` first (the record, the primary-vs-random pairs, the plot over days); the registry writes (aliases,
``promotion.*`` tags for people) follow from it, and a retry re-applies the same record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from dealrec_tasks.catalogue import ADAPTERS, EVALUATION, GATE, arm_dataset, arm_of, version_evaluation
from dealrec_tasks.config import Day
from dealrec_tasks.errors import InputError
from dealrec_tasks.llm.config import EvalConfig
from dealrec_tasks.paired import TEST, decide, paired_t, pooled_paired, verdict
from dealrec_tasks.steps.common import StepResult
from dealrec_tasks.storage import Lake
from dealrec_tasks.tracking.config import TrackingConfig

DAY = "day"  # the MLflow run kind of a day's parent run
GATE_FILE, PLOT_FILE, VS_RANDOM_FILE = "gate.json", "arms.png", "vs_random.parquet"
RANDOM = "random"
PRIMARY = "primary"
OVERRIDE = "dealrec promote --version {version} --reason '...'"


# ---------------------------------------------------------------------------------------------------------
# The day's arms, from the lake
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArmResult:
    """One evaluated arm of the day, read through its checksums."""

    strategy: str
    arm: str | None  # None: the primary arm
    evaluation: str  # dataset of its evaluation
    digest: str  # the identity its registered version is tagged with
    eval_set: str
    users: np.ndarray  # [U] user ids, as evaluated
    values: np.ndarray  # [U] the gate's metric per user

    @property
    def mean(self) -> float:
        return float(self.values.mean()) if len(self.values) else float("nan")


def read_per_user(lake: Lake, dataset: str, dt: str, metric: str, manifest: dict[str, Any]) -> tuple[np.ndarray, ...]:
    """(user ids, ``metric`` per user) of an evaluation, through the checksum of its ``per_user.parquet``."""
    from dealrec_tasks.steps.llm import PER_USER

    where = lake.partition(dataset, dt)
    if PER_USER not in manifest.get("files", {}):
        raise InputError(
            f"{where}: no {PER_USER} (evaluated before per-user results were kept); evaluate it again "
            f"(`dealrec evaluate --dt {dt}`) so the gate can pair users"
        )
    table = lake.read(dataset, dt, PER_USER)
    if metric not in table.column_names:
        raise InputError(f"{where}/{PER_USER}: no column {metric!r} (has {table.column_names}); set metric to one")
    values = table.column(metric).to_numpy(zero_copy_only=False).astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise InputError(f"{where}/{PER_USER}: non-finite {metric} values; evaluate it again")
    return np.asarray(table.column("user_id").to_pylist(), dtype=object), values


def day_arms(lake: Lake, dt: str, metric: str) -> list[ArmResult]:
    """The day's evaluated arms, the primary one first: every arm whose coreset is published and evaluated."""
    from dealrec_tasks.steps.select import published_arms
    from dealrec_tasks.steps.tracking import evaluation_set_id, registration_digest

    out = []
    for published in published_arms(lake, dt):
        arm = arm_of(lake.locate(published["coreset"])[0])
        evaluation = arm_dataset(EVALUATION, arm)
        if lake.manifest(evaluation, dt) is None:
            if arm is None:
                raise InputError(f"{lake.partition(evaluation, dt)}: the primary arm is not evaluated; run evaluate")
            continue
        raw = lake.manifest_bytes(evaluation, dt)
        manifest = json.loads(raw)
        users, values = read_per_user(lake, evaluation, dt, metric, manifest)
        digest = registration_digest(lake.manifest_bytes(arm_dataset(ADAPTERS, arm), dt), raw)
        eval_set = evaluation_set_id(lake, dt, manifest)
        out.append(ArmResult(published["strategy"] or PRIMARY, arm, evaluation, digest, eval_set, users, values))
    if not out or out[0].arm is not None:
        raise InputError(f"{lake.partition(EVALUATION, dt)}: no evaluated primary arm for dt={dt}")
    return out


def _aligned(primary: ArmResult, users: np.ndarray, values: np.ndarray) -> np.ndarray | None:
    """``values`` reordered to the primary arm's users (paired by user id); None when the two scored other users."""
    ids = primary.users
    if len(ids) != len(users) or set(ids) != set(users) or len(set(ids)) != len(ids):
        return None
    where = {u: i for i, u in enumerate(users)}
    return values[np.asarray([where[u] for u in ids], dtype=np.int64)]


# ---------------------------------------------------------------------------------------------------------
# The champion on the day's users
# ---------------------------------------------------------------------------------------------------------
def promoted_adapter(lake: Lake, version: int) -> dict[str, Any] | None:
    """The adapter the gate promoted as ``version`` (newest gate record that promoted it): its partition, file
    checksums and day; None for a version that never became champion through the gate (promoted by hand)."""
    for d in reversed(lake.partitions(GATE)):
        record, _ = lake.read_verified_json(GATE, d, GATE_FILE)
        challenger = record.get("challenger") or {}
        if record.get("decision") == "champion" and challenger.get("version") == version:
            return {"uri": challenger["adapter"], "files": challenger["adapter_files"], "dt": record["dt"]}
    return None


def champion_adapter(lake: Lake, dt: str, champion, model_dir: str | None) -> tuple[str, str | None, list[str]]:
    """(adapter partition URI, why it cannot be evaluated on ``dt``'s users or None, notes) of the champion version.

    The adapter is the one a gate record promoted, its files checked unchanged; a version promoted by hand falls back
    to its ``adapter_uri`` tag (said in a note). ``model_dir`` None skips the base-model check (the gate explaining a
    skip has no model)."""
    from dealrec_tasks.llm.evaluate import model_fingerprint

    version = int(champion.version)
    notes: list[str] = []
    found = promoted_adapter(lake, version)
    if found is not None:
        adapter_uri, expected, adapter_dt = found["uri"], found["files"], found["dt"]
    else:
        adapter_uri, expected, adapter_dt = champion.tags.get("adapter_uri", ""), None, champion.tags.get("dt")
        notes.append(f"champion {version} was not promoted by the gate: its adapter is taken from its adapter_uri tag")
    manifest = None
    if adapter_uri:
        dataset, day = lake.locate(adapter_uri)
        manifest = lake.manifest(dataset, day)
    skip = None
    if manifest is None:
        skip = f"champion {version}: its adapter {adapter_uri or '(unknown)'} is not in this lake"
    elif expected is not None and {n: e["sha256"] for n, e in manifest["files"].items()} != expected:
        skip = f"champion {version}: its adapter {adapter_uri} was republished since it was promoted"
    elif adapter_dt == dt:
        skip = f"champion {version} is a version of dt={dt}: the gate uses its arm's own evaluation of these users"
    elif model_dir is not None and manifest.get("base_model", {}).get("fingerprint") not in (
        None,
        model_fingerprint(model_dir),
    ):
        skip = f"champion {version} was trained on another base model ({manifest['base_model'].get('path')})"
    return adapter_uri, skip, notes


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
    ``seed`` pick the same users). A no-op when already published for this version and evaluation set.

    Its adapter is the one the gate promoted (from the gate's checksummed record, its files checked unchanged); a
    version promoted by hand falls back to its ``adapter_uri`` tag (said in a note). Skipped, with a note saying why,
    when there is no champion, when it is one of ``dt``'s own arms, when its adapter was trained on another base
    model or is not in this lake; the gate then keeps the champion."""
    from dealrec_tasks.steps.llm import evaluate_version
    from dealrec_tasks.tracking import registry as reg
    from dealrec_tasks.tracking.client import Tracking

    dt = Day(dt)
    tr = Tracking(cfg)
    tr.ping()
    champion = reg.alias_version(tr, cfg.model_name, reg.CHAMPION)
    if champion is None:
        return StepResult("evaluate-champion", {}, {"champion": None}, False, ["no champion yet: nothing to compare"])
    version = int(champion.version)
    adapter_uri, skip, notes = champion_adapter(lake, dt, champion, model_dir)
    if skip is not None:
        counts = {"champion": version, "evaluated": False}
        return StepResult("evaluate-champion", {}, counts, False, notes + [skip + "; the gate keeps it"])
    result = evaluate_version(lake, dt, model_dir, eval_cfg, version, adapter_uri, cache_dir, max_users, seed)
    counts = {"champion": version, "evaluated": True} | result.counts
    return StepResult("evaluate-champion", result.uris, counts, result.changed, notes)


def _champion_on_same_users(
    lake: Lake, dt: str, champion, arms: list[ArmResult], metric: str
) -> tuple[np.ndarray | None, str]:
    """The champion's per-user values aligned to the primary arm's users, or None with the reason it has none."""
    from dealrec_tasks.steps.tracking import evaluation_set_id
    from dealrec_tasks.tracking.client import TAG_DIGEST

    primary = arms[0]
    version = int(champion.version)
    same_day = next((a for a in arms if a.digest == champion.tags.get(TAG_DIGEST)), None)
    if same_day is not None:  # the champion is one of today's arms (its identity is bound to the lake's manifests)
        values = _aligned(primary, same_day.users, same_day.values)
        if same_day.eval_set != primary.eval_set or values is None:
            return None, f"champion {version} is today's arm {same_day.strategy}, evaluated on other users"
        return values, f"champion {version} is today's arm {same_day.strategy}, evaluated on the same users"
    dataset = version_evaluation(version)
    manifest = lake.manifest(dataset, dt)
    if manifest is None:
        _, skip, _ = champion_adapter(lake, dt, champion, None)
        why = skip or "evaluate-champion did not run, or found it trained on another base model"
        return None, f"champion {version} was not re-evaluated on dt={dt}'s users ({why})"
    if evaluation_set_id(lake, dt, manifest) != primary.eval_set:
        return None, f"champion {version} was re-evaluated with other users or settings than the arms of dt={dt}"
    values = _aligned(primary, *read_per_user(lake, dataset, dt, metric, manifest))
    if values is None:
        return None, f"champion {version}'s re-evaluation scored other users than the primary arm"
    return values, f"champion {version} re-evaluated on the same users"


# ---------------------------------------------------------------------------------------------------------
# The gate
# ---------------------------------------------------------------------------------------------------------
def gate(
    lake: Lake,
    dt: str,
    cfg: TrackingConfig,
    versions: list[int],
    orchestrator_run_id: str,
    *,
    run_tags: dict[str, str] | None = None,
) -> StepResult:
    """Decide whether ``dt``'s primary arm replaces the champion, record the day, then apply the decision.

    ``versions``: the day's registered arm versions; each is matched to its arm by the identity digest of the
    arm's manifests. A retry with the same arms finds the published record and only finishes applying it.
    """
    from dealrec_tasks.tracking import registry as reg
    from dealrec_tasks.tracking.client import TAG_DIGEST, TAG_DT, Tracking
    from dealrec_tasks.tracking.runs import log_run

    dt = str(Day(dt))  # a plain str for MLflow
    if not versions:
        raise InputError(f"gate dt={dt}: no registered versions to compare (the arms' register tasks gave none)")
    name, metric = cfg.model_name, cfg.metric
    arms = day_arms(lake, dt, metric)
    tr = Tracking(cfg)
    tr.ping()
    registered = [reg.get_version(tr, name, v) for v in dict.fromkeys(int(v) for v in versions)]
    by_digest = {mv.tags.get(TAG_DIGEST): int(mv.version) for mv in registered if mv.tags.get(TAG_DT) == dt}
    arm_versions = {a.strategy: by_digest.get(a.digest) for a in arms}
    if arm_versions[arms[0].strategy] is None:
        raise InputError(
            f"gate dt={dt}: none of versions {sorted(int(v.version) for v in registered)} of {name} is the "
            f"registration of the primary arm's adapter and evaluation as published now; run `dealrec register "
            f"--dt {dt}` (the evaluation or adapter was republished since?)"
        )
    config = {"metric": metric, "margin": cfg.margin, "test": TEST}
    inputs = {
        "arms": {a.strategy: a.digest for a in arms},
        "versions": arm_versions,
        "champion_evaluations": _version_evaluations(lake, dt),
    }
    done = lake.current(GATE, dt, config, inputs)
    if done is not None:  # a retry: the decision stands, whatever the champion is now
        record, _ = lake.read_verified_json(GATE, dt, GATE_FILE, done)
        pub_changed, gate_uri, gate_sha = False, lake.partition(GATE, dt), done["files"][GATE_FILE]["sha256"]
    else:
        champion = reg.alias_version(tr, name, reg.CHAMPION)
        earlier = _earlier_records(lake, dt)  # read once: the running estimate and the plot both need them
        record, vs_random = _decide(lake, dt, cfg, arms, arm_versions, champion, earlier)
        pub = _publish(lake, dt, record, vs_random, config, inputs, [r for _, _, r in earlier])
        pub_changed, gate_uri, gate_sha = pub.changed, pub.uri, pub.manifest["files"][GATE_FILE]["sha256"]
    applied, notes = _apply(tr, name, record, arm_versions, gate_uri)
    content = lambda _run_id: _day_content(lake, dt, record, run_tags)  # noqa: E731
    day_run, run_changed = log_run(tr, DAY, dt, orchestrator_run_id, gate_sha, f"day dt={dt}", content)
    for mv in registered:  # every arm's pruning run (its fine-tuning run nested below it) under the day's run
        child = mv.tags.get("pruning_run_id")
        child = child if child and child != "none" else mv.tags.get("run_id")
        if child:
            tr.call("set parent run", tr.client.set_tag, child, "mlflow.parentRunId", day_run)
    champion_now = reg.alias_version(tr, name, reg.CHAMPION)
    vs = record.get("primary_vs_random") or {}
    counts = {
        "decision": record["decision"],
        "challenger": record["challenger"]["version"],
        "champion": None if champion_now is None else int(champion_now.version),
        "arms": len(arms),
        "primary_vs_random": None if vs.get("mean") is None else round(vs["mean"], 6),
        "verdict": (record.get("running_vs_random") or {}).get("verdict"),
    }
    uris = {"gate": gate_uri, "run": tr.run_link(day_run), "model": f"models:/{name}/{record['challenger']['version']}"}
    return StepResult("gate", uris, counts, applied or run_changed or pub_changed, notes)


def _version_evaluations(lake: Lake, dt: str) -> dict[str, str]:
    """Digests of every registered version's evaluation on ``dt``'s users: a champion re-evaluated after the gate
    ran makes the next gate decide again; a plain retry finds the same set and keeps the decision."""
    from dealrec_tasks.storage import sha256

    out = {}
    for folder in lake.storage.list_dir(lake.uri(EVALUATION)):
        if folder.startswith("version=") and lake.manifest(f"{EVALUATION}/{folder}", dt) is not None:
            out[folder] = sha256(lake.manifest_bytes(f"{EVALUATION}/{folder}", dt))
    return out


def _earlier_records(lake: Lake, dt: str) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(day, manifest, verified gate.json) of every gated day before ``dt``, oldest first."""
    out = []
    for d in lake.partitions(GATE):
        if d < dt:
            manifest = lake.require_manifest(GATE, d)
            out.append((d, manifest, lake.read_verified_json(GATE, d, GATE_FILE, manifest)[0]))
    return out


def _decide(
    lake: Lake,
    dt: str,
    cfg: TrackingConfig,
    arms: list[ArmResult],
    arm_versions: dict[str, int | None],
    champion,
    earlier: list[tuple[str, dict[str, Any], dict[str, Any]]],
) -> tuple[dict[str, Any], pa.Table | None]:
    """The day's record (pure but for reading the lake) and the primary-vs-random pairs to publish beside it."""
    metric, margin = cfg.metric, cfg.margin
    primary = arms[0]
    challenger = arm_versions[primary.strategy]
    adapter = lake.require_manifest(ADAPTERS, dt)
    record: dict[str, Any] = {
        "dt": dt,
        "metric": metric,
        "margin": margin,
        "test": TEST,
        "arms": [
            {
                "strategy": a.strategy,
                "arm": a.arm or PRIMARY,
                "version": arm_versions[a.strategy],
                "users": len(a.users),
                metric: a.mean,
                "evaluation": lake.partition(a.evaluation, dt),
            }
            for a in arms
        ],
        "challenger": {
            "strategy": primary.strategy,
            "version": challenger,
            "adapter": lake.partition(ADAPTERS, dt),
            "adapter_files": {n: e["sha256"] for n, e in adapter["files"].items()},
        },
        "champion_before": None if champion is None else int(champion.version),
        "champion_value": None,
        "champion_same_users": False,
        "challenger_vs_champion": None,
    }
    if champion is None:
        decision, reason = "champion", "first version: no champion in production yet (the paired test starts tomorrow)"
    elif int(champion.version) == challenger:
        decision, reason = "champion", "already champion"
    else:
        values, why = _champion_on_same_users(lake, dt, champion, arms, metric)
        if values is None:
            override = OVERRIDE.format(version=challenger)
            decision, reason = "kept", f"{why}: champion kept, nothing decided on other users' numbers ({override})"
        else:
            interval = paired_t(primary.values, values, null=margin)
            verdict_of_day = decide(interval, margin, metric)
            decision, reason = ("champion" if verdict_of_day.promote else "kept"), verdict_of_day.reason
            record |= {
                "champion_value": float(values.mean()),
                "champion_same_users": True,
                "challenger_vs_champion": interval.to_dict(),
            }
    record |= {"decision": decision, "reason": reason}
    vs_random = _vs_random(primary, next((a for a in arms if a.strategy == RANDOM and a.arm is not None), None))
    record["primary_vs_random"] = None
    record["running_vs_random"] = None
    if vs_random is not None:
        primary_values, random_values = vs_random.column("primary").to_numpy(), vs_random.column("random").to_numpy()
        record["primary_vs_random"] = paired_t(primary_values, random_values).to_dict()
        today = (vs_random.column("user_id").to_numpy(zero_copy_only=False), primary_values - random_values)
        pooled = pooled_paired(_earlier_vs_random(lake, earlier, metric, primary.strategy) + [today])
        record["running_vs_random"] = pooled.to_dict() | {"verdict": verdict(pooled, primary.strategy, RANDOM)}
    return record, vs_random


def _vs_random(primary: ArmResult, random: ArmResult | None) -> pa.Table | None:
    """The primary and random arms' values per user (same users, aligned), or None without a comparable random arm."""
    if random is None or random.eval_set != primary.eval_set:
        return None
    aligned = _aligned(primary, random.users, random.values)
    if aligned is None:
        return None
    users = pa.array([str(u) for u in primary.users], pa.string())
    return pa.table({"user_id": users, "primary": primary.values, "random": aligned})


def _earlier_vs_random(
    lake: Lake, earlier: list[tuple[str, dict[str, Any], dict[str, Any]]], metric: str, strategy: str
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The ``earlier`` gated days' primary-vs-random pairs on the same metric and primary strategy."""
    out = []
    for d, manifest, record in earlier:
        if VS_RANDOM_FILE not in manifest.get("files", {}):
            continue
        if record.get("metric") != metric or record.get("challenger", {}).get("strategy") != strategy:
            continue
        table = lake.read(GATE, d, VS_RANDOM_FILE)
        diff = table.column("primary").to_numpy() - table.column("random").to_numpy()
        out.append((table.column("user_id").to_numpy(zero_copy_only=False), diff))
    return out


def _apply(
    tr, name: str, record: dict[str, Any], arm_versions: dict[str, int | None], gate_uri: str
) -> tuple[bool, list[str]]:
    """The registry follows the record: ``challenger`` -> the primary arm's version; ``champion`` moves only when the
    record says so and the alias still points where it pointed when the decision was taken (a hand move since wins).
    ``promotion.*`` tags say what was decided, for people; nothing reads them back."""
    from dealrec_tasks.tracking import registry as reg

    challenger = int(record["challenger"]["version"])
    reg.set_alias(tr, name, reg.CHALLENGER, challenger)
    interval = record.get("challenger_vs_champion") or {}
    reg.set_tags(
        tr,
        name,
        challenger,
        {
            "promotion.decision": record["decision"],
            "promotion.reason": record["reason"],
            "promotion.metric": record["metric"],
            "promotion.margin": repr(record["margin"]),
            "promotion.champion_version": record["champion_before"] or "none",
            "promotion.champion_value": "none" if record["champion_value"] is None else repr(record["champion_value"]),
            "promotion.difference": "none" if not interval else repr(interval["mean"]),
            "promotion.interval": "none" if not interval else f"[{interval['lower']!r}, {interval['upper']!r}]",
            "promotion.gate": gate_uri,
        },
    )
    for strategy, version in arm_versions.items():
        if version is not None and version != challenger:
            why = f"control arm {strategy}: measured, never promoted"
            reg.set_tags(tr, name, version, {"promotion.decision": "control", "promotion.reason": why})
    if record["decision"] != "champion":
        return False, []
    current = reg.alias_version(tr, name, reg.CHAMPION)
    now = None if current is None else int(current.version)
    if now == challenger:
        return False, []
    if now != record["champion_before"]:
        return False, [f"champion moved to version {now} since this decision (by hand?): {challenger} not promoted"]
    reg.move_champion(tr, name, challenger, {"champion.reason": "gate: " + record["reason"]})
    return True, []


def _publish(
    lake: Lake,
    dt: str,
    record: dict[str, Any],
    vs_random: pa.Table | None,
    config: dict,
    inputs: dict,
    earlier: list[dict[str, Any]],
):
    """``gate/dt=D/``: the day's record, the primary-vs-random pairs, and the plot over the ``earlier`` gated days'
    records and this one."""
    from dealrec_tasks import reports

    png = reports.gate_history_png(earlier + [record])
    data = (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()
    tables = {VS_RANDOM_FILE: vs_random} if vs_random is not None else {}
    return lake.publish(GATE, dt, tables, config=config, inputs=inputs, blobs={GATE_FILE: data, PLOT_FILE: png})


def _day_content(lake: Lake, dt: str, record: dict[str, Any], run_tags: dict[str, str] | None):
    """The day's parent run: each arm's metric, the paired comparisons with their intervals, the running estimate
    over random and the decision; the plot and the record as artifacts."""
    from dealrec_tasks.tracking.runs import RunContent

    metric = record["metric"]
    c = RunContent()
    for arm in record["arms"]:
        c.add_metric(f"arm.{arm['strategy']}.{metric}", arm[metric])
    if record["champion_same_users"]:
        c.add_metric(f"champion_same_users.{metric}", record["champion_value"])
    for key in ("challenger_vs_champion", "primary_vs_random", "running_vs_random"):
        interval = record.get(key) or {}
        for part in ("mean", "lower", "upper", "p"):
            c.add_metric(key if part == "mean" else f"{key}.{part}", interval.get(part))
    c.params.update({"metric": metric, "margin": record["margin"], "dt": dt, "test": record["test"]})
    running = record.get("running_vs_random") or {}
    c.tags.update(
        {
            "challenger": record["challenger"]["strategy"],
            "decision": record["decision"],
            "vs_random_verdict": running.get("verdict", "no random arm"),
            "mlflow.note.content": f"dt={dt}: {record['decision']} ({record['reason']}); vs random: "
            f"{running.get('verdict', 'no random arm')}",
        }
        | (run_tags or {})
    )
    c.artifacts[f"gate/{GATE_FILE}"] = lake.read_verified_bytes(GATE, dt, GATE_FILE)
    c.artifacts[f"gate/{PLOT_FILE}"] = lake.read_verified_bytes(GATE, dt, PLOT_FILE)
    return c
