"""Grounded evaluation (BIGRec): generate a title, embed it and every catalogue title, rank items by L2 distance.

Embeddings are the last layer's hidden state at the last token (the paper embeds with the base model). Item
embeddings of the base model depend only on its weights, its tokenizer and the titles, so they are cached on disk
under a key of the three, with a sidecar of the array's checksum, shape and dtype: a cache that fails it (a flipped
byte, a cut-off write, another writer's array) is recomputed, never used.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dealrec_tasks.errors import InputError
from dealrec_tasks.llm import grounding
from dealrec_tasks.llm.config import EvalConfig
from dealrec_tasks.llm.prompts import TITLE_SEPARATOR, EncodedPrompt, clean_title
from dealrec_tasks.metrics import mean_metrics, per_user_metrics, ranks_in_topk
from dealrec_tasks.progress import progress, report

REPEAT_NGRAM = 3  # the n of EvalConfig.ngram_repeat_limit
POPAWARE = "popaware_"  # metric-name prefix of the popularity-aware grounding
POPULARITY_CUTOFF = 20  # gamma maximises validation NDCG@20


class ResponseNGramLimit:
    """A logits processor: bans every token that would make an n-gram of the response occur more than ``limit``
    times. Only tokens after ``prompt_width`` count, so a title may repeat what the history says (transformers'
    ``no_repeat_ngram_size`` counts the prompt too, and would forbid "- Xbox 360" after a history of Xbox games).
    """

    def __init__(self, prompt_width: int, limit: int, n: int = REPEAT_NGRAM):
        self.prompt_width, self.limit, self.n = prompt_width, limit, n

    def banned(self, response: list[int]) -> set[int]:
        """Tokens that may not come next after ``response``."""
        n, k = self.n, len(response)
        if k < n - 1:
            return set()
        prefix = response[k - (n - 1) :]
        seen = Counter(response[i + n - 1] for i in range(k - n + 1) if response[i : i + n - 1] == prefix)
        return {token for token, count in seen.items() if count >= self.limit}

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row, response in enumerate(input_ids[:, self.prompt_width :].tolist()):
            banned = self.banned(response)
            if banned:
                scores[row, list(banned)] = -float("inf")
        return scores


@torch.no_grad()
def generate_titles(model, tokenizer, prompts: Sequence[EncodedPrompt], cfg: EvalConfig) -> list[str]:
    """Beam-search a response for every prompt (prompt = prefix + own tokens without the response)."""
    from transformers import LogitsProcessorList

    device = next(model.parameters()).device
    model.eval()
    out: list[str] = [""] * len(prompts)
    contexts = [p.input_ids[: len(p.input_ids) - p.n_response] for p in prompts]
    order = np.argsort([len(c) for c in contexts], kind="stable")
    for start in progress(range(0, len(order), cfg.batch_size), desc="generating", unit="batch"):
        idx = order[start : start + cfg.batch_size]
        width = max(len(contexts[i]) for i in idx)
        ids = torch.full((len(idx), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(idx):  # left padding: generation continues from the last real token
            ids[row, width - len(contexts[i]) :] = torch.tensor(contexts[i])
            mask[row, width - len(contexts[i]) :] = 1
        limit = [ResponseNGramLimit(width, cfg.ngram_repeat_limit)] if cfg.ngram_repeat_limit else []
        ids, mask = ids.to(device), mask.to(device)
        gen = model.generate(
            input_ids=ids,
            attention_mask=mask,
            # Preallocated keys/values: the default cache grows by concatenation every step (a third of the time).
            cache_implementation="static",
            num_beams=cfg.num_beams,
            max_new_tokens=cfg.max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            logits_processor=LogitsProcessorList(limit),
        )
        for row, i in enumerate(idx):
            out[i] = first_title(tokenizer.decode(gen[row, width:], skip_special_tokens=True))
    return out


_ENTITY_END = re.compile(r"&#?\w+$")  # "&amp" before "; " is an HTML entity of the title, not a separator


def first_title(response: str) -> str:
    """The response up to the end of its first title: a line break, or the prompt's title separator ("; ") unless
    it closes an HTML entity (``&amp; ``, in 673 Games titles). A model that learned the history lists goes on
    with "; <next title>" or "### Response:" instead of stopping; only the first title is its answer."""
    text = response.split("\n", 1)[0]
    for match in re.finditer(re.escape(TITLE_SEPARATOR), text):
        if not _ENTITY_END.search(text[: match.start()]):
            return text[: match.start()].strip()
    return text.strip()


@torch.no_grad()
def embed_texts(model, tokenizer, texts: Sequence[str], batch_size: int, desc: str = "embedding") -> np.ndarray:
    """Last-layer hidden state at each text's last token: [N, H] float32 (right padding, gathered per row)."""
    device = next(model.parameters()).device
    model.eval()
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id] for t in texts]
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    order = np.argsort([len(r) for r in rows], kind="stable")
    for start in progress(range(0, len(order), batch_size), desc=desc, unit="batch"):
        idx = order[start : start + batch_size]
        width = max(len(rows[i]) for i in idx)
        ids = torch.full((len(idx), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(idx):
            ids[r, : len(rows[i])] = torch.tensor(rows[i])
            mask[r, : len(rows[i])] = 1
        hidden = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True)
        last = hidden.hidden_states[-1]  # [B, T, H]
        lengths = mask.sum(1).to(device) - 1
        out[idx] = last[torch.arange(len(idx), device=device), lengths].float().cpu().numpy()
    return out


FINGERPRINT_CHUNKS = 256  # samples of each weight file, evenly spread (ends included)
FINGERPRINT_CHUNK_BYTES = 4096


def _weights_sample(path: Path) -> str:
    """sha256 of a weight file's bytes at ``FINGERPRINT_CHUNKS`` evenly spread offsets (the whole file when it is
    smaller than that): a retrained or merged checkpoint differs in nearly every region, so the sample tells it
    apart, at 1 MiB read per file whatever its size."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as f:
        if size <= FINGERPRINT_CHUNKS * FINGERPRINT_CHUNK_BYTES:
            digest.update(f.read())
        else:
            last = size - FINGERPRINT_CHUNK_BYTES
            for i in range(FINGERPRINT_CHUNKS):
                f.seek(last * i // (FINGERPRINT_CHUNKS - 1))
                digest.update(f.read(FINGERPRINT_CHUNK_BYTES))
    return digest.hexdigest()


def model_fingerprint(model_dir: str | Path) -> str:
    """Config + each weight file's name, size and sampled content, without hashing 14 GB.

    The same checkpoint gives the same fingerprint on every machine, copy and checkout: no modification time (a
    fresh clone of the shipped model, or a base mounted into another container, had another fingerprint, so every
    cache keyed by it missed and a registered version's base counted as another model)."""
    d = Path(model_dir)
    parts = [(d / "config.json").read_text() if (d / "config.json").exists() else str(d.resolve())]
    for f in sorted(d.glob("*.safetensors")) + sorted(d.glob("*.bin")):
        parts.append(f"{f.name}:{f.stat().st_size}:{_weights_sample(f)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _adapter_active(model) -> bool:
    """Whether a LoRA adapter takes part in ``model``'s forward pass (a PEFT model outside ``disable_adapter()``)."""
    if getattr(model, "peft_config", None) is None:
        return False
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) and not m.disable_adapters for m in model.modules())


def _item_cache_key(model_dir: str | Path, titles: Sequence[str]) -> str:
    """What decides the base model's item embeddings: its weights (``model_fingerprint``), its tokenizer and the
    titles in order."""
    from dealrec_tasks.llm.effort import tokenizer_fingerprint

    titles_sha = hashlib.sha256("\x1f".join(titles).encode("utf-8", "surrogatepass")).hexdigest()
    identity = {"model": model_fingerprint(model_dir), "tokenizer": tokenizer_fingerprint(model_dir)}
    blob = json.dumps(identity | {"titles": titles_sha, "n_titles": len(titles)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _check_finite(emb: np.ndarray, what: str, model_dir: str | Path) -> None:
    """NaN or inf distances rank items arbitrarily: refuse them rather than publish metrics of them."""
    bad = int((~np.isfinite(emb)).any(axis=1).sum())
    if bad:
        raise InputError(
            f"{model_dir}: {bad} of {len(emb)} {what} embed to NaN or inf; the model (or its adapter) is broken, "
            "nothing was ranked or cached"
        )


def _read_item_cache(path: Path, shape: tuple[int, int]) -> tuple[np.ndarray | None, str]:
    """The cached array when it matches its sidecar (sha256 of the file, shape, float32) and ``shape``, and is
    finite; else (None, why)."""
    try:
        data = path.read_bytes()
        meta = json.loads(path.with_suffix(".json").read_text())
    except FileNotFoundError as exc:
        return None, f"no {Path(exc.filename).name}"
    except (OSError, ValueError) as exc:
        return None, f"unreadable checksum sidecar ({exc})"
    if not isinstance(meta, dict) or meta.get("sha256") != hashlib.sha256(data).hexdigest():
        return None, "checksum differs from its sidecar"
    try:
        emb = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError) as exc:
        return None, f"not a NumPy array ({exc})"
    if emb.dtype != np.float32 or emb.shape != shape or meta.get("shape") != list(shape):
        return None, f"{emb.dtype} {emb.shape} where float32 {shape} is expected"
    if not np.isfinite(emb).all():
        return None, "holds NaN or inf"
    return emb, ""


def _write_item_cache(path: Path, emb: np.ndarray) -> None:
    """The array, then its sidecar, each by an atomic rename: a reader sees a checksum that matches, or one that
    does not (and recomputes), never a half-written file that passes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.save(buffer, emb, allow_pickle=False)
    data = buffer.getvalue()
    meta = {"sha256": hashlib.sha256(data).hexdigest(), "shape": list(emb.shape), "dtype": str(emb.dtype)}
    for target, content in ((path, data), (path.with_suffix(".json"), json.dumps(meta).encode())):
        tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.write_bytes(content)
        os.replace(tmp, target)


def item_embeddings(
    model,
    tokenizer,
    titles: Sequence[str],
    model_dir: str | Path,
    cache_dir: str | Path | None,
    batch_size: int,
    notes: list[str] | None = None,
) -> np.ndarray:
    """Embeddings of every item title [N, H] float32, from the cache when the base model at ``model_dir`` already
    embedded these titles and the cached file passes its checksum; a file that fails is recomputed and replaced,
    with a line in ``notes`` (printed when None).

    With an active adapter nothing is cached: the embeddings then belong to that adapter, which the key (base
    model and titles) does not name, so another adapter would get them."""
    shape = (len(titles), model.config.hidden_size)
    use_cache = cache_dir is not None and not _adapter_active(model)
    path = Path(cache_dir) / f"items-{_item_cache_key(model_dir, titles)}.npy" if use_cache else None
    if path is not None and path.exists():
        cached, why = _read_item_cache(path, shape)
        if cached is not None:
            return cached
        line = f"item embedding cache {path}: {why}; recomputed and replaced"
        if notes is None:
            report(line)
        else:
            notes.append(line)
    emb = embed_texts(model, tokenizer, titles, batch_size, desc="embedding items")
    _check_finite(emb, "item titles", model_dir)
    if path is not None:
        _write_item_cache(path, emb)
    return emb


def grounded_evaluation(
    peft_or_base_model,
    tokenizer,
    prompts: Sequence[EncodedPrompt],
    targets: Sequence[Sequence[int]],
    titles: Sequence[str],
    cfg: EvalConfig,
    model_dir: str | Path,
    cache_dir: str | Path | None = None,
    *,
    item_counts: np.ndarray | None = None,
    valid_prompts: Sequence[EncodedPrompt] = (),
    valid_targets: Sequence[int] = (),
) -> dict:
    """Recall/NDCG@K of generated titles grounded to the catalogue; ``targets`` are row indices into ``titles``.

    ``per_user`` holds each scored user's values (``kept`` marks which prompts had targets): the gate compares two
    models user by user, so the means alone are not enough.

    With ``item_counts`` (interactions per title row) and validation prompts with one target row each, BIGRec's
    popularity-aware grounding is measured too (``popaware_*`` metrics, ``popaware_gamma``): its weight gamma is
    the one with the best NDCG@20 on the validation users, then applied to the test users."""
    generated = generate_titles(peft_or_base_model, tokenizer, prompts, cfg)
    notes: list[str] = []  # an item embedding cache that failed its check
    items, queries = embed_for_grounding(
        peft_or_base_model, tokenizer, generated, titles, cfg, model_dir, cache_dir, notes=notes
    )
    k = max(cfg.ks)
    topk = grounding.topk(queries, items, k)
    kept, per_user = per_user_metrics(ranks_in_topk(topk, targets), cfg.ks)
    metrics = mean_metrics(per_user)
    shown = [clean_title(t) for t in titles]
    exact = float(np.mean([g == shown[t[0]] for g, t in zip(generated, targets) if t])) if targets else 0.0
    # A model that collapses answers every user with the same few titles: this share says so at a glance.
    distinct = len(set(generated)) / len(generated) if generated else 0.0
    extra = {"exact_title_match": exact, "distinct_generated_share": distinct}
    result = {"generated": generated, "topk": topk, "kept": kept, "per_user": per_user}
    if item_counts is not None and len(valid_prompts):
        pop = grounding.popularity(item_counts)
        valid_generated = generate_titles(peft_or_base_model, tokenizer, valid_prompts, cfg)
        _, valid_queries = embed_for_grounding(
            peft_or_base_model, tokenizer, valid_generated, titles, cfg, model_dir, cache_dir, notes=notes
        )
        gamma, by_gamma = grounding.choose_gamma(valid_queries, items, valid_targets, pop, POPULARITY_CUTOFF)
        pop_topk = grounding.topk(queries, items, k, pop, gamma)
        _, pop_per_user = per_user_metrics(ranks_in_topk(pop_topk, targets), cfg.ks)
        popaware = {f"{POPAWARE}{name}": v for name, v in mean_metrics(pop_per_user).items() if name != "users"}
        extra |= popaware | {f"{POPAWARE}gamma": gamma, f"{POPAWARE}valid_users": len(valid_targets)}
        result["popaware"] = {"gamma": gamma, "valid_ndcg@20": by_gamma, "topk": pop_topk, "per_user": pop_per_user}
    return result | {"metrics": metrics | extra, "notes": notes}


def embed_for_grounding(
    peft_or_base_model,
    tokenizer,
    generated: Sequence[str],
    titles: Sequence[str],
    cfg: EvalConfig,
    model_dir: str | Path,
    cache_dir: str | Path | None = None,
    notes: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(item embeddings [N, H], embeddings of the generated texts [Q, H]), with the base model when
    ``cfg.embed_with_base`` (the adapter disabled, as in BIGRec).

    Titles are embedded as the model was taught to write them (``clean_title``: one line, single spaces), so a
    generated text that is a catalogue title lies at distance 0 from it and ranks it first, as in BIGRec.
    """
    disable = getattr(peft_or_base_model, "disable_adapter", None)
    ctx = disable() if (cfg.embed_with_base and disable is not None) else contextlib.nullcontext()
    shown = [clean_title(t) for t in titles]
    with ctx:
        items = item_embeddings(peft_or_base_model, tokenizer, shown, model_dir, cache_dir, cfg.embed_batch_size, notes)
        queries = embed_texts(peft_or_base_model, tokenizer, generated, cfg.embed_batch_size, desc="embedding outputs")
    _check_finite(queries, "generated titles", model_dir)
    return items, queries
