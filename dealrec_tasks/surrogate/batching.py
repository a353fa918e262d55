"""Samples tables -> length-bucketed, left-padded tensors with the loss positions packed.

Games sequences are short (mean 6 items, max 50), so padding every batch to 50 positions, as the paper's code
does, spends most of the work on padding. Here rows are grouped by length, each batch is padded only to its
longest row, and the head and loss run on the real positions only (``Batch.real`` picks them, row-major).

A training sample is the token sequence ``[BOS, x_1 .. x_n, y]``: inputs ``[BOS, x_1 .. x_n]`` and targets
``[x_1 .. x_n, y]``, both truncated to their last ``max_len`` positions. Evaluation rows feed ``[BOS, x]`` and
read the hidden state at the last position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor

from dealrec_tasks.data.samples import TEST, TRAIN, VALID
from dealrec_tasks.sharding import shard_rows

if TYPE_CHECKING:
    import pyarrow.parquet as pq


@dataclass
class Seqs:
    """Ragged int sequences, flat: row i is ``tokens[offsets[i]:offsets[i+1]]``."""

    tokens: np.ndarray  # [total] int64
    offsets: np.ndarray  # [n + 1] int64
    sample_id: np.ndarray  # [n] int64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def take(self, rows: np.ndarray) -> Seqs:
        lens = self.lengths[rows]
        offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        src = np.repeat(self.offsets[rows] - offsets[:-1], lens) + np.arange(offsets[-1])
        return Seqs(self.tokens[src], offsets, self.sample_id[rows])


@dataclass
class EvalSet:
    """Evaluation rows: inputs ``[BOS, history]``, the targets, and the items to mask from the ranking."""

    inputs: Seqs
    targets: Seqs
    mask: Seqs


@dataclass
class Batch:
    """A left-padded batch and its packed loss positions (row-major order of ``real``)."""

    inputs: Tensor  # [B, L] item ids, 0 = padding
    real: Tensor  # [B, L] bool, positions with a prediction
    targets: Tensor  # [N] the item each real position predicts
    sample: Tensor  # [N] row of the batch each position belongs to
    weight: Tensor  # [N] 1 / positions of its sample (a sample's loss is the mean over its positions)
    rows: np.ndarray  # [B] indices of the rows in the source Seqs

    @property
    def size(self) -> int:
        return int(self.inputs.shape[0])


def _lists(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    lengths = pc.list_value_length(arr).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    values = arr.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    return values, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def _ragged(pieces: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise concatenation of several ragged arrays with the same number of rows."""
    lens = sum(np.diff(off) for _, off in pieces)
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    out = np.empty(offsets[-1], dtype=np.int64)
    pos = offsets[:-1].copy()
    for values, off in pieces:
        n = np.diff(off)
        dst = np.repeat(pos - off[:-1], n) + np.arange(off[-1])
        out[dst] = values
        pos += n
    return out, offsets


def _split(table: pa.Table, split: str) -> pa.Table:
    return table.filter(pc.equal(table.column("split"), split))


def _const(n: int, value: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full(n, value, dtype=np.int64), np.arange(n + 1, dtype=np.int64)


def train_seqs(samples: pa.Table, n_items: int) -> Seqs:
    """``[BOS, history, target]`` of every ``train`` row, ordered by sample_id (a stable, batch-free order)."""
    t = _split(samples, TRAIN)
    t = t.take(pc.sort_indices(t, [("sample_id", "ascending")]))
    hist = _lists(t.column("history"))
    target = t.column("target").to_numpy().astype(np.int64)
    tokens, offsets = _ragged([_const(t.num_rows, n_items + 1), hist, (target, np.arange(t.num_rows + 1))])
    return Seqs(tokens, offsets, t.column("sample_id").to_numpy().astype(np.int64))


TRAIN_COLUMNS = ("sample_id", "split", "history", "target")  # what ``train_seqs`` reads of a samples table


def shard_train_seqs(
    samples: pq.ParquetFile, n_items: int, shard: tuple[int, int], batch_rows: int = 65_536
) -> tuple[Seqs, int]:
    """``train_seqs`` of shard i of n only (its rows ``shard_rows(n_train, shard)``) and n_train, the training rows of
    the whole file, read in record batches of ``batch_rows`` rows.

    Equal to ``train_seqs(whole table).take(shard_rows(n_train, shard))``, but what it holds grows with the shard's
    own rows (their tokens), not with the day's: a first pass reads ``sample_id`` and ``split`` of every row (about
    25 bytes a training row are kept while sorting), a second keeps the history and target of the shard's rows only.
    Reading the whole table (every split and column, ~1 KB a training sample in RSS) made a shard worker's memory
    follow the day.
    Ties of sample_id keep the file's order, as ``train_seqs``'s stable sort does.
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows={batch_rows}: must be >= 1")
    # use_threads=False: decode on the calling thread (see storage.parquet_from_bytes for why)
    ids, where, n_rows = [], [], 0
    for b in samples.iter_batches(batch_size=batch_rows, columns=["sample_id", "split"], use_threads=False):
        train = pc.equal(b.column("split"), TRAIN).fill_null(False).to_numpy(zero_copy_only=False)  # [b] bool
        ids.append(b.column("sample_id").to_numpy(zero_copy_only=False)[train].astype(np.int64))
        where.append(np.flatnonzero(train) + n_rows)  # file row of each training row
        n_rows += b.num_rows
    train_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    train_at = np.concatenate(where) if where else np.zeros(0, np.int64)
    order = np.argsort(train_ids, kind="stable")  # train_seqs' order: sample_id ascending, ties in file order
    keep = np.zeros(n_rows, dtype=bool)  # [file rows] the shard's rows
    keep[train_at[order[shard_rows(len(train_ids), shard)]]] = True
    parts, start = [], 0
    for b in samples.iter_batches(batch_size=batch_rows, columns=list(TRAIN_COLUMNS), use_threads=False):
        mask = keep[start : start + b.num_rows]
        start += b.num_rows
        if mask.any():
            parts.append(b.filter(pa.array(mask)))
    schema = pa.schema([samples.schema_arrow.field(c) for c in TRAIN_COLUMNS])
    return train_seqs(pa.Table.from_batches(parts, schema=schema), n_items), len(train_ids)


def valid_seqs(samples: pa.Table, n_items: int) -> Seqs:
    """``[BOS, history, first target]`` of every ``valid`` row, ordered by sample_id: the validation loss in the
    training loss's form (for influence toward the validation samples, ``InfluenceConfig.target="valid"``)."""
    t = _split(samples, VALID)
    t = t.take(pc.sort_indices(t, [("sample_id", "ascending")]))
    hist = _lists(t.column("history"))
    flat, offsets = _lists(t.column("targets"))
    if t.num_rows and (np.diff(offsets) < 1).any():
        raise ValueError("valid_seqs: a validation row without a target")
    first = flat[offsets[:-1]].astype(np.int64)
    tokens, offs = _ragged([_const(t.num_rows, n_items + 1), hist, (first, np.arange(t.num_rows + 1))])
    return Seqs(tokens, offs, t.column("sample_id").to_numpy().astype(np.int64))


def eval_set(samples: pa.Table, split: str, n_items: int) -> EvalSet:
    """``valid`` or ``test`` rows with their masks.

    Masked items: the row's history plus everything else known to precede its targets, rebuilt from the same
    user's ``train`` row (its history and target) and, for test rows, the ``valid`` target. Histories are cut to
    ``max_len``, so for users with longer sequences a few of their oldest items stay unmasked.
    """
    if split not in (VALID, TEST):
        raise ValueError(f"split={split!r}: evaluation rows are {VALID!r} or {TEST!r}")
    t = _split(samples, split)
    n = t.num_rows
    hist = _lists(t.column("history"))
    tokens, offsets = _ragged([_const(n, n_items + 1), hist])
    targets = _lists(t.column("targets"))
    users = t.column("user_idx").to_pylist()
    known: dict[int, list[int]] = {}
    for s in (TRAIN, VALID) if split == TEST else (TRAIN,):
        rows = _split(samples, s)
        for u, h, y in zip(
            rows.column("user_idx").to_pylist(), rows.column("history").to_pylist(), rows.column("target").to_pylist()
        ):
            known.setdefault(u, []).extend([*h, y])
    mask_lists = [
        np.unique(np.concatenate([hist[0][hist[1][i] : hist[1][i + 1]], np.asarray(known.get(u, []), np.int64)]))
        for i, u in enumerate(users)
    ]
    mask_off = np.concatenate([[0], np.cumsum([len(m) for m in mask_lists])]).astype(np.int64)
    mask = np.concatenate(mask_lists).astype(np.int64) if mask_lists else np.zeros(0, np.int64)
    ids = t.column("sample_id").to_numpy().astype(np.int64)
    return EvalSet(Seqs(tokens, offsets, ids), Seqs(targets[0], targets[1], ids), Seqs(mask, mask_off, ids))


def n_positions(seqs: Seqs, max_len: int) -> np.ndarray:
    """Loss positions of each training row: ``min(len - 1, max_len)``."""
    return np.minimum(seqs.lengths - 1, max_len)


def length_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """Row indices grouped into batches of similar length.

    Without ``rng``: sorted by length (stable), so the batching is a pure function of the data. With ``rng``:
    rows of equal length are shuffled and the order of the batches too (an epoch of training).
    """
    order = np.arange(len(lengths)) if rng is None else rng.permutation(len(lengths))
    order = order[np.argsort(lengths[order], kind="stable")]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def _left_pad(seqs: Seqs, rows: np.ndarray, start: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[B, L]`` array with ``tokens[start_i : start_i + lens_i]`` right-aligned; also the flat source indices."""
    b, width = len(rows), int(lens.max()) if len(lens) else 0
    r = np.repeat(np.arange(b), lens)
    within = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
    src = np.repeat(start, lens) + within
    out = np.zeros((b, width), dtype=np.int64)
    out[r, width - lens[r] + within] = seqs.tokens[src]
    return out, src


def train_batch(seqs: Seqs, rows: np.ndarray, max_len: int) -> Batch:
    """Inputs ``[BOS, x]`` and targets ``[x, y]`` of ``rows``, left-padded to the batch's longest row."""
    lens = n_positions(seqs, max_len)[rows]
    end = seqs.offsets[rows + 1]
    inputs, src = _left_pad(seqs, rows, end - 1 - lens, lens)
    x = torch.from_numpy(inputs)
    return Batch(
        inputs=x,
        real=x != 0,
        targets=torch.from_numpy(seqs.tokens[src + 1]),
        sample=torch.from_numpy(np.repeat(np.arange(len(rows)), lens)),
        weight=torch.from_numpy(np.repeat(1.0 / lens, lens)),
        rows=rows,
    )


def input_batch(seqs: Seqs, rows: np.ndarray, max_len: int) -> Tensor:
    """The last ``max_len`` tokens of each row, left-padded [B, L] (evaluation: the last position predicts)."""
    lens = np.minimum(seqs.lengths[rows], max_len)
    inputs, _ = _left_pad(seqs, rows, seqs.offsets[rows + 1] - lens, lens)
    return torch.from_numpy(inputs)
