"""Benchmark note: why influence toward the training risk moves with every surrogate retrain, and the validation
rows' does less.

For surrogates trained on Games with different seeds (paper defaults, early stopping), at their best epochs:
the norm of v for both targets (the mean gradient of the training risk is nearly 0 at a trained surrogate, the
validation rows' is not), and the Spearman agreement between the seeds' influence rankings for each target, both
with the full solve of ``InfluenceConfig`` (``target="train"`` and ``"valid"``). Writes
``bench/results/influence_target.json``.

    .venv/bin/python bench/influence_target.py --seeds 30 31 32 33

Surrogates are cached under ``--cache`` (``best_s<seed>.pt``); a rerun only scores.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from coreset_quality import games, games_world, spearman  # noqa: E402

from dealrec_tasks.scoring.config import InfluenceConfig  # noqa: E402
from dealrec_tasks.scoring.influence import influence  # noqa: E402
from dealrec_tasks.surrogate.config import SurrogateConfig  # noqa: E402
from dealrec_tasks.surrogate.train import build_model, train  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[30, 31, 32, 33])
    ap.add_argument("--lake", default=str(ROOT / "var/games"))
    ap.add_argument("--cache", default=str(ROOT / "bench/results/tmp/stability"))
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    os.environ.setdefault("DEALREC_PROGRESS", "0")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    samples, n_items, _ = games(args.lake)
    world = games_world(samples, n_items, 2000)
    per_seed, scores = {}, {"train": {}, "valid": {}}
    for seed in args.seeds:
        path = cache / f"best_s{seed}.pt"
        if not path.exists():
            res = train(world.seqs, world.valid, n_items, SurrogateConfig(seed=seed, checkpoints=1))
            torch.save(res.model.state_dict(), path)
        model = build_model(n_items, SurrogateConfig(), torch.load(path, weights_only=True)).eval()
        row = {}
        for target in ("train", "valid"):
            t0 = time.perf_counter()
            res = influence(model, world.seqs, InfluenceConfig(target=target), target=world.valid_seqs)
            scores[target][seed] = res.influence
            row[target] = {"v_norm": float(res.solution.v.norm()), "seconds": time.perf_counter() - t0}
        row["spearman_train_vs_valid"] = spearman(scores["train"][seed], scores["valid"][seed])
        per_seed[seed] = row
        print(seed, json.dumps(row), flush=True)
    pairs = list(itertools.combinations(args.seeds, 2))
    result = {
        "command": "python bench/influence_target.py " + " ".join(sys.argv[1:]),
        "data": {"train_samples": len(world.seqs), "valid_rows": len(world.valid_seqs), "items": n_items},
        "per_seed": per_seed,
        "retrain_spearman": {
            t: {f"{a}-{b}": spearman(scores[t][a], scores[t][b]) for a, b in pairs} for t in ("train", "valid")
        },
        "seconds": time.perf_counter() - started,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "loadavg": os.getloadavg()},
    }
    out = ROOT / "bench/results/influence_target.json"
    out.write_text(json.dumps(result, indent=2))
    for t in ("train", "valid"):
        vals = list(result["retrain_spearman"][t].values())
        norms = [per_seed[s][t]["v_norm"] for s in args.seeds]
        print(f"{t}: |v| {min(norms):.4f}-{max(norms):.4f}; retrain Spearman {min(vals):.3f}-{max(vals):.3f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
