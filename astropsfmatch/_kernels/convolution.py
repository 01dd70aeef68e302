"""Numba kernels of the spatially varying convolution (``astropsfmatch.convolve``).

The convolution works on FFT tiles. After the inverse FFT along y of every
monomial product spectrum, :func:`weighted_sum_rows` multiplies each row by
its y-weight and groups the monomials that share a power of x;
:func:`weighted_sum_columns` applies the x-weights after the inverse FFT
along x and writes the output tile. :func:`dilate_box` grows the bad-pixel
map by the kernel footprint. All are serial and release the GIL, so that the
caller runs one tile per thread.
"""

import numba
import numpy as np

from ._options import JIT_OPTIONS

__all__ = ["dilate_box", "weighted_sum_columns", "weighted_sum_rows"]


@numba.njit(**JIT_OPTIONS)
def weighted_sum_rows(spectra, weights, group, out):
    """Group row-weighted planes: ``out[g] = sum_{n: group[n] == g} weights[n, :, None] * spectra[n]``.

    spectra (n, rows, cols) complex; weights (n, rows) real; group (n,) int in
    [0, out.shape[0]); out (n_groups, rows, cols) complex, overwritten.
    """
    n_planes, n_rows, n_cols = spectra.shape
    n_groups = out.shape[0]
    for i in range(n_rows):
        for g in range(n_groups):
            for k in range(n_cols):
                out[g, i, k] = 0.0
        for n in range(n_planes):
            g = group[n]
            w = weights[n, i]
            for k in range(n_cols):
                out[g, i, k] += w * spectra[n, i, k]


@numba.njit(**JIT_OPTIONS)
def weighted_sum_columns(planes, weights, out):
    """Sum column-weighted planes: ``out[i, j] = sum_a weights[a, j] * planes[a, i, j]``.

    planes (n, rows, cols) real; weights (n, cols) real; out (rows, cols), overwritten
    (it may be a view into a larger image).
    """
    n_planes, n_rows, n_cols = planes.shape
    for i in range(n_rows):
        for j in range(n_cols):
            out[i, j] = 0.0
        for a in range(n_planes):
            for j in range(n_cols):
                out[i, j] += weights[a, j] * planes[a, i, j]


@numba.njit(**JIT_OPTIONS)
def dilate_box(bad, half, out):
    """Binary dilation by a (2 half + 1) square box: ``out`` True where any
    ``bad`` pixel lies within ``half`` pixels in x and in y (zero outside the image).

    bad (ny, nx) bool; out (ny, nx) bool, overwritten. Two separable passes
    with running counts: O(1) work per pixel whatever the box size.
    """
    n_y, n_x = bad.shape
    rows = np.empty((n_y, n_x), dtype=np.bool_)
    for y in range(n_y):
        count = 0
        for x in range(min(half, n_x)):
            count += bad[y, x]
        for x in range(n_x):
            if x + half < n_x:
                count += bad[y, x + half]
            if x - half - 1 >= 0:
                count -= bad[y, x - half - 1]
            rows[y, x] = count > 0
    counts = np.zeros(n_x, dtype=np.int64)
    for y in range(min(half, n_y)):
        for x in range(n_x):
            counts[x] += rows[y, x]
    for y in range(n_y):
        if y + half < n_y:
            for x in range(n_x):
                counts[x] += rows[y + half, x]
        if y - half - 1 >= 0:
            for x in range(n_x):
                counts[x] -= rows[y - half - 1, x]
        for x in range(n_x):
            out[y, x] = counts[x] > 0
