"""Numba kernels of the spatially varying convolution (``_engine.convolve``).

The convolution works on FFT tiles. After the inverse FFT along y of every
product of the tile's spectrum with a kernel spectrum, :func:`weighted_sum_rows`
multiplies each row by its y-weight and groups the products that share an
x-weight; :func:`weighted_sum_columns` applies the x-weights after the
inverse FFT along x and writes the output tile. :func:`dilate_box` grows the
bad-pixel map by the kernel footprint. All are serial and release the GIL,
so that the caller runs one tile per thread. The caller passes the arrays of
one dtype per call (float32 or float64): at most two signatures each, and
only three kernels, so that a first run compiles little. The other steps
(copying a tile into the FFT buffer, the products of spectra) are single
NumPy calls that are as fast.
"""

import numba
import numpy as np

from .options import JIT_OPTIONS

__all__ = []  # internal to the package: nothing here is public


# The loops below index 1-D row views with bare loop counters only: with
# offsets added inside the index LLVM keeps the negative-index wrap-around
# checks and does not vectorize (about 9x slower, measured).


@numba.njit(**JIT_OPTIONS)
def weighted_sum_rows(spectra, row0, weights, w0, n_rows, group, out):
    """Group row-weighted planes:
    ``out[g, i] = sum_{n: group[n] == g} weights[n, w0 + i] * spectra[n, row0 + i]`` for
    ``i < n_rows``.

    spectra (n, rows, cols) real (complex spectra viewed as pairs of reals);
    weights (n, >= w0 + n_rows); group (n,) int in [0, out.shape[0]); out (n_groups,
    >= n_rows, cols): rows ``0 .. n_rows - 1`` are overwritten.
    """
    n_planes, n_cols = spectra.shape[0], spectra.shape[2]
    n_groups = out.shape[0]
    for i in range(n_rows):
        for g in range(n_groups):
            target = out[g, i]
            for k in range(n_cols):
                target[k] = 0.0
        for n in range(n_planes):
            target = out[group[n], i]
            source = spectra[n, row0 + i]
            w = weights[n, w0 + i]
            for k in range(n_cols):
                target[k] += w * source[k]


@numba.njit(**JIT_OPTIONS)
def weighted_sum_columns(planes, col0, weights, w0, out, y0, x0, n_cols):
    """Sum column-weighted planes into a block of ``out``:
    ``out[y0 + i, x0 + j] = sum_a weights[a, w0 + j] * planes[a, i, col0 + j]``
    for ``i < planes.shape[1]``, ``j < n_cols``.

    planes (n, rows, cols) real; weights (n, >= w0 + n_cols) real; out (ny, nx).
    """
    n_planes, n_rows = planes.shape[0], planes.shape[1]
    column_weights = np.empty((n_planes, n_cols), dtype=planes.dtype)
    for a in range(n_planes):
        for j in range(n_cols):
            column_weights[a, j] = weights[a, w0 + j]
    total = np.empty(n_cols, dtype=planes.dtype)
    for i in range(n_rows):
        source = planes[0, i, col0:col0 + n_cols]
        w = column_weights[0]
        for j in range(n_cols):
            total[j] = w[j] * source[j]
        for a in range(1, n_planes):
            source = planes[a, i, col0:col0 + n_cols]
            w = column_weights[a]
            for j in range(n_cols):
                total[j] += w[j] * source[j]
        target = out[y0 + i, x0:x0 + n_cols]
        for j in range(n_cols):
            target[j] = total[j]


@numba.njit(**JIT_OPTIONS)
def dilate_box(bad, half, out):
    """Binary dilation by a (2 half + 1) square box: ``out`` True where any
    ``bad`` pixel lies within ``half`` pixels in x and in y (zero outside the image).

    bad (ny, nx) bool; out (ny, nx) bool, overwritten. Two separable passes
    with running counts, O(1) work per pixel whatever the box size: along x
    into ``out``, then along y in place, the rows still needed kept in a ring
    of 2 half + 2 rows.
    """
    n_y, n_x = bad.shape
    for y in range(n_y):
        source = bad[y]
        target = out[y]
        count = 0
        for x in range(min(half, n_x)):
            count += source[x]
        for x in range(n_x):
            if x + half < n_x:
                count += source[x + half]
            if x - half - 1 >= 0:
                count -= source[x - half - 1]
            target[x] = count > 0
    n_ring = 2 * half + 2
    ring = np.empty((n_ring, n_x), dtype=np.bool_)
    counts = np.zeros(n_x, dtype=np.int64)
    for y in range(min(half, n_y)):
        row = ring[y % n_ring]
        source = out[y]
        for x in range(n_x):
            row[x] = source[x]
            counts[x] += row[x]
    for y in range(n_y):
        if y + half < n_y:
            row = ring[(y + half) % n_ring]
            source = out[y + half]
            for x in range(n_x):
                row[x] = source[x]
                counts[x] += row[x]
        if y - half - 1 >= 0:
            row = ring[(y - half - 1) % n_ring]
            for x in range(n_x):
                counts[x] -= row[x]
        target = out[y]
        for x in range(n_x):
            target[x] = counts[x] > 0

