"""Numba kernels of the kernel fit: basis convolutions of the PSF stamps and
the per-candidate and spatial normal equations.

Arrays put the candidate axis *last* ("candidate-last" layout): the
innermost loops then run over the ~1,000 candidates, contiguous in memory,
and vectorize, while the parallel loops split the basis functions or rows
among threads, each writing its own part of the output (no write races, and
the same result for any number of threads).

Convolutions are true convolutions restricted to the complete ("valid")
region: with stamps of side S and kernels of side K the output side is
V = S - K + 1 and ``out[y, x] = sum_{j,i} B[j, i] * s[y + K-1-j, x + K-1-i]``.
"""

import numba
import numpy as np

from .options import PARALLEL_JIT_OPTIONS


@numba.njit(**PARALLEL_JIT_OPTIONS)
def separable_convolve_valid(stamps, x_factors, y_factors, x_index):
    """Convolve stamps with separable functions ``outer(y_factors[b], x_factors[x_index[b]])``.

    stamps (S, S, n); x_factors (nx, K) distinct x profiles; y_factors (nb, K);
    x_index (nb,) the x profile of each function. Returns (nb, V, V, n).
    The x pass is shared by every function with the same x profile.
    """
    size, n = stamps.shape[0], stamps.shape[2]
    n_x, ksize = x_factors.shape
    n_basis = y_factors.shape[0]
    valid = size - ksize + 1
    rows = np.zeros((n_x, size, valid, n))
    for fr in numba.prange(n_x * size):
        f, r = fr // size, fr % size
        for x in range(valid):
            for i in range(ksize):
                weight = x_factors[f, i]
                src = x + ksize - 1 - i
                for c in range(n):
                    rows[f, r, x, c] += weight * stamps[r, src, c]
    out = np.zeros((n_basis, valid, valid, n))
    for by in numba.prange(n_basis * valid):
        b, y = by // valid, by % valid
        f = x_index[b]
        for j in range(ksize):
            weight = y_factors[b, j]
            row = y + ksize - 1 - j
            for x in range(valid):
                for c in range(n):
                    out[b, y, x, c] += weight * rows[f, row, x, c]
    return out


@numba.njit(**PARALLEL_JIT_OPTIONS)
def convolve_valid(stamps, basis):
    """Convolve stamps (S, S, n) with dense basis images (nb, K, K) -> (nb, V, V, n)."""
    size, n = stamps.shape[0], stamps.shape[2]
    n_basis, ksize = basis.shape[0], basis.shape[1]
    valid = size - ksize + 1
    out = np.zeros((n_basis, valid, valid, n))
    for by in numba.prange(n_basis * valid):
        b, y = by // valid, by % valid
        for j in range(ksize):
            for i in range(ksize):
                weight = basis[b, j, i]
                if weight == 0.0:
                    continue
                for x in range(valid):
                    src = x + ksize - 1 - i
                    for c in range(n):
                        out[b, y, x, c] += weight * stamps[y + ksize - 1 - j, src, c]
    return out


@numba.njit(**PARALLEL_JIT_OPTIONS)
def normal_equations(convolved, target, weight):
    """Per-candidate normal equations M = C^T W C and b = C^T W t.

    convolved (nb, P, n) with P the pixels of the valid region, target (P, n),
    weight (P, n). Returns M (nb, nb, n) and b (nb, n), candidate-last.
    """
    n_basis, n_pix, n = convolved.shape
    matrix = np.zeros((n_basis, n_basis, n))
    vector = np.zeros((n_basis, n))
    for a in numba.prange(n_basis):
        weighted = np.empty((n_pix, n))
        for p in range(n_pix):
            for c in range(n):
                weighted[p, c] = convolved[a, p, c] * weight[p, c]
        for p in range(n_pix):
            for c in range(n):
                vector[a, c] += weighted[p, c] * target[p, c]
        for b in range(a, n_basis):
            for p in range(n_pix):
                for c in range(n):
                    matrix[a, b, c] += weighted[p, c] * convolved[b, p, c]
    for a in range(n_basis):
        for b in range(a):
            for c in range(n):
                matrix[a, b, c] = matrix[b, a, c]
    return matrix, vector


@numba.njit(**PARALLEL_JIT_OPTIONS)
def accumulate_spatial(matrix, vector, terms):
    """Spatial normal equations from per-candidate ones, every basis with every term.

    matrix (nb, nb, n) and vector (nb, n) candidate-last, terms (nt, n) the
    spatial terms at each candidate. Returns the full system
    ``M[(i, t), (j, s)] = sum_c matrix[i, j, c] p_t p_s`` with shape
    (nb * nt, nb * nt) and ``b[(i, t)] = sum_c vector[i, c] p_t``; the
    caller keeps the unknowns it solves for. Each (i, j) block is summed by
    one thread, in candidate order.
    """
    n_basis, n = vector.shape
    n_terms = terms.shape[0]
    outer = np.empty((n_terms * n_terms, n))
    for t in range(n_terms):
        for s in range(n_terms):
            for c in range(n):
                outer[t * n_terms + s, c] = terms[t, c] * terms[s, c]
    full = np.zeros((n_basis * n_terms, n_basis * n_terms))
    full_vector = np.zeros(n_basis * n_terms)
    for ij in numba.prange(n_basis * n_basis):
        i, j = ij // n_basis, ij % n_basis
        for q in range(n_terms * n_terms):
            acc = 0.0
            for c in range(n):
                acc += matrix[i, j, c] * outer[q, c]
            full[i * n_terms + q // n_terms, j * n_terms + q % n_terms] = acc
    for it in numba.prange(n_basis * n_terms):
        i, t = it // n_terms, it % n_terms
        acc = 0.0
        for c in range(n):
            acc += vector[i, c] * terms[t, c]
        full_vector[it] = acc
    return full, full_vector
