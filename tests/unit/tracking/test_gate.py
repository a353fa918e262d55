"""The daily control arm and the paired gate on a real lake and a real (SQLite) MLflow store.

A random arm is selected, fine-tuned and evaluated beside the primary coreset on the same users; both are
registered. The gate declares the primary arm the challenger, pairs it user by user with the champion re-evaluated
on the same users, and promotes only on a resolved interval; it records the primary arm against random that day
and pooled over the days so far. Every number it decides on comes from the lake's checksummed files: the tests
below tamper with everything else (an unchecked manifest field, MLflow tags, a planted decision) and check that
nothing changes, and feed it a champion evaluated on other settings to check that it decides nothing then.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from dealrec_tasks.cli import main
from dealrec_tasks.llm.config import EvalConfig, FinetuneConfig, LoRAConfig
from dealrec_tasks.paired import decide, paired_t, pooled_paired
from dealrec_tasks.selection import SelectConfig
from dealrec_tasks.steps import llm
from dealrec_tasks.steps.gate import evaluate_champion, gate
from dealrec_tasks.steps.select import published_arms, select
from dealrec_tasks.steps.tracking import register
from dealrec_tasks.storage import Lake
from dealrec_tasks.tracking import registry as reg
from dealrec_tasks.tracking.client import TAG_DIGEST, Tracking

EVAL = EvalConfig(num_beams=1, max_new_tokens=8)
KEY = "dealrec_finetune/dt=2026-01-05"
EARLIER = "2026-01-04"


@pytest.fixture(scope="module")
def two_arms_root(tracked, tmp_path_factory) -> Path:
    """A copy of the session's lake (primary arm fine-tuned and evaluated) with a random control arm added."""
    root = tmp_path_factory.mktemp("arms")
    shutil.copytree(tracked.root / "lake", root / "lake")
    lake, dt = Lake(str(root / "lake")), tracked.dt
    control = select(lake, dt, SelectConfig(strategy="random", n=16), control=True)
    assert control.uris["coreset"] == lake.partition("coreset/arm=random", dt)
    finetune = FinetuneConfig(epochs=2, batch_size=8, micro_batch_size=8, lr=5e-3)
    tuned = llm.finetune(lake, dt, tracked.model_dir, finetune, LoRAConfig(), str(root / "work"),
                         coreset=control.uris["coreset"])  # fmt: skip
    assert tuned.uris["adapter"] == lake.partition("adapters/arm=random", dt)
    llm.evaluate(lake, dt, tracked.model_dir, EVAL, str(root / "cache"), max_users=20, arm="random")
    return root


@pytest.fixture
def arms(two_arms_root, tracked, tmp_path) -> tuple[Lake, str, str, Path]:
    """A fresh copy per test: every test publishes its own gate record."""
    shutil.copytree(two_arms_root / "lake", tmp_path / "lake")
    return Lake(str(tmp_path / "lake")), tracked.dt, tracked.model_dir, two_arms_root / "cache"


def _part(lake: Lake, dataset: str, dt: str) -> Path:
    return Path(lake.partition(dataset, dt).removeprefix("file://"))


def _per_user(lake: Lake, dataset: str, dt: str) -> pa.Table:
    return lake.read(dataset, dt, "per_user.parquet")


def _register_both(lake, dt, model_dir, cfg) -> dict[str, int]:
    return {arm: register(lake, dt, model_dir, cfg, KEY, arm=arm).counts["version"] for arm in (None, "random")}


def test_every_evaluation_keeps_each_users_metrics_checksummed(arms):
    lake, dt, _, _ = arms
    assert [a["strategy"] for a in published_arms(lake, dt)] == ["dealrec", "random"]
    primary, control = (lake.require_manifest(p, dt) for p in ("evaluation", "evaluation/arm=random"))
    assert primary["config"] == control["config"]  # same users (max_users, seed) and generation settings
    assert primary["inputs"]["adapter"] != control["inputs"]["adapter"]  # each arm its own weights
    for dataset in ("evaluation", "evaluation/arm=random"):
        table = _per_user(lake, dataset, dt)
        metrics, _ = lake.read_verified_json(dataset, dt, "metrics.json")
        assert table.num_rows == metrics["users"] == 20
        for k in (10, 20, 50):
            for m in ("recall", "ndcg"):  # the per-user file is exactly what the means were taken over
                assert np.mean(table.column(f"{m}@{k}").to_numpy()) == pytest.approx(metrics[f"{m}@{k}"], abs=1e-12)
    assert (
        _per_user(lake, "evaluation", dt).column("user_id").to_pylist()
        == _per_user(lake, "evaluation/arm=random", dt).column("user_id").to_pylist()
    )
    path = _part(lake, "evaluation", dt) / "per_user.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(Exception, match="checksum differs"):
        _per_user(lake, "evaluation", dt)


def test_first_day_promotes_the_declared_primary_arm_and_measures_it_against_random(arms, cfg):
    lake, dt, model_dir, _ = arms
    versions = _register_both(lake, dt, model_dir, cfg)
    none = evaluate_champion(lake, dt, model_dir, EVAL, cfg, max_users=20)
    assert none.counts == {"champion": None} and "no champion yet" in none.notes[0]

    first = gate(lake, dt, cfg, list(versions.values()), KEY)
    record, _ = lake.read_verified_json("gate", dt, "gate.json")
    assert first.counts["decision"] == "champion" == record["decision"]
    # The primary arm, declared before any result, whatever the random arm scored.
    assert record["challenger"]["version"] == versions[None] == first.counts["champion"]
    assert record["reason"].startswith("first version")
    assert [a["strategy"] for a in record["arms"]] == ["dealrec", "random"]
    assert "lift_vs_random" not in record and "lift_vs_random" not in first.counts

    primary = _per_user(lake, "evaluation", dt).column("ndcg@20").to_numpy()
    random = _per_user(lake, "evaluation/arm=random", dt).column("ndcg@20").to_numpy()
    expected = paired_t(primary, random)
    assert record["primary_vs_random"] == pytest.approx(expected.to_dict())
    running = record["running_vs_random"]
    assert running["days"] == 1 and running["observations"] == 20 and running["mean"] == pytest.approx(expected.mean)
    assert running["verdict"] in ("dealrec beats random", "dealrec loses to random", "not resolved after 1 day")
    pairs = lake.read("gate", dt, "vs_random.parquet")
    assert pairs.column("primary").to_numpy().tolist() == primary.tolist()
    assert lake.read_verified_bytes("gate", dt, "arms.png").startswith(b"\x89PNG")

    tr = Tracking(cfg)
    day_runs = tr.search_runs("tags.dealrec_kind = 'day'")
    assert len(day_runs) == 1
    logged = day_runs[0].data
    assert logged.metrics["primary_vs_random"] == pytest.approx(expected.mean)
    if expected.resolved:
        assert logged.metrics["primary_vs_random.lower"] == pytest.approx(expected.lower)
    assert logged.tags["vs_random_verdict"] == running["verdict"] and "lift_vs_random" not in logged.metrics
    assert len(tr.search_runs(f"tags.mlflow.parentRunId = '{day_runs[0].info.run_id}'")) == 2
    random_tags = reg.get_version(tr, cfg.model_name, versions["random"]).tags
    assert random_tags["promotion.decision"] == "control"  # measured, never a candidate

    again = gate(lake, dt, cfg, list(versions.values()), KEY)  # a retry: the decision stands, nothing duplicated
    assert not again.changed and again.counts["champion"] == versions[None]
    assert len(tr.search_runs("tags.dealrec_kind = 'day'")) == 1


def _champion_from_an_earlier_day(lake: Lake, dt: str, cfg, versions: dict[str, int]) -> int:
    """Make today's random-arm adapter the champion as if an earlier day's gate had promoted it (its record in
    ``gate/dt=EARLIER/``, with that day's primary-vs-random pairs) and return its version. Its registered identity is
    changed so that it is not recognised as one of today's arms: the gate must re-evaluate it on today's users."""
    tr = Tracking(cfg)
    champion = versions["random"]
    adapter = lake.require_manifest("adapters/arm=random", dt)
    record = {
        "dt": EARLIER,
        "metric": cfg.metric,
        "margin": 0.0,
        "decision": "champion",
        "challenger": {
            "strategy": "dealrec",
            "version": champion,
            "adapter": lake.partition("adapters/arm=random", dt),
            "adapter_files": {n: e["sha256"] for n, e in adapter["files"].items()},
        },
        "arms": [{"strategy": "dealrec", cfg.metric: 0.1}],
        "champion_value": None,
        "champion_same_users": False,
        "primary_vs_random": {"mean": 0.02, "lower": -0.01, "upper": 0.05},
        "running_vs_random": {"mean": 0.02, "lower": -0.01, "upper": 0.05, "verdict": "not resolved after 1 day"},
    }
    earlier_pairs = pa.table({"user_id": ["u-a", "u-b", "u-c"], "primary": [0.5, 0.0, 0.25], "random": [0.0, 0.0, 0.5]})
    lake.publish("gate", EARLIER, {"vs_random.parquet": earlier_pairs},
                 blobs={"gate.json": json.dumps(record).encode()})  # fmt: skip
    reg.set_alias(tr, cfg.model_name, reg.CHAMPION, champion)
    reg.set_tags(tr, cfg.model_name, champion, {TAG_DIGEST: "a version of an earlier day", "dt": EARLIER})
    return champion


def test_the_champion_is_re_evaluated_on_the_same_users_and_the_paired_interval_decides(arms, cfg):
    lake, dt, model_dir, cache = arms
    versions = _register_both(lake, dt, model_dir, cfg)
    champion = _champion_from_an_earlier_day(lake, dt, cfg, versions)

    evaluated = evaluate_champion(lake, dt, model_dir, EVAL, cfg, str(cache), max_users=20)
    assert evaluated.counts["champion"] == champion and evaluated.counts["evaluated"] and evaluated.changed
    assert not evaluated.notes  # the adapter came from the gate's checksummed record, not from a tag
    again = evaluate_champion(lake, dt, model_dir, EVAL, cfg, str(cache), max_users=20)
    assert not again.changed  # cached per version and evaluation set
    reevaluated = _per_user(lake, f"evaluation/version={champion}", dt)
    random_arm = _per_user(lake, "evaluation/arm=random", dt)
    # The same adapter on the same users with the same settings: the random arm's own per-user results.
    assert reevaluated.column("user_id").to_pylist() == random_arm.column("user_id").to_pylist()
    assert reevaluated.column("ndcg@20").to_numpy() == pytest.approx(random_arm.column("ndcg@20").to_numpy())

    decided = gate(lake, dt, cfg, [versions[None]], KEY)
    record, _ = lake.read_verified_json("gate", dt, "gate.json")
    primary = _per_user(lake, "evaluation", dt).column("ndcg@20").to_numpy()
    same_users = reevaluated.column("ndcg@20").to_numpy()
    expected = paired_t(primary, same_users, null=cfg.margin)
    assert record["champion_same_users"] and record["champion_before"] == champion
    assert record["champion_value"] == pytest.approx(same_users.mean())
    assert record["challenger_vs_champion"] == pytest.approx(expected.to_dict())
    verdict = decide(expected, cfg.margin, cfg.metric)
    assert record["decision"] == ("champion" if verdict.promote else "kept") and record["reason"] == verdict.reason
    assert decided.counts["champion"] == (versions[None] if verdict.promote else champion)
    # The running estimate pools the earlier day's pairs with today's, users as clusters.
    today = lake.read("gate", dt, "vs_random.parquet")
    pooled = pooled_paired(
        [
            (np.array(["u-a", "u-b", "u-c"]), np.array([0.5, 0.0, -0.25])),
            (np.array(today.column("user_id").to_pylist()),
             today.column("primary").to_numpy() - today.column("random").to_numpy()),
        ]
    )  # fmt: skip
    running = record["running_vs_random"]
    assert running["days"] == 2 and running["observations"] == 23 and running["mean"] == pytest.approx(pooled.mean)
    assert running["lower"] == pytest.approx(pooled.lower)


def test_an_edited_manifest_field_edited_eval_tags_and_a_planted_decision_change_nothing(arms, cfg):
    """The three ways the old gate could be steered: the champion's number from its manifest's unchecked
    ``metrics`` field, the registered ``eval.*`` tags, a ``promotion.decision`` tag planted on a version."""
    lake, dt, model_dir, cache = arms
    strict = dataclasses.replace(cfg, margin=0.5)  # no interval of NDCG@20 differences can clear it: kept, surely
    versions = _register_both(lake, dt, model_dir, strict)
    champion = _champion_from_an_earlier_day(lake, dt, strict, versions)
    evaluate_champion(lake, dt, model_dir, EVAL, strict, str(cache), max_users=20)

    path = _part(lake, f"evaluation/version={champion}", dt) / "_manifest.json"
    manifest = json.loads(path.read_text())
    manifest["metrics"]["ndcg@20"] = -1.0  # would make any challenger look better
    path.write_text(json.dumps(manifest))
    tr = Tracking(strict)
    reg.set_tags(tr, strict.model_name, versions[None], {"eval.ndcg_at_20": "0.99", "promotion.decision": "champion"})
    reg.set_tags(tr, strict.model_name, champion, {"eval.ndcg_at_20": "0.0"})
    reg.set_tags(tr, strict.model_name, versions["random"], {"promotion.decision": "champion"})

    decided = gate(lake, dt, strict, [versions[None], versions["random"]], KEY)
    record, _ = lake.read_verified_json("gate", dt, "gate.json")
    same_users = _per_user(lake, f"evaluation/version={champion}", dt).column("ndcg@20").to_numpy()
    assert record["champion_value"] == pytest.approx(same_users.mean()) != -1.0
    assert record["arms"][0]["ndcg@20"] == pytest.approx(
        _per_user(lake, "evaluation", dt).column("ndcg@20").to_numpy().mean()
    )
    assert record["decision"] == "kept" and decided.counts["champion"] == champion
    assert "not resolved above margin 0.5" in record["reason"] or "worse than the champion" in record["reason"]
    assert reg.get_version(tr, strict.model_name, versions[None]).tags["promotion.decision"] == "kept"


def test_a_champion_evaluated_with_other_settings_or_not_at_all_is_kept_and_nothing_is_decided(arms, cfg):
    lake, dt, model_dir, cache = arms
    versions = _register_both(lake, dt, model_dir, cfg)
    champion = _champion_from_an_earlier_day(lake, dt, cfg, versions)

    # Not re-evaluated on today's users (evaluate-champion skipped or not run): kept, with the reason and the way out.
    kept = gate(lake, dt, cfg, [versions[None]], KEY)
    record, _ = lake.read_verified_json("gate", dt, "gate.json")
    assert kept.counts["decision"] == "kept" and kept.counts["champion"] == champion
    assert record["challenger_vs_champion"] is None and not record["champion_same_users"]
    assert "was not re-evaluated" in record["reason"] and "evaluate-champion did not run" in record["reason"]
    assert f"dealrec promote --version {versions[None]}" in record["reason"]

    # Re-evaluated on the same users but with other generation settings: not comparable, kept.
    other = EvalConfig(num_beams=1, max_new_tokens=4)
    assert evaluate_champion(lake, dt, model_dir, other, cfg, str(cache), max_users=20).counts["evaluated"]
    assert _per_user(lake, f"evaluation/version={champion}", dt).num_rows == 20
    fresh = dataclasses.replace(cfg, margin=-0.9)  # another config: a new decision, that would promote on any pair
    kept = gate(lake, dt, fresh, [versions[None]], KEY)
    record, _ = lake.read_verified_json("gate", dt, "gate.json")
    assert kept.counts["decision"] == "kept" and kept.counts["champion"] == champion
    assert "other users or settings" in record["reason"] and record["challenger_vs_champion"] is None


def test_register_never_promotes_and_the_cli_gate_decides(arms, cfg, capsys):
    lake, dt, model_dir, _ = arms
    opts = ["--tracking-uri", cfg.tracking_uri, "--experiment", cfg.experiment, "--model-name", cfg.model_name]
    common = ["--lake", lake.root]
    with pytest.raises(SystemExit):  # the option is gone: promotion happens only through the gate
        main([*common, "register", "--dt", dt, "--model", model_dir, *opts, "--promote"])
    capsys.readouterr()
    assert main([*common, "register", "--dt", dt, "--model", model_dir, *opts]) == 0
    assert "decision" not in capsys.readouterr().out
    assert reg.alias_version(Tracking(cfg), cfg.model_name, reg.CHAMPION) is None
    assert main([*common, "gate", "--dt", dt, "--versions", "1", *opts]) == 0
    out = capsys.readouterr().out
    assert "gate: decision champion, challenger 1, champion 1" in out
    assert main([*common, "days"]) == 0
    listing = capsys.readouterr().out
    assert "primary - random [95%]" in listing and "champion" in listing


def test_a_champion_whose_adapter_was_republished_since_its_promotion_is_kept_and_the_reason_says_so(arms, cfg):
    lake, dt, model_dir, cache = arms
    versions = _register_both(lake, dt, model_dir, cfg)
    champion = _champion_from_an_earlier_day(lake, dt, cfg, versions)
    # The adapter partition the gate promoted now holds other weights (a rerun republished it).
    record, _ = lake.read_verified_json("gate", EARLIER, "gate.json")
    record["challenger"]["adapter_files"]["adapter_model.safetensors"] = "0" * 64
    lake.publish("gate", EARLIER, {}, blobs={"gate.json": json.dumps(record).encode()})
    skipped = evaluate_champion(lake, dt, model_dir, EVAL, cfg, str(cache), max_users=20)
    assert skipped.counts == {"champion": champion, "evaluated": False}
    assert "was republished since it was promoted" in skipped.notes[-1]
    kept = gate(lake, dt, cfg, [versions[None]], KEY)
    record, _ = lake.read_verified_json("gate", dt, "gate.json")
    assert kept.counts["decision"] == "kept" and "was republished since it was promoted" in record["reason"]
