"""Registry on the embedded SQLite store: aliases, hand promote and rollback, clear errors."""

from __future__ import annotations

import json
import socket

import pytest
from mlflow.tracking import MlflowClient

from dealrec_tasks.cli import main
from dealrec_tasks.errors import ConfigError, InputError
from dealrec_tasks.steps import tracking as steps
from dealrec_tasks.tracking.client import TrackingUnavailable
from dealrec_tasks.tracking.config import TrackingConfig


def _client(cfg) -> MlflowClient:
    return MlflowClient(tracking_uri=cfg.resolved_uri(), registry_uri=cfg.resolved_uri())


def _champion(cfg) -> int:
    return int(_client(cfg).get_model_version_by_alias(cfg.model_name, "champion").version)


def test_promote_and_rollback_by_hand(tracked, cfg):
    lake, dt = tracked.lake, tracked.dt
    versions = [steps.register(lake, dt, tracked.model_dir, cfg, f"run__{i}").counts["version"] for i in (1, 2)]
    steps.promote(cfg, versions[0], "the first one")
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
    assert "register: version 1" in out and "register: version 2" in out and "decision" not in out
    assert main([*common, "promote", "--version", "1", "--reason", "first", *opts]) == 0
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


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        # A token used as the user name (GitHub, Databricks and Hugging Face style URLs): the whole user is hidden.
        ("https://ghp_S3CRETPW@github.com/o/r.git", "https://***@github.com/o/r.git"),
        ("http://S3CRETPW@127.0.0.1:5000", "http://***@127.0.0.1:5000"),
        ("redis://:S3CRETPW@redis:6379/0", "redis://:***@redis:6379/0"),  # the Celery broker: password only
        ("http://admin:@host/x", "http://admin:***@host/x"),
        # Credentials in the query (or a fragment), by parameter name; the other parameters stay readable.
        ("https://h/api?password=S3CRETPW&page=2", "https://h/api?password=***&page=2"),
        ("https://h/api?token=S3CRETPW", "https://h/api?token=***"),
        ("https://h/a?access_token=S3CRETPW&api_key=S3CRETPW&x=1", "https://h/a?access_token=***&api_key=***&x=1"),
        ("https://h/a?Secret=S3CRETPW&sig=S3CRETPW&signature=S3CRETPW", "https://h/a?Secret=***&sig=***&signature=***"),
        (
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=S3CRETPW&X-Amz-Signature=S3CRETPW&X-Amz-Expires=60",
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Expires=60",
        ),
        ("https://u:S3CRETPW@h/cb#access_token=S3CRETPW&state=ok", "https://u:***@h/cb#access_token=***&state=ok"),
        ("sqlite:////x/mlflow.db?mode=ro", "sqlite:////x/mlflow.db?mode=ro"),
        ("http://mlflow:5000", "http://mlflow:5000"),
        ("http://u:S3CRETPW@[::1/x?token=S3CRETPW", "http://***@[::1/x?token=***"),  # not parseable: still hidden
    ],
)
def test_redact_uri_hides_tokens_and_credential_parameters(uri, shown):
    """Issue 29, item 13: besides user:password@, a bare token as the user and credential query parameters."""
    from dealrec_tasks.tracking.config import redact_uri, scrub

    assert redact_uri(uri) == shown
    assert "S3CRETPW" not in redact_uri(uri)
    # A client's error quoting the URI, raw or percent-encoded, is scrubbed of the same secrets.
    assert "S3CRETPW" not in scrub(f"request to {uri} failed ({uri.replace('?', '%3F')})", uri)


def test_a_token_in_the_tracking_uri_is_never_printed(tracked, capsys):
    """The same paths as the password test above (errors, the CLI), with the secret as a bare token and a query."""
    port = _free_port()
    for uri in (f"http://S3CRETPW@127.0.0.1:{port}", f"http://127.0.0.1:{port}/?token=S3CRETPW"):
        cfg = TrackingConfig(tracking_uri=uri, retries=1, retry_wait_s=0.0)
        with pytest.raises(TrackingUnavailable) as err:
            steps.register(tracked.lake, tracked.dt, tracked.model_dir, cfg, "run__1")
        assert "S3CRETPW" not in str(err.value), str(err.value)
        code = main(["rollback", "--reason", "x", "--tracking-uri", uri, "--retries", "1", "--retry-wait-s", "0"])
        out = capsys.readouterr()
        assert code == 2 and "S3CRETPW" not in out.err + out.out


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
