"""Output agreement with fp32, as the budget loop and the safety net measure it."""

from __future__ import annotations

import numpy as np


def mean_cosine(ref, got) -> float:
    """Mean over samples (first axis) of the cosine between flattened outputs; 1.0 where both are zero."""
    r = np.asarray(ref, np.float64).reshape(len(ref), -1)
    g = np.asarray(got, np.float64).reshape(len(got), -1)
    denom = np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1)
    same = np.all(r == g, axis=1)
    cos = np.where(denom > 0, (r * g).sum(axis=1) / np.maximum(denom, 1e-300), 0.0)
    return float(np.where(same, 1.0, cos).mean())
