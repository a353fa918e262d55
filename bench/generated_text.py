"""Splice generated text between markers in a document, or check that it is up to date (``--check`` in tests)."""

from __future__ import annotations

import sys
from pathlib import Path


def update_between_markers(path: Path, blocks: list[tuple[str, str, str]], check: bool, remedy: str) -> int:
    """Replace, for each ``(start, end, block)``, the text from ``start`` to ``end`` (markers included) by ``block``
    (which carries its markers). ``check``: write nothing, exit code 1 when ``path`` differs. 2: markers missing."""
    text = path.read_text()
    new = text
    for start, end, block in blocks:
        if start not in new or end not in new:
            print(f"{path}: markers {start} / {end} not found", file=sys.stderr)
            return 2
        before, rest = new.split(start, 1)
        _, after = rest.split(end, 1)
        new = before + block + after
    if check:
        if new != text:
            print(f"{path}: generated text is stale; run {remedy}", file=sys.stderr)
            return 1
        return 0
    path.write_text(new)
    return 0
