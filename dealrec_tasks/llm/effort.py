"""Effort score delta_s = ||grad_phi L_LLM(s)||_2 over LoRA parameters phi, batched and exact.

Per-sample gradients of a LoRA matrix W (a bias-free Linear) are sum_t g_t x_t^T over the sample's positions,
with x_t its input and g_t the gradient at its output: forward hooks keep x, tensor hooks keep g, and one
backward of the sum of per-sample mean losses gives every sample's own g (samples never interact: right
padding, explicit attention mask). No per-sample Python loop touches the model.

Shared prefix (exact). Every BIGRec prompt starts with the same ~78 tokens. When every selected parameter lives
in the last decoder layer and none is k_proj, the prefix is run once:
- its tokens but the last are cached (keys/values of every layer) and their own loss terms, identical for every
  sample, give one gradient ``G_prefix`` computed once;
- each sample runs only [last prefix token] + its own tokens, attending to the cache; the last layer's cached
  values are a per-sample leaf that requires grad, so the gradient that flows from a sample's tokens back into
  the prefix's v_proj outputs (through attention) is kept exactly and mapped onto the LoRA matrices;
- a sample's gradient is then (G_prefix + G_own) / n_tokens, the same number as the full computation.
Other parameter sets (lower layers) fall back to the full prompt per sample, still batched and exact.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dealrec_tasks.llm.config import EffortConfig, LoRAConfig
from dealrec_tasks.llm.prompts import EncodedPrompt
from dealrec_tasks.progress import progress_bar

_LAYER = re.compile(r"\.layers\.(\d+)\.")


def attach_lora(model, lora: LoRAConfig, seed: int = 0):
    """A fresh peft LoRA on ``model`` (lora_B starts at zero, as in training); ``target_modules`` the model lacks
    are refused by name (peft raised NoMatchingPeftModuleError, a traceback)."""
    from peft import LoraConfig, get_peft_model

    from dealrec_tasks.errors import ConfigError

    # peft matches a target by the last part(s) of a module's dotted name
    names = [n for n, _ in model.named_modules()]
    missing = [t for t in lora.target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ConfigError(
            f"target_modules={list(lora.target_modules)}: the model has no {missing}; its layers: {linear}"
        )
    torch.manual_seed(seed)
    cfg = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, cfg)
    peft_model.eval()
    return peft_model


def select_lora_params(peft_model, which: str) -> dict[str, torch.nn.Linear]:
    """LoRA Linear modules by name: ``last_v_lora_B`` (the paper), ``last_layer`` or ``all``."""
    modules = {n: m for n, m in peft_model.named_modules() if re.search(r"\.lora_[AB]\.[^.]+$", n)}
    if not modules:
        raise ValueError("the model has no LoRA modules")
    last = max(int(_LAYER.search(n).group(1)) for n in modules)
    if which == "all":
        chosen = modules
    elif which == "last_layer":
        chosen = {n: m for n, m in modules.items() if int(_LAYER.search(n).group(1)) == last}
    else:
        chosen = {n: m for n, m in modules.items() if f".layers.{last}." in n and ".v_proj.lora_B." in n}
    if not chosen:  # e.g. the paper's last_v_lora_B without v_proj among the target modules
        from dealrec_tasks.errors import ConfigError

        raise ConfigError(f"params={which!r}: no LoRA parameter of the adapter matches (which target_modules?)")
    return chosen


def prefix_sharing_supported(names: Sequence[str]) -> bool:
    """Exact sharing needs every selected parameter in the last layer and none in k_proj (rotated keys)."""
    layers = {int(_LAYER.search(n).group(1)) for n in names}
    return len(layers) == 1 and not any(".k_proj." in n for n in names)


@dataclass
class _Capture:
    """Inputs and output-gradients of the selected LoRA Linears during one forward/backward."""

    modules: dict[str, torch.nn.Linear]
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    grads: dict[str, torch.Tensor] = field(default_factory=dict)
    handles: list = field(default_factory=list)

    def __enter__(self) -> _Capture:
        for name, module in self.modules.items():
            self.handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def _hook(self, name: str) -> Callable:
        def hook(module, args, output):
            self.inputs[name] = args[0].detach()  # [B, T, in]
            if output.requires_grad:
                output.register_hook(lambda g: self.grads.__setitem__(name, g.detach()))  # [B, T, out]

        return hook

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()

    def per_sample(self, name: str) -> torch.Tensor:
        """sum_t g_t x_t^T for every sample: [B, out, in]."""
        g, x = self.grads[name], self.inputs[name]
        return torch.einsum("bto,bti->boi", g.to(torch.float32), x.to(torch.float32))


def _labels(ids: torch.Tensor, mask: torch.Tensor, response_start: torch.Tensor | None) -> torch.Tensor:
    """Targets for next-token loss; -100 where not trained (padding, and the prompt when not train_on_inputs)."""
    labels = ids.masked_fill(mask == 0, -100)
    if response_start is not None:
        pos = torch.arange(ids.shape[1])[None, :]
        labels = labels.masked_fill(pos < response_start[:, None], -100)
    return labels


def _token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy per sample and the number of predicted tokens: [B], [B]."""
    shift_logits = logits[:, :-1].to(torch.float32)  # [B, T-1, V]
    shift_labels = labels[:, 1:]  # [B, T-1]
    ce = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=-100, reduction="none"
    ).view(shift_labels.shape)
    return ce.sum(1), (shift_labels != -100).sum(1)


def _pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


class EffortScorer:
    """Scores encoded prompts with one LoRA-equipped model; see the module docstring for the method."""

    def __init__(self, peft_model, pad_id: int, cfg: EffortConfig):
        self.model = peft_model
        self.pad_id = pad_id
        self.cfg = cfg
        self.modules = select_lora_params(peft_model, cfg.params)
        self.device = next(peft_model.parameters()).device
        self.use_prefix = cfg.shared_prefix and prefix_sharing_supported(list(self.modules))
        self._prefix_key: tuple[int, ...] | None = None

    # -- public -------------------------------------------------------------------------------------------
    def score(self, prompts: Sequence[EncodedPrompt], desc: str = "effort") -> np.ndarray:
        """Effort of every prompt, in input order; batches of similar length, halved on out-of-memory."""
        # Only the selected matrices need gradients: autograd then never records (or back-propagates through)
        # the layers below them.
        selected = {id(m.weight) for m in self.modules.values()}
        saved = {p: p.requires_grad for p in self.model.parameters()}
        for p in self.model.parameters():
            p.requires_grad_(id(p) in selected)
        try:
            return self._score_all(prompts, desc)
        finally:
            for p, flag in saved.items():
                p.requires_grad_(flag)

    def _score_all(self, prompts: Sequence[EncodedPrompt], desc: str) -> np.ndarray:
        order = np.argsort([len(p.own) for p in prompts], kind="stable")
        out = np.zeros(len(prompts), dtype=np.float64)
        batch_size = self.cfg.batch_size
        bar = progress_bar(len(prompts), desc=desc, unit="sample")
        pos = 0
        while pos < len(order):
            idx = order[pos : pos + batch_size]
            try:
                out[idx] = self._score_batch([prompts[i] for i in idx])
            except torch.OutOfMemoryError:
                if batch_size == 1:
                    raise
                batch_size = max(1, batch_size // 2)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            pos += len(idx)
            bar.update(len(idx))
        bar.close()
        return out

    # -- internals ----------------------------------------------------------------------------------------
    def _autocast(self):
        if self.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return torch.autocast("cpu", enabled=False)

    def _score_batch(self, prompts: Sequence[EncodedPrompt]) -> np.ndarray:
        prefixes = {tuple(p.prefix) for p in prompts}
        if self.use_prefix and len(prefixes) == 1 and len(prompts[0].prefix) >= 2:
            return self._score_shared_prefix(prompts)
        return self._score_full(prompts)

    def _score_full(self, prompts: Sequence[EncodedPrompt]) -> np.ndarray:
        ids, mask = _pad([p.input_ids for p in prompts], self.pad_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        starts = None if self.cfg.train_on_inputs else torch.tensor([len(p.input_ids) - p.n_response for p in prompts])
        labels = _labels(ids, mask, starts.to(self.device) if starts is not None else None)
        self.model.zero_grad(set_to_none=True)
        with _Capture(self.modules) as cap, self._autocast():
            logits = self.model(input_ids=ids, attention_mask=mask).logits
            loss_sum, count = _token_losses(logits, labels)
            (loss_sum / count.clamp(min=1)).sum().backward()
        sq = sum(cap.per_sample(n).pow(2).sum((1, 2)) for n in self.modules)
        return sq.sqrt().double().cpu().numpy()

    def _prepare_prefix(self, prefix: list[int]) -> None:
        """Run the prefix (all tokens but the last) once: cache, its constant gradient, LoRA inputs there."""
        key = tuple(prefix)
        if self._prefix_key == key:
            return
        from transformers import DynamicCache

        ids = torch.tensor([prefix[:-1]], device=self.device)
        # The cached positions predict prefix[1:], the last prefix token included: all the same for every sample.
        targets = torch.tensor(prefix[1:], device=self.device)
        self.model.zero_grad(set_to_none=True)
        with _Capture(self.modules) as cap, self._autocast():
            out = self.model(input_ids=ids, use_cache=True, cache=DynamicCache(config=self.model.config))
            count = torch.tensor(len(prefix) - 1 if self.cfg.train_on_inputs else 0)
            if count.item() > 0:
                ce = torch.nn.functional.cross_entropy(out.logits[0].to(torch.float32), targets, reduction="sum")
                ce.backward()
        self.prefix_grad = {n: (cap.per_sample(n)[0] if n in cap.grads else None) for n in self.modules}
        self.prefix_inputs = {n: cap.inputs[n][0] for n in self.modules}  # [P-1, in]
        self.prefix_count = int(count.item())
        cache = out.cache
        self.prefix_kv = [(layer.keys.detach(), layer.values.detach()) for layer in cache.layers]
        self._prefix_key = key

    def _score_shared_prefix(self, prompts: Sequence[EncodedPrompt]) -> np.ndarray:
        from transformers import DynamicCache

        self._prepare_prefix(prompts[0].prefix)
        n_cached = len(prompts[0].prefix) - 1
        batch = len(prompts)
        ids, mask = _pad([[p.prefix[-1], *p.own] for p in prompts], self.pad_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        starts = None if self.cfg.train_on_inputs else torch.tensor([1 + len(p.own) - p.n_response for p in prompts])
        labels = _labels(ids, mask, starts.to(self.device) if starts is not None else None)

        layer_of = {int(_LAYER.search(n).group(1)) for n in self.modules}.pop()
        needs_v = any(".v_proj." in n for n in self.modules)
        cache = DynamicCache(config=self.model.config)
        value_leaf = None
        for i, (k, v) in enumerate(self.prefix_kv):
            k_b = k.expand(batch, -1, -1, -1)  # [B, kv_heads, P-1, head_dim]
            v_b = v.expand(batch, -1, -1, -1)
            if i == layer_of and needs_v:
                value_leaf = v_b.clone().requires_grad_(True)
                v_b = value_leaf
            cache.update(k_b, v_b, i)
        full_mask = torch.cat([torch.ones(batch, n_cached, dtype=mask.dtype, device=self.device), mask], dim=1)
        positions = (n_cached + torch.arange(ids.shape[1], device=self.device))[None, :].expand(batch, -1)

        self.model.zero_grad(set_to_none=True)
        with _Capture(self.modules) as cap, self._autocast():
            logits = self.model(
                input_ids=ids, attention_mask=full_mask, position_ids=positions, cache=cache, use_cache=True
            ).logits
            loss_sum, count = _token_losses(logits, labels)
            total = count + self.prefix_count  # predicted tokens of the whole sample
            (loss_sum / total.clamp(min=1)).sum().backward()

        sq = torch.zeros(batch, dtype=torch.float32, device=self.device)
        for name in self.modules:
            grad = cap.per_sample(name) if name in cap.grads else 0.0  # [B, out, in], own tokens
            if self.prefix_grad[name] is not None:
                grad = grad + self.prefix_grad[name][None] / total[:, None, None].to(torch.float32)
            if value_leaf is not None and ".v_proj." in name:
                grad = grad + self._value_path(name, value_leaf.grad)
            sq += grad.pow(2).sum((1, 2)) if torch.is_tensor(grad) else 0.0
        return sq.sqrt().double().cpu().numpy()

    def _value_path(self, name: str, d_values: torch.Tensor) -> torch.Tensor:
        """Gradient reaching a v_proj LoRA matrix through the cached prefix values: [B, out, in].

        v_proj(x) = base(x) + scaling * B A x at every prefix position; d_values is dL/dv there.
        """
        batch, kv_heads, n, head_dim = d_values.shape
        dv = d_values.permute(0, 2, 1, 3).reshape(batch, n, kv_heads * head_dim).to(torch.float32)  # [B, P-1, out]
        lora_layer = self._lora_layer(name)
        scaling = lora_layer.scaling["default"]
        if ".lora_B." in name:
            a_out = self.prefix_inputs[name].to(torch.float32)  # lora_B's input = A x, [P-1, r]
            return scaling * torch.einsum("bto,tr->bor", dv, a_out)
        b_weight = lora_layer.lora_B["default"].weight.detach().to(torch.float32)  # [out, r]
        x = self.prefix_inputs[name].to(torch.float32)  # lora_A's input, [P-1, in]
        return scaling * torch.einsum("btr,ti->bri", dv @ b_weight, x)

    def _lora_layer(self, name: str):
        parent = name.rsplit(".lora_", 1)[0]
        return self.model.get_submodule(parent)


def effort_reference(peft_model, prompts: Sequence[EncodedPrompt], cfg: EffortConfig) -> np.ndarray:
    """The paper's way, for tests and benchmarks: one sample at a time, loss.backward(), norm of .grad."""
    modules = select_lora_params(peft_model, cfg.params)
    params = [m.weight for m in modules.values()]
    device = params[0].device
    out = []
    for p in prompts:
        ids = torch.tensor([p.input_ids], device=device)
        labels = ids.clone()
        if not cfg.train_on_inputs:
            labels[:, : len(p.input_ids) - p.n_response] = -100
        peft_model.zero_grad(set_to_none=True)
        peft_model(input_ids=ids, labels=labels).loss.backward()
        out.append(float(torch.sqrt(sum(q.grad.double().pow(2).sum() for q in params if q.grad is not None))))
    return np.asarray(out)


def prompt_digest(history_titles: list[str], target_title: str) -> str:
    """The identity of one sample's effort: the titles its prompt is made of, in order. With the tokenizer, the
    template (domain) and the cutoff fixed by the cache key, they decide the tokens and the loss mask, so a cached
    prompt is never tokenized again (tokenizing every prompt each day cost as much as the lake's size)."""
    text = "\x1f".join(history_titles) + "\x1e" + target_title
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def tokenizer_fingerprint(model_dir: str | Path) -> str:
    """The tokenizer files' content: a prompt digest stands for tokens only under one tokenizer."""
    d = Path(model_dir)
    h = hashlib.sha256()
    for f in sorted(d.glob("tokenizer*")) + sorted(d.glob("special_tokens_map.json")) + sorted(d.glob("*.model")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def cache_key(model_fingerprint: str, tokenizer: str, cfg: EffortConfig, lora_settings: dict) -> str:
    """Which cache a score belongs to: the base model and its tokenizer, the effort settings (domain and cutoff
    included, less ``batch_size``: batches give the scores of batch size 1) and the LoRA settings. A changed base
    model or config starts an empty cache. ``digest``: what a prompt digest hashes (titles since v2)."""
    settings = {k: v for k, v in cfg.to_dict().items() if k != "batch_size"}
    identity = {"model": model_fingerprint, "tokenizer": tokenizer, "effort": settings, "lora": lora_settings}
    blob = json.dumps(identity | {"digest": "titles-v2"}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
