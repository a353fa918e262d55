"""Every entry point skips work whose config and inputs are unchanged: the CLI behaves as the DAG does.

Before, only the DAG's ``*_once`` wrappers checked; ``dealrec surrogate`` and ``dealrec influence-solve`` retrained
and re-solved (and republished, with new timings) when nothing had changed.
"""

from __future__ import annotations

import pytest

from dealrec_tasks.cli import main
from dealrec_tasks.storage import Lake
from tests.conftest import synthetic_lake

DT = "2026-01-04"
TINY = ["--hidden", "8", "--max-epochs", "2", "--patience", "1", "--members", "2"]
SOLVE = ["--negatives", "64"]


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Lake:
    return synthetic_lake(tmp_path_factory.mktemp("lake"), DT, 10, users=120, items=50, days=4, events_per_day=250)


def _run(lake: Lake, capsys, *args: str) -> str:
    capsys.readouterr()
    assert main(["--lake", lake.root, *args]) == 0
    return capsys.readouterr().out


def _created(lake: Lake, dataset: str, dt: str | None = DT) -> str:
    return lake.require_manifest(dataset, dt)["created_at"]


def test_cli_steps_are_no_ops_for_unchanged_inputs(lake, capsys):
    first = _run(lake, capsys, "surrogate", "--dt", DT, *TINY)
    assert "(unchanged, no-op)" not in first
    trained_at = _created(lake, "surrogate")
    again = _run(lake, capsys, "surrogate", "--dt", DT, *TINY)
    assert "surrogate:" in again and "(unchanged, no-op)" in again
    assert _created(lake, "surrogate") == trained_at  # not republished

    _run(lake, capsys, "influence-solve", "--dt", DT, *SOLVE)
    solve = f"influence/dt={DT}/solve"
    solved_at = _created(lake, solve, None)
    assert "(unchanged, no-op)" in _run(lake, capsys, "influence-solve", "--dt", DT, *SOLVE)
    assert _created(lake, solve, None) == solved_at

    for i in range(2):
        _run(lake, capsys, "influence", "--dt", DT, "--shard", f"{i}/2", *SOLVE)
    shard = f"influence/dt={DT}/shard=0-of-2"
    scored_at = _created(lake, shard, None)
    assert "(unchanged, no-op)" in _run(lake, capsys, "influence", "--dt", DT, "--shard", "0/2", *SOLVE)
    assert _created(lake, shard, None) == scored_at
    _run(lake, capsys, "merge-influence", "--dt", DT, "--shards", "2")

    _run(lake, capsys, "select", "--dt", DT, "--strategy", "random", "--n", "20")
    selected = _run(lake, capsys, "select", "--dt", DT, "--strategy", "random", "--n", "20")
    assert "(unchanged, no-op)" in selected and "selected 20" in selected


def test_new_inputs_or_config_redo_the_work(lake, capsys):
    _run(lake, capsys, "surrogate", "--dt", DT, *TINY)
    before = lake.require_manifest("surrogate", DT)
    # Another config trains again.
    assert "(unchanged, no-op)" not in _run(lake, capsys, "surrogate", "--dt", DT, *TINY[:-1], "1")
    # New samples (another history length) train again, and the solve follows the new weights.
    _run(lake, capsys, "samples", "--dt", DT, "--max-len", "6")
    assert "(unchanged, no-op)" not in _run(lake, capsys, "surrogate", "--dt", DT, *TINY)
    after = lake.require_manifest("surrogate", DT)
    assert after["inputs"]["samples"] != before["inputs"]["samples"]
    assert "(unchanged, no-op)" not in _run(lake, capsys, "influence-solve", "--dt", DT, *SOLVE)
    solve = lake.require_manifest(f"influence/dt={DT}/solve")
    assert solve["inputs"]["samples"] == after["inputs"]["samples"]


def test_a_control_arm_from_the_cli_has_its_own_partition(lake, capsys):
    _run(lake, capsys, "surrogate", "--dt", DT, *TINY)
    out = _run(lake, capsys, "select", "--dt", DT, "--strategy", "random", "--n", "15", "--control")
    assert f"coreset/arm=random/dt={DT}" in out
    assert lake.require_manifest("coreset/arm=random", DT)["counts"]["selected"] == 15
    assert "(unchanged, no-op)" in _run(lake, capsys, "select", "--dt", DT, "--strategy", "random", "--n", "15",
                                        "--control")  # fmt: skip
    capsys.readouterr()
    assert main(["--lake", lake.root, "evaluate", "--dt", DT, "--arm", "../samples"]) == 2
    assert "arm='../samples'" in capsys.readouterr().err
