"""What every step returns."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StepResult:
    """URIs written and the counts a person or an orchestrator needs; ``changed`` is False for a no-op."""

    step: str
    uris: dict[str, str]
    counts: dict[str, Any]
    changed: bool = True
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        counts = ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in self.counts.items())
        state = "" if self.changed else " (unchanged, no-op)"
        main = next(iter(self.uris.values()), "")
        return f"{self.step}: {counts}{state} -> {main}"
