"""Pipeline steps, one module per stage; each step: explicit inputs (lake, ``dt``, config) -> published URIs.

This package is the only place that knows both the lake layout and the computation modules (a thin hub).
"""

from dealrec_tasks.steps.common import StepResult
from dealrec_tasks.steps.data import (
    changed_days,
    compact,
    import_dealrec,
    ingest,
    log_days,
    pending_days,
    replay,
    samples,
    samples_from_dataset,
    synthetic,
)

__all__ = [
    "StepResult",
    "changed_days",
    "compact",
    "import_dealrec",
    "ingest",
    "log_days",
    "pending_days",
    "replay",
    "samples",
    "samples_from_dataset",
    "synthetic",
]
