"""BIGRec prompts and the tiny model's save/load round trip."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dealrec_tasks.llm.prompts import PromptTemplate, clean_title, encode
from dealrec_tasks.llm.tiny import MARKER, build_tiny_llm, load
from tests.unit.llm.conftest import TINY


def test_prompt_text_matches_the_paper_template(tiny_dir, titles):
    tok, _ = load(tiny_dir)
    tpl = PromptTemplate("games")
    text = tpl.prompt(["A\nB", " C "])
    assert text.startswith("Below is an instruction that describes a task, paired with an input")
    assert "### Instruction:\nGiven the game products that the user purchased before" in text
    assert text.endswith("with titles as: A B; C\n\n### Response:\n")
    enc = encode(tok, tpl, titles[:3], titles[4], 512)
    decoded = tok.decode(enc.input_ids, skip_special_tokens=True)
    assert decoded == tpl.prompt(titles[:3]) + clean_title(titles[4])
    assert enc.input_ids[-1] == tok.eos_token_id
    assert tok.decode(enc.input_ids[-enc.n_response :], skip_special_tokens=True) == clean_title(titles[4])


def test_prefix_ids_are_identical_for_every_sample_and_history_is_cut_from_the_oldest(tiny_dir, titles):
    tok, _ = load(tiny_dir)
    tpl = PromptTemplate("games")
    a = encode(tok, tpl, titles[:2], titles[3], 512)
    b = encode(tok, tpl, titles[10:40], titles[5], 512)
    assert a.prefix == b.prefix and a.prefix[0] == tok.bos_token_id
    full = encode(tok, tpl, titles[10:40], titles[5], 10_000)
    cut = encode(tok, tpl, titles[10:40], titles[5], len(full.input_ids) - 20)
    assert len(cut.input_ids) <= len(full.input_ids) - 20
    text = tok.decode(cut.input_ids, skip_special_tokens=True)
    assert clean_title(titles[39]) in text and clean_title(titles[10]) not in text  # the oldest went first
    assert text.endswith(clean_title(titles[5]))


def test_tiny_model_loads_through_from_pretrained_and_is_reused(tiny_dir, titles):
    marker = json.loads(Path(tiny_dir, MARKER).read_text())
    assert marker["config"] == TINY.to_dict()
    tok, model = load(tiny_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    ids = torch.tensor([encode(tok, PromptTemplate(), titles[:2], titles[3], 512).input_ids])
    tok2, model2 = load(tiny_dir)
    assert torch.equal(model(ids).logits, model2(ids).logits)
    again = build_tiny_llm(tiny_dir, titles, TINY)
    assert again["reused"] is True
