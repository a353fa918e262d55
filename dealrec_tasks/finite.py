"""Refuse numbers no later step should see: non-finite weights, scores or metrics, and scores that are all equal.

Every step calls these right before it publishes, so a diverged surrogate, a NaN influence or an all-zero effort
stops with one line naming the value and the step (``DegenerateError``, exit 2) instead of flowing into a coreset
that looks fine. Pure checks: they return nothing and touch no storage. No torch import here (the CLI and the DAGs'
Params import the steps, and start-up stays light): tensors are recognised by their methods.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np

from dealrec_tasks.errors import DegenerateError

if TYPE_CHECKING:
    import torch


def _first_bad(values: np.ndarray) -> str:
    """``N of M non-finite (first: nan at index i)``."""
    bad = np.flatnonzero(~np.isfinite(values))
    return (
        f"{len(bad):,} of {values.size:,} values are not finite (first: {float(values.flat[bad[0]])} at index {bad[0]})"
    )


def check_finite(values, what: str, remedy: str = "") -> None:
    """Refuse ``values`` (array-like or tensor) holding NaN or +-inf; the message starts with ``what``."""
    arr = values.detach().cpu().numpy() if hasattr(values, "detach") else np.asarray(values, dtype=np.float64)
    if arr.size and not np.isfinite(arr).all():
        raise DegenerateError(f"{what}: {_first_bad(arr)}" + (f"; {remedy}" if remedy else ""))


def check_scores(values, what: str, remedy: str = "", distinct_inputs: int | None = None) -> None:
    """Refuse scores that are not finite, or all equal over two or more rows (a ranking of them is no ranking).

    ``distinct_inputs``: how many different inputs the scores are of, when rows may repeat one (equal prompts give
    equal scores); all-equal is refused only when there are at least two."""
    check_finite(values, what, remedy)
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    rows = len(arr) if distinct_inputs is None else distinct_inputs
    if rows >= 2 and len(arr) and arr.min() == arr.max():
        raise DegenerateError(
            f"{what}: all {len(arr):,} scores equal {float(arr[0])!r}, which ranks nothing"
            + (f"; {remedy}" if remedy else "")
        )


def check_state(
    state: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]], what: str, remedy: str = ""
) -> None:
    """Refuse model weights (a state dict or named parameters) with a non-finite value, naming the tensor."""
    items = state.items() if isinstance(state, Mapping) else state
    for name, tensor in items:
        finite = tensor.isfinite()
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise DegenerateError(
                f"{what}: {bad:,} of {tensor.numel():,} weights of {name} are not finite"
                + (f"; {remedy}" if remedy else "")
            )
