"""Benchmark: surrogate training and influence scoring on Games vs a reference of the paper's procedure.

Run: ``.venv/bin/python bench/influence.py`` (needs the Games samples in var/games, see --help). Writes
bench/results/influence.json and influence.png and prints a table.

In one run, on the same trained surrogate and the same definitions (scoring loss with K fixed negatives):
- ours: one pass for v (+ Hessian subsample cache + per-position spill), CG on the subsample, scores from the spill;
- the paper's procedure, straightforwardly: mean gradient by whole-network autograd over batches padded to
  max_len, LiSSA with one random sample per step (whole-network double backward), then one sample at a time
  through the whole network. It runs on a fixed subset of batches / steps / samples and is extrapolated to all
  49,156 samples (stated in the output);
- a float64 reference of our definition: Hessian over all samples, CG to a tight tolerance;
- our scores with a second negative seed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dealrec_tasks.scoring.config import InfluenceConfig  # noqa: E402
from dealrec_tasks.scoring.influence import (  # noqa: E402
    influence,
    reference_grad,
    reference_hvp,
    reference_scores,
)
from dealrec_tasks.storage import Lake  # noqa: E402
from dealrec_tasks.surrogate.batching import eval_set, train_seqs  # noqa: E402
from dealrec_tasks.surrogate.config import SurrogateConfig  # noqa: E402
from dealrec_tasks.surrogate.evaluate import evaluate  # noqa: E402
from dealrec_tasks.surrogate.train import train  # noqa: E402

PAPER = {"epoch_s": 90.0, "mean_grad_s": 35.0, "lissa_s": 99.0, "per_sample_ms": 7.35, "total_s": 494.0}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def paper_reference(model, seqs, cfg: InfluenceConfig, u, negatives, n_batches: int, n_steps: int, n_samples: int):
    """Time the paper's procedure on a subset and extrapolate; also its scores on the sampled rows."""
    n = len(seqs)
    model.eval()
    pad = model.max_len
    rng = np.random.default_rng(0)
    # 1. mean gradient: batches of 500 padded to max_len, whole-network autograd.
    rows = rng.permutation(n)
    t0 = time.perf_counter()
    for i in range(n_batches):
        reference_grad(model, seqs, rows[i * 500 : (i + 1) * 500], cfg.block, negatives, pad_to=pad)
    mean_grad_s = (time.perf_counter() - t0) / n_batches * (n / 500)
    # 2. LiSSA: one random sample per step, whole-network double backward.
    h = torch.zeros_like(u)
    t0 = time.perf_counter()
    for _ in range(n_steps):
        r = rng.integers(0, n, size=1)
        hv = reference_hvp(model, seqs, r, cfg.block, negatives, h, pad_to=pad)
        h = u + (1 - cfg.lissa_damp) * h - hv / cfg.lissa_scale
    lissa_s = (time.perf_counter() - t0) / n_steps * cfg.lissa_depth
    # 3. one sample at a time.
    sub = np.sort(rng.choice(n, n_samples, replace=False))
    t0 = time.perf_counter()
    scores = reference_scores(model, seqs, sub, cfg.block, negatives, u, pad_to=pad)
    per_sample_s = (time.perf_counter() - t0) / n_samples
    return {
        "subset": {"mean_grad_batches_of_500": n_batches, "lissa_steps": n_steps, "per_sample_rows": n_samples},
        "mean_grad_s": mean_grad_s,
        "lissa_s": lissa_s,
        "per_sample_ms": per_sample_s * 1e3,
        "scores_s": per_sample_s * n,
        "total_s": mean_grad_s + lissa_s + per_sample_s * n,
    }, (sub, scores)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lake", default=str(ROOT / "var/games"), help="lake holding datasets/games/samples")
    ap.add_argument("--out", default=str(ROOT / "bench/results"))
    ap.add_argument("--max-epochs", type=int, default=200, help="surrogate epoch cap (early stopping decides)")
    ap.add_argument("--ref-batches", type=int, default=4, help="paper reference: mean-gradient batches timed")
    ap.add_argument("--ref-steps", type=int, default=200, help="paper reference: LiSSA steps timed")
    ap.add_argument("--ref-samples", type=int, default=300, help="paper reference: per-sample loop rows timed")
    ap.add_argument("--f64-tol", type=float, default=1e-8, help="CG tolerance of the float64 reference")
    args = ap.parse_args()
    os.environ.setdefault("DEALREC_PROGRESS", "0")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    load = {"start": os.getloadavg()}

    if Lake(args.lake).manifest("datasets/games/samples") is None:  # first run: import the release
        from dealrec_tasks import steps
        from dealrec_tasks.config import ImportConfig, SamplesConfig

        games = ROOT.parent / "shared" / "data" / "games"
        steps.import_dealrec(str(games), Lake(args.lake), ImportConfig(dataset="games"))
        steps.samples_from_dataset(Lake(args.lake), "games", SamplesConfig())
    samples = Lake(args.lake).read("datasets/games/samples", None, "samples.parquet")
    n_items = int(Lake(args.lake).read("datasets/games", None, "item_vocab").num_rows)
    seqs = train_seqs(samples, n_items)
    valid, test = eval_set(samples, "valid", n_items), eval_set(samples, "test", n_items)
    counts = f"{len(seqs):,} train samples, {len(valid.inputs):,} valid, {len(test.inputs):,} test"
    print(f"Games: {counts}, {n_items:,} items")

    # -- surrogate ------------------------------------------------------------------------------------------
    scfg = SurrogateConfig(max_epochs=args.max_epochs)
    res = train(seqs, valid, n_items, scfg, on_epoch=lambda r: print(f"  epoch {r['epoch']}: {_fmt(r)}", flush=True))
    test_metrics = evaluate(res.model, test)
    surrogate = {
        **res.summary(),
        "epoch_s_paper": PAPER["epoch_s"],
        "test": test_metrics,
        "peak_rss_mb_after_training": peak_rss_mb(),
        "history": res.history,
    }
    model = res.model
    print(f"surrogate: {res.epochs} epochs (best {res.best_epoch}), {surrogate['mean_epoch_s']:.1f} s/epoch")

    # -- ours, two negative seeds ---------------------------------------------------------------------------
    cfg = InfluenceConfig(target="train")  # the paper's influence, compared with the paper's procedure
    ours = influence(model, seqs, cfg)
    t_ours = sum(ours.timings.values())
    print(f"ours: {t_ours:.1f} s {ours.timings} {ours.solution.info.to_dict()}", flush=True)
    rss_ours = peak_rss_mb()
    seed2 = influence(model, seqs, InfluenceConfig(target="train", neg_seed=1))
    rho_seeds = float(spearmanr(ours.influence, seed2.influence).statistic)
    print(f"negative seeds 0 vs 1: Spearman {rho_seeds:.4f}", flush=True)

    # -- float64 reference of the same definition -------------------------------------------------------------
    f64cfg = InfluenceConfig(target="train", dtype="float64", hvp_samples=0, hvp_negatives=0, cg_tol=args.f64_tol)
    t0 = time.perf_counter()
    ref64 = influence(model, seqs, f64cfg)
    t_f64 = time.perf_counter() - t0
    rho_f64 = float(spearmanr(ours.influence, ref64.influence).statistic)
    print(f"float64 reference ({t_f64:.0f} s): Spearman vs ours {rho_f64:.4f}", flush=True)

    # -- the paper's procedure (subset, extrapolated) -----------------------------------------------------------
    ref, (sub, ref_scores) = paper_reference(
        model, seqs, cfg, ours.solution.u, ours.solution.negatives, args.ref_batches, args.ref_steps, args.ref_samples
    )
    agree = float(np.max(np.abs(ref_scores - ours.influence[sub])) / np.max(np.abs(ours.influence[sub])))
    print(f"paper reference (extrapolated): {ref['total_s']:.0f} s", flush=True)

    load["end"] = os.getloadavg()
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "loadavg": load,
            "note": "shared 2-core machine; other jobs ran at the same time, so seconds are noisy",
        },
        "data": {"train_samples": len(seqs), "items": n_items, "test_users": len(test.inputs)},
        "surrogate": surrogate,
        "influence": {
            "config": cfg.to_dict(),
            "ours_s": t_ours,
            "ours_breakdown_s": ours.timings,
            "solve": ours.solution.info.to_dict(),
            "paper_reference_measured": ref,
            "paper_reference_reported_s": PAPER,
            "speedup_vs_measured_reference": ref["total_s"] / t_ours,
            "speedup_vs_paper_reported": PAPER["total_s"] / t_ours,
            "reference_scores_max_rel_diff_on_subset": agree,
            "spearman_negative_seeds": rho_seeds,
            "spearman_vs_float64_reference": rho_f64,
            "float64_reference": {"config": f64cfg.to_dict(), "seconds": t_f64, "solve": ref64.solution.info.to_dict()},
            "peak_rss_mb_after_ours": rss_ours,
            "peak_rss_mb_end": peak_rss_mb(),
        },
        "wall_s": time.perf_counter() - started,
    }
    (out_dir / "influence.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    arrays = out_dir / "tmp" / "influence_scores.npz"  # for re-plotting (not committed)
    arrays.parent.mkdir(parents=True, exist_ok=True)
    np.savez(arrays, ours=ours.influence, ref64=ref64.influence, seed2=seed2.influence)
    _plot(result, ours.influence, ref64.influence, seed2.influence, out_dir / "influence.png")
    _table(result)
    return 0


def _fmt(row: dict) -> str:
    keys = ("loss", "train_s", "valid_recall@20", "valid_ndcg@20")
    return ", ".join(f"{k} {row[k]:.4f}" for k in keys if k in row)


def _table(r: dict) -> None:
    inf, s = r["influence"], r["surrogate"]
    ref = inf["paper_reference_measured"]
    b = inf["ours_breakdown_s"]
    rows = [
        ("mean gradient (s)", b["mean_gradient_s"], ref["mean_grad_s"]),
        ("solve (s)", b["solve_s"], ref["lissa_s"]),
        ("per-sample scores (s)", b["scores_s"], ref["scores_s"]),
        ("total scoring (s)", inf["ours_s"], ref["total_s"]),
    ]
    print(f"\n{'influence on Games (49,156 samples)':40s} {'ours':>10s} {'paper proc.':>12s} {'ratio':>8s}")
    for name, a, c in rows:
        print(f"{name:40s} {a:10.2f} {c:12.1f} {c / max(a, 1e-9):7.1f}x")
    speedup = inf["speedup_vs_paper_reported"]
    print(f"paper's own code, reported for this machine: {PAPER['total_s']:.0f} s -> {speedup:.1f}x")
    print(
        f"Spearman vs float64 reference: {inf['spearman_vs_float64_reference']:.4f}; "
        f"negative seeds 0 vs 1: {inf['spearman_negative_seeds']:.4f}"
    )
    t = s["test"]
    print(
        f"surrogate: {s['mean_epoch_s']:.1f} s/epoch (paper's code ~{PAPER['epoch_s']:.0f}), {s['epochs']} epochs "
        f"(best {s['best_epoch']}), test R@20 {t['recall@20']:.4f} N@20 {t['ndcg@20']:.4f}; "
        f"peak RSS {inf['peak_rss_mb_end']:.0f} MB"
    )


def _plot(r: dict, ours: np.ndarray, ref64: np.ndarray, seed2: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    inf = r["influence"]
    ref = inf["paper_reference_measured"]
    b = inf["ours_breakdown_s"]
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    parts = ["mean gradient", "solve", "scores"]
    ours_t = [b["mean_gradient_s"], b["solve_s"], b["scores_s"]]
    ref_t = [ref["mean_grad_s"], ref["lissa_s"], ref["scores_s"]]
    left = np.zeros(2)
    for name, a, c in zip(parts, ours_t, ref_t):
        ax[0].barh(["ours", "paper procedure\n(extrapolated)"], [a, c], left=left, label=name)
        left += [a, c]
    for y, total in enumerate(left):
        ax[0].text(total, y, f" {total:.1f} s", va="center")
    ax[0].set_xlim(0, 1.2 * left.max())
    ax[0].set_xlabel("seconds")
    ax[0].set_title(f"influence scoring, {inf['speedup_vs_measured_reference']:.0f}x faster")
    ax[0].legend(fontsize=8)
    idx = np.random.default_rng(0).choice(len(ours), min(5000, len(ours)), replace=False)
    ax[1].scatter(ref64[idx], ours[idx], s=2, alpha=0.4)
    ax[1].set_xlabel("float64 reference (all-sample Hessian)")
    ax[1].set_ylabel("ours (float32, subsample Hessian)")
    ax[1].set_title(f"Spearman {inf['spearman_vs_float64_reference']:.4f}")
    ax[2].scatter(seed2[idx], ours[idx], s=2, alpha=0.4)
    ax[2].set_xlabel("negative seed 1")
    ax[2].set_ylabel("negative seed 0")
    ax[2].set_title(f"Spearman {inf['spearman_negative_seeds']:.4f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
