"""Progress bars for long loops (stderr, so stdout keeps the summaries)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T], desc: str, unit: str = "it", total: int | None = None) -> Iterator[T]:
    """tqdm with our defaults; ``DEALREC_PROGRESS=0`` silences it (logs of schedulers)."""
    disable = os.environ.get("DEALREC_PROGRESS", "1") == "0"
    return iter(tqdm(iterable, desc=desc, unit=unit, total=total, disable=disable, leave=False, dynamic_ncols=True))


def progress_bar(total: int, desc: str, unit: str = "it") -> tqdm:
    """A bar advanced by hand (``bar.update(k)``) for loops that move in uneven steps (batches of samples)."""
    disable = os.environ.get("DEALREC_PROGRESS", "1") == "0"
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, leave=False, dynamic_ncols=True)


def report(line: str) -> None:
    """A progress line for steps whose unit of progress is not a loop we own (epochs with metrics)."""
    if os.environ.get("DEALREC_PROGRESS", "1") != "0":
        print(line, file=sys.stderr, flush=True)
