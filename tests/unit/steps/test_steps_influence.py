"""Steps on a tiny synthetic lake: surrogate ensemble (cold, then warm) with its kept checkpoints, influence solve,
shards, merge."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dealrec_tasks.catalogue import Source, influence_shard
from dealrec_tasks.config import IngestConfig, SamplesConfig, SyntheticConfig
from dealrec_tasks.errors import InputError
from dealrec_tasks.scoring.config import InfluenceConfig
from dealrec_tasks.scoring.influence import combine_members, influence, score_rows, to_dtype
from dealrec_tasks.sharding import shard_rows
from dealrec_tasks.steps import influence as influence_steps
from dealrec_tasks.steps import ingest, pending_days, samples, synthetic
from dealrec_tasks.steps.influence import merge_influence, score_influence, solve_influence
from dealrec_tasks.steps.readers import (
    influence_sha256,
    influence_weights,
    load_ensemble,
    load_influence_models,
    load_model,
    read_samples,
)
from dealrec_tasks.steps.surrogate import train_surrogate
from dealrec_tasks.storage import Lake, join_uri
from dealrec_tasks.surrogate.batching import train_seqs, valid_seqs
from dealrec_tasks.surrogate.config import SurrogateConfig
from dealrec_tasks.surrogate.model import negatives_from_payload

ICFG = InfluenceConfig(target="train", negatives=16, hvp_samples=0, cg_tol=1e-10, dtype="float64")
# Learns on every epoch of the tiny lake (best epoch >= 2 for every member): members x checkpoints weight files.
LEARNS = dict(lr=1e-2, max_epochs=4, patience=4, cold_start=True)


def _lake(path) -> Lake:
    lake = Lake(str(path))
    res = synthetic(lake, SyntheticConfig(users=120, items=40, days=4, events_per_day=300))
    for dt in pending_days(lake):
        ingest(lake, dt, IngestConfig())
    days = sorted(lake.partitions("sequences"))
    for dt in days[-2:]:
        samples(lake, dt, SamplesConfig(max_len=10))
    lake.days = days  # type: ignore[attr-defined]
    assert res.counts["days"] == 4
    return lake


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    return _lake(tmp_path_factory.mktemp("lake"))


def _scores(lake: Lake, dt: str):
    return lake.read("scores_influence", dt, "influence.parquet").to_pandas()


def _columns(lake: Lake, dt: str) -> list[str]:
    """The merged scores' columns the surrogate's influence weight list implies."""
    files = len(influence_weights(lake.manifest("surrogate", dt)))
    return ["sample_id", "influence"] + [f"influence_m{j}" for j in range(files)]


def _republish_as_old(lake: Lake, dt: str, files: tuple[str, ...], drop: tuple[str, ...]) -> None:
    """Republish ``dt``'s surrogate as older code wrote it: only ``files``, no ``influence_weights`` list, and the
    config / counts without the keys ``drop``."""
    manifest = lake.manifest("surrogate", dt)
    part = lake.partition("surrogate", dt)
    blobs = {name: lake.storage.read_bytes(join_uri(part, name)) for name in files}
    config = {k: v for k, v in manifest["config"].items() if k not in drop}
    counts = {k: v for k, v in manifest["counts"].items() if k not in drop}
    lake.publish(
        "surrogate", dt, {}, config=config, extra={"counts": counts, "source": manifest["source"]}, blobs=blobs
    )
    assert "influence_weights" not in lake.manifest("surrogate", dt)


def test_surrogate_cold_then_warm_and_influence_shards(lake):
    d3, d4 = lake.days[-2:]
    cfg = SurrogateConfig.tiny(hidden=8, max_epochs=3, patience=2)
    assert cfg.members == 2
    first = train_surrogate(lake, d3, cfg)
    assert not first.counts["warm_start"] and "no earlier checkpoint" in first.notes[0]
    second = train_surrogate(lake, d4, cfg)
    assert second.counts["warm_start"] and f"dt={d3}" in second.notes[0]
    assert len(second.notes) == 1  # member i warm-started from member i: no fallback
    assert [m["warm_start"] for m in second.counts["per_member"]] == [True, True]
    cold = train_surrogate(lake, d4, SurrogateConfig.tiny(hidden=8, max_epochs=3, patience=2, cold_start=True))
    assert not cold.counts["warm_start"]
    assert not any(m["warm_start"] for m in cold.counts["per_member"])

    icfg = ICFG
    whole = score_influence(lake, d4, icfg, (0, 1))
    assert "solved locally" in whole.notes[0] and whole.counts["members"] == 2
    merged_one = merge_influence(lake, d4, 1)
    one = _scores(lake, d4)
    solve_influence(lake, d4, icfg)
    for i in range(3):
        r = score_influence(lake, d4, icfg, (i, 3))
        assert not r.notes  # used the published solve
    merge_influence(lake, d4, 3)
    three = _scores(lake, d4)
    assert merged_one.counts["samples"] == len(three) and merged_one.counts["members"] == 2
    assert merged_one.counts["weights"] == len(_columns(lake, d4)) - 2 >= 2
    assert list(three.columns) == _columns(lake, d4)
    np.testing.assert_array_equal(one.sample_id, three.sample_id)
    for col in _columns(lake, d4)[1:]:
        np.testing.assert_allclose(one[col], three[col], rtol=1e-6, atol=1e-9)  # float32: BLAS blocking
    with pytest.raises(InputError, match="not published"):
        merge_influence(lake, d4, 2)


def test_members_are_published_and_loadable(lake):
    d3, d4 = lake.days[-2:]
    res = train_surrogate(lake, d4, SurrogateConfig.tiny(members=3, seed=7))
    manifest = lake.manifest("surrogate", d4)
    assert {"model.pt", "model_1.pt", "model_2.pt", "metrics.json"} <= set(manifest["files"])
    assert manifest["config"]["members"] == 3 and manifest["counts"]["members"] == 3
    assert [m["seed"] for m in res.counts["per_member"]] == [7, 8, 9]
    assert res.counts["valid_recall"] == res.counts["per_member"][0]["valid_recall"]  # member 0's keys kept
    # d3 has 2 members: member 2 falls back to its member 0, with a note.
    assert any("member 2" in n and "member 0" in n for n in res.notes)
    models, _ = load_ensemble(lake, Source(d4, None))
    assert len(models) == 3
    first, _ = load_model(lake, Source(d4, None))
    for k, v in first.state_dict().items():
        assert torch.equal(v, models[0].state_dict()[k]), k  # load_model is member 0
    emb = [m.item_emb.weight.detach() for m in models]
    assert not torch.equal(emb[0], emb[1]) and not torch.equal(emb[1], emb[2])  # different seeds
    metrics = lake.storage.read_json(join_uri(lake.partition("surrogate", d4), "metrics.json"))
    assert len(metrics["members"]) == 3 and metrics["history"] == metrics["members"][0]["history"]
    # A corrupt member is refused, naming its file.
    uri = join_uri(lake.partition("surrogate", d4), "model_2.pt")
    good = lake.storage.read_bytes(uri)
    lake.storage.write_bytes(uri, good + b"x")
    with pytest.raises(InputError, match="model_2.pt: checksum differs"):
        load_ensemble(lake, Source(d4, None))
    with pytest.raises(InputError, match="model_2.pt: checksum differs"):
        load_influence_models(lake, Source(d4, None))
    lake.storage.write_bytes(uri, good)


def test_every_members_kept_checkpoints_are_published_in_order(lake):
    d4 = lake.days[-1]
    cfg = SurrogateConfig.tiny(members=2, checkpoints=2, **LEARNS)
    res = train_surrogate(lake, d4, cfg)
    manifest = lake.manifest("surrogate", d4)
    weights = manifest["influence_weights"]
    best = [m["best_epoch"] for m in res.counts["per_member"]]
    assert min(best) >= cfg.checkpoints  # this config learns: every member keeps `checkpoints` epochs
    expected = []
    for i, b in enumerate(best):  # member-major, epochs ascending, the best (model*.pt) last
        expected += [
            {"file": f"ckpt_{i}_e{e}.pt", "member": i, "epoch": e, "best": False}
            for e in range(b - cfg.checkpoints + 1, b)
        ]
        expected.append({"file": "model.pt" if i == 0 else f"model_{i}.pt", "member": i, "epoch": b, "best": True})
    assert weights == expected and len(weights) == cfg.members * cfg.checkpoints
    assert set(manifest["files"]) == {w["file"] for w in weights} | {"metrics.json"}
    assert res.counts["checkpoints"] == 2 and res.counts["influence_files"] == 4 and res.counts["members"] == 2
    assert influence_sha256(manifest) == [manifest["files"][w["file"]]["sha256"] for w in weights]

    src = Source(d4, None)
    models, _ = load_influence_models(lake, src)
    members, _ = load_ensemble(lake, src)
    assert len(models) == 4 and len(members) == 2
    for k, v in members[1].state_dict().items():
        assert torch.equal(models[3].state_dict()[k], v), k  # the member's best is its last file
    assert not torch.equal(models[2].item_emb.weight, models[3].item_emb.weight)  # an earlier epoch differs
    # A checkpoint file is checksum-verified like a member's.
    ckpt = weights[2]["file"]  # member 1's checkpoint before its best
    uri = join_uri(lake.partition("surrogate", d4), ckpt)
    good = lake.storage.read_bytes(uri)
    lake.storage.write_bytes(uri, good + b"x")
    with pytest.raises(InputError, match=f"{ckpt}: checksum differs"):
        load_influence_models(lake, src)
    lake.storage.write_bytes(uri, good)
    # A list naming a file the manifest does not hold is refused.
    broken = manifest | {"influence_weights": weights + [{"file": "ckpt_9_e1.pt", "member": 9, "epoch": 1}]}
    with pytest.raises(InputError, match="ckpt_9_e1.pt"):
        influence_weights(broken)


def test_sharded_ensemble_equals_the_ensemble_computed_directly(lake):
    d4 = lake.days[-1]
    train_surrogate(lake, d4, SurrogateConfig.tiny(seed=3, **LEARNS))
    solve_influence(lake, d4, ICFG)
    for i in range(2):
        assert not score_influence(lake, d4, ICFG, (i, 2)).notes
    merge_influence(lake, d4, 2)
    merged = _scores(lake, d4)
    src = Source(d4, None)
    table, n_items = read_samples(lake, src)
    seqs = train_seqs(table, n_items)
    models, _ = load_influence_models(lake, src)
    assert len(models) == 4  # 2 members x 2 checkpoints
    raw = [influence(model, seqs, ICFG).influence for model in models]  # one process, every row
    assert list(merged.columns) == _columns(lake, d4)
    np.testing.assert_array_equal(merged.sample_id, seqs.sample_id)
    for m, r in enumerate(raw):
        np.testing.assert_allclose(merged[f"influence_m{m}"], r, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(merged.influence, combine_members(raw), rtol=1e-9, atol=1e-12)
    assert not np.allclose(raw[0], raw[1]) and not np.allclose(raw[1], raw[3])  # checkpoints and members differ


def test_influence_toward_the_validation_rows_through_the_steps(lake):
    """target="valid": the published solve and the shards use the day's validation rows; the merged scores equal
    the direct computation, and they are not the training-risk scores."""
    d4 = lake.days[-1]
    train_surrogate(lake, d4, SurrogateConfig.tiny(seed=3, **LEARNS))
    cfg = dataclasses.replace(ICFG, target="valid")
    solve_influence(lake, d4, cfg)
    for i in range(2):
        assert not score_influence(lake, d4, cfg, (i, 2)).notes  # the published solve (made for this config)
    merge_influence(lake, d4, 2)
    merged = _scores(lake, d4)
    table, n_items = read_samples(lake, Source(d4, None))
    seqs, valid = train_seqs(table, n_items), valid_seqs(table, n_items)
    assert len(valid) > 0
    models, _ = load_influence_models(lake, Source(d4, None))
    raw = [influence(model, seqs, cfg, target=valid).influence for model in models]
    np.testing.assert_allclose(merged.influence, combine_members(raw), rtol=1e-9, atol=1e-12)
    on_train = [influence(model, seqs, ICFG).influence for model in models]
    assert not np.allclose(combine_members(raw), combine_members(on_train))


def test_a_shard_reads_only_its_rows_and_scores_them_as_among_every_row(lake, monkeypatch):
    """With a published solve a shard never reads the whole samples table (its memory grew with the day's size:
    issue 19 item 3); its scores equal scoring its rows among every row bit for bit (the same batches)."""
    d4 = lake.days[-1]
    train_surrogate(lake, d4, SurrogateConfig.tiny(seed=3, **LEARNS))
    solve_influence(lake, d4, ICFG)
    src = Source(d4, None)
    table, n_items = read_samples(lake, src)
    seqs = train_seqs(table, n_items)
    models, _ = load_influence_models(lake, src)
    payload = influence_steps._published_solve(lake, src, ICFG, influence_steps._weights(lake, src)[1])
    negatives = negatives_from_payload(payload)

    def whole_table(*args, **kwargs):
        raise AssertionError("a shard with a published solve read every sample")

    monkeypatch.setattr(influence_steps, "checked_samples", whole_table)
    for i in range(3):
        res = score_influence(lake, d4, ICFG, (i, 3))
        rows = shard_rows(len(seqs), (i, 3))
        assert not res.notes and res.counts["rows"] == len(rows)
        assert lake.manifest(influence_shard(src, (i, 3)))["counts"]["train_samples"] == len(seqs)
        got = lake.read(influence_shard(src, (i, 3)), None, "influence.parquet")
        np.testing.assert_array_equal(got.column("sample_id").to_numpy(), seqs.sample_id[rows])
        for m, (model, u) in enumerate(zip(models, payload["u"])):
            want = score_rows(to_dtype(model, ICFG), seqs, u, negatives, ICFG, rows)
            np.testing.assert_array_equal(got.column(f"influence_m{m}").to_numpy(), want)
    with pytest.raises(InputError, match="retrain it"):  # a surrogate of another vocab is still refused
        influence_steps._shard_seqs(lake, src, n_items + 1, (0, 1))


def test_a_rerun_with_unchanged_inputs_is_a_no_op(lake):
    d4 = lake.days[-1]
    cfg = SurrogateConfig.tiny(seed=11)
    train_surrogate(lake, d4, cfg)
    again = train_surrogate(lake, d4, cfg)
    assert not again.changed and "already trained" in again.notes[0] and again.counts["members"] == 2
    solve_influence(lake, d4, ICFG)
    solved = solve_influence(lake, d4, ICFG)
    assert not solved.changed and "already published" in solved.notes[0]
    for _ in range(2):
        shard = score_influence(lake, d4, ICFG, (0, 1))
        merged = merge_influence(lake, d4, 1)
    assert not shard.changed and not merged.changed and not shard.notes
    # A retrained ensemble (new member checksums) makes the published solve stale: it is not used.
    assert train_surrogate(lake, d4, SurrogateConfig.tiny(seed=12)).changed
    assert "no matching published solve" in score_influence(lake, d4, ICFG, (0, 1)).notes[0]
    assert solve_influence(lake, d4, ICFG).changed


def test_a_solve_for_other_weights_is_not_used(lake):
    d4 = lake.days[-1]
    train_surrogate(lake, d4, SurrogateConfig.tiny(seed=1, **LEARNS))
    assert len(influence_weights(lake.manifest("surrogate", d4))) == 4
    assert solve_influence(lake, d4, ICFG).changed
    assert not score_influence(lake, d4, ICFG, (0, 1)).notes
    # The same member best files, but without their checkpoints: other weights, so the solve is stale.
    _republish_as_old(lake, d4, ("model.pt", "model_1.pt", "metrics.json"), ())
    assert len(influence_weights(lake.manifest("surrogate", d4))) == 2
    shard = score_influence(lake, d4, ICFG, (0, 1))
    assert shard.changed and "no matching published solve" in shard.notes[0] and shard.counts["weights"] == 2
    assert solve_influence(lake, d4, ICFG).changed


def _flip_byte(lake: Lake, dataset: str, dt: str | None, name: str, offset: int) -> None:
    """Flip one byte of a published file in place (the manifest keeps the old checksum)."""
    path = Path(lake.partition(dataset, dt).removeprefix("file://")) / name
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0xFF
    path.write_bytes(bytes(data))


def _recording_reads(lake: Lake) -> list[str]:
    """The names of the tables ``lake.read`` returns from now on (the reads themselves are unchanged)."""
    reads: list[str] = []
    read = lake.read
    lake.read = lambda dataset, dt, name: reads.append(name) or read(dataset, dt, name)  # type: ignore[method-assign]
    return reads


def _assert_cli_fails_in_one_line(lake: Lake, argv: list[str], message: str, runs: int = 3) -> None:
    """``dealrec`` in a fresh process exits 2 (an InputError) with ``message`` on one line, every run: never a
    signal (134 / -6 was intermittent, hence several runs)."""
    for _ in range(runs):
        proc = subprocess.run(
            [sys.executable, "-m", "dealrec_tasks.cli", "--lake", lake.root, *argv],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr[-2000:]
        lines = [line for line in proc.stderr.splitlines() if "error" in line or "terminate" in line]
        assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]


def test_a_flipped_byte_in_solve_pt_is_a_one_line_input_error_never_an_abort(tmp_path):
    """solve.pt is checked against its manifest before torch.load and before any Parquet read, so the CLI exits 2
    with one line. Before, it exited 134 (SIGABRT) in about 1 run of 3: the error came milliseconds after the
    samples' Parquet read, and pyarrow aborts the interpreter's exit while a pool thread still releases that read."""
    lake = _lake(tmp_path / "lake")
    d4 = lake.days[-1]
    train_surrogate(lake, d4, SurrogateConfig.tiny(hidden=8, max_epochs=2, patience=2))
    solve_influence(lake, d4, ICFG)
    _flip_byte(lake, f"influence/dt={d4}/solve", None, "solve.pt", 600)
    reads = _recording_reads(lake)
    with pytest.raises(InputError, match=r"solve\.pt: checksum differs from the manifest; rerun the solve"):
        score_influence(lake, d4, ICFG, (0, 1))
    assert reads == []  # failed before reading any table
    flags = ["--target", "train", "--negatives", "16", "--hvp-samples", "0", "--cg-tol", "1e-10", "--dtype", "float64"]
    message = "solve.pt: checksum differs from the manifest; rerun the solve"
    _assert_cli_fails_in_one_line(lake, ["influence", "--dt", d4, *flags], message)


def test_a_flipped_byte_in_the_warm_start_checkpoint_is_a_one_line_input_error_never_an_abort(tmp_path):
    """The previous day's model.pt is checked before torch.load and before the day's samples are read (same abort
    as with solve.pt: before, 4 of 12 CLI runs exited 134)."""
    lake = _lake(tmp_path / "lake")
    d3, d4 = lake.days[-2:]
    cfg = SurrogateConfig.tiny(hidden=8, max_epochs=1, members=1, checkpoints=1)
    train_surrogate(lake, d3, cfg)
    _flip_byte(lake, "surrogate", d3, "model.pt", 700)
    reads = _recording_reads(lake)
    with pytest.raises(InputError, match=r"model\.pt: checksum differs from the manifest; republish the surrogate"):
        train_surrogate(lake, d4, cfg)
    assert reads == []
    flags = ["--hidden", "8", "--max-epochs", "1", "--members", "1", "--checkpoints", "1"]
    message = f"surrogate/dt={d3}/model.pt: checksum differs from the manifest; republish the surrogate"
    _assert_cli_fails_in_one_line(lake, ["surrogate", "--dt", d4, *flags], message)


def test_an_old_single_member_partition_still_loads_and_scores(tmp_path):
    lake = _lake(tmp_path / "lake")
    d3, d4 = lake.days[-2:]
    train_surrogate(lake, d3, SurrogateConfig.tiny(members=1, **LEARNS))
    # Republish it as the code before ensembles wrote it: model.pt only, no `members` in config or counts.
    old = ("members", "per_member", "checkpoints", "influence_files")
    _republish_as_old(lake, d3, ("model.pt", "metrics.json"), old)
    assert "members" not in lake.manifest("surrogate", d3)["config"]

    models, manifest = load_influence_models(lake, Source(d3, None))
    assert len(models) == 1 and influence_sha256(manifest) == [manifest["files"]["model.pt"]["sha256"]]
    solve_influence(lake, d3, ICFG)
    assert not score_influence(lake, d3, ICFG, (0, 1)).notes
    assert merge_influence(lake, d3, 1).counts["members"] == 1
    scores = _scores(lake, d3)
    assert list(scores.columns) == ["sample_id", "influence", "influence_m0"]
    raw = scores.influence_m0.to_numpy()
    np.testing.assert_allclose(scores.influence, raw / np.sqrt(np.mean(raw**2)), rtol=1e-12)  # raw / RMS

    # A 2-member ensemble the next day warm-starts both members from the old single model.
    res = train_surrogate(lake, d4, SurrogateConfig.tiny(members=2))
    assert [m["warm_start"] for m in res.counts["per_member"]] == [True, True]
    assert any("member 1: dt=" in n and "its member 0" in n for n in res.notes)
    # The old partition's config lacks `members`: train_surrogate retrains instead of reusing it.
    assert train_surrogate(lake, d3, SurrogateConfig.tiny(members=1)).changed


def test_an_old_ensemble_partition_without_checkpoints_still_loads_and_scores(tmp_path):
    lake = _lake(tmp_path / "lake")
    d4 = lake.days[-1]
    train_surrogate(lake, d4, SurrogateConfig.tiny(members=2, **LEARNS))
    # As the code before checkpoint averaging wrote it: model.pt + model_1.pt, no list, no `checkpoints`.
    _republish_as_old(lake, d4, ("model.pt", "model_1.pt", "metrics.json"), ("checkpoints", "influence_files"))
    src = Source(d4, None)
    models, manifest = load_influence_models(lake, src)
    members, _ = load_ensemble(lake, src)
    assert len(models) == 2 and [w["file"] for w in influence_weights(manifest)] == ["model.pt", "model_1.pt"]
    for a, b in zip(models, members):
        assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert influence_sha256(manifest) == [manifest["files"][f]["sha256"] for f in ("model.pt", "model_1.pt")]
    solve_influence(lake, d4, ICFG)
    for i in range(2):
        assert not score_influence(lake, d4, ICFG, (i, 2)).notes  # the published solve is used
    res = merge_influence(lake, d4, 2)
    assert res.counts["weights"] == 2 and res.counts["members"] == 2
    scores = _scores(lake, d4)
    assert list(scores.columns) == ["sample_id", "influence", "influence_m0", "influence_m1"]
    raw = [influence(model, train_seqs(*read_samples(lake, src)), ICFG).influence for model in members]
    np.testing.assert_allclose(scores.influence, combine_members(raw), rtol=1e-9, atol=1e-12)
