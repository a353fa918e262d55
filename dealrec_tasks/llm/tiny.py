"""A tiny LLaMA-architecture model and a BPE tokenizer trained on the catalogue, saved with save_pretrained.

No weights can be downloaded here, so the embedded default builds its own checkpoint; everything downstream
loads it with ``from_pretrained`` exactly like a real LLaMA/Qwen/Mistral directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import torch

from dealrec_tasks.llm.config import TinyLLMConfig
from dealrec_tasks.llm.prompts import PromptTemplate, clean_title, encode
from dealrec_tasks.progress import progress

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


def warm_up(model, tokenizer, titles: list[str], cfg: TinyLLMConfig, template: PromptTemplate) -> dict:
    """A few minutes of next-token training on prompts made of random catalogue titles, so generation
    produces title-like text in the response slot. Histories of 1-20 titles; the loss is on the response (the
    template would otherwise dominate it). Bounded by steps and by seconds."""
    rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.warmup_lr)
    model.train()
    started, losses = time.perf_counter(), []
    for _ in progress(range(cfg.warmup_steps), desc="warming up tiny LLM", unit="step"):
        if time.perf_counter() - started > cfg.warmup_seconds:
            break
        batch = []
        for _ in range(cfg.warmup_batch):
            hist = [titles[i] for i in rng.integers(0, len(titles), size=int(rng.integers(1, 21)))]
            batch.append(encode(tokenizer, template, hist, titles[int(rng.integers(len(titles)))], 512))
        width = max(len(b.input_ids) for b in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b.input_ids)
            ids[i, :n] = torch.tensor(b.input_ids)
            labels[i, n - b.n_response : n] = torch.tensor(b.input_ids[n - b.n_response :])
            mask[i, :n] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return {
        "warmup_steps_done": len(losses),
        "warmup_seconds": time.perf_counter() - started,
        "warmup_first_loss": losses[0] if losses else None,
        "warmup_last_loss": losses[-1] if losses else None,
    }


def build_tiny_llm(out_dir: str | Path, titles: list[str], cfg: TinyLLMConfig, rebuild: bool = False) -> dict:
    """Build (or reuse) the tiny checkpoint in ``out_dir``; returns its marker (config, catalogue hash, stats).

    Reused when the directory holds a model built from the same config and catalogue, unless ``rebuild``.
    Written to a temporary sibling and renamed, so a crash never leaves a half-written model directory.
    """
    out = Path(out_dir)
    wanted = {"config": cfg.to_dict(), "catalogue": catalogue_hash(titles)}
    marker = out / MARKER
    if marker.exists() and not rebuild:
        existing = json.loads(marker.read_text())
        if {k: existing.get(k) for k in wanted} == wanted:
            return existing | {"reused": True}
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    template = PromptTemplate(cfg.domain)
    tokenizer = train_tokenizer(titles, template, cfg.vocab_size)
    model = build_model(cfg, tokenizer)
    stats = warm_up(model, tokenizer, titles, cfg, template) if cfg.warmup_steps else {}
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    info = (
        wanted
        | stats
        | {
            "parameters": sum(p.numel() for p in model.parameters()),
            "prefix_tokens": len(encode(tokenizer, template, [], None, 10_000).prefix),
        }
    )
    (tmp / MARKER).write_text(json.dumps(info, indent=2))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return info | {"reused": False}


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
