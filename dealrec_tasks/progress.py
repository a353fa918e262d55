"""Progress bars for long loops (stderr, so stdout keeps the summaries)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T], desc: str, unit: str = "it", total: int | None = None) -> Iterator[T]:
    """tqdm with our defaults; ``DEALREC_PROGRESS=0`` silences it (logs of schedulers)."""
    disable = os.environ.get("DEALREC_PROGRESS", "1") == "0"
    return iter(tqdm(iterable, desc=desc, unit=unit, total=total, disable=disable, leave=False, dynamic_ncols=True))


def progress_bar(total: int, desc: str, unit: str = "it") -> tqdm | LineProgress:
    """A bar advanced by hand (``bar.update(k)``) for loops that move in uneven steps (batches of samples).

    In a terminal a tqdm bar; in a log (stderr not a terminal: an Airflow task, a redirected run) a line every 10 %,
    since a bar redrawn with carriage returns shows only its first state there."""
    disable = os.environ.get("DEALREC_PROGRESS", "1") == "0"
    if not disable and not sys.stderr.isatty():
        return LineProgress(total, desc, unit)
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, leave=False, dynamic_ncols=True)


class LineProgress:
    """``update``/``close`` like tqdm, printing ``desc: done/total unit (p %, rate)`` at each further 10 %."""

    def __init__(self, total: int, desc: str, unit: str, step: float = 0.1):
        self.total, self.desc, self.unit, self.step = max(int(total), 0), desc, unit, step
        self.n, self.next_mark, self.started, self.postfix = 0, step, time.monotonic(), ""

    def set_postfix(self, refresh: bool = False, **values) -> None:
        """Shown on the next line (``loss=...``)."""
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, k: int = 1) -> None:
        self.n += k
        done = self.n / self.total if self.total else 1.0
        if done + 1e-9 >= self.next_mark or self.n >= self.total:
            rate = self.n / max(time.monotonic() - self.started, 1e-9)
            extra = f", {self.postfix}" if self.postfix else ""
            shown = f"{100 * done:.0f} %, {rate:.1f} {self.unit}/s{extra}"
            print(f"{self.desc}: {self.n}/{self.total} {self.unit} ({shown})", file=sys.stderr, flush=True)
            while self.next_mark <= done + 1e-9:
                self.next_mark += self.step

    def close(self) -> None:
        pass


def report(line: str) -> None:
    """A progress line for steps whose unit of progress is not a loop we own (epochs with metrics)."""
    if os.environ.get("DEALREC_PROGRESS", "1") != "0":
        print(line, file=sys.stderr, flush=True)
