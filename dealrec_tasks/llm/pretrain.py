"""Pretraining of the embedded LLM: the domain knowledge a downloaded checkpoint would bring.

A real LLM knows item titles and which ones go together before BIGRec fine-tunes it; a randomly initialised tiny
model does not, and collapses to one title for every user (issue 15). So the embedded model is pretrained, once,
on text the daily evaluation never holds:

- catalogue lines ``<s>title</s>`` (the response format: a title, then the end);
- compact user sequences ``<s>title1; title2; ...; titleN</s>`` from an earlier time cut of the interactions,
  the loss on every token (each title is a next-title prediction in context); a sequence longer than the cut-off
  is a random window of consecutive titles (no ``</s>`` when the window stops before the sequence's end);
- a share of BIGRec prompts of those sequences (the response slot after "### Response:"), the loss on every token,
  the fixed instruction included: a real LLM reads that Alpaca-style text at a low loss, and a model that has not
  learned it spends BIGRec's fine-tuning (``train_on_inputs``, loss on the whole prompt) on the template instead of
  the items (measured on Games: the first epoch's loss 7.4, falling only as the template is learned, and a lower
  R@20 after fine-tuning than before it).

Measured on Games (``bench/llm_pretrain_probe.py``): this mix reaches about twice the R@20 of prompts alone for the
same CPU time, because a prompt spends most of its tokens on the template.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch

from dealrec_tasks.llm.prompts import TITLE_SEPARATOR, PromptTemplate, clean_title, encode
from dealrec_tasks.progress import progress, progress_bar

KINDS = ("titles", "prompts", "compact")


class Corpus:
    """Endless random examples of the three kinds, bucketed by length into padded batches.

    ``titles[i - 1]`` is item index i; ``sequences`` are users' item indices in time order (only those with 2+
    items are used: a sequence of one title teaches no next title).
    """

    def __init__(
        self,
        titles: list[str],
        sequences: list[list[int]],
        tokenizer,
        template: PromptTemplate,
        cutoff: int,
        title_share: float,
        prompt_share: float,
        seed: int,
    ):
        self.rng = np.random.default_rng(seed)
        self.tok, self.template, self.cutoff = tokenizer, template, cutoff
        self.title_share, self.prompt_share = title_share, prompt_share
        self.titles = titles
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        self.title_ids = [
            [bos] + tokenizer(clean_title(t), add_special_tokens=False)["input_ids"] + [eos]
            for t in progress(titles, desc="tokenizing titles", unit="title")
        ]
        self.sequences = [s for s in sequences if len(s) >= 2]
        if not self.sequences:  # titles only: nothing else to learn from
            self.title_share, self.prompt_share = 1.0, 0.0
        self.prefix_len = len(encode(tokenizer, template, [], None, 10_000).prefix)
        self.served = {k: {"examples": 0, "tokens": 0, "loss_tokens": 0} for k in KINDS}

    def example(self) -> tuple[list[int], int, str]:
        """(token ids, index of the first token with a loss, kind)."""
        r = self.rng.random()
        if r < self.title_share:
            return self.title_ids[int(self.rng.integers(len(self.titles)))], 0, "titles"
        if r >= self.title_share + self.prompt_share:
            return self.compact(), 0, "compact"
        s = self.sequences[int(self.rng.integers(len(self.sequences)))]
        # Mostly the whole sequence (its last title in the response slot); sometimes a prefix (short histories).
        j = len(s) - 1 if self.rng.random() < 0.7 else int(self.rng.integers(1, len(s)))
        p = encode(self.tok, self.template, [self.titles[i - 1] for i in s[:j]], self.titles[s[j] - 1], self.cutoff)
        return p.input_ids, 0, "prompts"

    def compact(self) -> list[int]:
        """``<s>title1; ...; titleN</s>`` of a random sequence, or a random window of it that fits ``cutoff``
        (estimated from the titles' own token counts: title + 2 ~ title + separator)."""
        s = self.sequences[int(self.rng.integers(len(self.sequences)))]
        cost = [len(self.title_ids[i - 1]) for i in s]
        budget = self.cutoff - 2
        tail, last_start = 0, len(s)
        while last_start > 0 and tail + cost[last_start - 1] <= budget:
            last_start -= 1
            tail += cost[last_start]
        start = 0 if last_start == 0 else int(self.rng.integers(0, min(last_start, len(s) - 1) + 1))
        end, used = start, 0
        while end < len(s) and used + cost[end] <= budget:
            used += cost[end]
            end += 1
        end = max(end, start + 1)
        text = TITLE_SEPARATOR.join(clean_title(self.titles[i - 1]) for i in s[start:end])
        ids = self.tok(text, add_special_tokens=False)["input_ids"][: self.cutoff - 2]
        return [self.tok.bos_token_id] + ids + ([self.tok.eos_token_id] if end == len(s) else [])

    def batches(self, batch: int, pool: int = 32):
        """Endless batches: ``pool`` batches' worth of examples sorted by length, cut, shuffled (little padding)."""
        while True:
            examples = sorted((self.example() for _ in range(batch * pool)), key=lambda e: len(e[0]))
            chunks = [examples[i : i + batch] for i in range(0, len(examples), batch)]
            for k in self.rng.permutation(len(chunks)):
                yield self.tensors(chunks[k])

    def tensors(self, chunk) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        width = max(len(ids) for ids, _, _ in chunk)
        ids = torch.full((len(chunk), width), self.tok.pad_token_id, dtype=torch.long)
        labels = torch.full_like(ids, -100)
        mask = torch.zeros_like(ids)
        for r, (seq, start, kind) in enumerate(chunk):
            t = torch.tensor(seq)
            first = max(start, 1)  # the first token is never predicted
            ids[r, : len(seq)] = t
            mask[r, : len(seq)] = 1
            labels[r, first : len(seq)] = t[first:]
            served = self.served[kind]
            served["examples"] += 1
            served["tokens"] += len(seq)
            served["loss_tokens"] += max(len(seq) - first, 0)
        return ids, mask, labels


def scheduled_lr(peak: float, step: int, warmup: int, done: float) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine from ``peak`` to 10 % as ``done`` goes from 0 to 1."""
    return peak * min(1.0, (step + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * done)))


def optimizer_step(model, opt, ids, mask, labels, lr: float) -> float:
    """One step at learning rate ``lr``, gradients clipped to norm 1; returns the batch's loss."""
    for group in opt.param_groups:
        group["lr"] = lr
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return float(loss.detach())


def pretrain(
    model,
    corpus: Corpus,
    steps: int,
    seconds: float,
    batch: int,
    lr: float,
    warmup: int = 100,
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[int, dict], None] | None = None,
) -> dict:
    """Next-token training for ``steps`` steps or until ``seconds`` have passed, whichever comes first.

    AdamW; the learning rate rises linearly over ``warmup`` steps, then follows a cosine down to 10 % at ``steps``
    (a run cut by the time limit stops on a higher rate: the summary says so through ``stopped_by``).
    ``on_checkpoint(step, summary)`` is called every ``checkpoint_every`` steps (the model in eval mode, put back
    in train mode after): a learning curve of the shipped model is measured on these snapshots.
    """
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    model.train()
    losses: list[float] = []
    tokens = 0
    started = time.perf_counter()
    batches = corpus.batches(batch)
    stopped_by = "steps"
    bar = progress_bar(steps, desc="pretraining the embedded LLM", unit="step")
    for step in range(steps):
        if time.perf_counter() - started > seconds:
            stopped_by = "time"
            break
        ids, mask, labels = next(batches)
        losses.append(optimizer_step(model, opt, ids, mask, labels, scheduled_lr(lr, step, warmup, step / steps)))
        tokens += int(mask.sum())
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}", refresh=False)
        if on_checkpoint is not None and checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            model.eval()
            on_checkpoint(step + 1, {"steps_done": step + 1, "loss_last_50": float(np.mean(losses[-50:]))})
            model.train()
    bar.close()
    model.eval()
    total = time.perf_counter() - started
    return {
        "steps_done": len(losses),
        "steps_budget": steps,
        "stopped_by": stopped_by,
        "seconds": round(total, 1),
        "tokens": tokens,
        "tokens_per_s": round(tokens / max(total, 1e-9), 1),
        "loss_first_50": float(np.mean(losses[:50])) if losses else None,
        "loss_last_50": float(np.mean(losses[-50:])) if losses else None,
        "served": corpus.served,
    }
