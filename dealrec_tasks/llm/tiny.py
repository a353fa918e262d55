"""A tiny LLaMA-architecture model and a BPE tokenizer trained on the catalogue, saved with save_pretrained.

No weights can be downloaded here, so the embedded default builds its own checkpoint, pretrained on the catalogue
and an earlier time cut of the interactions (``llm/pretrain.py``); everything downstream loads it with
``from_pretrained`` exactly like a real LLaMA/Qwen/Mistral directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dealrec_tasks.llm.config import TinyLLMConfig
from dealrec_tasks.llm.pretrain import Corpus, pretrain
from dealrec_tasks.llm.prompts import PromptTemplate, clean_title, encode

MARKER = "dealrec_tiny_llm.json"
SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}


def catalogue_hash(titles: list[str]) -> str:
    return hashlib.sha256("\n".join(titles).encode()).hexdigest()[:16]


def train_tokenizer(titles: list[str], template: PromptTemplate, vocab_size: int):
    """Byte-level BPE on the titles and the prompt template (so the template costs few tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=SPECIAL["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [clean_title(t) for t in titles] + [template.prompt(["a", "b"])] * 50
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL)
    fast.padding_side = "right"
    return fast


def build_model(cfg: TinyLLMConfig, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(config)


@dataclass(frozen=True)
class PretrainCorpus:
    """What the embedded model learns from besides the catalogue: users' item sequences (indices into
    ``item_titles``, ``item_titles[i - 1]`` is item i) of the days up to ``last_day`` (None: no interactions)."""

    item_titles: list[str]
    sequences: list[list[int]]
    last_day: str | None

    def digest(self) -> str:
        h = hashlib.sha256("\n".join(self.item_titles).encode())
        for s in self.sequences:
            h.update(np.asarray(s, dtype=np.int64).tobytes() + b"|")
        return h.hexdigest()[:16]

    def describe(self) -> dict:
        return {
            "last_day": self.last_day,
            "users": sum(1 for s in self.sequences if len(s) >= 2),
            "interactions": sum(len(s) for s in self.sequences),
            "sha256": self.digest(),
        }


def reusable(marker: dict, wanted: dict, latest_corpus_day: str | None) -> bool:
    """A built model serves when it has the same config and catalogue and its corpus ends no later than the day
    asked for allows (an earlier cut never holds a later validation or test day: one model serves every later
    day, like a downloaded checkpoint)."""
    if {k: marker.get(k) for k in wanted} != wanted or "corpus" not in marker:
        return False
    built_last = marker["corpus"].get("last_day")
    return built_last is None or (latest_corpus_day is not None and built_last <= latest_corpus_day)


def build_tiny_llm(
    out_dir: str | Path,
    titles: list[str],
    cfg: TinyLLMConfig,
    rebuild: bool = False,
    corpus: PretrainCorpus | None = None,
    latest_corpus_day: str | None = None,
    snapshot_every: int = 0,
) -> dict:
    """Build (or reuse) the embedded checkpoint in ``out_dir``; returns its marker (config, catalogue hash,
    corpus, pretraining summary) with ``reused``.

    ``titles``: the catalogue (the tokenizer is trained on it). ``corpus``: the pretraining interactions (None:
    titles only). Reused (without reading ``corpus``) when ``reusable`` says so for ``latest_corpus_day``, unless
    ``rebuild``. Written to a temporary sibling and renamed, so a crash never leaves a half-written model directory.
    """
    out = Path(out_dir)
    wanted = {"config": cfg.to_dict(), "catalogue": catalogue_hash(titles)}
    marker = out / MARKER
    if marker.exists() and not rebuild:
        existing = json.loads(marker.read_text())
        if reusable(existing, wanted, latest_corpus_day):
            return existing | {"reused": True}
    check_writable(out)  # before minutes of pretraining, not at the save after them
    corpus = corpus if corpus is not None else PretrainCorpus(titles, [], None)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    template = PromptTemplate(cfg.domain)
    tokenizer = train_tokenizer(titles, template, cfg.vocab_size)
    model = build_model(cfg, tokenizer)
    stats = {}
    if cfg.pretrain_steps:
        examples = Corpus(
            corpus.item_titles,
            corpus.sequences,
            tokenizer,
            template,
            cfg.pretrain_cutoff,
            cfg.title_share,
            cfg.prompt_share,
            cfg.seed,
        )
        snapshots = out.parent / f"{out.name}.snapshots"

        def snapshot(step: int, summary: dict) -> None:
            target = snapshots / f"step-{step:06d}"
            model.save_pretrained(target)
            tokenizer.save_pretrained(target)
            (target / "snapshot.json").write_text(json.dumps(summary, indent=2))

        stats = pretrain(
            model,
            examples,
            cfg.pretrain_steps,
            cfg.pretrain_seconds,
            cfg.pretrain_batch,
            cfg.pretrain_lr,
            checkpoint_every=snapshot_every,
            on_checkpoint=snapshot,
        )
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    info = wanted | {
        "corpus": corpus.describe(),
        "pretraining": stats,
        "parameters": sum(p.numel() for p in model.parameters()),
        "prefix_tokens": len(encode(tokenizer, template, [], None, 10_000).prefix),
    }
    (tmp / MARKER).write_text(json.dumps(info, indent=2))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return info | {"reused": False}


def check_writable(out: Path) -> None:
    """Refuse, naming it, a model directory that cannot be written: the model goes to a temporary sibling that is
    renamed to ``out`` (``/proc/x``: nothing can be created in /proc; a file where the directory should be)."""
    from dealrec_tasks.errors import ConfigError

    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={str(out)!r}: exists and is not a directory; give a model directory")
    probe = out.parent / f".{out.name}.probe-{uuid.uuid4().hex[:8]}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        raise ConfigError(f"out={str(out)!r}: cannot write the model there ({exc.strerror or exc})") from None


def check_model_dir(model_dir: str | Path) -> None:
    """Refuse, by name, anything but a local model directory (a missing path would be taken for a Hub id)."""
    from dealrec_tasks.errors import ConfigError

    if not (Path(model_dir) / "config.json").is_file():
        raise ConfigError(f"model={str(model_dir)!r}: not a local Hugging Face model directory (no config.json)")


def load(model_dir: str | Path, dtype: torch.dtype = torch.float32):
    """Tokenizer and causal LM from a local directory (tiny or real), the one loading path everywhere.

    Only local directories: a missing path is refused by name instead of being taken for a Hub id (no download).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_model_dir(model_dir)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    model.eval()
    return tokenizer, model
