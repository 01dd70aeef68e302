"""Spatial functions of the kernel coefficients.

Two families. The reference's global polynomials: 2-D Chebyshev (first kind)
or plain polynomials in coordinates normalized to [-1, 1] over a bounding
box, their terms ordered by total degree, then by decreasing power of x, as in
the reference pipeline: ``1, x, y, x**2, x*y, y**2, ...``. And bilinear
interpolation between kernel nodes on a grid of node lines: one term per node,
its tent-shaped weight (1 at the node, 0 at its neighbours, products of 1-D hat
functions), held constant beyond the outermost node lines; the terms are
ordered row by row (``iy * n_x + ix``).
"""

import numpy as np
from numpy.polynomial import chebyshev

__all__ = []  # internal to the package: nothing here is public

POLYNOMIAL_MODELS = ("chebyshev1", "polynomial")
SPATIAL_MODELS = (*POLYNOMIAL_MODELS, "bilinear")


def n_spatial_terms(order):
    """Number of terms of a 2-D function of total degree ``order``.

    Examples
    --------
    >>> n_spatial_terms(2)
    6
    """
    return (order + 1) * (order + 2) // 2


def spatial_exponents(order):
    """Powers ``(i, j)`` of x and y of each term, in the term order.

    Examples
    --------
    >>> spatial_exponents(1).tolist()
    [[0, 0], [1, 0], [0, 1]]
    """
    pairs = [(degree - j, j) for degree in range(order + 1) for j in range(degree + 1)]
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def normalize_coordinates(x, y, bbox):
    """Map pixel coordinates onto [-1, 1] over ``bbox = (xmin, xmax, ymin, ymax)``."""
    xmin, xmax, ymin, ymax = bbox
    xn = (2.0 * np.asarray(x, dtype=float) - (xmin + xmax)) / (xmax - xmin)
    yn = (2.0 * np.asarray(y, dtype=float) - (ymin + ymax)) / (ymax - ymin)
    return xn, yn


def _one_dimensional(values, order, spatial_model):
    """Stack of T_k(values) (or values**k) for k = 0..order."""
    values = np.asarray(values, dtype=float)
    out = np.empty((order + 1, *values.shape))
    out[0] = 1.0
    if order >= 1:
        out[1] = values
    for k in range(2, order + 1):
        if spatial_model == "chebyshev1":
            out[k] = 2.0 * values * out[k - 1] - out[k - 2]
        else:
            out[k] = values * out[k - 1]
    return out


def spatial_terms(xn, yn, order, spatial_model):
    """Values of every spatial term at normalized coordinates.

    Parameters
    ----------
    xn, yn : float or array_like
        Coordinates already normalized to [-1, 1].
    order : int
        Total degree.
    spatial_model : {'chebyshev1', 'polynomial'}
        Chebyshev polynomials of the first kind, T_i(x) T_j(y), or x**i y**j.

    Returns
    -------
    terms : ndarray, shape (n_terms, *xn.shape)

    Examples
    --------
    >>> spatial_terms(0.5, -1.0, 2, 'chebyshev1').tolist()
    [1.0, 0.5, -1.0, -0.5, -0.5, 1.0]
    """
    xn, yn = np.broadcast_arrays(np.asarray(xn, dtype=float), np.asarray(yn, dtype=float))
    tx = _one_dimensional(xn, order, spatial_model)
    ty = _one_dimensional(yn, order, spatial_model)
    exponents = spatial_exponents(order)
    return np.stack([tx[i] * ty[j] for i, j in exponents])


def monomial_matrix(order, spatial_model):
    """Matrix expressing each spatial term as monomials ``xn**i * yn**j``.

    Returns ``A`` with shape (n_terms, n_terms) such that
    ``term_t = sum_m A[t, m] * xn**i_m * yn**j_m`` with ``(i_m, j_m)`` from
    :func:`spatial_exponents` (the same ordering is used for monomials).
    """
    exponents = spatial_exponents(order)
    index = {tuple(e): m for m, e in enumerate(exponents.tolist())}
    matrix = np.zeros((len(exponents), len(exponents)))
    for t, (i, j) in enumerate(exponents):
        if spatial_model == "chebyshev1":
            cx = chebyshev.cheb2poly(np.eye(i + 1)[i])
            cy = chebyshev.cheb2poly(np.eye(j + 1)[j])
        else:
            cx = np.eye(i + 1)[i]
            cy = np.eye(j + 1)[j]
        for a, ca in enumerate(cx):
            for b, cb in enumerate(cy):
                if ca != 0 and cb != 0:
                    matrix[t, index[(a, b)]] += ca * cb
    return matrix


def check_nodes(name, nodes):
    """A strictly increasing, finite 1-D float array of node positions."""
    nodes = np.asarray(nodes, dtype=float)
    if nodes.ndim != 1 or nodes.size == 0 or not np.all(np.isfinite(nodes)) or (
            nodes.size > 1 and not np.all(np.diff(nodes) > 0)):
        msg = f"{name} must be a non-empty, strictly increasing sequence of finite numbers"
        raise ValueError(msg)
    return nodes


def hat_weights(values, nodes):
    """1-D linear-interpolation weights of each node at each value, shape (n_nodes, ...).

    Constant beyond the end nodes; the weights sum to one everywhere.
    """
    values = np.asarray(values, dtype=float)
    out = np.zeros((nodes.size, *values.shape))
    if nodes.size == 1:
        out[0] = 1.0
        return out
    clipped = np.clip(values, nodes[0], nodes[-1])
    left = np.clip(np.searchsorted(nodes, clipped, side="right") - 1, 0, nodes.size - 2)
    u = (clipped - nodes[left]) / (nodes[left + 1] - nodes[left])
    index = np.indices(values.shape)
    out[(left, *index)] = 1.0 - u
    out[(left + 1, *index)] += u
    return out


def bilinear_terms(x, y, nodes_x, nodes_y):
    """Weight of every node at pixel positions, shape (n_y * n_x, ...), row by row.

    Examples
    --------
    >>> import numpy as np
    >>> from astropsfmatch._engine.spatial import bilinear_terms
    >>> bilinear_terms(25.0, 0.0, np.array([0.0, 100.0]), np.array([0.0, 50.0])).tolist()
    [0.75, 0.25, 0.0, 0.0]
    """
    x, y = np.broadcast_arrays(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
    wx = hat_weights(x, nodes_x)
    wy = hat_weights(y, nodes_y)
    return (wy[:, None] * wx[None, :]).reshape(nodes_y.size * nodes_x.size, *x.shape)


def node_intervals(nodes, size):
    """Pixel intervals of a bilinear axis: ``(start, stop, left, right)`` for each piece.

    Pixels ``start .. stop - 1`` lie between nodes ``left`` and ``right``
    (``left == right`` beyond the end nodes, where the weights are constant);
    their local coordinate is ``(x - nodes[left]) / (nodes[right] - nodes[left])``.
    """
    pieces = []
    edges = np.ceil(nodes).astype(int)
    first = int(min(max(edges[0], 0), size))
    if first > 0:
        pieces.append((0, first, 0, 0))
    for i in range(nodes.size - 1):
        start = int(min(max(edges[i], 0), size))
        stop = int(min(max(edges[i + 1], 0), size))
        if stop > start:
            pieces.append((start, stop, i, i + 1))
    last = int(min(max(edges[-1], 0), size))
    if last < size:
        pieces.append((last, size, nodes.size - 1, nodes.size - 1))
    return pieces
