"""The paper's release format: ``sequential_{train,valid,test}.txt`` (``user item item ...``) + ``items.parquet``.

Parsed into the lake's tables without unpickling anything. Item indices keep the paper's ids (1-based), so
results can be compared with the paper's code; ``item_id`` (the string id of the logs) is the ASIN.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dealrec_tasks.data.schema import ITEM_VOCAB_SCHEMA, ITEMS_SCHEMA, SPLIT_SEQUENCES_SCHEMA, USER_VOCAB_SCHEMA
from dealrec_tasks.errors import InputError

SPLIT_FILES = {"train": "sequential_train.txt", "valid": "sequential_valid.txt", "test": "sequential_test.txt"}


def parse_sequence_file(path: Path) -> dict[int, list[int]]:
    """``user item item ...`` per line; the error names file and line."""
    out: dict[int, list[int]] = {}
    with open(path) as f:
        for line_no, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            try:
                ids = [int(p) for p in parts]
            except ValueError:
                raise InputError(f"{path}:{line_no}: expected integer ids, got {line.strip()[:80]!r}") from None
            if ids[0] in out:
                raise InputError(f"{path}:{line_no}: user {ids[0]} appears twice")
            out[ids[0]] = ids[1:]
    return out


def read_release(directory: str | Path) -> dict[str, pa.Table]:
    """Read a release directory into ``items``, ``users``, ``item_vocab`` and ``sequences`` tables."""
    directory = Path(directory)
    missing = [n for n in [*SPLIT_FILES.values(), "items.parquet"] if not (directory / n).is_file()]
    if missing:
        raise InputError(f"{directory}: missing {', '.join(missing)} (expected the paper's release format)")
    splits = {k: parse_sequence_file(directory / name) for k, name in SPLIT_FILES.items()}
    try:
        catalogue = pq.read_table(directory / "items.parquet")
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{directory / 'items.parquet'}: unreadable ({exc})") from None
    for col in ("item_id", "asin", "title"):
        if col not in catalogue.column_names:
            raise InputError(f"{directory / 'items.parquet'}: missing column {col!r}")

    item_idx = catalogue.column("item_id").to_numpy().astype(np.int32)
    known_items = set(item_idx.tolist())
    users = sorted(splits["train"])
    for kind, seqs in splits.items():
        extra_users = set(seqs) - set(users)
        if extra_users:
            raise InputError(f"{directory / SPLIT_FILES[kind]}: users {sorted(extra_users)[:5]} not in the train file")
        unknown = {i for s in seqs.values() for i in s} - known_items
        if unknown:
            raise InputError(f"{directory / SPLIT_FILES[kind]}: item ids {sorted(unknown)[:5]} not in items.parquet")

    categories = catalogue.column("categories") if "categories" in catalogue.column_names else pa.nulls(len(catalogue))
    items = pa.table(
        {"item_id": catalogue.column("asin"), "title": catalogue.column("title"), "categories": categories},
        schema=ITEMS_SCHEMA,
    )
    item_vocab = pa.table({"item_id": catalogue.column("asin"), "item_idx": item_idx}, schema=ITEM_VOCAB_SCHEMA)
    user_ids = [str(u) for u in users]
    user_vocab = pa.table({"user_id": user_ids, "user_idx": np.asarray(users, np.int32)}, schema=USER_VOCAB_SCHEMA)
    sequences = pa.table(
        {
            "user_idx": np.asarray(users, np.int32),
            "user_id": user_ids,
            **{kind: [splits[kind].get(u, []) for u in users] for kind in SPLIT_FILES},
        },
        schema=SPLIT_SEQUENCES_SCHEMA,
    )
    return {"items": items, "users": user_vocab, "item_vocab": item_vocab, "sequences": sequences}
