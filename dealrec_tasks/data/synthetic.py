"""Synthetic daily logs for the demo and for tests without ../shared: a catalogue with titles, Zipf item
popularity, users who come back on later days, and enough sequential structure (genres, sequels) for a
sequential recommender to learn something.
"""

from __future__ import annotations

import datetime as dt_mod
import json

import numpy as np
import pyarrow as pa

from dealrec_tasks.config import SyntheticConfig
from dealrec_tasks.data.schema import INTERACTIONS_SCHEMA, ITEMS_SCHEMA

GENRES = ["Racing", "Puzzle", "Shooter", "Adventure", "Sports", "Strategy", "Fighting", "Simulation"]
PLATFORMS = ["PC", "PS4", "Xbox One", "Nintendo Switch", "PS5"]
ADJECTIVES = ["Galactic", "Hidden", "Iron", "Crimson", "Silent", "Wild", "Ancient", "Neon", "Frozen", "Lost", "Royal"]
NOUNS = ["Legends", "Frontier", "Quest", "Kingdom", "Arena", "Drift", "Empire", "Odyssey", "Tactics", "Rally"]


def make_catalogue(cfg: SyntheticConfig, rng: np.random.Generator) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """Items with titles like 'Neon Rally 2 - PS4'; returns the table, each item's genre and its sequel index."""
    n = cfg.items
    genre = rng.integers(0, len(GENRES), size=n)
    titles, sequel = [], np.full(n, -1)
    series_of: dict[tuple[int, int, int], int] = {}  # series -> its latest entry
    series_len: dict[tuple[int, int, int], int] = {}
    for i in range(n):
        key = (int(rng.integers(len(ADJECTIVES))), int(rng.integers(len(NOUNS))), int(genre[i]))
        latest = series_of.get(key)
        base = f"{ADJECTIVES[key[0]]} {NOUNS[key[1]]}"
        series_len[key] = series_len.get(key, 0) + 1
        if latest is not None:
            sequel[latest] = i  # chain: the previous entry of the series points here
        series_of[key] = i
        title = base if latest is None else f"{base} {series_len[key]}"
        titles.append(f"{title} - {PLATFORMS[i % len(PLATFORMS)]}")
    table = pa.table(
        {
            "item_id": [f"I{i:05d}" for i in range(n)],
            "title": titles,
            "categories": [["Video Games", GENRES[g]] for g in genre],
        },
        schema=ITEMS_SCHEMA,
    )
    return table, genre, sequel


def generate(cfg: SyntheticConfig) -> tuple[pa.Table, dict[str, pa.Table], dict[str, bytes]]:
    """The catalogue, one interactions table per day (``YYYY-MM-DD`` -> table sorted by ts), and per day a
    JSON-lines file of ``cfg.bad_rows`` rows that break the contract (empty when ``bad_rows`` is 0)."""
    rng = np.random.default_rng(cfg.seed)
    items, genre, sequel = make_catalogue(cfg, rng)
    popularity = 1.0 / np.arange(1, cfg.items + 1) ** cfg.zipf_a
    popularity = popularity[rng.permutation(cfg.items)]
    by_genre = [np.flatnonzero(genre == g) for g in range(len(GENRES))]
    genre_pop = [popularity[idx] / popularity[idx].sum() for idx in by_genre]
    global_pop = popularity / popularity.sum()
    taste = rng.integers(0, len(GENRES), size=cfg.users)  # each user's favourite genre
    activity = rng.lognormal(0.0, 1.0, size=cfg.users)  # how often each user comes back
    last_item = np.full(cfg.users, -1)
    next_new = 0
    start = np.datetime64(dt_mod.date.fromisoformat(cfg.start), "us").astype(np.int64)
    days: dict[str, pa.Table] = {}
    bad: dict[str, bytes] = {}
    for day in range(cfg.days):
        n_events = int(rng.poisson(cfg.events_per_day)) if cfg.events_per_day else 0
        users, chosen = [], []
        while len(users) < n_events:
            if next_new < cfg.users and (next_new == 0 or rng.random() > cfg.return_rate):
                u = next_new
                next_new += 1
            else:
                seen = activity[: max(next_new, 1)]
                u = int(rng.choice(len(seen), p=seen / seen.sum()))
            for _ in range(int(rng.integers(1, 4))):  # a short session
                prev = last_item[u]
                if prev >= 0 and sequel[prev] >= 0 and rng.random() < 0.5:
                    item = int(sequel[prev])
                elif rng.random() < 0.7 and len(by_genre[taste[u]]):  # a small catalogue may lack the genre
                    item = int(rng.choice(by_genre[taste[u]], p=genre_pop[taste[u]]))
                else:
                    item = int(rng.choice(cfg.items, p=global_pop))
                users.append(u)
                chosen.append(item)
                last_item[u] = item
        users_arr, items_arr = np.asarray(users[:n_events], int), np.asarray(chosen[:n_events], int)
        # Times inside the day, increasing in generation order so each user's sequence keeps its order.
        offsets = np.sort(rng.integers(0, 86_400_000_000, size=len(users_arr)))
        dt = (dt_mod.date.fromisoformat(cfg.start) + dt_mod.timedelta(days=day)).isoformat()
        days[dt] = pa.table(
            {
                "user_id": [f"U{u:06d}" for u in users_arr],
                "item_id": [f"I{i:05d}" for i in items_arr],
                "ts": pa.array(start + day * 86_400_000_000 + offsets, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            },
            schema=INTERACTIONS_SCHEMA,
        )
        bad[dt] = bad_rows(days[dt], dt, cfg.bad_rows, rng)
    return items, days, bad


def bad_rows(day: pa.Table, dt: str, n: int, rng: np.random.Generator) -> bytes:
    """JSON lines that a careless producer might send: one of each kind of fault, in turn."""
    good = day.to_pylist()
    lines = []
    for k in range(n if good else 0):
        row = dict(good[int(rng.integers(len(good)))])
        row["ts"] = row["ts"].isoformat()
        kind = k % 6
        if kind == 0:
            row["user_id"] = None
        elif kind == 1:
            row["item_id"] = ""
        elif kind == 2:
            row["ts"] = f"{dt_mod.date.fromisoformat(dt) - dt_mod.timedelta(days=3)}T12:00:00+00:00"
        elif kind == 3:
            row["ts"] = "yesterday evening"
        elif kind == 4:
            pass  # an exact duplicate of a row already in the day's Parquet file
        else:
            lines.append('{"user_id": "U000001", "item_id": ')  # truncated line
            continue
        lines.append(json.dumps(row))
    return ("\n".join(lines) + "\n").encode() if lines else b""
