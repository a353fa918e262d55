"""Probe (issue 15): does a small LLaMA pretrained for minutes on the CPU recommend better than random on Games?

Pretraining corpus (never a validation or test target), ``--corpus prompts`` (the default, the first probe):
- (a) the catalogue: ``<s> title </s>`` (the response format: a title, then the end of the sequence);
- (b) BIGRec next-title prompts from an EARLIER time cut of the 30-day Games replay (``dealrec replay``'s
  ``replay_days``): for each user, the training items replayed before day ``--cut-day``; a prompt is mostly the
  whole early sequence (history = all but the last, response = the last), sometimes a random prefix. The loss
  covers the history titles and the response (not the fixed template prefix, identical in every prompt).

``--corpus compact`` spends fewer tokens on the fixed 79-token template: ``--title-share`` catalogue lines as (a),
``--prompt-share`` BIGRec prompts as (b) (so the model learns the response slot after "### Response:"), and the
rest compact user sequences of the same early cut, ``<s>title1; title2; ...; titleN</s>`` with the loss on every
token (each title is a next-title prediction); a sequence longer than ``--pretrain-cutoff`` tokens is a random
window of consecutive titles that fits.

The budget is ``--pretrain-seconds`` (default 600) or ``--pretrain-steps`` (the learning-rate schedule follows
the budget given; with both, whichever ends first stops it; the JSON's ``pretrain.stopped_by`` says which).
The corpus is the library's (``dealrec_tasks/llm/pretrain.py``, moved there from this probe unchanged); the
embedded default model is built from the compact mix, measured by ``bench/llm_quality.py``.

Then, on ``--users`` random test users (history = train + valid, targets = test items, the paper's split), with the
library's ``grounded_evaluation`` (beam search, the response cut at its first title by the library, L2 grounding
over every item title; ``EvalConfig`` defaults, its ``ngram_repeat_limit`` included, recorded per evaluation):
R@K/NDCG@K, the share of distinct generated titles, exact-title shares, repetition of the last history title, EOS
stopping; for the pretrained model (``--beams``), the current default tiny model (TinyLLMConfig defaults), and a
LoRA fine-tune of the pretrained model on ``--ft-samples`` random training samples (the library's ``finetune``)
at each ``--ft-lr``. ``--reuse`` takes the pretrained checkpoint and finished fine-tunes already in ``--out``
(re-evaluation without training).

Everything goes to ``--out`` (default bench/results/tmp/llm_probe/, gitignored): ``probe.json`` (rewritten after
every phase), ``probe.png``, the checkpoints and the item-embedding cache.

    nice -n 19 .venv/bin/python bench/llm_pretrain_probe.py --pretrain-seconds 600
    nice -n 19 .venv/bin/python bench/llm_pretrain_probe.py --corpus compact --vocab 4000 --pretrain-steps 2000
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
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dealrec_tasks.data.dealrec_format import read_release  # noqa: E402
from dealrec_tasks.data.replay import replay_days  # noqa: E402
from dealrec_tasks.llm import tiny  # noqa: E402
from dealrec_tasks.llm.config import EvalConfig, FinetuneConfig, LoRAConfig, TinyLLMConfig  # noqa: E402
from dealrec_tasks.llm.evaluate import ResponseNGramLimit, grounded_evaluation  # noqa: E402
from dealrec_tasks.llm.pretrain import Corpus, optimizer_step, scheduled_lr  # noqa: E402
from dealrec_tasks.llm.prompts import TITLE_SEPARATOR, PromptTemplate, clean_title, encode  # noqa: E402
from dealrec_tasks.metrics import ranking_metrics  # noqa: E402


# ---------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------
def load_games(data: Path, days: int, cut_day: int, seed: int) -> dict:
    """Titles by row (item_idx - 1), the per-user splits, and each user's training items before ``cut_day``."""
    release = read_release(data)
    items, vocab, seqs = release["items"], release["item_vocab"], release["sequences"]
    title_of = dict(zip(items.column("item_id").to_pylist(), items.column("title").to_pylist()))
    titles = [""] * vocab.num_rows
    for row in vocab.to_pylist():
        titles[row["item_idx"] - 1] = title_of.get(row["item_id"]) or "(unknown title)"
    by_day = replay_days(seqs, vocab, days, "2026-01-01", seed)
    before: dict[str, int] = {}
    for dt in sorted(by_day)[:cut_day]:
        for u in by_day[dt].column("user_id").to_pylist():
            before[u] = before.get(u, 0) + 1
    train = seqs.column("train").to_pylist()
    valid = seqs.column("valid").to_pylist()
    test = seqs.column("test").to_pylist()
    users = seqs.column("user_id").to_pylist()
    # Day < cut_day <= days - 2 holds training items only (validation and test are the last two days).
    early = [t[: min(before.get(u, 0), len(t))] for u, t in zip(users, train)]
    return {"titles": titles, "train": train, "valid": valid, "test": test, "early": early}


def test_rows(g: dict, n: int, seed: int) -> list[dict]:
    rows = [
        {"user": u, "history": g["train"][u] + g["valid"][u], "targets": g["test"][u]}
        for u in range(len(g["test"]))
        if g["test"][u]
    ]
    pick = np.sort(np.random.default_rng(seed).choice(len(rows), min(n, len(rows)), replace=False))
    return [rows[i] for i in pick]


def popularity_topk(g: dict, rows: list[dict], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k item rows of the popularity ranking (train + valid counts) per user: [users, k] plain and with each
    user's seen items masked."""
    counts = np.zeros(len(g["titles"]), dtype=np.float64)
    for t, v in zip(g["train"], g["valid"]):
        for i in t + v:
            counts[i - 1] += 1
    order = np.argsort(-counts, kind="stable")
    masked = []
    for r in rows:
        seen = {i - 1 for i in r["history"]}
        masked.append([i for i in order[: k + len(seen)] if i not in seen][:k])
    return np.tile(order[:k], (len(rows), 1)), np.asarray(masked)


def popularity(g: dict, rows: list[dict], ks: tuple[int, ...]) -> dict:
    """Popularity ranking (train + valid counts) on the same users, seen items masked and not masked."""
    targets = [[t - 1 for t in r["targets"]] for r in rows]
    plain, masked = popularity_topk(g, rows, max(ks))
    return {
        "unmasked": ranking_metrics(plain, targets, ks),
        "seen_masked": ranking_metrics(masked, targets, ks),
    }


# ---------------------------------------------------------------------------------------------------------
# Pretraining
# ---------------------------------------------------------------------------------------------------------
def pretrain(model, corpus: Corpus, kind: str, args) -> dict:
    """Train until the budget ends: ``--pretrain-steps`` and/or ``--pretrain-seconds`` (and ``--max-steps``).

    The learning rate warms up linearly, then follows a cosine to 10 % over the budget's fraction done: steps
    when ``--pretrain-steps`` is given, seconds otherwise.
    """
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.95))
    model.train()
    losses, seconds, tokens, loss_tokens, padded = [], [], 0, 0, 0
    by_steps = args.pretrain_steps is not None
    started = time.perf_counter()
    if by_steps:
        bar = tqdm(total=args.pretrain_steps, desc="pretraining (steps)", unit="step", dynamic_ncols=True)
    else:
        bar = tqdm(total=int(args.pretrain_seconds), desc="pretraining (s)", unit="s", dynamic_ncols=True)
    batches = corpus.batches(args.batch)
    step, stopped_by = 0, None
    while stopped_by is None:
        elapsed = time.perf_counter() - started
        if by_steps and step >= args.pretrain_steps:
            stopped_by = "steps"
        elif args.pretrain_seconds is not None and elapsed > args.pretrain_seconds:
            stopped_by = "time"
        elif step >= args.max_steps:
            stopped_by = "max_steps"
        if stopped_by is not None:
            break
        frac = step / args.pretrain_steps if by_steps else elapsed / args.pretrain_seconds
        ids, mask, labels = next(batches)
        losses.append(optimizer_step(model, opt, ids, mask, labels, scheduled_lr(args.lr, step, args.warmup, frac)))
        tokens += int(mask.sum())
        loss_tokens += int((labels[:, 1:] != -100).sum())
        padded += ids.numel()
        seconds.append(time.perf_counter() - started)
        step += 1
        bar.n = step if by_steps else min(int(seconds[-1]), bar.total)
        bar.set_postfix(step=step, loss=f"{np.mean(losses[-50:]):.3f}", tok_s=f"{tokens / seconds[-1]:.0f}")
        bar.refresh()
    bar.close()
    model.eval()
    total = time.perf_counter() - started
    served_tokens = sum(v["tokens"] for v in corpus.served.values())
    return {
        "corpus": kind,
        "budget": "steps" if by_steps else "seconds",
        "budget_steps": args.pretrain_steps,
        "budget_seconds": args.pretrain_seconds,
        "steps": step,
        "seconds": total,
        "seconds_per_step": total / max(step, 1),
        "tokens": tokens,
        "tokens_per_s": tokens / max(total, 1e-9),
        "loss_tokens": loss_tokens,
        "loss_tokens_per_s": loss_tokens / max(total, 1e-9),
        "padding_share": 1 - tokens / max(padded, 1),
        "served": corpus.served,
        "served_token_share": {k: v["tokens"] / max(served_tokens, 1) for k, v in corpus.served.items()},
        "loss_first_50": float(np.mean(losses[:50])),
        "loss_last_50": float(np.mean(losses[-50:])),
        "stopped_by": stopped_by,
        "curve": {"step": list(range(1, step + 1)), "seconds": seconds, "loss": losses},
    }


# ---------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------
@torch.no_grad()
def response_loss(model, tokenizer, template, g: dict, n: int, seed: int, cutoff: int) -> float:
    """Mean loss of the response tokens (title + eos) on ``n`` validation samples (history = whole train seq)."""
    users = [u for u in range(len(g["valid"])) if g["valid"][u]]
    pick = np.random.default_rng(seed).choice(len(users), min(n, len(users)), replace=False)
    total, count = 0.0, 0
    for u in (users[i] for i in pick):
        p = encode(
            tokenizer, template, [g["titles"][i - 1] for i in g["train"][u]], g["titles"][g["valid"][u][0] - 1], cutoff
        )
        ids = torch.tensor([p.input_ids])
        labels = torch.full_like(ids, -100)
        labels[0, -p.n_response :] = ids[0, -p.n_response :]
        total += float(model(input_ids=ids, labels=labels).loss) * p.n_response
        count += p.n_response
    return total / max(count, 1)


@torch.no_grad()
def compact_title_loss(model, tokenizer, g: dict, n: int, seed: int, cutoff: int) -> float:
    """Mean loss of the next title's tokens (no eos) in the compact format ``<s>t1; ...; tN; next`` on the same
    ``n`` validation samples as ``response_loss`` (history = whole train seq, oldest titles dropped to fit)."""
    users = [u for u in range(len(g["valid"])) if g["valid"][u]]
    pick = np.random.default_rng(seed).choice(len(users), min(n, len(users)), replace=False)
    total, count = 0.0, 0
    for u in (users[i] for i in pick):
        hist = [clean_title(g["titles"][i - 1]) for i in g["train"][u]]
        target = clean_title(g["titles"][g["valid"][u][0] - 1])
        while True:
            # The byte-level pre-tokenizer splits ";" from " title", so the context's ids prefix the full ids.
            context = [tokenizer.bos_token_id] + tokenizer(
                TITLE_SEPARATOR.join(hist) + TITLE_SEPARATOR.rstrip(), add_special_tokens=False
            )["input_ids"]
            full = [tokenizer.bos_token_id] + tokenizer(
                TITLE_SEPARATOR.join([*hist, target]), add_special_tokens=False
            )["input_ids"]
            if len(full) <= cutoff or len(hist) == 1:
                break
            hist = hist[1:]
        full = full[:cutoff]
        n_target = len(full) - len(context)
        if n_target <= 0:
            continue
        ids = torch.tensor([full])
        labels = torch.full_like(ids, -100)
        labels[0, -n_target:] = ids[0, -n_target:]
        total += float(model(input_ids=ids, labels=labels).loss) * n_target
        count += n_target
    return total / max(count, 1)


@torch.no_grad()
def stop_check(model, tokenizer, prompts, n: int, beams: int, max_new: int, ngram_limit: int = 0) -> dict:
    """Generation one prompt at a time (no padding), with the evaluation's n-gram limit: does it end with EOS
    before ``max_new`` tokens?"""
    from transformers import LogitsProcessorList

    ended, lengths = 0, []
    for p in prompts[:n]:
        ids = torch.tensor([p.input_ids])
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            num_beams=beams,
            max_new_tokens=max_new,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            logits_processor=LogitsProcessorList(
                [ResponseNGramLimit(ids.shape[1], ngram_limit)] if ngram_limit else []
            ),
        )
        new = out[0, ids.shape[1] :].tolist()
        ended += int(tokenizer.eos_token_id in new)
        lengths.append(new.index(tokenizer.eos_token_id) if tokenizer.eos_token_id in new else len(new))
    return {
        "users": min(n, len(prompts)),
        "num_beams": beams,
        "ended_with_eos": ended / max(min(n, len(prompts)), 1),
        "mean_new_tokens": float(np.mean(lengths)) if lengths else 0.0,
    }


def evaluate(name: str, model, tokenizer, model_dir: Path, g: dict, rows: list[dict], args, beams: int) -> dict:
    template = PromptTemplate("games")
    titles = g["titles"]
    cfg = EvalConfig(
        num_beams=beams,
        max_new_tokens=args.max_new_tokens,
        cutoff_len=args.eval_cutoff,
        ngram_repeat_limit=args.ngram_repeat_limit,
    )
    prompts = [encode(tokenizer, template, [titles[i - 1] for i in r["history"]], None, cfg.cutoff_len) for r in rows]
    targets = [[t - 1 for t in r["targets"]] for r in rows]
    t0 = time.perf_counter()
    res = grounded_evaluation(model, tokenizer, prompts, targets, titles, cfg, model_dir, args.out / "cache")
    seconds = time.perf_counter() - t0
    gen = res["generated"]
    catalogue = {clean_title(t) for t in titles}
    last = [clean_title(titles[r["history"][-1] - 1]) for r in rows]
    in_hist = [g_ in {clean_title(titles[i - 1]) for i in r["history"]} for g_, r in zip(gen, rows)]
    counts: dict[str, int] = {}
    for x in gen:
        counts[x] = counts.get(x, 0) + 1
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:10]
    rng = np.random.default_rng(1)
    shown = rng.choice(len(rows), min(10, len(rows)), replace=False)
    out = {
        "name": name,
        "num_beams": beams,
        "users": len(rows),
        "seconds": seconds,
        "eval_config": cfg.to_dict(),
        "metrics": {k: float(v) for k, v in res["metrics"].items()},
        "distinct_generated_share": len(counts) / max(len(gen), 1),
        "distinct_generated": len(counts),
        "generated_is_catalogue_title": float(np.mean([x in catalogue for x in gen])),
        "generated_equals_last_history_title": float(np.mean([x == y for x, y in zip(gen, last)])),
        "generated_in_history": float(np.mean(in_hist)),
        "generated_in_targets": float(
            np.mean([x in {clean_title(titles[t - 1]) for t in r["targets"]} for x, r in zip(gen, rows)])
        ),
        "empty_generations": float(np.mean([x == "" for x in gen])),
        "most_common": top,
        "examples": [
            {
                "history_tail": [titles[i - 1] for i in rows[k]["history"][-3:]],
                "generated": gen[k],
                "targets": [titles[t - 1] for t in rows[k]["targets"]][:3],
            }
            for k in shown
        ],
        "stop_check": stop_check(
            model, tokenizer, prompts, args.stop_users, beams, args.max_new_tokens, cfg.ngram_repeat_limit
        ),
    }
    m = out["metrics"]
    print(
        f"[{name} beams={beams}] R@20 {m['recall@20']:.4f} NDCG@20 {m['ndcg@20']:.4f} "
        f"distinct {out['distinct_generated_share']:.3f} catalogue {out['generated_is_catalogue_title']:.3f} "
        f"exact-target {m['exact_title_match']:.3f} last-title {out['generated_equals_last_history_title']:.3f} "
        f"eos {out['stop_check']['ended_with_eos']:.2f} ({seconds:.0f}s)",
        flush=True,
    )
    return out


# ---------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------
def write(out: Path, result: dict) -> None:
    slim = json.loads(json.dumps(result, default=float))
    (out / "probe.json").write_text(json.dumps(slim, indent=2))
    plot(out, slim)


def plot(out: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    pre = result.get("pretrain")
    if pre:
        c = pre["curve"]
        loss = np.asarray(c["loss"])
        w = min(50, len(loss))
        smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
        axes[0].plot(c["seconds"], loss, alpha=0.25, lw=0.5, label="per step")
        axes[0].plot(c["seconds"][w - 1 :], smooth, label=f"mean of {w}")
        axes[0].set_xlabel("seconds")
        axes[0].set_ylabel("loss (every token but the template prefix)")
        axes[0].set_title(
            f"pretraining ({pre.get('corpus', 'prompts')}): {pre['steps']} steps, {pre['tokens_per_s']:.0f} tok/s"
        )
        axes[0].legend()
    evals = result.get("evaluations", [])
    names = [f"{e['name']}\nbeams={e['num_beams']}" for e in evals]
    x = np.arange(len(evals))
    for ax, metric in ((axes[1], "recall@20"), (axes[2], "ndcg@20")):
        ax.bar(x, [e["metrics"][metric] for e in evals], color="tab:blue")
        pop = result.get("popularity", {})
        if pop:
            ax.axhline(pop["seen_masked"][metric], color="tab:green", ls="--", label="popularity (seen masked)")
            ax.axhline(pop["unmasked"][metric], color="tab:olive", ls=":", label="popularity (unmasked)")
        if metric == "recall@20":
            ax.axhline(result["random_recall@20"], color="tab:red", ls="--", label="random")
        ax.set_xticks(x, names, fontsize=7)
        ax.set_title(f"{metric} on {result['test_users']} Games test users")
        ax.legend(fontsize=7)
    for e, xi in zip(evals, x):
        axes[1].text(
            xi,
            e["metrics"]["recall@20"],
            f"d={e['distinct_generated_share']:.2f}",
            ha="center",
            va="bottom",
            fontsize=7,
        )
    fig.tight_layout()
    fig.savefig(out / "probe.png", dpi=110)
    plt.close(fig)


def loss_and_evaluations(name, model_dir, stats, template, g, rows, args, result):
    """Load a built model, add its held-out response loss to ``stats``, evaluate it at every beam width."""
    tokenizer, model = tiny.load(model_dir)
    stats["valid_response_loss"] = response_loss(model, tokenizer, template, g, 256, args.seed, args.eval_cutoff)
    stats["valid_compact_title_loss"] = compact_title_loss(model, tokenizer, g, 256, args.seed, args.eval_cutoff)
    print(
        f"[{name}] held-out loss: response {stats['valid_response_loss']:.3f}, "
        f"compact next title {stats['valid_compact_title_loss']:.3f}",
        flush=True,
    )
    write(args.out, result)
    for beams in args.beams:
        result["evaluations"].append(evaluate(name, model, tokenizer, model_dir, g, rows, args, beams))
        write(args.out, result)
    return model, tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "games")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tmp" / "llm_probe")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--users", type=int, default=1000, help="random test users evaluated")
    ap.add_argument("--days", type=int, default=30, help="replay days")
    ap.add_argument("--cut-day", type=int, default=25, help="pretrain on replayed training items of days < this")
    # model
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--intermediate", type=int, default=512)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=8000)
    # pretraining
    ap.add_argument(
        "--corpus",
        choices=["prompts", "compact"],
        default="prompts",
        help="prompts: catalogue lines + BIGRec prompts (the first probe); compact: mostly compact early sequences "
        "'title1; ...; titleN</s>', plus --prompt-share BIGRec prompts and --title-share catalogue lines",
    )
    ap.add_argument(
        "--prompt-share", type=float, default=0.2, help="share of BIGRec prompts among the examples (compact only)"
    )
    ap.add_argument(
        "--pretrain-seconds",
        type=float,
        default=None,
        help="time budget (default 600 when --pretrain-steps is not given; with both, whichever ends first)",
    )
    ap.add_argument("--pretrain-steps", type=int, default=None, help="step budget (the lr schedule follows steps)")
    ap.add_argument("--max-steps", type=int, default=1_000_000, help="hard cap on steps (no effect on the schedule)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=100, help="linear lr warm-up steps")
    ap.add_argument("--title-share", type=float, default=0.4, help="share of catalogue title lines")
    ap.add_argument("--pretrain-cutoff", type=int, default=384)
    # evaluation
    ap.add_argument("--beams", type=int, nargs="+", default=[4, 1])
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--eval-cutoff", type=int, default=512)
    ap.add_argument("--stop-users", type=int, default=40, help="users of the per-prompt EOS check")
    ap.add_argument(
        "--ngram-repeat-limit",
        type=int,
        default=EvalConfig().ngram_repeat_limit,
        help="EvalConfig.ngram_repeat_limit (default: the library's): the same 3 response tokens at most this often",
    )
    ap.add_argument("--skip", nargs="*", default=[], choices=["pretrained", "finetune", "default"])
    ap.add_argument(
        "--reuse", action="store_true", help="reuse the pretrained checkpoint and finished fine-tunes in --out"
    )
    # fine-tuning
    ap.add_argument("--ft-samples", type=int, default=1024)
    ap.add_argument("--ft-epochs", type=int, default=3)
    ap.add_argument("--ft-lr", type=float, nargs="+", default=[1e-4], help="one LoRA fine-tune per learning rate")
    args = ap.parse_args()
    if args.pretrain_seconds is None and args.pretrain_steps is None:
        args.pretrain_seconds = 600.0
    if args.corpus == "compact" and not 0 <= args.title_share + args.prompt_share <= 1:
        ap.error("--title-share + --prompt-share must be within [0, 1]")

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    wall = time.perf_counter()
    g = load_games(args.data, args.days, args.cut_day, args.seed)
    rows = test_rows(g, args.users, args.seed)
    ks = EvalConfig().ks
    result: dict = {
        "argv": sys.argv[1:],
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "host": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
        },
        "test_users": len(rows),
        "items": len(g["titles"]),
        "random_recall@20": 20 / len(g["titles"]),
        "popularity": popularity(g, rows, ks),
        "early_cut": {
            "cut_day": args.cut_day,
            "users_with_2plus_items": sum(len(s) >= 2 for s in g["early"]),
            "early_items": sum(len(s) for s in g["early"]),
            "all_train_items": sum(len(s) for s in g["train"]),
        },
        "eval_config_defaults": EvalConfig().to_dict(),
        "evaluations": [],
    }
    template = PromptTemplate("games")
    model_dir = args.out / "pretrained"

    if "pretrained" not in args.skip:
        t_build = time.perf_counter()
        if args.reuse and (model_dir / "config.json").exists():
            result["pretrain"] = json.loads((model_dir / "probe_pretrain.json").read_text())
        else:
            cfg = TinyLLMConfig(
                vocab_size=args.vocab,
                hidden_size=args.hidden,
                intermediate_size=args.intermediate,
                num_layers=args.layers,
                num_heads=args.heads,
                seed=args.seed,
            )
            t0 = time.perf_counter()
            tokenizer = tiny.train_tokenizer(g["titles"], template, args.vocab)
            tok_s = time.perf_counter() - t0
            model = tiny.build_model(cfg, tokenizer)
            # The library's corpus (llm/pretrain.py); "prompts": no compact sequences, the rest are prompts.
            prompt_share = 1 - args.title_share if args.corpus == "prompts" else args.prompt_share
            corpus = Corpus(
                g["titles"],
                g["early"],
                tokenizer,
                template,
                args.pretrain_cutoff,
                args.title_share,
                prompt_share,
                args.seed,
            )
            stats = pretrain(model, corpus, args.corpus, args)
            stats |= {
                "tokenizer_seconds": tok_s,
                "vocab": len(tokenizer),
                "parameters": sum(p.numel() for p in model.parameters()),
                "prefix_tokens": corpus.prefix_len,
                "early_prompt_users": len(corpus.sequences),
                "early_prompt_targets": sum(len(x) - 1 for x in corpus.sequences),
                "config": cfg.to_dict(),
            }
            model.save_pretrained(model_dir)
            tokenizer.save_pretrained(model_dir)
            (model_dir / "probe_pretrain.json").write_text(json.dumps(stats))
            stats["build_seconds"] = time.perf_counter() - t_build
            result["pretrain"] = stats
            print(
                f"pretrained ({stats['corpus']}): {stats['steps']} steps in {stats['seconds']:.0f}s "
                f"(stopped by {stats['stopped_by']}), {stats['tokens_per_s']:.0f} tok/s "
                f"({stats['loss_tokens_per_s']:.0f} with a loss), "
                f"loss {stats['loss_first_50']:.3f} -> {stats['loss_last_50']:.3f}",
                flush=True,
            )
        model, tokenizer = loss_and_evaluations(
            "pretrained", model_dir, result["pretrain"], template, g, rows, args, result
        )

    if "finetune" not in args.skip and (model_dir / "config.json").exists():
        from peft import PeftModel

        from dealrec_tasks.llm import finetune as ft

        tokenizer, _ = tiny.load(model_dir)
        rng = np.random.default_rng(args.seed)
        users = [u for u in range(len(g["train"])) if len(g["train"][u]) >= 2]
        pick = rng.choice(len(users), min(args.ft_samples, len(users)), replace=False)
        titles = g["titles"]
        cutoff = FinetuneConfig().cutoff_len
        train_p = [
            encode(
                tokenizer,
                template,
                [titles[i - 1] for i in g["train"][users[k]][:-1]],
                titles[g["train"][users[k]][-1] - 1],
                cutoff,
            )
            for k in pick
        ]
        vusers = [u for u in range(len(g["valid"])) if g["valid"][u]]
        vpick = rng.choice(len(vusers), 256, replace=False)
        valid_p = [
            encode(
                tokenizer,
                template,
                [titles[i - 1] for i in g["train"][vusers[k]]],
                titles[g["valid"][vusers[k]][0] - 1],
                cutoff,
            )
            for k in vpick
        ]
        result["finetunes"] = []
        for ft_lr in args.ft_lr:
            fcfg = FinetuneConfig(epochs=args.ft_epochs, lr=ft_lr, seed=args.seed)
            _, model = tiny.load(model_dir)
            work = args.out / f"finetune-lr{ft_lr:g}"
            if work.exists() and not args.reuse:  # with --reuse, a finished fine-tune of this config is reused
                import shutil

                shutil.rmtree(work)
            t0 = time.perf_counter()
            state = ft.finetune(model, tokenizer.pad_token_id, train_p, valid_p, fcfg, LoRAConfig(), work)
            result["finetunes"].append(
                {
                    "lr": ft_lr,
                    "seconds": time.perf_counter() - t0,
                    "history": state["history"],
                    "best_epoch": state["best_epoch"],
                    "reused": state.get("resumed_from_epoch") is not None,
                    "config": fcfg.to_dict(),
                }
            )
            print(f"[LoRA lr={ft_lr:g}] history {state['history']}", flush=True)
            _, base = tiny.load(model_dir)
            peft_model = PeftModel.from_pretrained(base, state["adapter_dir"])
            write(args.out, result)
            result["evaluations"].append(
                evaluate(
                    f"pretrained+LoRA lr={ft_lr:g}", peft_model, tokenizer, model_dir, g, rows, args, args.beams[0]
                )
            )
            write(args.out, result)

    if "default" not in args.skip:
        ddir = args.out / "default"
        t0 = time.perf_counter()
        # "default" was the 2-layer model before issue 15 (the runs committed so far); now the "small" preset on
        # titles only, a reference without interactions (the new default is measured by bench/llm_quality.py).
        small = TinyLLMConfig.sized("small")
        info = tiny.build_tiny_llm(ddir, g["titles"], small)
        torch.set_num_threads(args.threads)  # build_tiny_llm sets it to the CPU count
        result["default_build"] = {k: v for k, v in info.items() if k != "config"} | {
            "seconds": time.perf_counter() - t0,
            "config": small.to_dict(),
        }
        loss_and_evaluations("default", ddir, result["default_build"], template, g, rows, args, result)

    result["wall_seconds"] = time.perf_counter() - wall
    write(args.out, result)
    print(f"wrote {args.out / 'probe.json'} and probe.png ({result['wall_seconds']:.0f}s)")


if __name__ == "__main__":
    main()
