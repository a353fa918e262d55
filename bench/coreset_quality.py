"""Benchmark: how good are the coresets? Every strategy picks n = 1024 Games samples; a backend is trained on them.

Run: ``.venv/bin/python bench/coreset_quality.py``: on 2 busy CPU cores about 40 minutes of scoring (the effort
of 49k samples on the tiny LLM is most of it), then 30-60 s per backend. Scores and finished runs are cached under
bench/results/tmp/quality, so a rerun only trains what is missing. Writes bench/results/coreset_quality.json and
coreset_quality.png and prints a table.

What it does, in one run on the paper's Games split (../shared/data/games):
1. the surrogate (SASRec, paper defaults, early stopping) on all training samples, and the scores every strategy
   needs: influence (ours), effort (the embedded tiny LLaMA, built from the Games titles), GraNd, EL2N, the
   user representations (RecRanker-style clusters);
2. per strategy and seed: select n samples (timed), train a backend SASRec from scratch on those samples only
   (early stopping on a fixed subset of the validation users), evaluate on all test users (Recall/NDCG@10/20,
   all items ranked, training items masked), and the empirical risk DEALRec targets: the backend's mean loss
   L(s) over the training data (the scoring loss: expectation over a fixed set of popularity-stratified
   negatives), estimated on a fixed random 10,000 of the 49,156 training samples (unbiased, and seconds per run);
3. the full-data backend (the surrogate itself) as the reference line;
4. mean and 95% t-interval per strategy, and each strategy minus random with a Welch test, so the table says
   which differences the seeds can resolve.
Seeds change both the selection's random draws and the backend's initialisation, batch order and negatives.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dealrec_tasks.scoring import baselines  # noqa: E402
from dealrec_tasks.scoring.config import InfluenceConfig  # noqa: E402
from dealrec_tasks.scoring.influence import influence, item_popularity, negative_set  # noqa: E402
from dealrec_tasks.selection import STRATEGIES, Candidates, SelectConfig, minmax, select  # noqa: E402
from dealrec_tasks.storage import Lake  # noqa: E402
from dealrec_tasks.surrogate.batching import EvalSet, Seqs, eval_set, train_batch, train_seqs  # noqa: E402
from dealrec_tasks.surrogate.config import SurrogateConfig  # noqa: E402
from dealrec_tasks.surrogate.evaluate import evaluate  # noqa: E402
from dealrec_tasks.surrogate.model import bce_expected  # noqa: E402
from dealrec_tasks.surrogate.train import train  # noqa: E402

METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")
MAIN = ("dealrec", "random")  # get --main-seeds; every other strategy --seeds
# Probes of why a strategy does (not) work: name -> (strategy, config overrides, score sign flips). Run them with
# --strategies after the main ones (finished runs are reused).
VARIANTS: dict[str, tuple[str, dict, tuple[str, ...]]] = {
    "dealrec_flipped": ("dealrec", {}, ("influence",)),  # the opposite influence sign
    "dealrec_no_prune": ("dealrec", {"hard_prune": 0.0}, ()),
    "dealrec_k10": ("dealrec", {"k": 10}, ()),
    "greedy_low": ("greedy", {}, ("influence", "effort")),  # the n lowest overall scores
}


# ---------------------------------------------------------------------------------------------------------
# Data and scores (cached: they are the same for every strategy and seed)
# ---------------------------------------------------------------------------------------------------------
def games(lake_root: str):
    """Samples of the paper's split, item count and titles by item index (imported into the lake if missing)."""
    lake = Lake(lake_root)
    if lake.manifest("datasets/games/samples") is None:
        from dealrec_tasks import steps
        from dealrec_tasks.config import ImportConfig, SamplesConfig

        steps.import_dealrec(str(ROOT.parent / "shared" / "data" / "games"), lake, ImportConfig(dataset="games"))
        steps.samples_from_dataset(lake, "games", SamplesConfig())
    samples = lake.read("datasets/games/samples", None, "samples.parquet")
    vocab = lake.read("datasets/games", None, "item_vocab").to_pylist()
    catalogue = lake.read("datasets/games", None, "items")
    title = dict(zip(catalogue.column("item_id").to_pylist(), catalogue.column("title").to_pylist()))
    titles = [""] * len(vocab)
    for row in vocab:
        titles[row["item_idx"] - 1] = title.get(row["item_id"]) or "(unknown title)"
    return samples, len(vocab), titles


def cached(path: Path, compute):
    """An array computed once and kept in ``path`` (.npy)."""
    if path.exists():
        return np.load(path)
    value = np.asarray(compute())
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, value)
    return value


def effort_scores(samples, titles: list[str], model_dir: Path, order: np.ndarray) -> np.ndarray:
    """Effort of every training sample, in the sample_id ``order`` of ``train_seqs``, on the tiny LLaMA built
    from the Games titles."""
    from dealrec_tasks.data.samples import TRAIN
    from dealrec_tasks.llm.config import EffortConfig, LoRAConfig, TinyLLMConfig
    from dealrec_tasks.llm.effort import EffortScorer, attach_lora
    from dealrec_tasks.llm.prompts import PromptTemplate
    from dealrec_tasks.llm.tiny import build_tiny_llm, load
    from dealrec_tasks.steps.llm import encode_rows

    cfg = EffortConfig()
    build_tiny_llm(model_dir, titles, TinyLLMConfig(domain="games"))
    tokenizer, model = load(model_dir)
    by_id = {r["sample_id"]: r for r in samples.to_pylist() if r["split"] == TRAIN}
    rows = [by_id[int(i)] for i in order]
    prompts = encode_rows(rows, titles, tokenizer, PromptTemplate("games"), cfg.cutoff_len)
    scorer = EffortScorer(attach_lora(model, LoRAConfig(), seed=cfg.seed), tokenizer.pad_token_id, cfg)
    return np.asarray(scorer.score(prompts, desc="effort (Games)"), np.float64)


@torch.no_grad()
def empirical_risk(model, seqs: Seqs, negatives, batch_size: int = 1024) -> float:
    """Mean over ``seqs`` of L(s) (mean over a sample's positions; expectation over the fixed negatives)."""
    model.eval()
    total = 0.0
    for start in range(0, len(seqs), batch_size):
        batch = train_batch(seqs, np.arange(start, min(start + batch_size, len(seqs))), model.max_len)
        h = model(batch.inputs)[batch.real]  # [N, H]
        total += float((bce_expected(h, batch.targets, negatives, model.item_weights()) * batch.weight).sum())
    return total / len(seqs)


def eval_subset(data: EvalSet, size: int, seed: int) -> EvalSet:
    rows = np.sort(np.random.default_rng(seed).choice(len(data.inputs), min(size, len(data.inputs)), replace=False))
    return EvalSet(data.inputs.take(rows), data.targets.take(rows), data.mask.take(rows))


# ---------------------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------------------
def interval(values: list[float]) -> dict[str, float]:
    """Mean and 95% t-interval half-width over seeds."""
    x = np.asarray(values, np.float64)
    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")
    return {"mean": float(x.mean()), "ci95": half, "std": float(x.std(ddof=1)) if len(x) > 1 else 0.0, "n": len(x)}


def versus(a: list[float], b: list[float]) -> dict[str, float | bool]:
    """a - b: difference of means, its 95% Welch interval, p-value; resolved = the interval excludes 0."""
    a_, b_ = np.asarray(a), np.asarray(b)
    va, vb = a_.var(ddof=1) / len(a_), b_.var(ddof=1) / len(b_)
    se = float(np.sqrt(va + vb))
    dof = (va + vb) ** 2 / (va**2 / (len(a_) - 1) + vb**2 / (len(b_) - 1)) if se > 0 else 1.0
    diff = float(a_.mean() - b_.mean())
    half = float(stats.t.ppf(0.975, dof) * se)
    p = float(stats.ttest_ind(a_, b_, equal_var=False).pvalue) if se > 0 else float("nan")
    return {"diff": diff, "ci95": half, "p": p, "resolved": bool(abs(diff) > half)}


# ---------------------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lake", default=str(ROOT / "var/games"), help="lake holding (or receiving) datasets/games")
    ap.add_argument("--out", default=str(ROOT / "bench/results"))
    ap.add_argument("--cache", default=str(ROOT / "bench/results/tmp/quality"), help="scores kept between runs")
    ap.add_argument("--model-dir", default=str(ROOT / "var/models/games-tiny"), help="tiny LLaMA from Games titles")
    ap.add_argument("--n", type=int, default=1024, help="coreset size")
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES), help=f"also: {', '.join(VARIANTS)}")
    ap.add_argument("--seeds", type=int, default=5, help="seeds per strategy")
    ap.add_argument("--main-seeds", type=int, default=10, help="seeds for dealrec and random")
    ap.add_argument("--valid-users", type=int, default=2000, help="validation users for the backend's early stop")
    ap.add_argument("--risk-samples", type=int, default=10000, help="training samples the empirical risk averages")
    ap.add_argument("--risk-negatives", type=int, default=1024, help="negatives of the empirical risk's loss")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    os.environ.setdefault("DEALREC_PROGRESS", "0")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    cache = Path(args.cache)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    samples, n_items, titles = games(args.lake)
    seqs = train_seqs(samples, n_items)
    valid, test = eval_set(samples, "valid", n_items), eval_set(samples, "test", n_items)
    print(f"Games: {len(seqs):,} train samples, {len(test.inputs):,} test users, {n_items:,} items", flush=True)

    # -- surrogate = the full-data backend ------------------------------------------------------------------------
    scfg = SurrogateConfig()
    state_path = cache / "surrogate.pt"
    if state_path.exists():
        from dealrec_tasks.surrogate.train import build_model

        surrogate = build_model(n_items, scfg, torch.load(state_path))
        surrogate.eval()
        full_info = json.loads((cache / "surrogate.json").read_text())
    else:
        res = train(seqs, valid, n_items, scfg, on_epoch=lambda r: print(f"  surrogate epoch {r['epoch']}", flush=True))
        surrogate = res.model
        state_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(surrogate.state_dict(), state_path)
        full_info = {"epochs": res.epochs, "best_epoch": res.best_epoch, "seconds": res.seconds}
        (cache / "surrogate.json").write_text(json.dumps(full_info))
    # The risk is estimated on a fixed random subset of the training samples with popularity-stratified negatives
    # (unbiased for the full-data mean; the subset keeps a backend's evaluation to seconds).
    risk_negatives = negative_set(n_items, args.risk_negatives, 12345, item_popularity(seqs, n_items))
    risk_rows = np.sort(np.random.default_rng(12345).choice(len(seqs), min(args.risk_samples, len(seqs)), False))
    risk_seqs = seqs.take(risk_rows)
    full = {
        **full_info,
        "test": evaluate(surrogate, test),
        "empirical_risk": empirical_risk(surrogate, risk_seqs, risk_negatives),
    }
    print(f"full-data backend: R@20 {full['test']['recall@20']:.4f}, risk {full['empirical_risk']:.4f}", flush=True)

    # -- scores ---------------------------------------------------------------------------------------------------
    timings: dict[str, float] = {}

    def timed(name: str, fn):
        def run():
            t0 = time.perf_counter()
            value = fn()
            timings[name] = time.perf_counter() - t0
            return value

        return run

    icfg = InfluenceConfig()
    infl = cached(cache / "influence.npy", timed("influence", lambda: influence(surrogate, seqs, icfg).influence))
    negatives = negative_set(n_items, 4096, 0)
    grand = cached(cache / "grand.npy", timed("grand", lambda: baselines.grand_scores(surrogate, seqs, negatives)))
    el2n = cached(cache / "el2n.npy", timed("el2n", lambda: baselines.el2n_scores(surrogate, seqs, negatives)))
    user_repr = cached(cache / "user_repr.npy", lambda: baselines.user_representations(surrogate, seqs))
    effort = cached(
        cache / "effort.npy",
        timed("effort", lambda: effort_scores(samples, titles, Path(args.model_dir), seqs.sample_id)),
    )
    interactions = seqs.lengths.astype(np.int64)  # history + target: the user's training interactions
    cands = Candidates(
        len(seqs),
        influence=infl,
        effort=effort,
        grand=grand,
        el2n=el2n,
        user_repr=user_repr,
        interactions=interactions,
    )
    overall = minmax(infl) + 0.3 * minmax(effort)
    rho = float(stats.spearmanr(infl, effort).statistic)
    print(f"scores ready ({timings}); Spearman(influence, effort) = {rho:.3f}", flush=True)

    # -- per strategy and seed -----------------------------------------------------------------------------------
    valid_sub = eval_subset(valid, args.valid_users, 0)
    bcfg = dict(max_epochs=200, eval_every=5, patience=4)
    runs: dict[str, list[dict]] = {}
    done_path = cache / f"runs_n{args.n}.jsonl"  # finished runs survive an interrupted benchmark
    done = {}
    if done_path.exists():
        for line in done_path.read_text().splitlines():
            r = json.loads(line)
            done[(r["strategy"], r["seed"])] = r
    for strategy in args.strategies:
        n_seeds = args.main_seeds if strategy in MAIN else args.seeds
        for seed in range(n_seeds):
            if (strategy, seed) in done:
                runs.setdefault(strategy, []).append(done[(strategy, seed)])
                continue
            t0 = time.perf_counter()
            base, overrides, flips = VARIANTS.get(strategy, (strategy, {}, ()))
            picked = dataclasses.replace(cands, **{f: -getattr(cands, f) for f in flips})
            sel = select(picked, SelectConfig(strategy=base, n=args.n, seed=seed, **overrides))
            select_s = time.perf_counter() - t0
            rows = np.sort(sel.indices)
            res = train(seqs.take(rows), valid_sub, n_items, SurrogateConfig(seed=seed, **bcfg))
            metrics = evaluate(res.model, test)
            run = {
                "strategy": strategy,
                "seed": seed,
                "select_s": select_s,
                "train_s": res.seconds,
                "epochs": res.epochs,
                "best_epoch": res.best_epoch,
                "test": {k: metrics[k] for k in METRICS},
                "empirical_risk": empirical_risk(res.model, risk_seqs, risk_negatives),
                "chosen": {
                    "mean_interactions": float(interactions[rows].mean()),
                    "items_covered": int(len(np.unique(seqs.take(rows).tokens))),
                    "mean_influence_pct": float(stats.percentileofscore(infl, infl[rows]).mean()),
                    "mean_effort_pct": float(stats.percentileofscore(effort, effort[rows]).mean()),
                    "mean_overall_pct": float(stats.percentileofscore(overall, overall[rows]).mean()),
                },
            }
            runs.setdefault(strategy, []).append(run)
            with done_path.open("a") as f:
                f.write(json.dumps(run) + "\n")
            print(
                f"{strategy:>12} seed {seed}: R@20 {metrics['recall@20']:.4f} N@20 {metrics['ndcg@20']:.4f} "
                f"risk {run['empirical_risk']:.4f} ({res.epochs} epochs, select {select_s * 1e3:.0f} ms, "
                f"{time.perf_counter() - t0:.0f} s)",
                flush=True,
            )

    # -- summary -------------------------------------------------------------------------------------------------
    summary: dict[str, dict] = {}
    for strategy, rs in runs.items():
        row = {m: interval([r["test"][m] for r in rs]) for m in METRICS}
        row["empirical_risk"] = interval([r["empirical_risk"] for r in rs])
        row["select_s_median"] = float(np.median([r["select_s"] for r in rs]))
        for key in rs[0]["chosen"]:
            row[key] = float(np.mean([r["chosen"][key] for r in rs]))
        if "random" in runs and strategy != "random":
            row["vs_random"] = {
                m: versus([r["test"][m] for r in rs], [r["test"][m] for r in runs["random"]])
                for m in ("recall@20", "ndcg@20")
            }
            row["vs_random"]["empirical_risk"] = versus(
                [r["empirical_risk"] for r in rs], [r["empirical_risk"] for r in runs["random"]]
            )
        summary[strategy] = row

    result = {
        "command": "python bench/coreset_quality.py " + " ".join(sys.argv[1:]),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "note": "shared 2-core machine: seconds are noisy; quality numbers are not",
        },
        "data": {"train_samples": len(seqs), "test_users": len(test.inputs), "items": n_items, "n": args.n},
        "backend": {"model": "SASRec from scratch, paper architecture", **bcfg, "valid_users": args.valid_users},
        "empirical_risk": {"samples": len(risk_rows), "negatives": args.risk_negatives, "negatives_by": "popularity"},
        "scores": {"seconds": timings, "spearman_influence_effort": rho, "effort_model": "tiny LLaMA (Games titles)"},
        "full_data": full,
        "summary": summary,
        "runs": runs,
        "seconds": time.perf_counter() - started,
    }
    (out_dir / "coreset_quality.json").write_text(json.dumps(result, indent=2))
    plot(result, out_dir / "coreset_quality.png")
    print_table(result)
    return 0


def print_table(result: dict) -> None:
    print(f"\n{'strategy':>12} {'R@10':>16} {'R@20':>16} {'N@20':>16} {'risk':>8} {'select':>9}  R@20 vs random")

    def cell(row: dict, m: str) -> str:
        return f"{row[m]['mean']:.4f}±{row[m]['ci95']:.4f}"

    for strategy, row in result["summary"].items():
        vs = row.get("vs_random", {}).get("recall@20")
        note = "" if vs is None else f"{vs['diff']:+.4f}±{vs['ci95']:.4f} {'resolved' if vs['resolved'] else 'n.s.'}"
        print(
            f"{strategy:>12} {cell(row, 'recall@10'):>16} {cell(row, 'recall@20'):>16} {cell(row, 'ndcg@20'):>16} "
            f"{row['empirical_risk']['mean']:>8.4f} {row['select_s_median'] * 1e3:>7.1f}ms  {note}"
        )
    full = result["full_data"]
    print(f"{'full data':>12} R@20 {full['test']['recall@20']:.4f} N@20 {full['test']['ndcg@20']:.4f}")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result["summary"]
    names = list(summary)
    fig, axes = plt.subplots(1, 3, figsize=(19, 5.5))
    y = np.arange(len(names))
    for ax, metric in zip(axes[:2], ("recall@20", "ndcg@20")):
        means = [summary[s][metric]["mean"] for s in names]
        cis = [summary[s][metric]["ci95"] for s in names]
        palette = {"dealrec": "tab:red", "random": "tab:gray"} | {v: "tab:orange" for v in VARIANTS}
        colors = [palette.get(s, "tab:blue") for s in names]
        ax.barh(y, means, xerr=cis, color=colors, alpha=0.8, capsize=3)
        for s_i, s in enumerate(names):
            vals = [r["test"][metric] for r in result["runs"][s]]
            ax.scatter(vals, np.full(len(vals), s_i), s=8, color="black", zorder=3)
        ax.axvline(result["full_data"]["test"][metric], color="green", ls="--", label="full data (49k samples)")
        ax.set_yticks(y, [f"{s} ({summary[s][metric]['n']} seeds)" for s in names])
        ax.invert_yaxis()
        ax.set_xlabel(f"test {metric} (mean, 95% CI, dots = seeds)")
        ax.legend(loc="lower right", fontsize=8)
    ax = axes[2]
    cmap = plt.get_cmap("tab20")
    for i, s in enumerate(names):
        rs = result["runs"][s]
        marker = "s" if s in VARIANTS else "o"
        xs, ys = [r["empirical_risk"] for r in rs], [r["test"]["recall@20"] for r in rs]
        ax.scatter(xs, ys, s=16, color=cmap(i % 20), marker=marker, label=s)
    ax.set_xlabel(f"empirical risk: mean loss on {result['empirical_risk']['samples']:,} training samples")
    ax.set_ylabel("test recall@20")
    ax.set_title(f"full data: risk {result['full_data']['empirical_risk']:.3f}", fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    d = result["data"]
    fig.suptitle(
        f"Games: SASRec backend trained on n={d['n']} selected samples of {d['train_samples']:,}; "
        f"test on {d['test_users']:,} users, all {d['items']:,} items ranked"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
