"""Effort once per prompt (issue 19, item 1): a day scores only the prompts it has not scored before, with the same
scores as a full recompute; another base model or config starts over; shards and retries are safe."""

from __future__ import annotations

import numpy as np
import pytest

from dealrec_tasks import steps
from dealrec_tasks.config import SamplesConfig
from dealrec_tasks.llm.config import EffortConfig, LoRAConfig
from dealrec_tasks.steps import llm as llm_steps
from dealrec_tasks.storage import Lake
from tests.conftest import synthetic_lake

DAY1, DAY2 = "2026-01-04", "2026-01-05"
CFG = EffortConfig(batch_size=8)


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Lake:
    lake = synthetic_lake(tmp_path_factory.mktemp("lake"), DAY1, 8, users=60, items=90, days=5, events_per_day=40)
    steps.samples(lake, DAY2, SamplesConfig(max_len=8))
    return lake


def _train_rows(lake: Lake, dt: str) -> dict[str, tuple]:
    rows = lake.read("samples", dt, "samples.parquet").to_pylist()
    return {r["user_id"]: (tuple(r["history"]), r["target"]) for r in rows if r["split"] == "train"}


def _scores(lake: Lake, dataset: str) -> dict[int, float]:
    table = lake.read(dataset, None, "effort.parquet")
    return dict(zip(table.column("sample_id").to_pylist(), table.column("effort").to_pylist()))


def test_a_day_scores_only_new_prompts_and_gets_a_full_recomputes_scores(lake, tiny_dir):
    for i in range(2):  # two shards, each writing its own cache delta
        first = llm_steps.effort(lake, DAY1, tiny_dir, CFG, LoRAConfig(), (i, 2))
        assert first.counts["from_cache"] == 0
    merged = llm_steps.merge_effort(lake, DAY1, 2)
    assert merged.counts["cache_added"] == merged.counts["samples"]
    assert llm_steps.merge_effort(lake, DAY1, 2).counts["cache_added"] == 0  # a retried merge adds nothing twice

    day1, day2 = _train_rows(lake, DAY1), _train_rows(lake, DAY2)
    changed = sum(1 for user, row in day2.items() if day1.get(user) != row)
    assert 0 < changed < len(day2)  # some users came back with new items, most did not
    cached = llm_steps.effort(lake, DAY2, tiny_dir, CFG, LoRAConfig(), (0, 1))
    assert cached.counts["scored"] == changed and cached.counts["from_cache"] == len(day2) - changed

    # The same day recomputed in full, in another lake position: the same scores.
    full = llm_steps.effort(lake, DAY2, tiny_dir, CFG, LoRAConfig(), (0, 2), use_cache=False)
    rest = llm_steps.effort(lake, DAY2, tiny_dir, CFG, LoRAConfig(), (1, 2), use_cache=False)
    assert full.counts["from_cache"] == rest.counts["from_cache"] == 0
    got = _scores(lake, f"effort/dt={DAY2}/shard=0-of-1")
    reference = _scores(lake, f"effort/dt={DAY2}/shard=0-of-2") | _scores(lake, f"effort/dt={DAY2}/shard=1-of-2")
    assert got.keys() == reference.keys()
    ids = sorted(got)
    # float32 gradients in other batch compositions: equal to 1e-6, not to the last bit
    np.testing.assert_allclose([got[i] for i in ids], [reference[i] for i in ids], rtol=1e-6, atol=0)


def test_another_model_or_config_starts_an_empty_cache(lake, tiny_dir):
    other = llm_steps.effort(lake, DAY2, tiny_dir, EffortConfig(batch_size=8, seed=3), LoRAConfig(), (0, 1))
    assert other.counts["from_cache"] == 0 and other.counts["scored"] == other.counts["samples"]
    lora = llm_steps.effort(lake, DAY2, tiny_dir, CFG, LoRAConfig(r=4), (0, 1))
    assert lora.counts["from_cache"] == 0
