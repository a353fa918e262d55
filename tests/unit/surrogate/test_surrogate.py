"""SASRec surrogate: batching, padding invariance, warm start, metrics, training (tiny, float64)."""

from __future__ import annotations

import io
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dealrec_tasks.data.schema import SAMPLES_SCHEMA
from dealrec_tasks.metrics import metrics_from_ranks
from dealrec_tasks.sharding import shard_rows
from dealrec_tasks.surrogate.batching import (
    eval_set,
    input_batch,
    length_batches,
    shard_train_seqs,
    train_batch,
    train_seqs,
)
from dealrec_tasks.surrogate.config import SurrogateConfig
from dealrec_tasks.surrogate.evaluate import evaluate, rank_targets
from dealrec_tasks.surrogate.model import SASRec, expand_state_dict
from dealrec_tasks.surrogate.train import build_model, sample_negatives, train

N = 12


def _row(sid, user, split, history, targets):
    return {
        "sample_id": sid,
        "user_idx": user,
        "user_id": str(user),
        "split": split,
        "history": history,
        "target": targets[0],
        "targets": targets,
    }


def _table(rows) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SAMPLES_SCHEMA)


def test_train_batch_adds_bos_truncates_and_packs():
    t = _table([_row(2, 0, "train", [3, 4, 5, 6], [7]), _row(1, 1, "train", [], [9])])
    seqs = train_seqs(t, N)
    assert seqs.sample_id.tolist() == [1, 2]  # ordered by sample_id
    b = train_batch(seqs, np.array([0, 1]), max_len=3)
    bos = N + 1
    assert b.inputs.tolist() == [[0, 0, bos], [4, 5, 6]]  # [BOS, 3, 4, 5, 6] keeps its last 3
    assert b.targets.tolist() == [9, 5, 6, 7]
    assert b.sample.tolist() == [0, 1, 1, 1]
    assert b.weight.tolist() == pytest.approx([1, 1 / 3, 1 / 3, 1 / 3])
    assert input_batch(seqs, np.array([1]), 3).tolist() == [[5, 6, 7]]


def test_a_shards_train_seqs_read_in_batches_equal_its_rows_of_the_whole_table():
    """``shard_train_seqs`` (two passes over the file in record batches, the shard's rows only) equals the shard's
    slice of ``train_seqs`` over the whole table: for every shard count, batch size and row-group layout, with the
    splits mixed, empty histories, and a tie of sample_id (kept in file order, as train_seqs' stable sort does)."""
    rng = np.random.default_rng(0)
    rows = []
    for k in range(37):
        split = ["train", "valid", "test"][k % 3] if k % 5 else "train"
        history = rng.integers(1, N + 1, size=int(rng.integers(0, 6))).tolist()
        sid = int(rng.integers(0, 10**12))
        rows.append(_row(sid, k, split, history, [int(rng.integers(1, N + 1)), 1]))
    rows.append(_row(rows[0]["sample_id"], 99, "train", [1, 2, 3], [4]))  # a tie with row 0 (a train row)
    rows.append(_row(rows[0]["sample_id"], 98, "valid", [5], [6]))  # the same id in another split: not a train row
    table = _table([rows[i] for i in rng.permutation(len(rows))])
    whole = train_seqs(table, N)
    assert len(np.unique(whole.sample_id)) == len(whole) - 1
    for group in (5, 1000):
        sink = io.BytesIO()
        pq.write_table(table, sink, row_group_size=group)
        file = pq.ParquetFile(pa.BufferReader(sink.getvalue()))
        for n in range(1, len(whole) + 2):  # up to more shards than rows (empty shards)
            for batch_rows in (1, 4, 1000):
                got = [shard_train_seqs(file, N, (i, n), batch_rows) for i in range(n)]
                assert {n_train for _, n_train in got} == {len(whole)}
                for i, (seqs, _) in enumerate(got):
                    want = whole.take(shard_rows(len(whole), (i, n)))
                    np.testing.assert_array_equal(seqs.sample_id, want.sample_id)
                    np.testing.assert_array_equal(seqs.offsets, want.offsets)
                    np.testing.assert_array_equal(seqs.tokens, want.tokens)
    with pytest.raises(ValueError, match="batch_rows"):
        shard_train_seqs(file, N, (0, 1), 0)


def test_length_batches_cover_every_row_once():
    lengths = np.array([5, 1, 3, 3, 2, 8, 1])
    fixed = length_batches(lengths, 3)
    assert [lengths[b].tolist() for b in fixed] == [[1, 1, 2], [3, 3, 5], [8]]
    shuffled = length_batches(lengths, 3, np.random.default_rng(0))
    assert sorted(np.concatenate(shuffled).tolist()) == list(range(7))


def _model(**kw) -> SASRec:
    torch.manual_seed(0)
    return SASRec(N, SurrogateConfig.tiny(**kw)).double().eval()


def test_outputs_do_not_depend_on_padding():
    model = _model()
    alone = model(torch.tensor([[N + 1, 3, 4]]))  # [1, 3, H]
    padded = model(torch.tensor([[0, 0, 0, N + 1, 3, 4], [N + 1, 1, 2, 3, 4, 5]]))
    torch.testing.assert_close(padded[0, 3:], alone[0], rtol=1e-12, atol=1e-12)


def test_warm_start_keeps_known_items_and_bos():
    old = _model()
    state = old.state_dict()
    torch.manual_seed(1)
    grown = SASRec(N + 3, SurrogateConfig.tiny()).double()
    fresh_new_rows = grown.item_emb.weight[N + 1 : N + 4].detach().clone()
    grown.load_state_dict(expand_state_dict(state, grown))
    w = grown.item_emb.weight.detach()
    torch.testing.assert_close(w[: N + 1], state["item_emb.weight"][: N + 1])
    torch.testing.assert_close(w[N + 4], state["item_emb.weight"][N + 1])  # BOS moved to the new end
    torch.testing.assert_close(w[N + 1 : N + 4], fresh_new_rows)
    with pytest.raises(ValueError, match="append-only"):
        expand_state_dict(grown.state_dict(), old)


def test_metrics_follow_the_formulas():
    ranks = [np.array([0]), np.array([3, 30]), np.array([100])]
    m = metrics_from_ranks(ranks, ks=(10,))
    assert m["recall@10"] == pytest.approx((1 + 0.5 + 0) / 3)
    ndcg_user2 = (1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert m["ndcg@10"] == pytest.approx((1 + ndcg_user2 + 0) / 3)


def test_ranking_masks_known_items():
    model = _model()
    rows = [
        _row(1, 0, "train", [1, 2], [3]),
        _row(2, 0, "valid", [1, 2, 3], [4]),
        _row(3, 0, "test", [1, 2, 3, 4], [5, 6]),
    ]
    data = eval_set(_table(rows), "test", N)
    assert data.mask.row(0).tolist() == [1, 2, 3, 4]
    with torch.no_grad():
        scores = model(torch.tensor([[N + 1, 1, 2, 3, 4]]))[0, -1] @ model.item_weights().T
    scores[torch.tensor([0, 1, 2, 3])] = -torch.inf
    expected = [int((scores > scores[t - 1]).sum()) for t in (5, 6)]
    assert rank_targets(model, data)[0].tolist() == expected


def test_negatives_never_hit_the_positive():
    pos = torch.randint(1, N + 1, (5000,))
    neg = sample_negatives(pos, N, torch.Generator().manual_seed(0))
    assert bool((neg != pos).all()) and int(neg.min()) >= 1 and int(neg.max()) <= N


def _synthetic(n_users=60, seed=0) -> pa.Table:
    """Users walk a cycle of items, so the next item is learnable."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        start, length = int(rng.integers(1, N + 1)), int(rng.integers(2, 9))
        seq = [((start + i - 1) % N) + 1 for i in range(length + 2)]
        rows.append(_row(3 * u, u, "train", seq[: length - 1], [seq[length - 1]]))
        rows.append(_row(3 * u + 1, u, "valid", seq[:length], [seq[length]]))
        rows.append(_row(3 * u + 2, u, "test", seq[: length + 1], [seq[length + 1]]))
    return _table(rows)


def test_training_learns_and_stops_early():
    t = _synthetic()
    seqs, valid, test = train_seqs(t, N), eval_set(t, "valid", N), eval_set(t, "test", N)
    cfg = SurrogateConfig.tiny(hidden=16, max_epochs=40, patience=3, lr=1e-2, batch_size=16)
    res = train(seqs, valid, N, cfg)
    assert res.epochs < cfg.max_epochs  # stopped early
    assert res.best_epoch == res.epochs - cfg.patience
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert evaluate(res.model, test, ks=(5,))["recall@5"] > 0.5  # random would be ~5/N
    again = train(seqs, valid, N, cfg)  # seeded
    assert again.best_metric == res.best_metric and again.epochs == res.epochs
    warm = train(seqs, valid, N, cfg, init_state=res.model.state_dict())
    assert warm.warm_start and warm.best_epoch <= res.best_epoch


def test_build_model_is_seeded():
    a, b = build_model(N, SurrogateConfig.tiny()), build_model(N, SurrogateConfig.tiny())
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k


def test_closed_form_head_gradient_equals_autograd():
    from dealrec_tasks.surrogate.model import bce_expected, bce_expected_grad

    gen = torch.Generator().manual_seed(0)
    item_w = torch.randn(30, 6, generator=gen, dtype=torch.float64)
    h = torch.randn(40, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    pos = torch.randint(1, 31, (40,), generator=gen)
    negatives = torch.tensor([2, 3, 5, 8, 13, 21, 29])  # some positives fall inside the set
    (expected,) = torch.autograd.grad(bce_expected(h, pos, negatives, item_w).sum(), h)
    torch.testing.assert_close(bce_expected_grad(h.detach(), pos, negatives, item_w, chunk=7), expected)


def test_weighted_negatives_gradient_and_unbiasedness():
    import numpy as np

    from dealrec_tasks.scoring.influence import negative_set
    from dealrec_tasks.surrogate.model import WeightedNegatives, bce_expected, bce_expected_grad

    gen = torch.Generator().manual_seed(1)
    n = 60
    item_w = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    h = torch.randn(25, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    pos = torch.randint(1, n + 1, (25,), generator=gen)
    popularity = np.random.default_rng(0).pareto(1.0, size=n)
    negs = negative_set(n, 20, seed=3, popularity=popularity, exact_head=6)
    assert isinstance(negs, WeightedNegatives) and len(negs) == 20
    (expected,) = torch.autograd.grad(bce_expected(h, pos, negs, item_w).sum(), h)
    torch.testing.assert_close(bce_expected_grad(h.detach(), pos, negs, item_w, chunk=4), expected)
    # Averaged over seeds, the weighted estimate equals the exact mean over all items other than the positive.
    exact = bce_expected(h, pos, torch.arange(1, n + 1), item_w).detach()
    mean = torch.stack(
        [bce_expected(h, pos, negative_set(n, 20, s, popularity, 6), item_w).detach() for s in range(2000)]
    ).mean(0)
    torch.testing.assert_close(mean, exact, rtol=2e-2, atol=0)


def test_members_default_and_validation():
    from dealrec_tasks.errors import ConfigError

    assert SurrogateConfig().members == 4 and SurrogateConfig().checkpoints == 1 and SurrogateConfig.tiny().members == 2
    with pytest.raises(ConfigError, match="members=0: must be >= 1"):
        SurrogateConfig(members=0)
    assert SurrogateConfig.from_dict({"hidden": 8, "heads": 2}).members == 4  # a config stored before ensembles


def test_training_keeps_the_checkpoints_up_to_the_best_epoch():
    t = _synthetic()
    seqs, valid = train_seqs(t, N), eval_set(t, "valid", N)
    cfg = SurrogateConfig.tiny(hidden=16, max_epochs=40, patience=3, lr=1e-2, batch_size=16, checkpoints=3)
    res = train(seqs, valid, N, cfg)
    epochs = [e for e, _ in res.checkpoints]
    assert epochs == list(range(max(1, res.best_epoch - 2), res.best_epoch + 1))  # eval_every = 1
    for k, v in res.model.state_dict().items():  # the last kept checkpoint is the returned (best) model
        assert torch.equal(res.checkpoints[-1][1][k], v), k
    first, last = res.checkpoints[0][1], res.checkpoints[-1][1]
    if len(epochs) > 1:
        assert any(not torch.equal(first[k], last[k]) for k in first)  # distinct weights, not one state aliased
    every_other = train(seqs, valid, N, SurrogateConfig.tiny(hidden=16, max_epochs=8, eval_every=2, checkpoints=2))
    assert all(e % 2 == 0 for e, _ in every_other.checkpoints)  # only evaluated epochs are kept
    assert every_other.checkpoints[-1][0] == every_other.best_epoch
