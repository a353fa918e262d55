"""The LLM code is not LLaMA-only: Qwen2 and Mistral checkpoints (tiny, random) go through the same paths."""

from __future__ import annotations

import numpy as np
import pytest

from dealrec_tasks.llm.config import EffortConfig, EvalConfig, LoRAConfig
from dealrec_tasks.llm.effort import EffortScorer, attach_lora, effort_reference
from dealrec_tasks.llm.evaluate import generate_titles
from dealrec_tasks.llm.prompts import PromptTemplate, encode
from dealrec_tasks.llm.tiny import load


def _save(kind: str, tokenizer, out) -> str:
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention: fewer value heads than query heads
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config_cls, model_cls = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "mistral": (MistralConfig, MistralForCausalLM)}[
        kind
    ]
    model_cls(config_cls(**common)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.mark.parametrize("kind", ["qwen2", "mistral"])
def test_effort_and_generation_on_other_architectures(kind, tiny_dir, titles, tmp_path):
    tokenizer, _ = load(tiny_dir)
    model_dir = _save(kind, tokenizer, tmp_path / kind)
    tok, model = load(model_dir)
    assert model.config.model_type == kind
    peft_model = attach_lora(model, LoRAConfig())
    rng = np.random.default_rng(1)
    prompts = [
        encode(tok, PromptTemplate(), [titles[i] for i in rng.integers(0, len(titles), size=n)], titles[n], 512)
        for n in (0, 2, 5, 9)
    ]
    cfg = EffortConfig(batch_size=3)
    scorer = EffortScorer(peft_model, tok.pad_token_id, cfg)
    assert scorer.use_prefix
    np.testing.assert_allclose(scorer.score(prompts), effort_reference(peft_model, prompts, cfg), rtol=1e-5)
    contexts = [encode(tok, PromptTemplate(), titles[:2], None, 512)]
    out = generate_titles(peft_model, tok, contexts, EvalConfig(num_beams=2, max_new_tokens=5))
    assert isinstance(out[0], str)
