"""Typed reads of published partitions that more than one step uses: a day's samples with its item count, the
titles by item index, and the surrogate's checkpoints (checksum-verified, weights_only) as models.

The surrogate partition's layout (written by ``steps/surrogate.py``): member i's best weights are ``model.pt``
(i = 0) or ``model_i.pt``; its other kept checkpoints ``ckpt_{i}_e{epoch}.pt``; the manifest's top-level
``influence_weights`` lists, member-major, epochs ascending, best last per member, the files influence uses
(``[{"file", "member", "epoch", "best"}, ...]``). A partition without that list (older ones) stands for its member
best files, so older lakes still load and score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from dealrec_tasks.catalogue import (
    ITEMS,
    SAMPLES,
    SEQUENCES,
    SEQUENCES_SNAPSHOT,
    SURROGATE,
    VOCAB,
    Source,
    imported,
)
from dealrec_tasks.data import sequence_log
from dealrec_tasks.data.schema import USER_VOCAB_SCHEMA
from dealrec_tasks.errors import InputError
from dealrec_tasks.storage import Lake
from dealrec_tasks.surrogate.config import SurrogateConfig

if TYPE_CHECKING:  # torch only when a model is loaded: the CLI starts without it
    import torch

    from dealrec_tasks.surrogate.model import SASRec

MODEL_FILE = "model.pt"  # member 0; member i > 0 is model_i.pt (see member_file)
INFLUENCE_WEIGHTS = "influence_weights"  # manifest key: the ordered weight files influence uses


def read_samples(lake: Lake, src: Source) -> tuple[pa.Table, int]:
    """The samples table and the item count (largest item index of the vocab the samples were built with)."""
    return lake.read(src.path(SAMPLES), src.dt, "samples.parquet"), item_count(lake, src)


def item_count(lake: Lake, src: Source) -> int:
    """The largest item index of the vocab a source's samples were built with (the surrogate's item count)."""
    vocab = lake.read(imported(src.dataset), None, "item_vocab") if src.dataset else None
    if vocab is None:
        vocab = lake.read(VOCAB, src.dt, "items.parquet")
    return int(pc.max(vocab.column("item_idx")).as_py() or 0)


# ---------------------------------------------------------------------------------------------------------
# Cumulative sequences: a snapshot (or nothing) plus the deltas of the days after it
# ---------------------------------------------------------------------------------------------------------
FULL_SEQUENCES = "sequences.parquet"  # a full table: in a snapshot, or a day ingested before deltas existed
DELTA = "delta.parquet"
FULL_USERS = "users.parquet"  # the whole user map: in a snapshot, or a vocab partition from before deltas
NEW_USERS = "new_users.parquet"
CHAIN = "chain_sha256"  # sequences manifest key: the identity of the cumulative sequences at that day


def chain_identity(manifest: dict[str, Any]) -> str:
    """The identity of the sequences a ``sequences/dt=D`` partition stands for: its chain checksum, or for a day
    ingested before deltas existed (a full table) that table's checksum."""
    return manifest.get(CHAIN) or manifest["files"][FULL_SEQUENCES]["sha256"]


@dataclass(frozen=True)
class SequenceChain:
    """Where the cumulative sequences at ``dt`` come from: a base (a snapshot or a full legacy partition at
    ``base_dt``; none when the chain reaches the first day) and the days whose deltas follow it, ascending."""

    dt: str
    identity: str
    base_dt: str | None
    base: str | None  # SEQUENCES_SNAPSHOT or SEQUENCES (a full legacy partition); None: no base
    deltas: tuple[str, ...]


def sequence_chain(lake: Lake, dt: str) -> SequenceChain:
    """Walk back from ``dt`` through each day's ``previous_dt`` to the newest base whose identity is the chain's:
    a snapshot folding exactly these deltas, a full legacy partition, or the first day. Reads manifests only."""
    top = lake.require_manifest(SEQUENCES, dt)
    deltas: list[str] = []
    day, manifest = dt, top
    while True:
        if FULL_SEQUENCES in manifest["files"]:
            base, base_dt = SEQUENCES, day
            break
        snapshot = lake.manifest(SEQUENCES_SNAPSHOT, day)
        if snapshot is not None and snapshot.get(CHAIN) == manifest.get(CHAIN):
            base, base_dt = SEQUENCES_SNAPSHOT, day
            break
        deltas.append(day)
        previous = manifest.get("source", {}).get("previous_dt")
        if previous is None:
            base = base_dt = None
            break
        day, manifest = previous, lake.require_manifest(SEQUENCES, previous)
    return SequenceChain(dt, chain_identity(top), base_dt, base, tuple(reversed(deltas)))


def read_sequences(lake: Lake, dt: str) -> tuple[pa.Table, str]:
    """The cumulative per-user sequences at ``dt`` (SEQUENCES_SCHEMA) and their identity (``chain_identity``):
    the base's table with the later days' deltas applied, every file checksum-verified."""
    chain = sequence_chain(lake, dt)
    base = lake.read(chain.base, chain.base_dt, FULL_SEQUENCES) if chain.base else None
    deltas = [lake.read(SEQUENCES, d, DELTA) for d in chain.deltas]
    if base is not None and not deltas:
        return base, chain.identity
    return sequence_log.apply_deltas(base, deltas), chain.identity


def read_user_vocab(lake: Lake, dt: str) -> pa.Table:
    """The whole user map at ``dt`` (USER_VOCAB_SCHEMA, by index): the base's map and each later day's new users.
    Reads the user columns only (no sequences), so ingest's cost grows with the users, not the interactions."""
    chain = sequence_chain(lake, dt)
    parts = []
    if chain.base == SEQUENCES_SNAPSHOT:
        parts.append(lake.read(SEQUENCES_SNAPSHOT, chain.base_dt, FULL_USERS))
    elif chain.base == SEQUENCES:
        parts.append(lake.read(VOCAB, chain.base_dt, FULL_USERS))
    parts += [lake.read(VOCAB, d, NEW_USERS) for d in chain.deltas]
    return pa.concat_tables([p.cast(USER_VOCAB_SCHEMA) for p in parts]) if parts else (USER_VOCAB_SCHEMA.empty_table())


def member_file(i: int) -> str:
    """The checkpoint file of ensemble member ``i``: ``model.pt`` for member 0 (backward compatible)."""
    return MODEL_FILE if i == 0 else f"model_{i}.pt"


def member_files(manifest: dict[str, Any], where: str = "surrogate") -> list[str]:
    """The checkpoint files a surrogate manifest lists, member 0 first (one for partitions older than ensembles);
    ``where`` (the partition read, never the manifest's own ``uri``: a lake moved or restored keeps its old one)
    names it in an error."""
    files = manifest["files"]
    out: list[str] = []
    while member_file(len(out)) in files:
        out.append(member_file(len(out)))
    if not out:
        raise InputError(f"{where}: no {MODEL_FILE} in the manifest; republish the surrogate")
    return out


def checkpoint_file(i: int, epoch: int) -> str:
    """A kept checkpoint of member ``i`` other than its best: its weights after evaluated epoch ``epoch``."""
    return f"ckpt_{i}_e{epoch}.pt"


def influence_weights(manifest: dict[str, Any], where: str = "surrogate") -> list[dict[str, Any]]:
    """The weight files influence uses, in order: ``[{"file", "member", "epoch", "best"}, ...]``, member-major,
    epochs ascending, each member's best last. A partition without the list (older than checkpoint averaging)
    gives its member best files (``epoch`` None)."""
    listed = manifest.get(INFLUENCE_WEIGHTS)
    if listed is None:
        files = member_files(manifest, where)
        return [{"file": f, "member": i, "epoch": None, "best": True} for i, f in enumerate(files)]
    missing = [w.get("file") for w in listed if w.get("file") not in manifest["files"]]
    if not listed or missing:
        raise InputError(
            f"{where}: {INFLUENCE_WEIGHTS} lists {missing or 'no'} file(s) the manifest "
            "does not hold; republish the surrogate"
        )
    return listed


def influence_sha256(manifest: dict[str, Any]) -> list[str]:
    """Identity of the weights influence uses: the checksums of the ``influence_weights`` files, in order (the
    member checksums for a partition older than checkpoint averaging)."""
    return [manifest["files"][w["file"]]["sha256"] for w in influence_weights(manifest)]


def _read_state(lake: Lake, src: Source, manifest: dict[str, Any], name: str) -> dict[str, torch.Tensor]:
    return lake.read_verified_torch(src.path(SURROGATE), src.dt, name, "republish the surrogate", manifest)


def load_checkpoint(lake: Lake, src: Source) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """state_dict of member 0 and the manifest of a published surrogate, checksum-verified, weights_only."""
    manifest = lake.require_manifest(src.path(SURROGATE), src.dt)
    return _read_state(lake, src, manifest, MODEL_FILE), manifest


def load_checkpoints(lake: Lake, src: Source) -> tuple[list[dict[str, torch.Tensor]], dict[str, Any]]:
    """state_dicts of every member (one for an older single-surrogate partition) and the manifest they match."""
    manifest = lake.require_manifest(src.path(SURROGATE), src.dt)
    names = member_files(manifest, _surrogate_uri(lake, src))
    return [_read_state(lake, src, manifest, name) for name in names], manifest


def _surrogate_uri(lake: Lake, src: Source) -> str:
    return lake.partition(src.path(SURROGATE), src.dt)


def _build(state: dict[str, torch.Tensor], manifest: dict[str, Any], where: str) -> SASRec:
    """The model of checksum-verified weights, shaped by the manifest's config and item count. The manifest itself
    carries no checksum, so its shape is checked against the weights first: an edited ``counts.items`` allocated a
    table of that many rows (10**12: no memory) or ended in a size-mismatch traceback."""
    from dealrec_tasks.surrogate.model import SASRec

    where = f"{where}/_manifest.json"
    cfg = SurrogateConfig.from_dict(manifest["config"])
    items = (manifest.get("counts") or {}).get("items")
    table = state.get("item_emb.weight")
    shape = None if table is None else tuple(table.shape)
    if isinstance(items, bool) or not isinstance(items, int) or shape != (items + 2, cfg.hidden):
        raise InputError(
            f"{where}: counts.items={items!r} and config.hidden={cfg.hidden} do not match the checked weights' item "
            f"table {list(shape or ())} (the manifest was edited or is corrupt); republish the surrogate"
        )
    model = SASRec(items, cfg)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # another field of the config edited: the last line says which tensor
        detail = str(exc).strip().splitlines()[-1].strip()
        raise InputError(
            f"{where}: its config does not match the checked weights ({detail}); republish the surrogate"
        ) from None
    return model.eval()


def load_model(lake: Lake, src: Source) -> tuple[SASRec, dict[str, Any]]:
    """Member 0 of the published surrogate (what single-model readers, e.g. GraNd / EL2N, use)."""
    state, manifest = load_checkpoint(lake, src)
    return _build(state, manifest, _surrogate_uri(lake, src)), manifest


def load_ensemble(lake: Lake, src: Source) -> tuple[list[SASRec], dict[str, Any]]:
    """Every member's best weights (one for an older single-surrogate partition), checksum-verified each,
    weights_only, and the manifest they were verified against."""
    states, manifest = load_checkpoints(lake, src)
    return [_build(state, manifest, _surrogate_uri(lake, src)) for state in states], manifest


def load_influence_models(lake: Lake, src: Source) -> tuple[list[SASRec], dict[str, Any]]:
    """The models of every ``influence_weights`` file, in that order (every member's kept checkpoints, best last;
    the member best files for an older partition), checksum-verified each, weights_only, and the manifest."""
    manifest = lake.require_manifest(src.path(SURROGATE), src.dt)
    where = _surrogate_uri(lake, src)
    states = [_read_state(lake, src, manifest, w["file"]) for w in influence_weights(manifest, where)]
    return [_build(state, manifest, where) for state in states], manifest


def item_titles(lake: Lake, src: Source | str) -> list[str]:
    """Titles by item index: ``titles[i - 1]`` is item_idx i (the vocab of ``src`` joined to its catalogue: the day's
    vocab and the lake's ``items/``, or an imported dataset's own)."""
    src = src if isinstance(src, Source) else Source(src)
    if src.dataset:
        vocab = lake.read(imported(src.dataset), None, "item_vocab").to_pylist()
        catalogue = lake.read(imported(src.dataset), None, "items")
    else:
        vocab = lake.read(VOCAB, src.dt, "items.parquet").to_pylist()
        catalogue = lake.read(ITEMS, None, "items.parquet")
    title = dict(zip(catalogue.column("item_id").to_pylist(), catalogue.column("title").to_pylist()))
    out = [None] * len(vocab)
    for row in vocab:
        out[row["item_idx"] - 1] = title.get(row["item_id"])
    return [t if t is not None else "(unknown title)" for t in out]


def titles_sha256(lake: Lake, src: Source) -> dict[str, str]:
    """Identity of the titles a source's prompts use: its vocab's and its catalogue's file checksums."""
    if src.dataset:
        return {f: lake.file_sha256(imported(src.dataset), None, f) for f in ("item_vocab", "items")}
    vocab, items = lake.file_sha256(VOCAB, src.dt, "items.parquet"), lake.file_sha256(ITEMS, None, "items.parquet")
    return {"vocab": vocab, "items": items}


def domain_of(lake: Lake, src: Source, given: str | None = None) -> str:
    """The prompt domain: ``given`` when set; else the one stored with an imported dataset's catalogue (or with the
    lake's ``items/``); else ``games``, the paper's."""
    from dealrec_tasks.llm.prompts import check_domain

    if given:
        return check_domain(given)
    manifest = lake.manifest(imported(src.dataset)) if src.dataset else lake.manifest(ITEMS)
    stored = (manifest or {}).get("domain") or (manifest or {}).get("config", {}).get("domain")
    return check_domain(stored or "games")


def samples_sha256(lake: Lake, src: Source) -> str:
    """Identity of a source's samples: their file's checksum in the samples manifest."""
    return lake.file_sha256(src.path(SAMPLES), src.dt, "samples.parquet")


def checked_samples(lake: Lake, src: Source, n_items_model: int) -> pa.Table:
    """The samples, refused when their vocab does not have the surrogate's item count (a surrogate of other data)."""
    samples, n_items = read_samples(lake, src)
    if n_items != n_items_model:
        raise InputError(f"surrogate {src.label} has {n_items_model} items, the samples' vocab {n_items}; retrain it")
    return samples
