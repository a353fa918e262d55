"""Pretraining of the embedded LLM (llm/pretrain.py) and the tiny-llm step's time cut (issue 15)."""

from __future__ import annotations

import datetime as dt_mod
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dealrec_tasks.catalogue import SEQUENCES
from dealrec_tasks.data.samples import time_split
from dealrec_tasks.errors import ConfigError, InputError
from dealrec_tasks.llm.config import TinyLLMConfig
from dealrec_tasks.llm.pretrain import Corpus, pretrain
from dealrec_tasks.llm.prompts import TITLE_SEPARATOR, PromptTemplate, clean_title, encode
from dealrec_tasks.llm.tiny import MARKER, PretrainCorpus, build_model, build_tiny_llm, load, train_tokenizer
from dealrec_tasks.steps import llm
from dealrec_tasks.steps.readers import read_sequences
from tests.conftest import synthetic_lake

SMALL = {"vocab_size": 600, "hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 4}


@pytest.fixture(scope="module")
def tokenizer(titles):
    return train_tokenizer(titles, PromptTemplate("games"), 600)


def _corpus(titles, tokenizer, sequences, title_share=0.0, prompt_share=0.0, cutoff=384, seed=0) -> Corpus:
    return Corpus(titles, sequences, tokenizer, PromptTemplate("games"), cutoff, title_share, prompt_share, seed)


def test_compact_examples_are_consecutive_titles_of_one_sequence_with_eos_only_at_its_end(titles, tokenizer):
    sequences = [list(range(1, 31)), [40, 41]]
    corpus = _corpus(titles, tokenizer, sequences, cutoff=64)
    joined = {tuple(s): TITLE_SEPARATOR.join(clean_title(titles[i - 1]) for i in s) for s in sequences}
    ends, windows = 0, 0
    for _ in range(60):
        ids = corpus.compact()
        assert ids[0] == tokenizer.bos_token_id and len(ids) <= 64
        text = tokenizer.decode(ids, skip_special_tokens=True)
        whole = next(j for s, j in joined.items() if text in j)  # a contiguous piece of one user's sequence
        if ids[-1] == tokenizer.eos_token_id:
            ends += 1
            assert whole.endswith(text)  # EOS only where the sequence really ends
        else:
            windows += 1
            assert len(ids) > 40  # a window cut by the cut-off, not a short sequence
    assert ends and windows
    # The two-title sequence always fits: "<s>a; b</s>".
    short = TITLE_SEPARATOR.join(clean_title(titles[i - 1]) for i in (40, 41))
    assert any(tokenizer.decode(corpus.compact(), skip_special_tokens=True) == short for _ in range(40))


def test_batches_mix_the_kinds_with_a_loss_on_every_token_but_the_first(titles, tokenizer):
    sequences = [list(range(k, k + 6)) for k in range(1, 60, 3)]
    corpus = _corpus(titles, tokenizer, sequences, title_share=0.3, prompt_share=0.3)
    prefix = encode(tokenizer, PromptTemplate("games"), [], None, 10_000).prefix
    batches = corpus.batches(8, pool=4)
    prompts = 0
    for _ in range(8):
        ids, mask, labels = next(batches)
        assert ids.shape == labels.shape == mask.shape
        for row in range(ids.shape[0]):
            n = int(mask[row].sum())
            assert (labels[row, n:] == -100).all() and labels[row, 0] == -100
            # The template too: fine-tuning (train_on_inputs) must not spend itself on learning it.
            assert (labels[row, 1:n] == ids[row, 1:n]).all()
            prompts += ids[row, : len(prefix)].tolist() == prefix
    assert prompts > 0
    served = corpus.served
    total = sum(v["examples"] for v in served.values())
    assert total == 64
    for kind, share in (("titles", 0.3), ("prompts", 0.3), ("compact", 0.4)):
        assert abs(served[kind]["examples"] / total - share) < 0.2, served


def test_pretraining_learns_which_title_comes_next(titles, tokenizer):
    """Sequences where title i is always followed by title i + 1: after pretraining, the model continues
    "t_i; t_(i+1);" with t_(i+2), as a pretrained LLM continues a list it has seen."""
    n = 24
    rng = np.random.default_rng(0)
    sequences = []
    for _ in range(400):
        start, length = int(rng.integers(1, n - 4)), int(rng.integers(3, 6))
        sequences.append(list(range(start, min(start + length, n + 1))))
    cfg = TinyLLMConfig(**SMALL)
    model = build_model(cfg, tokenizer)
    corpus = _corpus(titles[:n], tokenizer, sequences, title_share=0.2, cutoff=96)
    torch.manual_seed(0)
    stats = pretrain(model, corpus, steps=400, seconds=600, batch=16, lr=3e-3, warmup=10)
    assert stats["stopped_by"] == "steps" and stats["steps_done"] == 400
    assert stats["loss_last_50"] < 0.5 * stats["loss_first_50"], stats
    hits = 0
    for i in range(1, n - 2):
        context = TITLE_SEPARATOR.join(clean_title(titles[j - 1]) for j in (i, i + 1)) + TITLE_SEPARATOR.rstrip()
        ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer(context, add_special_tokens=False)["input_ids"]])
        out = model.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        hits += text.strip().split(TITLE_SEPARATOR.strip())[0].strip() == clean_title(titles[i + 1])
    assert hits >= 0.7 * (n - 3), f"{hits} of {n - 3} next titles right"


def test_a_time_limit_stops_pretraining_and_the_summary_says_so(tmp_path, titles):
    cfg = TinyLLMConfig(**SMALL, pretrain_steps=10_000, pretrain_seconds=0.5, pretrain_batch=4)
    info = build_tiny_llm(tmp_path / "m", titles, cfg, corpus=PretrainCorpus(titles, [[1, 2, 3]], "2026-01-01"))
    run = info["pretraining"]
    assert run["stopped_by"] == "time" and 0 < run["steps_done"] < 10_000 and run["steps_budget"] == 10_000
    assert json.loads(Path(tmp_path / "m" / MARKER).read_text())["pretraining"]["stopped_by"] == "time"


def test_config_refuses_bad_pretraining_settings():
    with pytest.raises(ConfigError, match="title_share=0.8, prompt_share=0.5"):
        TinyLLMConfig(title_share=0.8, prompt_share=0.5)
    with pytest.raises(ConfigError, match="corpus_gap_days=1"):
        TinyLLMConfig(corpus_gap_days=1)
    with pytest.raises(ConfigError, match="size='huge'"):
        TinyLLMConfig.sized("huge")
    small = TinyLLMConfig.sized("small", pretrain_seconds=5)
    assert (small.num_layers, small.hidden_size, small.pretrain_seconds) == (2, 128, 5)


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    return synthetic_lake(tmp_path_factory.mktemp("tiny") / "lake", "2026-01-10", 8, users=80, items=60, days=10)


def test_step_pretrains_on_days_up_to_the_cut_and_serves_later_days(lake, tmp_path):
    """The corpus ends corpus_gap_days before the day: none of that day's (or a later day's) validation and test
    items. A model built for a day serves later days; a day before its corpus's end rebuilds it."""
    days = lake.partitions(SEQUENCES)
    dt = days[-2]
    cfg = TinyLLMConfig(**SMALL, pretrain_steps=3, corpus_gap_days=3)
    out = str(tmp_path / "tiny")
    first = llm.tiny_llm(lake, out, cfg, dt)
    last_day = (dt_mod.date.fromisoformat(dt) - dt_mod.timedelta(days=3)).isoformat()
    assert first.changed and first.counts["corpus_last_day"] == last_day
    assert first.counts["pretrain_steps"] == "3/3" and first.counts["stopped_by"] == "steps"

    # Reference: every user's interactions up to last_day, from the raw cumulative sequences (ts by ts).
    seqs = read_sequences(lake, dt)[0].to_pylist()
    end = dt_mod.datetime.fromisoformat(last_day + "T00:00:00+00:00") + dt_mod.timedelta(days=1)
    per_user = [[i for i, t in zip(r["items"], r["ts"]) if t < end] for r in seqs]
    corpus = llm.pretrain_corpus(lake, dt, last_day)
    assert corpus.sequences == [s for s in per_user if s]
    assert 0 < sum(map(len, per_user)) < sum(len(r["items"]) for r in seqs)
    # Every corpus item is a training item at dt (the validation and test items come after it).
    train_at_dt = time_split(read_sequences(lake, dt)[0], dt, 1, 1).column("train").to_pylist()
    assert all(s == t[: len(s)] for s, t in zip(per_user, train_at_dt))
    marker = json.loads(Path(out, MARKER).read_text())
    assert marker["corpus"]["last_day"] == last_day and marker["corpus"]["sha256"] == corpus.digest()

    later = llm.tiny_llm(lake, out, cfg, days[-1])
    assert not later.changed and later.counts["reused"] is True
    earlier = llm.tiny_llm(lake, out, cfg, days[-4])  # its corpus must end earlier than the built one's
    assert earlier.changed and earlier.counts["corpus_last_day"] < last_day
    tok, model = load(out)
    assert type(model).__name__ == "LlamaForCausalLM"


def test_step_refuses_a_day_without_sequences(lake, tmp_path):
    with pytest.raises(InputError, match="tiny-llm dt=2031-01-01: no sequences/dt=2031-01-01"):
        llm.tiny_llm(lake, str(tmp_path / "x"), TinyLLMConfig(**SMALL, pretrain_steps=1), "2031-01-01")
    with pytest.raises(ConfigError, match="dt='../x'"):
        llm.tiny_llm(lake, str(tmp_path / "x"), TinyLLMConfig(**SMALL, pretrain_steps=1), "../x")
