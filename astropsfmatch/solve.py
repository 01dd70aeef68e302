"""Per-candidate and spatial kernel solutions (DESIGN §2 steps 5-7, 10).

Every candidate gives normal equations ``M = C^T W C``, ``b = C^T W t`` where
the columns of ``C`` are its source stamp convolved with each basis function
(on the pixels where the convolution is complete) and ``t`` is its target
stamp. Each basis coefficient then varies over the image as a 2-D spatial
function; the coefficient of the first basis function (the kernel sum) is a
constant held at ``kernel_sum``, and the others are solved from the sum over
candidates of ``M ⊗ p p^T``.
"""

import time
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ._kernels import fitting
from ._logging import log
from .basis import _alard_lupton_parts, _renormalization, make_delta_function_basis
from .cells import CandidateFit
from .kernel import SpatialKernel
from .spatial import normalize_coordinates, spatial_terms

__all__ = ["KernelBasis", "KernelSolutionError", "SpatialSolution", "regularization_matrix",
           "solve_spatial_kernel"]


class KernelSolutionError(RuntimeError):
    """The kernel could not be solved (e.g. ill-conditioned beyond the allowed maximum)."""


class KernelBasis:
    """Basis images and the fastest way to convolve PSF stamps with them.

    Use the constructors :meth:`alard_lupton`, :meth:`delta_function` and
    :meth:`from_images`. ``images[0]`` sums to one and all others sum to
    zero, so the kernel sum is the first coefficient.
    """

    def __init__(self, images, *, kind, convolve, parameters=None):
        self.images = np.ascontiguousarray(images, dtype=np.float64)
        self.kind = kind
        self._convolve = convolve
        self.parameters = dict(parameters or {})

    @property
    def size(self):
        """Kernel side K."""
        return self.images.shape[1]

    @property
    def n_basis(self):
        """Number of basis functions."""
        return self.images.shape[0]

    def convolve(self, stamps):
        """Valid-region convolutions of stamps (n, S, S) with every basis image.

        Returns an array of shape (nb, V, V, n): candidate-last, the layout of
        the fitting kernels.
        """
        stamps = np.ascontiguousarray(np.moveaxis(np.asarray(stamps, dtype=np.float64), 0, -1))
        return self._convolve(stamps)

    @classmethod
    def alard_lupton(cls, kernel_size, sigmas, degrees, *, mode="config"):
        """Alard-Lupton basis; convolutions use its separable structure."""
        images, matrix, x_factors, y_factors = _alard_lupton_parts(kernel_size, sigmas, degrees)
        # distinct x profiles: functions of one Gaussian share them
        distinct, x_index = np.unique(x_factors, axis=0, return_inverse=True)
        distinct = np.ascontiguousarray(distinct)
        x_index = np.ascontiguousarray(x_index.ravel(), dtype=np.int64)
        y_factors = np.ascontiguousarray(y_factors)

        def convolve(stamps):
            raw = fitting.separable_convolve_valid(stamps, distinct, y_factors, x_index)
            # the renormalization is linear: one matrix product over all pixels
            return (matrix @ raw.reshape(raw.shape[0], -1)).reshape(raw.shape)

        parameters = {"sigmas": tuple(float(s) for s in sigmas),
                      "degrees": tuple(int(d) for d in degrees), "mode": mode}
        return cls(images, kind="alard-lupton", convolve=convolve, parameters=parameters)

    @classmethod
    def delta_function(cls, kernel_size):
        """Delta-function basis reparametrized so the kernel sum is one coefficient.

        Function 0 is the delta at the kernel centre; function ``i > 0`` is
        the delta at another pixel minus the central one (sum zero).
        """
        deltas = make_delta_function_basis(kernel_size)
        n_pixels = deltas.shape[0]
        centre = n_pixels // 2
        order = [centre] + [p for p in range(n_pixels) if p != centre]
        matrix = np.zeros((n_pixels, n_pixels))
        for row, p in enumerate(order):
            matrix[row, p] = 1.0
            if row:
                matrix[row, centre] -= 1.0
        images = np.tensordot(matrix, deltas, axes=1)

        def convolve(stamps):
            valid = stamps.shape[0] - kernel_size + 1
            n = stamps.shape[2]
            # windows[oy, ox, c] is the valid-size window at offset (oy, ox); the
            # delta at kernel pixel (j, i) picks offset (K-1-j, K-1-i)
            windows = sliding_window_view(stamps, (valid, valid), axis=(0, 1))
            shifted = np.moveaxis(windows[::-1, ::-1], 2, -1).reshape(n_pixels, -1)
            return (matrix @ shifted).reshape(n_pixels, valid, valid, n)

        return cls(images, kind="delta-function", convolve=convolve)

    @classmethod
    def from_images(cls, images, *, kind="pca", parameters=None):
        """Any dense basis (e.g. principal components); direct convolution."""
        images = np.ascontiguousarray(images, dtype=np.float64)
        return cls(images, kind=kind, convolve=lambda s: fitting.convolve_valid(s, images),
                   parameters=parameters)


def _stencil_operator(kernel_size, stencil):
    """Discrete Laplacian (5- or 9-point) of the kernel image, zero outside it."""
    if stencil == 5:
        weights = {(0, 0): -4.0, (0, 1): 1.0, (0, -1): 1.0, (1, 0): 1.0, (-1, 0): 1.0}
    else:
        weights = {(dy, dx): 1.0 for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
        weights[(0, 0)] = -8.0
    n = kernel_size * kernel_size
    operator = np.zeros((n, n))
    for y in range(kernel_size):
        for x in range(kernel_size):
            for (dy, dx), w in weights.items():
                yy, xx = y + dy, x + dx
                if 0 <= yy < kernel_size and 0 <= xx < kernel_size:
                    operator[y * kernel_size + x, yy * kernel_size + xx] = w
    return operator


def _forward_difference_operator(kernel_size, order, axis):
    """Forward difference of the given order along one axis of the kernel image."""
    one_d = np.eye(kernel_size)
    for _ in range(order):
        one_d = (np.eye(kernel_size, k=1) - np.eye(kernel_size)) @ one_d
        one_d[-1] = 0.0
    identity = np.eye(kernel_size)
    return np.kron(identity, one_d) if axis == 1 else np.kron(one_d, identity)


def regularization_matrix(kernel_size, *, regularization_type="central-difference", stencil=9,
                          orders=(1, 2), border_penalty=3.0):
    """Penalty matrix ``H`` on the kernel pixels, ``penalty = k^T H k``.

    Central difference: ``H = L^T L`` with ``L`` the 5- or 9-point Laplacian.
    Forward difference: sum over ``orders`` of ``D^T D`` for x and y
    differences (order 0 is the identity). Border pixels get an extra
    ``border_penalty`` on their squared value, pulling the kernel edge to zero.

    Examples
    --------
    >>> from astropsfmatch.solve import regularization_matrix
    >>> regularization_matrix(5).shape
    (25, 25)
    """
    if regularization_type == "central-difference":
        operator = _stencil_operator(kernel_size, stencil)
        matrix = operator.T @ operator
    else:
        matrix = np.zeros((kernel_size**2, kernel_size**2))
        for order in orders:
            for axis in (0, 1):
                operator = _forward_difference_operator(kernel_size, order, axis)
                matrix += operator.T @ operator
    if border_penalty:
        border = np.ones((kernel_size, kernel_size), dtype=bool)
        border[1:-1, 1:-1] = False
        matrix[np.diag_indices_from(matrix)] += border_penalty * border.ravel()
    return matrix


def _condition_numbers(matrices, kind):
    """Condition number of each symmetric matrix in a stack (or of one matrix)."""
    if kind == "svd":
        values = np.linalg.svd(matrices, compute_uv=False)
    else:
        values = np.abs(np.linalg.eigvalsh(matrices))
    high = values.max(axis=-1)
    low = values.min(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(low > 0, high / np.where(low > 0, low, 1.0), np.inf)


def _solve_stack(matrices, vectors):
    """Solve a stack of small systems; singular ones by least squares."""
    try:
        return np.linalg.solve(matrices, vectors[..., None])[..., 0]
    except np.linalg.LinAlgError:
        out = np.empty_like(vectors)
        for k in range(matrices.shape[0]):
            out[k] = np.linalg.lstsq(matrices[k], vectors[k], rcond=None)[0]
        return out


def _lu_or_pseudo_inverse(matrix, vector, condition=None):
    """LU solve (LAPACK gesv); the pseudo-inverse for a singular matrix.

    A matrix is taken as singular when LAPACK finds an exactly zero pivot,
    the solution is not finite, or its condition number is beyond what
    double precision resolves (1 / eps).
    """
    if condition is None or condition < 1.0 / np.finfo(np.float64).eps:
        try:
            solution = np.linalg.solve(matrix, vector)
            if np.all(np.isfinite(solution)):
                return solution, "lu"
        except np.linalg.LinAlgError:
            pass
    return np.linalg.pinv(matrix, hermitian=True) @ vector, "pseudo-inverse"


def _spatial_unknowns(full_matrix, full_vector, n_basis, n_terms):
    """Keep the unknowns of the spatial fit: the constant term of basis 0 and
    every term of the other bases (term 0 is the constant 1).
    """
    keep = np.concatenate([[0], np.arange(n_terms, n_basis * n_terms)])
    return full_matrix[np.ix_(keep, keep)], full_vector[keep]


@dataclass
class SpatialSolution:
    """What :func:`solve_spatial_kernel` found.

    Attributes
    ----------
    kernel : SpatialKernel
    fits : list of CandidateFit
        One per candidate, in input order.
    rejected : ndarray of bool
        Candidates left out of the spatial fit.
    reasons : list of str
    spatial_residual_max : ndarray
        Max of ``abs(source ⊛ K(x, y) - target)`` / target peak at each candidate.
    info : dict
        Condition numbers, solver, unknowns, regularization strength, timings.
    basis : KernelBasis
        The basis the spatial fit used (PCA components when PCA is on).
    """

    kernel: SpatialKernel
    fits: list
    rejected: np.ndarray
    reasons: list
    spatial_residual_max: np.ndarray
    info: dict
    basis: KernelBasis


def _weights(targets_valid, constant):
    """Pixel weights, (P, n) like the candidate-last targets."""
    if constant:
        return np.ones_like(targets_valid)
    # Poisson-like weighting of a bright star, floored so the wings count
    peak = np.abs(targets_valid).max(axis=0, keepdims=True)
    return 1.0 / (np.abs(targets_valid) + 1e-3 * peak)


def _models(coefficients, convolved):
    """Model stamps (n, V, V) from coefficients (n, nb) and convolutions (nb, V, V, n)."""
    n_basis, valid, _, n = convolved.shape
    flat = convolved.reshape(n_basis, valid * valid, n)
    return np.einsum("nb,bpn->np", coefficients, flat, optimize=True).reshape(n, valid, valid)


def _fit_candidates(convolved, targets_valid, matrices, vectors, basis, peaks, condition_type):
    """Unconstrained per-candidate solutions and their residual statistics."""
    coefficients = _solve_stack(matrices, vectors)
    models = _models(coefficients, convolved)
    residuals = (models - targets_valid) / peaks[:, None, None]
    kernels = np.tensordot(coefficients, basis.images, axes=(1, 0))
    conditions = _condition_numbers(matrices, condition_type)
    sums = kernels.sum(axis=(1, 2)).tolist()
    means = residuals.mean(axis=(1, 2)).tolist()
    stds = residuals.std(axis=(1, 2)).tolist()
    maxima = np.abs(residuals).max(axis=(1, 2)).tolist()
    fits = [CandidateFit(coefficients=coefficients[k], kernel=kernels[k], kernel_sum=sums[k],
                         model=models[k], residual=residuals[k], residual_mean=means[k],
                         residual_std=stds[k], residual_max=maxima[k],
                         condition_number=float(conditions[k]))
            for k in range(len(coefficients))]
    return fits, kernels, conditions


def _pca_basis(kernels, n_components, subtract_mean):
    """Mean kernel and principal components, renormalized like the AL basis."""
    flat = kernels.reshape(len(kernels), -1)
    size = kernels.shape[1]
    if subtract_mean:
        mean = flat.mean(axis=0)
        _, _, vt = np.linalg.svd(flat - mean, full_matrices=False)
        images = np.vstack([mean[None], vt[:n_components]])
    else:
        _, _, vt = np.linalg.svd(flat, full_matrices=False)
        images = vt[:n_components + 1].copy()
        # first component as the kernel-sum carrier: orient it to a positive sum
        images[0] *= np.sign(images[0].sum()) or 1.0
    _, renormalized = _renormalization(images.reshape(-1, size, size))
    return renormalized


def solve_spatial_kernel(sources, targets, x, y, *, basis, config, bbox, kernel_sum=1.0):
    """Solve the spatially varying kernel from PSF stamp pairs.

    Parameters
    ----------
    sources, targets : ndarray, shape (n, S, S)
        Unit-flux source stamps and target stamps (already scaled by
        ``kernel_sum``) at each candidate.
    x, y : ndarray, shape (n,)
        Candidate positions in image pixels.
    basis : KernelBasis
        Basis to fit.
    config : MatchConfig
        Spatial model and order, regularization, PCA, condition checks,
        weighting.
    bbox : tuple
        ``(xmin, xmax, ymin, ymax)`` over which positions are normalized.
    kernel_sum : float
        Sum of the returned kernel at every position.

    Returns
    -------
    solution : SpatialSolution

    Raises
    ------
    KernelSolutionError
        No usable candidate, or the spatial condition number above
        ``max_spatial_condition_number`` with ``check_condition_number``.
    """
    timings = {}
    start = time.perf_counter()
    sources = np.ascontiguousarray(sources, dtype=np.float64)
    targets = np.ascontiguousarray(targets, dtype=np.float64)
    half = basis.size // 2
    valid = sources.shape[1] - basis.size + 1
    targets_valid = targets[:, half:half + valid, half:half + valid]
    targets_last = np.ascontiguousarray(targets_valid.reshape(len(targets), -1).T)  # (P, n)
    peaks = targets.max(axis=(1, 2))
    weights = _weights(targets_last, config.constant_variance_weighting)
    info = {"regularization_lambda": 0.0}

    def normal_equations(current_basis, regularize):
        convolved = current_basis.convolve(sources)
        flat = convolved.reshape(current_basis.n_basis, valid * valid, -1)
        matrices, vectors = fitting.normal_equations(flat, targets_last, weights)
        # the small per-candidate systems are solved as a stack: candidate first
        matrices, vectors = np.moveaxis(matrices, -1, 0), vectors.T
        if regularize:
            pixels = current_basis.images.reshape(current_basis.n_basis, -1)
            penalty = regularization_matrix(
                current_basis.size, regularization_type=config.regularization_type,
                stencil=config.central_regularization_stencil,
                orders=config.forward_regularization_orders,
                border_penalty=config.regularization_border_penalty)
            if config.lambda_type == "relative":
                lam = config.lambda_scaling * np.trace(matrices.mean(axis=0)) / np.trace(penalty)
            else:
                lam = config.lambda_value
            matrices = matrices + lam * (pixels @ penalty @ pixels.T)
            info["regularization_lambda"] = float(lam)
        return convolved, matrices, vectors

    regularize = basis.kind == "delta-function" and config.use_regularization
    convolved, matrices, vectors = normal_equations(basis, regularize)
    timings["normal_equations"] = time.perf_counter() - start

    t0 = time.perf_counter()
    fits, kernels, conditions = _fit_candidates(convolved, targets_valid, matrices, vectors,
                                                basis, peaks, config.condition_number_type)
    rejected = np.zeros(len(fits), dtype=bool)
    reasons = [""] * len(fits)
    if config.check_condition_number:
        limit = config.effective_max_condition_number
        for k in np.flatnonzero(conditions > limit):
            rejected[k] = True
            reasons[k] = f"condition number {conditions[k]:.3g} > {limit:.3g}"
    if rejected.all():
        msg = (f"all {len(fits)} kernel candidates were rejected "
               f"({reasons[0] if reasons else 'none given'}); relax max_condition_number "
               "or use a smaller kernel_size")
        raise KernelSolutionError(msg)

    if config.use_pca_for_spatial_kernel:
        images = _pca_basis(kernels[~rejected], config.num_principal_components,
                            config.subtract_mean_for_pca)
        basis = KernelBasis.from_images(images, kind="pca",
                                        parameters={"from": basis.kind,
                                                    "n_components": images.shape[0] - 1})
        convolved, matrices, vectors = normal_equations(basis, False)
        fits, kernels, conditions = _fit_candidates(convolved, targets_valid, matrices, vectors,
                                                    basis, peaks, config.condition_number_type)
    timings["candidate_fits"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    xn, yn = normalize_coordinates(x, y, bbox)
    terms = np.ascontiguousarray(spatial_terms(xn, yn, config.spatial_order,
                                               config.spatial_model).T)
    use = ~rejected
    full_matrix, full_vector = fitting.accumulate_spatial(
        np.ascontiguousarray(np.moveaxis(matrices[use], 0, -1)),
        np.ascontiguousarray(vectors[use].T), np.ascontiguousarray(terms[use].T))
    n_terms = terms.shape[1]
    sp_matrix, sp_vector = _spatial_unknowns(full_matrix, full_vector, basis.n_basis, n_terms)
    # the kernel-sum coefficient is fixed: move its column to the right-hand side
    reduced_matrix = sp_matrix[1:, 1:]
    reduced_vector = sp_vector[1:] - sp_matrix[1:, 0] * kernel_sum
    if reduced_matrix.size:
        condition = float(_condition_numbers(reduced_matrix, config.condition_number_type))
        if config.check_condition_number and condition > config.max_spatial_condition_number:
            msg = (f"spatial condition number {condition:.3g} exceeds "
                   f"max_spatial_condition_number {config.max_spatial_condition_number:.3g}; "
                   "lower spatial_order, use larger cells, or a smaller basis")
            raise KernelSolutionError(msg)
        solution, solver = _lu_or_pseudo_inverse(reduced_matrix, reduced_vector, condition)
    else:
        condition, solution, solver = 1.0, np.zeros(0), "none"
    if solver != "lu":
        log.warning(f"spatial normal matrix is singular (condition number {condition:.3g}); "
                    "solved with the pseudo-inverse")
    coefficients = np.zeros((basis.n_basis, n_terms))
    coefficients[0, 0] = kernel_sum
    coefficients[1:] = solution.reshape(basis.n_basis - 1, n_terms)
    timings["spatial_solve"] = time.perf_counter() - t0

    kernel = SpatialKernel(basis.images, coefficients, spatial_model=config.spatial_model,
                           spatial_order=config.spatial_order, bbox=bbox)
    local = coefficients @ terms.T  # (nb, n): coefficients at each candidate
    models = _models(local.T, convolved)
    spatial_residual = np.abs(models - targets_valid).max(axis=(1, 2)) / peaks
    timings["total"] = time.perf_counter() - start
    info.update({
        "n_unknowns": int(1 + (basis.n_basis - 1) * n_terms),
        "spatial_condition_number": condition,
        "solver": solver,
        "candidate_condition_numbers": conditions,
        "timings": timings,
    })
    return SpatialSolution(kernel=kernel, fits=fits, rejected=rejected, reasons=reasons,
                           spatial_residual_max=spatial_residual, info=info, basis=basis)
