"""Steps on a tiny synthetic lake: surrogate (cold, then warm), influence solve, shards, merge."""

from __future__ import annotations

import numpy as np
import pytest

from dealrec_tasks.config import IngestConfig, SamplesConfig, SyntheticConfig
from dealrec_tasks.errors import InputError
from dealrec_tasks.scoring.config import InfluenceConfig
from dealrec_tasks.steps import ingest, pending_days, samples, synthetic
from dealrec_tasks.steps.influence import merge_influence, score_influence, solve_influence
from dealrec_tasks.steps.surrogate import train_surrogate
from dealrec_tasks.storage import Lake
from dealrec_tasks.surrogate.config import SurrogateConfig


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    lake = Lake(str(tmp_path_factory.mktemp("lake")))
    res = synthetic(lake, SyntheticConfig(users=120, items=40, days=4, events_per_day=300))
    for dt in pending_days(lake):
        ingest(lake, dt, IngestConfig())
    days = sorted(lake.partitions("sequences"))
    for dt in days[-2:]:
        samples(lake, dt, SamplesConfig(max_len=10))
    lake.days = days  # type: ignore[attr-defined]
    assert res.counts["days"] == 4
    return lake


def test_surrogate_cold_then_warm_and_influence_shards(lake):
    d3, d4 = lake.days[-2:]
    cfg = SurrogateConfig.tiny(hidden=8, max_epochs=3, patience=2)
    first = train_surrogate(lake, d3, cfg)
    assert not first.counts["warm_start"] and "no earlier checkpoint" in first.notes[0]
    second = train_surrogate(lake, d4, cfg)
    assert second.counts["warm_start"] and f"dt={d3}" in second.notes[0]
    cold = train_surrogate(lake, d4, SurrogateConfig.tiny(hidden=8, max_epochs=3, patience=2, cold_start=True))
    assert not cold.counts["warm_start"]

    icfg = InfluenceConfig(negatives=16, hvp_samples=0, cg_tol=1e-10, dtype="float64")
    whole = score_influence(lake, d4, icfg, (0, 1))
    assert "solved locally" in whole.notes[0]
    merged_one = merge_influence(lake, d4, 1)
    one = lake.read("scores_influence", d4, "influence.parquet").to_pandas()
    solve_influence(lake, d4, icfg)
    for i in range(3):
        r = score_influence(lake, d4, icfg, (i, 3))
        assert not r.notes  # used the published solve
    merge_influence(lake, d4, 3)
    three = lake.read("scores_influence", d4, "influence.parquet").to_pandas()
    assert merged_one.counts["samples"] == len(three)
    np.testing.assert_array_equal(one.sample_id, three.sample_id)
    np.testing.assert_allclose(one.influence, three.influence, rtol=1e-6, atol=1e-9)  # float32: BLAS blocking
    with pytest.raises(InputError, match="not published"):
        merge_influence(lake, d4, 2)
