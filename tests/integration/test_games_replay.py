"""The paper's Games data through the data layer: counts, a 30-day replay ingested day by day, samples."""

from __future__ import annotations

from dealrec_tasks import steps
from dealrec_tasks.config import ImportConfig, IngestConfig, ReplayConfig, SamplesConfig
from dealrec_tasks.storage import Lake
from tests.conftest import GAMES, needs_games


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
    results = [steps.ingest(local_lake, dt, IngestConfig()) for dt in steps.pending_days(local_lake)]
    assert len(results) == 30
    assert sum(r.counts["accepted"] for r in results) == 342_329
    assert sum(r.counts["rejected"] for r in results) == 0
    assert results[-1].counts["users"] == 49_156
    smp = steps.samples(local_lake, results[-1].uris["sequences"].rsplit("dt=", 1)[1], SamplesConfig())
    assert (smp.counts["train"], smp.counts["valid"], smp.counts["test"]) == (49_156, 9_609, 8_696)
