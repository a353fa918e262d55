"""The README's embedded-LLM numbers, generated from the committed results (issue 28).

Reads the shipped model's manifest, ``bench/results/finetune_preset.json`` and ``bench/results/llm_quality.json``
and rewrites the text between ``<!-- llm-quality:start -->`` and ``<!-- llm-quality:end -->`` in README.md.

    .venv/bin/python bench/report_llm.py            # rewrite the block
    .venv/bin/python bench/report_llm.py --check    # exit 1 when README.md is stale (run in the tests)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from generated_text import update_between_markers  # noqa: E402

from dealrec_tasks.llm import shipped  # noqa: E402

START, END = "<!-- llm-quality:start -->", "<!-- llm-quality:end -->"
RESULTS = ROOT / "bench" / "results"
NAMES = {
    "base": "shipped model, not fine-tuned",
    "random": "+ LoRA (preset) on 1,024 random samples",
    "dealrec": "+ LoRA (preset) on the DEALRec coreset of 1,024",
    "popularity": "popularity ranking (seen items masked)",
    "sasrec": "SASRec trained on all training samples",
}


def _mean(entry: dict | None) -> str:
    if not entry:
        return ""
    half = entry.get("ci95_half")
    return f"{entry['mean']:.4f}" + (f" ± {half:.4f}" if half is not None else "")


def _diff(c: dict) -> str:
    return f"{c['mean']:+.4f} [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]"


def model_block(manifest: dict) -> str:
    size = sum(f["bytes"] for f in manifest["files"].values()) / 2**20
    cfg = manifest["config"]
    run = manifest["pretraining"]
    return (
        f"The shipped model `{manifest['version']}` (`dealrec_tasks/llm/embedded/{manifest['version']}/`, "
        f"{size:.1f} MB): {manifest['parameters']:,} parameters ({cfg['num_layers']} layers, hidden "
        f"{cfg['hidden_size']}, BPE vocabulary {cfg['vocab_size']}), {manifest['steps']:,} pretraining steps of "
        f"{cfg['pretrain_batch']} examples ({run['tokens']:,} tokens, {run['seconds']:,.0f} s on this machine's "
        f"2 cores), loss {run['loss_first_50']:.2f} -> {manifest['final_loss']:.3f}; corpus: "
        f"{manifest['corpus']['users']:,} users' {manifest['corpus']['interactions']:,} interactions of the Games "
        f"replay up to {manifest['corpus']['last_day']} ({manifest['data_cut']['corpus_days']}; no validation or "
        f"test target). Rebuild: `{manifest['command']}`.\n"
    )


def preset_block(preset_result: dict) -> str:
    chosen = preset_result["preset"]["chosen_on"]
    lines = [
        f"Fine-tuning preset, chosen on {chosen['users']:,} Games validation users (never a test user; LoRA on "
        f"{chosen['n']:,} random samples, 2 epochs; the mean loss of the target title's tokens given the history, "
        "nats per token, lower is better; `bench/results/finetune_preset.json`):",
        "",
        "| candidate | validation answer loss |",
        "|---|---|",
    ]
    for name, m in chosen["table"].items():
        mark = " **(chosen)**" if name == chosen["candidate"] else ""
        lines.append(f"| {name}{mark} | {m[chosen['metric']]:.4f} |")
    return "\n".join(lines) + "\n"


def quality_block(result: dict) -> str:
    arms = result["summary"]["arms"]
    seeds = ", ".join(str(x) for x in sorted({r["seed"] for r in result["runs"] if r["arm"] != "base"})) or "none"
    lines = [
        f"Measured on {result['test_users']:,} random Games test users (the same users for every row), all "
        f"{result['items']:,} items ranked, `EvalConfig` defaults (beam 4); fine-tuning seeds {seeds}; the "
        f"popularity-aware weight gamma chosen per model on {result['args']['gamma_users']} validation users "
        f"(`bench/results/llm_quality.{{json,png}}`, `{result['command']}`):",
        "",
        "| model | seeds | R@20, L2 | NDCG@20, L2 | R@20, popularity-aware (gamma) | NDCG@20, popularity-aware |",
        "|---|---|---|---|---|---|",
    ]
    for arm in ("base", "random", "dealrec"):
        if arm not in arms:
            continue
        a = arms[arm]
        gammas = ", ".join(f"{g:g}" for g in a["gamma"] if g is not None)
        pop = a.get("popaware", {})
        lines.append(
            f"| {NAMES[arm]} | {len(a['seeds'])} | {_mean(a['l2'].get('recall@20'))} | "
            f"{_mean(a['l2'].get('ndcg@20'))} | {_mean(pop.get('recall@20'))} ({gammas}) | "
            f"{_mean(pop.get('ndcg@20'))} |"
        )
    for ref in ("popularity", "sasrec"):
        if ref in arms:
            r = arms[ref]["reference"]
            lines.append(f"| {NAMES[ref]} | | {r['recall@20']:.4f} | {r['ndcg@20']:.4f} | | |")
    lines += [
        "",
        "Paired differences per user (each user's value averaged over seeds; paired t, 95%; resolved when the "
        "interval excludes 0):",
        "",
        "| comparison | grounding | R@20 difference [95%] | NDCG@20 difference [95%] | verdict (R@20) |",
        "|---|---|---|---|---|",
    ]
    comps = result["summary"]["comparisons"]
    keys = sorted({(c["a"], c["b"], c["grounding"]) for c in comps}, key=lambda k: [*map(str, k)])
    order = {"base": 0, "random": 1, "dealrec": 2, "popularity": 3, "sasrec": 4}
    keys.sort(key=lambda k: (order[k[1]], order[k[0]], k[2]))
    for a, b, g in keys:
        by_metric = {c["metric"]: c for c in comps if (c["a"], c["b"], c["grounding"]) == (a, b, g)}
        r20, n20 = by_metric.get("recall@20"), by_metric.get("ndcg@20")
        verdict = {"a better": f"{a} better", "b better": f"{b} better"}.get(r20["verdict"], "not resolved")
        lines.append(f"| {a} - {b} | {g} | {_diff(r20)} | {_diff(n20) if n20 else ''} | {verdict} |")
    tuned = any(r["arm"] != "base" for r in result["runs"])
    lines += [
        "",
        verdicts(comps)
        if tuned
        else "**Fine-tuned against base and popularity: not measured** (no fine-tuned arm in this run).",
    ]
    cost = "; ".join(
        f"{r['arm']} seed {r['seed']}: {r['seconds']:,.0f} s"
        + (f" + {r['finetune_seconds']:,.0f} s fine-tuning" if "finetune_seconds" in r else "")
        for r in result["runs"]
    )
    lines += [
        "",
        "Cost on this machine (2 cores, shared with other jobs during the run; generation for "
        f"{result['test_users']:,} test + {result['args']['gamma_users']} validation users, both groundings): {cost}.",
    ]
    curve = result.get("curve")
    if curve:
        points = "; ".join(
            f"{p['steps']:,} steps: {p['valid_answer_loss']:.3f}"
            + (f" (R@20 {p['recall@20']:.4f})" if "recall@20" in p else "")
            for p in curve
        )
        users = {p.get("valid_users") for p in curve}
        on = f"{users.pop():,} validation users" if len(users) == 1 and None not in users else "validation users"
        lines += [
            "",
            f"Learning curve of the pretraining (each snapshot's validation answer loss on {on}, nats per token): "
            f"{points}.",
        ]
    return "\n".join(lines) + "\n"


def verdicts(comps: list[dict]) -> str:
    """The issue's two targets, read off the comparisons (R@20): fine-tuned beats its base; the stretch, a
    fine-tuned model beats popularity. Resolved means the 95% interval lies above 0."""

    def met(b: str) -> list[str]:
        return [
            f"{c['a']} ({c['grounding']}, {_diff(c)})"
            for c in comps
            if c["b"] == b and c["a"] in ("random", "dealrec") and c["metric"] == "recall@20" and c["ci95"][0] > 0
        ]

    base, pop = met("base"), met("popularity")
    return (
        f"**Fine-tuned beats its base model (R@20, resolved): {'met' if base else 'not met'}**"
        + (f" by {'; '.join(base)}" if base else "")
        + f". **Stretch, fine-tuned beats popularity (R@20, resolved): {'met' if pop else 'not met'}**"
        + (f" by {'; '.join(pop)}" if pop else "")
        + "."
    )


def block() -> str:
    manifest = shipped.read_manifest(shipped.SHIPPED_DIR)
    parts = [model_block(manifest)]
    preset = RESULTS / "finetune_preset.json"
    if preset.exists():
        parts.append(preset_block(json.loads(preset.read_text())))
    quality = RESULTS / "llm_quality.json"
    if quality.exists():
        parts.append(quality_block(json.loads(quality.read_text())))
    return f"{START}\n" + "\n".join(parts) + f"{END}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when README.md differs")
    args = ap.parse_args()
    return update_between_markers(ROOT / "README.md", [(START, END, block())], args.check, "bench/report_llm.py")


if __name__ == "__main__":
    sys.exit(main())
