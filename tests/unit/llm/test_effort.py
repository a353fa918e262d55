"""Batched effort scores equal the paper's batch-size-1 loop (float32, 1e-5 relative)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dealrec_tasks.llm.config import EffortConfig, LoRAConfig
from dealrec_tasks.llm.effort import EffortScorer, attach_lora, effort_reference, prefix_sharing_supported
from dealrec_tasks.llm.prompts import PromptTemplate, encode
from dealrec_tasks.llm.tiny import load


@pytest.fixture(scope="module")
def setup(tiny_dir, titles):
    tok, model = load(tiny_dir)
    peft_model = attach_lora(model, LoRAConfig(target_modules=("q_proj", "k_proj", "v_proj")))
    with torch.no_grad():  # a trained adapter: lora_B non-zero, so lora_A gets gradients too
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(1))
    rng = np.random.default_rng(0)
    prompts = [
        encode(tok, PromptTemplate(), [titles[i] for i in rng.integers(0, len(titles), size=n)], titles[n], 512)
        for n in rng.integers(0, 12, size=23)  # uneven lengths, empty histories included
    ]
    return tok, peft_model, prompts


@pytest.mark.parametrize("params", ["last_v_lora_B", "last_layer", "all"])
@pytest.mark.parametrize("train_on_inputs", [True, False])
@pytest.mark.parametrize("shared_prefix", [True, False])
def test_batched_equals_batch_size_one(setup, params, train_on_inputs, shared_prefix):
    tok, peft_model, prompts = setup
    cfg = EffortConfig(params=params, batch_size=5, train_on_inputs=train_on_inputs, shared_prefix=shared_prefix)
    reference = effort_reference(peft_model, prompts, cfg)
    scorer = EffortScorer(peft_model, tok.pad_token_id, cfg)
    got = scorer.score(prompts)
    assert np.all(reference > 0)
    np.testing.assert_allclose(got, reference, rtol=1e-5)
    # The prefix is shared only where that is exact (k_proj in the last layer rules it out for "last_layer").
    assert scorer.use_prefix == (shared_prefix and params == "last_v_lora_B")


def test_scores_do_not_depend_on_batch_size_or_subset(setup):
    tok, peft_model, prompts = setup
    full = EffortScorer(peft_model, tok.pad_token_id, EffortConfig(batch_size=7)).score(prompts)
    one = EffortScorer(peft_model, tok.pad_token_id, EffortConfig(batch_size=1)).score(prompts)
    half = EffortScorer(peft_model, tok.pad_token_id, EffortConfig(batch_size=3)).score(prompts[10:])
    np.testing.assert_allclose(one, full, rtol=1e-5)
    np.testing.assert_allclose(half, full[10:], rtol=1e-5)


def test_requires_grad_is_restored(setup):
    tok, peft_model, prompts = setup
    before = {n: p.requires_grad for n, p in peft_model.named_parameters()}
    EffortScorer(peft_model, tok.pad_token_id, EffortConfig()).score(prompts[:3])
    assert before == {n: p.requires_grad for n, p in peft_model.named_parameters()}


def test_prefix_sharing_rules():
    last_v = "base_model.model.model.layers.3.self_attn.v_proj.lora_B.default"
    assert prefix_sharing_supported([last_v, last_v.replace("v_proj", "q_proj")])
    assert not prefix_sharing_supported([last_v, last_v.replace("layers.3", "layers.2")])
    assert not prefix_sharing_supported([last_v.replace("v_proj", "k_proj")])


def test_out_of_memory_halves_the_batch_and_carries_on(setup, monkeypatch):
    tok, peft_model, prompts = setup
    scorer = EffortScorer(peft_model, tok.pad_token_id, EffortConfig(batch_size=8))
    expected = scorer.score(prompts)
    real = scorer._score_batch
    sizes = []

    def small_memory(batch):  # an accelerator that only fits 2 samples at a time
        sizes.append(len(batch))
        if len(batch) > 2:
            raise torch.OutOfMemoryError("simulated")
        return real(batch)

    monkeypatch.setattr(scorer, "_score_batch", small_memory)
    np.testing.assert_allclose(scorer.score(prompts), expected, rtol=1e-6)
    assert sizes[:3] == [8, 4, 2] and max(sizes[3:]) <= 2
