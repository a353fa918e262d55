"""Cumulative sequences stored as a log: each ingested day keeps only its own events (a delta), and a periodic
snapshot folds the deltas so far into the full per-user sequences.

Why: rewriting every user's whole sequence each day made ingest's cost follow the age of the lake, not the day's
logs. Applying deltas in day order to a snapshot gives exactly the sequences the full daily rewrite gave: that
rewrite was a stable sort by user of (yesterday's events, then today's in event order), and stable sorts by one key
compose, so one stable sort of (snapshot, delta 1, delta 2, ...) is the same table (tested against the rewrite).

Pure functions on tables; ``steps.readers`` finds the snapshot and the deltas, ``steps.data`` writes them.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from dealrec_tasks.data.ingest import append_to_sequences
from dealrec_tasks.data.schema import SEQUENCE_DELTA_SCHEMA, USER_VOCAB_SCHEMA


def delta_table(
    user_idx: np.ndarray, user_ids: np.ndarray | pa.Array, item_idx: np.ndarray, ts_us: np.ndarray
) -> pa.Table:
    """A day's accepted events, in event order: what the day adds to the sequences. ``user_ids``: Python strings,
    or an Arrow string array (ingest's: a day's ids as Python objects took ten times their text's memory)."""
    if not isinstance(user_ids, pa.Array):
        user_ids = pa.array(np.asarray(user_ids, dtype=object), pa.string())
    return pa.table(
        {
            "user_idx": pa.array(np.asarray(user_idx, dtype=np.int32), pa.int32()),
            "user_id": user_ids.cast(pa.string()),
            "item_idx": pa.array(np.asarray(item_idx, dtype=np.int32), pa.int32()),
            "ts": pa.array(np.asarray(ts_us, dtype=np.int64), pa.int64()).cast(SEQUENCE_DELTA_SCHEMA.field("ts").type),
        },
        schema=SEQUENCE_DELTA_SCHEMA,
    )


def users_of(base: pa.Table | None, deltas: list[pa.Table]) -> pa.Table:
    """The user map (user_id, user_idx) of a snapshot's users and of every user in the deltas, by index."""
    parts = [t.select(["user_id", "user_idx"]).cast(USER_VOCAB_SCHEMA) for t in ([base] if base else []) + deltas]
    if not parts:
        return USER_VOCAB_SCHEMA.empty_table()
    table = pa.concat_tables(parts)
    idx = table.column("user_idx").to_numpy()
    _, first = np.unique(idx, return_index=True)
    return table.take(pa.array(np.sort(first)))


def apply_deltas(base: pa.Table | None, deltas: list[pa.Table]) -> pa.Table:
    """The sequences after ``deltas`` (in day order) on top of ``base`` (full sequences, or None: nothing yet)."""
    events = pa.concat_tables(deltas) if deltas else SEQUENCE_DELTA_SCHEMA.empty_table()
    return append_to_sequences(
        base,
        users_of(base, deltas),
        events.column("user_idx").to_numpy(),
        events.column("item_idx").to_numpy(),
        events.column("ts").cast(pa.int64()).to_numpy(),
    )


def chain_sha256(previous: str | None, delta_sha256: str) -> str:
    """The identity of the sequences at a day: its delta's checksum chained to the previous day's identity, so two
    days hold the same sequences exactly when their chains agree (a snapshot says which chain it folded)."""
    return hashlib.sha256(f"{previous or ''}:{delta_sha256}".encode()).hexdigest()
