"""Arrow schemas of the lake's tables (DESIGN.md section 2) and the dataset names that hold them."""

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")
IDX = pa.int32()

# Dataset (folder) names inside the lake.
INTERACTIONS = "interactions"  # raw daily logs, written by producers (or replay/synthetic)
ITEMS = "items"  # catalogue
VOCAB = "vocab"  # append-only id -> index maps, per dt
SEQUENCES = "sequences"  # cumulative per-user sequences, per dt
SAMPLES = "samples"  # one training sample per user + evaluation rows, per dt
REJECTS = "rejects"  # quarantined log rows with a reason, per dt
DATASETS = "datasets"  # imported benchmark datasets (paper release format)
SURROGATE = "surrogate"  # SASRec checkpoint + metrics, per dt
INFLUENCE = "influence"  # influence/dt=D/solve/ and influence/dt=D/shard=i-of-n/
SCORES_INFLUENCE = "scores_influence"  # merged influence scores, per dt
EFFORT = "effort"  # effort/dt=D/shard=i-of-n/
SCORES_EFFORT = "scores_effort"  # merged effort scores, per dt
CORESET = "coreset"  # the selected samples, per dt
ADAPTERS = "adapters"  # the fine-tuned LoRA adapter, per dt
EVALUATION = "evaluation"  # grounded evaluation metrics, per dt

INTERACTION_COLUMNS = ("user_id", "item_id", "ts")

INTERACTIONS_SCHEMA = pa.schema([("user_id", pa.string()), ("item_id", pa.string()), ("ts", TS)])

ITEMS_SCHEMA = pa.schema([("item_id", pa.string()), ("title", pa.string()), ("categories", pa.list_(pa.string()))])

USER_VOCAB_SCHEMA = pa.schema([("user_id", pa.string()), ("user_idx", IDX)])
ITEM_VOCAB_SCHEMA = pa.schema([("item_id", pa.string()), ("item_idx", IDX)])

SEQUENCES_SCHEMA = pa.schema(
    [("user_idx", IDX), ("user_id", pa.string()), ("items", pa.list_(IDX)), ("ts", pa.list_(TS))]
)

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

PAD_IDX = 0  # item index 0 is padding; real items start at 1
