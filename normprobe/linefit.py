"""The minimum of a loss sampled on a grid of step sizes (core: numpy only, shared by linesearch and claims)."""

from __future__ import annotations

import numpy as np


def refine_minimum(alphas: np.ndarray, losses: np.ndarray) -> tuple[float, bool]:
    """The grid's argmin, moved to the vertex of the parabola through it and its two neighbours.

    Returns (α*, at_edge): at an end of the grid there is no parabola and the minimum may lie beyond it.
    """
    i = int(np.nanargmin(losses))
    if i == 0 or i == len(alphas) - 1:
        return float(alphas[i]), True
    (x0, x1, x2), (y0, y1, y2) = alphas[i - 1 : i + 2], losses[i - 1 : i + 2]
    numerator = (x1 - x0) ** 2 * (y1 - y2) - (x1 - x2) ** 2 * (y1 - y0)
    denominator = (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0)
    if denominator == 0 or not np.isfinite(denominator):
        return float(x1), False
    return float(np.clip(x1 - 0.5 * numerator / denominator, x0, x2)), False
