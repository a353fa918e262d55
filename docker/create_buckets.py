"""Create the stack's S3 buckets once the S3 server answers (the ``s3-init`` job of docker-compose.yaml).

Idempotent, so the job can run on every ``docker compose up``: a bucket that already exists and is ours is fine.
The endpoint and keys come from the same variables as every other service (``S3Config.from_env``), so pointing the
stack at a real S3 means changing .env, not this script.
"""

from __future__ import annotations

import argparse
import sys
import time

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError

from dealrec_tasks.config import S3Config


def bucket_name(uri_or_name: str) -> str:
    """``s3://bucket/prefix`` or ``bucket`` -> ``bucket``."""
    name = uri_or_name.removeprefix("s3://").split("/", 1)[0]
    if not name:
        raise SystemExit(f"create_buckets: {uri_or_name!r} names no bucket")
    return name


def create_buckets(names: list[str], cfg: S3Config, wait_s: float = 120.0) -> list[str]:
    """Create every bucket in ``names`` that does not exist yet; returns the ones created."""
    client = boto3.client(
        "s3",
        endpoint_url=cfg.endpoint_url,
        region_name=cfg.region,
        aws_access_key_id=cfg.access_key,
        aws_secret_access_key=cfg.secret_key,
        config=Config(retries={"max_attempts": 2, "mode": "standard"}),
    )
    deadline = time.monotonic() + wait_s
    while True:  # the server may still be starting: retry the cheapest call until it answers
        try:
            existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            break
        except (EndpointConnectionError, ClientError) as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"create_buckets: S3 at {cfg.endpoint_url or 'AWS'} not reachable: {exc}") from exc
            time.sleep(2)
    created = []
    for name in dict.fromkeys(names):
        if name in existing:
            continue
        kwargs = {}
        if cfg.region != "us-east-1":  # us-east-1 rejects an explicit location constraint
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": cfg.region}
        try:
            client.create_bucket(Bucket=name, **kwargs)
            created.append(name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                raise
    return created


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("buckets", nargs="+", help="bucket names or s3:// URIs (the bucket part is used)")
    parser.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the S3 server (default 120)")
    args = parser.parse_args(argv)
    names = [bucket_name(b) for b in args.buckets]
    created = create_buckets(names, S3Config.from_env(), wait_s=args.wait)
    print(f"buckets ready: {', '.join(dict.fromkeys(names))} (created: {', '.join(created) or 'none'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
