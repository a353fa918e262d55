"""Sequences as daily deltas plus snapshots (issue 19, item 2): ingest writes only the day's events, and every
reader sees exactly the sequences (and samples) of the full daily rewrite it replaced."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from dealrec_tasks import steps
from dealrec_tasks.catalogue import INTERACTIONS, SAMPLES, SEQUENCES, SEQUENCES_SNAPSHOT, VOCAB
from dealrec_tasks.cli import main
from dealrec_tasks.config import CompactConfig, IngestConfig, SamplesConfig, SyntheticConfig
from dealrec_tasks.data import ingest as ingest_mod
from dealrec_tasks.data import sequence_log
from dealrec_tasks.errors import ConfigError
from dealrec_tasks.steps.readers import read_sequences, read_user_vocab, sequence_chain
from dealrec_tasks.storage import Lake
from tests.full_rewrite import full_rewrite_sequences, reference_samples


def _random_days(rng: np.random.Generator, days: int, users: int = 30, events: int = 40):
    """Per day: (user_idx, item_idx, ts_us) in event order, users returning, timestamps tied on purpose."""
    out = []
    for d in range(days):
        n = int(rng.integers(0, events))
        ts = np.sort(rng.integers(0, 3, n)) + d * 10
        out.append((rng.integers(1, users, n).astype(np.int32), rng.integers(1, 50, n).astype(np.int32), ts))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_deltas_on_any_base_equal_the_daily_full_rewrite(seed):
    rng = np.random.default_rng(seed)
    days = _random_days(rng, 8)
    users = pa.table({"user_id": [f"u{i}" for i in range(30)], "user_idx": pa.array(range(30), pa.int32())})
    full, rewrites = None, []
    for u, i, t in days:  # the reference: one full rewrite per day
        full = ingest_mod.append_to_sequences(full, users, u, i, t)
        rewrites.append(full)
    deltas = [sequence_log.delta_table(u, np.array([f"u{x}" for x in u], dtype=object), i, t) for u, i, t in days]
    for cut in range(len(days)):  # a snapshot after day `cut` (or none), then the later deltas
        base = rewrites[cut - 1] if cut else None
        for end in range(cut, len(days)):
            got = sequence_log.apply_deltas(base, deltas[cut : end + 1])
            assert got.to_pylist() == rewrites[end].to_pylist(), (cut, end)


def test_chain_identity_names_the_whole_history():
    a = sequence_log.chain_sha256(None, "d1")
    assert sequence_log.chain_sha256(a, "d2") != sequence_log.chain_sha256(sequence_log.chain_sha256(None, "x"), "d2")
    assert sequence_log.chain_sha256(a, "d2") == sequence_log.chain_sha256(sequence_log.chain_sha256(None, "d1"), "d2")


def _synthetic_lake(lake: Lake, days: int = 10) -> list[str]:
    steps.synthetic(lake, SyntheticConfig(users=400, items=120, days=days, events_per_day=150, bad_rows=3, seed=4))
    return steps.log_days(lake)


@pytest.mark.parametrize("every_days", [3, 100])
def test_every_day_reads_back_the_full_rewrite_and_gives_its_samples(local_lake: Lake, every_days: int):
    days = _synthetic_lake(local_lake)
    reference = full_rewrite_sequences(local_lake, days)
    cfg = SamplesConfig()
    written = []
    for dt in days:
        result = steps.ingest(local_lake, dt, IngestConfig())
        compacted = steps.compact(local_lake, dt, CompactConfig(every_days=every_days, keep=2))
        written += [dt] if compacted.counts["written"] else []
        seqs, identity = read_sequences(local_lake, dt)
        assert seqs.to_pylist() == reference[dt].to_pylist(), dt
        assert identity == local_lake.require_manifest(SEQUENCES, dt)["chain_sha256"]
        users = read_user_vocab(local_lake, dt)
        assert users.column("user_idx").to_pylist() == list(range(1, users.num_rows + 1))
        assert dict(zip(users.column("user_idx").to_pylist(), users.column("user_id").to_pylist())) == dict(
            zip(reference[dt].column("user_idx").to_pylist(), reference[dt].column("user_id").to_pylist())
        )
        assert result.counts["interactions_total"] == sum(len(x) for x in reference[dt].column("items").to_pylist())
        if dt >= days[2]:
            steps.samples(local_lake, dt, cfg)
            got = local_lake.read(SAMPLES, dt, "samples.parquet")
            want = reference_samples(reference[dt], dt, cfg.max_len, cfg.valid_days, cfg.test_days)
            assert got.to_pylist() == want.to_pylist(), dt
    if every_days == 3:
        assert written == [days[2], days[5], days[8]]  # the first base is day 1's empty chain start
        assert local_lake.partitions(SEQUENCES_SNAPSHOT) == [days[5], days[8]]  # keep=2: the oldest removed
        assert sequence_chain(local_lake, days[-1]).deltas == (days[-1],)
    else:
        assert written == [] and sequence_chain(local_lake, days[-1]).deltas == tuple(days)


def test_ingest_writes_only_the_days_events_and_new_users(local_lake: Lake):
    days = _synthetic_lake(local_lake, days=4)
    for dt in days:
        result = steps.ingest(local_lake, dt, IngestConfig())
        delta = local_lake.read(SEQUENCES, dt, "delta.parquet")
        assert delta.num_rows == result.counts["accepted"]
        assert set(local_lake.require_manifest(SEQUENCES, dt)["files"]) == {"delta.parquet"}
        new_users = local_lake.read(VOCAB, dt, "new_users.parquet")
        assert new_users.num_rows == result.counts["new_users"]
        assert set(new_users.column("user_id").to_pylist()) <= set(delta.column("user_id").to_pylist())


def test_a_reingested_day_does_not_read_its_stale_snapshot(local_lake: Lake):
    days = _synthetic_lake(local_lake, days=3)
    for dt in days:
        steps.ingest(local_lake, dt, IngestConfig())
    assert steps.compact(local_lake, days[-1], CompactConfig(every_days=1)).counts["written"]
    assert sequence_chain(local_lake, days[-1]).base == SEQUENCES_SNAPSHOT
    folder = local_lake.partition(INTERACTIONS, days[-1])
    late = b'{"user_id": "late-user", "item_id": "late-item", "ts": "' + days[-1].encode() + b'T23:00:00Z"}\n'
    local_lake.storage.write_bytes(f"{folder}/late.jsonl", late)
    steps.ingest(local_lake, days[-1], IngestConfig())  # the last day may be re-ingested
    chain = sequence_chain(local_lake, days[-1])
    assert chain.base is None and chain.deltas == tuple(days)  # the snapshot folded another chain
    seqs, _ = read_sequences(local_lake, days[-1])
    assert seqs.to_pylist() == full_rewrite_sequences(local_lake, days)[days[-1]].to_pylist()
    assert "late-user" in seqs.column("user_id").to_pylist()
    assert steps.compact(local_lake, days[-1], CompactConfig(every_days=1)).changed  # a new snapshot replaces it


def test_a_lake_ingested_before_deltas_still_reads_and_grows(local_lake: Lake):
    """Days written by the full-rewrite ingest (sequences.parquet, users.parquet) are bases for later deltas."""
    days = _synthetic_lake(local_lake, days=5)
    reference = full_rewrite_sequences(local_lake, days)
    for dt in days[:3]:  # as the old ingest published them
        steps.ingest(local_lake, dt, IngestConfig())
    for dt in days[:3]:
        manifest = local_lake.require_manifest(SEQUENCES, dt)
        full = reference[dt]
        users = full.select(["user_id", "user_idx"]).sort_by("user_idx")
        items = local_lake.read(VOCAB, dt, "items.parquet")
        vocab = local_lake.publish(
            VOCAB, dt, {"users.parquet": users, "items.parquet": items}, config=manifest["config"]
        )
        extra = {k: v for k, v in manifest.items() if k in ("counts", "source")}
        extra["vocab_sha256"] = {n: e["sha256"] for n, e in vocab.manifest["files"].items()}
        local_lake.withdraw(SEQUENCES, dt)
        local_lake.publish(SEQUENCES, dt, {"sequences.parquet": full}, config=manifest["config"], extra=extra)
    steps.samples(local_lake, days[2], SamplesConfig())
    for dt in days[3:]:
        steps.ingest(local_lake, dt, IngestConfig())
        assert read_sequences(local_lake, dt)[0].to_pylist() == reference[dt].to_pylist()
    chain = sequence_chain(local_lake, days[-1])
    assert (chain.base, chain.base_dt, chain.deltas) == (SEQUENCES, days[2], tuple(days[3:]))
    assert steps.samples(local_lake, days[2], SamplesConfig()).changed is False  # its identity is the file's checksum


def test_compact_refuses_bad_settings_and_says_when_it_is_not_due(local_lake: Lake, capsys):
    with pytest.raises(ConfigError, match="every_days=0"):
        CompactConfig(every_days=0)
    with pytest.raises(ConfigError, match="keep=0"):
        CompactConfig(keep=0)
    days = _synthetic_lake(local_lake, days=2)
    for dt in days:
        steps.ingest(local_lake, dt, IngestConfig())
    assert main(["--lake", local_lake.root, "compact", "--dt", days[-1]]) == 0
    assert "not due (2 delta(s) after the first day, every 7)" in capsys.readouterr().err
    assert main(["--lake", local_lake.root, "compact", "--dt", days[-1], "--every-days", "2"]) == 0
    assert local_lake.partitions(SEQUENCES_SNAPSHOT) == [days[-1]]
    assert main(["--lake", local_lake.root, "compact", "--dt", days[-1], "--every-days", "0"]) == 2
