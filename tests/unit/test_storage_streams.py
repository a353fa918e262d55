"""Streamed reads and copies (issue 29, item 12): a file read in blocks, checksummed as it is read, and copied into
a partition without being held whole, on file:// and s3:// (moto server over real HTTP)."""

from __future__ import annotations

import hashlib
import os

import pytest

from dealrec_tasks.errors import InputError
from dealrec_tasks.storage import DigestReader, Lake, SourceFile, join_uri

DATA = os.urandom(3 * (1 << 20) + 12345)  # more than one READ_BLOCK


def test_open_read_streams_and_digest_checksums(lake: Lake):
    uri = lake.uri("raw", "big.bin")
    lake.storage.write_bytes(uri, DATA)
    with lake.storage.open_read(uri) as f:
        reader = DigestReader(f)
        blocks = []
        while block := reader.read(1 << 16):
            blocks.append(block)
    assert b"".join(blocks) == DATA and max(map(len, blocks)) == 1 << 16
    assert (reader.hexdigest(), reader.size) == (hashlib.sha256(DATA).hexdigest(), len(DATA))
    assert lake.storage.digest(uri) == SourceFile(uri, hashlib.sha256(DATA).hexdigest(), len(DATA))
    with lake.storage.open_read(uri, seekable=True) as f:
        f.seek(len(DATA) - 5)
        assert f.read(5) == DATA[-5:]
    with pytest.raises(InputError, match="no such file"):
        lake.storage.digest(lake.uri("raw", "missing.bin"))


def test_copy_verified_copies_or_refuses_a_changed_source(lake: Lake):
    src = lake.uri("raw", "big.bin")
    lake.storage.write_bytes(src, DATA)
    source = lake.storage.digest(src)
    dst = lake.uri("copies", "big.bin")
    lake.storage.copy_verified(source, dst)
    assert lake.storage.read_bytes(dst) == DATA
    lake.storage.write_bytes(src, DATA[::-1])  # rewritten after it was checksummed: same size, other bytes
    other = lake.uri("copies", "other.bin")
    with pytest.raises(InputError, match="changed while it was being copied"):
        lake.storage.copy_verified(source, other)
    assert not lake.storage.exists(other) and lake.storage.list_dir(lake.uri("copies")) == ["big.bin"]


def test_a_source_file_blob_is_published_as_its_bytes_would_be(lake: Lake):
    src = lake.uri("raw", "kept.csv")
    lake.storage.write_bytes(src, DATA)
    by_bytes = lake.publish("kept", "2026-01-01", {}, blobs={"files/kept.csv": DATA})
    by_stream = lake.publish("kept", "2026-01-02", {}, blobs={"files/kept.csv": lake.storage.digest(src)})
    assert by_stream.manifest["files"] == by_bytes.manifest["files"]
    again = lake.publish("kept", "2026-01-02", {}, blobs={"files/kept.csv": lake.storage.digest(src)})
    assert not again.changed
    assert lake.storage.read_bytes(join_uri(lake.partition("kept", "2026-01-02"), "files/kept.csv")) == DATA
