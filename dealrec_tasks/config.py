"""Typed settings for every pipeline step, validated in one place.

Each step takes one frozen dataclass. Fields carry their help text in ``metadata["help"]`` so the CLI (and later
Airflow Params) are generated from here instead of repeating names and defaults. ``to_dict()`` gives the
JSON-able form stored next to every artifact and logged to MLflow.
"""

from __future__ import annotations

import dataclasses
import datetime as dt_mod
import functools
import math
import numbers
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from dealrec_tasks.errors import ConfigError

_DT_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
# A dataset name is one folder below datasets/: never a path (no '/', '..', NUL), never empty, never hidden.
_DATASET_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
DATASET_RULE = "1-64 characters a-z 0-9 _ -, starting with a letter or digit"


#: The largest value of an integer option that declares no upper bound of its own: every count, size, epoch and
#: seed of the pipeline fits in a signed 32-bit integer, and a value above (10**12 epochs) is a typo that would run
#: for ever or allocate without end. Integer options are >= 0 unless they declare otherwise.
INT_MAX = 2**31 - 1
_BOUND_NAMES = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def opt(
    default: Any,
    help: str,  # noqa: A002 - mirrors argparse's name
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A dataclass field with help text and the bounds of its number (of each number of a tuple), if any.

    ``_Config`` enforces the bounds after ``validate()``, with the rules every number option follows anyway (a
    float is finite, an integer in [0, INT_MAX] unless declared otherwise), and the Airflow Params repeat them in
    their JSON schema (``number_bounds``): one declaration, three places that cannot drift apart."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    return field(default=default, metadata={"help": help} | ({"bounds": bounds} if bounds else {}))


@functools.cache
def _number_fields(cls: type) -> dict[str, type]:
    """``{field: int or float}`` of the number options of a config class (``X | None`` and ``tuple[X, ...]``
    included: None is skipped, each element of a tuple checked)."""
    out: dict[str, type] = {}
    for name, kind in typing.get_type_hints(cls).items():
        args = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
        args = tuple(a for a in args if a is not type(None))
        if len(args) == 1 and typing.get_origin(args[0]) is tuple:
            args = typing.get_args(args[0])[:1]
        if len(args) == 1 and args[0] in (int, float):
            out[name] = args[0]
    return out


def number_bounds(cls: type, name: str) -> dict[str, float]:
    """The bounds of the number option ``name`` of ``cls`` as enforced: its declared ones (``opt(..., ge=...)``),
    and for an integer without them [0, INT_MAX]. ``{}`` for a float without declared bounds (it is still refused
    when not finite) and for a field that is no number."""
    kind = _number_fields(cls).get(name)
    if kind is None:
        return {}
    declared = {f.name: f for f in dataclasses.fields(cls)}[name].metadata.get("bounds", {})
    bounds = dict(declared)
    if kind is int and not {"ge", "gt"} & set(declared):
        bounds["ge"] = 0
    if kind is int and not {"le", "lt"} & set(declared):
        bounds["le"] = INT_MAX
    return bounds


def _bounds_text(bounds: dict[str, float]) -> str:
    """``in [0, 1)``, ``>= 1e-06``: the bounds as the error states them."""
    text = {k: str(v) if isinstance(v, int) else f"{v:g}" for k, v in bounds.items()}
    lo = next((k for k in text if k in ("ge", "gt")), None)
    hi = next((k for k in text if k in ("le", "lt")), None)
    if lo and hi:
        return f"in {'[' if lo == 'ge' else '('}{text[lo]}, {text[hi]}{']' if hi == 'le' else ')'}"
    k = lo or hi
    return f"{_BOUND_NAMES[k]} {text[k]}"  # type: ignore[index]


def _check_numbers(cfg: Any) -> None:
    """Every number option of ``cfg``: a real number (not a bool), finite, within ``number_bounds``; the error
    names the option, in one line. NaN fails no comparison, so without this a NaN passed every ``x >= 0`` check."""
    cls = type(cfg)
    for name, kind in _number_fields(cls).items():
        value = getattr(cfg, name)
        if value is None:
            continue
        bounds = number_bounds(cls, name)
        for v in value if isinstance(value, (tuple, list)) else (value,):  # a tuple option read back from JSON
            integral = isinstance(v, numbers.Integral) and not isinstance(v, bool)
            if not (integral if kind is int else isinstance(v, numbers.Real) and not isinstance(v, bool)):
                raise ConfigError(
                    f"{name}={_number_text(value)}: must be {'an integer' if kind is int else 'a number'}"
                )
            if not integral and not math.isfinite(v):
                raise ConfigError(f"{name}={_number_text(value)}: must be finite (not nan or inf)")
            if not all({"ge": v >= b, "gt": v > b, "le": v <= b, "lt": v < b}[k] for k, b in bounds.items()):
                raise ConfigError(f"{name}={_number_text(value)}: must be {_bounds_text(bounds)}")


def _number_text(value: Any, limit: int = 60) -> str:
    """A bad option value for a one-line error: its repr, cut when long (an integer of 5,000 digits has no repr)."""
    try:
        text = repr(value)
    except ValueError:  # int -> str is limited to 4,300 digits
        return "<a number too long to show>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_dt(value: str, name: str = "dt") -> dt_mod.date:
    """Parse a partition date ``YYYY-MM-DD``; the error names the parameter."""
    if not isinstance(value, str) or not _DT_RE.fullmatch(value):
        raise ConfigError(f"{name}={_shown(value)}: expected a date YYYY-MM-DD")
    try:
        return dt_mod.date.fromisoformat(value)
    except ValueError as exc:
        raise ConfigError(f"{name}={value!r}: {exc}") from None


def _shown(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut when long: an error names a bad value in one line, never a pasted file."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_day(value: str) -> bool:
    """Whether ``value`` is exactly a day ``YYYY-MM-DD`` (a folder ``dt=<value>`` is then a partition)."""
    try:
        parse_dt(value)
    except ConfigError:
        return False
    return True


def check_dataset_name(value: Any, name: str = "dataset") -> str:
    """An imported dataset's name, refused in one line unless it matches ``[a-z0-9][a-z0-9_-]{0,63}``.

    The name becomes the folder ``datasets/<name>/`` that steps read and write, so ``../../x``, ``/abs``, ``a/b``
    or a NUL would reach outside it; this is the one check every entry point (CLI, configs, ``catalogue.Source``)
    goes through, before any path is built.
    """
    if not isinstance(value, str) or not _DATASET_RE.fullmatch(value):
        raise ConfigError(f"{name}={_shown(value)}: not a dataset name ({DATASET_RULE})")
    return value


def check_not_future(day: str, allow: bool, how: str, name: str = "dt") -> None:
    """Refuse a day after tomorrow (UTC) unless ``allow``; ``how`` says how to allow it at the caller's entry point.

    Why: no producer can have finished the logs of such a day (tomorrow is allowed: a producer east of UTC is
    there already), and once a day is ingested, every earlier day is refused as out of order, so a typo such as
    2062 for 2026 stopped every real day after it. The clock only guards here; it never chooses a day.
    """
    limit = dt_mod.datetime.now(dt_mod.UTC).date() + dt_mod.timedelta(days=1)
    if not allow and parse_dt(day, name) > limit:
        raise ConfigError(
            f"{name}={day}: after tomorrow ({limit.isoformat()}, UTC); refused, since no logs of it can be complete "
            f"and a day ingested ahead of time refuses every earlier day after it. To build it on purpose, {how}"
        )


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
        _check_numbers(self)  # after validate(): its own messages (with their reasons) come first

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
            check_dataset_name(self.dataset)


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
        check_dataset_name(self.dataset)
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
    # Above 10 the popularity of most items underflows to 0 and a genre of only such items has no distribution.
    zipf_a: float = opt(1.1, "popularity skew of items (Zipf exponent)", gt=0, le=10)
    return_rate: float = opt(0.6, "share of a day's events by users already seen")
    bad_rows: int = opt(0, "per day, rows of a second (JSON lines) log file that break the contract, to see quarantine")
    seed: int = opt(0, "random seed")

    def validate(self) -> None:
        _require(self.users >= 1, f"users={self.users}: must be >= 1")
        _require(self.items >= 2, f"items={self.items}: must be >= 2")
        _require(self.days >= 1, f"days={self.days}: must be >= 1")
        _require(self.events_per_day >= 0, f"events_per_day={self.events_per_day}: must be >= 0")
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
