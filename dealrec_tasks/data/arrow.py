"""Small helpers over Arrow list columns shared by the data modules."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def list_lengths(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Length of every list in a list column: [rows] int64."""
    return pc.list_value_length(col).to_numpy(zero_copy_only=False).astype(np.int64)


def flat_values(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """All values of a list column, concatenated in row order."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return arr.flatten().to_numpy(zero_copy_only=False)
