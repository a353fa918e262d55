"""The lake's layout, declared once: every dataset's path pattern, files, schema and the step that writes it.

Steps ask this module where things are (``Source.path``, ``influence_solve``, ``effort_shard`` ...) instead of
building paths; ``Lake`` (storage.py) only knows the generic ``<root>/<dataset>/dt=<D>/`` partition and its
manifest. A dataset of an imported benchmark (``datasets/<name>/``) holds the same kinds below its own folder, so
a step that works on "the samples of dt=D" or "the samples of dataset X" takes a ``Source`` and nothing else.

Listing (``<kind>/dt=D/`` = one partition per day, manifest last; ``CATALOGUE`` below is the source of truth):

    interactions/dt=D/       raw daily logs (producers, replay, synthetic)
    items/                   the catalogue (item_id, title, categories)
    vocab/dt=D/              append-only id -> index maps: all items, the users first seen that day
    sequences/dt=D/          the day's events (a delta of the cumulative per-user sequences)
    sequences_snapshot/dt=D/ the cumulative sequences and user map at D, folded every few days
    rejects/dt=D/            quarantined log rows with a reason
    samples/dt=D/            one training sample per user + validation/test rows
    surrogate/dt=D/          SASRec ensemble checkpoints and metrics
    influence/dt=D/solve/    v and (H + damping I)^-1 v per weight file
    influence/dt=D/shard=i-of-n/   raw influence scores of shard i
    scores_influence/dt=D/   merged, combined influence scores
    effort/dt=D/shard=i-of-n/      effort scores of shard i
    scores_effort/dt=D/      merged effort scores
    coreset/dt=D/            the selected samples + report.png
    adapters/dt=D/           the fine-tuned LoRA adapter
    evaluation/dt=D/         grounded evaluation metrics and examples
    datasets/<name>/         an imported dataset (items, vocab, split sequences) and its own samples/,
                             surrogate/, influence/ ... below it
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pyarrow as pa

from dealrec_tasks.config import Day, check_dataset_name, day_or_none
from dealrec_tasks.data import schema
from dealrec_tasks.errors import ConfigError, InputError
from dealrec_tasks.sharding import shard_name

_ARM_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

# Dataset (folder) names inside the lake.
INTERACTIONS = "interactions"
ITEMS = "items"
VOCAB = "vocab"
SEQUENCES = "sequences"
SEQUENCES_SNAPSHOT = "sequences_snapshot"
SAMPLES = "samples"
REJECTS = "rejects"
DATASETS = "datasets"
SURROGATE = "surrogate"
INFLUENCE = "influence"
SCORES_INFLUENCE = "scores_influence"
EFFORT = "effort"
SCORES_EFFORT = "scores_effort"
CORESET = "coreset"
ADAPTERS = "adapters"
EVALUATION = "evaluation"
GATE = "gate"
EFFORT_CACHE = "effort_cache"


@dataclass(frozen=True)
class Dataset:
    """One dataset of the lake: where it lives, what a partition holds, and which command publishes it."""

    name: str
    pattern: str  # relative to the lake root; {dt} a day, {i}/{n} a shard, {name} an imported dataset
    files: dict[str, pa.Schema | None] = field(default_factory=dict)  # file -> schema (None: not a table)
    writer: str = ""  # the CLI command (and DAG task) that publishes it
    about: str = ""


CATALOGUE: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(INTERACTIONS, "interactions/dt={dt}/", {"part-*.parquet": schema.INTERACTIONS_SCHEMA},
                "dealrec replay | dealrec synthetic | a producer", "raw daily logs (also .csv / .jsonl)"),
        Dataset(ITEMS, "items/", {"items.parquet": schema.ITEMS_SCHEMA}, "dealrec import-dealrec | dealrec synthetic",
                "the catalogue"),
        Dataset(VOCAB, "vocab/dt={dt}/", {"new_users.parquet": schema.USER_VOCAB_SCHEMA,
                                          "items.parquet": schema.ITEM_VOCAB_SCHEMA},
                "dealrec ingest", "append-only id -> index maps: every item (catalogue-sized), the users first "
                "seen that day (the whole user map: readers.read_user_vocab)"),
        Dataset(SEQUENCES, "sequences/dt={dt}/", {"delta.parquet": schema.SEQUENCE_DELTA_SCHEMA}, "dealrec ingest",
                "the day's accepted events; its manifest marks the day as ingested and chains it to the previous "
                "day (the cumulative sequences: readers.read_sequences)"),
        Dataset(SEQUENCES_SNAPSHOT, "sequences_snapshot/dt={dt}/", {"sequences.parquet": schema.SEQUENCES_SCHEMA,
                                                                    "users.parquet": schema.USER_VOCAB_SCHEMA},
                "dealrec compact", "the cumulative per-user sequences and user map at D (deltas folded), so "
                "readers and ingest start from it instead of the first day"),
        Dataset(REJECTS, "rejects/dt={dt}/", {"rejects.parquet": schema.REJECTS_SCHEMA}, "dealrec ingest",
                "quarantined log rows with a reason"),
        Dataset(SAMPLES, "samples/dt={dt}/", {"samples.parquet": schema.SAMPLES_SCHEMA}, "dealrec samples",
                "one training sample per user + validation and test rows"),
        Dataset(SURROGATE, "surrogate/dt={dt}/", {"model.pt": None, "model_{i}.pt": None, "metrics.json": None},
                "dealrec surrogate", "SASRec ensemble: best weights and kept checkpoints per member"),
        Dataset(INFLUENCE, "influence/dt={dt}/solve/ | influence/dt={dt}/shard={i}-of-{n}/",
                {"solve.pt": None, "influence.parquet": None}, "dealrec influence-solve | dealrec influence",
                "the solve (v, u per weight file) and each shard's raw scores"),
        Dataset(SCORES_INFLUENCE, "scores_influence/dt={dt}/", {"influence.parquet": None},
                "dealrec influence + merge-influence", "merged, combined influence scores"),
        Dataset(EFFORT, "effort/dt={dt}/shard={i}-of-{n}/", {"effort.parquet": schema.EFFORT_SCHEMA},
                "dealrec effort", "effort scores of one shard"),
        Dataset(SCORES_EFFORT, "scores_effort/dt={dt}/", {"effort.parquet": schema.EFFORT_SCHEMA},
                "dealrec effort + merge-effort", "merged effort scores"),
        Dataset(CORESET, "coreset/dt={dt}/ | coreset/arm={strategy}/dt={dt}/",
                {"coreset.parquet": schema.CORESET_SCHEMA, "report.png": None},
                "dealrec select", "the selected samples and their report; a control arm's below arm=<strategy>/"),
        Dataset(ADAPTERS, "adapters/dt={dt}/ | adapters/arm={strategy}/dt={dt}/",
                {"adapter_model.safetensors": None, "adapter_config.json": None},
                "dealrec finetune", "the fine-tuned LoRA adapter of an arm's coreset"),
        Dataset(EVALUATION,
                "evaluation/dt={dt}/ | evaluation/arm={strategy}/dt={dt}/ | evaluation/version={v}/dt={dt}/",
                {"metrics.json": None, "examples.json": None, "per_user.parquet": None},
                "dealrec evaluate", "grounded evaluation of an arm, or of a registered version on that day's users"),
        Dataset(EFFORT_CACHE, "effort_cache/key={k}/snapshot/ | effort_cache/key={k}/delta/dt={dt}/shard={i}-of-{n}/",
                {"effort.parquet": None}, "dealrec effort (deltas) + merge-effort (snapshot)",
                "effort scores by prompt digest, per base model and effort settings: a day scores only new prompts"),
        Dataset(GATE, "gate/dt={dt}/", {"gate.json": None, "arms.png": None},
                "dealrec gate", "the day's arms and champion on the same users, the decision, the plot over days"),
        Dataset(DATASETS, "datasets/{name}/", {"items": schema.ITEMS_SCHEMA, "sequences": None},
                "dealrec import-dealrec", "an imported dataset; its steps' outputs live below it"),
    )
}  # fmt: skip


def writer(dataset: str) -> str:
    """The command that publishes ``dataset`` (a path such as ``datasets/x/samples`` or ``influence/dt=D/solve``
    is looked up by its kind), for "run X first" messages."""
    parts = dataset.split("/")
    kind = parts[2] if parts[0] == DATASETS and len(parts) > 2 else parts[0]
    entry = CATALOGUE.get(kind)
    return entry.writer if entry else "the step that writes it"


@dataclass(frozen=True)
class Source:
    """Where a step's inputs and outputs live: the daily lake (``dt``) or an imported dataset (``datasets/<name>``)."""

    dt: Day | None
    dataset: str | None = None

    def __post_init__(self) -> None:
        if self.dataset is not None:  # it names a folder: checked before any path is built from it
            check_dataset_name(self.dataset)

    def path(self, kind: str) -> str:
        """The dataset path of ``kind`` for this source (partitioned by ``dt`` for the daily lake)."""
        return f"{DATASETS}/{self.dataset}/{kind}" if self.dataset else kind

    @property
    def label(self) -> str:
        return f"dataset={self.dataset}" if self.dataset else f"dt={self.dt}"

    def sub(self, kind: str, name: str) -> str:
        """A sub-partition of ``kind`` for this source: ``influence/dt=D/solve`` (``.../all/...`` for a dataset),
        published with ``dt=None`` (the path itself carries the day)."""
        where = f"dt={self.dt}" if self.dt else "all"
        return f"{self.path(kind)}/{where}/{name}"


def source(dt: str | None, dataset: str | None = None) -> Source:
    """Exactly one of a day or an imported dataset's name; the day is checked here, once."""
    if (dt is None) == (dataset is None):
        raise InputError("give exactly one of dt (daily samples) or dataset (an imported dataset's samples)")
    return Source(day_or_none(dt), dataset)


def imported(name: str) -> str:
    """The folder of an imported dataset (``name`` checked: ``../../x`` never becomes a path)."""
    return f"{DATASETS}/{check_dataset_name(name)}"


def arm_dataset(kind: str, arm: str | None) -> str:
    """Where an arm's coreset, adapter or evaluation lives: ``kind`` for the day's primary arm (the first of the
    daily DAG's ``arms``, the strategy the pipeline stands for), ``kind/arm=<strategy>`` for a control arm."""
    if arm is not None and not _ARM_RE.match(str(arm)):
        raise ConfigError(f"arm={arm!r}: a strategy name (lower-case letters, digits, _), e.g. random")
    return kind if arm is None else f"{kind}/arm={arm}"


def arm_of(dataset: str) -> str | None:
    """The control arm a dataset path belongs to (``coreset/arm=random`` -> ``random``), None for a primary one."""
    last = dataset.rsplit("/", 1)[-1]
    return last[4:] if last.startswith("arm=") else None


def effort_cache_snapshot(key: str) -> str:
    """Every cached effort score of one cache key (base model + settings), compacted by each merge."""
    return f"{EFFORT_CACHE}/key={key}/snapshot"


def effort_cache_delta(key: str, src: Source, shard: tuple[int, int]) -> str:
    """The scores one effort shard computed (not found in the snapshot), until the merge compacts them."""
    return src.sub(f"{EFFORT_CACHE}/key={key}/delta", shard_name(shard))


def version_evaluation(version: int) -> str:
    """Where a registered version is evaluated on a day's users (the champion, for a fair gate)."""
    return f"{EVALUATION}/version={int(version)}"


def influence_solve(src: Source) -> str:
    return src.sub(INFLUENCE, "solve")


def influence_shard(src: Source, shard: tuple[int, int]) -> str:
    return src.sub(INFLUENCE, shard_name(shard))


def effort_shard(src: Source, shard: tuple[int, int]) -> str:
    return src.sub(EFFORT, shard_name(shard))
