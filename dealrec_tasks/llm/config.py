"""Typed settings of the LLM side: tiny model builder, effort score, LoRA fine-tuning, grounded evaluation."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from dealrec_tasks.config import _Config, _require, opt
from dealrec_tasks.errors import ConfigError
from dealrec_tasks.llm.prompts import check_domain

DOMAIN_HELP = (
    "prompt domain: games (the paper's Games instruction) or a singular noun for the items, e.g. movie; default: "
    "the data's own (stored with an imported dataset's catalogue; games for the daily lake's)"
)


def _check_domain(domain: str | None) -> None:
    if domain is not None:
        check_domain(domain)


LORA_PARAM_SETS = ("last_v_lora_B", "last_layer", "all")
FINETUNE_PRESETS = ("auto", "none")
#: Upper bounds that keep a typo (10**12) from running a fine-tuning for ever or ranking a catalogue's worth per
#: user: BIGRec trains 10 epochs and reports K up to 50; the test users of a day are far fewer than 10 million.
MAX_EPOCHS = 1000
MAX_K = 1000
MAX_EVAL_USERS = 10_000_000

#: The trigger form's base model: an absolute path, neither the root nor holding whitespace or a control character.
#: JSON-schema patterns are searched (jsonschema: re.search), and Python's ``$`` also matches before a final
#: newline, so the end is a lookahead that no character follows: ``(?![\s\S])``, the same in JavaScript.
BASE_MODEL_PATTERN = r"^/[^\s/\x00-\x1f\x7f][^\s\x00-\x1f\x7f]*(?![\s\S])"


def check_base_model(value: Any, name: str = "base_model") -> str | None:
    """None for the shipped model (None or ""), else ``value`` as given, refused in one line when it cannot be a
    path someone meant: no string, whitespace around it, a control character (a pasted newline, a NUL). Whether a
    model lies there is ``steps.llm.base_model_dir``'s to say, on the machine that loads it."""
    if value is None or value == "":
        return None
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    if not isinstance(value, str):
        raise ConfigError(f"{name}={shown}: expected the path of a local model directory, or empty")
    if value != value.strip() or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ConfigError(
            f"{name}={shown}: whitespace around the path or a control character in it (a pasted newline?)"
        )
    return value


def check_max_users(value: Any, name: str = "max_users") -> int:
    """How many test users are evaluated: 0 (all) up to MAX_EVAL_USERS, refused in one line otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_EVAL_USERS:
        raise ConfigError(f"{name}={value!r}: must be >= 0 and <= {MAX_EVAL_USERS} (0: every test user)")
    return value


# ``default``: the model measured in bench/results/llm_quality*; ``small``: what make demo and the tests build
# (2 layers, hidden 128, 300 steps), minutes of CPU less for every LLM step; see the README.
TINY_LLM_SIZES = {
    "default": {},
    "small": {"hidden_size": 128, "intermediate_size": 256, "num_layers": 2, "pretrain_steps": 300},
}


@dataclass(frozen=True)
class TinyLLMConfig(_Config):
    """The embedded default model: a small LLaMA with a BPE tokenizer trained on the catalogue, pretrained on the
    catalogue titles and an earlier time cut of the interactions (``llm/pretrain.py``)."""

    domain: str | None = opt(None, DOMAIN_HELP)
    vocab_size: int = opt(4000, "BPE vocabulary size")
    hidden_size: int = opt(256, "hidden size")
    intermediate_size: int = opt(512, "MLP size")
    num_layers: int = opt(4, "decoder layers")
    num_heads: int = opt(4, "attention heads")
    max_positions: int = opt(1024, "maximum sequence length")
    pretrain_steps: int = opt(1500, "pretraining optimizer steps (0: random weights)")
    pretrain_seconds: float = opt(900.0, "time limit of pretraining (the summary says when it stopped there)")
    pretrain_batch: int = opt(32, "pretraining batch size")
    pretrain_lr: float = opt(2e-3, "peak pretraining learning rate (linear warm-up, cosine to 10 %)")
    pretrain_cutoff: int = opt(384, "longest pretraining example in tokens")
    title_share: float = opt(0.3, "share of pretraining examples that are one catalogue title")
    prompt_share: float = opt(0.1, "share that are BIGRec prompts (the rest: compact title sequences)")
    corpus_gap_days: int = opt(
        5,
        "the corpus holds the interactions of days up to dt - corpus_gap_days (never the validation and test "
        "days of dt or later; must exceed the samples' valid_days + test_days)",
    )
    seed: int = opt(0, "random seed")

    @classmethod
    def sized(cls, size: str, **overrides) -> TinyLLMConfig:
        """A preset of ``TINY_LLM_SIZES`` with ``overrides``."""
        _require(size in TINY_LLM_SIZES, f"size={size!r}: one of {', '.join(TINY_LLM_SIZES)}")
        return cls(**(TINY_LLM_SIZES[size] | overrides))

    def validate(self) -> None:
        _check_domain(self.domain)
        _require(self.vocab_size >= 300, f"vocab_size={self.vocab_size}: must be >= 300 (256 bytes + specials)")
        _require(self.hidden_size % self.num_heads == 0, f"hidden_size={self.hidden_size}: not divisible by num_heads")
        _require(self.num_layers >= 1, f"num_layers={self.num_layers}: must be >= 1")
        _require(self.pretrain_steps >= 0, f"pretrain_steps={self.pretrain_steps}: must be >= 0")
        _require(self.pretrain_seconds > 0, f"pretrain_seconds={self.pretrain_seconds}: must be > 0")
        _require(self.pretrain_batch >= 1, f"pretrain_batch={self.pretrain_batch}: must be >= 1")
        _require(self.pretrain_cutoff >= 32, f"pretrain_cutoff={self.pretrain_cutoff}: must be >= 32")
        _require(
            min(self.title_share, self.prompt_share) >= 0 and self.title_share + self.prompt_share <= 1,
            f"title_share={self.title_share}, prompt_share={self.prompt_share}: shares in [0, 1] summing to <= 1",
        )
        _require(self.corpus_gap_days >= 2, f"corpus_gap_days={self.corpus_gap_days}: must be >= 2")


@dataclass(frozen=True)
class LoRAConfig(_Config):
    """The paper's LoRA settings (BIGRec)."""

    r: int = opt(8, "LoRA rank")
    alpha: int = opt(16, "LoRA alpha")
    dropout: float = opt(0.05, "LoRA dropout")
    target_modules: tuple[str, ...] = opt(("q_proj", "v_proj"), "modules that get adapters")

    def validate(self) -> None:
        _require(self.r >= 1, f"r={self.r}: must be >= 1")
        # The adapter's output, and with it every LoRA gradient, is scaled by alpha / r: alpha 0 leaves the model
        # unchanged, fine-tuning trains nothing and every effort score is 0 (a negative alpha would only flip B).
        _require(
            0 < self.alpha < math.inf,
            f"alpha={self.alpha}: must be finite and > 0 (LoRA scales the adapter by alpha / r; 0 makes every effort "
            "score and every fine-tuning gradient 0)",
        )
        _require(0 <= self.dropout < 1, f"dropout={self.dropout}: must be in [0, 1)")
        _require(len(self.target_modules) > 0, "target_modules: at least one module")


@dataclass(frozen=True)
class EffortConfig(_Config):
    """Effort score delta_s = ||grad_phi L_LLM(s)||_2 over a set of LoRA parameters phi."""

    params: str = opt("last_v_lora_B", f"which LoRA parameters: {', '.join(LORA_PARAM_SETS)}")
    batch_size: int = opt(16, "samples per batch (halved on out-of-memory)")
    cutoff_len: int = opt(512, "maximum prompt + response tokens")
    shared_prefix: bool = opt(True, "compute the prompt's fixed prefix once (exact; see llm/effort.py)")
    train_on_inputs: bool = opt(True, "loss over the whole prompt (BIGRec default) or the response only")
    domain: str | None = opt(None, DOMAIN_HELP)
    seed: int = opt(0, "seed of the LoRA initialisation")

    def validate(self) -> None:
        _check_domain(self.domain)
        _require(self.params in LORA_PARAM_SETS, f"params={self.params!r}: one of {', '.join(LORA_PARAM_SETS)}")
        _require(self.batch_size >= 1, f"batch_size={self.batch_size}: must be >= 1")
        _require(self.cutoff_len >= 16, f"cutoff_len={self.cutoff_len}: must be >= 16")


@dataclass(frozen=True)
class FinetuneConfig(_Config):
    """LoRA fine-tuning on a coreset (BIGRec settings), with early stopping and resumable checkpoints."""

    preset: str = opt(
        "auto",
        "auto: the base model's own fine-tuning preset (dealrec_finetune_preset.json in its directory; the embedded "
        "model ships one) replaces every preset setting left at its BIGRec default here (lr, epochs, train_on_inputs, "
        "LoRA r, alpha, target_modules); none: these settings as given",
    )
    lr: float = opt(1e-4, "learning rate (AdamW; BIGRec's, replaced by a base model's preset)")
    epochs: int = opt(10, "maximum epochs (BIGRec's 10 is replaced by a base model's preset)", ge=1, le=MAX_EPOCHS)
    patience: int = opt(2, "epochs without a better validation loss before stopping")
    batch_size: int = opt(32, "samples per optimizer step")
    micro_batch_size: int = opt(8, "samples per forward pass (gradient accumulation up to batch_size)")
    cutoff_len: int = opt(512, "maximum prompt + response tokens")
    train_on_inputs: bool = opt(True, "loss over the whole prompt (BIGRec default) or the response only")
    domain: str | None = opt(None, DOMAIN_HELP)
    seed: int = opt(0, "seed of LoRA init, data order and dropout")

    def validate(self) -> None:
        _check_domain(self.domain)
        _require(self.preset in FINETUNE_PRESETS, f"preset={self.preset!r}: one of {', '.join(FINETUNE_PRESETS)}")
        _require(self.lr > 0, f"lr={self.lr}: must be > 0")
        _require(self.epochs >= 1, f"epochs={self.epochs}: must be >= 1")
        _require(self.patience >= 1, f"patience={self.patience}: must be >= 1")
        _require(self.micro_batch_size >= 1, f"micro_batch_size={self.micro_batch_size}: must be >= 1")
        _require(
            self.batch_size >= self.micro_batch_size and self.batch_size % self.micro_batch_size == 0,
            f"batch_size={self.batch_size}: must be a multiple of micro_batch_size={self.micro_batch_size}",
        )


@dataclass(frozen=True)
class EvalConfig(_Config):
    """Grounded evaluation: generate a title, embed it, rank every catalogue item by L2 distance."""

    num_beams: int = opt(4, "beam search width")
    max_new_tokens: int = opt(48, "longest generated title in tokens")
    ngram_repeat_limit: int = opt(
        2,
        "a generated title may hold the same 3 tokens at most this many times (stops 'The The The ...' loops; "
        "28 of 17,332 Games titles repeat a 3-gram more often); the prompt does not count; 0: no limit",
    )
    batch_size: int = opt(16, "prompts per generation batch")
    embed_batch_size: int = opt(64, "titles per embedding batch")
    cutoff_len: int = opt(512, "maximum prompt tokens")
    ks: tuple[int, ...] = opt((10, 20, 50), "cut-offs of Recall@K and NDCG@K", ge=1, le=MAX_K)
    embed_with_base: bool = opt(True, "embed with the base model, adapter disabled (the paper's choice)")
    popularity_aware: bool = opt(
        True,
        "also measure BIGRec's popularity-aware grounding (popaware_* metrics; its weight gamma chosen on as many "
        "validation users as test users)",
    )
    domain: str | None = opt(None, DOMAIN_HELP)

    def validate(self) -> None:
        _check_domain(self.domain)
        _require(self.num_beams >= 1, f"num_beams={self.num_beams}: must be >= 1")
        _require(self.max_new_tokens >= 1, f"max_new_tokens={self.max_new_tokens}: must be >= 1")
        _require(self.ngram_repeat_limit >= 0, f"ngram_repeat_limit={self.ngram_repeat_limit}: must be >= 0")
        _require(all(k >= 1 for k in self.ks), f"ks={self.ks}: every K must be >= 1")
