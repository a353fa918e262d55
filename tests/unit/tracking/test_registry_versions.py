"""Registry functions on the embedded SQLite store, without the lake: idempotent versions, the promotion decision
on a champion/challenger pair, and a retry finishing a recorded decision."""

from __future__ import annotations

import pytest

from dealrec_tasks.errors import InputError
from dealrec_tasks.tracking import registry as reg
from dealrec_tasks.tracking.client import TAG_DIGEST, TAG_DT, TAG_ORCHESTRATOR_RUN, Tracking

METRIC = "ndcg@20"


def _tracking(cfg) -> tuple[Tracking, str]:
    tr = Tracking(cfg)
    return tr, tr.client.create_run(tr.experiment_id()).info.run_id


def _version(tr: Tracking, name: str, run_id: str, digest: str, tags: dict[str, str]):
    identity = {TAG_DT: "2026-01-05", TAG_ORCHESTRATOR_RUN: "run__1", TAG_DIGEST: digest}
    mv, _ = reg.find_or_create_version(tr, name, run_id, "model", identity, tags, f"version of {digest}")
    return mv


def test_find_or_create_version_returns_the_version_of_its_identity_instead_of_a_second(cfg):
    tr, run_id = _tracking(cfg)
    name = cfg.model_name
    identity = {TAG_DT: "2026-01-05", TAG_ORCHESTRATOR_RUN: "run__1", TAG_DIGEST: "d1"}
    mv, created = reg.find_or_create_version(tr, name, run_id, "model", identity, {"coreset_uri": "s3://x"}, "first")
    assert created and int(mv.version) == 1 and mv.run_id == run_id
    assert mv.source == f"{tr.client.get_run(run_id).info.artifact_uri}/model"
    stored = tr.client.get_model_version(name, "1")
    assert stored.tags == identity | {"coreset_uri": "s3://x"} and stored.description == "first"

    # A retry (other extra tags even): the version found by its identity, nothing created.
    again, created = reg.find_or_create_version(tr, name, run_id, "model", identity, {"coreset_uri": "s3://y"}, "2nd")
    assert not created and int(again.version) == 1
    assert tr.client.get_model_version(name, "1").tags["coreset_uri"] == "s3://x"
    # Another input digest is another version.
    other, created = reg.find_or_create_version(tr, name, run_id, "model", identity | {TAG_DIGEST: "d2"}, {}, "new")
    assert created and int(other.version) == 2
    assert [int(v.version) for v in reg.search_versions(tr, name)] == [1, 2]


def test_promotion_tags_on_a_champion_challenger_pair(cfg):
    tr, run_id = _tracking(cfg)
    name, key = cfg.model_name, reg.eval_tag(METRIC)
    v1 = _version(tr, name, run_id, "d1", {key: "0.1", reg.EVAL_SET_TAG: "a"})
    v2 = _version(tr, name, run_id, "d2", {key: "0.2", reg.EVAL_SET_TAG: "a"})
    v3 = _version(tr, name, run_id, "d3", {key: "0.3", reg.EVAL_SET_TAG: "b"})
    unscored = _version(tr, name, run_id, "d4", {})

    first = reg.promotion_tags(v1, None, METRIC, 0.0)
    assert first["promotion.decision"] == "champion" and first["promotion.reason"].startswith("first version")
    assert first["promotion.champion_value"] == "none" and first["promotion.champion_version"] == "none"
    assert first["promotion.comparable"] == "n/a" and list(first)[-1] == "promotion.decision"

    better = reg.promotion_tags(v2, v1, METRIC, 0.0)
    assert better["promotion.decision"] == "champion" and better["promotion.comparable"] == "true"
    assert better["promotion.challenger_value"] == "0.2" and better["promotion.champion_value"] == "0.1"
    assert better["promotion.champion_version"] == "1" and better["promotion.margin"] == "0.0"
    assert reg.promotion_tags(v2, v1, METRIC, 0.2)["promotion.decision"] == "kept"  # not by more than the margin

    other_users = reg.promotion_tags(v3, v2, METRIC, 0.0)
    assert other_users["promotion.decision"] == "champion" and other_users["promotion.comparable"] == "false"
    strict = reg.promotion_tags(v3, v2, METRIC, 0.0, require_comparable=True)
    assert strict["promotion.decision"] == "kept" and strict["promotion.reason"].startswith("not comparable")

    same = reg.promotion_tags(v2, v2, METRIC, 0.5)
    assert same["promotion.decision"] == "champion" and same["promotion.reason"] == "already champion"
    by_hand = reg.promotion_tags(v2, unscored, METRIC, 0.0)
    assert by_hand["promotion.decision"] == "kept" and by_hand["promotion.reason"].endswith("promote by hand")


def test_promote_if_better_finishes_a_recorded_decision_and_never_decides_twice(cfg):
    tr, run_id = _tracking(cfg)
    name, key = cfg.model_name, reg.eval_tag(METRIC)
    v1 = int(_version(tr, name, run_id, "d1", {key: "0.1"}).version)
    v2 = int(_version(tr, name, run_id, "d2", {}).version)
    with pytest.raises(InputError, match=rf"{name} version {v2}: no tag eval.ndcg_at_20 \(has \[\]\)"):
        reg.promote_if_better(tr, name, v2, METRIC, 0.0)

    # A first try that recorded "champion" and stopped before the alias moved: the retry only applies it.
    reg.set_tags(tr, name, v1, {"promotion.reason": "first version: no champion yet", "promotion.decision": "champion"})
    assert reg.alias_version(tr, name, reg.CHAMPION) is None
    tags, changed = reg.promote_if_better(tr, name, v1, METRIC, 0.0)
    assert changed and tags["promotion.decision"] == "champion"
    assert int(reg.alias_version(tr, name, reg.CHAMPION).version) == v1
    assert int(reg.alias_version(tr, name, reg.CHALLENGER).version) == v1
    applied = tr.client.get_model_version(name, str(v1)).tags
    assert applied["promotion.applied"] == "true"
    assert applied["champion.reason"] == "automatic: first version: no champion yet"

    tags, changed = reg.promote_if_better(tr, name, v1, METRIC, 0.0)
    assert not changed and tags["promotion.decision"] == "champion"
