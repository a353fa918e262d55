"""Write the bundled SeaweedFS server's identities file (its ``-s3.config``): one identity per role.

The ``s3-config`` job of docker-compose.yaml runs this before the ``s3`` service starts, which reads the file from
a volume. Three identities, each with only what its holder needs (SeaweedFS scopes an action to a bucket with
``Action:bucket``):

- admin: everything; held only by the jobs that configure the server and create the buckets;
- worker: read/write/list on the lake's bucket, nothing else (the Airflow tasks);
- mlflow: read/write/list on the artifact bucket, nothing else (the MLflow server, which proxies artifacts).

json.dumps writes the keys, so a key with a quote or a backslash cannot break or extend the file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# (identity, access-key variable, secret-key variable)
ROLES = (
    ("admin", "S3_ADMIN_ACCESS_KEY", "S3_ADMIN_SECRET_KEY"),
    ("worker", "S3_WORKER_ACCESS_KEY", "S3_WORKER_SECRET_KEY"),
    ("mlflow", "S3_MLFLOW_ACCESS_KEY", "S3_MLFLOW_SECRET_KEY"),
)
BUCKET_ACTIONS = ("Read", "Write", "List")


def bucket_name(uri_or_name: str) -> str:
    """``s3://bucket/prefix`` or ``bucket`` -> ``bucket``."""
    name = uri_or_name.removeprefix("s3://").split("/", 1)[0]
    if not name:
        raise SystemExit(f"s3_identities: {uri_or_name!r} names no bucket")
    return name


def identities(env: dict[str, str], lake: str, artifacts: str) -> dict:
    """The ``-s3.config`` document for the lake URI and MLflow's artifact URI."""
    lake_bucket, artifact_bucket = bucket_name(lake), bucket_name(artifacts)
    if lake_bucket == artifact_bucket:  # one bucket would give each identity the other's data
        raise SystemExit(
            f"s3_identities: the lake ({lake}) and MLflow's artifacts ({artifacts}) share bucket {lake_bucket!r}; "
            "give each its own bucket so the worker and MLflow identities stay apart"
        )
    scope = {
        "admin": ["Admin", "Read", "Write", "List", "Tagging"],
        "worker": [f"{a}:{lake_bucket}" for a in BUCKET_ACTIONS],
        "mlflow": [f"{a}:{artifact_bucket}" for a in BUCKET_ACTIONS],
    }
    out, seen = [], {}
    for role, key_var, secret_var in ROLES:
        key, secret = env.get(key_var, ""), env.get(secret_var, "")
        if not key or not secret:
            raise SystemExit(f"s3_identities: {key_var} and {secret_var} must both be set")
        if key in seen:  # SeaweedFS looks identities up by access key: a shared key would merge two roles
            raise SystemExit(f"s3_identities: {key_var} is the same access key as {seen[key]}; give each its own")
        seen[key] = key_var
        out.append(
            {
                "name": f"dealrec-{role}",
                "credentials": [{"accessKey": key, "secretKey": secret}],
                "actions": scope[role],
            }
        )
    return {"identities": out}


def write(path: Path, doc: dict) -> None:
    """Atomically, readable by its owner only (the s3 service reads it as root)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a .tmp left by an earlier run keeps its old mode through O_CREAT
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lake", help="the lake, s3://bucket/prefix (DEALREC_LAKE)")
    parser.add_argument("artifacts", help="MLflow's artifact destination, s3://bucket/prefix")
    parser.add_argument("--out", type=Path, required=True, help="where to write the identities file")
    args = parser.parse_args(argv)
    doc = identities(dict(os.environ), args.lake, args.artifacts)
    write(args.out, doc)
    print(
        f"s3 identities written to {args.out}: " + ", ".join(f"{i['name']} {i['actions']}" for i in doc["identities"])
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
