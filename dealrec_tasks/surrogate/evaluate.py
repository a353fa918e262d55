"""Full-ranking Recall@K and NDCG@K with the user's known items masked (DESIGN.md section 3).

Per user with targets T and 0-based ranks r(t) among all items: Recall@K = |{t: r(t) < K}| / |T| and
NDCG@K = sum_{t: r(t) < K} 1 / log2(r(t) + 2) / sum_{i < min(|T|, K)} 1 / log2(i + 2), averaged over users.
A target's rank counts the other unmasked items scored at least as high as it, or NaN: ties and incomparable scores
count against it, so a model that scores everything alike (or NaN) ranks its targets last, never first. A target
whose own score is not finite (NaN, +-inf; a masked target scores -inf) is ``UNRANKED``: never a hit at any K.
Masked items score -inf, so they are never ahead of a target with a finite score.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from dealrec_tasks.metrics import UNRANKED, metrics_from_ranks
from dealrec_tasks.surrogate.batching import EvalSet, input_batch, length_batches
from dealrec_tasks.surrogate.model import SASRec

KS = (10, 20, 50)


@torch.no_grad()
def rank_targets(model: SASRec, data: EvalSet, batch_size: int = 1024) -> list[np.ndarray]:
    """0-based rank of every target of every row, over all items with the row's mask applied."""
    was_training = model.training
    model.eval()
    items = model.item_weights()  # [n, H]
    ranks: list[np.ndarray | None] = [None] * len(data.inputs)
    for rows in length_batches(data.inputs.lengths, batch_size):
        h = model(input_batch(data.inputs, rows, model.max_len))[:, -1]  # [B, H] the last position predicts
        for i, r in zip(rows, _masked_ranks(h @ items.T, data, rows)):  # scores [B, n]
            ranks[i] = r
    model.train(was_training)
    return ranks  # type: ignore[return-value]


def _masked_ranks(scores: Tensor, data: EvalSet, rows: np.ndarray) -> list[np.ndarray]:
    """Each row's target ranks from its scores [B, n] over all items (modified in place: the mask gets -inf)."""
    b = torch.from_numpy(np.repeat(np.arange(len(rows)), data.mask.lengths[rows]))
    m = torch.from_numpy(np.concatenate([data.mask.row(i) for i in rows]) - 1)
    scores[b, m] = -torch.inf
    tb = torch.from_numpy(np.repeat(np.arange(len(rows)), data.targets.lengths[rows]))
    tgt = torch.from_numpy(np.concatenate([data.targets.row(i) for i in rows]) - 1)
    # Rank = other items at or above the target (or NaN); computed per row block to bound memory.
    ahead = _count_ahead(scores, tb, scores[tb, tgt])  # [sum |T|]
    return np.split(ahead.numpy(), np.cumsum(data.targets.lengths[rows])[:-1])


def _count_ahead(scores: Tensor, row: Tensor, value: Tensor, chunk: int = 256) -> Tensor:
    """Per target: the items of its row (``scores[row]`` [n]) other than itself with a score >= ``value`` or NaN (the
    pessimistic rank: ties against the target); ``UNRANKED`` when ``value`` is not finite."""
    out = []
    for i in range(0, len(row), chunk):
        s = scores[row[i : i + chunk]]  # [c, n]
        v = value[i : i + chunk]  # [c]
        ahead = ((s >= v[:, None]) | s.isnan()).sum(-1) - 1  # [c]; a finite target is >= itself: minus one
        out.append(torch.where(torch.isfinite(v), ahead, torch.full_like(ahead, UNRANKED)))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def evaluate(model: SASRec, data: EvalSet, batch_size: int = 1024, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Recall@K / NDCG@K over the rows of ``data`` (every row has at least one target)."""
    return metrics_from_ranks(rank_targets(model, data, batch_size), ks)


def popularity_ranks(counts: np.ndarray, data: EvalSet, batch_size: int = 1024) -> list[np.ndarray]:
    """0-based rank of every target when all items are ranked by ``counts`` [n_items] (item i + 1 at index i),
    the row's mask applied and ties against the target, as ``rank_targets`` does for a model."""
    scores_all = torch.as_tensor(np.asarray(counts, dtype=np.float64))  # [n]
    ranks: list[np.ndarray] = []
    for start in range(0, len(data.inputs), batch_size):
        rows = np.arange(start, min(start + batch_size, len(data.inputs)))
        ranks.extend(_masked_ranks(scores_all.expand(len(rows), -1).clone(), data, rows))  # [B, n]
    return ranks


def popularity_metrics(counts: np.ndarray, data: EvalSet, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Recall@K / NDCG@K of the popularity ranking: the reference a coreset-trained backend should beat."""
    return metrics_from_ranks(popularity_ranks(counts, data), ks)
