"""Which rows count: the one rule for leaving rows out (NumPy only)."""

from __future__ import annotations

import numpy as np


def massive_row_mask(rows: np.ndarray, factor: float = 10.0) -> np.ndarray:
    """True for rows whose norm exceeds ``factor`` times the median row norm of the chunk.

    SmolLM2's residual stream has a few positions (the first token, separators) with norms
    of 10,000 or more against a few hundred for ordinary tokens; left in, they dominate
    every mean-squared quantity. Such rows are excluded from training and from the metrics
    (and counted apart).
    """
    norms = np.linalg.norm(rows.astype(np.float64), axis=-1)
    return norms > factor * np.median(norms)
