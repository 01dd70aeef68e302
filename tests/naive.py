"""Plain NumPy / loop twins of every numba kernel in ``astropsfmatch._engine._numba``.

The tests assert that each jitted kernel agrees with its twin here.
"""

import numpy as np

# --- kernel fitting (astropsfmatch._engine._numba.fitting) -------------------------


def naive_convolve_valid(stamps, basis):
    """Valid-region true convolution of each stamp with each basis image, by loops."""
    n, size = stamps.shape[0], stamps.shape[1]
    n_basis, ksize = basis.shape[0], basis.shape[1]
    valid = size - ksize + 1
    out = np.zeros((n, n_basis, valid, valid))
    for c in range(n):
        for b in range(n_basis):
            for y in range(valid):
                for x in range(valid):
                    window = stamps[c, y:y + ksize, x:x + ksize]
                    out[c, b, y, x] = np.sum(window * basis[b, ::-1, ::-1])
    return out


def naive_separable_convolve_valid(stamps, x_factors, y_factors, x_index):
    """Same as the separable kernel, through the dense outer-product images."""
    basis = np.einsum("by,bx->byx", y_factors, x_factors[x_index])
    return naive_convolve_valid(stamps, basis)


def naive_separable_rows(stamps, x_factors):
    """The x pass: ``rows[c, f, r, x] = sum_i x_factors[f, i] * stamps[c, r, x + K - 1 - i]``."""
    n, size = stamps.shape[0], stamps.shape[1]
    n_x, ksize = x_factors.shape
    valid = size - ksize + 1
    rows = np.zeros((n, n_x, size, valid))
    for c in range(n):
        for f in range(n_x):
            for r in range(size):
                rows[c, f, r] = np.convolve(stamps[c, r], x_factors[f], mode="valid")
    return rows


def naive_separable_columns(rows, y_factors, x_index):
    """The y pass:
    ``out[c, b, y, x] = sum_j y_factors[b, j] * rows[c, x_index[b], y + K - 1 - j, x]``.
    """
    n, _, size, valid = rows.shape
    n_basis = y_factors.shape[0]
    out = np.zeros((n, n_basis, valid, valid))
    for c in range(n):
        for b in range(n_basis):
            for x in range(valid):
                out[c, b, :, x] = np.convolve(rows[c, x_index[b], :, x], y_factors[b],
                                              mode="valid")
    return out


def naive_normal_equations(convolved, target, weight):
    """M = C^T W C and b = C^T W t for each candidate, with NumPy."""
    n, n_basis = convolved.shape[:2]
    cols = convolved.reshape(n, n_basis, -1)
    t = target.reshape(n, -1)
    w = weight.reshape(n, -1)
    matrix = np.einsum("nap,np,nbp->nab", cols, w, cols)
    vector = np.einsum("nap,np,np->na", cols, w, t)
    return matrix, vector


def naive_accumulate_spatial(matrix, vector, terms):
    """Spatial normal equations by explicit design-matrix expansion.

    Unknowns: one constant for basis 0, then n_terms per other basis.
    The expansion matrix E (nb x n_unknowns) of each candidate maps the
    unknowns to its basis coefficients; M_sp = sum E^T M E, b_sp = sum E^T b.
    """
    n, n_basis = vector.shape
    n_terms = terms.shape[1]
    n_unknowns = 1 + (n_basis - 1) * n_terms
    out_matrix = np.zeros((n_unknowns, n_unknowns))
    out_vector = np.zeros(n_unknowns)
    for c in range(n):
        expand = np.zeros((n_basis, n_unknowns))
        expand[0, 0] = 1.0
        for i in range(1, n_basis):
            expand[i, 1 + (i - 1) * n_terms:1 + i * n_terms] = terms[c]
        out_matrix += expand.T @ matrix[c] @ expand
        out_vector += expand.T @ vector[c]
    return out_matrix, out_vector


# --- astropsfmatch._engine._numba.convolution (convolve.py) ---------------------------------------

def naive_spatially_varying_convolution(data, kernel, variance=None, normalize=True):
    """Brute force: at every pixel, the kernel from ``kernel.evaluate(x, y)`` applied directly.

    Returns ``(out, out_variance)`` in float64, NaN within ``h`` of the edge; no masking
    (give finite inputs). ``out[y, x] = sum_{j,i} K[j, i] data[y + h - j, x + h - i] / S``.
    """
    data = np.asarray(data, dtype=np.float64)
    ny, nx = data.shape
    size = kernel.kernel_size
    half = size // 2
    scale = kernel.kernel_sum if normalize else 1.0
    out = np.full((ny, nx), np.nan)
    out_var = None if variance is None else np.full((ny, nx), np.nan)
    if variance is not None:
        variance = np.asarray(variance, dtype=np.float64)
    for y in range(half, ny - half):
        for x in range(half, nx - half):
            k = kernel.evaluate(x, y) / scale
            # patch[j, i] = data[y + h - j, x + h - i]: the window flipped in both axes
            patch = data[y - half:y + half + 1, x - half:x + half + 1][::-1, ::-1]
            out[y, x] = np.sum(k * patch)
            if variance is not None:
                vpatch = variance[y - half:y + half + 1, x - half:x + half + 1][::-1, ::-1]
                out_var[y, x] = np.sum(k**2 * vpatch)
    return out, out_var


def naive_weighted_sum_rows(spectra, weights, group, out):
    """Twin of ``weighted_sum_rows``."""
    out[...] = 0
    for n in range(spectra.shape[0]):
        out[group[n]] += weights[n][:, None] * spectra[n]


def naive_weighted_sum_columns(planes, weights, out):
    """Twin of ``weighted_sum_columns``."""
    out[...] = np.sum(weights[:, None, :] * planes, axis=0)


def naive_dilate_box(bad, half, out):
    """Twin of ``dilate_box``: any bad pixel in the (2 half + 1)^2 box around each pixel."""
    ny, nx = bad.shape
    for y in range(ny):
        for x in range(nx):
            out[y, x] = bad[max(y - half, 0):y + half + 1, max(x - half, 0):x + half + 1].any()


# --- weights (astropsfmatch._engine._numba.weights) ---------------------------------


def naive_inverse_variance(variance, mask):
    """1 / variance where unmasked, finite and > 0, else 0 (NumPy)."""
    good = ~mask & np.isfinite(variance) & (variance > 0)
    out = np.zeros_like(variance)
    out[good] = 1 / variance[good]
    return out

