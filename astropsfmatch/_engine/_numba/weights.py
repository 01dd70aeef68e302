"""Numba kernel of the inverse-variance weight map (one fused pass).

Serial: a 4096 x 4096 map takes a few hundredths of a second on one thread,
and a parallel loop would cost seconds of compilation on the first run.
"""

import numba
import numpy as np

from .options import JIT_OPTIONS


@numba.njit(**JIT_OPTIONS)
def inverse_variance(variance, mask):
    """1 / variance where unmasked, finite and > 0; else 0. 2-D, same dtype."""
    ny, nx = variance.shape
    out = np.empty_like(variance)
    for y in range(ny):
        for x in range(nx):
            v = variance[y, x]
            # v > 0 is False for NaN; v < inf excludes infinity
            if not mask[y, x] and v > 0 and v < np.inf:
                out[y, x] = 1 / v
            else:
                out[y, x] = 0
    return out
