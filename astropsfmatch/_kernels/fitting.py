"""Numba kernels of the kernel fit: basis convolutions of the PSF stamps and
the per-candidate and spatial normal equations.

Convolutions are true convolutions restricted to the complete ("valid")
region: with stamps of side S and kernels of side K the output side is
V = S - K + 1 and ``out[y, x] = sum_{j,i} B[j, i] * s[y + K-1-j, x + K-1-i]``.
"""

import numba
import numpy as np

from ._options import JIT_OPTIONS, PARALLEL_JIT_OPTIONS


@numba.njit(**PARALLEL_JIT_OPTIONS)
def separable_convolve_valid(stamps, x_factors, y_factors, x_index):
    """Convolve every stamp with separable functions ``outer(y_factors[b], x_factors[x_index[b]])``.

    stamps (n, S, S); x_factors (nx, K) distinct x profiles; y_factors (nb, K);
    x_index (nb,) which x profile each function uses. Returns (n, nb, V, V).
    The x pass is shared by every function with the same x profile; the
    innermost loops run along rows so that they vectorize.
    """
    n, size = stamps.shape[0], stamps.shape[1]
    n_x, ksize = x_factors.shape
    n_basis = y_factors.shape[0]
    valid = size - ksize + 1
    out = np.zeros((n, n_basis, valid, valid))
    for c in numba.prange(n):
        rows = np.zeros((n_x, size, valid))
        for f in range(n_x):
            for r in range(size):
                for i in range(ksize):
                    weight = x_factors[f, i]
                    shift = ksize - 1 - i
                    for x in range(valid):
                        rows[f, r, x] += weight * stamps[c, r, x + shift]
        for b in range(n_basis):
            f = x_index[b]
            for y in range(valid):
                for j in range(ksize):
                    weight = y_factors[b, j]
                    row = y + ksize - 1 - j
                    for x in range(valid):
                        out[c, b, y, x] += weight * rows[f, row, x]
    return out


@numba.njit(**PARALLEL_JIT_OPTIONS)
def convolve_valid(stamps, basis):
    """Convolve every stamp (n, S, S) with every dense basis image (nb, K, K) -> (n, nb, V, V)."""
    n, size = stamps.shape[0], stamps.shape[1]
    n_basis, ksize = basis.shape[0], basis.shape[1]
    valid = size - ksize + 1
    out = np.zeros((n, n_basis, valid, valid))
    for c in numba.prange(n):
        for b in range(n_basis):
            for j in range(ksize):
                for i in range(ksize):
                    weight = basis[b, j, i]
                    if weight == 0.0:
                        continue
                    for y in range(valid):
                        for x in range(valid):
                            out[c, b, y, x] += weight * stamps[c, y + ksize - 1 - j, x + ksize - 1 - i]
    return out


@numba.njit(**PARALLEL_JIT_OPTIONS)
def normal_equations(convolved, target, weight):
    """Per-candidate normal equations M = C^T W C and b = C^T W t.

    convolved (n, nb, V, V), target (n, V, V), weight (n, V, V).
    Returns M (n, nb, nb) and b (n, nb).
    """
    n, n_basis = convolved.shape[0], convolved.shape[1]
    n_pix = convolved.shape[2] * convolved.shape[3]
    matrix = np.empty((n, n_basis, n_basis))
    vector = np.empty((n, n_basis))
    for c in numba.prange(n):
        cols = convolved[c].reshape(n_basis, n_pix)
        t = target[c].reshape(n_pix)
        w = weight[c].reshape(n_pix)
        weighted = np.empty((n_basis, n_pix))
        for a in range(n_basis):
            for p in range(n_pix):
                weighted[a, p] = cols[a, p] * w[p]
        for a in range(n_basis):
            acc = 0.0
            for p in range(n_pix):
                acc += weighted[a, p] * t[p]
            vector[c, a] = acc
            for b in range(a, n_basis):
                acc = 0.0
                for p in range(n_pix):
                    acc += weighted[a, p] * cols[b, p]
                matrix[c, a, b] = acc
                matrix[c, b, a] = acc
    return matrix, vector


@numba.njit(**JIT_OPTIONS)
def _accumulate_spatial_share(matrix, vector, terms, start, stop, out_matrix, out_vector):
    """Serial worker: add candidates [start, stop) to one thread's buffers."""
    n_basis = matrix.shape[1]
    n_terms = terms.shape[1]
    for c in range(start, stop):
        p = terms[c]
        # basis 0 has one (constant) unknown; basis i > 0 has n_terms of them
        out_vector[0] += vector[c, 0]
        out_matrix[0, 0] += matrix[c, 0, 0]
        for i in range(1, n_basis):
            row = 1 + (i - 1) * n_terms
            m0i = matrix[c, 0, i]
            bi = vector[c, i]
            for t in range(n_terms):
                out_vector[row + t] += bi * p[t]
                out_matrix[0, row + t] += m0i * p[t]
                out_matrix[row + t, 0] += m0i * p[t]
            for j in range(1, n_basis):
                col = 1 + (j - 1) * n_terms
                mij = matrix[c, i, j]
                for t in range(n_terms):
                    mt = mij * p[t]
                    for s in range(n_terms):
                        out_matrix[row + t, col + s] += mt * p[s]


@numba.njit(**PARALLEL_JIT_OPTIONS)
def accumulate_spatial(matrix, vector, terms, n_chunks):
    """Spatial normal equations from per-candidate ones.

    matrix (n, nb, nb), vector (n, nb), terms (n, nt) spatial terms at each
    candidate. The unknowns are one constant coefficient for basis 0 and
    nt coefficients for each other basis. Candidates are split into
    ``n_chunks`` shares, each accumulated into its own buffer in parallel,
    then the buffers are summed: no write races.
    """
    n, n_basis = matrix.shape[0], matrix.shape[1]
    n_terms = terms.shape[1]
    n_unknowns = 1 + (n_basis - 1) * n_terms
    buffers_m = np.zeros((n_chunks, n_unknowns, n_unknowns))
    buffers_v = np.zeros((n_chunks, n_unknowns))
    for k in numba.prange(n_chunks):
        start = (n * k) // n_chunks
        stop = (n * (k + 1)) // n_chunks
        _accumulate_spatial_share(matrix, vector, terms, start, stop, buffers_m[k], buffers_v[k])
    out_matrix = np.zeros((n_unknowns, n_unknowns))
    out_vector = np.zeros(n_unknowns)
    for k in range(n_chunks):
        out_matrix += buffers_m[k]
        out_vector += buffers_v[k]
    return out_matrix, out_vector
