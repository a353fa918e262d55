"""LoRA fine-tuning (BIGRec) on a coreset, with early stopping on validation loss and crash-safe resume.

Checkpoints are written after every epoch (adapter, optimizer, RNG states, history) to a fresh directory and
published by atomically replacing ``latest.json``; a rerun after a crash resumes from there and, because the data
order is a function of (seed, epoch) and the RNG states are restored, ends with the same adapter as a run that
never crashed.

``latest.json`` records the identity of every input (``resume_inputs``: the exact training and early-stopping
tokens, the base model's weights, the fine-tune and LoRA settings). Only a run with the same inputs resumes; any
other run clears the folder and starts fresh, so an adapter trained on yesterday's coreset can never come back
under today's name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from dealrec_tasks.llm.config import FinetuneConfig, LoRAConfig
from dealrec_tasks.llm.effort import attach_lora
from dealrec_tasks.llm.prompts import EncodedPrompt
from dealrec_tasks.progress import progress

LATEST = "latest.json"
BEST = "adapter"
PRESET_FILE = "dealrec_finetune_preset.json"
PRESET_FIELDS = {"finetune": ("lr", "epochs", "train_on_inputs"), "lora": ("r", "alpha", "target_modules")}
# What each part of ``resume_inputs`` is, for the line that says why a resume state was not used.
RESUME_PARTS = {
    "training": "other training data",
    "early_stopping": "other early-stopping prompts",
    "pad_id": "another pad token",
    "base_model": "another base model",
    "finetune": "other fine-tune settings",
    "lora": "other LoRA settings",
}


def resolve_preset(
    model_dir: str | Path, cfg: FinetuneConfig, lora: LoRAConfig
) -> tuple[FinetuneConfig, LoRAConfig, dict]:
    """The settings fine-tuning uses on ``model_dir``: with ``cfg.preset == "auto"`` and a preset file in the model's
    directory, each preset setting still at its BIGRec default takes the preset's value (a 7B model's learning rate
    barely moves a tiny model; the preset was chosen on validation users for this model). Returns the settings and
    what was taken from the preset ({} when nothing).

    The preset belongs to the base model, not to the code: another model directory keeps BIGRec's defaults."""
    path = Path(model_dir) / PRESET_FILE
    if cfg.preset != "auto" or not path.is_file():
        return cfg, lora, {}
    preset = json.loads(path.read_text())
    defaults = {"finetune": FinetuneConfig(), "lora": LoRAConfig()}
    current = {"finetune": cfg, "lora": lora}
    taken: dict = {}
    for part, fields in PRESET_FIELDS.items():
        values = preset.get(part, {})
        changes = {
            f: tuple(values[f]) if isinstance(values[f], list) else values[f]
            for f in fields
            if f in values and getattr(current[part], f) == getattr(defaults[part], f)
        }
        if changes:
            current[part] = dataclasses.replace(current[part], **changes)
            taken[part] = changes
    if taken:
        taken["preset"] = preset.get("name", str(path))
    return current["finetune"], current["lora"], taken


def batch_tensors(prompts: Sequence[EncodedPrompt], pad_id: int, train_on_inputs: bool):
    """Right-padded ids, attention mask and labels (-100 on padding, and on the prompt unless train_on_inputs)."""
    width = max(len(p.input_ids) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, p in enumerate(prompts):
        seq = torch.tensor(p.input_ids)
        ids[i, : len(seq)] = seq
        mask[i, : len(seq)] = 1
        start = 0 if train_on_inputs else len(seq) - p.n_response
        labels[i, start : len(seq)] = seq[start:]
    return ids, mask, labels


def per_sample_loss(model, prompts: Sequence[EncodedPrompt], pad_id: int, train_on_inputs: bool) -> torch.Tensor:
    """Mean next-token loss of each sample: [B] (a sample's loss never depends on its batch mates)."""
    device = next(model.parameters()).device
    ids, mask, labels = (t.to(device) for t in batch_tensors(prompts, pad_id, train_on_inputs))
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()  # [B, T-1, V]
    target = labels[:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100, reduction="none")
    return ce.sum(1) / (target != -100).sum(1).clamp(min=1)


@torch.no_grad()
def mean_loss(model, prompts: Sequence[EncodedPrompt], pad_id: int, train_on_inputs: bool, batch: int) -> float:
    model.eval()
    total = 0.0
    for i in range(0, len(prompts), batch):
        total += float(per_sample_loss(model, prompts[i : i + batch], pad_id, train_on_inputs).sum())
    return total / max(len(prompts), 1)


def prompts_digest(prompts: Sequence[EncodedPrompt]) -> str:
    """The exact token ids, loss masks (``n_response``) and order of ``prompts``: what training reads, whichever
    coreset or sampling produced it."""
    h = hashlib.sha256()
    for p in prompts:
        ids = np.asarray(p.input_ids, dtype=np.int64)
        h.update(np.asarray([len(ids), p.n_response], dtype=np.int64).tobytes())
        h.update(ids.tobytes())
    return h.hexdigest()


def weights_fingerprint(model) -> str:
    """The base model's weights and buffers as loaded: exact (a file fingerprint misses a copy rewritten in place),
    and cheap next to training (one read of the weights)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        h.update(flat.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def resume_inputs(
    base_model,
    pad_id: int,
    train: Sequence[EncodedPrompt],
    valid: Sequence[EncodedPrompt],
    cfg: FinetuneConfig,
    lora: LoRAConfig,
) -> dict:
    """Identity of everything a run's adapter depends on; a resume state is only used when it records the same."""
    inputs = {
        "training": prompts_digest(train),
        "early_stopping": prompts_digest(valid),
        "pad_id": pad_id,
        "base_model": weights_fingerprint(base_model),
        "finetune": cfg.to_dict(),
        "lora": lora.to_dict(),
    }
    return json.loads(json.dumps(inputs))  # as stored: tuples compare equal to their lists


def _stale_reason(out: Path, inputs: dict) -> str | None:
    """Why the resume state in ``out`` must not be used (None: it is this run's); a state that cannot be read or
    names a missing checkpoint is not used either."""
    try:
        latest = json.loads((out / LATEST).read_text())
        recorded = dict(latest["inputs"])
        checkpoint = out / "checkpoints" / str(latest["checkpoint"])
        int(latest["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return "unreadable or from an older version (no recorded inputs)"
    differ = [RESUME_PARTS[k] for k in RESUME_PARTS if recorded.get(k) != inputs[k]]
    if differ:
        return "for " + ", ".join(differ)
    if not (checkpoint / "trainer_state.pt").is_file():
        return f"naming a missing checkpoint ({checkpoint.name})"
    return None


def _clear_resume_state(out: Path) -> None:
    """Remove every file a run leaves in ``out`` (the pointer first: an interrupted clear leaves nothing to resume)."""
    (out / LATEST).unlink(missing_ok=True)
    for leftover in out.glob(f"{Path(LATEST).stem}.tmp-*"):
        leftover.unlink(missing_ok=True)
    for folder in [out / "checkpoints", out / BEST, *out.glob(f".{BEST}.tmp-*")]:
        shutil.rmtree(folder, ignore_errors=True)


def _atomic_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(f".tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _save_checkpoint(out: Path, epoch: int, model, optimizer, state: dict) -> Path:
    ckpt = out / "checkpoints" / f"epoch-{epoch:03d}"
    tmp = ckpt.with_name(ckpt.name + f".tmp-{uuid.uuid4().hex[:8]}")
    model.save_pretrained(tmp)
    torch.save(
        {"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state()},
        tmp / "trainer_state.pt",
    )
    if ckpt.exists():
        shutil.rmtree(ckpt)
    tmp.rename(ckpt)
    _atomic_json(out / LATEST, state | {"epoch": epoch, "checkpoint": ckpt.name})
    for old in (out / "checkpoints").glob("epoch-*"):  # only the latest is needed to resume
        if old.name != ckpt.name:
            shutil.rmtree(old, ignore_errors=True)
    return ckpt


def _load_adapter_weights(model, adapter_dir: Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(adapter_dir / "adapter_model.safetensors")))


def finetune(
    base_model,
    pad_id: int,
    train: Sequence[EncodedPrompt],
    valid: Sequence[EncodedPrompt],
    cfg: FinetuneConfig,
    lora: LoRAConfig,
    out_dir: str | Path,
    on_epoch_end: Callable[[int, dict], None] | None = None,
) -> dict:
    """Train a LoRA adapter on ``train``; the best epoch's adapter (by ``valid`` loss) ends in ``out_dir/adapter``.

    Resumes from ``out_dir/latest.json`` when a previous run with the same inputs (``resume_inputs``) was interrupted
    or finished; a state from other inputs is cleared and training starts fresh, saying why in ``fresh_start``.
    Returns the history and metrics.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not train:
        raise ValueError("finetune: the training set is empty")
    inputs = resume_inputs(base_model, pad_id, train, valid, cfg, lora)  # before LoRA changes the base model
    model = attach_lora(base_model, lora, seed=cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr)
    state = {"history": [], "best_epoch": None, "best_valid_loss": math.inf, "stale": 0, "done": False}
    start_epoch = 0
    stale_reason = _stale_reason(out, inputs) if (out / LATEST).exists() else None
    if (out / LATEST).exists() and stale_reason is None:
        latest = json.loads((out / LATEST).read_text())
        ckpt = out / "checkpoints" / latest["checkpoint"]
        _load_adapter_weights(model, ckpt)
        trainer = torch.load(ckpt / "trainer_state.pt", weights_only=True)
        optimizer.load_state_dict(trainer["optimizer"])
        torch.set_rng_state(trainer["torch_rng"])
        state = {k: latest[k] for k in state}
        start_epoch = latest["epoch"] + 1
    else:  # also without latest.json: an adapter left by a run cut short in its first epoch is not this run's
        _clear_resume_state(out)
    state["resumed_from_epoch"] = start_epoch if start_epoch else None
    state["fresh_start"] = f"resume state in {out} {stale_reason}: starting fresh (cleared)" if stale_reason else None
    if state["done"]:
        return state | {"adapter_dir": str(out / BEST)}

    accumulation = cfg.batch_size // cfg.micro_batch_size
    started = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(train))
        steps = math.ceil(len(order) / cfg.batch_size)
        losses = []
        for step in progress(range(steps), desc=f"fine-tune epoch {epoch + 1}/{cfg.epochs}", unit="step"):
            rows = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            optimizer.zero_grad(set_to_none=True)
            for m in range(accumulation):
                micro = rows[m * cfg.micro_batch_size : (m + 1) * cfg.micro_batch_size]
                if len(micro) == 0:
                    break
                loss = per_sample_loss(model, [train[i] for i in micro], pad_id, cfg.train_on_inputs)
                (loss.sum() / len(rows)).backward()  # mean over the optimizer step's samples
                losses.append(float(loss.detach().mean()))
            optimizer.step()
        valid_loss = mean_loss(model, valid, pad_id, cfg.train_on_inputs, cfg.micro_batch_size) if valid else None
        train_loss = float(np.mean(losses))
        state["history"].append({"epoch": epoch + 1, "train_loss": train_loss, "valid_loss": valid_loss})
        score = valid_loss if valid_loss is not None else train_loss
        if score < state["best_valid_loss"]:
            state.update(best_valid_loss=score, best_epoch=epoch + 1, stale=0)
            tmp = out / f".{BEST}.tmp-{uuid.uuid4().hex[:8]}"
            model.save_pretrained(tmp)
            if (out / BEST).exists():
                shutil.rmtree(out / BEST)
            tmp.rename(out / BEST)
        else:
            state["stale"] += 1
        state["done"] = state["stale"] >= cfg.patience or epoch + 1 == cfg.epochs
        _save_checkpoint(out, epoch, model, optimizer, state | {"inputs": inputs})
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, state)
        if state["done"]:
            break
    state["train_seconds"] = time.perf_counter() - started
    return state | {"adapter_dir": str(out / BEST)}
