"""Write the README's coreset-quality tables from the committed results JSONs (nothing typed by hand).

Run: ``.venv/bin/python bench/report_quality.py`` after ``bench/coreset_quality.py``; it replaces the text between
``<!-- quality:start -->`` and ``<!-- quality:end -->`` in README.md (``--check`` fails when it is stale, which
the test suite uses to keep the README and the JSONs in step).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from generated_text import update_between_markers
from quality_stats import versus

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
START, END = "<!-- quality:start -->", "<!-- quality:end -->"
REGIMES = {
    "cold": "**Cold**: a SASRec trained from scratch on the coreset only",
    "warm": "**Warm daily**: a SASRec pretrained on the replay's days before the cut, fine-tuned on the day's coreset",
    "planted": "**Planted noise**: bots replace a share of the training users; test on the clean users",
}
REFERENCE_NAMES = {
    "popularity": "popularity ranking (training + validation counts)",
    "full_data": "SASRec on all training samples",
    "no_finetune": "pretrained backend, no fine-tuning",
    "full_finetune": "fine-tuned on all of the day's samples (full cost)",
}


def _pm(row: dict) -> str:
    return f"{row['mean']:.4f} ± {row['ci95']:.4f}" if row["n"] > 1 else f"{row['mean']:.4f}"


def _vs(v: dict | None) -> str:
    if v is None:
        return ""
    if v["ci95"] != v["ci95"]:  # nan: too few seeds
        return f"{v['diff']:+.4f}, not resolved (too few seeds)"
    verdict = "resolved" if v["resolved"] else "not resolved"
    return f"{v['diff']:+.4f} ± {v['ci95']:.4f}, {verdict}"


def regime_section(name: str, result: dict) -> str:
    d = result["data"]
    lines = [
        f"{REGIMES[name]} (`bench/results/coreset_quality_{name}.{{json,png}}`; {d['train_samples']:,} candidates, "
        f"n = {d['n']}, {d['test_users']:,} test users, all {d['items']:,} items ranked"
        + (f", {d['bots']:,} bots = {d['bot_share']:.1%} of the candidates" if d.get("bots") else "")
        + "). Test R@20 and N@20: mean ± 95% interval over seeds; differences: Welch 95% interval.",
        "",
    ]
    planted = name == "planted"
    head = "| strategy | seeds | R@20 | N@20 | R@20 vs random | R@20 vs popularity |" + (
        " bots in coreset |" if planted else ""
    )
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for strategy, row in result["summary"].items():
        cells = [
            f"**{strategy}**" if strategy in ("quantile", "dealrec", "random") else strategy,
            str(row["recall@20"]["n"]),
            _pm(row["recall@20"]),
            _pm(row["ndcg@20"]),
            _vs(row.get("vs_random", {}).get("recall@20")),
            _vs(row["vs_popularity"]["recall@20"]),
        ]
        if planted:
            share = row.get("vs_random", {}).get("bot_share")
            if share:
                verdict = "resolved" if share["resolved"] else "not resolved"
                note = f" ({100 * share['diff']:+.1f} ± {100 * share['ci95']:.1f} points vs random, {verdict})"
            else:
                note = " (base rate)"
            cells.append(f"{row['bot_share']:.1%}{note}")
        lines.append("| " + " | ".join(cells) + " |")
    refs = result["references"].items()
    for ref, row in refs:
        cells = [REFERENCE_NAMES.get(ref, ref), "", f"{row['test']['recall@20']:.4f}", f"{row['test']['ndcg@20']:.4f}"]
        lines.append("| " + " | ".join(cells + [""] * (head.count("|") - 1 - len(cells))) + " |")
    if planted:
        kinds = ("random_items", "one_item", "shuffled")
        share = {k: f"{1 / len(kinds) * result['data']['bot_share']:.1%}" for k in kinds}
        lines += ["", f"Bots by kind in the coreset (each kind is {share[kinds[0]]} of the candidates):", ""]
        for strategy, row in result["summary"].items():
            by_kind = ", ".join(f"{k} {row[f'bot_share_{k}']:.1%}" for k in kinds)
            lines.append(f"- {strategy}: {by_kind}")
    return "\n".join(lines)


def stability_section(result: dict) -> str:
    """The influence scores' agreement and cost, from the ``scores`` block of the cold JSON."""
    s = result["scores"]
    neg = list(s["negative_seeds"]["single"].values())
    best = list(s["retrain"]["single_best_epoch"].values())
    ckpt = list(s["retrain"]["single_checkpoints"].values())
    secs = s["seconds"]
    m, c = s["members"], s["checkpoints"]
    bests = [str(v["best_epoch"]) for v in s["surrogates"].values()]
    text = (
        f"**Influence stability** (`scores` in `coreset_quality_cold.json`, surrogate seeds {s['seeds'][0]}-"
        f"{s['seeds'][-1]}): between negative seeds, one surrogate agrees with itself at Spearman "
        f"{min(neg):.3f}-{max(neg):.3f} over {len(neg)} surrogates"
        + (
            f", the ensemble at {s['negative_seeds']['ensemble_best_epochs']:.3f}"
            if "ensemble_best_epochs" in s["negative_seeds"]
            else ""
        )
        + f" (target 0.95: {'met' if min(neg) >= 0.95 else 'not met'}). Between retrains, two surrogates agree "
        f"at {min(best):.2f}-{max(best):.2f} at their best epochs and {min(ckpt):.2f}-{max(ckpt):.2f} averaged over "
        f"their last {c} checkpoints"
    )
    if "ensemble" in s["retrain"]:
        by = s["retrain"]["ensemble_by_checkpoints"]
        text += (
            f"; two disjoint ensembles of {m} surrogates x {c} checkpoints agree at {s['retrain']['ensemble']:.2f} "
            f"({by['1']:.2f} with the best epochs only). Target 0.9: "
            f"**{'met' if s['retrain']['ensemble'] >= 0.9 else 'not met'}**. The surrogates' best epochs were "
            f"{', '.join(bests)}: where early stopping lands (before or after the surrogate's jump in validation "
            "recall) moves the ranking more than the seed does"
        )
    text += (
        f". Cost on this machine: one surrogate and one influence pass {secs['single_s']:.0f} s, the ensemble "
        f"{secs['ensemble_s']:.0f} s (a pass {secs['influence_pass_s_median']:.0f} s); effort of all samples on the "
        f"tiny LLM {secs['effort_s'] / 60:.0f} min. Influence skew {s['influence_skew']:.2f} "
        f"({s['influence_negative_share']:.0%} of the samples negative); Spearman(influence, effort) "
        f"{s['spearman_influence_effort']:.3f}; Spearman(effort, interactions) "
        f"{s['spearman_effort_interactions']:.2f} (the tiny LLM's effort mostly tracks history length)."
    )
    ds = s["dealrec_strata"]
    text += (
        f" Why `dealrec` loses: its lowest {ds['low_strata']} of {ds['k']} equal-width strata hold "
        f"{ds['low_candidates_share']:.0%} of the candidates left after the prune and get "
        f"{ds['low_budget_share']:.0%} of the budget."
    )
    return text


def target_section(paths: list[Path]) -> str:
    """Influence toward the validation rows (``--influence-target valid``): its stability, and each strategy's
    quality against random and against the same strategy on the training-risk influence of the main files."""
    lines = []
    cold = next((p for p in paths if p.stem.startswith("coreset_quality_cold_")), None)
    if cold is not None:
        s = json.loads(cold.read_text())["scores"]
        neg = list(s["negative_seeds"]["single"].values())
        best = list(s["retrain"]["single_best_epoch"].values())
        ens = s["retrain"].get("ensemble")
        secs = s["seconds"]
        bests = sorted(int(v["best_epoch"]) for v in s["surrogates"].values())
        lines.append(
            f'**Influence toward the validation rows** (`InfluenceConfig.target="valid"`; `{cold.name}`, '
            f"surrogate seeds {s['seeds'][0]}-{s['seeds'][-1]}): v is the mean gradient of the validation samples "
            "(each user's training sequence one item further) instead of the training risk, whose mean gradient "
            "is nearly 0 at a trained surrogate and points wherever early stopping left it. Between negative seeds "
            f"one surrogate agrees with itself at {min(neg):.4f}-{max(neg):.4f}"
            + (
                f", the ensemble at {s['negative_seeds']['ensemble_best_epochs']:.4f}"
                if "ensemble_best_epochs" in s["negative_seeds"]
                else ""
            )
            + f" (target 0.95: {'met' if min(neg) >= 0.95 else 'not met'}); between retrains two surrogates agree "
            f"at {min(best):.2f}-{max(best):.2f} (mean {sum(best) / len(best):.2f}) at their best epochs (epochs "
            f"{bests[0]}-{bests[-1]})"
            + (
                f", and two disjoint ensembles of {s['members']} surrogates x {s['checkpoints']} checkpoint agree at "
                f"**{ens:.3f}** (target 0.9: **{'met' if ens >= 0.9 else 'not met'}**)"
                if ens is not None
                else ""
            )
            + f". Cost: the ensemble {secs['ensemble_s']:.0f} s against {secs['single_s']:.0f} s for one "
            f"surrogate and one pass (an influence pass {secs['influence_pass_s_median']:.0f} s, the validation "
            "gradient included). This is the pipeline's default influence since then (4 members x their best "
            "epoch); the regime tables above were measured with the training-risk ensemble (3 x 6). Below, the "
            "strategies that use influence, rerun on the validation-target ensemble (random: the main file's runs, "
            "or rerun where the backend's starting point differs):"
        )
        lines.append("")
    lines += [
        "| regime | strategy | seeds | R@20 | vs random | vs the same strategy on training-risk influence | bots |",
        "|---|---|---|---|---|---|---|",
    ]
    for path in paths:
        result = json.loads(path.read_text())
        main = RESULTS / f"coreset_quality_{result['regime']}.json"
        main_result = json.loads(main.read_text()) if main.exists() else {"runs": {}, "references": {}}
        main_runs = main_result["runs"]
        start = result["references"].get("no_finetune", {}).get("test", {}).get("recall@20")
        main_start = main_result["references"].get("no_finetune", {}).get("test", {}).get("recall@20")
        comparable = start == main_start  # warm: only on the same pretrained backend
        for strategy, row in result["summary"].items():
            if strategy == "random":
                continue
            ours = [r["test"]["recall@20"] for r in result["runs"][strategy]]
            theirs = [r["test"]["recall@20"] for r in main_runs.get(strategy, [])]
            vs_train = _vs(versus(ours, theirs)) if len(ours) > 1 and len(theirs) > 1 else ""
            if not comparable:
                vs_train = f"not comparable (pretrained backend at R@20 {start:.4f} here, {main_start:.4f} there)"
            bots = ""
            if result["regime"] == "planted":
                v = row["vs_random"]["bot_share"]
                bots = f"{row['bot_share']:.1%} ({100 * v['diff']:+.1f} ± {100 * v['ci95']:.1f} vs random)"
            cells = [
                result["regime"],
                strategy,
                str(row["recall@20"]["n"]),
                _pm(row["recall@20"]),
                _vs(row.get("vs_random", {}).get("recall@20")),
                vs_train,
                bots,
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _wins(name: str, result: dict) -> list[str]:
    """Strategies better than random with a resolved interval: R@20 (cold, warm) or fewer bots (planted)."""
    key = "bot_share" if name == "planted" else "recall@20"
    sign = -1 if name == "planted" else 1
    out = []
    for strategy, row in result["summary"].items():
        v = row.get("vs_random", {}).get(key)
        if v is not None and v["resolved"] and sign * v["diff"] > 0:
            out.append(strategy)
    return out


def verdict(results: dict[str, dict]) -> str:
    """Which strategies beat random, per regime, and what that means for the daily DAG's default."""
    what = {"cold": "a higher R@20", "warm": "a higher R@20", "planted": "fewer bots in the coreset"}
    wins = {name: _wins(name, result) for name, result in results.items()}
    lines = [f"- {name}: {what[name]} than random: {', '.join(w) if w else 'none'}" for name, w in wins.items()]
    everywhere = set.intersection(*map(set, wins.values())) if len(wins) == len(REGIMES) else set()
    if everywhere:
        lines.append(f"- every regime: {', '.join(sorted(everywhere))}")
    else:
        lines.append("- every regime: none, so the daily DAG keeps `dealrec` (the paper's rule) as its default")
    return "\n".join(lines)


def probe_section(paths: list[Path]) -> str:
    """One compact table of every probe run (other pools, lambda 0, other scores, a fit filter), against random."""
    lines = [
        "Probes (`bench/results/coreset_quality_<regime>_probe*.json`; each file's `note` says what differs):",
        "",
        "| file | strategy | seeds | R@20 | R@20 vs random | bots (vs random) |",
        "|---|---|---|---|---|---|",
    ]
    for path in paths:
        result = json.loads(path.read_text())
        for strategy, row in result["summary"].items():
            if strategy == "random":
                continue
            bots = ""
            if result["regime"] == "planted":
                v = row["vs_random"]["bot_share"]
                verdict = "resolved" if v["resolved"] else "not resolved"
                bots = f"{row['bot_share']:.1%} ({100 * v['diff']:+.1f} ± {100 * v['ci95']:.1f} points, {verdict})"
            cells = [
                path.stem.removeprefix("coreset_quality_"),
                strategy,
                str(row["recall@20"]["n"]),
                _pm(row["recall@20"]),
                _vs(row.get("vs_random", {}).get("recall@20")),
                bots,
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render() -> str:
    out = [START, ""]
    results = {
        n: json.loads((RESULTS / f"coreset_quality_{n}.json").read_text())
        for n in REGIMES
        if (RESULTS / f"coreset_quality_{n}.json").exists()
    }
    if results:
        out += ["Verdict (95% Welch interval of the difference to random excludes 0):", "", verdict(results), ""]
    for name, result in results.items():
        out += [regime_section(name, result), ""]
    probes = sorted(RESULTS.glob("coreset_quality_*_probe*.json"))
    if probes:
        out += [probe_section(probes), ""]
    if "cold" in results:
        out += [stability_section(results["cold"]), ""]
    targets = [RESULTS / f"coreset_quality_{n}_valid4.json" for n in REGIMES]
    if any(p.exists() for p in targets):
        out += [target_section([p for p in targets if p.exists()]), ""]
    out.append(END)
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--readme", default=str(ROOT / "README.md"))
    ap.add_argument("--check", action="store_true", help="exit 1 when the README's section differs")
    args = ap.parse_args()
    return update_between_markers(Path(args.readme), [(START, END, render())], args.check,
                                  "python bench/report_quality.py")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
