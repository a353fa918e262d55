"""The embedded LLM shipped in the repository: a pretrained tiny LLaMA directory with a manifest.

Pretraining the embedded model takes an hour or more on a CPU, so it is done once (``scripts/build_embedded_llm.py``)
and the result is versioned in the package like a downloaded checkpoint: the demo, the tests and the daily pipeline
load it with ``from_pretrained`` and pretrain nothing. The manifest (written last) records its config, data cut,
steps, final loss, the command that rebuilds it and the checksum of every file; ``shipped_model_dir`` refuses a
directory whose files do not match it.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

from dealrec_tasks.errors import ConfigError

VERSION = "games-tiny-v1"
SHIPPED_DIR = Path(__file__).resolve().parent / "embedded" / VERSION
MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _model_files(model_dir: Path) -> list[Path]:
    return sorted(p for p in model_dir.iterdir() if p.is_file() and p.name != MANIFEST)


def write_manifest(model_dir: Path, info: dict, data_cut: dict, command: str, build_seconds: float) -> dict:
    """``manifest.json`` for a built model directory (``info``: ``build_tiny_llm``'s marker), written last."""
    model_dir = Path(model_dir)
    run = info.get("pretraining") or {}
    manifest = {
        "version": VERSION,
        "config": info["config"],
        "catalogue": info["catalogue"],
        "data_cut": data_cut,
        "corpus": info.get("corpus"),
        "steps": run.get("steps_done"),
        "steps_budget": run.get("steps_budget"),
        "stopped_by": run.get("stopped_by"),
        "final_loss": run.get("loss_last_50"),
        "pretraining": run,
        "parameters": info["parameters"],
        "build_seconds": round(build_seconds, 1),
        "command": command,
        "files": {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in _model_files(model_dir)},
    }
    tmp = model_dir / f".{MANIFEST}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, model_dir / MANIFEST)
    return manifest


def read_manifest(model_dir: Path = SHIPPED_DIR) -> dict:
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        raise ConfigError(f"embedded model {model_dir}: no {MANIFEST} (rebuild: python scripts/build_embedded_llm.py)")
    return json.loads(path.read_text())


def verify(model_dir: Path = SHIPPED_DIR) -> dict:
    """The manifest, after checking that every file it lists is there with its checksum and nothing else is."""
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    listed = manifest["files"]
    present = {p.name for p in _model_files(model_dir)}
    if present != set(listed):
        extra, missing = sorted(present - set(listed)), sorted(set(listed) - present)
        raise ConfigError(f"{model_dir}: files differ from {MANIFEST} (extra {extra}, missing {missing})")
    for name, entry in listed.items():
        if _sha256(model_dir / name) != entry["sha256"]:
            raise ConfigError(f"embedded model {model_dir / name}: sha256 differs from {MANIFEST}")
    return manifest


def shipped_model_dir() -> str:
    """The shipped model's directory, verified against its manifest."""
    verify(SHIPPED_DIR)
    return str(SHIPPED_DIR)
