"""Benchmark (issue 15): does BIGRec on the embedded default LLM recommend better than popularity on Games?

1. **The default model** (``TinyLLMConfig()``: 4 layers, hidden 256) is built with the library's
   ``build_tiny_llm`` exactly as the ``tiny-llm`` step builds it: the tokenizer on the catalogue, pretraining on
   the catalogue titles and the users' interactions of the 30-day Games replay's days up to ``--days`` -
   ``corpus_gap_days`` (day 25: no validation or test item). Cached in ``--out``/model (reused when its marker
   matches).
2. **Arms**, each evaluated with the library's ``grounded_evaluation`` (``EvalConfig`` defaults: beam 4, the
   answer cut at its first title, L2 grounding over all 17,332 titles) on the same ``--users`` random test users
   (history = train + valid, targets = test items, the paper's split):
   - ``before``: the pretrained model, no fine-tuning;
   - ``random``: LoRA (``FinetuneConfig`` defaults but ``--epochs``) on ``--n`` random training samples;
   - ``dealrec``: LoRA on the DEALRec coreset of ``--n`` (the paper's rule, ``SelectConfig`` defaults) from
     influence (a SASRec surrogate trained on all training samples, the library's ``influence``) and effort
     (the library's ``EffortScorer`` on this model), cached in ``--out``/scores.npz.
   Seeds (``--seeds``) change the random draw, the stratified draw of ``dealrec``, and the LoRA init and data
   order; the test users are the same for every arm and seed (paired comparisons).
3. **Statistics**: per arm, mean and 95% t-interval over seeds; each arm minus popularity (seen items masked, the
   same users) with a paired bootstrap over users pooled over seeds (resolved = the interval excludes 0); the
   share of distinct generated titles.

Everything lands in ``--out`` (default bench/results/tmp/llm_quality, gitignored); finished runs are appended to
``runs.jsonl`` (a rerun does only what is missing); the JSON + PNG go to ``--results`` (default
bench/results/llm_quality.{json,png}).

    nice -n 19 .venv/bin/python bench/llm_quality.py --arms before random --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from llm_pretrain_probe import load_games, popularity, popularity_topk, test_rows  # noqa: E402

from dealrec_tasks.llm import tiny  # noqa: E402
from dealrec_tasks.llm.config import EffortConfig, EvalConfig, FinetuneConfig, LoRAConfig, TinyLLMConfig  # noqa: E402
from dealrec_tasks.llm.evaluate import grounded_evaluation  # noqa: E402
from dealrec_tasks.llm.prompts import PromptTemplate, clean_title, encode  # noqa: E402
from dealrec_tasks.metrics import ranking_metrics  # noqa: E402
from dealrec_tasks.selection import Candidates, SelectConfig, select  # noqa: E402

ARMS = ("before", "random", "dealrec")
KS = (10, 20, 50)


# ---------------------------------------------------------------------------------------------------------
# Model, samples, scores
# ---------------------------------------------------------------------------------------------------------
def default_model(g: dict, out: Path, cfg: TinyLLMConfig, last_day: str) -> dict:
    corpus = tiny.PretrainCorpus(g["titles"], [s for s in g["early"] if s], last_day)
    info = tiny.build_tiny_llm(out / "model", g["titles"], cfg, corpus=corpus, latest_corpus_day=last_day)
    return {k: v for k, v in info.items() if k != "config"} | {"config": cfg.to_dict()}


def training_samples(world) -> list[dict]:
    """The day's candidates as the pipeline has them (``datasets/games/samples``, one per user, 49,156): history
    and target item indices (a row of ``world.seqs`` is [BOS, history, target])."""
    rows = (world.seqs.row(i) for i in range(len(world.seqs)))
    return [{"history": r[1:-1].tolist(), "target": int(r[-1])} for r in rows]


def valid_prompts(g: dict, tokenizer, n: int, seed: int, cutoff: int) -> list:
    """Early-stopping set: ``n`` validation users (history = train, target = the first validation item)."""
    users = [u for u in range(len(g["valid"])) if g["valid"][u]]
    pick = np.random.default_rng(seed).choice(len(users), min(n, len(users)), replace=False)
    titles, template = g["titles"], PromptTemplate("games")
    return [
        encode(
            tokenizer,
            template,
            [titles[i - 1] for i in g["train"][users[k]]],
            titles[g["valid"][users[k]][0] - 1],
            cutoff,
        )
        for k in pick
    ]


def dealrec_scores(world, samples: list[dict], titles: list[str], model_dir: Path, out: Path, quality: Path) -> dict:
    """Influence and effort of every candidate, as the pipeline computes them by default, cached.

    Influence: toward ``InfluenceConfig().target`` with the ensemble of ``SurrogateConfig()`` (``members``
    surrogates x their last ``checkpoints`` epochs, ``combine_members``), trained and scored by
    ``bench/coreset_quality.py``'s code and sharing its cache (``--quality-cache``). Effort: ``EffortConfig()``
    on this model (``out/effort_<model fingerprint>.npy``).
    """
    from coreset_quality import ENSEMBLE_SEEDS, ckpt_dir, ensemble_member, member_scores

    from dealrec_tasks.llm.effort import EffortScorer, attach_lora
    from dealrec_tasks.llm.evaluate import model_fingerprint
    from dealrec_tasks.scoring.config import InfluenceConfig
    from dealrec_tasks.scoring.influence import combine_members
    from dealrec_tasks.surrogate.config import SurrogateConfig

    scfg, target = SurrogateConfig(), InfluenceConfig().target
    cache = quality / "games"
    first = ENSEMBLE_SEEDS["games"]
    seeds = range(first, first + scfg.members)
    infos = {s: ensemble_member(world, s, cache, scfg.checkpoints, target) for s in seeds}
    ckpt = ckpt_dir(cache, target)
    influence = combine_members([v for s in seeds for v in member_scores(ckpt, s, infos[s], scfg.checkpoints)])
    path = out / f"effort_{model_fingerprint(model_dir)[:16]}.npy"
    if path.exists():
        effort = np.load(path)
    else:
        cfg = EffortConfig()
        tokenizer, model = tiny.load(model_dir)
        template = PromptTemplate(cfg.domain)
        prompts = [
            encode(tokenizer, template, [titles[i - 1] for i in s["history"]], titles[s["target"] - 1], cfg.cutoff_len)
            for s in samples
        ]
        t0 = time.perf_counter()
        scorer = EffortScorer(attach_lora(model, LoRAConfig(), seed=cfg.seed), tokenizer.pad_token_id, cfg)
        effort = np.asarray(scorer.score(prompts, desc="effort (Games candidates)"), np.float64)
        (out / "effort_seconds.json").write_text(json.dumps({"seconds": time.perf_counter() - t0, "n": len(prompts)}))
        np.save(path, effort)
    return {"influence": influence, "effort": effort}


# ---------------------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------------------
def evaluate(model, tokenizer, model_dir: Path, g: dict, rows: list[dict], out: Path) -> dict:
    cfg = EvalConfig()
    template = PromptTemplate("games")
    titles = g["titles"]
    prompts = [encode(tokenizer, template, [titles[i - 1] for i in r["history"]], None, cfg.cutoff_len) for r in rows]
    targets = [[t - 1 for t in r["targets"]] for r in rows]
    t0 = time.perf_counter()
    res = grounded_evaluation(model, tokenizer, prompts, targets, titles, cfg, model_dir, out / "embeddings")
    gen = res["generated"]
    counts: dict[str, int] = {}
    for x in gen:
        counts[x] = counts.get(x, 0) + 1
    catalogue = {clean_title(t) for t in titles}
    per_user = per_user_metrics(res["topk"], targets)
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "eval_config": cfg.to_dict(),
        "metrics": {k: float(v) for k, v in res["metrics"].items()},
        "per_user": per_user,
        "distinct_generated": len(counts),
        "distinct_generated_share": len(counts) / max(len(gen), 1),
        "generated_is_catalogue_title": float(np.mean([x in catalogue for x in gen])),
        "most_common": sorted(counts.items(), key=lambda kv: -kv[1])[:5],
        "examples": [
            {
                "history_tail": [titles[i - 1] for i in rows[k]["history"][-3:]],
                "generated": gen[k],
                "targets": [titles[t - 1] for t in rows[k]["targets"]][:3],
            }
            for k in range(0, len(rows), max(1, len(rows) // 8))
        ],
    }


def per_user_metrics(topk: np.ndarray, targets: list[list[int]]) -> dict:
    """Recall@20 and NDCG@20 per user (for the paired bootstrap), as ``ranking_metrics`` computes them."""
    rec, ndcg = [], []
    for row, t in zip(topk, targets):
        m = ranking_metrics(row[None, :], [t], (20,))
        rec.append(round(float(m["recall@20"]), 6))
        ndcg.append(round(float(m["ndcg@20"]), 6))
    return {"recall@20": rec, "ndcg@20": ndcg}


def run_arm(arm: str, seed: int, args, g: dict, rows: list[dict], samples: list[dict], scores) -> dict:
    from peft import PeftModel

    from dealrec_tasks.llm import finetune as ft

    n, epochs, out = args.n, args.epochs, args.out
    model_dir = out / "model"
    tokenizer, model = tiny.load(model_dir)
    record: dict = {"arm": arm, "seed": seed, "n": n}
    if arm == "before":
        record |= evaluate(model, tokenizer, model_dir, g, rows, out)
        return record
    if arm == "random":
        pick = np.random.default_rng(seed).choice(len(samples), n, replace=False)
    else:
        cands = Candidates(len(samples), influence=scores()["influence"], effort=scores()["effort"])
        pick = select(cands, SelectConfig(n=n, strategy="dealrec", seed=seed)).indices
    fcfg = FinetuneConfig(epochs=epochs, seed=seed)
    titles, template = g["titles"], PromptTemplate("games")
    train = [
        encode(
            tokenizer,
            template,
            [titles[i - 1] for i in samples[k]["history"]],
            titles[samples[k]["target"] - 1],
            fcfg.cutoff_len,
        )
        for k in pick
    ]
    valid = valid_prompts(g, tokenizer, 256, 0, fcfg.cutoff_len)
    work = out / f"finetune-{arm}-s{seed}-n{n}-e{epochs}"
    t0 = time.perf_counter()
    state = ft.finetune(model, tokenizer.pad_token_id, train, valid, fcfg, LoRAConfig(), work)
    record |= {
        "finetune_seconds": round(time.perf_counter() - t0, 1),
        "finetune_config": fcfg.to_dict(),
        "history": state["history"],
        "best_epoch": state["best_epoch"],
    }
    _, base = tiny.load(model_dir)
    record |= evaluate(PeftModel.from_pretrained(base, state["adapter_dir"]), tokenizer, model_dir, g, rows, out)
    return record


# ---------------------------------------------------------------------------------------------------------
# Statistics and output
# ---------------------------------------------------------------------------------------------------------
def t_interval(values: list[float]) -> tuple[float, float]:
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return float(v.mean()), float("nan")
    return float(v.mean()), float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))


def paired_bootstrap(a: np.ndarray, b: np.ndarray, reps: int = 4000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of a - b and its 95% percentile interval, resampling users ([seeds, users] arrays, users paired)."""
    rng = np.random.default_rng(seed)
    diff = (a - b).mean(axis=0)  # per user, averaged over seeds
    idx = rng.integers(0, len(diff), size=(reps, len(diff)))
    boots = diff[idx].mean(axis=1)
    return float(diff.mean()), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def summarise(runs: list[dict], pop_per_user: dict, random_r20: float) -> dict:
    out = {}
    for arm in ARMS:
        mine = sorted((r for r in runs if r["arm"] == arm), key=lambda r: r["seed"])
        if not mine:
            continue
        entry = {"seeds": [r["seed"] for r in mine]}
        for metric in ("recall@20", "ndcg@20"):
            mean, half = t_interval([r["metrics"][metric] for r in mine])
            a = np.asarray([r["per_user"][metric] for r in mine])
            b = np.asarray([pop_per_user[metric]] * len(mine))
            d, lo, hi = paired_bootstrap(a, b)
            entry[metric] = {"mean": mean, "ci95_half": half}
            entry[f"{metric}_vs_popularity"] = {"mean": d, "ci95": [lo, hi], "resolved": bool(lo > 0 or hi < 0)}
        entry["distinct_generated_share"] = float(np.mean([r["distinct_generated_share"] for r in mine]))
        r20 = entry["recall@20"]["mean"]
        entry["position_random_to_popularity"] = (r20 - random_r20) / max(
            pop_per_user["mean_recall@20"] - random_r20, 1e-12
        )
        out[arm] = entry
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result["summary"]
    arms = [a for a in ARMS if a in summary]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for ax, metric in ((axes[0], "recall@20"), (axes[1], "ndcg@20")):
        x = np.arange(len(arms))
        means = [summary[a][metric]["mean"] for a in arms]
        errs = [0 if np.isnan(summary[a][metric]["ci95_half"]) else summary[a][metric]["ci95_half"] for a in arms]
        ax.bar(x, means, yerr=errs, capsize=4, color="tab:blue")
        for run in result["runs"]:
            if run["arm"] in arms:
                ax.plot(arms.index(run["arm"]), run["metrics"][metric], "k.", ms=4)
        ax.axhline(result["popularity"]["seen_masked"][metric], color="tab:green", ls="--", label="popularity")
        if metric == "recall@20":
            ax.axhline(result["random_recall@20"], color="tab:red", ls="--", label="random ranking")
        for xi, a in zip(x, arms):  # the paired bootstrap over users against popularity (the users' uncertainty)
            v = summary[a][f"{metric}_vs_popularity"]
            label = f"vs pop. {v['mean']:+.4f}\n[{v['ci95'][0]:+.4f}, {v['ci95'][1]:+.4f}]"
            ax.text(xi, means[arms.index(a)] / 2, label, ha="center", va="center", fontsize=7, color="white")
        ax.set_xticks(x, [f"{a}\n({len(summary[a]['seeds'])} seeds)" for a in arms])
        ax.set_title(f"{metric}, {result['test_users']} Games test users (mean ± 95% CI, dots: seeds)", fontsize=9)
        ax.legend(fontsize=8)
    ax = axes[2]
    ax.bar(np.arange(len(arms)), [summary[a]["distinct_generated_share"] for a in arms], color="tab:purple")
    ax.set_xticks(np.arange(len(arms)), arms)
    ax.set_title("share of distinct generated titles over users", fontsize=9)
    m = result["model"]
    pre = m.get("pretraining", {})
    fig.suptitle(
        f"BIGRec on the embedded default LLM ({m['parameters'] / 1e6:.1f}M parameters, pretrained "
        f"{pre.get('steps_done')}/{pre.get('steps_budget')} steps on days <= {m['corpus']['last_day']}), "
        f"LoRA {result['args']['epochs']} epochs on n={result['args']['n']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "games")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tmp" / "llm_quality")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "llm_quality")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--epochs", type=int, default=FinetuneConfig().epochs)
    ap.add_argument("--pretrain-only", action="store_true")
    ap.add_argument("--note", default="", help="what differs in this run (kept in the JSON)")
    ap.add_argument("--lake", type=Path, default=ROOT / "var" / "games", help="lake holding datasets/games")
    ap.add_argument("--quality-cache", type=Path, default=ROOT / "bench" / "results" / "tmp" / "quality")
    args = ap.parse_args()
    wall = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    cfg = TinyLLMConfig()
    cut_day = args.days - cfg.corpus_gap_days
    g = load_games(args.data, args.days, cut_day, 0)
    last_day = f"2026-01-{cut_day:02d}"  # the replay starts on 2026-01-01
    t0 = time.perf_counter()
    model = default_model(g, args.out, cfg, last_day)
    model["build_seconds"] = round(time.perf_counter() - t0, 1)
    torch.set_num_threads(args.threads)
    print(f"model: {json.dumps({k: v for k, v in model.items() if k != 'config'}, default=str)[:600]}", flush=True)
    if args.pretrain_only:
        return
    from coreset_quality import games, games_world

    samples_table, n_items, titles = games(str(args.lake))
    assert n_items == len(g["titles"]) and [clean_title(t) for t in titles] == [clean_title(t) for t in g["titles"]]
    world = games_world(samples_table, n_items, 2000)
    samples = training_samples(world)
    memo: dict = {}

    def scores() -> dict:
        if not memo:
            memo.update(dealrec_scores(world, samples, g["titles"], args.out / "model", args.out, args.quality_cache))
        return memo

    rows = test_rows(g, args.users, 0)
    pop = popularity(g, rows, KS)
    _, masked = popularity_topk(g, rows, max(KS))
    pop_user = per_user_metrics(masked, [[t - 1 for t in r["targets"]] for r in rows])
    pop_user["mean_recall@20"] = float(np.mean(pop_user["recall@20"]))
    log = args.out / "runs.jsonl"
    runs = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    done = {(r["arm"], r["seed"], r["n"], r.get("finetune_config", {}).get("epochs")) for r in runs}
    for arm in args.arms:
        for seed in args.seeds if arm != "before" else [0]:
            key = (arm, seed, args.n, None if arm == "before" else args.epochs)
            if key in done:
                continue
            print(f"--- {arm} seed {seed}", flush=True)
            rec = run_arm(arm, seed, args, g, rows, samples, scores)
            print(
                f"[{arm} s{seed}] R@20 {rec['metrics']['recall@20']:.4f} NDCG@20 {rec['metrics']['ndcg@20']:.4f} "
                f"distinct {rec['distinct_generated']}",
                flush=True,
            )
            with log.open("a") as f:
                f.write(json.dumps(rec, default=float) + "\n")
            runs.append(rec)
    runs = [
        r for r in runs if r["n"] == args.n and r.get("finetune_config", {}).get("epochs", args.epochs) == args.epochs
    ]
    random_r20 = 20 / len(g["titles"])  # expected Recall@20 of a random ranking
    result = {
        "command": " ".join(sys.argv),
        "note": args.note,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "loadavg": os.getloadavg(),
        },
        "model": model,
        "test_users": len(rows),
        "items": len(g["titles"]),
        "popularity": pop,
        "random_recall@20": random_r20,
        "summary": summarise(runs, pop_user, random_r20),
        "runs": [{k: v for k, v in r.items() if k != "per_user"} for r in runs],
        "wall_seconds": round(time.perf_counter() - wall, 1),
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.results}.json").write_text(json.dumps(result, indent=2, default=float))
    plot(result, Path(f"{args.results}.png"))
    for arm, s in result["summary"].items():
        v = s["recall@20_vs_popularity"]
        verdict = "resolved" if v["resolved"] else "not resolved"
        print(
            f"{arm:8s} R@20 {s['recall@20']['mean']:.4f} ± {s['recall@20']['ci95_half']:.4f}  vs popularity "
            f"{v['mean']:+.4f} [{v['ci95'][0]:+.4f}, {v['ci95'][1]:+.4f}] {verdict}"
        )
    print(f"wrote {args.results}.json and .png")


if __name__ == "__main__":
    main()
