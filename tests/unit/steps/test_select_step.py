"""The select step on a small synthetic lake (file:// and s3://): refusal, coreset table, report, no-op rerun."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from dealrec_tasks.cli import main
from dealrec_tasks.errors import ConfigError, PartitionNotFound
from dealrec_tasks.selection import STRATEGIES, SelectConfig
from dealrec_tasks.steps import llm as llm_steps
from dealrec_tasks.steps import select as select_steps
from dealrec_tasks.steps.select import select
from dealrec_tasks.storage import MANIFEST, Lake, join_uri
from dealrec_tasks.surrogate.config import SurrogateConfig
from tests.conftest import synthetic_lake

DT = "2026-01-04"
CORE = ("samples", "vocab", "items")
STANDARD = {"manifest_version", "dataset", "dt", "uri", "created_at", "config", "files"}


@pytest.fixture(scope="module")
def source_lake(tmp_path_factory) -> Lake:
    """Synthetic logs -> samples -> a tiny surrogate, plus synthetic score tables (fast, no LLM)."""
    lake = synthetic_lake(tmp_path_factory.mktemp("lake"), DT, 10, users=150, items=60, days=4, events_per_day=300)
    from dealrec_tasks.steps.surrogate import train_surrogate

    train_surrogate(lake, DT, SurrogateConfig.tiny(hidden=8, max_epochs=2, patience=1))
    samples = lake.read("samples", DT, "samples.parquet")
    ids = np.sort(np.asarray([r["sample_id"] for r in samples.to_pylist() if r["split"] == "train"]))
    rng = np.random.default_rng(0)
    for dataset, col, values in (
        ("scores_influence", "influence", rng.standard_normal(len(ids))),
        ("scores_effort", "effort", rng.lognormal(size=len(ids))),
    ):
        order = rng.permutation(len(ids))  # score tables need not be sorted
        table = pa.table({"sample_id": pa.array(ids[order], pa.int64()), col: pa.array(values[order], pa.float64())})
        lake.publish(dataset, DT, {f"{col}.parquet": table})
    return lake


def _copy(src: Lake, dst: Lake, dataset: str, dt: str | None) -> None:
    """Republish a partition of ``src`` in ``dst`` (same files, config and manifest extras)."""
    manifest = src.require_manifest(dataset, dt)
    blobs = {name: src.storage.read_bytes(join_uri(src.partition(dataset, dt), name)) for name in manifest["files"]}
    extra = {k: v for k, v in manifest.items() if k not in STANDARD}
    dst.publish(dataset, dt, {}, blobs=blobs, config=manifest["config"], extra=extra)


def _fill(src: Lake, dst: Lake, datasets: tuple[str, ...]) -> None:
    for dataset in datasets:
        _copy(src, dst, dataset, None if dataset == "items" else DT)


def test_dealrec_coreset_end_to_end_and_no_op_rerun(source_lake, lake, tmp_path):
    with pytest.raises(PartitionNotFound, match=r"samples/dt=2026-01-04, which is not published"):
        select(lake, DT, SelectConfig(n=20))
    _fill(source_lake, lake, CORE)
    with pytest.raises(PartitionNotFound, match=r"scores_influence/dt=2026-01-04.*dealrec influence"):
        select(lake, DT, SelectConfig(n=20))
    _copy(source_lake, lake, "scores_influence", DT)
    with pytest.raises(PartitionNotFound, match=r"scores_effort/dt=2026-01-04.*dealrec effort"):
        select(lake, DT, SelectConfig(n=20))
    _copy(source_lake, lake, "scores_effort", DT)

    cfg = SelectConfig(n=20, k=5)
    result = select(lake, DT, cfg)
    assert result.changed and result.counts["selected"] == 20
    table = lake.read("coreset", DT, "coreset.parquet")
    assert table.column_names == [f.name for f in select_steps.CORESET_SCHEMA]
    rows = table.to_pylist()
    assert len(rows) == 20 == len({r["sample_id"] for r in rows})
    titles = llm_steps.item_titles(lake, DT)
    train = {
        r["sample_id"]: r for r in lake.read("samples", DT, "samples.parquet").to_pylist() if r["split"] == "train"
    }
    inf = lake.read("scores_influence", DT, "influence.parquet").to_pydict()
    inf = dict(zip(inf["sample_id"], inf["influence"]))
    for r in rows:
        src = train[r["sample_id"]]
        assert r["history"] == src["history"] and r["target"] == src["target"] and r["user_id"] == src["user_id"]
        assert r["history_titles"] == [titles[i - 1] for i in r["history"]]
        assert r["target_title"] == titles[r["target"] - 1]
        assert r["influence"] == inf[r["sample_id"]] and r["strategy"] == "dealrec"
        assert 0 <= r["stratum"] < 5 and r["overall"] == r["score"]
    manifest = lake.require_manifest("coreset", DT)
    groups = manifest["counts"]["groups"]
    assert sum(groups["budgets"]) == 20 and len(groups["edges"]) == 6
    assert np.bincount([r["stratum"] for r in rows], minlength=5).tolist() == groups["budgets"]
    assert set(manifest["source"]) == {"samples", "vocab", "items", "influence", "effort"}
    assert manifest["source"]["samples"]["uri"] == lake.partition("samples", DT)
    assert manifest["config"]["n"] == 20 and manifest["inputs"]["effort"]
    png = lake.storage.read_bytes(join_uri(result.uris["coreset"], "report.png"))
    assert png.startswith(b"\x89PNG") and manifest["files"]["report.png"]["bytes"] == len(png)
    (tmp_path / "report.png").write_bytes(png)

    # Same config, same inputs: nothing is written (the manifest keeps its first creation time).
    again = select(lake, DT, cfg)
    assert not again.changed and lake.require_manifest("coreset", DT)["created_at"] == manifest["created_at"]
    # The fine-tuning step reads the coreset rows by history and target.
    got, where = llm_steps.training_rows(lake, DT, 0, 0)
    assert len(got) == 20 and where == lake.partition("coreset", DT) and {"history", "target"} <= set(got[0])
    # A new config republishes.
    assert select(lake, DT, SelectConfig(n=20, k=5, seed=1)).changed


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_through_the_step(source_lake, local_lake, strategy):
    """Strategies that need neither score run without the score partitions; model baselines need the surrogate."""
    needs = set(STRATEGIES[strategy].needs)
    _fill(source_lake, local_lake, CORE)
    if needs & {"influence", "effort"}:
        _copy(source_lake, local_lake, "scores_influence", DT)
        _copy(source_lake, local_lake, "scores_effort", DT)
    cfg = SelectConfig(strategy=strategy, n=15, k=4, clusters=3, negatives=16)
    if needs & {"grand", "el2n", "user_repr"}:
        with pytest.raises(PartitionNotFound, match=r"surrogate/dt=2026-01-04.*dealrec surrogate"):
            select(local_lake, DT, cfg)
        _copy(source_lake, local_lake, "surrogate", DT)
    result = select(local_lake, DT, cfg)
    table = local_lake.read("coreset", DT, "coreset.parquet").to_pydict()
    assert result.counts["selected"] == 15 == len(set(table["sample_id"]))
    assert set(table["strategy"]) == {strategy}
    manifest = local_lake.require_manifest("coreset", DT)
    if not needs & {"influence", "effort"}:  # the score partitions were never published here
        assert "influence" not in manifest["source"] and table["influence"] == [None] * 15
    if needs & {"grand", "el2n", "user_repr"}:
        assert "surrogate" in manifest["source"]
    if strategy in ("grand", "el2n", "ccs"):
        assert all(s is not None and s >= 0 for s in table["score"])
    assert not select(local_lake, DT, cfg).changed


def test_too_many_and_the_cli(source_lake, local_lake, capsys):
    _fill(source_lake, local_lake, CORE)
    n_train = local_lake.read("samples", DT, "samples.parquet").column("split").to_pylist().count("train")
    with pytest.raises(ConfigError, match=rf"n={n_train + 1}: more than the {n_train} candidates"):
        select(local_lake, DT, SelectConfig(strategy="random", n=n_train + 1))
    argv = ["--lake", local_lake.root, "select", "--dt", DT, "--strategy", "random", "--ratio", "0.1"]
    assert main(argv) == 0
    assert "select: candidates" in capsys.readouterr().out
    assert local_lake.require_manifest("coreset", DT)["counts"]["selected"] == int(0.1 * n_train)
    assert main(["--lake", local_lake.root, "select", "--dt", DT, "--k", "0"]) == 2
    assert "k=0: must be in [1, 100000]" in capsys.readouterr().err
    assert main(["--lake", local_lake.root, "select", "--dt", DT, "--lam", "inf"]) == 2  # not a traceback
    assert "lam=inf: must be in [0, 1000]" in capsys.readouterr().err


def test_constants_match_the_producing_steps():
    from dealrec_tasks.catalogue import SCORES_INFLUENCE, SURROGATE

    assert select_steps.SCORES_INFLUENCE == SCORES_INFLUENCE and select_steps.SURROGATE == SURROGATE
    assert MANIFEST == "_manifest.json"


def test_quantile_with_the_fit_filter_through_the_step(source_lake, local_lake):
    """fit_prune > 0 makes quantile need EL2N, so the step loads the surrogate; the report still renders."""
    _fill(source_lake, local_lake, CORE)
    for kind in ("scores_influence", "scores_effort"):
        _copy(source_lake, local_lake, kind, DT)
    cfg = SelectConfig(strategy="quantile", n=15, k=4, pool=0.5, fit_prune=0.2, negatives=16)
    with pytest.raises(PartitionNotFound, match=r"surrogate/dt=2026-01-04"):
        select(local_lake, DT, cfg)
    _copy(source_lake, local_lake, "surrogate", DT)
    result = select(local_lake, DT, cfg)
    assert result.counts["selected"] == 15
    manifest = local_lake.require_manifest("coreset", DT)
    assert "surrogate" in manifest["source"] and manifest["config"]["fit_prune"] == 0.2
    assert "report.png" in manifest["files"]
