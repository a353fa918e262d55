"""Typed settings for every pipeline step, validated in one place.

Each step takes one frozen dataclass. Fields carry their help text in ``metadata["help"]`` so the CLI (and later
Airflow Params) are generated from here instead of repeating names and defaults. ``to_dict()`` gives the
JSON-able form stored next to every artifact and logged to MLflow.
"""

from __future__ import annotations

import dataclasses
import datetime as dt_mod
import os
import re
from dataclasses import dataclass, field
from typing import Any

from dealrec_tasks.errors import ConfigError

_DT_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def opt(default: Any, help: str) -> Any:  # noqa: A002 - mirrors argparse's name
    """A dataclass field with help text."""
    return field(default=default, metadata={"help": help})


def parse_dt(value: str, name: str = "dt") -> dt_mod.date:
    """Parse a partition date ``YYYY-MM-DD``; the error names the parameter."""
    if not isinstance(value, str) or not _DT_RE.match(value):
        raise ConfigError(f"{name}={value!r}: expected a date YYYY-MM-DD")
    try:
        return dt_mod.date.fromisoformat(value)
    except ValueError as exc:
        raise ConfigError(f"{name}={value!r}: {exc}") from None


class Day(str):
    """A partition day ``YYYY-MM-DD``, checked once where it enters (the CLI, a DAG task, a library call).

    It is a ``str`` (it names partitions and folders, goes to XCom and JSON as is), so a step that receives a Day
    passes it on without parsing again; ``Day(day)`` of a Day returns it unchanged. A crafted value such as
    ``2026-01-04/../samples`` never becomes a Day, so it never reaches a path.
    """

    __slots__ = ()

    def __new__(cls, value: str | Day, name: str = "dt") -> Day:
        if type(value) is cls:
            return value
        parse_dt(value, name)
        return super().__new__(cls, value)

    @property
    def date(self) -> dt_mod.date:
        return dt_mod.date.fromisoformat(self)

    def minus(self, days: int) -> Day:
        """The day ``days`` before this one."""
        return Day((self.date - dt_mod.timedelta(days=days)).isoformat())


def day_or_none(value: str | None, name: str = "dt") -> Day | None:
    return None if value is None else Day(value, name)


class _Config:
    """Shared behaviour: validation hook, dict round trip."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:  # overridden where there is something to check
        pass

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown parameter(s) {unknown}; known: {sorted(names)}")
        return cls(**values)


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


@dataclass(frozen=True)
class S3Config(_Config):
    """Where s3:// URIs go. Defaults come from the usual AWS variables (see ``from_env``)."""

    endpoint_url: str | None = opt(None, "S3 endpoint for non-AWS servers, e.g. http://127.0.0.1:9000")
    region: str = opt("us-east-1", "S3 region")
    access_key: str | None = opt(None, "access key id (default: AWS_ACCESS_KEY_ID)")
    secret_key: str | None = opt(None, "secret access key (default: AWS_SECRET_ACCESS_KEY)")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> S3Config:
        env = dict(os.environ if env is None else env)
        return cls(
            endpoint_url=env.get("DEALREC_S3_ENDPOINT_URL")
            or env.get("AWS_ENDPOINT_URL_S3")
            or env.get("AWS_ENDPOINT_URL")
            or None,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            access_key=env.get("AWS_ACCESS_KEY_ID") or None,
            secret_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
        )

    def validate(self) -> None:
        if self.endpoint_url is not None:
            _require(
                self.endpoint_url.startswith(("http://", "https://")),
                f"endpoint_url={self.endpoint_url!r}: must start with http:// or https://",
            )

    def to_dict(self) -> dict[str, Any]:
        """Never leak the secret into manifests or MLflow."""
        d = super().to_dict()
        d["secret_key"] = "***" if self.secret_key else None
        return d


@dataclass(frozen=True)
class ImportConfig(_Config):
    """``import-dealrec``: the paper's release format into the lake."""

    dataset: str | None = opt(None, "name of the imported dataset (datasets/<name>/); default: the folder's name")
    domain: str | None = opt(
        None,
        "what the items are, for the LLM prompts: games (the paper's Games text) or a singular noun, e.g. movie; "
        "stored with the catalogue (default: games for a dataset named games, else item)",
    )
    force: bool = opt(False, "replace an imported dataset of the same name that holds other data")

    def validate(self) -> None:
        if self.dataset is not None:
            _require(bool(re.match(r"^[a-z0-9_\-]+$", self.dataset)), f"dataset={self.dataset!r}: use [a-z0-9_-]")


@dataclass(frozen=True)
class ReplayConfig(_Config):
    """``replay``: cut an imported dataset into daily interaction logs (a replay, not real time)."""

    dataset: str | None = opt(None, "imported dataset to replay (datasets/<name>/); required")
    days: int = opt(30, "number of daily partitions; the last two hold the validation and test items")
    start: str = opt("2026-01-01", "date of the first replayed day")
    seed: int = opt(0, "seed for user start days and times within a day")
    force: bool = opt(
        False,
        "rewrite logs of days already ingested (their ingested partitions are withdrawn from the first rewritten "
        "day on, so `ingest --all` ingests them again in order)",
    )

    def validate(self) -> None:
        _require(self.dataset is not None, "dataset: give the imported dataset to replay (--dataset NAME)")
        _require(self.days >= 3, f"days={self.days}: need at least 3 (train days, a validation day, a test day)")
        parse_dt(self.start, "start")


@dataclass(frozen=True)
class SyntheticConfig(_Config):
    """``synthetic``: daily logs with popularity skew, returning users and item titles."""

    users: int = opt(2000, "number of distinct users over all days")
    items: int = opt(500, "catalogue size")
    days: int = opt(7, "number of daily partitions")
    start: str = opt("2026-01-01", "first day")
    events_per_day: int = opt(3000, "mean interactions per day")
    zipf_a: float = opt(1.1, "popularity skew of items (Zipf exponent)")
    return_rate: float = opt(0.6, "share of a day's events by users already seen")
    bad_rows: int = opt(0, "per day, rows of a second (JSON lines) log file that break the contract, to see quarantine")
    seed: int = opt(0, "random seed")

    def validate(self) -> None:
        _require(self.users >= 1, f"users={self.users}: must be >= 1")
        _require(self.items >= 2, f"items={self.items}: must be >= 2")
        _require(self.days >= 1, f"days={self.days}: must be >= 1")
        _require(self.events_per_day >= 0, f"events_per_day={self.events_per_day}: must be >= 0")
        _require(self.zipf_a > 0, f"zipf_a={self.zipf_a}: must be > 0")
        _require(0 <= self.return_rate <= 1, f"return_rate={self.return_rate}: must be in [0, 1]")
        _require(self.bad_rows >= 0, f"bad_rows={self.bad_rows}: must be >= 0")
        parse_dt(self.start, "start")


@dataclass(frozen=True)
class IngestConfig(_Config):
    """``ingest``: validation rules of a day's logs."""

    allow_extra_columns: bool = opt(False, "keep rows of files with columns outside the contract (extras dropped)")


@dataclass(frozen=True)
class CompactConfig(_Config):
    """``compact``: fold the days' sequence deltas into a snapshot, so reading the sequences (samples, ingest's
    user map) starts from it instead of the first day."""

    every_days: int = opt(7, "write a snapshot once this many days' deltas follow the last one (1: every day)")
    keep: int = opt(2, "snapshots kept; older ones are removed (deltas are always kept: they are the history)")

    def validate(self) -> None:
        _require(self.every_days >= 1, f"every_days={self.every_days}: must be >= 1")
        _require(self.keep >= 1, f"keep={self.keep}: must be >= 1 (the newest snapshot is what readers start from)")


@dataclass(frozen=True)
class SamplesConfig(_Config):
    """``samples``: one training sample per user plus held-out evaluation rows, split by time like the paper."""

    max_len: int = opt(50, "history length kept (most recent items)")
    valid_days: int = opt(1, "days before the test window whose items are validation targets")
    test_days: int = opt(1, "last days up to dt whose items are test targets")

    def validate(self) -> None:
        _require(self.max_len >= 1, f"max_len={self.max_len}: must be >= 1")
        _require(self.valid_days >= 0, f"valid_days={self.valid_days}: must be >= 0")
        _require(self.test_days >= 0, f"test_days={self.test_days}: must be >= 0")
