"""Any catalogue end to end: a second dataset in the paper's release format, with its own name and domain, goes
from import to an evaluated adapter with the CLI's ``--dataset`` alone (no replay), next to a Games-like one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dealrec_tasks.cli import main
from dealrec_tasks.llm.prompts import PromptTemplate
from dealrec_tasks.storage import Lake


def write_release(folder: Path, users: int, items: int, noun: str, seed: int) -> Path:
    """A small release: ``sequential_{train,valid,test}.txt`` (``user item ...``) and ``items.parquet``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    lines = {"train": [], "valid": [], "test": []}
    for u in range(users):
        seq = [int(i) for i in rng.choice(np.arange(1, items + 1), size=int(rng.integers(3, 9)), replace=False)]
        lines["train"].append(" ".join(map(str, [u, *seq[:-2]])))
        lines["valid"].append(f"{u} {seq[-2]}")
        lines["test"].append(f"{u} {seq[-1]}")
    lines["train"].append(f"{users}")  # a user without training items: no train row, no valid row (counted)
    lines["valid"].append(f"{users} 1")
    for kind, rows in lines.items():
        (folder / f"sequential_{kind}.txt").write_text("\n".join(rows) + "\n")
    table = pa.table(
        {
            "item_id": pa.array(range(1, items + 1), pa.int64()),
            "asin": [f"{noun}-{i}" for i in range(1, items + 1)],
            "title": [f"The {noun.title()} Number {i}" for i in range(1, items + 1)],
        }
    )
    pq.write_table(table, folder / "items.parquet")
    return folder


def run(lake: Path, capsys, *args: str) -> str:
    capsys.readouterr()
    code = main(["--lake", str(lake), *args])
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    return out.out + out.err  # summaries on stdout, notes on stderr


def test_a_second_catalogue_goes_from_import_to_evaluation_with_dataset_alone(tmp_path, capsys):
    lake_dir = tmp_path / "lake"
    games = write_release(tmp_path / "games", 60, 40, "game", 0)
    videos = write_release(tmp_path / "releases" / "Videos", 80, 50, "video", 1)

    run(lake_dir, capsys, "import-dealrec", str(games))  # named after its folder: games, the paper's domain
    out = run(lake_dir, capsys, "import-dealrec", str(videos), "--domain", "video")
    lake = Lake(str(lake_dir))
    manifest = lake.require_manifest("datasets/videos")
    assert manifest["domain"] == "video" and manifest["source"]["source_dir"] == str(videos.resolve())
    assert "holds another catalogue and is kept" in out  # the daily lake's catalogue stays the first one
    assert lake.require_manifest("datasets/games")["domain"] == "games"
    # Importing other data under an existing name is refused, never a silent replacement.
    capsys.readouterr()
    assert main(["--lake", str(lake_dir), "import-dealrec", str(videos), "--dataset", "games"]) == 2
    assert "dataset 'games' exists and holds other data" in capsys.readouterr().err
    games_files = lake.require_manifest("datasets/games")["files"]

    ds = ("--dataset", "videos")
    model = str(tmp_path / "models" / "videos-llm")
    out = run(lake_dir, capsys, "samples", *ds)
    assert "users_without_train 1" in out and "valid_rows_dropped 1" in out
    run(lake_dir, capsys, "surrogate", *ds, "--hidden", "8", "--max-epochs", "2", "--members", "1")
    run(lake_dir, capsys, "influence-solve", *ds, "--negatives", "32")
    run(lake_dir, capsys, "influence", *ds, "--negatives", "32")
    run(lake_dir, capsys, "merge-influence", *ds, "--shards", "1")
    out = run(lake_dir, capsys, "tiny-llm", *ds, "--out", model, "--vocab-size", "400", "--hidden-size", "32",
              "--intermediate-size", "64", "--num-layers", "1", "--pretrain-steps", "5")  # fmt: skip
    assert "corpus_last_day dataset=videos train split" in out
    run(lake_dir, capsys, "effort", *ds, "--model", model)
    run(lake_dir, capsys, "merge-effort", *ds, "--shards", "1")
    out = run(lake_dir, capsys, "select", *ds, "--n", "20", "--lam", "1.0")
    coreset = lake.require_manifest("datasets/videos/coreset")
    assert coreset["counts"]["selected"] == 20 and coreset["config"]["lam"] == 1.0
    titles = lake.read("datasets/videos/coreset", None, "coreset.parquet").column("target_title").to_pylist()
    assert all(t.startswith("The Video Number") for t in titles)
    run(lake_dir, capsys, "finetune", *ds, "--model", model, "--epochs", "1", "--work-dir", str(tmp_path / "w"))
    out = run(lake_dir, capsys, "evaluate", *ds, "--model", model, "--max-users", "10", "--max-new-tokens", "8",
              "--num-beams", "1", "--cache-dir", str(tmp_path / "c"))  # fmt: skip
    assert "users 10" in out
    adapter = lake.require_manifest("datasets/videos/adapters")
    assert adapter["config"]["domain"] == "video"  # the instruction came from the dataset
    assert adapter["source"]["training"] == lake.partition("datasets/videos/coreset")
    effort = lake.require_manifest("datasets/videos/effort/all/shard=0-of-1")
    assert effort["config"]["domain"] == "video" and Path(effort["config"]["model_dir"]).is_absolute()
    metrics = json.loads((lake_dir / "datasets/videos/evaluation/metrics.json").read_text())
    assert metrics["users"] == 10
    # The Games-like dataset and the daily lake were not touched.
    assert lake.require_manifest("datasets/games")["files"] == games_files
    assert lake.partitions("samples") == [] and lake.partitions("coreset") == []


def test_a_domain_is_a_noun_and_a_wrong_one_is_refused_before_any_model_loads(tmp_path, capsys):
    assert "Given the game products" in PromptTemplate("games").prefix
    assert "Given the movies that the user interacted with before" in PromptTemplate("movie").prefix
    lake = tmp_path / "lake"
    capsys.readouterr()
    code = main(["--lake", str(lake), "effort", "--dataset", "x", "--domain", "Films!", "--model", "/nonexistent"])
    assert code == 2 and "domain='Films!'" in capsys.readouterr().err


def test_replay_refuses_to_rewrite_ingested_days_unless_forced(tmp_path, capsys):
    lake_dir = tmp_path / "lake"
    videos = write_release(tmp_path / "videos", 40, 30, "video", 2)
    run(lake_dir, capsys, "import-dealrec", str(videos))
    capsys.readouterr()
    assert main(["--lake", str(lake_dir), "replay", "--days", "4"]) == 2  # which dataset: asked, never assumed
    assert "--dataset" in capsys.readouterr().err
    run(lake_dir, capsys, "replay", "--dataset", "videos", "--days", "4", "--start", "2026-02-01")
    run(lake_dir, capsys, "ingest", "--all")
    lake = Lake(str(lake_dir))
    assert len(lake.partitions("sequences")) == 4
    capsys.readouterr()
    assert main(["--lake", str(lake_dir), "replay", "--dataset", "videos", "--days", "4", "--start", "2026-02-01",
                 "--seed", "1"]) == 2  # fmt: skip
    assert "would rewrite the logs of ingested days" in capsys.readouterr().err
    out = run(lake_dir, capsys, "replay", "--dataset", "videos", "--days", "4", "--start", "2026-02-01", "--seed",
              "1", "--force")  # fmt: skip
    assert "withdrew them from 2026-02-01 on" in out or "withdrew them from" in out
    assert len(lake.partitions("sequences")) < 4
    out = run(lake_dir, capsys, "ingest", "--all")
    assert len(lake.partitions("sequences")) == 4


@pytest.mark.parametrize("name", ["Videos 2024", "films"])
def test_the_dataset_name_comes_from_the_folder(tmp_path, capsys, name):
    folder = write_release(tmp_path / name, 20, 15, "film", 3)
    out = run(tmp_path / "lake", capsys, "import-dealrec", str(folder))
    expected = "videos-2024" if name == "Videos 2024" else "films"
    assert f"datasets/{expected}" in out
