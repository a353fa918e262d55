"""The shipped embedded LLM (manifest, checksums, data cut) and the fine-tuning preset that follows a base model."""

from __future__ import annotations

import json
import shutil

import pytest

from dealrec_tasks.errors import ConfigError
from dealrec_tasks.llm import shipped
from dealrec_tasks.llm.config import FinetuneConfig, LoRAConfig
from dealrec_tasks.llm.finetune import PRESET_FILE, resolve_preset
from dealrec_tasks.llm.tiny import load

REPLAY_DAY_25 = "2026-01-25"  # the Games replay starts on 2026-01-01; validation and test are its last days


def test_the_shipped_model_is_verified_and_loads_like_a_checkpoint():
    manifest = shipped.verify(shipped.SHIPPED_DIR)
    total = sum(f["bytes"] for f in manifest["files"].values())
    assert total <= 50 * 2**20, f"{total} bytes: over the 50 MB the repository allows"
    for key in ("config", "data_cut", "steps", "final_loss", "command", "files", "version"):
        assert manifest[key] is not None, key
    assert (
        manifest["corpus"]["last_day"] <= REPLAY_DAY_25 and not manifest["data_cut"]["holds_validation_or_test_targets"]
    )
    assert manifest["steps"] == manifest["pretraining"]["steps_done"] > 0
    assert manifest["final_loss"] < manifest["pretraining"]["loss_first_50"]
    tokenizer, model = load(shipped.SHIPPED_DIR)
    assert sum(p.numel() for p in model.parameters()) == manifest["parameters"]
    assert tokenizer.decode(tokenizer("Halo 5: Guardians - Xbox One")["input_ids"], skip_special_tokens=True).strip()


def test_a_changed_or_extra_file_is_refused(tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(shipped.SHIPPED_DIR, copy)
    shipped.verify(copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="model.safetensors: sha256 differs"):
        shipped.verify(copy)
    shutil.copy(shipped.SHIPPED_DIR / "model.safetensors", weights)
    (copy / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"extra \['notes.txt'\]"):
        shipped.verify(copy)
    shutil.rmtree(copy)
    copy.mkdir()
    with pytest.raises(ConfigError, match="no manifest.json"):
        shipped.verify(copy)


def test_the_shipped_model_carries_its_fine_tuning_preset_chosen_on_validation_users():
    preset = json.loads((shipped.SHIPPED_DIR / PRESET_FILE).read_text())
    assert preset["chosen_on"]["users"] > 0 and "validation" in preset["chosen_on"]["what"]
    cfg, lora, taken = resolve_preset(shipped.SHIPPED_DIR, FinetuneConfig(), LoRAConfig())
    assert taken["preset"] == preset["name"]
    assert cfg.lr == preset["finetune"]["lr"] != FinetuneConfig().lr


def _model_with_preset(tmp_path, preset: dict):
    (tmp_path / PRESET_FILE).write_text(json.dumps(preset))
    return tmp_path


def test_the_preset_replaces_only_settings_left_at_their_bigrec_default(tmp_path):
    model = _model_with_preset(
        tmp_path,
        {"name": "p", "finetune": {"lr": 2e-3, "epochs": 3}, "lora": {"r": 16, "target_modules": ["q_proj", "o_proj"]}},
    )
    cfg, lora, taken = resolve_preset(model, FinetuneConfig(), LoRAConfig())
    assert (cfg.lr, cfg.epochs, lora.r, lora.target_modules, lora.alpha) == (2e-3, 3, 16, ("q_proj", "o_proj"), 16)
    assert taken == {
        "finetune": {"lr": 2e-3, "epochs": 3},
        "lora": {"r": 16, "target_modules": ("q_proj", "o_proj")},
        "preset": "p",
    }
    cfg, lora, taken = resolve_preset(model, FinetuneConfig(epochs=2, lr=5e-4), LoRAConfig(r=4))
    assert (cfg.lr, cfg.epochs, lora.r) == (5e-4, 2, 4) and taken["lora"] == {"target_modules": ("q_proj", "o_proj")}
    cfg, lora, taken = resolve_preset(model, FinetuneConfig(preset="none"), LoRAConfig())
    assert (cfg, lora, taken) == (FinetuneConfig(preset="none"), LoRAConfig(), {})


def test_a_model_without_a_preset_keeps_bigrec_defaults(tmp_path):
    assert resolve_preset(tmp_path, FinetuneConfig(), LoRAConfig()) == (FinetuneConfig(), LoRAConfig(), {})
    with pytest.raises(ConfigError, match="preset='bigrec': one of auto, none"):
        FinetuneConfig(preset="bigrec")
