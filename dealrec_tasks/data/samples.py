"""Training samples s_u = (history x_u, target y_u) and evaluation rows, from per-user split sequences.

The paper splits Games by global time: training sequence, then validation items, then test items. The daily
pipeline does the same with day windows (``time_split``), so a replayed dataset ingested to its last day
reproduces the paper's samples exactly.
"""

from __future__ import annotations

import datetime as dt_mod
import hashlib

import numpy as np
import pyarrow as pa

from dealrec_tasks.data.arrow import flat_values, list_lengths
from dealrec_tasks.data.schema import IDX, SAMPLES_SCHEMA, SPLIT_SEQUENCES_SCHEMA

TRAIN, VALID, TEST = "train", "valid", "test"


def _lists_from_mask(lengths: np.ndarray, values: np.ndarray, keep: np.ndarray) -> pa.ListArray:
    """Per-row sublists of ``values`` where ``keep`` is true, preserving order."""
    row_of = np.repeat(np.arange(len(lengths)), lengths)
    counts = np.bincount(row_of[keep], minlength=len(lengths))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values[keep], IDX))


def time_split(sequences: pa.Table, dt: str, valid_days: int, test_days: int) -> pa.Table:
    """Split cumulative sequences at ``dt`` into train / valid / test by day windows ending at ``dt``.

    test: items on the last ``test_days`` days up to dt; valid: the ``valid_days`` before; train: earlier.
    """
    # In numpy's time range: a Python date has no day after 9999-12-31 (an OverflowError for that day's samples)
    end = np.datetime64(dt_mod.date.fromisoformat(dt), "us") + np.timedelta64(1, "D")
    test_start = end - np.timedelta64(test_days, "D")
    valid_start = test_start - np.timedelta64(valid_days, "D")
    lengths = list_lengths(sequences.column("items"))
    items = flat_values(sequences.column("items"))
    ts = flat_values(sequences.column("ts").cast(pa.list_(pa.timestamp("us")))).astype("datetime64[us]")
    in_day = ts < end
    return pa.table(
        {
            "user_idx": sequences.column("user_idx"),
            "user_id": sequences.column("user_id"),
            "train": _lists_from_mask(lengths, items, in_day & (ts < valid_start)),
            "valid": _lists_from_mask(lengths, items, in_day & (ts >= valid_start) & (ts < test_start)),
            "test": _lists_from_mask(lengths, items, in_day & (ts >= test_start)),
        },
        schema=SPLIT_SEQUENCES_SCHEMA,
    )


def sample_id(user_id: str, split: str, position: int) -> int:
    """Stable 63-bit id of (user, split, position of the target in the user's sequence).

    The same sample keeps its id across days; a user's next sample (one more item of history) gets a new one.
    """
    digest = hashlib.blake2b(f"{user_id}\x1f{split}\x1f{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF


def build_samples(split: pa.Table, max_len: int) -> pa.Table:
    """One ``train`` sample per user with a training item, plus ``valid``/``test`` rows for evaluation.

    train: history = train[:-1], target = train[-1] (history may be empty: the paper keeps those users);
    valid: history = train, target = first validation item (only when train is non-empty);
    test:  history = train + valid, targets = all test items (only when that history is non-empty).
    Histories keep their last ``max_len`` items.
    """
    out: dict[str, list] = {name: [] for name in SAMPLES_SCHEMA.names}
    user_idx = split.column("user_idx").to_pylist()
    user_ids = split.column("user_id").to_pylist()
    trains = split.column("train").to_pylist()
    valids = split.column("valid").to_pylist()
    tests = split.column("test").to_pylist()

    def emit(i: int, kind: str, history: list[int], targets: list[int]) -> None:
        out["sample_id"].append(sample_id(user_ids[i], kind, len(history)))
        out["user_idx"].append(user_idx[i])
        out["user_id"].append(user_ids[i])
        out["split"].append(kind)
        out["history"].append(history[-max_len:])
        out["target"].append(targets[0])
        out["targets"].append(targets)

    for i in range(len(user_ids)):
        train, valid, test = trains[i], valids[i], tests[i]
        if train:
            emit(i, TRAIN, train[:-1], train[-1:])
            if valid:
                emit(i, VALID, train, valid[:1])
        if test and (train or valid):
            emit(i, TEST, train + valid, test)
    return pa.table(out, schema=SAMPLES_SCHEMA)


def split_counts(samples: pa.Table) -> dict[str, int]:
    values = samples.column("split").to_pylist()
    return {k: values.count(k) for k in (TRAIN, VALID, TEST)}
