"""Paired comparisons on the same rows: a seeded bootstrap of the rows and its central interval.

The gate compares a candidate with the champion on the same test rows. Each resample weighs every
row by how often it was drawn, and both models are scored under the same weights, so the
difference is paired; its central ``CONFIDENCE`` interval over ``RESAMPLES`` resamples is the
uncertainty the gate records. A task supplies the per-row statistic; this module the resampling.
"""

from __future__ import annotations

import numpy as np

RESAMPLES = 2000
CONFIDENCE = 0.95
SEED = 0


def row_weights(rows: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """``resamples`` x ``rows``: how often each row was drawn in each seeded resample."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(rows, np.full(rows, 1 / rows), size=resamples).astype(float)


def central_interval(differences: np.ndarray) -> tuple[float, float]:
    """The central ``CONFIDENCE`` interval of the resampled differences."""
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(differences, [tail, 1 - tail])
    return float(low), float(high)
