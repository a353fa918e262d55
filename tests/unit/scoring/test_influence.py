"""Influence scores against naive float64 references on a tiny SASRec (DESIGN.md section 7.7)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch.func import functional_call

from dealrec_tasks.data.schema import SAMPLES_SCHEMA
from dealrec_tasks.errors import ConfigError, InputError
from dealrec_tasks.scoring.config import InfluenceConfig
from dealrec_tasks.scoring.influence import (
    BlockProblem,
    Positions,
    SolveInfo,
    columns_per_hvp,
    explicit_hessian,
    frozen,
    hvp_column_bytes,
    hvp_plan,
    influence,
    lissa,
    mean_gradient,
    negative_set,
    per_sample_grads,
    reference_grad,
    reference_hvp,
    reference_scores,
    score_rows,
    solve,
)
from dealrec_tasks.surrogate.batching import train_batch, train_seqs, valid_seqs
from dealrec_tasks.surrogate.config import SurrogateConfig
from dealrec_tasks.surrogate.model import BLOCKS, SASRec, bce_expected

N_ITEMS = 15


def _samples(n_users: int = 24, seed: int = 0, max_len: int = 6, split: str = "train") -> pa.Table:
    """Rows with empty, short and longer-than-max_len histories; ``valid`` rows get a second target (the first one
    is the next item)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        seq = rng.integers(1, N_ITEMS + 1, size=int(rng.integers(1, 10))).tolist()
        row = {
            "sample_id": int(rng.integers(0, 2**62)),
            "user_idx": u,
            "user_id": str(u),
            "split": split,
            "history": seq[:-1][-max_len:],
            "target": seq[-1],
            "targets": [seq[-1]],
        }
        if split == "valid":
            row["targets"].append(int(rng.integers(1, N_ITEMS + 1)))
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=SAMPLES_SCHEMA)


def _model(seed: int = 0, max_len: int = 6) -> SASRec:
    torch.manual_seed(seed)
    model = SASRec(N_ITEMS, SurrogateConfig.tiny(hidden=4, heads=2, max_len=max_len)).double()
    with torch.no_grad():  # break the symmetry of the zero-initialised biases and LayerNorms
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        model.item_emb.weight[0].zero_()
    return model.eval()


def _cfg(**kw) -> InfluenceConfig:
    """The paper's target (training risk) unless a test says otherwise."""
    base = {"target": "train", "negatives": 8, "dtype": "float64", "hvp_samples": 0, "cg_tol": 1e-12}
    return InfluenceConfig(**(base | kw))


@pytest.fixture(scope="module")
def setup():
    seqs = train_seqs(_samples(), N_ITEMS)
    return _model(), seqs


@pytest.mark.parametrize("block", sorted(BLOCKS))
def test_batched_per_sample_grads_equal_a_loop(setup, block):
    model, seqs = setup
    neg = negative_set(N_ITEMS, 8, 0)
    rows = np.arange(len(seqs))
    with frozen(model):
        batched = per_sample_grads(BlockProblem(model, block, neg), seqs, rows)
    loop = torch.stack([reference_grad(model, seqs, np.asarray([r]), block, neg, pad_to=6) for r in rows])
    torch.testing.assert_close(batched, loop, rtol=1e-10, atol=1e-12)


def test_mean_gradient_and_hvp_equal_whole_network_autograd(setup):
    model, seqs = setup
    neg = negative_set(N_ITEMS, 8, 0)
    rows = np.arange(len(seqs))
    with frozen(model):
        problem = BlockProblem(model, "attn_out", neg)
        v, cache = mean_gradient(problem, seqs, batch_size=5, cache_rows=rows)
        vec = torch.randn_like(v)
        sw = torch.full((len(rows),), 1.0 / len(rows), dtype=v.dtype)
        hv = problem.hvp(cache, sw, vec, chunk=7)
    ref_v = reference_grad(model, seqs, rows, "attn_out", neg) / len(rows)
    torch.testing.assert_close(v, ref_v, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(hv, reference_hvp(model, seqs, rows, "attn_out", neg, vec), rtol=1e-9, atol=1e-12)


def _full_hessian(model: SASRec, seqs, block: str, neg) -> torch.Tensor:
    """Hessian of the mean loss w.r.t. the block weight, by torch.autograd.functional.hessian."""
    name = {"attn_out": "attn.out_proj", "ffn_in": "ffn.fc1", "ffn_out": "ffn.fc2"}[block]
    name = f"blocks.{len(model.blocks) - 1}.{name}.weight"
    batch = train_batch(seqs, np.arange(len(seqs)), model.max_len)
    w0 = dict(model.named_parameters())[name].detach()

    def loss(w):
        params = {k: p.detach() for k, p in model.named_parameters()} | {name: w}
        h = functional_call(model, params, (batch.inputs,))[batch.real]
        item_w = params["item_emb.weight"][1 : N_ITEMS + 1]
        return (bce_expected(h, batch.targets, neg, item_w) * batch.weight).sum() / len(seqs)

    h = torch.autograd.functional.hessian(loss, w0)
    return h.reshape(w0.numel(), w0.numel())


@pytest.mark.parametrize("solver", ["cg", "explicit"])
def test_solve_matches_explicit_inverse_of_the_full_hessian(setup, solver):
    model, seqs = setup
    cfg = _cfg(solver=solver, damping=0.5)
    sol = solve(model, seqs, cfg)
    h = _full_hessian(model, seqs, cfg.block, sol.negatives)
    a = h + cfg.damping * torch.eye(h.shape[0], dtype=h.dtype)
    expected = torch.linalg.solve(a, sol.v.reshape(-1)).view_as(sol.v)
    torch.testing.assert_close(sol.u, expected, rtol=1e-8, atol=1e-10)
    if solver == "cg":
        assert sol.info.iterations < h.shape[0] + 1


def test_cg_on_an_indefinite_hessian_falls_back_to_its_psd_part(setup):
    """Without damping the block's Hessian (non-convex loss) is indefinite: CG meets negative curvature; the
    solve then uses the PSD projection of the explicit Hessian, checked against autograd's full Hessian."""
    model, seqs = setup
    cfg = _cfg(solver="cg", damping=1e-3)
    sol = solve(model, seqs, cfg)
    h = _full_hessian(model, seqs, cfg.block, sol.negatives)
    eig, vecs = torch.linalg.eigh(h)
    assert eig[0] < -cfg.damping, "the fixture should have an indefinite Hessian"
    assert sol.info.solver == "cg->psd_explicit"
    expected = vecs @ ((vecs.T @ sol.v.reshape(-1)) / (eig.clamp_min(0) + cfg.damping))
    torch.testing.assert_close(sol.u.reshape(-1), expected, rtol=1e-7, atol=1e-9)
    assert sol.info.min_eig == pytest.approx(float(eig[0]), rel=1e-8)


def test_columns_per_hvp_is_what_fits_in_the_budget_beside_the_unbatched_part():
    assert columns_per_hvp(10_000, 1_000) == 9
    assert columns_per_hvp(10_999, 1_000) == 9
    assert columns_per_hvp(2_000, 1_000) == 1
    assert columns_per_hvp(500, 1_000) == 1  # never 0: hvp_plan shrinks the positions until one column fits
    with pytest.raises(ConfigError, match="hvp_memory_mb=0"):
        _cfg(hvp_memory_mb=0)


def _recording_hvp(problem: BlockProblem) -> list[tuple[int, int]]:
    """Record (columns, positions per chunk) of every HVP the problem runs; the products themselves are unchanged."""
    calls: list[tuple[int, int]] = []
    hvp = problem.hvp

    def recorded(p, sample_weight, vec, chunk):
        calls.append((vec.shape[0] if vec.dim() == 3 else 1, chunk))
        return hvp(p, sample_weight, vec, chunk)

    problem.hvp = recorded  # type: ignore[method-assign]
    return calls


def test_explicit_hessian_within_a_tiny_budget_equals_a_large_one_and_a_float64_reference(setup):
    """The budget decides the columns (and, below one column, the positions) per batched HVP, never the result."""
    model, seqs = setup
    neg = negative_set(N_ITEMS, 8, 0)
    rows = np.arange(len(seqs))
    reference = _full_hessian(model, seqs, "attn_out", neg)
    n = reference.shape[0]
    with frozen(model):
        problem = BlockProblem(model, "attn_out", neg)
        _, cache = mean_gradient(problem, seqs, batch_size=5, cache_rows=rows)
        positions = len(cache.targets)
        column = hvp_column_bytes(problem, positions)
        for budget, chunk, columns in [
            (2 * column, positions, 1),  # one column a product
            (3 * column, positions, 2),
            (10**12, positions, n),  # all at once
            (column, positions, None),  # not even one column fits: fewer positions per chunk
            (3 * column, 7, None),  # the configured chunk caps the positions: more columns fit
        ]:
            plan = hvp_plan(problem, cache, chunk, budget)
            assert plan[1] == columns_per_hvp(budget, hvp_column_bytes(problem, plan[0]))
            assert plan[0] == chunk if budget >= 2 * column else plan[0] < chunk
            assert columns is None or min(plan[1], n) == columns
            calls = _recording_hvp(problem)
            h = explicit_hessian(problem, cache, chunk, budget)
            del problem.hvp  # back to the method
            assert max(c for c, _ in calls) == min(plan[1], n) and all(p == plan[0] for _, p in calls)
            assert sum(c for c, _ in calls) == n and len(calls) == -(-n // plan[1])
            torch.testing.assert_close(h, reference, rtol=1e-9, atol=1e-12)


def test_explicit_hessian_plan_follows_the_budget_not_the_subsample():
    """Games-like sizes (hidden 64, 1024 negatives, float32, hvp_chunk 16384): the default 1 GiB budget gives one
    column per product however many positions the subsample has (256 columns, as before, needed ~100 GB there)."""
    model = SASRec(5000, SurrogateConfig.tiny(hidden=64, heads=2, max_len=50))
    problem = BlockProblem(model, "attn_out", negative_set(5000, 1024, 0))
    per_column = hvp_column_bytes(problem, 16384)
    assert 400 * 2**20 < per_column < 500 * 2**20  # measured: 395 MiB a column (CPU peak RSS, 16384 positions)
    cfg = InfluenceConfig()
    for n_positions in (20_000, 200_000, 2_000_000):
        empty = torch.empty(0)
        cache = Positions(empty, empty, torch.zeros(n_positions, dtype=torch.long), empty, empty, 0)
        assert hvp_plan(problem, cache, cfg.hvp_chunk, cfg.hvp_memory_mb * 2**20) == (16384, 1)  # 641 MiB
        assert hvp_plan(problem, cache, cfg.hvp_chunk, 4 * 2**30) == (16384, 7)  # measured peak 3185 MiB
        assert hvp_plan(problem, cache, cfg.hvp_chunk, 256 * 2**20) == (4096, 1)  # 179 MiB


def test_lissa_converges_to_the_exact_answer(setup):
    """LiSSA's recursion with every sample in each step (a deterministic Hessian) reaches the exact solve."""
    model, seqs = setup
    n = len(seqs)
    cfg = _cfg(solver="lissa", lissa_damp=0.1, lissa_scale=5.0, lissa_depth=400)
    exact = solve(model, seqs, _cfg(solver="explicit", damping=cfg.effective_damping))
    rows = np.arange(n)
    info = SolveInfo("lissa", cfg.effective_damping)
    with frozen(model):
        problem = BlockProblem(model, cfg.block, exact.negatives)
        v, cache = mean_gradient(problem, seqs, batch_size=8, cache_rows=rows)
        draws = torch.from_numpy(np.tile(rows, (cfg.lissa_depth, 1)))  # [depth, n]: all samples every step
        u = lissa(problem, cache, draws, v, cfg, info)
    torch.testing.assert_close(u, exact.u, rtol=1e-8, atol=1e-10)
    assert info.hvps == cfg.lissa_depth


def test_lissa_with_the_papers_single_sample_steps_runs(setup):
    model, seqs = setup
    sol = solve(model, seqs, _cfg(solver="lissa", lissa_depth=200))
    assert sol.info.damping == pytest.approx(0.25) and sol.info.hvps == 200
    assert torch.isfinite(sol.u).all()


def test_scores_equal_loop_and_do_not_depend_on_batch_or_shard(setup):
    model, seqs = setup
    full = influence(model, seqs, _cfg(batch_size=64))
    rows = np.arange(len(seqs))
    loop = reference_scores(model, seqs, rows, "attn_out", full.solution.negatives, full.solution.u, pad_to=6)
    np.testing.assert_allclose(full.influence, loop, rtol=1e-9, atol=1e-13)
    small = influence(model, seqs, _cfg(batch_size=3, spill=False))
    np.testing.assert_allclose(small.influence, full.influence, rtol=1e-9, atol=1e-13)
    shards = [influence(model, seqs, _cfg(batch_size=4), shard=(i, 3)) for i in range(3)]
    np.testing.assert_array_equal(np.concatenate([s.sample_id for s in shards]), full.sample_id)
    np.testing.assert_allclose(np.concatenate([s.influence for s in shards]), full.influence, rtol=1e-9, atol=1e-13)


def test_scoring_alone_honours_the_thread_count(setup):
    """A shard with a published solve runs only ``score_rows``: ``threads`` must apply there too (it was set in
    ``solve`` only, so such a shard used torch's default)."""
    model, seqs = setup
    sol = solve(model, seqs, _cfg())
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        score_rows(model, seqs, sol.u, sol.negatives, _cfg(threads=1), np.arange(3))
        assert torch.get_num_threads() == 1
        score_rows(model, seqs, sol.u, sol.negatives, _cfg(threads=0), np.arange(3))
        assert torch.get_num_threads() == 1  # 0 keeps what is set
    finally:
        torch.set_num_threads(before)


def test_influence_toward_the_validation_rows_equals_a_float64_reference(setup):
    """target="valid": u = (H_train + damping I)^-1 v_valid with v_valid the whole-network mean gradient of the
    validation sequences; each training sample's score is its own gradient dotted with u."""
    model, seqs = setup
    valid = valid_seqs(_samples(9, seed=1, split="valid"), N_ITEMS)
    cfg = _cfg(target="valid", damping=0.5)
    res = influence(model, seqs, cfg, target=valid)
    neg = res.solution.negatives
    v_valid = reference_grad(model, valid, np.arange(len(valid)), cfg.block, neg) / len(valid)
    torch.testing.assert_close(res.solution.v, v_valid, rtol=1e-10, atol=1e-12)
    h = _full_hessian(model, seqs, cfg.block, neg)
    u = torch.linalg.solve(h + cfg.damping * torch.eye(h.shape[0], dtype=h.dtype), v_valid.reshape(-1))
    rows = np.arange(len(seqs))
    loop = reference_scores(model, seqs, rows, cfg.block, neg, u.view_as(v_valid), pad_to=6)
    np.testing.assert_allclose(res.influence, loop, rtol=1e-8, atol=1e-12)
    train_target = influence(model, seqs, _cfg(damping=0.5)).influence
    assert not np.allclose(res.influence, train_target)  # another v, other scores
    with pytest.raises(InputError, match="target='valid': no validation samples"):
        influence(model, seqs, cfg)
    with pytest.raises(ConfigError, match="target='test'"):
        _cfg(target="test")


def test_valid_seqs_are_bos_history_and_the_first_target_by_sample_id():
    table = _samples(9, seed=1, split="valid")
    seqs = valid_seqs(table, N_ITEMS)
    rows = sorted(table.to_pylist(), key=lambda r: r["sample_id"])
    assert seqs.sample_id.tolist() == [r["sample_id"] for r in rows]
    for i, r in enumerate(rows):
        assert seqs.row(i).tolist() == [N_ITEMS + 1, *r["history"], r["targets"][0]]


def test_negative_seed_changes_the_set_but_not_its_size():
    a, b = negative_set(100, 10, 0), negative_set(100, 10, 1)
    assert len(a) == len(b) == 10 and not torch.equal(a, b)
    assert torch.equal(negative_set(100, 10, 0), a)
    assert torch.equal(negative_set(5, 10, 0), torch.arange(1, 6))


def test_stratified_negatives_are_distinct_seeded_and_cover_head_and_tail():
    import numpy as np

    from dealrec_tasks.scoring.influence import negative_set

    popularity = np.random.default_rng(0).pareto(1.2, size=1000)
    a = negative_set(1000, 100, seed=0, popularity=popularity).numpy()
    b = negative_set(1000, 100, seed=1, popularity=popularity).numpy()
    assert len(np.unique(a)) == 100 and a.min() >= 1 and a.max() <= 1000
    assert np.array_equal(a, negative_set(1000, 100, seed=0, popularity=popularity).numpy())
    assert not np.array_equal(a, b)
    rank = np.empty(1000, dtype=int)
    rank[np.argsort(-popularity, kind="stable")] = np.arange(1000)
    # Exactly one pick in every block of 10 popularity ranks: the head and the tail are both represented.
    assert np.array_equal(np.bincount(rank[a - 1] // 10, minlength=100), np.ones(100, dtype=int))
    # Every item is equally likely to be picked (unbiased mean): inclusion frequency over many seeds.
    hits = np.zeros(1000)
    for seed in range(300):
        hits[negative_set(1000, 100, seed=seed, popularity=popularity).numpy() - 1] += 1
    assert abs(hits.mean() / 300 - 0.1) < 1e-9 and hits.max() / 300 < 0.25


def _combine_loop(scores: list[list[float]]) -> list[float]:
    """Naive float64 reference of ``combine_members``: plain Python loops."""
    n = len(scores[0])
    out = [0.0] * n
    for member in scores:
        rms = (sum(float(x) * float(x) for x in member) / n) ** 0.5
        for j in range(n):
            out[j] += (float(member[j]) / rms if rms > 0 else 0.0) / len(scores)
    return out


def test_combine_members_equals_a_naive_float64_loop():
    from dealrec_tasks.scoring.influence import combine_members

    rng = np.random.default_rng(0)
    n = 37
    members = [
        rng.standard_normal(n) * 1e-3,  # small scale
        rng.standard_normal(n) * 50 + 3,  # large scale, mostly positive
        np.zeros(n),  # a member with no signal contributes 0
        rng.standard_normal(n).astype(np.float32),  # float32 input is combined in float64
    ]
    got = combine_members(members)
    assert got.dtype == np.float64 and got.shape == (n,)
    np.testing.assert_allclose(got, _combine_loop([m.tolist() for m in members]), rtol=1e-12, atol=1e-15)
    # One member: its scores over their RMS; the sign of every score kept (not centred), and 0 stays 0.
    one = np.array([3.0, -4.0, 0.0, 1.0])
    np.testing.assert_allclose(combine_members([one]), one / np.sqrt(np.mean(one**2)), rtol=1e-15)
    # Scale-free per member: rescaling one member (by a positive factor) changes nothing.
    np.testing.assert_allclose(combine_members([members[0] * 1e6, members[1]]), combine_members(members[:2]))
    assert combine_members([np.zeros(3), np.zeros(3)]).tolist() == [0.0, 0.0, 0.0]
    assert combine_members([np.zeros(0)]).shape == (0,)
    with pytest.raises(ValueError):
        combine_members([])
    with pytest.raises(ValueError):
        combine_members([np.ones(3), np.ones(4)])
