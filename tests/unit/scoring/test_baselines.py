"""GraNd / EL2N / user representations: batched == a plain loop, sample by sample, in float64."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F

from dealrec_tasks.data.schema import SAMPLES_SCHEMA
from dealrec_tasks.scoring.baselines import el2n_scores, grand_scores, user_representations
from dealrec_tasks.scoring.influence import negative_set
from dealrec_tasks.selection import GRAD_BLOCKS
from dealrec_tasks.surrogate.batching import Seqs, train_seqs
from dealrec_tasks.surrogate.config import SurrogateConfig
from dealrec_tasks.surrogate.model import BLOCKS, SASRec, bce_expected

N_ITEMS = 15
MAX_LEN = 6


def _samples(n_users: int = 20, seed: int = 0) -> pa.Table:
    """Train rows with empty, short and longer-than-max_len histories (positive sometimes among the negatives)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        seq = rng.integers(1, N_ITEMS + 1, size=int(rng.integers(1, 10))).tolist()
        hist = seq[:-1][-(MAX_LEN + 2) :]
        rows.append(
            {
                "sample_id": int(rng.integers(0, 2**62)),
                "user_idx": u,
                "user_id": str(u),
                "split": "train",
                "history": hist,
                "target": seq[-1],
                "targets": [seq[-1]],
            }
        )
    return pa.Table.from_pylist(rows, schema=SAMPLES_SCHEMA)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = SASRec(N_ITEMS, SurrogateConfig.tiny(hidden=4, heads=2, max_len=MAX_LEN)).double()
    with torch.no_grad():  # break the symmetry of zero biases and identity LayerNorms
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        model.item_emb.weight[0].zero_()
    return model.eval(), train_seqs(_samples(), N_ITEMS), negative_set(N_ITEMS, 8, 0)


def _one(seqs: Seqs, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs [1, T] and targets [T] of row i alone, no padding, last max_len positions."""
    tok = torch.from_numpy(seqs.row(i))
    t = min(len(tok) - 1, MAX_LEN)
    return tok[-t - 1 : -1].unsqueeze(0), tok[-t:]


def test_grad_blocks_match_the_model():
    assert set(GRAD_BLOCKS) == set(BLOCKS)


@pytest.mark.parametrize("block", sorted(BLOCKS))
def test_grand_batched_equals_a_loop(setup, block):
    model, seqs, neg = setup
    batched = grand_scores(model, seqs, neg, block, batch_size=7)
    layer = model.block_linear(block)
    loop = []
    for i in range(len(seqs)):
        x, y = _one(seqs, i)
        loss = bce_expected(model(x)[0], y, neg, model.item_weights()).mean()  # L(s): mean over positions
        gw, gb = torch.autograd.grad(loss, [layer.weight, layer.bias])
        loop.append(float(torch.sqrt((gw**2).sum() + (gb**2).sum())))
    np.testing.assert_allclose(batched, loop, rtol=1e-10, atol=1e-14)
    assert np.all(batched > 0)
    assert all(p.requires_grad for p in model.parameters())  # restored after scoring


def test_el2n_batched_equals_a_loop(setup):
    model, seqs, neg = setup
    batched = el2n_scores(model, seqs, neg, batch_size=5)
    loop = []
    with torch.no_grad():
        for i in range(len(seqs)):
            x, y = _one(seqs, i)
            h = model(x)[0]  # [T, H]
            per_pos = []
            for t in range(len(y)):
                negs = neg[neg != y[t]]  # the positive is no negative of its own position
                scores = model.item_weights()[torch.cat([y[t : t + 1], negs]) - 1] @ h[t]
                labels = F.one_hot(torch.tensor(0), len(scores)).double()
                per_pos.append(float(torch.linalg.vector_norm(torch.sigmoid(scores) - labels)))
            loop.append(np.mean(per_pos))
    np.testing.assert_allclose(batched, loop, rtol=1e-10, atol=1e-14)


def test_scores_of_a_subset_and_user_representations(setup):
    model, seqs, neg = setup
    rows = np.array([5, 0, 3])
    np.testing.assert_allclose(grand_scores(model, seqs, neg, rows=rows), grand_scores(model, seqs, neg)[rows])
    np.testing.assert_allclose(el2n_scores(model, seqs, neg, rows=rows), el2n_scores(model, seqs, neg)[rows])
    reps = user_representations(model, seqs, batch_size=3)
    with torch.no_grad():
        for i in range(len(seqs)):
            tok = torch.from_numpy(seqs.row(i)[-MAX_LEN:]).unsqueeze(0)
            np.testing.assert_allclose(reps[i], model(tok)[0, -1].numpy(), rtol=1e-10, atol=1e-14)
