"""The ingest path before sequence deltas, as a reference: every day rewrote the whole cumulative sequences
(yesterday's table + today's events, ``append_to_sequences``) with an append-only vocab. Tests check that the
lake's deltas and snapshots read back as exactly these tables, and give exactly these samples, at every day."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from dealrec_tasks.catalogue import INTERACTIONS
from dealrec_tasks.data import ingest as ingest_mod
from dealrec_tasks.data import samples as samples_mod
from dealrec_tasks.data.schema import SAMPLES_SCHEMA
from dealrec_tasks.storage import MANIFEST, Lake, join_uri


def _day_logs(lake: Lake, dt: str) -> list[ingest_mod.ParsedLog]:
    folder = lake.partition(INTERACTIONS, dt)
    names = sorted(n for n in lake.storage.list_dir(folder) if n != MANIFEST and ingest_mod.is_log_file(n))
    return [ingest_mod.parse_log_file(n, lake.storage.read_bytes(join_uri(folder, n))) for n in names]


def _indices(vocab: dict[str, int], ids: list[str]) -> np.ndarray:
    """A plain dict vocab: new ids numbered from len+1 in order of first appearance."""
    for i in ids:
        vocab.setdefault(i, len(vocab) + 1)
    return np.array([vocab[i] for i in ids], dtype=np.int32)


def full_rewrite_sequences(lake: Lake, days: list[str]) -> dict[str, pa.Table]:
    """The cumulative sequences at each day, rebuilt from the raw logs the way ingest did before deltas."""
    users: dict[str, int] = {}
    items: dict[str, int] = {}
    seqs, out = None, {}
    for dt in days:
        day = ingest_mod.validate_day(_day_logs(lake, dt), dt)
        user_idx = _indices(users, day.clean["user_id"].tolist())
        item_idx = _indices(items, day.clean["item_id"].tolist())
        user_map = pa.table({"user_id": list(users), "user_idx": pa.array(list(users.values()), pa.int32())})
        ts = day.clean["ts"].dt.as_unit("us").astype("int64").to_numpy()
        seqs = ingest_mod.append_to_sequences(seqs, user_map, user_idx, item_idx, ts)
        out[dt] = seqs
    return out


def reference_samples(sequences: pa.Table, dt: str, max_len: int, valid_days: int, test_days: int) -> pa.Table:
    split = samples_mod.time_split(sequences, dt, valid_days, test_days)
    return samples_mod.build_samples(split, max_len).cast(SAMPLES_SCHEMA)
