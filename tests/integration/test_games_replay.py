"""The paper's Games data through the data layer: counts, a 30-day replay ingested day by day, samples; at every
day the sequence deltas (and weekly snapshots) read back as the full daily rewrite did, with identical samples."""

from __future__ import annotations

from dealrec_tasks import steps
from dealrec_tasks.catalogue import SAMPLES, SEQUENCES_SNAPSHOT
from dealrec_tasks.config import CompactConfig, ImportConfig, IngestConfig, ReplayConfig, SamplesConfig
from dealrec_tasks.steps.readers import read_sequences
from dealrec_tasks.storage import Lake
from tests.conftest import GAMES, needs_games
from tests.full_rewrite import full_rewrite_sequences, reference_samples


@needs_games()
def test_games_replay_ingests_every_interaction(local_lake: Lake):
    imported = steps.import_dealrec(str(GAMES), local_lake, ImportConfig(dataset="games"))
    assert (imported.counts["users"], imported.counts["items"], imported.counts["test_users"]) == (
        49_156,
        17_332,
        8_696,
    )
    rep = steps.replay(local_lake, ReplayConfig(dataset="games", days=30))
    assert rep.counts["interactions"] == imported.counts["interactions"] == 342_329
    days = steps.pending_days(local_lake)
    reference = full_rewrite_sequences(local_lake, days)
    cfg = SamplesConfig()
    results = []
    for dt in days:  # as the daily DAG does: ingest, compact when due, samples
        results.append(steps.ingest(local_lake, dt, IngestConfig()))
        steps.compact(local_lake, dt, CompactConfig())
        assert read_sequences(local_lake, dt)[0].equals(reference[dt]), dt
        if dt >= days[2]:
            steps.samples(local_lake, dt, cfg)
            want = reference_samples(reference[dt], dt, cfg.max_len, cfg.valid_days, cfg.test_days)
            assert local_lake.read(SAMPLES, dt, "samples.parquet").equals(want), dt
    assert local_lake.partitions(SEQUENCES_SNAPSHOT) == [days[20], days[27]]  # every 7 days, the newest 2 kept
    assert len(results) == 30
    assert sum(r.counts["accepted"] for r in results) == 342_329
    assert sum(r.counts["rejected"] for r in results) == 0
    assert results[-1].counts["users"] == 49_156
    smp = steps.samples(local_lake, results[-1].uris["sequences"].rsplit("dt=", 1)[1], SamplesConfig())
    assert (smp.counts["train"], smp.counts["valid"], smp.counts["test"]) == (49_156, 9_609, 8_696)
