"""Registry on the embedded SQLite store: aliases, the promotion decision as tags, hand promote and rollback."""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket

import pytest
from mlflow.tracking import MlflowClient

from dealrec_tasks.cli import main
from dealrec_tasks.errors import ConfigError, InputError
from dealrec_tasks.steps import tracking as steps
from dealrec_tasks.tracking.client import TrackingUnavailable
from dealrec_tasks.tracking.config import TrackingConfig
from dealrec_tasks.tracking.registry import HISTORY_TAG, decide


def _client(cfg) -> MlflowClient:
    return MlflowClient(tracking_uri=cfg.resolved_uri(), registry_uri=cfg.resolved_uri())


def _champion(cfg) -> int:
    return int(_client(cfg).get_model_version_by_alias(cfg.model_name, "champion").version)


@pytest.mark.parametrize(
    ("challenger", "champion", "margin", "comparable", "strict", "promote"),
    [
        (0.1, None, 0.0, None, False, True),  # the first version becomes champion
        (0.2, 0.1, 0.0, True, False, True),
        (0.1, 0.1, 0.0, True, False, False),  # a tie keeps the champion: it must beat it
        (0.105, 0.1, 0.01, True, False, False),  # not by more than the margin
        (0.095, 0.1, -0.01, True, False, True),  # negative margin: a fresher model within tolerance
        (0.2, 0.1, 0.0, False, False, True),  # other users: compared, with a caveat
        (0.2, 0.1, 0.0, False, True, False),  # ... or refused when comparability is required
        (float("nan"), 0.1, 0.0, True, False, False),
    ],
)
def test_decision(challenger, champion, margin, comparable, strict, promote):
    d = decide(challenger, champion, margin, comparable, strict, "ndcg@20")
    assert d.promote is promote and d.name == ("champion" if promote else "kept")
    if comparable is False and not strict:
        assert "caveat" in d.reason


def test_promotion_records_decision_and_numbers_and_retries_do_not_redecide(tracked, cfg):
    lake, dt = tracked.lake, tracked.dt
    v1 = steps.register(lake, dt, tracked.model_dir, cfg, "run__1").counts["version"]
    first = steps.promote_if_better(cfg, v1)
    assert first.counts["decision"] == "champion" and first.counts["champion"] == v1
    assert steps.promote_if_better(cfg, v1).changed is False

    # Same evaluation, margin 0: a tie does not replace the champion.
    v2 = steps.register(lake, dt, tracked.model_dir, cfg, "run__2").counts["version"]
    kept = steps.promote_if_better(cfg, v2)
    assert kept.counts["decision"] == "kept" and _champion(cfg) == v1
    client = _client(cfg)
    tags = client.get_model_version(cfg.model_name, str(v2)).tags
    ndcg = lake.require_manifest("evaluation", dt)["metrics"]["ndcg@20"]
    assert tags["promotion.decision"] == "kept" and tags["promotion.metric"] == "ndcg@20"
    assert float(tags["promotion.challenger_value"]) == pytest.approx(ndcg)
    assert float(tags["promotion.champion_value"]) == pytest.approx(ndcg)
    assert tags["promotion.champion_version"] == str(v1) and tags["promotion.comparable"] == "true"
    assert int(client.get_model_version_by_alias(cfg.model_name, "challenger").version) == v2

    # A tolerance for fresher models (negative margin) promotes the next one; a retry changes nothing.
    tolerant = dataclasses.replace(cfg, margin=-0.001)
    v3 = steps.register(lake, dt, tracked.model_dir, tolerant, "run__3").counts["version"]
    promoted = steps.promote_if_better(tolerant, v3)
    assert promoted.counts["decision"] == "champion" and _champion(cfg) == v3
    again = steps.promote_if_better(cfg, v3)  # even with a stricter config, the recorded decision stands
    assert again.counts["decision"] == "champion" and not again.changed
    assert json.loads(client.get_registered_model(cfg.model_name).tags[HISTORY_TAG]) == [v1, v3]
    v3_tags = client.get_model_version(cfg.model_name, str(v3)).tags
    assert v3_tags["champion.previous"] == str(v1) and v3_tags["champion.reason"].startswith("automatic: ndcg@20")


def test_promote_and_rollback_by_hand(tracked, cfg):
    lake, dt = tracked.lake, tracked.dt
    versions = [steps.register(lake, dt, tracked.model_dir, cfg, f"run__{i}").counts["version"] for i in (1, 2)]
    steps.promote_if_better(cfg, versions[0])
    with pytest.raises(InputError, match="first champion on record; nothing to roll back"):
        steps.rollback(cfg, "nothing yet")
    moved = steps.promote(cfg, versions[1], "canary looked good")
    assert moved.counts == {"champion": versions[1], "previous": versions[0]} and _champion(cfg) == versions[1]
    tags = _client(cfg).get_model_version(cfg.model_name, str(versions[1])).tags
    assert tags["champion.reason"] == "by hand: canary looked good" and tags["champion.by"]
    assert not steps.promote(cfg, versions[1], "again").changed

    back = steps.rollback(cfg, "bad click-through")
    assert back.counts == {"champion": versions[0], "rolled_back": versions[1]} and _champion(cfg) == versions[0]
    demoted = _client(cfg).get_model_version(cfg.model_name, str(versions[1])).tags
    assert demoted["rollback.reason"].startswith("bad click-through") and demoted["rollback.to"] == str(versions[0])

    # Someone moved the alias in the UI: the alias wins, and rollback undoes that move.
    _client(cfg).set_registered_model_alias(cfg.model_name, "champion", str(versions[1]))
    assert steps.rollback(cfg, "undo the UI move").counts["champion"] == versions[0]

    with pytest.raises(InputError, match=r"has no version 99 \(versions: \[1, 2\]\)"):
        steps.promote(cfg, 99, "typo")
    with pytest.raises(ConfigError, match="reason"):
        steps.promote(cfg, versions[1], " ")


def test_cli_promote_rollback_and_clear_errors(tracked, cfg, capsys):
    common = ["--lake", str(tracked.lake.root)]
    opts = ["--tracking-uri", cfg.tracking_uri, "--experiment", cfg.experiment, "--model-name", cfg.model_name]
    # A model name that was never registered: exit 2, the message says what to do.
    assert main([*common, "promote", "--version", "1", "--reason", "x", *opts]) == 2
    assert f"no registered model {cfg.model_name!r}; register a version first" in capsys.readouterr().err
    assert main([*common, "rollback", "--reason", "x", *opts, "--model-name", ""]) == 2
    assert "model_name='': a registered model name is required" in capsys.readouterr().err

    for run in ("cli__1", "cli__2"):
        assert main([*common, "register", "--dt", tracked.dt, "--model", tracked.model_dir, *opts,
                     "--orchestrator-run-id", run]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "register: version 1" in out and "decision champion" in out and "decision kept" in out
    assert main([*common, "promote", "--version", "2", "--reason", "manual check", *opts]) == 0
    assert "promote: champion 2, previous 1" in capsys.readouterr().out
    assert main([*common, "rollback", "--reason", "regression", *opts]) == 0
    assert "rollback: champion 1, rolled_back 2" in capsys.readouterr().out
    assert main([*common, "track-pruning", "--dt", tracked.dt, *opts, "--orchestrator-run-id", "cli__1"]) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_fails_clearly_after_bounded_retries(tracked, capsys):
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    cfg = TrackingConfig(tracking_uri=uri, retries=2, retry_wait_s=0.05)
    with pytest.raises(TrackingUnavailable, match=rf"MLflow at {uri}: reach the tracking server failed after 2 tries"):
        steps.register(tracked.lake, tracked.dt, tracked.model_dir, cfg, "run__1")
    code = main(["rollback", "--reason", "x", "--tracking-uri", uri, "--retries", "1", "--retry-wait-s", "0"])
    assert code == 2 and "Is the tracking server running" in capsys.readouterr().err


def test_a_password_in_the_tracking_uri_is_never_printed(tracked, capsys):
    """Errors, the CLI and the DEALRec view name the server with its password masked (issue 14, item 11)."""
    from dealrec_tasks.days import MlflowLinks, mlflow_of_day
    from dealrec_tasks.tracking.config import redact_uri

    port = _free_port()
    uri = f"http://admin:S3CRETPW@127.0.0.1:{port}"
    assert redact_uri(uri) == f"http://admin:***@127.0.0.1:{port}"
    assert redact_uri("sqlite:////x/mlflow.db") == "sqlite:////x/mlflow.db"
    assert redact_uri("postgresql://u:p%40ss@db:5432/m") == "postgresql://u:***@db:5432/m"
    cfg = TrackingConfig(tracking_uri=uri, retries=1, retry_wait_s=0.0)
    with pytest.raises(TrackingUnavailable) as err:
        steps.register(tracked.lake, tracked.dt, tracked.model_dir, cfg, "run__1")
    assert "S3CRETPW" not in str(err.value) and "admin:***@" in str(err.value)
    shown = mlflow_of_day(cfg, tracked.dt, MlflowLinks())
    assert "S3CRETPW" not in json.dumps(shown) and "error" in shown
    code = main(["rollback", "--reason", "x", "--tracking-uri", uri, "--retries", "1", "--retry-wait-s", "0"])
    out = capsys.readouterr()
    assert code == 2 and "S3CRETPW" not in out.err + out.out
    with pytest.raises(ConfigError) as bad:
        TrackingConfig(tracking_uri="ftp://u:S3CRETPW@host/x")
    assert "S3CRETPW" not in str(bad.value)


def test_config_validation_names_the_parameter(monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match="model_name=''"):
        TrackingConfig(model_name="")
    with pytest.raises(ConfigError, match="metric='auc': expected recall@K or ndcg@K"):
        TrackingConfig(metric="auc")
    with pytest.raises(ConfigError, match="unsupported scheme 'ftp'"):
        TrackingConfig(tracking_uri="ftp://host/x")
    with pytest.raises(ConfigError, match="retries=0"):
        TrackingConfig(retries=0)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert TrackingConfig().resolved_uri() == f"sqlite:///{tmp_path / 'var' / 'mlflow.db'}"
    assert TrackingConfig().resolved_artifact_location() == (tmp_path / "var" / "mlartifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert TrackingConfig().resolved_uri() == "http://mlflow:5000" and TrackingConfig().is_remote()
    assert TrackingConfig().resolved_artifact_location() is None
    with pytest.raises(ConfigError, match="orchestrator_run_id"):
        steps.log_pruning(None, "2026-01-01", TrackingConfig(), " ")  # type: ignore[arg-type]


def test_versions_evaluated_differently_are_flagged_not_comparable(tracked, cfg, tmp_path):
    """A champion evaluated on other users or settings: compared with a caveat, or refused when required."""
    from dealrec_tasks.llm.config import EvalConfig
    from dealrec_tasks.steps import llm
    from dealrec_tasks.storage import Lake

    v1 = steps.register(tracked.lake, tracked.dt, tracked.model_dir, cfg, "run__1").counts["version"]
    steps.promote_if_better(cfg, v1)
    shutil.copytree(tracked.root / "lake", tmp_path / "lake")
    other = Lake(str(tmp_path / "lake"))
    llm.evaluate(other, tracked.dt, tracked.model_dir, EvalConfig(num_beams=1, max_new_tokens=4), max_users=10)
    strict = dataclasses.replace(cfg, require_comparable=True)
    v2 = steps.register(other, tracked.dt, tracked.model_dir, strict, "run__2").counts["version"]
    decided = steps.promote_if_better(strict, v2)
    assert decided.counts["decision"] == "kept" and decided.counts["comparable"] == "false"
    tags = _client(cfg).get_model_version(cfg.model_name, str(v2)).tags
    assert tags["promotion.reason"].startswith("not comparable") and tags["promotion.comparable"] == "false"
    champion_tags = _client(cfg).get_model_version(cfg.model_name, str(v1)).tags
    assert tags["eval_set"] != champion_tags["eval_set"]
    assert _champion(cfg) == v1
