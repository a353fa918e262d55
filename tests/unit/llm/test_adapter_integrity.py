"""The published adapter reaches the model only as published: names kept inside the copy, checksums verified,
the temporary copy removed; and a crafted dt is refused by every LLM step before it names a path."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from dealrec_tasks.errors import ConfigError, InputError
from dealrec_tasks.llm.config import EffortConfig, EvalConfig, FinetuneConfig, LoRAConfig
from dealrec_tasks.steps import llm as llm_steps
from dealrec_tasks.storage import Lake, sha256
from tests.conftest import synthetic_lake

DT = "2026-01-05"
EVAL = EvalConfig(num_beams=1, max_new_tokens=4)
CRAFTED = "2026-01-04/../../samples/dt=2026-01-04"


@pytest.fixture(scope="module")
def source(tmp_path_factory, tiny_dir) -> Path:
    """A lake with a published adapter (fine-tuned once for the module); tests tamper with copies of it."""
    root = tmp_path_factory.mktemp("adapter-lake")
    lake = synthetic_lake(root / "lake", DT, 8, users=40, items=120, days=5, events_per_day=60)
    cfg = FinetuneConfig(epochs=1, batch_size=8, micro_batch_size=8)
    llm_steps.finetune(lake, DT, tiny_dir, cfg, LoRAConfig(), str(root / "work"), from_samples=8)
    return root / "lake"


@pytest.fixture
def lake(source, tmp_path) -> Lake:
    shutil.copytree(source, tmp_path / "lake")
    return Lake(str(tmp_path / "lake"))


@pytest.fixture
def tmp_root(tmp_path, monkeypatch) -> Path:
    """Temporary folders of the code under test go here, so a leftover or a write beside them is seen."""
    root = tmp_path / "tmp" / "inner"
    root.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def _adapter_dir(lake: Lake) -> Path:
    return Path(lake.partition("adapters", DT).removeprefix("file://"))


def _edit_manifest(lake: Lake, edit) -> None:
    path = _adapter_dir(lake) / "_manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def _leftovers(root: Path) -> list[Path]:
    return sorted(root.parent.rglob("adapter_config.json"))


@pytest.mark.parametrize("name", ["../evil_written.txt", "..", "sub/evil.txt", "sub\\..\\evil.txt", "evil\x00.txt"])
def test_a_manifest_entry_outside_the_copy_is_refused_and_nothing_is_written(lake, tiny_dir, tmp_root, name):
    payload = b"written outside the adapter folder"
    (_adapter_dir(lake).parent / "evil_written.txt").write_bytes(payload)  # what "../evil_written.txt" reads

    def add(manifest):
        manifest["files"][name] = {"sha256": sha256(payload), "bytes": len(payload)}

    _edit_manifest(lake, add)
    with pytest.raises(InputError, match="not a plain file name") as err:
        llm_steps.evaluate(lake, DT, tiny_dir, EVAL, max_users=2)
    message = str(err.value)
    assert "adapters/dt=2026-01-05/_manifest.json" in message and repr(name) in message and "\n" not in message
    assert not list(tmp_root.parent.rglob("evil*"))  # neither beside the temporary folder nor in it
    assert _leftovers(tmp_root) == []


def test_an_absolute_manifest_entry_is_refused(lake, tiny_dir, tmp_root, tmp_path):
    target = tmp_path / "abs-evil.txt"

    def add(manifest):
        manifest["files"][str(target)] = {"sha256": sha256(b"x"), "bytes": 1}

    _edit_manifest(lake, add)
    with pytest.raises(InputError, match=r"file entry '/.*abs-evil\.txt' is not a plain file name"):
        llm_steps.evaluate(lake, DT, tiny_dir, EVAL, max_users=2)
    assert not target.exists()


def test_flipped_adapter_weights_are_refused_before_evaluation(lake, tiny_dir, tmp_root):
    weights = _adapter_dir(lake) / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # in the tensor data: still a loadable file, with other weights
    weights.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"adapters/dt=2026-01-05/adapter_model\.safetensors: checksum differs"):
        llm_steps.evaluate(lake, DT, tiny_dir, EVAL, max_users=2)
    assert lake.manifest("evaluation", DT) is None  # nothing evaluated, nothing published
    assert _leftovers(tmp_root) == []


def test_the_adapter_copy_is_removed_after_evaluation_and_on_error(lake, tiny_dir, tmp_root, monkeypatch):
    result = llm_steps.evaluate(lake, DT, tiny_dir, EVAL, max_users=2)
    assert result.counts["users"] == 2
    assert _leftovers(tmp_root) == []

    import peft

    def broken(*_a, **_k):
        raise RuntimeError("cannot load")

    monkeypatch.setattr(peft.PeftModel, "from_pretrained", broken)
    with pytest.raises(RuntimeError, match="cannot load"):  # other users: not the published evaluation's no-op
        llm_steps.evaluate(lake, DT, tiny_dir, EVAL, max_users=3)
    assert _leftovers(tmp_root) == []


def test_the_local_adapter_is_the_published_one(lake):
    manifest = lake.require_manifest("adapters", DT)
    with llm_steps.local_adapter(lake, DT) as local:
        assert {p.name: sha256(p.read_bytes()) for p in local.iterdir()} == {
            name: entry["sha256"] for name, entry in manifest["files"].items()
        }
    assert not local.exists()


@pytest.mark.parametrize("dt", [CRAFTED, "2026-01-05" + "x" * 5000, "2026-02-30", "2026-01-05\n"])
def test_a_crafted_dt_is_refused_in_one_line_by_every_llm_step(lake, tiny_dir, tmp_path, dt):
    work = tmp_path / "work"
    root = Path(lake.root.removeprefix("file://"))
    before = sorted(root.rglob("*"))
    calls = {
        "effort": lambda: llm_steps.effort(lake, dt, tiny_dir, EffortConfig(), LoRAConfig()),
        "merge-effort": lambda: llm_steps.merge_effort(lake, dt, 1),
        "finetune": lambda: llm_steps.finetune(lake, dt, tiny_dir, FinetuneConfig(), LoRAConfig(), str(work), 8),
        "evaluate": lambda: llm_steps.evaluate(lake, dt, tiny_dir, EVAL, max_users=2),
    }
    for step, call in calls.items():
        with pytest.raises(ConfigError, match=r"^dt=.*: ") as err:
            call()
        assert "\n" not in str(err.value), step
    assert not work.exists() and sorted(root.rglob("*")) == before  # refused before anything was written
