"""Rebuild the shipped embedded LLM (``models/embedded-llm/``) from the paper's Games data.

The model the demo, the tests and the daily pipeline load by default (``dealrec_tasks/llm/shipped.py``): the
library's ``build_tiny_llm`` with ``TinyLLMConfig`` defaults but ``--steps`` pretraining steps, its tokenizer
trained on the 17,332 Games titles, its corpus the users' training items of the 30-day Games replay's days up to
day 25 (``days - corpus_gap_days``: no validation or test target). Snapshots every ``--snapshot-every`` steps go
to ``<out>.snapshots/`` (gitignored) for the learning curve (``bench/llm_quality.py --curve``).

Writes ``<out>/manifest.json`` last: config, data cut, steps, final loss, the checksum of every file, and this
command. Hours on this CPU for the default; a GPU is used when there is one.

    nice -n 5 .venv/bin/python scripts/build_embedded_llm.py --data ../shared/data/games --steps 5000
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from llm_pretrain_probe import load_games  # noqa: E402

from dealrec_tasks.llm import shipped, tiny  # noqa: E402
from dealrec_tasks.llm.config import TinyLLMConfig  # noqa: E402

REPLAY_DAYS = 30
REPLAY_START = "2026-01-01"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "games")
    ap.add_argument("--out", type=Path, default=shipped.SHIPPED_DIR)
    ap.add_argument("--steps", type=int, default=5000, help="pretraining optimizer steps")
    ap.add_argument("--hours", type=float, default=3.0, help="time limit of pretraining")
    ap.add_argument("--snapshot-every", type=int, default=1000)
    args = ap.parse_args()
    cfg = TinyLLMConfig(domain="games", pretrain_steps=args.steps, pretrain_seconds=args.hours * 3600)
    cut_day = REPLAY_DAYS - cfg.corpus_gap_days
    g = load_games(args.data, REPLAY_DAYS, cut_day, 0)
    last_day = f"2026-01-{cut_day:02d}"
    corpus = tiny.PretrainCorpus(g["titles"], [s for s in g["early"] if s], last_day)
    started = time.perf_counter()
    info = tiny.build_tiny_llm(
        args.out, g["titles"], cfg, rebuild=True, corpus=corpus, snapshot_every=args.snapshot_every
    )
    command = "python scripts/build_embedded_llm.py " + " ".join(
        shlex.quote(a) for a in ("--steps", str(args.steps), "--hours", str(args.hours))
    )
    data_cut = {
        "dataset": "Games (DEALRec release, ../shared/data/games)",
        "replay": f"{REPLAY_DAYS} days from {REPLAY_START} (dealrec replay, seed 0)",
        "corpus_days": f"{REPLAY_START} .. {last_day} (replay days 1..{cut_day})",
        "holds_validation_or_test_targets": False,
    }
    manifest = shipped.write_manifest(args.out, info, data_cut, command, time.perf_counter() - started)
    print(f"{args.out}: {manifest['parameters']:,} parameters, loss {manifest['final_loss']:.3f}")


if __name__ == "__main__":
    main()
