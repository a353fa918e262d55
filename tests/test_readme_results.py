"""The README's quality tables are generated from the committed results JSONs, never typed by hand."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REGIMES = ("cold", "warm", "planted")


def test_quality_section_matches_the_results_jsons():
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "report_quality.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_every_regime_has_its_json_and_figure_with_random_and_popularity():
    for regime in REGIMES:
        result = json.loads((REPO / "bench" / "results" / f"coreset_quality_{regime}.json").read_text())
        assert (REPO / "bench" / "results" / f"coreset_quality_{regime}.png").stat().st_size > 10_000
        assert result["regime"] == regime and result["command"].startswith("python bench/coreset_quality.py")
        assert "popularity" in result["references"] and "random" in result["summary"]
        assert result["machine"]["loadavg_start"] and result["seconds"] > 0
        for strategy, row in result["summary"].items():  # a summary is its runs, not numbers typed in
            runs = result["runs"][strategy]
            assert row["recall@20"]["n"] == len(runs)
            assert abs(row["recall@20"]["mean"] - sum(r["test"]["recall@20"] for r in runs) / len(runs)) < 1e-12


def test_the_promotion_docs_match_their_results_jsons():
    """docs/promotion.md's measured rates and worked example are generated from bench/results (gate_power.json,
    demo_gate.json)."""
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "report_promotion.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    power = json.loads((REPO / "bench" / "results" / "gate_power.json").read_text())
    null = [r for r in power["rows"] if r["lift"] == 0.0]
    assert null and all(r["promotion_rate"] <= 0.05 for r in null)  # the bar, on the committed run


def test_the_embedded_llm_numbers_match_their_results_jsons():
    """README's embedded-LLM block is generated from the shipped model's manifest, finetune_preset.json and
    llm_quality.json; each summary row is the mean of its runs and each comparison holds its users."""
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "report_llm.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    result = json.loads((REPO / "bench" / "results" / "llm_quality.json").read_text())
    assert (REPO / "bench" / "results" / "llm_quality.png").stat().st_size > 10_000
    assert result["command"].startswith("python bench/llm_quality.py")
    for arm, row in result["summary"]["arms"].items():
        runs = [r for r in result["runs"] if r["arm"] == arm]
        if "l2" in row:
            mean = sum(r["metrics"]["recall@20"] for r in runs) / len(runs)
            assert len(runs) == len(row["seeds"]) and abs(row["l2"]["recall@20"]["mean"] - mean) < 1e-12
    assert all(c["users"] == result["test_users"] for c in result["summary"]["comparisons"])
    preset = json.loads((REPO / "bench" / "results" / "finetune_preset.json").read_text())["preset"]
    shipped = REPO / "dealrec_tasks" / "llm" / "embedded"
    stored = [json.loads(p.read_text()) for p in shipped.glob("*/dealrec_finetune_preset.json")]
    assert preset in stored  # the shipped preset is the one the committed selection chose
