"""URIs (``file://``, ``s3://``, plain paths) and atomic, manifest-last partition writes.

Contract (DESIGN.md section 2): a partition ``<dataset>/dt=YYYY-MM-DD/`` is visible to readers only once its
``_manifest.json`` exists. A publish writes every file to a staging prefix, hides the old partition by deleting
its manifest, moves the staged files in, and writes the manifest last. A crash at any point leaves either the
old partition, or an invisible one that the retry overwrites. Publishing the same content again is a no-op.
Concurrent publishers of one partition take turns behind a lock object (``_locks/``, created exclusively: O_EXCL
locally, a conditional put on S3), so one run's manifest never lists another run's files.
"""

from __future__ import annotations

import datetime as dt_mod
import hashlib
import io
import json
import os
import posixpath
import socket
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from dealrec_tasks.config import S3Config, is_day, parse_dt
from dealrec_tasks.errors import InputError, PartitionNotFound

MANIFEST = "_manifest.json"
STAGING = "_staging"
LOCKS = "_locks"
MANIFEST_VERSION = 1
# A lock older than this is taken for a dead writer's (on another host we cannot ask whether it lives); a publish
# holds its lock only while it moves files, seconds to minutes.
LOCK_STALE_S = 600.0
LOCK_READ_ATTEMPTS = 5
READ_BLOCK = 1 << 20  # bytes a streamed read or copy takes at a time


def normalize_uri(uri: str) -> str:
    """Plain paths become absolute ``file://`` URIs; trailing slashes go."""
    if "://" not in uri:
        return "file://" + str(Path(uri).expanduser().resolve())
    return uri.rstrip("/") if not uri.endswith("://") else uri


def join_uri(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts if p)])


def shown_name(name: str) -> str:
    """A file or folder name for a note or an error: as it is when printable, else its repr, so a newline or a tab
    in it is seen and the message stays one line."""
    return name if name.isprintable() else repr(name)


def _local_kind(entry: os.DirEntry) -> str:
    """From the directory listing (lstat at most): a symlink is never followed, nothing is opened."""
    if entry.is_symlink():
        return "symlink"
    if entry.is_file(follow_symlinks=False):
        return "file"
    return "directory" if entry.is_dir(follow_symlinks=False) else "other"


@dataclass(frozen=True)
class SourceFile:
    """A stored file known by its URI and the sha256 and size of its bytes when it was read (``Storage.digest``).
    As a ``Lake.publish`` blob it is copied into the partition by stream, never held whole in memory, and refused
    if its bytes are no longer those (a file rewritten since)."""

    uri: str
    sha256: str
    size: int
    rows: int | None = None  # a table's Parquet file (``parquet_file``): listed with its rows, as a table is


class DigestReader:
    """A binary stream read through: the sha256 and the count of the bytes read so far. ``on_read(n)`` is told of
    each read (a progress bar)."""

    def __init__(self, stream: Any, on_read: Callable[[int], None] | None = None) -> None:
        self._stream, self._on_read = stream, on_read
        self._hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read() if n is None or n < 0 else self._stream.read(n)
        self._hash.update(data)
        self.size += len(data)
        if self._on_read is not None and data:
            self._on_read(len(data))
        return data

    def drain(self) -> None:
        """Read the rest (the checksum then covers the whole file)."""
        while self.read(READ_BLOCK):
            pass

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class Storage:
    """Byte, JSON and Parquet IO by URI over pyarrow filesystems (one per scheme, created lazily)."""

    def __init__(self, s3: S3Config | None = None):
        self.s3 = s3 or S3Config.from_env()
        self._s3fs: pafs.S3FileSystem | None = None
        self._boto_client: Any = None
        self._local = pafs.LocalFileSystem()

    # -- resolution ---------------------------------------------------------------------------------------
    def resolve(self, uri: str) -> tuple[pafs.FileSystem, str]:
        """The filesystem and path of ``uri``: everything after ``scheme://`` is a path, taken as it is.

        Never a URL parse: it cut ``#...`` (a fragment) and ``?...`` (a query) off, and dropped tabs and newlines,
        so a log named ``a.csv#.jsonl`` read the bytes of ``a.csv``, and ``a<TAB>.csv`` failed as missing.
        """
        uri = normalize_uri(uri)
        scheme, _, rest = uri.partition("://")
        if scheme.lower() == "file":
            host, _, path = rest.partition("/")
            if host not in ("", "localhost"):
                raise InputError(f"{uri}: a file:// URI names no host; use file:///absolute/path")
            return self._local, "/" + path
        if scheme.lower() == "s3":
            if not rest.partition("/")[0]:
                raise InputError(f"{uri}: an s3:// URI needs a bucket")
            return self._s3(), rest
        raise InputError(f"{uri}: unsupported scheme {scheme!r} (use file:// or s3://)")

    def _s3(self) -> pafs.S3FileSystem:
        if self._s3fs is None:
            kwargs: dict[str, Any] = {"region": self.s3.region}
            if self.s3.access_key:
                kwargs.update(access_key=self.s3.access_key, secret_key=self.s3.secret_key)
            if self.s3.endpoint_url:
                parsed = urlsplit(self.s3.endpoint_url)
                kwargs.update(endpoint_override=parsed.netloc, scheme=parsed.scheme)
            self._s3fs = pafs.S3FileSystem(**kwargs)
        return self._s3fs

    def _boto(self) -> Any:
        """boto3 for what pyarrow cannot do: conditional puts."""
        if self._boto_client is None:
            import boto3

            self._boto_client = boto3.client(
                "s3",
                endpoint_url=self.s3.endpoint_url,
                region_name=self.s3.region,
                aws_access_key_id=self.s3.access_key,
                aws_secret_access_key=self.s3.secret_key,
            )
        return self._boto_client

    # -- queries ------------------------------------------------------------------------------------------
    def exists(self, uri: str) -> bool:
        fs, path = self.resolve(uri)
        return fs.get_file_info(path).type != pafs.FileType.NotFound

    def list_dir(self, uri: str) -> list[str]:
        """Names (not URIs) directly under ``uri``; empty when it does not exist."""
        fs, path = self.resolve(uri)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            return []
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        return sorted(posixpath.basename(i.path.rstrip("/")) for i in infos)

    def entries(self, uri: str) -> dict[str, str]:
        """Name -> "file", "directory", "symlink" or "other" (a FIFO, a socket) of what is directly under ``uri``
        (empty when it does not exist), each name exactly as stored, read without opening anything.

        Why not ``list_dir``: opening a FIFO blocks forever and a symlink can lead outside the lake, so the kind
        comes from the listing (lstat at most). On S3 the listing is boto3's, which asks for URL-encoded keys and
        decodes them: pyarrow's parsed the XML as is, which turns a carriage return in a key into a newline, so
        that object could not be read back by the name listed.
        """
        fs, path = self.resolve(uri)
        if isinstance(fs, pafs.LocalFileSystem):
            if not os.path.isdir(path):
                return {}
            with os.scandir(path) as found:
                return {e.name: _local_kind(e) for e in found}
        bucket, _, key = path.partition("/")
        prefix = key.rstrip("/") + "/" if key else ""
        out: dict[str, str] = {}
        pages = self._boto().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/")
        for page in pages:
            for obj in page.get("Contents", []):
                if obj["Key"] != prefix:  # not a folder's own marker object
                    out[obj["Key"][len(prefix) :]] = "file"
            for sub in page.get("CommonPrefixes", []):
                out.setdefault(sub["Prefix"][len(prefix) : -1], "directory")
        return out

    def file_stats(self, uri: str) -> dict[str, tuple[int, str]]:
        """Relative path -> (size in bytes, version) of every regular file at any depth under ``uri``, from one
        listing (nothing opened; empty when ``uri`` does not exist).

        The version changes whenever the content may have: on S3 the ETag, locally the modification and change
        times (``st_ctime_ns`` cannot be set back by a copy that keeps the old mtime). Equal versions mean an
        unchanged file; a different version with an equal size may still be the same bytes (a chmod, a
        multipart re-upload), so a caller that must know compares a checksum of those files only.
        """
        fs, path = self.resolve(uri)
        out: dict[str, tuple[int, str]] = {}
        if isinstance(fs, pafs.LocalFileSystem):
            for top, _dirs, files in os.walk(path):  # never follows a symlinked folder
                for name in files:
                    st = os.lstat(os.path.join(top, name))
                    if stat.S_ISREG(st.st_mode):
                        rel = posixpath.relpath(os.path.join(top, name), path)
                        out[rel] = (st.st_size, f"mtime {st.st_mtime_ns} ctime {st.st_ctime_ns}")
            return out
        bucket, _, key = path.partition("/")
        prefix = key.rstrip("/") + "/" if key else ""
        for page in self._boto().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if obj["Key"] != prefix and not obj["Key"].endswith("/"):
                    out[obj["Key"][len(prefix) :]] = (int(obj["Size"]), f"etag {obj['ETag']}")
        return out

    # -- bytes --------------------------------------------------------------------------------------------
    def read_bytes(self, uri: str) -> bytes:
        fs, path = self.resolve(uri)
        try:
            with fs.open_input_stream(path) as f:
                return f.read()
        except FileNotFoundError:
            raise InputError(f"{uri}: no such file") from None

    @contextmanager
    def open_read(self, uri: str, seekable: bool = False) -> Iterator[pa.NativeFile]:
        """The file at ``uri`` as a binary stream (``read(n)`` until ``b""``), or with ``seekable`` as a
        random-access file (Parquet reads its footer first): what a reader of a file that need not fit in memory
        uses instead of ``read_bytes``."""
        fs, path = self.resolve(uri)
        try:
            f = fs.open_input_file(path) if seekable else fs.open_input_stream(path)
        except FileNotFoundError:
            raise InputError(f"{uri}: no such file") from None
        with f:
            yield f

    def digest(self, uri: str) -> SourceFile:
        """The file's sha256 and size, read as a stream."""
        with self.open_read(uri) as f:
            reader = DigestReader(f)
            reader.drain()
        return SourceFile(uri, reader.hexdigest(), reader.size)

    def copy_verified(self, source: SourceFile, uri: str) -> None:
        """Copy ``source`` to ``uri`` by stream (atomic like ``write_bytes``), refused when the bytes copied are not
        the ones ``source`` names (the file was rewritten since it was read): nothing is left at ``uri`` then."""
        fs, path = self.resolve(uri)
        local = isinstance(fs, pafs.LocalFileSystem)
        target = f"{path}.tmp-{uuid.uuid4().hex}" if local else path
        if local:
            os.makedirs(posixpath.dirname(path), exist_ok=True)
        with self.open_read(source.uri) as f:
            reader = DigestReader(f)
            with open(target, "wb") if local else fs.open_output_stream(target) as out:
                while data := reader.read(READ_BLOCK):
                    out.write(data)
                if local:
                    out.flush()
                    os.fsync(out.fileno())
        if (reader.hexdigest(), reader.size) != (source.sha256, source.size):
            fs.delete_file(target)
            raise InputError(
                f"{source.uri}: changed while it was being copied ({reader.size:,} bytes now, {source.size:,} when "
                "read); run the step again"
            )
        if local:
            os.replace(target, path)

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Atomic: a reader sees the old object or the new one, never a prefix of it.

        Local files are written beside the target and renamed; S3 objects appear only when the upload completes.
        """
        fs, path = self.resolve(uri)
        if isinstance(fs, pafs.LocalFileSystem):
            os.makedirs(posixpath.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        else:
            with fs.open_output_stream(path) as f:
                f.write(data)

    def create_exclusive(self, uri: str, data: bytes) -> bool:
        """Create ``uri`` holding ``data`` only if it does not exist yet: True for the one caller that created it."""
        fs, path = self.resolve(uri)
        if isinstance(fs, pafs.LocalFileSystem):
            os.makedirs(posixpath.dirname(path), exist_ok=True)
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        from botocore.exceptions import ClientError

        bucket, _, key = path.partition("/")
        try:
            self._boto().put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
        return True

    def replace_if_unchanged(self, uri: str, expected: bytes, data: bytes) -> bool:
        """Replace ``uri`` with ``data`` only if it still holds exactly ``expected``: a compare-and-swap, True for
        the one caller that swapped. On S3 a conditional put on the object's ETag; locally the compare and the
        rename happen under an exclusive ``flock`` of the folder (released by the kernel if the process dies)."""
        fs, path = self.resolve(uri)
        if isinstance(fs, pafs.LocalFileSystem):
            import fcntl

            folder = os.open(posixpath.dirname(path), os.O_RDONLY)
            try:
                fcntl.flock(folder, fcntl.LOCK_EX)
                try:
                    with open(path, "rb") as f:
                        if f.read() != expected:
                            return False
                except FileNotFoundError:
                    return False
                self.write_bytes(uri, data)
                return True
            finally:
                os.close(folder)  # releases the flock
        from botocore.exceptions import ClientError

        bucket, _, key = path.partition("/")
        client = self._boto()
        try:
            current = client.get_object(Bucket=bucket, Key=key)
            if current["Body"].read() != expected:
                return False
            client.put_object(Bucket=bucket, Key=key, Body=data, IfMatch=current["ETag"])
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404", "PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
        return True

    def modified_at(self, uri: str) -> float | None:
        """Seconds since the epoch of the last write, None when ``uri`` does not exist."""
        fs, path = self.resolve(uri)
        info = fs.get_file_info(path)
        return None if info.type == pafs.FileType.NotFound or info.mtime is None else info.mtime.timestamp()

    def delete(self, uri: str) -> None:
        fs, path = self.resolve(uri)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(path)
        elif info.type == pafs.FileType.File:
            fs.delete_file(path)

    def move(self, src: str, dst: str) -> None:
        fs, src_path = self.resolve(src)
        _, dst_path = self.resolve(dst)
        if isinstance(fs, pafs.LocalFileSystem):
            os.makedirs(posixpath.dirname(dst_path), exist_ok=True)
        fs.move(src_path, dst_path)

    # -- typed helpers ------------------------------------------------------------------------------------
    def read_json(self, uri: str) -> Any:
        raw = self.read_bytes(uri)
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InputError(f"{uri}: invalid JSON ({exc})") from None

    def write_json(self, uri: str, obj: Any) -> None:
        self.write_bytes(uri, json_bytes(obj))

    def read_table(self, uri: str) -> pa.Table:
        return parquet_from_bytes(self.read_bytes(uri), uri)

    def write_table(self, uri: str, table: pa.Table) -> None:
        self.write_bytes(uri, parquet_bytes(table))


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()


def parquet_bytes(table: pa.Table) -> bytes:
    """Deterministic Parquet serialisation, so equal tables give equal checksums."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def parquet_file(table: pa.Table, path: str) -> SourceFile:
    """``table`` written to the local file ``path``, byte for byte as ``parquet_bytes`` serialises it, as a
    ``SourceFile`` with its rows: ``Lake.publish`` takes it as a blob and lists it as it lists a table, without the
    file ever in memory (a large day's sequence delta is hundreds of MB; serialised in memory it was held twice)."""
    pq.write_table(table, path, compression="zstd")
    with open(path, "rb") as f:
        reader = DigestReader(f)
        reader.drain()
    return SourceFile(normalize_uri(path), reader.hexdigest(), reader.size, table.num_rows)


def parquet_from_bytes(data: bytes, name: str = "<bytes>") -> pa.Table:
    """Read with ``ParquetFile`` on the calling thread: ``pq.read_table`` hands the buffer to pyarrow's thread pool,
    and a step that failed right after a read then sometimes aborted at interpreter exit (exit 134, not its one-line
    error) while a pool thread released the buffer."""
    try:
        return pq.ParquetFile(pa.BufferReader(data)).read()
    except pa.ArrowInvalid as exc:
        raise InputError(f"{name}: not a readable Parquet file ({exc})") from None


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_entry(data: bytes | SourceFile) -> dict[str, Any]:
    """A manifest's entry for a file: checksum and size (a ``SourceFile``'s as it was read, and its rows when it is
    a table's Parquet file)."""
    if isinstance(data, SourceFile):
        return {"sha256": data.sha256, "bytes": data.size} | ({"rows": data.rows} if data.rows is not None else {})
    return {"sha256": sha256(data), "bytes": len(data)}


# ---------------------------------------------------------------------------------------------------------
# Partitions
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Published:
    """Outcome of a publish: where, and whether anything was written."""

    uri: str
    changed: bool
    manifest: dict[str, Any]


def _checked_manifest(manifest: Any, uri: str) -> dict[str, Any]:
    """A manifest is an object whose ``files`` map names to entries with a sha256; anything else (``[]``,
    ``"files": null``, a hand edit) is a corrupt partition, refused with its URI instead of a TypeError later."""
    problem = None
    if not isinstance(manifest, dict):
        problem = f"a JSON {type(manifest).__name__}, not an object"
    elif not isinstance(manifest.get("files"), dict):
        problem = f"'files' is {json.dumps(manifest.get('files'))}, not an object"
    else:
        bad = [
            name
            for name, entry in manifest["files"].items()
            if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str)
        ]
        if bad:
            problem = f"file entries without a sha256: {sorted(bad)[:3]}"
    if problem:
        raise InputError(f"{uri}: not a valid manifest ({problem}); the partition is corrupt, republish it")
    return manifest


def _as_stored(obj: Any) -> Any:
    """``obj`` after the JSON round trip a manifest gives it (tuples become lists, keys strings)."""
    return json.loads(json_bytes(obj))


def _inputs_entry(inputs: dict[str, Any]) -> dict[str, Any]:
    return {"inputs": inputs} if inputs else {}


def _lock_record(raw: bytes) -> dict[str, Any]:
    """A lock object's holder record; empty when it is not one (a lock file cut short)."""
    try:
        record = json.loads(raw)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_partition_name(name: str) -> bool:
    """``dt=YYYY-MM-DD`` exactly."""
    return name.startswith("dt=") and is_day(name[3:])


def partition_uri(root: str, dataset: str, dt: str | None) -> str:
    """``<root>/<dataset>/dt=<D>``; ``dt`` must be a date, so a crafted one cannot reach another partition."""
    if dt:
        parse_dt(dt)
    return join_uri(normalize_uri(root), dataset, f"dt={dt}" if dt else "")


class Lake:
    """The lake layout (``<root>/<dataset>/dt=<D>/``) plus atomic publish and manifest-checked reads."""

    def __init__(self, root: str, storage: Storage | None = None):
        self.root = normalize_uri(root)
        self.storage = storage or Storage()

    def uri(self, *parts: str) -> str:
        return join_uri(self.root, *parts)

    def partition(self, dataset: str, dt: str | None = None) -> str:
        return partition_uri(self.root, dataset, dt)

    def locate(self, uri: str) -> tuple[str, str | None]:
        """(dataset, dt) of a partition URI of this lake (e.g. one an asset event announced), refused by name when
        it is outside this lake or not a partition path, so an announced URI cannot make a step read elsewhere."""
        uri = normalize_uri(uri)
        prefix = self.root.rstrip("/") + "/"
        rest = uri[len(prefix) :] if uri.startswith(prefix) else ""
        parts = rest.split("/")
        if not rest or any(p in ("", ".", "..") for p in parts):
            raise InputError(f"{uri}: not a partition of the lake {self.root}")
        if parts[-1].startswith("dt="):
            dt = parts[-1][3:]
            parse_dt(dt, f"{uri}: dt")
            return "/".join(parts[:-1]), dt
        return rest, None

    # -- reading ------------------------------------------------------------------------------------------
    def manifest(self, dataset: str, dt: str | None = None) -> dict[str, Any] | None:
        """The partition's manifest, None when unpublished; one that is not a manifest is refused by name."""
        uri = join_uri(self.partition(dataset, dt), MANIFEST)
        if not self.storage.exists(uri):
            return None
        return _checked_manifest(self.storage.read_json(uri), uri)

    def current(
        self, dataset: str, dt: str | None, config: dict[str, Any], inputs: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """The partition's manifest when it was published with ``config`` from ``inputs`` (both compared as stored,
        i.e. after a JSON round trip), else None: how every step knows its work is already done, whichever entry
        point (CLI, DAG, demo) calls it. ``inputs``: the identity of what the step read (checksums of the input
        files, of a model), recorded by ``publish(..., inputs=)``."""
        manifest = self.manifest(dataset, dt)
        if manifest is None or manifest.get("config") != _as_stored(config):
            return None
        if manifest.get("inputs", {}) != _as_stored(inputs or {}):
            return None
        return manifest

    def require_manifest(self, dataset: str, dt: str | None = None) -> dict[str, Any]:
        manifest = self.manifest(dataset, dt)
        if manifest is None:
            from dealrec_tasks.catalogue import writer

            where = self.partition(dataset, dt)
            raise PartitionNotFound(
                f"{where}: no published partition (no {MANIFEST}); run the step that writes it ({writer(dataset)})"
            )
        return manifest

    def manifest_bytes(self, dataset: str, dt: str | None = None) -> bytes:
        """The partition's manifest as stored (what a digest of "these inputs" covers); refused when unpublished."""
        self.require_manifest(dataset, dt)  # the clear "not published, run X" error
        return self.storage.read_bytes(join_uri(self.partition(dataset, dt), MANIFEST))

    def file_sha256(self, dataset: str, dt: str | None, name: str) -> str:
        """The checksum a published partition's manifest lists for ``name``: an input's identity."""
        manifest = self.require_manifest(dataset, dt)
        entry = manifest["files"].get(name)
        if entry is None:
            raise InputError(f"{self.partition(dataset, dt)}: no {name} in its manifest ({sorted(manifest['files'])})")
        return entry["sha256"]

    def read_verified_json(
        self, dataset: str, dt: str | None, name: str, manifest: dict[str, Any] | None = None
    ) -> tuple[Any, bytes]:
        """A JSON file of a published partition, parsed only after its checksum matched; also its bytes."""
        data = self.read_verified_bytes(dataset, dt, name, manifest)
        try:
            return json.loads(data), data
        except ValueError as exc:
            raise InputError(f"{join_uri(self.partition(dataset, dt), name)}: invalid JSON ({exc})") from None

    def read_verified_torch(
        self, dataset: str, dt: str | None, name: str, remedy: str, manifest: dict[str, Any] | None = None
    ) -> Any:
        """``torch.load`` (weights_only) of a partition's file, only once its bytes match the manifest's sha256.

        Why: torch.load of a file with a flipped byte mostly succeeds (24 of 25 random flips of a solve.pt: the
        byte lands in tensor data) and returns wrong numbers, so a damaged file must be an InputError naming it
        (and ``remedy``) before torch sees it.
        """
        import torch

        data = self.read_verified_bytes(dataset, dt, name, manifest, remedy)
        try:
            return torch.load(io.BytesIO(data), weights_only=True)
        except Exception as exc:  # checksum fine, yet unreadable here (e.g. a torch that cannot read its format)
            uri = join_uri(self.partition(dataset, dt), name)
            raise InputError(f"{uri}: not a loadable torch file ({type(exc).__name__}: {exc}); {remedy}") from None

    def read(self, dataset: str, dt: str | None, name: str) -> pa.Table:
        """Read one table of a published partition, verifying its checksum against the manifest."""
        uri = join_uri(self.partition(dataset, dt), name)
        return parquet_from_bytes(self.read_verified_bytes(dataset, dt, name), uri)

    def read_verified_bytes(
        self,
        dataset: str,
        dt: str | None,
        name: str,
        manifest: dict[str, Any] | None = None,
        remedy: str = "the partition is corrupt, republish it",
    ) -> bytes:
        """One file of a published partition, only if its sha256 is the manifest's: what a reader decides on (a
        metric, a weight file) or passes on (an MLflow artifact) is what the step published, not an edit since.

        ``manifest``: check against this one (the manifest the caller already read and acts on) instead of
        reading it again; ``remedy``: what a checksum error tells to do. ``name`` comes from a manifest, so it must
        be a plain file name of the partition: an entry such as ``../x`` or ``/etc/x`` would read, or be copied to,
        a path outside it.
        """
        part = self.partition(dataset, dt)
        manifest = manifest if manifest is not None else self.require_manifest(dataset, dt)
        if not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\\x00"):
            raise InputError(
                f"{join_uri(part, MANIFEST)}: file entry {name!r} is not a plain file name inside the partition "
                "(no '/', '\\', '..' or NUL); refusing it, republish the partition"
            )
        entry = (manifest.get("files") or {}).get(name)
        uri = join_uri(part, name)
        if not isinstance(entry, dict) or "sha256" not in entry:
            listed = sorted(manifest.get("files") or {})
            raise InputError(f"{uri}: not listed in the partition's manifest (files: {listed})")
        data = self.storage.read_bytes(uri)
        if sha256(data) != entry["sha256"]:
            raise InputError(f"{uri}: checksum differs from the manifest; {remedy}")
        return data

    def partitions(self, dataset: str) -> list[str]:
        """Dates of the published (manifest-carrying) partitions of ``dataset``, ascending.

        A folder named ``dt=`` + something that is not exactly a day (``dt=2026-01-07.bak``, a copy someone kept)
        is no partition, manifest or not: as a "day" it sorted after the real one and broke every reader that
        parses days (``stray_notes`` names it).
        """
        out = []
        for name in self.storage.list_dir(self.uri(dataset)):
            if _is_partition_name(name) and self.storage.exists(join_uri(self.uri(dataset), name, MANIFEST)):
                out.append(name[3:])
        return sorted(out)

    def stray_notes(self, *datasets: str) -> list[str]:
        """One note per folder ``dt=...`` of ``datasets`` that ``partitions`` ignores (not exactly a day); a listing
        each, nothing opened."""
        return [
            f"{shown_name(self.uri(dataset, name))}: ignored, not a partition dt=YYYY-MM-DD"
            for dataset in datasets
            for name in self.storage.list_dir(self.uri(dataset))
            if name.startswith("dt=") and not _is_partition_name(name)
        ]

    # -- writing ------------------------------------------------------------------------------------------
    def publish(
        self,
        dataset: str,
        dt: str | None,
        tables: dict[str, pa.Table],
        *,
        config: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        blobs: dict[str, bytes | SourceFile] | None = None,
        inputs: dict[str, Any] | None = None,
    ) -> Published:
        """Write a partition atomically, manifest last; a no-op when files, config and inputs are unchanged.

        ``tables`` become Parquet files named by their key; ``blobs`` are other files (plots, JSON) written as is,
        or a ``SourceFile`` copied by stream (a log file kept whole, which need not fit in memory).
        ``inputs`` (the identity of what the step read: checksums) is what ``current`` compares, beside the config.
        ``extra`` (counts, source snapshot) goes into the manifest but does not decide whether content changed.
        """
        config = _as_stored(config or {})  # so tuples compare equal to their lists
        inputs = _as_stored(inputs or {})
        files: dict[str, bytes | SourceFile] = {name: parquet_bytes(t) for name, t in tables.items()}
        files.update(blobs or {})
        entries = {
            name: _file_entry(data) | ({"rows": tables[name].num_rows} if name in tables else {})
            for name, data in files.items()
        }
        target = self.partition(dataset, dt)
        with self._partition_lock(dataset, dt):
            old = self.manifest(dataset, dt)
            if (
                old is not None
                and old.get("files") == entries
                and old.get("config") == config
                and old.get("inputs", {}) == inputs
            ):
                return Published(target, False, old)
            return self._replace(dataset, dt, target, files, entries, config, (extra or {}) | _inputs_entry(inputs))

    def _replace(
        self,
        dataset: str,
        dt: str | None,
        target: str,
        files: dict[str, bytes | SourceFile],
        entries: dict[str, Any],
        config: dict[str, Any],
        extra: dict[str, Any] | None,
    ) -> Published:
        """Stage, hide, move, reveal; the caller holds the partition's lock."""

        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "dataset": dataset,
            "dt": dt,
            "uri": target,
            "created_at": dt_mod.datetime.now(dt_mod.UTC).isoformat(timespec="seconds"),
            "config": config,
            "files": entries,
            **(extra or {}),
        }
        st = self.storage
        # Staging lives outside every partition, so cleaning the target never touches it. Leftovers of this
        # partition are from a writer that died (a killed task): the lock lets one writer at a time in, so the
        # next one clears them.
        prefix = f"{dataset.replace('/', '.')}.{dt or 'all'}-"
        for name in st.list_dir(self.uri(STAGING)):
            if name.startswith(prefix) and len(name) == len(prefix) + 32:  # + a uuid4 hex
                st.delete(self.uri(STAGING, name))
        staging = self.uri(STAGING, f"{prefix}{uuid.uuid4().hex}")
        for name, data in files.items():
            if isinstance(data, SourceFile):
                st.copy_verified(data, join_uri(staging, name))
            else:
                st.write_bytes(join_uri(staging, name), data)
        # Hide, replace, reveal: without a manifest nobody reads the half-replaced directory.
        st.delete(join_uri(target, MANIFEST))
        for name in st.list_dir(target):
            if name not in files:
                st.delete(join_uri(target, name))
        for name in files:
            st.move(join_uri(staging, name), join_uri(target, name))
        st.write_json(join_uri(target, MANIFEST), manifest)
        st.delete(staging)
        return Published(target, True, manifest)

    def withdraw(self, dataset: str, dt: str | None) -> bool:
        """Hide a published partition (its manifest goes; files stay until the next publish replaces them), for
        derived data that went stale: readers then get 'no published partition; run the step that writes it'.
        True when there was one to hide."""
        with self._partition_lock(dataset, dt):
            uri = join_uri(self.partition(dataset, dt), MANIFEST)
            existed = self.storage.exists(uri)
            self.storage.delete(uri)
            return existed

    def remove(self, dataset: str, dt: str | None) -> None:
        """Delete a partition (manifest first, so no reader takes the half-deleted folder for published)."""
        with self._partition_lock(dataset, dt):
            target = self.partition(dataset, dt)
            self.storage.delete(join_uri(target, MANIFEST))
            self.storage.delete(target)

    # -- concurrency --------------------------------------------------------------------------------------
    def lock_uri(self, dataset: str, dt: str | None) -> str:
        return self.uri(LOCKS, f"{dataset.replace('/', '.')}.{dt or 'all'}.lock")

    @contextmanager
    def _partition_lock(self, dataset: str, dt: str | None) -> Iterator[None]:
        """Hold the partition's lock object while publishing; wait for a live holder, take a dead one's over.

        A takeover is a compare-and-swap of the dead holder's exact bytes for ours: of several writers that found
        the same dead lock, one swaps and the others see a live holder (deleting it and creating a new one let a
        second writer delete the first one's fresh lock, and both were inside; issue 29, item 10).
        """
        st, uri = self.storage, self.lock_uri(dataset, dt)
        owner = uuid.uuid4().hex
        token = json_bytes({"owner": owner, "host": socket.gethostname(), "pid": os.getpid(), "at": time.time()})
        delay = 0.02
        while not st.create_exclusive(uri, token):
            raw = self._lock_bytes(uri)
            if isinstance(raw, bytes) and self._lock_is_stale(uri, raw):
                if st.replace_if_unchanged(uri, raw, token):
                    break
                continue  # another writer took it over first: a live holder now
            if raw is None:  # released meanwhile: create it at once
                continue
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
        try:
            yield
        finally:
            raw = self._lock_bytes(uri)
            if raw and _lock_record(raw).get("owner") == owner:  # never release a lock taken over
                st.delete(uri)

    def _lock_bytes(self, uri: str) -> bytes | None | bool:
        """The lock object's bytes; None when it is gone, False when it could not be read.

        A read that races the holder's release can fail in transport rather than as "not found" (an S3 body cut
        off mid-stream): it is retried, and a lock still unreadable counts as held, so a publish waits rather
        than fails.
        """
        for attempt in range(LOCK_READ_ATTEMPTS):
            try:
                return self.storage.read_bytes(uri)
            except InputError:  # released meanwhile
                return None
            except OSError:
                time.sleep(0.05 * (attempt + 1))
        return False

    def _lock_is_stale(self, uri: str, raw: bytes) -> bool:
        """A lock is stale when its holder was a process of this host that is gone (killed), or when it is older
        than ``LOCK_STALE_S`` (a holder elsewhere, or a lock file cut short)."""
        holder = _lock_record(raw)
        if isinstance(holder.get("pid"), int) and isinstance(holder.get("at"), float):
            if holder.get("host") == socket.gethostname() and not _pid_alive(holder["pid"]):
                return True
            return time.time() - holder["at"] > LOCK_STALE_S
        written = self.storage.modified_at(uri)
        return written is not None and time.time() - written > LOCK_STALE_S
