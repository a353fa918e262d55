"""Benchmark (issue 28): BIGRec on the shipped embedded LLM, on Games, before and after fine-tuning.

1. **The model** is the shipped one (``dealrec_tasks/llm/embedded/<version>``, its manifest verified): pretrained on
   the Games replay's days <= 25 only (``scripts/build_embedded_llm.py``). Nothing is pretrained here.
2. **Users**: ``--users`` random test rows of the pipeline's Games samples (history = train + valid, targets = the
   test items, the paper's split), the same for every arm and seed (paired comparisons); ``--gamma-users``
   validation rows (history = train, target = the first validation item) choose the popularity-aware grounding's
   gamma for each model; 256 other validation rows are fine-tuning's early-stopping set.
3. **Arms**, each evaluated with the library's ``grounded_evaluation`` (``EvalConfig`` defaults: beam 4, L2
   grounding over all 17,332 titles, and BIGRec's popularity-aware grounding):
   - ``base``: the shipped model, not fine-tuned;
   - ``random``: LoRA on ``--n`` random training samples, the base model's fine-tuning preset
     (``FinetuneConfig(preset="auto")``, chosen by ``bench/finetune_preset.py``);
   - ``dealrec``: the same on the DEALRec coreset of ``--n`` (``SelectConfig`` defaults) from influence (the SASRec
     ensemble of ``bench/coreset_quality.py``, sharing its cache) and effort on this model;
   - references on the same users: ``popularity`` (train + valid counts, seen items masked) and ``sasrec`` (the
     full-data SASRec surrogate: the ensemble's first member, trained on every training sample).
   Seeds change the random draw, the stratified draw and the LoRA init and data order.
4. **Statistics**: per arm the mean over seeds with a t-interval; paired differences per user (each user's value
   averaged over seeds) with the library's paired t (``dealrec_tasks/paired.py``): resolved when the 95% interval
   excludes 0.
5. ``--curve``: the pretraining learning curve, every snapshot of the shipped model's build (``<dir>.snapshots``)
   scored by the validation answer loss and, with ``--curve-users``, R@20 on that many validation rows.

The dealrec arm's scores are kept in ``--scores`` (committed, keyed by the model's fingerprint and the ensemble).
Runs (with their per-user values) are appended to ``--runs`` (committed: a measurement of hours survives the machine,
and a rerun does only what is missing); caches in ``--out``; JSON + PNG to ``--results``.

    nice -n 5 .venv/bin/python bench/llm_quality.py --users 4000 --seeds 0 1 2 --curve
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

from dealrec_tasks.llm import finetune as ft  # noqa: E402
from dealrec_tasks.llm import shipped, tiny  # noqa: E402
from dealrec_tasks.llm.config import EffortConfig, EvalConfig, FinetuneConfig, LoRAConfig  # noqa: E402
from dealrec_tasks.llm.evaluate import POPAWARE, grounded_evaluation  # noqa: E402
from dealrec_tasks.llm.prompts import PromptTemplate  # noqa: E402
from dealrec_tasks.metrics import per_user_metrics  # noqa: E402
from dealrec_tasks.paired import paired_t  # noqa: E402
from dealrec_tasks.selection import Candidates, SelectConfig, select  # noqa: E402
from dealrec_tasks.steps.llm import encode_rows, item_counts  # noqa: E402

ARMS = ("base", "random", "dealrec")
REFERENCES = ("popularity", "sasrec")
GROUNDINGS = {"l2": "", "popaware": POPAWARE}
KS = (10, 20, 50)
SHOWN = ("recall@20", "ndcg@20")
EARLY_STOP_USERS = 256


# ---------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------
def rows_of(samples, split: str) -> list[dict]:
    return [r for r in samples.to_pylist() if r["split"] == split]


def setup(args) -> dict:
    """Samples, titles, the test users, the validation users (early stopping, gamma, curve), item counts."""
    from coreset_quality import games, games_world, random_rows

    samples, n_items, titles = games(str(args.lake))
    world = games_world(samples, n_items, 2000)
    test_all = rows_of(samples, "test")
    test_pick = random_rows(len(test_all), args.users, 0)
    valid_all = rows_of(samples, "valid")
    order = np.random.default_rng(1).permutation(len(valid_all))
    early = [valid_all[i] for i in sorted(order[:EARLY_STOP_USERS])]
    gamma = [valid_all[i] for i in sorted(order[EARLY_STOP_USERS : EARLY_STOP_USERS + args.gamma_users])]
    curve = [valid_all[i] for i in sorted(order[-args.curve_users :])]
    train = rows_of(samples, "train")
    return {
        "world": world,
        "titles": titles,
        "train": train,
        "test_pick": test_pick,
        "test": [test_all[i] for i in test_pick],
        "early": early,
        "gamma": gamma,
        "curve": curve,
        "counts": item_counts(test_all, n_items),  # train + valid interactions of every test user
    }


def prompts(tokenizer, titles: list[str], rows: list[dict], with_target: bool, cutoff: int) -> list:
    """The pipeline's own prompts (``steps.llm.encode_rows``) with the paper's Games instruction."""
    return encode_rows(rows, titles, tokenizer, PromptTemplate("games"), cutoff, with_target=with_target)


# ---------------------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------------------
def evaluate(model, tokenizer, model_dir: Path, d: dict, rows: list[dict], args, gamma_rows: list[dict] | None) -> dict:
    """Both groundings on ``rows`` (gamma chosen on ``gamma_rows``; None: plain L2 only)."""
    cfg = EvalConfig(domain="games", batch_size=args.eval_batch)
    titles = d["titles"]
    targets = [[t - 1 for t in r["targets"]] for r in rows]
    extra = {}
    if gamma_rows:
        extra = {
            "item_counts": d["counts"],
            "valid_prompts": prompts(tokenizer, titles, gamma_rows, False, cfg.cutoff_len),
            "valid_targets": [r["target"] - 1 for r in gamma_rows],
        }
    t0 = time.perf_counter()
    res = grounded_evaluation(
        model, tokenizer, prompts(tokenizer, titles, rows, False, cfg.cutoff_len), targets, titles, cfg, model_dir,
        args.out / "embeddings", **extra,
    )  # fmt: skip
    per_user = {"l2": {m: np.round(res["per_user"][m], 6).tolist() for m in SHOWN}}
    if "popaware" in res:
        per_user["popaware"] = {m: np.round(res["popaware"]["per_user"][m], 6).tolist() for m in SHOWN}
    counts: dict[str, int] = {}
    for x in res["generated"]:
        counts[x] = counts.get(x, 0) + 1
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "eval_config": cfg.to_dict(),
        "metrics": {k: float(v) for k, v in res["metrics"].items()},
        "gamma": res.get("popaware", {}).get("gamma"),
        "gamma_users": len(gamma_rows or []),
        "per_user": per_user,
        "distinct_generated": len(counts),
        "most_common": sorted(counts.items(), key=lambda kv: -kv[1])[:5],
        "examples": [
            {
                "history_tail": [titles[i - 1] for i in rows[k]["history"][-3:]],
                "generated": res["generated"][k],
                "targets": [titles[t - 1] for t in rows[k]["targets"]][:3],
            }
            for k in range(0, len(rows), max(1, len(rows) // 6))
        ],
    }


def dealrec_scores(d: dict, model_dir: Path, args) -> dict:
    """Influence (the SASRec ensemble of ``bench/coreset_quality.py``, its cache shared) and effort on this model
    (``EffortConfig`` defaults, cached by the model's fingerprint) of every training sample."""
    from coreset_quality import ENSEMBLE_SEEDS, ckpt_dir, ensemble_member, member_scores

    from dealrec_tasks.llm.effort import EffortScorer, attach_lora
    from dealrec_tasks.llm.evaluate import model_fingerprint
    from dealrec_tasks.scoring.config import InfluenceConfig
    from dealrec_tasks.scoring.influence import combine_members
    from dealrec_tasks.surrogate.config import SurrogateConfig

    scfg, target = SurrogateConfig(), InfluenceConfig().target
    key = np.array(f"{model_fingerprint(model_dir)} members {scfg.members} from {ENSEMBLE_SEEDS['games']} {target}")
    if args.scores.exists():  # committed: the ensemble and effort on every sample cost over an hour of CPU
        kept = np.load(args.scores)
        if str(kept["key"]) == str(key):
            return {"influence": kept["influence"], "effort": kept["effort"]}
    cache = args.quality_cache / "games"
    first = ENSEMBLE_SEEDS["games"]
    seeds = range(first, first + scfg.members)
    infos = {s: ensemble_member(d["world"], s, cache, scfg.checkpoints, target) for s in seeds}
    ckpt = ckpt_dir(cache, target)
    influence = combine_members([v for s in seeds for v in member_scores(ckpt, s, infos[s], scfg.checkpoints)])
    path = args.out / f"effort_{model_fingerprint(model_dir)}.npy"
    if path.exists():
        effort = np.load(path)
    else:
        cfg = EffortConfig(domain="games")
        tokenizer, model = tiny.load(model_dir)
        train = prompts(tokenizer, d["titles"], d["train"], True, cfg.cutoff_len)
        scorer = EffortScorer(attach_lora(model, LoRAConfig(), seed=cfg.seed), tokenizer.pad_token_id, cfg)
        effort = np.asarray(scorer.score(train, desc="effort (Games candidates)"), np.float64)
        np.save(path, effort)
    np.savez_compressed(args.scores, key=key, influence=influence, effort=effort)
    return {"influence": influence, "effort": effort}


def finetuned(arm: str, seed: int, d: dict, model_dir: Path, args, scores) -> tuple:
    """(base model with the arm's adapter, fine-tuning record)."""
    from peft import PeftModel

    n = args.n
    if arm == "random":
        pick = np.random.default_rng(seed).choice(len(d["train"]), n, replace=False)
    else:
        cands = Candidates(len(d["train"]), influence=scores()["influence"], effort=scores()["effort"])
        pick = select(cands, SelectConfig(n=n, strategy="dealrec", seed=seed)).indices
    fcfg, lora, preset = ft.resolve_preset(model_dir, FinetuneConfig(seed=seed, domain="games"), LoRAConfig())
    tokenizer, model = tiny.load(model_dir)
    train = prompts(tokenizer, d["titles"], [d["train"][k] for k in pick], True, fcfg.cutoff_len)
    early = prompts(tokenizer, d["titles"], d["early"], True, fcfg.cutoff_len)
    work = args.out / f"finetune-{arm}-s{seed}-n{n}-{fcfg.lr:g}-{fcfg.epochs}-r{lora.r}-{len(lora.target_modules)}"
    t0 = time.perf_counter()
    state = ft.finetune(model, tokenizer.pad_token_id, train, early, fcfg, lora, work)
    record = {
        "finetune_seconds": round(time.perf_counter() - t0, 1),
        "finetune_config": fcfg.to_dict(),
        "lora": lora.to_dict(),
        "preset": preset,
        "history": state["history"],
        "best_epoch": state["best_epoch"],
    }
    _, base = tiny.load(model_dir)
    return PeftModel.from_pretrained(base, state["adapter_dir"]), tokenizer, record


def references(d: dict, args) -> dict:
    """Per-user Recall/NDCG@20 of popularity (seen items masked) and of the full-data SASRec on the test users."""
    from coreset_quality import ENSEMBLE_SEEDS, SurrogateConfig, build_model, ckpt_dir, ensemble_member, eval_subset

    from dealrec_tasks.scoring.config import InfluenceConfig
    from dealrec_tasks.surrogate.evaluate import popularity_ranks, rank_targets

    world = d["world"]
    test = eval_subset(world.test, d["test_pick"])
    target = InfluenceConfig().target
    seed = ENSEMBLE_SEEDS["games"]
    info = ensemble_member(world, seed, args.quality_cache / "games", SurrogateConfig().checkpoints, target)
    state = torch.load(ckpt_dir(args.quality_cache / "games", target) / f"best_s{seed}.pt", weights_only=True)
    sasrec = build_model(world.n_items, SurrogateConfig(), state).eval()
    out = {}
    for name, ranks in (("popularity", popularity_ranks(d["counts"], test)), ("sasrec", rank_targets(sasrec, test))):
        _, per_user = per_user_metrics(ranks, KS)
        out[name] = {
            "metrics": {k: float(np.mean(v)) for k, v in per_user.items()},
            "per_user": {m: np.round(per_user[m], 6).tolist() for m in SHOWN},
        }
    out["sasrec"]["model"] = {"seed": seed, "best_epoch": info.get("best_epoch"), "trained_on": "every training sample"}
    return out


def curve(d: dict, model_dir: Path, args) -> list[dict]:
    """Every pretraining snapshot and the final model: the validation answer loss (the target title's tokens given
    the history, on the gamma rows; a forward pass) and, with ``--curve-users`` > 0, plain-L2 R@20 / NDCG@20 on that
    many validation users (beam search: the expensive part)."""
    snapshots = sorted(Path(f"{model_dir}.snapshots").glob("step-*"))
    points = []
    manifest = shipped.read_manifest(model_dir)
    for path, steps in [(p, int(p.name.split("-")[1])) for p in snapshots] + [(model_dir, manifest["steps"])]:
        tokenizer, model = tiny.load(path)
        valid = prompts(tokenizer, d["titles"], d["gamma"], True, FinetuneConfig().cutoff_len)
        snap = path / "snapshot.json"
        point = {
            "steps": steps,
            "loss_last_50": json.loads(snap.read_text())["loss_last_50"] if snap.exists() else manifest["final_loss"],
            "valid_answer_loss": ft.mean_loss(model, valid, tokenizer.pad_token_id, False, 16),
            "valid_users": len(d["gamma"]),
        }
        if args.curve_users:
            rec = evaluate(model, tokenizer, path, d, d["curve"], args, None)
            point |= {m: rec["metrics"][m] for m in SHOWN}
        points.append(point)
        print(f"[curve] {point}", flush=True)
    return points


# ---------------------------------------------------------------------------------------------------------
# Statistics and output
# ---------------------------------------------------------------------------------------------------------
def t_interval(values: list[float]) -> dict:
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None
    return {"mean": float(v.mean()), "ci95_half": half, "values": v.tolist()}


def user_means(runs: list[dict], grounding: str, metric: str) -> np.ndarray:
    """Each user's value averaged over the runs (seeds)."""
    return np.mean([r["per_user"][grounding][metric] for r in runs], axis=0)


def summarise(runs: list[dict], refs: dict) -> dict:
    by_arm = {a: sorted((r for r in runs if r["arm"] == a), key=lambda r: r["seed"]) for a in ARMS}
    by_arm = {a: v for a, v in by_arm.items() if v}
    arms: dict = {}
    for arm, mine in by_arm.items():
        entry: dict = {"seeds": [r["seed"] for r in mine], "gamma": [r.get("gamma") for r in mine]}
        for g, prefix in GROUNDINGS.items():
            entry[g] = {
                m: t_interval([r["metrics"][prefix + m] for r in mine])
                for m in SHOWN
                if prefix + m in mine[0]["metrics"]
            }
        entry["distinct_generated"] = [r["distinct_generated"] for r in mine]
        arms[arm] = entry
    for name, ref in refs.items():
        arms[name] = {"reference": {m: ref["metrics"][m] for m in SHOWN}}

    def vector(arm: str, g: str, m: str) -> np.ndarray:
        return np.asarray(refs[arm]["per_user"][m]) if arm in refs else user_means(by_arm[arm], g, m)

    pairs = [(a, "base") for a in ("random", "dealrec")] + [("dealrec", "random")]
    pairs += [(a, r) for a in by_arm for r in refs]
    comparisons = []
    for a, b in pairs:
        if a not in by_arm or (b not in by_arm and b not in refs):
            continue
        for g in GROUNDINGS:
            if g not in by_arm[a][0]["per_user"]:
                continue
            for m in SHOWN:
                p = paired_t(vector(a, g, m), vector(b, g, m))
                comparisons.append(
                    {
                        "a": a,
                        "b": b,
                        "grounding": g,
                        "metric": m,
                        "users": p.users,
                        "mean": p.mean,
                        "ci95": [p.lower, p.upper],
                        "p": p.p,
                        "resolved": bool(p.lower > 0 or p.upper < 0),
                        "verdict": "a better" if p.lower > 0 else "b better" if p.upper < 0 else "not resolved",
                    }
                )
    return {"arms": arms, "comparisons": comparisons}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = result["summary"]["arms"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    ax = axes[0]
    names = [a for a in ARMS if a in arms]
    width = 0.38
    for j, (g, color) in enumerate((("l2", "tab:blue"), ("popaware", "tab:orange"))):
        means = [arms[a][g]["recall@20"]["mean"] if "recall@20" in arms[a].get(g, {}) else 0 for a in names]
        errs = [arms[a][g]["recall@20"]["ci95_half"] or 0 if "recall@20" in arms[a].get(g, {}) else 0 for a in names]
        x = np.arange(len(names)) + (j - 0.5) * width
        ax.bar(x, means, width, yerr=errs, capsize=3, color=color, label=f"{g} grounding")
        for a_i, a in enumerate(names):
            for v in arms[a].get(g, {}).get("recall@20", {}).get("values", []):
                ax.plot(x[a_i], v, "k.", ms=3)
    for name, color in (("popularity", "tab:green"), ("sasrec", "tab:purple")):
        if name in arms:
            ax.axhline(arms[name]["reference"]["recall@20"], color=color, ls="--", label=name)
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylabel("Recall@20 (test users)")
    seeds = sorted({r["seed"] for r in result["runs"] if r["arm"] != "base"})
    ax.set_title(f"{result['test_users']} test users; fine-tuned with seeds {seeds}")
    ax.legend(fontsize=8)
    ax = axes[1]
    comps = [c for c in result["summary"]["comparisons"] if c["metric"] == "recall@20"]
    labels = [f"{c['a']} - {c['b']} ({c['grounding']})" for c in comps]
    for i, c in enumerate(comps):
        color = "tab:green" if c["ci95"][0] > 0 else "tab:red" if c["ci95"][1] < 0 else "tab:gray"
        ax.errorbar(c["mean"], i, xerr=[[c["mean"] - c["ci95"][0]], [c["ci95"][1] - c["mean"]]], fmt="o", color=color)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("paired difference in Recall@20, 95% interval (green/red: resolved)")
    ax = axes[2]
    pts = result.get("curve") or []
    if pts:
        steps = [p["steps"] for p in pts]
        ax.plot(steps, [p["loss_last_50"] for p in pts], "s--", color="tab:gray", label="pretraining loss (last 50)")
        ax.plot(steps, [p["valid_answer_loss"] for p in pts], "o-", label="validation answer loss")
        ax.set_xlabel("pretraining steps")
        ax.set_ylabel("loss (nats/token)")
        if "recall@20" in pts[0]:
            ax2 = ax.twinx()
            ax2.plot(steps, [p["recall@20"] for p in pts], "^-", color="tab:green", label="R@20 (validation)")
            ax2.set_ylabel(f"R@20 ({result['args']['curve_users']} validation users)")
            ax2.legend(fontsize=8, loc="upper center")
        ax.legend(fontsize=8, loc="upper right")
    ax.set_title("learning curve of the shipped model's pretraining")
    m = result["model"]
    fig.suptitle(
        f"BIGRec on the shipped embedded LLM {m['version']} ({m['parameters'] / 1e6:.1f}M parameters, {m['steps']} "
        f"pretraining steps), LoRA on n={result['args']['n']} with its preset",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=shipped.SHIPPED_DIR)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tmp" / "llm_quality")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "llm_quality")
    ap.add_argument("--runs", type=Path, default=ROOT / "bench" / "results" / "llm_quality_runs.jsonl")
    ap.add_argument(
        "--scores", type=Path, default=ROOT / "bench" / "results" / "llm_quality_scores.npz",
        help="the dealrec arm's influence and effort of every training sample (kept with the model's fingerprint)",
    )  # fmt: skip
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--users", type=int, default=4000)
    ap.add_argument("--gamma-users", type=int, default=500)
    ap.add_argument("--curve-users", type=int, default=0, help="validation users of the curve's R@20 (0: loss only)")
    ap.add_argument("--eval-batch", type=int, default=32, help="prompts per generation batch (no effect on results)")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--curve", action="store_true", help="also the pretraining learning curve")
    ap.add_argument("--report-only", action="store_true", help="write the JSON + PNG from the finished runs only")
    ap.add_argument("--note", default="", help="what differs in this run (kept in the JSON)")
    ap.add_argument("--lake", type=Path, default=ROOT / "var" / "games", help="lake holding datasets/games")
    ap.add_argument("--quality-cache", type=Path, default=ROOT / "bench" / "results" / "tmp" / "quality")
    args = ap.parse_args()
    wall = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    model_dir = args.model
    manifest = shipped.verify(model_dir) if model_dir == shipped.SHIPPED_DIR else shipped.read_manifest(model_dir)
    d = setup(args)
    memo: dict = {}

    def scores() -> dict:
        if not memo:
            memo.update(dealrec_scores(d, model_dir, args))
        return memo

    refs = references(d, args)
    print({k: {m: round(v["metrics"][m], 4) for m in SHOWN} for k, v in refs.items()}, flush=True)
    log = args.runs
    runs = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    key = {"users": args.users, "n": args.n, "model": manifest["files"]["model.safetensors"]["sha256"]}
    runs = [r for r in runs if r.get("key") == key]
    done = {(r["arm"], r["seed"]) for r in runs}
    curve_path = args.out / f"curve-{key['model'][:12]}-{args.gamma_users}-{args.curve_users}.json"
    if args.curve and not curve_path.exists() and not args.report_only:  # first: a cut run still has it
        curve_path.write_text(json.dumps(curve(d, model_dir, args)))
    # The base model once (seed 0), then seed by seed both fine-tuned arms: a cut run still pairs them.
    todo = [("base", 0)] if "base" in args.arms else []
    todo += [(a, s) for s in args.seeds for a in args.arms if a != "base"]
    for arm, seed in [] if args.report_only else todo:
        if (arm, seed) in done:
            continue
        print(f"--- {arm} seed {seed}", flush=True)
        if arm == "base":
            tokenizer, model = tiny.load(model_dir)
            rec: dict = {}
        else:
            model, tokenizer, rec = finetuned(arm, seed, d, model_dir, args, scores)
        rec = (
            {"arm": arm, "seed": seed, "key": key}
            | rec
            | evaluate(model, tokenizer, model_dir, d, d["test"], args, d["gamma"])
        )
        mt = rec["metrics"]
        print(
            f"[{arm} s{seed}] R@20 {mt['recall@20']:.4f} popaware {mt[POPAWARE + 'recall@20']:.4f} "
            f"(gamma {rec['gamma']}) distinct {rec['distinct_generated']}",
            flush=True,
        )
        with log.open("a") as f:
            f.write(json.dumps(rec, default=float) + "\n")
        runs.append(rec)
    result = {
        "command": "python bench/llm_quality.py " + " ".join(sys.argv[1:]),
        "note": args.note,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
        "model": {k: manifest[k] for k in ("version", "parameters", "steps", "final_loss", "data_cut")},
        "test_users": len(d["test"]),
        "items": len(d["titles"]),
        "references": {
            k: {"metrics": v["metrics"]} | {x: y for x, y in v.items() if x == "model"} for k, v in refs.items()
        },
        "summary": summarise(runs, refs),
        "curve": json.loads(curve_path.read_text()) if curve_path.exists() else None,
        "runs": [{k: v for k, v in r.items() if k != "per_user"} for r in runs],
        "wall_seconds": round(time.perf_counter() - wall, 1),
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.results}.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    plot(result, Path(f"{args.results}.png"))
    for c in result["summary"]["comparisons"]:
        if c["metric"] == "recall@20":
            print(
                f"{c['a']:8s} - {c['b']:10s} {c['grounding']:8s} R@20 {c['mean']:+.4f} "
                f"[{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}] {c['verdict']}"
            )
    print(f"wrote {args.results}.json and .png")


if __name__ == "__main__":
    main()
