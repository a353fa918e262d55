"""Effort score speed: our batched scorer (shared prefix + length buckets) vs the paper's batch-size-1 loop.

Same tiny LLaMA, same Games prompts, side by side in one run, interleaved in rounds so machine noise hits both.
Prints a table, writes bench/results/effort.json and effort.png.
Usage: .venv/bin/python bench/effort.py [--prompts 256] [--rounds 2] [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import matplotlib
import numpy as np
import pyarrow.parquet as pq
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dealrec_tasks.llm.config import EffortConfig, LoRAConfig, TinyLLMConfig  # noqa: E402
from dealrec_tasks.llm.effort import EffortScorer, attach_lora, effort_reference  # noqa: E402
from dealrec_tasks.llm.prompts import PromptTemplate, encode  # noqa: E402
from dealrec_tasks.llm.tiny import build_tiny_llm, load  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GAMES = REPO.parent / "shared" / "data" / "games"
OUT = REPO / "bench" / "results"


def games_prompts(tokenizer, n: int, seed: int) -> list:
    """BIGRec prompts of random Games training samples (history = train items but the last, target = last)."""
    items = pq.read_table(GAMES / "items.parquet")
    title = dict(zip(items.column("item_id").to_pylist(), items.column("title").to_pylist()))
    lines = (GAMES / "sequential_train.txt").read_text().splitlines()
    rng = np.random.default_rng(seed)
    template = PromptTemplate("games")
    out = []
    for i in rng.choice(len(lines), size=n, replace=False):
        seq = [int(x) for x in lines[i].split()[1:]][-51:]
        out.append(encode(tokenizer, template, [title[j] for j in seq[:-1]], title[seq[-1]], 512))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--model", help="a local HF causal LM directory (default: build the tiny one)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model_dir = args.model
    if model_dir is None:
        model_dir = str(Path(tempfile.mkdtemp()) / "tiny")
        titles = pq.read_table(GAMES / "items.parquet").column("title").to_pylist()
        build_tiny_llm(model_dir, titles, TinyLLMConfig(pretrain_steps=0))
    tokenizer, model = load(model_dir)
    peft_model = attach_lora(model, LoRAConfig())
    prompts = games_prompts(tokenizer, args.prompts, seed=0)
    cfg = EffortConfig(batch_size=args.batch_size)
    variants = {
        "batch-1 loop (paper)": lambda: effort_reference(peft_model, prompts, cfg),
        "batched, length buckets": lambda: EffortScorer(
            peft_model, tokenizer.pad_token_id, EffortConfig(batch_size=args.batch_size, shared_prefix=False)
        ).score(prompts),
        "batched + shared prefix (ours)": lambda: EffortScorer(peft_model, tokenizer.pad_token_id, cfg).score(prompts),
    }
    times = {k: [] for k in variants}
    scores = {}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            scores[name] = fn()
            times[name].append(time.perf_counter() - t0)
    ref = scores["batch-1 loop (paper)"]
    best = {k: min(v) for k, v in times.items()}
    result = {
        "model_dir": model_dir,
        "prompts": args.prompts,
        "mean_tokens": float(np.mean([len(p.input_ids) for p in prompts])),
        "prefix_tokens": len(prompts[0].prefix),
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "seconds_best_of_rounds": best,
        "seconds_all_rounds": times,
        "samples_per_second": {k: args.prompts / v for k, v in best.items()},
        "speedup_vs_batch1": {k: best["batch-1 loop (paper)"] / v for k, v in best.items()},
        "max_relative_difference_vs_batch1": {
            k: float(np.max(np.abs(s - ref) / np.abs(ref))) for k, s in scores.items()
        },
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "effort.json").write_text(json.dumps(result, indent=2) + "\n")
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    names = list(variants)
    ax.barh(names, [result["samples_per_second"][k] for k in names], color=["tab:gray", "tab:blue", "tab:green"])
    for i, k in enumerate(names):
        ax.text(result["samples_per_second"][k], i, f" {result['speedup_vs_batch1'][k]:.2f}x", va="center")
    ax.set_xlim(0, 1.18 * max(result["samples_per_second"].values()))
    ax.set_xlabel("samples / s (higher is better)")
    ax.set_title(f"Effort score on {args.prompts} Games prompts, tiny LLaMA, CPU ({torch.get_num_threads()} threads)")
    fig.tight_layout()
    fig.savefig(OUT / "effort.png", dpi=110)
    print(f"{'variant':<34}{'best s':>9}{'samples/s':>11}{'speedup':>9}{'max rel diff':>14}")
    for k in names:
        print(
            f"{k:<34}{best[k]:>9.2f}{result['samples_per_second'][k]:>11.1f}"
            f"{result['speedup_vs_batch1'][k]:>8.2f}x{result['max_relative_difference_vs_batch1'][k]:>14.2e}"
        )
    print(f"mean prompt tokens {result['mean_tokens']:.0f}, shared prefix {result['prefix_tokens']} tokens")
    print(f"wrote {OUT / 'effort.json'} and {OUT / 'effort.png'}")


if __name__ == "__main__":
    main()
