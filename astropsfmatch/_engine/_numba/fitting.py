"""Numba kernels of the kernel fit: basis convolutions of the PSF stamps and
the per-candidate and spatial normal equations.

Arrays put the candidate axis *last* ("candidate-last" layout): the
innermost loops then run over the ~1,000 candidates, contiguous in memory,
and vectorize, while the parallel loops split the basis functions or rows
among threads, each writing its own part of the output (no write races, and
the same result for any number of threads).

The separable basis convolution is two serial passes (`separable_rows`,
`separable_columns`) that the caller runs on disjoint ranges in threads:
numba compiles ``parallel=True`` loops several times slower (the parallel
version of this convolution took 7.7 s of a first run's 11 s of compilation),
and these two kernels run as fast.

Convolutions are true convolutions restricted to the complete ("valid")
region: with stamps of side S and kernels of side K the output side is
V = S - K + 1 and ``out[y, x] = sum_{j,i} B[j, i] * s[y + K-1-j, x + K-1-i]``.
"""

import numba
import numpy as np

from .options import JIT_OPTIONS, PARALLEL_JIT_OPTIONS


@numba.njit(**JIT_OPTIONS)
def separable_rows(stamps, x_factors, rows, start, stop):
    """The x pass of the separable basis convolution, for the (profile, row) pairs
    ``fr = f * S + r`` in ``start .. stop - 1``:
    ``rows[f, r, x] += sum_i x_factors[f, i] * stamps[r, x + K - 1 - i]``.

    stamps (S, S, n); x_factors (nx, K) distinct x profiles; rows (nx, S, V, n),
    zero before the first call. Serial: the caller runs disjoint ranges in threads
    (`astropsfmatch._engine.basis.separable_convolve_valid`).
    """
    size, n = stamps.shape[0], stamps.shape[2]
    ksize = x_factors.shape[1]
    valid = size - ksize + 1
    for fr in range(start, stop):
        f, r = fr // size, fr % size
        for x in range(valid):
            target = rows[f, r, x]
            for i in range(ksize):
                weight = x_factors[f, i]
                source = stamps[r, x + ksize - 1 - i]
                for c in range(n):
                    target[c] += weight * source[c]


@numba.njit(**JIT_OPTIONS)
def separable_columns(rows, y_factors, x_index, out, start, stop):
    """The y pass of the separable basis convolution, for the (function, row) pairs
    ``by = b * V + y`` in ``start .. stop - 1``:
    ``out[b, y] += sum_j y_factors[b, j] * rows[x_index[b], y + K - 1 - j]``.

    rows (nx, S, V, n) from `separable_rows`; y_factors (nb, K); x_index (nb,) the
    x profile of each function; out (nb, V, V, n), zero before the first call.
    """
    valid, n = out.shape[2], out.shape[3]
    ksize = y_factors.shape[1]
    for by in range(start, stop):
        b, y = by // valid, by % valid
        f = x_index[b]
        for j in range(ksize):
            weight = y_factors[b, j]
            for x in range(valid):
                target = out[b, y, x]
                source = rows[f, y + ksize - 1 - j, x]
                for c in range(n):
                    target[c] += weight * source[c]


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
