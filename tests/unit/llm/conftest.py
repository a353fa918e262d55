"""A tiny LLaMA built from synthetic catalogue titles, shared by the LLM tests (no download, real from_pretrained)."""

from __future__ import annotations

import numpy as np
import pytest

from dealrec_tasks.config import SyntheticConfig
from dealrec_tasks.data.synthetic import make_catalogue
from dealrec_tasks.llm.config import TinyLLMConfig
from dealrec_tasks.llm.prompts import PromptTemplate, encode
from dealrec_tasks.llm.tiny import build_tiny_llm

TINY = TinyLLMConfig(vocab_size=600, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, pretrain_steps=0)


@pytest.fixture(scope="session")
def titles() -> list[str]:
    items, _, _ = make_catalogue(SyntheticConfig(items=120), np.random.default_rng(0))
    return items.column("title").to_pylist()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, titles) -> str:
    out = tmp_path_factory.mktemp("models") / "tiny"
    build_tiny_llm(out, titles, TINY)
    return str(out)


def random_prompts(tok, titles, n, seed):
    """``n`` prompts of 3 random history titles and a random target (seeded): training data for the LLM tests."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        hist = [titles[i] for i in rng.integers(0, len(titles), size=3)]
        out.append(encode(tok, PromptTemplate(), hist, titles[int(rng.integers(len(titles)))], 512))
    return out
