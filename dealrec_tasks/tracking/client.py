"""One MLflow connection with bounded retries: every tracking module talks to MLflow through ``Tracking.call``.

MLflow's own HTTP client retries 7 times with exponential back-off (minutes against a dead server) and then
raises a generic exception. Here MLflow's retries are switched off during our calls and replaced by
``cfg.retries`` tries with a doubling wait, after which one ``TrackingUnavailable`` names the URI and the call.
Only failures that never produced a server-side effect we could observe (connection refused, timeouts, 5xx,
a locked SQLite file) are retried; a call that creates something is made idempotent by the caller (it searches
by tags before creating again).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from dealrec_tasks.errors import ConfigError, InputError
from dealrec_tasks.tracking.config import TrackingConfig, redact_uri, scrub

T = TypeVar("T")
_ENV_LOCK = threading.Lock()
# Search tag keys are plain words: dotted keys need backquotes in filter strings, which not every store parses.
TAG_KIND = "dealrec_kind"
TAG_DT = "dt"
TAG_ORCHESTRATOR_RUN = "orchestrator_run_id"
TAG_DIGEST = "input_digest"


class TrackingUnavailable(InputError):
    """The tracking server (or database) did not answer within the configured tries."""


def quote(value: str, name: str) -> str:
    """A value for an MLflow filter string; quotes would end the literal, so they are refused."""
    if "'" in value or '"' in value or "\\" in value:
        raise ConfigError(f"{name}={value!r}: quotes and backslashes are not allowed (it is used in MLflow searches)")
    return f"'{value}'"


def _transient(exc: BaseException) -> bool:
    """A failure worth another try: the request never got an answer, or the server said 'not now'."""
    import requests
    from mlflow.exceptions import MlflowException

    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError)):
            return True
        if "database is locked" in str(cause):
            return True
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, MlflowException):
        text = str(exc)
        if "failed with exception" in text or "failed with timeout" in text or "Max retries exceeded" in text:
            return True
        if exc.error_code in ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"):
            return True
        # A proxy or a restarting server answers 502/503/504 without MLflow's JSON error body.
        return any(f"failed with error code {code}" in text for code in (502, 503, 504))
    return False


class Tracking:
    """A lazily created ``MlflowClient`` for ``cfg``'s tracking URI (also the registry URI)."""

    def __init__(self, cfg: TrackingConfig):
        self.cfg = cfg
        self.uri = cfg.resolved_uri()
        self._client = None
        self._experiment_id: str | None = None

    # -- connection -----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _bounded_http(self) -> Iterator[None]:
        """MLflow's HTTP retries off and a request timeout, unless the user set these variables themselves."""
        wanted = {
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(self.cfg.request_timeout_s),
        }
        with _ENV_LOCK:
            set_here = [k for k in wanted if k not in os.environ]
            for k in set_here:
                os.environ[k] = wanted[k]
        try:
            yield
        finally:
            with _ENV_LOCK:
                for k in set_here:
                    os.environ.pop(k, None)

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            db = self.cfg.sqlite_path()
            if db is not None:
                db.parent.mkdir(parents=True, exist_ok=True)
            self._client = self.call("connect", lambda: MlflowClient(tracking_uri=self.uri, registry_uri=self.uri))
        return self._client

    def call(
        self, what: str, fn: Callable[..., T], *args: Any, before_retry: Callable[[], Any] | None = None, **kw
    ) -> T:
        """``fn(*args, **kw)`` with up to ``cfg.retries`` tries on transient failures.

        ``before_retry`` runs before each further try (a search that returns early when the first try did
        reach the server); if it returns something other than None, that is the result.
        """
        wait = self.cfg.retry_wait_s
        last: BaseException | None = None
        for attempt in range(1, self.cfg.retries + 1):
            try:
                with self._bounded_http():
                    if attempt > 1 and before_retry is not None:
                        found = before_retry()
                        if found is not None:
                            return found
                    return fn(*args, **kw)
            except Exception as exc:  # noqa: BLE001 - classified right below
                if not _transient(exc):
                    raise
                last = exc
                if attempt < self.cfg.retries:
                    time.sleep(wait)
                    wait *= 2
        # The cause's text is kept scrubbed in the message, not chained: MLflow's exceptions quote the URL with its
        # password, and a chained traceback would carry it into task logs.
        raise TrackingUnavailable(
            f"MLflow at {redact_uri(self.uri)}: {what} failed after {self.cfg.retries} tries "
            f"(waits from {self.cfg.retry_wait_s:g} s, doubling): {_short(last, self.uri)}. Is the tracking server "
            "running and reachable? (set tracking_uri / $MLFLOW_TRACKING_URI)"
        ) from None

    def ping(self) -> None:
        """Fail fast, before anything is written, when MLflow is not reachable."""
        self.call("reach the tracking server", self.client.search_experiments, max_results=1)

    # -- experiment and runs ----------------------------------------------------------------------------------
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            from mlflow.exceptions import MlflowException

            name = self.cfg.experiment
            exp = self.call("get experiment", self.client.get_experiment_by_name, name)
            if exp is None:
                try:
                    exp_id = self.call(
                        "create experiment",
                        self.client.create_experiment,
                        name,
                        artifact_location=self.cfg.resolved_artifact_location(),
                        before_retry=lambda: _id(self.client.get_experiment_by_name(name)),
                    )
                except MlflowException as exc:  # created concurrently by another task
                    if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
                    exp_id = self.call("get experiment", self.client.get_experiment_by_name, name).experiment_id
            else:
                if exp.lifecycle_stage == "deleted":
                    raise InputError(
                        f"MLflow at {redact_uri(self.uri)}: experiment {name!r} is deleted; "
                        "restore it or choose another name"
                    )
                exp_id = exp.experiment_id
            self._experiment_id = exp_id
        return self._experiment_id

    def search_runs(self, filter_string: str) -> list:
        from mlflow.entities import ViewType

        return list(
            self.call(
                "search runs",
                self.client.search_runs,
                [self.experiment_id()],
                filter_string=filter_string,
                run_view_type=ViewType.ACTIVE_ONLY,
                order_by=["attributes.start_time DESC"],
                max_results=100,
            )
        )

    def run_link(self, run_id: str) -> str:
        if self.cfg.is_remote():
            return f"{self.uri.rstrip('/')}/#/experiments/{self.experiment_id()}/runs/{run_id}"
        return f"runs:/{run_id}"


def _id(exp) -> str | None:
    return None if exp is None else exp.experiment_id


def _short(exc: BaseException | None, uri: str = "") -> str:
    """The exception's text on one line, at most 300 characters, without the secrets of ``uri`` (its password, a
    token used as its user, credential query parameters)."""
    text = " ".join(str(exc).split()) if exc is not None else "no answer"
    text = scrub(text, uri) if uri else text
    return text if len(text) <= 300 else text[:300] + " ..."
