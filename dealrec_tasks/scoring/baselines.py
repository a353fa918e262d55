"""Per-sample scores of the baseline selectors, from the SASRec surrogate: GraNd, EL2N, user representations.

Pure torch on a model and ``Seqs``, batched (length-bucketed, so a score never depends on its batch), in the
model's dtype. The loss is the scoring loss of the influence scores: per position, BCE of the positive and the
expectation over one fixed, seeded set of K negatives (``bce_expected``), averaged over the sample's positions,
so a score depends only on the sample and the negative seed (DESIGN.md section 3).

- GraNd (Paul et al. 2021): || grad_theta L(s) ||_2, with theta one Linear block of the surrogate (weight and
  bias; default the attention output projection of the last block, the influence block). The gradient of a
  Linear is sum_t g_t a_t^T, so its squared norm is sum_{t,t'} (g_t . g_t')(a_t . a_t') + ||sum_t g_t||^2:
  one [B, L, L] Gram product per batch, no per-sample gradient is formed. All parameters would include the
  item table (n_items x H per sample), too large to be worth it for a baseline.
- EL2N (Paul et al. 2021): per position the L2 norm of the error vector sigmoid(score) - label over the
  positive (label 1) and the fixed negatives (label 0; the positive left out of them), averaged per sample.
- User representation (RecRanker-style clusters): the surrogate's last hidden state after the user's whole
  sequence ``[BOS, history, target]``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from dealrec_tasks.progress import progress
from dealrec_tasks.scoring.influence import BlockProblem, batches, frozen
from dealrec_tasks.surrogate.batching import Seqs, input_batch, train_batch
from dealrec_tasks.surrogate.model import SASRec


def _rows(seqs: Seqs, rows: np.ndarray | None) -> np.ndarray:
    return np.arange(len(seqs)) if rows is None else np.asarray(rows)


def grand_scores(
    model: SASRec, seqs: Seqs, negatives: Tensor, block: str = "attn_out", batch_size: int = 512, rows=None
) -> np.ndarray:
    """||grad L(s)||_2 over the block's weight and bias, for ``rows`` (default all) in that order [n] float64."""
    rows = _rows(seqs, rows)
    out = np.zeros(len(seqs), dtype=np.float64)
    with frozen(model):
        problem = BlockProblem(model, block, negatives)
        for b in progress(batches(seqs, rows, batch_size, model.max_len), desc="GraNd scores", unit="batch"):
            batch = train_batch(seqs, b, model.max_len)
            p = problem.positions(batch)
            g = problem.output_grads(p)  # [N, out] dL(s)/dz_t of its own sample
            bsz, length = batch.inputs.shape
            g_pad = g.new_zeros(bsz, length, g.shape[1])
            a_pad = p.a.new_zeros(bsz, length, p.a.shape[1])
            g_pad[batch.real], a_pad[batch.real] = g, p.a  # [B, L, out], [B, L, in], zero at padding
            gram = (g_pad @ g_pad.transpose(1, 2)) * (a_pad @ a_pad.transpose(1, 2))  # [B, L, L]
            sq = gram.sum((1, 2))  # [B] ||sum_t g_t a_t^T||_F^2
            if problem.layer.bias is not None:
                sq = sq + (g_pad.sum(1) ** 2).sum(-1)  # [B] ||sum_t g_t||^2
            out[b] = sq.clamp_min(0).sqrt().double().numpy()
    return out[rows]


def el2n_scores(model: SASRec, seqs: Seqs, negatives: Tensor, batch_size: int = 512, rows=None) -> np.ndarray:
    """Mean over a sample's positions of ||sigmoid(scores) - labels||_2 (positive + fixed negatives) [n] float64."""
    rows = _rows(seqs, rows)
    out = np.zeros(len(seqs), dtype=np.float64)
    with frozen(model), torch.no_grad():
        item_w = model.item_weights()
        neg_w = item_w[negatives - 1]  # [K, H]
        for b in progress(batches(seqs, rows, batch_size, model.max_len), desc="EL2N scores", unit="batch"):
            batch = train_batch(seqs, b, model.max_len)
            h = model(batch.inputs)[batch.real]  # [N, H]
            p_pos = torch.sigmoid((h * item_w[batch.targets - 1]).sum(-1))  # [N]
            p_neg = torch.sigmoid(h @ neg_w.T)  # [N, K]
            in_set = torch.isin(batch.targets, negatives).to(h.dtype)  # [N] positive among the negatives
            sq = (p_pos - 1) ** 2 + (p_neg**2).sum(-1) - in_set * p_pos**2  # [N]
            per_pos = sq.clamp_min(0).sqrt() * batch.weight.to(h.dtype)  # [N] weighted by 1 / positions
            s = torch.zeros(len(b), dtype=h.dtype).index_add_(0, batch.sample, per_pos)  # [B]
            out[b] = s.double().numpy()
    return out[rows]


def user_representations(model: SASRec, seqs: Seqs, batch_size: int = 512, rows=None) -> np.ndarray:
    """Last hidden state of each row's whole token sequence [n, H] (float64), for clustering users."""
    rows = _rows(seqs, rows)
    out = np.zeros((len(seqs), model.hidden), dtype=np.float64)
    lens = np.minimum(seqs.lengths, model.max_len)
    order = rows[np.argsort(lens[rows], kind="stable")]
    with frozen(model), torch.no_grad():
        for i in range(0, len(order), batch_size):
            b = order[i : i + batch_size]
            out[b] = model(input_batch(seqs, b, model.max_len))[:, -1, :].double().numpy()  # [B, H]
    return out[rows]
