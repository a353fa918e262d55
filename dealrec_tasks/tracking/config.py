"""Where MLflow lives and how the registry decides: one validated config shared by every tracking step."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, unquote_plus, urlparse, urlsplit

from dealrec_tasks.config import _Config, _require, opt

DEFAULT_TRACKING_URI = "sqlite:///var/mlflow.db"
# A registered model name lands in URIs (models:/<name>@champion) and in filter strings: keep it plain.
_MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,255}$")
_METRIC_RE = re.compile(r"^(recall|ndcg)@[1-9][0-9]*$")
# Not file://: MLflow 3's file store refuses to start (maintenance mode), which ended in a traceback.
_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql")


# Query (or fragment) parameters whose value is a credential: password=, token=, access_token=, api_key=, secret=,
# sig=/signature= (signed URLs), X-Amz-Credential=... Matched anywhere in the name: hiding too much beats leaking.
_SECRET_PARAM = re.compile(r"pass|pwd|token|secret|key|sig|credential|auth", re.I)


def _redact_params(params: str) -> str:
    parts = []
    for part in params.split("&"):
        name, eq, _value = part.partition("=")
        parts.append(f"{name}=***" if eq and _SECRET_PARAM.search(unquote_plus(name)) else part)
    return "&".join(parts)


def redact_uri(uri: str) -> str:
    """``uri`` as it may be printed, logged or shown: the user info's password replaced by ``***``, a user without
    a password (``https://TOKEN@host``: a token used as the user name) replaced whole, and the values of query or
    fragment parameters named like a credential (``?password=``, ``?token=``, ``&sig=``...) replaced by ``***``."""
    try:
        parsed = urlsplit(uri)
        parsed.port  # noqa: B018 (raises ValueError on a malformed netloc)
    except ValueError:  # not parseable as a URL: hide whatever sits between // and @, and every parameter
        return re.sub(r"([?#&])([^=&#]*)=[^&#]*", r"\1\2=***", re.sub(r"//[^/?#]*@", "//***@", uri))
    netloc = parsed.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if colon else f"***@{host}"
    query, fragment = _redact_params(parsed.query), _redact_params(parsed.fragment)
    if (netloc, query, fragment) == (parsed.netloc, parsed.query, parsed.fragment):
        return uri
    return parsed._replace(netloc=netloc, query=query, fragment=fragment).geturl()


def uri_secrets(uri: str) -> set[str]:
    """What ``redact_uri`` hides in ``uri`` (the password, or a user without one; credential parameter values), each
    as written, decoded and encoded: to scrub them out of a text that quotes the URI, such as a client's error."""
    found = []
    userinfo = re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)@", uri)
    if userinfo:
        user, colon, password = userinfo.group(1).partition(":")
        found.append(password if colon else user)
    before_fragment, _, fragment = uri.partition("#")
    for params in (before_fragment.partition("?")[2], fragment):
        for part in params.split("&"):
            name, eq, value = part.partition("=")
            if eq and _SECRET_PARAM.search(unquote_plus(name)):
                found.append(value)
    variants = {v for s in found for v in (s, unquote(s), unquote_plus(s), quote(unquote(s), safe=""))}
    return {v for v in variants if v}


def scrub(text: str, uri: str) -> str:
    """``text`` with every secret of ``uri`` replaced by ``***`` (longest first, so no part of one survives)."""
    for secret in sorted(uri_secrets(uri), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


@dataclass(frozen=True)
class TrackingConfig(_Config):
    """MLflow tracking + registry settings (embedded SQLite by default, an ``mlflow server`` in the full stack)."""

    tracking_uri: str = opt("", f"MLflow tracking URI ('' -> $MLFLOW_TRACKING_URI or {DEFAULT_TRACKING_URI})")
    experiment: str = opt("dealrec", "MLflow experiment of the pruning and fine-tuning runs")
    model_name: str = opt("dealrec-bigrec", "registered model name")
    metric: str = opt("ndcg@20", "evaluation metric compared for promotion (higher is better), e.g. recall@10")
    margin: float = opt(
        0.0,
        "promote only when the 95% interval of challenger minus champion (paired over the same users) lies above "
        "this (negative: accept a fresher model at most |margin| worse)",
    )
    # Bounded: the waits double (10 tries from 600 s already wait 3.5 days), and time.sleep overflows on a huge one.
    retries: int = opt(3, "tries of each MLflow call when the tracking server is unreachable", ge=1, le=10)
    retry_wait_s: float = opt(2.0, "seconds between tries (doubled each time)", ge=0, le=600)
    request_timeout_s: int = opt(60, "HTTP timeout of one MLflow request", ge=1, le=3600)
    artifact_location: str = opt(
        "", "artifact root of a new experiment ('' -> <dir of the sqlite db>/mlartifacts, or the server's default)"
    )

    def validate(self) -> None:
        if self.tracking_uri:
            scheme = urlparse(self.tracking_uri).scheme.split("+")[0]
            _require(
                scheme != "file",
                f"tracking_uri={redact_uri(self.tracking_uri)!r}: MLflow 3 no longer serves a file:// store; use "
                "sqlite:///path/mlflow.db (or an MLflow server)",
            )
            _require(
                scheme in _SCHEMES,
                f"tracking_uri={redact_uri(self.tracking_uri)!r}: unsupported scheme {scheme!r} "
                f"(use {', '.join(_SCHEMES)})",
            )
        _require(bool(self.experiment.strip()), "experiment='': an MLflow experiment name is required")
        _require(
            bool(_MODEL_NAME_RE.match(self.model_name)),
            f"model_name={self.model_name!r}: a registered model name is required ([A-Za-z0-9_.-], letter or digit "
            "first)",
        )
        _require(bool(_METRIC_RE.match(self.metric)), f"metric={self.metric!r}: expected recall@K or ndcg@K")
        _require(-1.0 < self.margin < 1.0, f"margin={self.margin}: must be in (-1, 1) (metrics are in [0, 1])")
        _require(self.retries >= 1, f"retries={self.retries}: must be >= 1")
        _require(self.retry_wait_s >= 0, f"retry_wait_s={self.retry_wait_s}: must be >= 0")
        _require(self.request_timeout_s >= 1, f"request_timeout_s={self.request_timeout_s}: must be >= 1")

    def resolved_uri(self) -> str:
        """The tracking URI actually used: the field, else $MLFLOW_TRACKING_URI, else the embedded SQLite file.

        A relative SQLite path is made absolute, so a task that changes directory still writes the same file.
        """
        uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            uri = "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
        return uri

    def sqlite_path(self) -> Path | None:
        uri = self.resolved_uri()
        return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None

    def resolved_artifact_location(self) -> str | None:
        """Where a new experiment keeps artifacts: the field, beside the SQLite file, or the server's choice."""
        if self.artifact_location:
            return self.artifact_location
        db = self.sqlite_path()
        return (db.parent / "mlartifacts").as_uri() if db is not None else None

    def is_remote(self) -> bool:
        return urlparse(self.resolved_uri()).scheme in ("http", "https")
