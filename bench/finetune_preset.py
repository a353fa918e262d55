"""Choose the embedded model's fine-tuning preset on validation users (issue 28).

BIGRec's LoRA settings (lr 1e-4, rank 8 on q_proj/v_proj, 10 epochs) are for a 7B model; on the 4.7M-parameter
embedded model they barely move it. Each candidate below fine-tunes the shipped model on the same ``--n`` random
Games training samples (seed 0; early stopping on 256 validation rows, as ``bench/llm_quality.py``) and is
scored on ``--users`` other validation rows (history = train, target = the first validation item; never a test
user) by the mean loss of the target title's tokens given the history: the likelihood beam search maximises, with
every row contributing (Recall@20 on a thousand users rests on about ten hits, too few to tell candidates apart;
the recommendation metrics are measured on 4,000 test users by ``bench/llm_quality.py``). The lowest loss wins:
``--write`` stores it in the model's directory (``dealrec_finetune_preset.json``, with the table it was chosen
from) and rewrites the manifest. JSON + PNG to ``--results``.

    nice -n 5 .venv/bin/python bench/finetune_preset.py --write
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from llm_quality import prompts, setup  # noqa: E402

from dealrec_tasks.llm import finetune as ft  # noqa: E402
from dealrec_tasks.llm import shipped, tiny  # noqa: E402
from dealrec_tasks.llm.config import FinetuneConfig, LoRAConfig  # noqa: E402

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ALL = {"r": 16, "alpha": 32, "target_modules": ALL_LINEAR}
CANDIDATES = {  # 2 epochs each (CPU time); early stopping on the validation loss picks the best of them
    "BIGRec: lr 1e-4, q/v r8, loss on the whole prompt": ({"lr": 1e-4, "epochs": 2}, {}),
    "lr 3e-3, all r16, loss on the whole prompt": ({"lr": 3e-3, "epochs": 2}, ALL),
    "lr 1e-3, all r16, loss on the answer": ({"lr": 1e-3, "epochs": 2, "train_on_inputs": False}, ALL),
    "lr 3e-3, all r16, loss on the answer": ({"lr": 3e-3, "epochs": 2, "train_on_inputs": False}, ALL),
}
METRIC = "valid_answer_loss"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=shipped.SHIPPED_DIR)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tmp" / "finetune_preset")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "finetune_preset")
    ap.add_argument("--users", type=int, default=1000, help="validation users the candidates are compared on")
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--lake", type=Path, default=ROOT / "var" / "games")
    ap.add_argument("--write", action="store_true", help="store the winner as the model's preset")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    # setup() names its validation rows: early stopping, then gamma_users rows; the candidates use the latter.
    args.users, args.gamma_users, args.curve_users = 1, args.users, 1
    d = setup(args)
    chosen_on = d["gamma"]
    log = args.out / "candidates.jsonl"
    done = {json.loads(x)["name"]: json.loads(x) for x in log.read_text().splitlines()} if log.exists() else {}
    train_rows = [d["train"][k] for k in np.random.default_rng(0).choice(len(d["train"]), args.n, replace=False)]
    for name in ["base", *CANDIDATES]:
        if name in done:
            continue
        tokenizer, model = tiny.load(args.model)
        rec: dict = {"name": name}
        if name != "base":
            f_over, l_over = CANDIDATES[name]
            fcfg = FinetuneConfig(preset="none", seed=0, domain="games", **f_over)
            lora = LoRAConfig(**l_over)
            train = prompts(tokenizer, d["titles"], train_rows, True, fcfg.cutoff_len)
            early = prompts(tokenizer, d["titles"], d["early"], True, fcfg.cutoff_len)
            t0 = time.perf_counter()
            state = ft.finetune(
                model, tokenizer.pad_token_id, train, early, fcfg, lora, args.out / name.replace(" ", "_")
            )
            from peft import PeftModel

            _, base = tiny.load(args.model)
            model = PeftModel.from_pretrained(base, state["adapter_dir"])
            rec |= {
                "finetune": f_over,
                "lora": lora.to_dict(),
                "finetune_seconds": round(time.perf_counter() - t0, 1),
                "history": state["history"],
                "best_epoch": state["best_epoch"],
            }
        valid = prompts(tokenizer, d["titles"], chosen_on, True, FinetuneConfig().cutoff_len)
        loss = ft.mean_loss(model, valid, tokenizer.pad_token_id, False, 16)  # the answer's tokens only
        rec |= {"metrics": {METRIC: loss}}
        print(f"[{name}] {METRIC} {loss:.4f}", flush=True)
        with log.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        done[name] = rec
    best = min(CANDIDATES, key=lambda n: done[n]["metrics"][METRIC])
    f_over, l_over = CANDIDATES[best]
    preset = {
        "name": f"{shipped.VERSION} preset",
        "finetune": f_over,
        "lora": {k: list(v) if isinstance(v, tuple) else v for k, v in l_over.items()},
        "chosen_on": {
            "users": len(chosen_on),
            "what": "Games validation rows (history = train, target = first validation item): the mean loss of the "
            "target title's tokens (nats per token), lower is better",
            "metric": METRIC,
            "n": args.n,
            "candidate": best,
            "table": {n: {METRIC: done[n]["metrics"][METRIC]} for n in done},
            "command": "python bench/finetune_preset.py --write",
        },
    }
    result = {"command": "python bench/finetune_preset.py " + " ".join(sys.argv[1:]), "preset": preset, "runs": done}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.results}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, Path(f"{args.results}.png"))
    print(f"best: {best} ({METRIC} {done[best]['metrics'][METRIC]:.4f}, base {done['base']['metrics'][METRIC]:.4f})")
    if args.write:
        (args.model / ft.PRESET_FILE).write_text(json.dumps(preset, indent=2) + "\n")
        m = shipped.read_manifest(args.model)
        info = {
            "config": m["config"],
            "catalogue": m["catalogue"],
            "corpus": m["corpus"],
            "parameters": m["parameters"],
        }
        shipped.write_manifest(
            args.model, info | {"pretraining": m["pretraining"]}, m["data_cut"], m["command"], m["build_seconds"]
        )
        print(f"wrote {args.model / ft.PRESET_FILE} and the manifest")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    names = list(runs)
    fig, ax = plt.subplots(figsize=(9, 4))
    x = np.arange(len(names))
    ax.bar(x, [runs[n]["metrics"][METRIC] for n in names], 0.6, color="tab:blue")
    for xi, n in zip(x, names):
        ax.text(xi, runs[n]["metrics"][METRIC], f"{runs[n]['metrics'][METRIC]:.4f}", ha="center", va="bottom")
    ax.set_ylabel("validation loss of the answer title (nats/token)")
    lo = min(r["metrics"][METRIC] for r in runs.values())
    ax.set_ylim(lo * 0.95, max(r["metrics"][METRIC] for r in runs.values()) * 1.02)
    ax.set_xticks(x, [n.replace(", loss", ",\nloss") for n in names], fontsize=7)
    best = result["preset"]["chosen_on"]["candidate"]
    ax.set_title(f"fine-tuning candidates on {result['preset']['chosen_on']['users']} validation users; chosen: {best}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
