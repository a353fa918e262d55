"""Fixtures of the tracking tests: the session's small lake and one embedded (SQLite) MLflow store."""

from __future__ import annotations

import uuid

import pytest

from dealrec_tasks.tracking.config import TrackingConfig
from tests.unit.tracking.tracked_lake import TrackedLake, build


@pytest.fixture(scope="session")
def tracked(tmp_path_factory) -> TrackedLake:
    return build(tmp_path_factory)


@pytest.fixture(scope="session")
def sqlite_uri(tmp_path_factory) -> str:
    """One SQLite store for the session (creating its schema takes seconds); tests keep apart by names."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def cfg(sqlite_uri) -> TrackingConfig:
    """A fresh experiment and registered model name per test, in the shared store."""
    tag = uuid.uuid4().hex[:8]
    return TrackingConfig(
        tracking_uri=sqlite_uri, experiment=f"exp-{tag}", model_name=f"model-{tag}", retry_wait_s=0.05
    )
