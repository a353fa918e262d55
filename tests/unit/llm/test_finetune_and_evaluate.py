"""LoRA fine-tuning resumes after a crash to the same result; grounded evaluation ranks by L2 correctly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from peft import PeftModel

from dealrec_tasks.llm import finetune as ft
from dealrec_tasks.llm.config import EvalConfig, FinetuneConfig, LoRAConfig
from dealrec_tasks.llm.evaluate import embed_for_grounding, embed_texts, grounded_evaluation
from dealrec_tasks.llm.grounding import topk as rank_by_l2
from dealrec_tasks.llm.prompts import PromptTemplate, encode
from dealrec_tasks.llm.tiny import load
from tests.unit.llm.conftest import random_prompts

CFG = FinetuneConfig(epochs=3, patience=5, batch_size=8, micro_batch_size=4, lr=5e-3)


class Crash(Exception):
    pass


def test_resume_after_crash_gives_the_same_adapter(tiny_dir, titles, tmp_path):
    tok, model = load(tiny_dir)
    train, valid = random_prompts(tok, titles, 20, 0), random_prompts(tok, titles, 6, 1)

    def crash_after_two(epoch, state):
        if epoch == 2:
            raise Crash

    with pytest.raises(Crash):
        ft.finetune(model, tok.pad_token_id, train, valid, CFG, LoRAConfig(), tmp_path / "a", crash_after_two)
    assert json.loads((tmp_path / "a" / ft.LATEST).read_text())["epoch"] == 1  # 0-based: two epochs done
    _, model = load(tiny_dir)
    resumed = ft.finetune(model, tok.pad_token_id, train, valid, CFG, LoRAConfig(), tmp_path / "a")
    _, model = load(tiny_dir)
    straight = ft.finetune(model, tok.pad_token_id, train, valid, CFG, LoRAConfig(), tmp_path / "b")
    assert resumed["resumed_from_epoch"] == 2
    assert resumed["history"] == straight["history"]
    assert resumed["history"][-1]["train_loss"] < resumed["history"][0]["train_loss"]
    a = (tmp_path / "a" / ft.BEST / "adapter_model.safetensors").read_bytes()
    b = (tmp_path / "b" / ft.BEST / "adapter_model.safetensors").read_bytes()
    assert a == b
    # A finished run is not trained again.
    _, model = load(tiny_dir)
    assert ft.finetune(model, tok.pad_token_id, train, valid, CFG, LoRAConfig(), tmp_path / "a")["done"]


def test_early_stopping_keeps_the_best_epoch(tiny_dir, titles, tmp_path):
    tok, model = load(tiny_dir)
    train, valid = random_prompts(tok, titles, 16, 2), random_prompts(tok, titles, 6, 3)
    cfg = FinetuneConfig(epochs=8, patience=1, batch_size=8, micro_batch_size=8, lr=0.5)  # diverges fast
    state = ft.finetune(model, tok.pad_token_id, train, valid, cfg, LoRAConfig(), tmp_path)
    losses = [h["valid_loss"] for h in state["history"]]
    assert state["best_epoch"] == int(np.argmin(losses)) + 1
    assert len(losses) <= state["best_epoch"] + 1


def test_batched_embeddings_equal_one_at_a_time(tiny_dir, titles):
    tok, model = load(tiny_dir)
    batched = embed_texts(model, tok, titles[:9], batch_size=4)
    single = np.stack([embed_texts(model, tok, [t], batch_size=1)[0] for t in titles[:9]])
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-5)


def test_rank_by_l2_matches_argsort():
    rng = np.random.default_rng(0)
    q, e = rng.normal(size=(5, 8)).astype(np.float32), rng.normal(size=(30, 8)).astype(np.float32)
    naive = np.argsort(((q[:, None, :].astype(np.float64) - e[None]) ** 2).sum(-1), axis=1)[:, :10]
    assert np.array_equal(rank_by_l2(q, e, 10), naive)


def test_grounded_evaluation_end_to_end_with_an_adapter(tiny_dir, titles, tmp_path):
    tok, model = load(tiny_dir)
    train = random_prompts(tok, titles, 8, 4)
    state = ft.finetune(
        model,
        tok.pad_token_id,
        train,
        [],
        FinetuneConfig(epochs=1, batch_size=8, micro_batch_size=8),
        LoRAConfig(),
        tmp_path / "ft",
    )
    _, base = load(tiny_dir)
    peft_model = PeftModel.from_pretrained(base, state["adapter_dir"])
    prompts = [encode(tok, PromptTemplate(), titles[i : i + 3], None, 512) for i in range(6)]
    targets = [[i + 3] for i in range(6)]
    cfg = EvalConfig(num_beams=2, max_new_tokens=8, batch_size=4)
    result = grounded_evaluation(peft_model, tok, prompts, targets, titles, cfg, tiny_dir, tmp_path / "cache")
    assert len(result["generated"]) == 6 and result["topk"].shape == (6, 50)
    assert set(result["metrics"]) >= {"recall@10", "ndcg@20", "recall@50", "users"}
    distinct = result["metrics"]["distinct_generated_share"]
    assert distinct == len(set(result["generated"])) / 6 and 0 < distinct <= 1
    assert list((tmp_path / "cache").glob("items-*.npy"))  # item embeddings cached per model
    with torch.no_grad():
        again = grounded_evaluation(peft_model, tok, prompts, targets, titles, cfg, tiny_dir, tmp_path / "cache")
    assert again["generated"] == result["generated"]


def _too_often(tokens: list[int], n: int, limit: int) -> bool:
    """Plain reference: does some n-gram occur more than ``limit`` times in ``tokens``?"""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return any(grams.count(g) > limit for g in grams)


def test_response_ngram_limit_bans_exactly_what_a_plain_count_forbids():
    from dealrec_tasks.llm.evaluate import ResponseNGramLimit

    rng = np.random.default_rng(0)
    for limit in (1, 2):
        proc = ResponseNGramLimit(prompt_width=0, limit=limit)
        for _ in range(300):
            response = rng.integers(0, 4, size=int(rng.integers(0, 14))).tolist()  # 4 tokens: repeats are common
            if _too_often(response, 3, limit):
                continue  # only reachable states: the processor kept every earlier step within the limit
            expected = {t for t in range(4) if _too_often(response + [t], 3, limit)}
            assert proc.banned(response) == expected, (response, limit)


def test_the_prompt_does_not_count_towards_the_limit():
    """ "- Xbox 360" three times in the history must not stop the title from ending in "- Xbox 360"."""
    from dealrec_tasks.llm.evaluate import ResponseNGramLimit

    prompt = [7, 8, 9] * 3
    proc = ResponseNGramLimit(prompt_width=len(prompt), limit=2)
    scores = torch.zeros((1, 12))
    out = proc(torch.tensor([prompt + [7, 8]]), scores.clone())
    assert torch.isfinite(out).all()
    out = proc(torch.tensor([prompt + [7, 8, 9, 7, 8, 9, 7, 8]]), scores.clone())
    assert torch.isinf(out[0, 9]) and torch.isfinite(out[0, :9]).all() and torch.isfinite(out[0, 10:]).all()


def test_generated_titles_never_loop(tiny_dir, titles):
    """Random weights loop readily ("The The The ..."); with the limit no response repeats a 3-gram more than
    twice, and without it the same prompts are free to (the setting is what changes the output). The token ids
    are taken from what ``generate`` returned (decoded text does not re-tokenize to the same ids)."""
    from dealrec_tasks.llm.evaluate import generate_titles

    tok, model = load(tiny_dir)
    prompts = [encode(tok, PromptTemplate(), titles[i : i + 3], None, 512) for i in range(40)]
    real_generate, responses = model.generate, []

    def recording_generate(**kwargs):
        out = real_generate(**kwargs)
        width = kwargs["input_ids"].shape[1]
        responses.extend([t for t in row[width:].tolist() if t != tok.pad_token_id] for row in out)
        return out

    model.generate = recording_generate
    for beams in (1, 3):
        for limit, loops in ((2, False), (0, True)):
            responses.clear()
            generate_titles(
                model, tok, prompts, EvalConfig(num_beams=beams, max_new_tokens=48, ngram_repeat_limit=limit)
            )
            assert len(responses) == len(prompts)
            assert any(_too_often(r, 3, 2) for r in responses) == loops, (beams, limit)


def test_a_generated_catalogue_title_ranks_its_item_first_even_when_the_catalogue_spaces_it_oddly(tiny_dir, titles):
    """The model writes titles as ``clean_title`` shows them (one line, single spaces): grounding must embed the
    catalogue the same way, or an exact answer lands anywhere."""
    from dealrec_tasks.llm.prompts import clean_title

    tok, model = load(tiny_dir)
    messy = [t.replace(" ", "  ", 1) + ("\n" if i % 2 else " ") for i, t in enumerate(titles)]
    picks = [3, 17, 40, 77]
    items, queries = embed_for_grounding(
        model, tok, [clean_title(messy[i]) for i in picks], messy, EvalConfig(), tiny_dir
    )
    topk = rank_by_l2(queries, items, 5)
    assert topk[:, 0].tolist() == picks


@pytest.mark.parametrize(
    ("response", "answer"),
    [
        ("Halo 5: Guardians", "Halo 5: Guardians"),
        ("Halo 5: Guardians; Gears of War 4 - Xbox One; Forza", "Halo 5: Guardians"),
        ("Orcs &amp; Humans / Tides of Darkness; Diablo", "Orcs &amp; Humans / Tides of Darkness"),
        ("Might &#38; Magic", "Might &#38; Magic"),
        ("Far Cry 3\n\n### Response:\nFar Cry 4", "Far Cry 3"),
        ("  Spaced  out ; next", "Spaced  out"),
        ("", ""),
    ],
)
def test_the_answer_is_the_first_title_of_the_response(response, answer):
    from dealrec_tasks.llm.evaluate import first_title

    assert first_title(response) == answer
