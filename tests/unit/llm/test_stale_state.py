"""State left on disk by an earlier run is only used for the same inputs: a fine-tune resume state from another
coreset, base model or LoRA setting starts a fresh run (and is cleared), and an item embedding cache that fails its
checksum (a flipped byte, a cut-off file, another writer's array) is recomputed, never ranked with."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pytest
import torch

from dealrec_tasks.errors import InputError
from dealrec_tasks.llm import finetune as ft
from dealrec_tasks.llm.config import EvalConfig, FinetuneConfig, LoRAConfig
from dealrec_tasks.llm.effort import attach_lora
from dealrec_tasks.llm.evaluate import embed_for_grounding, grounded_evaluation
from dealrec_tasks.llm.prompts import EncodedPrompt, PromptTemplate, encode
from dealrec_tasks.llm.tiny import load
from dealrec_tasks.steps import llm as llm_steps
from dealrec_tasks.storage import Lake
from tests.conftest import synthetic_lake
from tests.unit.llm.conftest import random_prompts

CFG = FinetuneConfig(epochs=2, patience=5, batch_size=8, micro_batch_size=4, lr=5e-3)
DT = "2026-01-05"


def _adapter_bytes(folder) -> bytes:
    return (folder / ft.BEST / "adapter_model.safetensors").read_bytes()


def _run(tiny_dir, train, valid, out, cfg=CFG, lora=LoRAConfig(), on_epoch_end=None, change_base=None):
    tok, model = load(tiny_dir)
    if change_base is not None:
        change_base(model)
    return ft.finetune(model, tok.pad_token_id, train, valid, cfg, lora, out, on_epoch_end)


class Crash(Exception):
    pass


def _crash_after_one(epoch, state):
    if epoch == 1:
        raise Crash


def test_an_interrupted_run_on_another_coreset_is_not_resumed(tiny_dir, titles, tmp_path):
    """The tester's case: a run on 12 rows stops after epoch 1; the coreset is replaced by 20 other rows. The next
    run trains on the 20 rows from epoch 1, exactly as a run in an empty folder does."""
    tok, _ = load(tiny_dir)
    old, new = random_prompts(tok, titles, 12, 0), random_prompts(tok, titles, 20, 1)
    valid = random_prompts(tok, titles, 6, 2)
    with pytest.raises(Crash):
        _run(tiny_dir, old, valid, tmp_path / "work", on_epoch_end=_crash_after_one)
    state = _run(tiny_dir, new, valid, tmp_path / "work")
    straight = _run(tiny_dir, new, valid, tmp_path / "straight")
    assert state["resumed_from_epoch"] is None
    assert state["history"] == straight["history"] and len(state["history"]) == CFG.epochs
    assert _adapter_bytes(tmp_path / "work") == _adapter_bytes(tmp_path / "straight")
    assert "other training data" in state["fresh_start"] and "starting fresh" in state["fresh_start"]
    # The same coreset again: the finished state is this run's, nothing is trained.
    again = _run(tiny_dir, new, valid, tmp_path / "work")
    assert again["done"] and again["resumed_from_epoch"] == CFG.epochs and again["fresh_start"] is None


def test_a_finished_run_of_another_base_model_or_lora_is_not_reused(tiny_dir, titles, tmp_path):
    tok, _ = load(tiny_dir)
    train, valid = random_prompts(tok, titles, 12, 3), random_prompts(tok, titles, 6, 4)
    first = _run(tiny_dir, train, valid, tmp_path / "work")
    first_adapter = _adapter_bytes(tmp_path / "work")

    def another_base(model):
        with torch.no_grad():
            model.model.norm.weight.mul_(1.5)  # same architecture and files' names, other weights

    other_base = _run(tiny_dir, train, valid, tmp_path / "work", change_base=another_base)
    assert other_base["resumed_from_epoch"] is None and "another base model" in other_base["fresh_start"]
    assert _adapter_bytes(tmp_path / "work") != first_adapter
    other_lora = _run(tiny_dir, train, valid, tmp_path / "work", lora=LoRAConfig(r=4))
    assert other_lora["resumed_from_epoch"] is None and "other LoRA settings" in other_lora["fresh_start"]
    back = _run(tiny_dir, train, valid, tmp_path / "work")  # the first inputs again: trained again, same result
    assert back["history"] == first["history"] and _adapter_bytes(tmp_path / "work") == first_adapter


def test_a_run_on_other_data_that_fails_in_its_first_epoch_leaves_nothing_to_publish(tiny_dir, titles, tmp_path):
    """Clearing happens before training: a new run that dies before its first checkpoint leaves neither the old
    run's resume pointer nor its adapter behind, so a retry cannot resume or publish it."""
    tok, _ = load(tiny_dir)
    train, valid = random_prompts(tok, titles, 12, 5), random_prompts(tok, titles, 6, 6)
    _run(tiny_dir, train, valid, tmp_path / "work")
    assert (tmp_path / "work" / ft.LATEST).exists() and (tmp_path / "work" / ft.BEST).exists()
    broken = list(train)
    broken[-1] = EncodedPrompt(train[-1].prefix, train[-1].own[:-1] + [10**6] + train[-1].own[-1:], 2)
    with pytest.raises(IndexError):  # a token id outside the vocabulary: the forward pass fails in epoch 1
        _run(tiny_dir, broken, valid, tmp_path / "work")
    assert not (tmp_path / "work" / ft.LATEST).exists()
    assert not (tmp_path / "work" / ft.BEST).exists()
    assert not list((tmp_path / "work").glob("checkpoints/*"))


def test_an_unreadable_resume_pointer_starts_fresh(tiny_dir, titles, tmp_path):
    tok, _ = load(tiny_dir)
    train, valid = random_prompts(tok, titles, 12, 7), random_prompts(tok, titles, 6, 8)
    work = tmp_path / "work"
    work.mkdir()
    (work / ft.LATEST).write_text(json.dumps({"epoch": 0, "checkpoint": "epoch-000", "config": CFG.to_dict()}))
    state = _run(tiny_dir, train, valid, work)
    assert state["resumed_from_epoch"] is None and "older version" in state["fresh_start"]
    assert len(state["history"]) == CFG.epochs


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Lake:
    return synthetic_lake(tmp_path_factory.mktemp("lake"), DT, 8, users=40, items=120, days=5, events_per_day=60)


def _publish_coreset(lake: Lake, n: int) -> None:
    samples = lake.read("samples", DT, "samples.parquet")
    train = [r for r in samples.to_pylist() if r["split"] == "train"]
    assert len(train) >= n
    lake.publish("coreset", DT, {"coreset.parquet": pa.Table.from_pylist(train[:n], schema=samples.schema)})


def test_finetune_step_after_the_coreset_is_replaced_trains_the_new_one(lake, tiny_dir, tmp_path):
    """`select --n 20` replaces a 12-row coreset of the same day: the step trains on the 20 rows from scratch
    (it used to resume the 12-row run's finished state and publish its adapter under the new coreset's name)."""
    cfg = FinetuneConfig(epochs=2, batch_size=8, micro_batch_size=8)
    _publish_coreset(lake, 12)
    first = llm_steps.finetune(lake, DT, tiny_dir, cfg, LoRAConfig(), str(tmp_path))
    assert first.counts["train_samples"] == 12
    first_adapter = lake.require_manifest("adapters", DT)["files"]["adapter_model.safetensors"]["sha256"]
    _publish_coreset(lake, 20)
    second = llm_steps.finetune(lake, DT, tiny_dir, cfg, LoRAConfig(), str(tmp_path))
    manifest = lake.require_manifest("adapters", DT)
    assert second.changed and second.counts["train_samples"] == 20
    assert "resumed_from_epoch" not in second.counts and second.counts["epochs"] == cfg.epochs
    assert manifest["files"]["adapter_model.safetensors"]["sha256"] != first_adapter
    assert any("other training data" in note and "starting fresh" in note for note in second.notes)
    # Unchanged coreset: a no-op, as before.
    assert not llm_steps.finetune(lake, DT, tiny_dir, cfg, LoRAConfig(), str(tmp_path)).changed


EVAL = EvalConfig(num_beams=2, max_new_tokens=8, batch_size=4, embed_batch_size=16, popularity_aware=False)


def _corrupt(path, how: str, rows: list[int]) -> None:
    """Damage the cached array the way a disk, a cut-off copy or a foreign writer would."""
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
        return
    emb = np.load(path)
    header = len(data) - emb.nbytes
    if how == "flipped_byte":
        offset = header + rows[0] * emb.shape[1] * 4 + 2  # inside a float of the first target's row
        data[offset] ^= 0x10
        path.write_bytes(bytes(data))
    elif how == "rows_rewritten":  # a valid .npy whose target rows lie far from every query
        emb[rows] = 1e3
        np.save(path, emb)


@pytest.mark.parametrize("how", ["flipped_byte", "rows_rewritten", "truncated"])
def test_a_damaged_item_cache_gives_the_metrics_of_no_cache(tiny_dir, titles, tmp_path, how):
    """The tester's case: a corrupted items-*.npy silently changed NDCG@20. Each user's target is the item the
    uncached run ranks first, so a damaged target row shows in the metrics."""
    tok, model = load(tiny_dir)
    prompts = [encode(tok, PromptTemplate(), titles[i : i + 3], None, 512) for i in range(6)]
    no_cache = grounded_evaluation(model, tok, prompts, [[0]] * 6, titles, EVAL, tiny_dir)
    targets = [[int(row[0])] for row in no_cache["topk"]]
    reference = grounded_evaluation(model, tok, prompts, targets, titles, EVAL, tiny_dir)
    assert reference["metrics"]["recall@10"] == 1.0
    cache = tmp_path / "cache"
    cached = grounded_evaluation(model, tok, prompts, targets, titles, EVAL, tiny_dir, cache)
    assert cached["metrics"] == reference["metrics"]
    (path,) = cache.glob("items-*.npy")
    _corrupt(path, how, [t[0] for t in targets])
    again = grounded_evaluation(model, tok, prompts, targets, titles, EVAL, tiny_dir, cache)
    assert again["metrics"] == reference["metrics"]
    assert np.array_equal(again["topk"], reference["topk"])
    items, _ = embed_for_grounding(model, tok, [], titles, EVAL, tiny_dir)
    served, _ = embed_for_grounding(model, tok, [], titles, EVAL, tiny_dir, cache)
    assert np.array_equal(served, items)  # the replaced file passes its check and holds the right array
    assert len(again["notes"]) == 1 and str(path) in again["notes"][0]


def test_an_array_without_its_checksum_sidecar_is_not_used(tiny_dir, titles, tmp_path):
    """A file of the right name and shape that this code did not verify (an older version's, another writer's)."""
    tok, model = load(tiny_dir)
    items, _ = embed_for_grounding(model, tok, [], titles, EVAL, tiny_dir, tmp_path)
    (path,) = tmp_path.glob("items-*.npy")
    np.save(path, np.zeros_like(items))
    path.with_suffix(".json").unlink(missing_ok=True)
    served, _ = embed_for_grounding(model, tok, [], titles, EVAL, tiny_dir, tmp_path)
    assert np.array_equal(served, items)


def test_embeddings_with_an_adapter_are_never_served_to_another_adapter(tiny_dir, titles, tmp_path):
    """With ``embed_with_base=False`` the item embeddings are the adapter's: a cache keyed on the base model would
    hand one adapter's embeddings to the next."""
    tok, _ = load(tiny_dir)
    cfg = EvalConfig(embed_with_base=False, embed_batch_size=16)
    adapted = []
    for seed in (0, 1):
        _, base = load(tiny_dir)
        model = attach_lora(base, LoRAConfig(), seed=seed)
        with torch.no_grad():
            generator = torch.Generator().manual_seed(seed)
            for name, param in model.named_parameters():
                if "lora_B" in name:  # zero at init: make the adapter change the output
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
        adapted.append(model)
    fresh = [embed_for_grounding(m, tok, [], titles, cfg, tiny_dir)[0] for m in adapted]
    assert not np.allclose(fresh[0], fresh[1])
    served = [embed_for_grounding(m, tok, [], titles, cfg, tiny_dir, tmp_path)[0] for m in adapted]
    assert np.array_equal(served[0], fresh[0]) and np.array_equal(served[1], fresh[1])


def test_non_finite_item_embeddings_are_refused(tiny_dir, titles, tmp_path):
    tok, model = load(tiny_dir)
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    with pytest.raises(InputError, match="NaN or inf"):
        embed_for_grounding(model, tok, [], titles, EVAL, tiny_dir, tmp_path)
    assert not list(tmp_path.glob("items-*"))


def test_the_model_fingerprint_is_its_content_not_its_file_times(tmp_path):
    """The same checkpoint anywhere (a fresh clone, a copy without metadata, another container's mount) has one
    fingerprint; the old one hashed modification times, so a clone missed every cache and the committed scores of the
    shipped model. A same-size checkpoint with other weights, anywhere in the file, has another."""
    from dealrec_tasks.llm.evaluate import FINGERPRINT_CHUNK_BYTES, FINGERPRINT_CHUNKS, model_fingerprint

    rng = np.random.default_rng(0)
    big = FINGERPRINT_CHUNKS * FINGERPRINT_CHUNK_BYTES * 3 + 123  # sampled, not hashed whole
    for size in (1000, big):
        a = tmp_path / f"a{size}"
        a.mkdir()
        (a / "config.json").write_text('{"model_type": "llama"}')
        weights = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        (a / "model.safetensors").write_bytes(weights)
        fingerprint = model_fingerprint(a)
        os.utime(a / "model.safetensors", (1, 1))
        b = tmp_path / f"b{size}"
        b.mkdir()
        for f in a.iterdir():
            (b / f.name).write_bytes(f.read_bytes())  # a copy with today's times
        assert model_fingerprint(a) == fingerprint == model_fingerprint(b)
        # One changed byte that the sample reads changes the fingerprint.
        changed = bytearray(weights)
        changed[0] ^= 0xFF
        (b / "model.safetensors").write_bytes(bytes(changed))
        assert model_fingerprint(b) != fingerprint
        # A retrained checkpoint: every weight differs.
        (b / "model.safetensors").write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        assert model_fingerprint(b) != fingerprint
