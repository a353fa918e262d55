"""Shared fixtures: a real S3 HTTP endpoint (moto server on loopback) and lakes on both URI schemes."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from dealrec_tasks.config import S3Config
from dealrec_tasks.storage import Lake, Storage

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DEALREC_SHARED", REPO.parent / "shared"))
GAMES = SHARED / "data" / "games"

S3_KEY, S3_SECRET = "testing", "testing"


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 (real HTTP), shared by the session and stopped at its end."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def s3_config(s3_endpoint) -> S3Config:
    return S3Config(endpoint_url=s3_endpoint, region="us-east-1", access_key=S3_KEY, secret_key=S3_SECRET)


@pytest.fixture
def s3_client(s3_config):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=s3_config.endpoint_url,
        region_name=s3_config.region,
        aws_access_key_id=S3_KEY,
        aws_secret_access_key=S3_SECRET,
    )


@pytest.fixture
def s3_bucket(s3_client) -> str:
    name = f"lake-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["file", "s3"])
def lake(request, tmp_path) -> Lake:
    """The same tests on a local folder and on an S3 bucket behind the moto server."""
    if request.param == "file":
        return Lake(str(tmp_path / "lake"), Storage(S3Config()))
    bucket = request.getfixturevalue("s3_bucket")
    return Lake(f"s3://{bucket}/lake", Storage(request.getfixturevalue("s3_config")))


@pytest.fixture
def local_lake(tmp_path) -> Lake:
    return Lake(str(tmp_path / "lake"), Storage(S3Config()))


def needs_games():
    return pytest.mark.skipif(not (GAMES / "sequential_train.txt").exists(), reason=f"{GAMES} not present")


def synthetic_lake(root, dt: str, max_len: int, **synthetic) -> Lake:
    """A small lake for step tests: synthetic logs ingested day by day, samples at ``dt``."""
    from dealrec_tasks import steps
    from dealrec_tasks.config import IngestConfig, SamplesConfig, SyntheticConfig

    lake = Lake(str(root))
    steps.synthetic(lake, SyntheticConfig(**synthetic))
    for day in steps.pending_days(lake):
        steps.ingest(lake, day, IngestConfig())
    steps.samples(lake, dt, SamplesConfig(max_len=max_len))
    return lake
