"""Benchmark: how good are the coresets, in three regimes that mirror how the daily pipeline is used.

Every strategy picks n = 1024 training samples of Games (../shared/data/games, the paper's split); a SASRec
backend (paper architecture) learns from them; it is tested on the test users with all items ranked.

Regimes (``--regimes``), one JSON + one PNG each under bench/results/ (``coreset_quality_<regime>.*``):
- **cold**: the backend is trained from scratch on the coreset only (early stopping on 2,000 validation users).
- **warm**: what the daily DAG does. A backend is first trained on an earlier cut of the data (the 30-day Games
  replay of ``dealrec replay``, every interaction before day ``--warm-cut``), then fine-tuned with a fixed small
  budget (``--warm-epochs`` epochs, best epoch on the validation users) on the last day's coreset, and tested on
  that day's test users. References: no fine-tuning, fine-tuning on all of the day's samples (the full cost).
- **planted**: 15% of the training users are replaced by bots (a third each: random items, one item repeated,
  the user's own items shuffled), the scores are computed on that data, backends trained cold; the JSON gives
  each strategy's share of bots in the coreset (random = the base rate) and test metrics on the clean users.

Scores (cached under ``--cache``, so a rerun trains only what is missing): ``--members`` SASRec surrogates with
seeds 0.. on all training samples; influence is their ensemble (``combine_members``). Stability is measured on
every run: Spearman between negative seeds (same surrogate) and between retrains (surrogate seeds), for one
surrogate and for ensembles of ``--members`` (``--stability-surrogates`` >= 2 * members trains a second
ensemble). Effort comes from the embedded tiny LLaMA built from the Games titles (the bulk of the scoring time).

Statistics: mean and 95% t-interval over seeds; each strategy minus random with Welch's interval (resolved =
the interval excludes 0); each strategy against the popularity ranking (training + validation counts, seen items
masked). Seeds change the selection's draws and the backend's initialisation, batch order and negatives.

Runnable in parts: ``--regimes``, ``--strategies``, ``--seeds``; finished runs are appended to
``<cache>/runs_<regime>_n<n>.jsonl`` (two processes may run disjoint strategies at once) and every invocation
rewrites the JSON of its regimes from all finished runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt_mod
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from quality_stats import interval, versus, versus_value  # noqa: E402

from dealrec_tasks.scoring import baselines  # noqa: E402
from dealrec_tasks.scoring.config import InfluenceConfig  # noqa: E402
from dealrec_tasks.scoring.influence import combine_members, influence, item_popularity, negative_set  # noqa: E402
from dealrec_tasks.selection import STRATEGIES, Candidates, SelectConfig, select  # noqa: E402
from dealrec_tasks.storage import Lake  # noqa: E402
from dealrec_tasks.surrogate.batching import EvalSet, Seqs, eval_set, train_batch, train_seqs, valid_seqs  # noqa: E402
from dealrec_tasks.surrogate.config import SurrogateConfig  # noqa: E402
from dealrec_tasks.surrogate.evaluate import evaluate, popularity_metrics  # noqa: E402
from dealrec_tasks.surrogate.model import bce_expected  # noqa: E402
from dealrec_tasks.surrogate.train import build_model, train  # noqa: E402

REGIMES = ("cold", "warm", "planted")
METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")
MAIN = ("dealrec", "random", "quantile", "greedy")  # get --main-seeds; every other strategy --seeds
# Probes of why a strategy does (not) work: name -> (strategy, config overrides, score sign flips).
VARIANTS: dict[str, tuple[str, dict, tuple[str, ...]]] = {
    "dealrec_flipped": ("dealrec", {}, ("influence",)),  # the opposite influence sign
    "dealrec_no_prune": ("dealrec", {"hard_prune": 0.0}, ()),
    "greedy_low": ("greedy", {}, ("influence", "effort")),  # the n lowest overall scores
    **{f"quantile_p{p}": ("quantile", {"pool": p / 100}, ()) for p in (5, 10, 20, 40, 60)},
    **{f"quantile_p{p}_l0": ("quantile", {"pool": p / 100, "lam": 0.0}, ()) for p in (5, 10, 20, 40)},
    "quantile_single": ("quantile", {}, ()),  # influence of one surrogate instead of the ensemble
    # The worst-fitted 20% (highest EL2N) dropped first: bots and noise are what the surrogate cannot fit.
    "quantile_fit20": ("quantile", {}, "fit20"),
    "greedy_fit20": ("greedy", {}, "fit20"),
    "quantile_p40_fit20": ("quantile", {"pool": 0.4}, "fit20"),
    # The same idea as the library's option: the fit filter before the scores are normalised.
    "quantile_p40_fitprune20": ("quantile", {"pool": 0.4, "fit_prune": 0.2}, ()),
    # Other scores in the influence slot (lambda 0): is it "easy" samples or popular items that help?
    **{f"quantile_easy_p{p}": ("quantile", {"pool": p / 100, "lam": 0.0}, "easy") for p in (10, 20, 40)},
    **{f"quantile_itempop_p{p}": ("quantile", {"pool": p / 100, "lam": 0.0}, "item_pop") for p in (10, 20, 40)},
}
SINGLE_SURROGATE = ("quantile_single",)
BOT_KINDS = ("random_items", "one_item", "shuffled")


# ---------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------
@dataclass
class World:
    """A candidate set (one train sample per user) and the rows a backend is validated and tested on."""

    name: str
    seqs: Seqs  # [N] candidates: [BOS, history, target]
    valid: EvalSet  # every validation row (the surrogates' early stop)
    valid_sub: EvalSet  # the backends' early stop
    test: EvalSet  # test users (clean users only in the planted world)
    n_items: int
    bot_kind: np.ndarray  # [N] str, "" for a real user
    valid_seqs: Seqs  # the validation rows as [BOS, history, first target] (influence toward them)


def games(lake_root: str):
    """Samples of the paper's split, item count, titles by item index, and the per-user sequences."""
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


def eval_subset(data: EvalSet, rows: np.ndarray) -> EvalSet:
    return EvalSet(data.inputs.take(rows), data.targets.take(rows), data.mask.take(rows))


def random_rows(n: int, size: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, min(size, n), replace=False))


def games_world(samples, n_items: int, valid_users: int) -> World:
    seqs = train_seqs(samples, n_items)
    valid, test = eval_set(samples, "valid", n_items), eval_set(samples, "test", n_items)
    sub = eval_subset(valid, random_rows(len(valid.inputs), valid_users, 0))
    kinds = np.full(len(seqs), "", dtype=object)
    return World("games", seqs, valid, sub, test, n_items, kinds, valid_seqs(samples, n_items))


def plant_bots(seqs: Seqs, n_items: int, share: float, seed: int) -> tuple[Seqs, np.ndarray]:
    """``share`` of the rows replaced by bots of the same length (a third of each kind), kept in place."""
    rng = np.random.default_rng(seed)
    n = len(seqs)
    bots = rng.choice(n, int(round(share * n)), replace=False)
    kind = np.full(n, "", dtype=object)
    tokens = seqs.tokens.copy()
    for j, row in enumerate(bots):
        k = BOT_KINDS[j % len(BOT_KINDS)]
        kind[row] = k
        lo, hi = seqs.offsets[row] + 1, seqs.offsets[row + 1]  # after BOS
        if k == "random_items":
            tokens[lo:hi] = rng.integers(1, n_items + 1, hi - lo)
        elif k == "one_item":
            tokens[lo:hi] = rng.integers(1, n_items + 1)
        else:
            tokens[lo:hi] = rng.permutation(tokens[lo:hi])
    return Seqs(tokens, seqs.offsets.copy(), seqs.sample_id.copy()), kind


def planted_world(base: World, samples, share: float, seed: int) -> World:
    """Bots replace ``share`` of the training users; their validation and test rows leave the evaluation."""
    seqs, kind = plant_bots(base.seqs, base.n_items, share, seed)
    train = samples.filter(_split_mask(samples, "train"))
    by_sample_id = np.argsort(train.column("sample_id").to_numpy(), kind="stable")  # the order of train_seqs
    bot_users = set(train.column("user_idx").to_numpy()[by_sample_id][kind != ""])

    def clean(split: str) -> np.ndarray:
        users = samples.filter(_split_mask(samples, split)).column("user_idx").to_numpy()
        return np.flatnonzero([u not in bot_users for u in users])

    valid = eval_subset(base.valid, clean("valid"))
    test = eval_subset(base.test, clean("test"))
    sub = eval_subset(valid, random_rows(len(valid.inputs), len(base.valid_sub.inputs), 0))
    real = np.asarray([u not in bot_users for u in samples.column("user_idx").to_numpy()])
    target = valid_seqs(samples.filter(pa.array(real)), base.n_items)
    return World("planted", seqs, valid, sub, test, base.n_items, kind, target)


def _split_mask(samples, split: str):
    import pyarrow.compute as pc

    return pc.equal(samples.column("split"), split)


def warm_cut(lake_root: str, n_items: int, days: int, cut: int, seed: int) -> Seqs:
    """The training data as the replay had it before day ``cut``: one row per user with any earlier item,
    [BOS, the user's training items before the cut] (at most max_len + 1 of the latest)."""
    from dealrec_tasks.data.replay import replay_days

    lake = Lake(lake_root)
    sequences = lake.read("datasets/games", None, "sequences")
    vocab = lake.read("datasets/games", None, "item_vocab")
    by_day = replay_days(sequences, vocab, days, "2026-01-01", seed)
    before: dict[str, int] = {}
    for dt in sorted(by_day)[:cut]:
        for u in by_day[dt].column("user_id").to_pylist():
            before[u] = before.get(u, 0) + 1
    rows = []
    for user_id, items in zip(sequences.column("user_id").to_pylist(), sequences.column("train").to_pylist()):
        k = before.get(user_id, 0)
        if k >= 1:
            rows.append(np.asarray(items[:k][-51:], np.int64))
    lens = np.asarray([len(r) + 1 for r in rows])
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    tokens = np.concatenate([np.concatenate([[n_items + 1], r]) for r in rows]).astype(np.int64)
    return Seqs(tokens, offsets, np.arange(len(rows), dtype=np.int64))


# ---------------------------------------------------------------------------------------------------------
# Scores (cached: the same for every strategy and seed)
# ---------------------------------------------------------------------------------------------------------
def cached(path: Path, compute):
    """An array computed once and kept in ``path`` (.npy)."""
    if path.exists():
        return np.load(path, allow_pickle=False)
    value = np.asarray(compute())
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, value)
    return value


def surrogate(world: World, seed: int, cache: Path):
    """The surrogate GraNd / EL2N / RecRanker score with: the best weights of ensemble seed ``seed`` when kept,
    else its own training (cached)."""
    kept = [d / f"best_s{seed}.pt" for d in (cache / "ckpt", cache / "ckpt_valid")]  # the same seeded training
    path = next((b for b in kept if b.exists()), cache / f"surrogate_s{seed}.pt")
    if path.exists():
        return build_model(world.n_items, SurrogateConfig(), torch.load(path, weights_only=True)).eval()
    res = train(world.seqs, world.valid, world.n_items, SurrogateConfig(seed=seed, checkpoints=1))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(res.model.state_dict(), path)
    (cache / f"surrogate_s{seed}.json").write_text(json.dumps(res.summary()))
    return res.model.eval()


def ckpt_dir(cache: Path, target: str) -> Path:
    """Where a world's ensemble scores are kept: ``ckpt/`` (influence toward the training risk, the paper's) or
    ``ckpt_valid/`` (toward the validation rows)."""
    return cache / ("ckpt" if target == "train" else f"ckpt_{target}")


def ensemble_member(world: World, seed: int, cache: Path, keep: int, target: str = "train") -> dict:
    """One member of the influence ensemble: a surrogate trained with ``seed`` (paper defaults) and the influence of
    each of its last ``keep`` checkpoints up to the best epoch (``<ckpt>/infl_s<seed>_e<epoch>_n0.npy``), plus the
    best epoch's influence with another negative seed (``_n1``). Cached; returns the member's summary."""
    out = ckpt_dir(cache, target)
    icfg = InfluenceConfig(target=target)
    rows = world.valid_seqs if target == "valid" else None
    meta = out / f"s{seed}.json"
    if meta.exists():
        return json.loads(meta.read_text())
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = train(world.seqs, world.valid, world.n_items, SurrogateConfig(seed=seed, checkpoints=keep))
    train_s = time.perf_counter() - t0
    seconds = []
    for epoch, state in res.checkpoints:
        model = build_model(world.n_items, SurrogateConfig(), state).eval()
        t1 = time.perf_counter()
        np.save(out / f"infl_s{seed}_e{epoch}_n0.npy", influence(model, world.seqs, icfg, target=rows).influence)
        seconds.append(time.perf_counter() - t1)
        if epoch == res.best_epoch:
            other_cfg = dataclasses.replace(icfg, neg_seed=1)
            other = influence(model, world.seqs, other_cfg, target=rows).influence
            np.save(out / f"infl_s{seed}_e{epoch}_n1.npy", other)
            torch.save(state, out / f"best_s{seed}.pt")
    info = res.summary() | {
        "epochs_scored": [e for e, _ in res.checkpoints],
        "influence_s": seconds,
        "train_s": train_s,
    }
    meta.write_text(json.dumps(info))
    return info


def member_scores(ckpt: Path, seed: int, info: dict, checkpoints: int, neg: int = 0) -> list[np.ndarray]:
    """Influence vectors of a member's last ``checkpoints`` scored epochs (up to its best), from ``ckpt_dir``."""
    epochs = [e for e in info["epochs_scored"] if e <= info["best_epoch"]][-checkpoints:]
    return [np.load(ckpt / f"infl_s{seed}_e{e}_n{neg}.npy") for e in epochs]


def effort_scores(world: World, titles: list[str], model_dir: Path, rows: np.ndarray) -> np.ndarray:
    """Effort of candidate ``rows`` on the tiny LLaMA built from the Games titles."""
    from dealrec_tasks.llm.config import EffortConfig, LoRAConfig, TinyLLMConfig
    from dealrec_tasks.llm.effort import EffortScorer, attach_lora
    from dealrec_tasks.llm.prompts import PromptTemplate
    from dealrec_tasks.llm.tiny import build_tiny_llm, load
    from dealrec_tasks.steps.llm import encode_rows

    cfg = EffortConfig()
    # The committed results used the 2-layer model with the earlier warm-up (titles only); "small" is its size.
    build_tiny_llm(model_dir, titles, TinyLLMConfig.sized("small"))
    tokenizer, model = load(model_dir)
    dicts = [
        {"history": world.seqs.row(int(r))[1:-1].tolist(), "target": int(world.seqs.row(int(r))[-1])} for r in rows
    ]
    prompts = encode_rows(dicts, titles, tokenizer, PromptTemplate("games"), cfg.cutoff_len)
    scorer = EffortScorer(attach_lora(model, LoRAConfig(), seed=cfg.seed), tokenizer.pad_token_id, cfg)
    return np.asarray(scorer.score(prompts, desc=f"effort ({world.name})"), np.float64)


def effort_of(world: World, base_cache: Path, titles: list[str], model_dir: Path, timings: dict) -> np.ndarray:
    """Effort per candidate: the Games samples' scores (one file by sample_id), bots scored on their own."""
    path = base_cache / "effort_games.npz"
    if not path.exists():
        t0 = time.perf_counter()
        value = effort_scores(world, titles, model_dir, np.arange(len(world.seqs)))
        np.savez(path, sample_id=world.seqs.sample_id, effort=value, seconds=time.perf_counter() - t0)
    saved = np.load(path)
    timings["effort_s"] = float(saved["seconds"])
    by_id = dict(zip(saved["sample_id"].tolist(), saved["effort"].tolist()))
    effort = np.asarray([by_id[int(i)] for i in world.seqs.sample_id], np.float64)
    bots = np.flatnonzero(world.bot_kind != "")
    if len(bots):
        effort[bots] = cached(
            base_cache / world.name / "effort_bots.npy", lambda: effort_scores(world, titles, model_dir, bots)
        )
    return effort


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(stats.spearmanr(a, b).statistic)


ENSEMBLE_SEEDS = {"games": 10, "planted": 20}  # first seed of each world's ensemble (the next ones follow)
BASELINE_SEED = {"games": 0, "planted": 20}  # the surrogate of GraNd / EL2N / RecRanker


def scores(world: World, args, base_cache: Path, titles: list[str]) -> tuple[Candidates, Candidates, dict]:
    """Candidates with the ensemble influence and with one surrogate's (its best epoch), and the stability report.

    The ensemble is what the pipeline computes: ``--members`` surrogates x their last ``--checkpoints`` epochs, each
    influence vector divided by its RMS, then averaged (``combine_members``). On Games a second, disjoint ensemble
    (the next ``--members`` seeds) measures the agreement between retrains.
    """
    cache = base_cache / world.name
    m, c, target = args.members, args.checkpoints, args.influence_target
    ckpt = ckpt_dir(cache, target)
    first = ENSEMBLE_SEEDS[world.name]
    seeds = list(range(first, first + (2 * m if world.name == "games" and args.retrain_check else m)))
    infos = {s: ensemble_member(world, s, cache, max(c, args.scored_checkpoints), target) for s in seeds}
    per_seed = {s: member_scores(ckpt, s, infos[s], c) for s in seeds}
    best = {s: member_scores(ckpt, s, infos[s], 1)[0] for s in seeds}
    ensemble = combine_members([v for s in seeds[:m] for v in per_seed[s]])
    pairs = [(i, j) for i in seeds for j in seeds if i < j]
    neg = {s: ckpt / f"infl_s{s}_e{infos[s]['best_epoch']}_n1.npy" for s in seeds}
    stability = {
        "influence_target": target,
        "members": m,
        "checkpoints": c,
        "seeds": seeds,
        "negative_seeds": {"single": {s: spearman(best[s], np.load(p)) for s, p in neg.items() if p.exists()}},
        "retrain": {
            "single_best_epoch": {f"{i}-{j}": spearman(best[i], best[j]) for i, j in pairs},
            "single_checkpoints": {
                f"{i}-{j}": spearman(combine_members(per_seed[i]), combine_members(per_seed[j])) for i, j in pairs
            },
        },
        "surrogates": infos,
    }
    have = [s for s in seeds[:m] if neg[s].exists()]
    if len(have) == m and m > 1:
        # The ensemble's negative-seed agreement, on the members' best epochs that have the other negative seed.
        stability["negative_seeds"]["ensemble_best_epochs"] = spearman(
            combine_members([best[s] for s in have]), combine_members([np.load(neg[s]) for s in have])
        )
    if len(seeds) >= 2 * m:
        second = combine_members([v for s in seeds[m : 2 * m] for v in per_seed[s]])
        stability["retrain"]["ensemble"] = spearman(ensemble, second)
        for k in range(1, c + 1):  # how the agreement grows with the checkpoints kept (1 = best epochs only)
            a = combine_members([v for s in seeds[:m] for v in member_scores(ckpt, s, infos[s], k)])
            b = combine_members([v for s in seeds[m : 2 * m] for v in member_scores(ckpt, s, infos[s], k)])
            stability["retrain"].setdefault("ensemble_by_checkpoints", {})[k] = spearman(a, b)
    model = surrogate(world, BASELINE_SEED[world.name], cache)
    negatives = negative_set(world.n_items, 4096, 0)
    timings: dict = {}
    if args.skip_effort and not (base_cache / "effort_games.npz").exists():
        effort = np.zeros(len(world.seqs))  # a placeholder: only strategies that ignore effort may run
    else:
        effort = effort_of(world, base_cache, titles, Path(args.model_dir), timings)
    common = dict(
        effort=effort,
        grand=cached(cache / "grand.npy", lambda: baselines.grand_scores(model, world.seqs, negatives)),
        el2n=cached(cache / "el2n.npy", lambda: baselines.el2n_scores(model, world.seqs, negatives)),
        user_repr=cached(cache / "user_repr.npy", lambda: baselines.user_representations(model, world.seqs)),
        interactions=world.seqs.lengths.astype(np.int64) - 1,  # history + target (the row also holds BOS)
    )
    cands = Candidates(len(world.seqs), influence=ensemble, **common)
    cands_single = Candidates(len(world.seqs), influence=best[seeds[0]], **common)
    stability["dealrec_strata"] = dealrec_strata(cands, args.n)
    if (world.bot_kind != "").any():  # where each kind of bot sits in each score (mean percentile; real users ~50)
        stability["bot_percentiles"] = {
            name: {
                kind or "real": float(stats.rankdata(x)[world.bot_kind == kind].mean() / len(x) * 100)
                for kind in ("", *BOT_KINDS)
            }
            for name, x in (("influence", ensemble), ("effort", effort), ("el2n", common["el2n"]))
        }
    stability["spearman_influence_effort"] = spearman(ensemble, effort)
    stability["spearman_effort_interactions"] = spearman(effort, common["interactions"])
    stability["influence_skew"] = float(stats.skew(ensemble))
    stability["influence_negative_share"] = float((ensemble < 0).mean())
    train_s = float(np.median([infos[s]["train_s"] for s in seeds]))
    passes = [x for s in seeds for x in infos[s]["influence_s"]]
    pass_s = float(np.median(passes)) if passes else 0.0
    timings |= {
        "surrogate_train_s": {s: infos[s]["train_s"] for s in seeds},
        "influence_pass_s_median": pass_s,
        # one surrogate at its best epoch vs the ensemble: (m - 1) more trainings, m * c - 1 more influence passes
        "single_s": train_s + pass_s,
        "ensemble_s": m * train_s + m * c * pass_s,
    }
    stability["seconds"] = timings
    return cands, cands_single, stability


def fit_filter(cands: Candidates, share: float) -> Candidates:
    """The candidates with the ``share`` the surrogate fits worst (highest EL2N: bots, noise) pushed to the very
    bottom of both scores, so no rule that prefers high scores takes them."""
    worst = cands.el2n >= np.quantile(cands.el2n, 1 - share)
    infl, eff = cands.influence.copy(), cands.effort.copy()
    infl[worst] = infl.min() - (infl.max() - infl.min())
    eff[worst] = eff.min()
    return dataclasses.replace(cands, influence=infl, effort=eff)


def probe_score(name: str, cands: Candidates, world: World) -> np.ndarray:
    """Scores that are not DEALRec's, to explain what a good coreset holds: ``easy`` = -EL2N (the surrogate fits
    the sample well), ``item_pop`` = mean log training count of the sample's items (history and target)."""
    if name == "easy":
        return -cands.el2n
    if name == "item_pop":
        counts = item_popularity(world.seqs, world.n_items)
        logs = np.log1p(np.concatenate([[0.0], counts, [0.0]]))[world.seqs.tokens]  # BOS = n_items + 1 -> 0
        lens = world.seqs.lengths
        return np.add.reduceat(logs, world.seqs.offsets[:-1]) / np.maximum(lens - 1, 1)
    raise ValueError(name)


def dealrec_strata(cands: Candidates, n: int, low_share: float = 0.1) -> dict:
    """Where the paper's rule spends its budget: the lowest equal-width strata that hold at most ``low_share`` of
    the candidates left after the hard prune, and the share of the budget they get."""
    groups = select(cands, SelectConfig(strategy="dealrec", n=n)).groups
    sizes, budgets = groups.sizes.astype(np.float64), groups.budgets.astype(np.float64)
    low = int(np.searchsorted(np.cumsum(sizes) / sizes.sum(), low_share, side="right"))
    return {
        "k": len(sizes),
        "low_strata": low,
        "low_candidates_share": float(sizes[:low].sum() / sizes.sum()),
        "low_budget_share": float(budgets[:low].sum() / budgets.sum()),
        "sizes": sizes.astype(int).tolist(),
        "budgets": budgets.astype(int).tolist(),
    }


# ---------------------------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------------------------
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


COLD = dict(max_epochs=200, eval_every=5, patience=4)


def backend(regime: str, world: World, rows: np.ndarray, seed: int, args, warm_state) -> tuple:
    """Train the regime's backend on ``rows`` of the world's candidates; returns (model, TrainResult)."""
    data = world.seqs.take(np.sort(rows))
    if regime == "warm":
        cfg = SurrogateConfig(
            seed=seed,
            lr=args.warm_lr,
            max_epochs=args.warm_epochs,
            eval_every=1,
            patience=args.warm_epochs,
            checkpoints=1,
        )
        res = train(data, world.valid_sub, world.n_items, cfg, init_state=warm_state)
    else:
        res = train(data, world.valid_sub, world.n_items, SurrogateConfig(seed=seed, checkpoints=1, **COLD))
    return res.model, res


def pretrained(world: World, args, cache: Path) -> dict:
    """The warm regime's starting point: a backend trained on the data before the cut (cached)."""
    path = cache / f"warm_pretrained_cut{args.warm_cut}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    early = warm_cut(args.lake, world.n_items, 30, args.warm_cut, 0)
    print(f"warm: {len(early):,} users with data before day {args.warm_cut}", flush=True)
    res = train(early, world.valid_sub, world.n_items, SurrogateConfig(seed=0, checkpoints=1, **COLD))
    torch.save(res.model.state_dict(), path)
    (cache / f"warm_pretrained_cut{args.warm_cut}.json").write_text(
        json.dumps(res.summary() | {"users": len(early), "interactions": int(early.lengths.sum() - len(early))})
    )
    return res.model.state_dict()


# ---------------------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=REGIMES)
    ap.add_argument("--lake", default=str(ROOT / "var/games"), help="lake holding (or receiving) datasets/games")
    ap.add_argument("--out", default=str(ROOT / "bench/results"))
    ap.add_argument("--cache", default=str(ROOT / "bench/results/tmp/quality"), help="scores and runs kept")
    ap.add_argument("--model-dir", default=str(ROOT / "var/models/games-tiny"), help="tiny LLaMA from Games titles")
    ap.add_argument("--n", type=int, default=1024, help="coreset size")
    ap.add_argument("--strategies", nargs="+", default=[*MAIN, "greedy"], help=f"of {list(STRATEGIES)} and probes")
    ap.add_argument("--seeds", type=int, default=5, help="seeds per strategy")
    ap.add_argument("--main-seeds", type=int, default=10, help=f"seeds for {', '.join(MAIN)}")
    ap.add_argument("--members", type=int, default=3, help="surrogates in the influence ensemble")
    ap.add_argument("--checkpoints", type=int, default=6, help="epochs per member, up to its best, influence averages")
    ap.add_argument(
        "--scored-checkpoints", type=int, default=8, help="epochs scored per member (agreement by checkpoints)"
    )
    ap.add_argument(
        "--influence-target",
        default="train",
        choices=("train", "valid"),
        help="influence toward the training risk (the paper's) or the validation rows (InfluenceConfig.target)",
    )
    ap.add_argument(
        "--no-retrain-check", dest="retrain_check", action="store_false", help="skip the second ensemble (Games)"
    )
    ap.add_argument("--valid-users", type=int, default=2000, help="validation users for the backend's early stop")
    ap.add_argument("--bots", type=float, default=0.15, help="planted: share of training users replaced by bots")
    ap.add_argument("--warm-cut", type=int, default=20, help="warm: pretrain on the replay's days before this one")
    ap.add_argument("--warm-epochs", type=int, default=10, help="warm: fine-tuning budget in epochs")
    ap.add_argument("--warm-lr", type=float, default=1e-3, help="warm: fine-tuning learning rate (Adam)")
    ap.add_argument("--risk-samples", type=int, default=10000, help="training samples the empirical risk averages")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--no-train", action="store_true", help="only summarise finished runs")
    ap.add_argument("--runs-tag", default="", help="keep these runs apart (probes with other settings)")
    ap.add_argument("--note", default="", help="a note stored in the JSON (what differs in these runs)")
    ap.add_argument(
        "--skip-effort", action="store_true", help="while effort is not cached: run only strategies that ignore it"
    )
    args = ap.parse_args()
    os.environ.setdefault("DEALREC_PROGRESS", "0")
    if args.threads:
        torch.set_num_threads(args.threads)
    for s in args.strategies:
        if s not in STRATEGIES and s not in VARIANTS:
            ap.error(f"--strategies: unknown {s!r}; choose from {list(STRATEGIES) + list(VARIANTS)}")
        if args.skip_effort and s != "random" and VARIANTS.get(s, ("", {}, ()))[1].get("lam", 0.3) != 0:
            ap.error(f"--skip-effort: {s!r} uses the effort score")
    command = "python bench/coreset_quality.py " + " ".join(sys.argv[1:])
    load_start = os.getloadavg()
    started = time.perf_counter()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    samples, n_items, titles = games(args.lake)
    base = games_world(samples, n_items, args.valid_users)
    print(
        f"Games: {len(base.seqs):,} train samples, {len(base.test.inputs):,} test users, {n_items:,} items", flush=True
    )

    for regime in args.regimes:
        world = planted_world(base, samples, args.bots, 0) if regime == "planted" else base
        cands, cands_single, stability = scores(world, args, cache, titles)
        print(f"[{regime}] scores: {json.dumps(stability['negative_seeds'])} {stability['retrain']}", flush=True)
        model0 = surrogate(world, BASELINE_SEED[world.name], cache / world.name)
        popularity_counts = item_popularity(world.seqs, n_items)  # training rows' items
        valid_targets = np.bincount(world.valid.targets.tokens, minlength=n_items + 1)[1:]
        popularity = popularity_metrics(popularity_counts + valid_targets, world.test)
        references: dict[str, dict] = {"popularity": {"test": popularity, "what": "training + validation counts"}}
        warm_state = None
        risk = None
        if regime == "warm":
            warm_state = pretrained(world, args, cache)
            pre = build_model(n_items, SurrogateConfig(), warm_state).eval()
            pre_info = json.loads((cache / f"warm_pretrained_cut{args.warm_cut}.json").read_text())
            references["no_finetune"] = {"test": evaluate(pre, world.test), **pre_info}
            full_path = cache / f"warm_full_{warm_tag(args)}.json"
            if not full_path.exists() and not args.no_train:
                _, res = backend("warm", world, np.arange(len(world.seqs)), 0, args, warm_state)
                full_path.write_text(json.dumps({"test": evaluate(res.model, world.test), **res.summary()}))
            if full_path.exists():
                references["full_finetune"] = json.loads(full_path.read_text())
        else:
            references["full_data"] = {"test": evaluate(model0, world.test), "what": "the baseline surrogate"}
        if regime == "cold":
            risk = (
                negative_set(n_items, 1024, 12345, item_popularity(base.seqs, n_items)),
                base.seqs.take(random_rows(len(base.seqs), args.risk_samples, 12345)),
            )
            references["full_data"]["empirical_risk"] = empirical_risk(model0, risk[1], risk[0])
        for name, ref in references.items():
            print(
                f"[{regime}] {name}: R@20 {ref['test']['recall@20']:.4f} N@20 {ref['test']['ndcg@20']:.4f}", flush=True
            )

        tag = (f"_{warm_tag(args)}" if regime == "warm" else "") + (f"_{args.runs_tag}" if args.runs_tag else "")
        done_path = cache / f"runs_{regime}_n{args.n}{tag}.jsonl"
        for strategy in [] if args.no_train else args.strategies:
            n_seeds = args.main_seeds if strategy in MAIN else args.seeds
            # Planted: the bots were drawn with seed 0 from the same generator calls as the random strategy's
            # seed 0, which would pick exactly the first bots; its seeds start at 1.
            first_seed = 1 if regime == "planted" else 0
            for seed in range(first_seed, first_seed + n_seeds):
                if (strategy, seed) in finished(done_path):
                    continue
                t0 = time.perf_counter()
                name, overrides, flips = VARIANTS.get(strategy, (strategy, {}, ()))
                source = cands_single if strategy in SINGLE_SURROGATE else cands
                if isinstance(flips, str) and flips.startswith("fit"):  # drop the worst-fitted share first
                    picked = fit_filter(source, int(flips[3:]) / 100)
                elif isinstance(flips, str):  # a probe score in the influence slot
                    picked = dataclasses.replace(source, influence=probe_score(flips, source, world))
                else:
                    picked = dataclasses.replace(source, **{f: -getattr(source, f) for f in flips})
                sel = select(picked, SelectConfig(strategy=name, n=args.n, seed=seed, **overrides))
                select_s = time.perf_counter() - t0
                rows = sel.indices
                model, res = backend(regime, world, rows, seed, args, warm_state)
                metrics = evaluate(model, world.test)
                chosen_kind = world.bot_kind[rows]
                run = {
                    "strategy": strategy,
                    "seed": seed,
                    "command": command,
                    "finished_at": dt_mod.datetime.now(dt_mod.UTC).isoformat(timespec="seconds"),
                    "select_s": select_s,
                    "train_s": res.seconds,
                    "epochs": res.epochs,
                    "best_epoch": res.best_epoch,
                    "valid_recall@20": res.best_metric,
                    "test": {k: metrics[k] for k in METRICS},
                    "chosen": {
                        "mean_interactions": float(cands.interactions[rows].mean()),
                        "items_covered": int(len(np.unique(world.seqs.take(rows).tokens))) - 1,
                        "mean_influence_pct": float(
                            stats.percentileofscore(cands.influence, cands.influence[rows]).mean()
                        ),
                        "bot_share": float((chosen_kind != "").mean()),
                        **{f"bot_share_{k}": float((chosen_kind == k).mean()) for k in BOT_KINDS},
                    },
                }
                if risk is not None:
                    run["empirical_risk"] = empirical_risk(model, risk[1], risk[0])
                with done_path.open("a") as f:
                    f.write(json.dumps(run) + "\n")
                print(
                    f"[{regime}] {strategy:>16} seed {seed}: R@20 {metrics['recall@20']:.4f} "
                    f"N@20 {metrics['ndcg@20']:.4f} valid {res.best_metric:.4f} bots {run['chosen']['bot_share']:.3f} "
                    f"({res.epochs} epochs, {time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )

        runs: dict[str, list[dict]] = {}
        for r in finished(done_path).values():
            runs.setdefault(r["strategy"], []).append(r)
        if args.runs_tag and "random" not in runs:  # probes are compared with the main file's random control
            main_runs = cache / f"runs_{regime}_n{args.n}{f'_{warm_tag(args)}' if regime == 'warm' else ''}.jsonl"
            runs["random"] = [r for r in finished(main_runs).values() if r["strategy"] == "random"]
            committed = out_dir / f"coreset_quality_{regime}.json"
            if not runs["random"] and committed.exists():  # a fresh cache: the committed file's random runs
                runs["random"] = json.loads(committed.read_text())["runs"].get("random", [])
            if not runs["random"]:
                del runs["random"]
        result = {
            "regime": regime,
            "note": args.note,
            "command": command,
            "commands_of_runs": sorted({r.get("command", "") for rs in runs.values() for r in rs}),
            "machine": {
                "cpus": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "loadavg_start": load_start,
                "loadavg_end": os.getloadavg(),
                "note": "shared 2-core machine: seconds are noisy; quality numbers are not",
            },
            "data": {
                "world": world.name,
                "train_samples": len(world.seqs),
                "test_users": len(world.test.inputs),
                "items": n_items,
                "n": args.n,
                "bots": int((world.bot_kind != "").sum()),
                "bot_share": float((world.bot_kind != "").mean()),
            },
            "backend": backend_note(regime, args),
            "scores": stability,
            "references": references,
            "summary": summarise(runs, references["popularity"]["test"]),
            "runs": runs,
            "seconds": time.perf_counter() - started,
        }
        name = f"coreset_quality_{regime}" + (f"_{args.runs_tag}" if args.runs_tag else "")
        (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2, default=float))
        plot(result, out_dir / f"{name}.png")
        print_table(result)
    return 0


def warm_tag(args) -> str:
    """The warm protocol's key in cache names: a run is comparable only with runs of the same protocol."""
    return f"cut{args.warm_cut}_e{args.warm_epochs}_lr{args.warm_lr:g}"


def finished(path: Path) -> dict[tuple[str, int], dict]:
    """Finished runs of a regime by (strategy, seed); the last line wins."""
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done[(r["strategy"], r["seed"])] = r
    return done


def backend_note(regime: str, args) -> dict:
    if regime == "warm":
        return {
            "model": "SASRec pretrained on the replay's days before the cut, then fine-tuned on the coreset",
            "warm_cut_day": args.warm_cut,
            "replay_days": 30,
            "finetune_epochs": args.warm_epochs,
            "finetune_lr": args.warm_lr,
            "keeps": "the best fine-tuning epoch on the validation users",
            "valid_users": args.valid_users,
        }
    return {"model": "SASRec from scratch, paper architecture", **COLD, "valid_users": args.valid_users}


def summarise(runs: dict[str, list[dict]], popularity: dict) -> dict:
    summary: dict[str, dict] = {}
    for strategy, rs in runs.items():
        row = {m: interval([r["test"][m] for r in rs]) for m in METRICS}
        if all("empirical_risk" in r for r in rs):
            row["empirical_risk"] = interval([r["empirical_risk"] for r in rs])
        row["valid_recall@20"] = interval([r["valid_recall@20"] for r in rs])
        row["select_s_median"] = float(np.median([r["select_s"] for r in rs]))
        for key in rs[0]["chosen"]:
            row[key] = float(np.mean([r["chosen"][key] for r in rs]))
        if "random" in runs and strategy != "random":
            row["vs_random"] = {
                m: versus([r["test"][m] for r in rs], [r["test"][m] for r in runs["random"]])
                for m in ("recall@20", "ndcg@20")
            }
            row["vs_random"]["bot_share"] = versus(
                [r["chosen"]["bot_share"] for r in rs], [r["chosen"]["bot_share"] for r in runs["random"]]
            )
        row["vs_popularity"] = {
            m: versus_value([r["test"][m] for r in rs], popularity[m]) for m in ("recall@20", "ndcg@20")
        }
        summary[strategy] = row
    return dict(sorted(summary.items(), key=lambda kv: -kv[1]["recall@20"]["mean"]))


def print_table(result: dict) -> None:
    print(f"\n== {result['regime']} ==")
    print(f"{'strategy':>18} {'R@20':>16} {'N@20':>16} {'bots':>6}  R@20 vs random")

    def cell(row: dict, m: str) -> str:
        return f"{row[m]['mean']:.4f}±{row[m]['ci95']:.4f}"

    for strategy, row in result["summary"].items():
        vs = row.get("vs_random", {}).get("recall@20")
        note = "" if vs is None else f"{vs['diff']:+.4f}±{vs['ci95']:.4f} {'resolved' if vs['resolved'] else 'n.s.'}"
        print(
            f"{strategy:>18} {cell(row, 'recall@20'):>16} {cell(row, 'ndcg@20'):>16} {row['bot_share']:>6.3f}  {note}"
        )
    for name, ref in result["references"].items():
        print(f"{name:>18} R@20 {ref['test']['recall@20']:.4f} N@20 {ref['test']['ndcg@20']:.4f}")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result["summary"]
    names = list(summary)
    planted = result["regime"] == "planted"
    fig, axes = plt.subplots(1, 3, figsize=(20, 0.5 * len(names) + 3.5))
    y = np.arange(len(names))
    palette = {"dealrec": "tab:red", "random": "tab:gray", "quantile": "tab:green", "greedy": "tab:blue"}
    tab10 = plt.get_cmap("tab10").colors
    others = iter([tab10[i] for i in (1, 4, 5, 6, 8, 9)] * 5)  # probes: colours the four main rules do not use
    colors = [palette.get(s) or next(others) for s in names]
    ref_style = {
        "popularity": ("purple", ":"),
        "full_data": ("green", "--"),
        "full_finetune": ("green", "--"),
        "no_finetune": ("black", "-."),
    }
    for ax, metric in zip(axes[:2], ("recall@20", "ndcg@20")):
        means = [summary[s][metric]["mean"] for s in names]
        cis = [summary[s][metric]["ci95"] for s in names]
        ax.barh(y, means, xerr=np.nan_to_num(cis), color=colors, alpha=0.8, capsize=3)
        for s_i, s in enumerate(names):
            vals = [r["test"][metric] for r in result["runs"][s]]
            ax.scatter(vals, np.full(len(vals), s_i), s=8, color="black", zorder=3)
        for ref, row in result["references"].items():
            color, ls = ref_style.get(ref, ("black", "-"))
            ax.axvline(row["test"][metric], color=color, ls=ls, label=f"{ref} {row['test'][metric]:.4f}")
        ax.set_yticks(y, [f"{s} ({summary[s][metric]['n']})" for s in names])
        ax.invert_yaxis()
        ax.set_xlabel(f"test {metric} (mean, 95% CI, dots = seeds)")
        ax.legend(loc="lower right", fontsize=8)
    ax = axes[2]
    if planted:
        share = [summary[s]["bot_share"] for s in names]
        ax.barh(y, share, color=colors, alpha=0.8)
        ax.axvline(result["data"]["bot_share"], color="black", ls="--", label="base rate (random)")
        ax.set_yticks(y, names)
        ax.invert_yaxis()
        ax.set_xlabel("share of bots in the coreset")
        ax.legend(fontsize=8)
    else:
        for s, color in zip(names, colors):
            rs = result["runs"][s]
            xs = [r["chosen"]["mean_interactions"] for r in rs]
            ax.scatter(xs, [r["test"]["recall@20"] for r in rs], s=16, color=color, label=s, alpha=0.8)
        ax.set_xlabel("mean interactions of the chosen users")
        ax.set_ylabel("test recall@20")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    d = result["data"]
    what = {
        "cold": "trained from scratch on",
        "warm": f"pretrained before day {result['backend'].get('warm_cut_day')}, fine-tuned on",
        "planted": f"({d['bot_share']:.0%} bots planted) trained from scratch on",
    }[result["regime"]]
    fig.suptitle(
        f"{result['regime']}: SASRec {what} n={d['n']} selected samples of {d['train_samples']:,}; "
        f"test on {d['test_users']:,} users, all {d['items']:,} items ranked"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
