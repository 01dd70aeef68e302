"""Numba kernel of the inverse-variance weight map (one fused pass)."""

import numba
import numpy as np

from .options import PARALLEL_JIT_OPTIONS


@numba.njit(**PARALLEL_JIT_OPTIONS)
def inverse_variance(variance, mask):
    """1 / variance where unmasked, finite and > 0; else 0. 2-D, same dtype."""
    ny, nx = variance.shape
    out = np.empty_like(variance)
    for y in numba.prange(ny):
        for x in range(nx):
            v = variance[y, x]
            # v > 0 is False for NaN; v < inf excludes infinity
            if not mask[y, x] and v > 0 and v < np.inf:
                out[y, x] = 1 / v
            else:
                out[y, x] = 0
    return out
