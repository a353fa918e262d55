"""Issue 29 item 2: no step publishes non-finite weights, scores or metrics, all-equal scores or an empty day.

Each test replays the tester's command (the CLI, as a person runs it) or its library equivalent on a tiny synthetic
lake, and expects one line naming the value, exit 2, and nothing published.
"""

from __future__ import annotations

import io
import shutil

import numpy as np
import pyarrow as pa
import pytest
import torch

from dealrec_tasks.catalogue import Source, effort_shard
from dealrec_tasks.cli import main
from dealrec_tasks.config import IngestConfig, SamplesConfig, SyntheticConfig
from dealrec_tasks.errors import DegenerateError
from dealrec_tasks.metrics import UNRANKED
from dealrec_tasks.scoring.influence import combine_members
from dealrec_tasks.steps import ingest, pending_days, samples, synthetic
from dealrec_tasks.steps.readers import read_samples
from dealrec_tasks.steps.surrogate import train_surrogate
from dealrec_tasks.storage import Lake, join_uri
from dealrec_tasks.surrogate.batching import EvalSet, Seqs, eval_set
from dealrec_tasks.surrogate.config import SurrogateConfig
from dealrec_tasks.surrogate.evaluate import evaluate, popularity_ranks, rank_targets
from dealrec_tasks.surrogate.train import build_model

TINY_SURROGATE = SurrogateConfig.tiny(members=1, checkpoints=1, max_epochs=2, cold_start=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[str, str]:
    """A lake (its folder) with samples at its last day and a tiny surrogate there; each test works on a copy."""
    root = tmp_path_factory.mktemp("lake") / "lake"
    lake = Lake(str(root))
    synthetic(lake, SyntheticConfig(users=120, items=40, days=4, events_per_day=300))
    for dt in pending_days(lake):
        ingest(lake, dt, IngestConfig())
    dt = sorted(lake.partitions("sequences"))[-1]
    samples(lake, dt, SamplesConfig(max_len=10))
    train_surrogate(lake, dt, TINY_SURROGATE)
    return str(root), dt


@pytest.fixture
def lake(built, tmp_path, monkeypatch) -> tuple[Lake, str]:
    monkeypatch.setenv("DEALREC_PROGRESS", "0")  # stderr holds only what the CLI says
    shutil.copytree(built[0], tmp_path / "lake")
    return Lake(str(tmp_path / "lake")), built[1]


def _refused(lake: Lake, capsys, *args: str) -> str:
    """Run the CLI; it must exit 2 with one error line and no traceback. Returns that line."""
    code = main(["--lake", lake.root, *args])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err[-3000:]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


# ---------------------------------------------------------------------------------------------------------
# 1. Ranking metrics and the surrogate: a NaN model never looks good, never gets published
# ---------------------------------------------------------------------------------------------------------
def _ragged(rows: list[list[int]]) -> Seqs:
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    return Seqs(np.asarray([t for r in rows for t in r], np.int64), offsets, np.arange(len(rows), dtype=np.int64))


def test_nan_scores_are_never_a_hit_and_ties_count_against_the_target(lake):
    lake, dt = lake
    table, n_items = read_samples(lake, Source(dt))
    valid = eval_set(table, "valid", n_items)
    model = build_model(n_items, TINY_SURROGATE)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    ranks = rank_targets(model, valid)
    assert all((r == UNRANKED).all() for r in ranks)
    metrics = evaluate(model, valid)
    assert metrics["recall@20"] == 0.0 and metrics["ndcg@20"] == 0.0  # was 1.0 and 1.43: ties in the target's favour

    # Ties and NaN against a plain float64 loop: every other unmasked item scoring >= the target, or NaN, is ahead
    # of it (pessimistic rank); a target whose own score is NaN is never ranked.
    n, users = 12, 9
    rng = np.random.default_rng(0)
    counts = np.full(n, 3.0)  # a model that scores every item alike
    counts[[2, 7]] = [5.0, np.nan]
    targets = [rng.choice(np.arange(1, n + 1), 2, replace=False).tolist() for _ in range(users)]
    masks = [sorted(set(rng.choice(np.arange(1, n + 1), 3).tolist()) - set(t)) for t in targets]
    data = EvalSet(_ragged([[n + 1]] * users), _ragged(targets), _ragged(masks))
    got = popularity_ranks(counts, data, batch_size=4)
    for u in range(users):
        want = []
        for t in targets[u]:
            s = counts[t - 1]
            others = [counts[i - 1] for i in range(1, n + 1) if i != t and i not in masks[u]]
            want.append(UNRANKED if np.isnan(s) else sum(1 for o in others if np.isnan(o) or o >= s))
        assert got[u].tolist() == want, u


def test_surrogate_lr_1e3_is_refused_naming_lr_and_epoch_and_publishes_nothing(lake, capsys):
    lake, dt = lake
    before = lake.manifest("surrogate", dt)
    args = ("--hidden", "8", "--max-len", "10", "--batch-size", "32", "--dropout", "0", "--members", "1")
    line = _refused(lake, capsys, "surrogate", "--dt", dt, "--lr", "1e3", "--max-epochs", "8", *args)
    assert "surrogate" in line and "lr=1000.0" in line and "at epoch" in line and "lower --lr" in line, line
    assert lake.manifest("surrogate", dt) == before  # the day's surrogate is still the good one


# ---------------------------------------------------------------------------------------------------------
# 2. Influence: damping inf, a diverged surrogate and a NaN member are refused, never turned into 0.0
# ---------------------------------------------------------------------------------------------------------
def test_influence_solve_damping_inf_is_refused_naming_damping(lake, capsys):
    lake, dt = lake
    line = _refused(lake, capsys, "influence-solve", "--dt", dt, "--damping", "inf", "--negatives", "16")
    assert "damping=inf: must be finite" in line, line
    assert lake.manifest(f"influence/dt={dt}/solve") is None


def test_a_diverged_surrogate_is_refused_by_influence_naming_its_weight_file(lake, capsys):
    """A surrogate published with NaN weights (as before training refused them) gets no influence scores."""
    lake, dt = lake
    manifest = lake.manifest("surrogate", dt)
    part = lake.partition("surrogate", dt)
    files = [f for f in manifest["files"] if f.endswith(".pt") or f == "metrics.json"]
    blobs = {f: lake.storage.read_bytes(join_uri(part, f)) for f in files}
    state = torch.load(io.BytesIO(blobs["model.pt"]), weights_only=True)
    state["item_emb.weight"][1:] = float("nan")
    buf = io.BytesIO()
    torch.save(state, buf)
    blobs["model.pt"] = buf.getvalue()
    extra = {k: manifest[k] for k in ("counts", "source", "influence_weights")}
    lake.publish("surrogate", dt, {}, config=manifest["config"], extra=extra, blobs=blobs, inputs=manifest["inputs"])
    line = _refused(lake, capsys, "influence-solve", "--dt", dt, "--negatives", "16", "--target", "train")
    assert "model.pt" in line and "item_emb.weight are not finite" in line, line
    assert lake.manifest(f"influence/dt={dt}/solve") is None


def test_combine_members_refuses_a_nan_member_naming_it():
    good = np.array([0.5, -1.0, 2.0])
    with pytest.raises(DegenerateError, match=r"influence of influence_m1 \(ckpt_0_e2.pt\): 3 of 3 values"):
        combine_members([good, np.full(3, np.nan)], ["influence_m0 (model.pt)", "influence_m1 (ckpt_0_e2.pt)"])
    with pytest.raises(DegenerateError, match="member 0: 1 of 3 values are not finite"):
        combine_members([np.array([1.0, np.inf, 2.0])])


# ---------------------------------------------------------------------------------------------------------
# 3. Effort: alpha 0 is no LoRA at all; all-equal (or non-finite) efforts are never merged
# ---------------------------------------------------------------------------------------------------------
def test_effort_alpha_0_is_refused_naming_alpha(lake, capsys):
    lake, dt = lake
    line = _refused(lake, capsys, "effort", "--dt", dt, "--alpha", "0")
    assert "alpha=0: must be finite and > 0" in line, line
    assert lake.manifest(effort_shard(Source(dt), (0, 1))) is None


@pytest.mark.parametrize("value", [0.0, float("nan")])
def test_merge_effort_refuses_all_equal_or_nan_efforts(lake, capsys, value):
    """Shards an older effort step published (all-zero with alpha 0) never become the day's effort scores."""
    lake, dt = lake
    ids = [r["sample_id"] for r in lake.read("samples", dt, "samples.parquet").to_pylist() if r["split"] == "train"]
    table = pa.table({"sample_id": pa.array(ids, pa.int64()), "effort": pa.array([value] * len(ids), pa.float64())})
    shard = effort_shard(Source(dt), (0, 1))
    lake.publish(
        shard, None, {"effort.parquet": table}, config={"alpha": 0}, extra={"counts": {"train_samples": len(ids)}}
    )
    line = _refused(lake, capsys, "merge-effort", "--dt", dt, "--shards", "1")
    want = f"all {len(ids):,} scores equal 0.0" if value == 0 else f"{len(ids):,} of {len(ids):,} values are not finite"
    assert "merged effort" in line and want in line, line
    assert lake.manifest("scores_effort", dt) is None


# ---------------------------------------------------------------------------------------------------------
# 4. Samples: a window that leaves no training or test rows keeps the day's samples
# ---------------------------------------------------------------------------------------------------------
def test_samples_test_days_100000_keeps_the_days_samples(lake, capsys):
    lake, dt = lake
    before = lake.manifest("samples", dt)
    line = _refused(lake, capsys, "samples", "--dt", dt, "--max-len", "10", "--test-days", "100000")
    assert "test_days=100000" in line and "0 train" in line and "0 test rows" in line, line
    assert lake.manifest("samples", dt) == before
