"""Registry functions on the embedded SQLite store, without the lake: idempotent versions. (What to promote is the
gate's decision, from the lake: tests/unit/tracking/test_gate.py.)"""

from __future__ import annotations

from dealrec_tasks.tracking import registry as reg
from dealrec_tasks.tracking.client import TAG_DIGEST, TAG_DT, TAG_ORCHESTRATOR_RUN, Tracking


def _tracking(cfg) -> tuple[Tracking, str]:
    tr = Tracking(cfg)
    return tr, tr.client.create_run(tr.experiment_id()).info.run_id


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
