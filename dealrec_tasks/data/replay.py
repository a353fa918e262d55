"""Replay a split dataset as daily interaction logs, so the daily pipeline can be exercised on real data.

The days are invented (the paper's data has order, not time): every user starts on a random training day and
their training items are spread in order from there to the end of the training days; all validation items
fall on day ``days-1`` and all test items on the last day. Ingesting every day and splitting at the last one
with one validation day and one test day therefore gives back the paper's split exactly.
"""

from __future__ import annotations

import datetime as dt_mod

import numpy as np
import pandas as pd
import pyarrow as pa

from dealrec_tasks.data.arrow import flat_values, list_lengths
from dealrec_tasks.data.schema import INTERACTIONS_SCHEMA

DAY_US = 86_400_000_000
REPLAY_NOTE = "REPLAY: these daily partitions are cut from a dataset without timestamps; the days are not real time"


def replay_days(sequences: pa.Table, item_vocab: pa.Table, days: int, start: str, seed: int) -> dict[str, pa.Table]:
    """Interactions per day (``YYYY-MM-DD`` -> table sorted by ts) covering every item of every split."""
    rng = np.random.default_rng(seed)
    train_days = days - 2
    start_us = np.datetime64(dt_mod.date.fromisoformat(start), "us").astype(np.int64)
    n_users = sequences.num_rows
    item_ids = pd.Series(item_vocab.column("item_id").to_pylist(), index=item_vocab.column("item_idx").to_numpy())
    user_ids = np.asarray(sequences.column("user_id").to_pylist(), dtype=object)

    first_day = rng.integers(0, train_days, size=n_users)  # the day each user shows up
    parts = []
    for kind, lo_day, hi_day in (
        ("train", first_day, np.full(n_users, train_days)),
        ("valid", np.full(n_users, train_days), np.full(n_users, train_days + 1)),
        ("test", np.full(n_users, train_days + 1), np.full(n_users, train_days + 2)),
    ):
        col = sequences.column(kind)
        lengths = list_lengths(col)
        items = flat_values(col)
        user = np.repeat(np.arange(n_users), lengths)
        pos = np.arange(len(items)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        span = (hi_day - lo_day)[user] * DAY_US
        # Item j of L gets a random time inside slot j of the user's span: strictly in order, never past the end.
        frac = (pos + rng.uniform(0.0, 1.0, size=len(items))) / np.maximum(lengths[user], 1)
        ts = start_us + lo_day[user] * DAY_US + np.minimum((frac * span).astype(np.int64), span - 1)
        parts.append(pd.DataFrame({"user": user, "item": items, "ts": ts}))
    events = pd.concat(parts, ignore_index=True).sort_values(["ts", "user"], kind="stable")
    events["day"] = (events["ts"] - start_us) // DAY_US
    out = {}
    for day in range(days):
        chunk = events[events["day"] == day]
        dt = (dt_mod.date.fromisoformat(start) + dt_mod.timedelta(days=day)).isoformat()
        out[dt] = pa.table(
            {
                "user_id": pa.array(user_ids[chunk["user"].to_numpy()], pa.string()),
                "item_id": pa.array(item_ids.reindex(chunk["item"].to_numpy()).to_numpy(dtype=object), pa.string()),
                "ts": pa.array(chunk["ts"].to_numpy(), pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            },
            schema=INTERACTIONS_SCHEMA,
        )
    return out
