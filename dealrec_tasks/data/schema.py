"""Arrow schemas of the lake's tables (DESIGN.md section 2); which dataset holds each: ``dealrec_tasks.catalogue``."""

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")
IDX = pa.int32()

INTERACTION_COLUMNS = ("user_id", "item_id", "ts")

INTERACTIONS_SCHEMA = pa.schema([("user_id", pa.string()), ("item_id", pa.string()), ("ts", TS)])

ITEMS_SCHEMA = pa.schema([("item_id", pa.string()), ("title", pa.string()), ("categories", pa.list_(pa.string()))])

USER_VOCAB_SCHEMA = pa.schema([("user_id", pa.string()), ("user_idx", IDX)])
ITEM_VOCAB_SCHEMA = pa.schema([("item_id", pa.string()), ("item_idx", IDX)])

SEQUENCES_SCHEMA = pa.schema(
    [("user_idx", IDX), ("user_id", pa.string()), ("items", pa.list_(IDX)), ("ts", pa.list_(TS))]
)

# One ingested day's accepted events in event order (``sequences/dt=D/delta.parquet``): what the day adds.
SEQUENCE_DELTA_SCHEMA = pa.schema([("user_idx", IDX), ("user_id", pa.string()), ("item_idx", IDX), ("ts", TS)])

# Per-user split of a sequence: items before the validation window, in it, and in the test window.
SPLIT_SEQUENCES_SCHEMA = pa.schema(
    [
        ("user_idx", IDX),
        ("user_id", pa.string()),
        ("train", pa.list_(IDX)),
        ("valid", pa.list_(IDX)),
        ("test", pa.list_(IDX)),
    ]
)

SAMPLES_SCHEMA = pa.schema(
    [
        ("sample_id", pa.int64()),
        ("user_idx", IDX),
        ("user_id", pa.string()),
        ("split", pa.string()),
        ("history", pa.list_(IDX)),
        ("target", IDX),
        ("targets", pa.list_(IDX)),
    ]
)

REJECTS_SCHEMA = pa.schema(
    [("source_file", pa.string()), ("row", pa.int64()), ("reason", pa.string()), ("raw", pa.string())]
)

EFFORT_SCHEMA = pa.schema([("sample_id", pa.int64()), ("effort", pa.float64())])

CORESET_SCHEMA = pa.schema(
    [
        ("sample_id", pa.int64()),
        ("user_id", pa.string()),
        ("history", pa.list_(pa.int32())),
        ("history_titles", pa.list_(pa.string())),
        ("target", pa.int32()),
        ("target_title", pa.string()),
        ("influence", pa.float64()),
        ("effort", pa.float64()),
        ("overall", pa.float64()),
        ("stratum", pa.int32()),
        ("strategy", pa.string()),
        ("score", pa.float64()),
    ]
)

PAD_IDX = 0  # item index 0 is padding; real items start at 1
