"""BIGRec prompts (Alpaca style): instruction + history titles -> next item title.

Every prompt starts with the same text (preamble, instruction, the start of the input sentence): ``PromptParts``
keeps that fixed prefix apart so it can be tokenized on its own and shared by every sample (effort scoring
computes it once).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dealrec_tasks.errors import ConfigError

PREAMBLE = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
INSTRUCTIONS = {
    "games": "Given the game products that the user purchased before, please recommend a new game product "
    "that the user likes to the user.",
}
INPUT_LEADS = {
    "games": "The user has purchased the following game products before, with titles as: ",
}
GENERIC_DOMAIN = "item"  # the noun of a catalogue that names none
_DOMAIN_RE = re.compile(r"^[a-z][a-z \-]{0,39}$")


def check_domain(domain: str) -> str:
    """A prompt domain: ``games`` (the paper's Games text) or a singular noun naming the catalogue's items (``movie``,
    ``video``, ``book``) for the same instruction in general words; refused by name before any model is loaded."""
    if not isinstance(domain, str) or not _DOMAIN_RE.match(domain):
        raise ConfigError(
            f"domain={domain!r}: 'games' or a singular noun for the items (lower-case letters, spaces, '-'), e.g. movie"
        )
    return domain


def instruction(domain: str) -> str:
    if domain in INSTRUCTIONS:
        return INSTRUCTIONS[domain]
    return (
        f"Given the {domain}s that the user interacted with before, please recommend a new {domain} that the user "
        "likes to the user."
    )


def input_lead(domain: str) -> str:
    if domain in INPUT_LEADS:
        return INPUT_LEADS[domain]
    return f"The user has interacted with the following {domain}s before, with titles as: "


TITLE_SEPARATOR = "; "
RESPONSE_HEADER = "\n\n### Response:\n"


def clean_title(title: str | None) -> str:
    """One line, no surrounding spaces; a missing title stays visible as such."""
    if title is None:
        return "(unknown title)"
    return " ".join(str(title).split())


@dataclass(frozen=True)
class PromptTemplate:
    """The fixed text of a domain's prompt."""

    domain: str | None = "games"

    @property
    def prefix(self) -> str:
        """Everything before the first history title: identical for every sample."""
        domain = check_domain(self.domain or "games")  # None: the paper's (steps resolve the data's own first)
        return f"{PREAMBLE}\n\n### Instruction:\n{instruction(domain)}\n\n### Input:\n{input_lead(domain)}"

    def middle(self, history_titles: list[str]) -> str:
        """The sample's own input text, up to and including the response header."""
        return TITLE_SEPARATOR.join(clean_title(t) for t in history_titles) + RESPONSE_HEADER

    def prompt(self, history_titles: list[str]) -> str:
        """The text the model sees at generation time."""
        return self.prefix + self.middle(history_titles)


@dataclass(frozen=True)
class EncodedPrompt:
    """Token ids of one sample: ``prefix`` (shared) + ``own`` (history titles, response header, target, eos).

    ``n_response`` counts the last tokens of ``own`` that are the response (target title + eos).
    """

    prefix: list[int]
    own: list[int]
    n_response: int

    @property
    def input_ids(self) -> list[int]:
        return self.prefix + self.own


def encode(
    tokenizer, template: PromptTemplate, history_titles: list[str], target_title: str | None, cutoff_len: int
) -> EncodedPrompt:
    """Tokenize prefix, history and response separately (so the prefix ids never depend on the sample).

    The oldest history titles are dropped until the whole sample fits ``cutoff_len`` tokens; when even an
    empty history does not fit, the response is cut (the prefix never is).
    """
    prefix = _ids(tokenizer, template.prefix, bos=True)
    response = (
        _ids(tokenizer, clean_title(target_title), bos=False) + [tokenizer.eos_token_id]
        if target_title is not None
        else []
    )
    titles = [clean_title(t) for t in history_titles]

    def middle_ids(start: int) -> list[int]:
        return _ids(tokenizer, template.middle(titles[start:]), bos=False)

    def fits(start: int) -> bool:
        return len(prefix) + len(middle_ids(start)) + len(response) <= cutoff_len

    # Binary search for the fewest dropped titles (the length only shrinks as titles are dropped).
    lo, hi = 0, len(titles)
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid + 1
    middle = middle_ids(lo)
    own = middle + response
    budget = cutoff_len - len(prefix)
    if len(own) > budget:
        own = own[:budget]
    return EncodedPrompt(prefix, own, min(len(response), max(len(own) - len(middle), 0)))


def _ids(tokenizer, text: str, bos: bool) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ([tokenizer.bos_token_id] if bos and tokenizer.bos_token_id is not None else []) + ids
