"""Per-candidate and spatial kernel solutions (DESIGN §2 steps 5-7, 10).

Every candidate gives normal equations ``M = C^T W C``, ``b = C^T W t`` where
the columns of ``C`` are its source stamp convolved with each basis function
(on the pixels where the convolution is complete) and ``t`` is its target
stamp. Each basis coefficient then varies over the image as a 2-D spatial
function; the coefficient of the first basis function (the kernel sum) is a
constant held at 1, and the others are solved from the sum over candidates
of ``M ⊗ p p^T``. The kernel is solved for unit sum; a caller that wants
another sum scales the solution once (`SpatialSolution.scaled`).

Inside the solver every per-candidate array keeps the candidate axis *last*
(the layout of the numba kernels in ``_numba.fitting``): stamps (S, S, n),
normal matrices (nb, nb, n), right-hand sides (nb, n), spatial terms
(nt, n). The inputs are converted once on entry and the per-candidate
results once on exit (`CandidateFit`).
"""

import dataclasses
import time
from dataclasses import dataclass

import numpy as np

from .._logging import log
from ..config import MatchConfig
from ._numba import fitting
from .basis import KernelBasis, renormalize
from .candidates import CandidateFit
from .kernel import SpatialKernel
from .spatial import normalize_coordinates, spatial_terms

# the public names of this module, re-exported by astropsfmatch/__init__.py
__all__ = ["KernelSolutionError"]

#: The reference defaults, the one source of the defaults below.
_REFERENCE = MatchConfig()


class KernelSolutionError(RuntimeError):
    """The kernel could not be solved (e.g. ill-conditioned beyond the allowed maximum)."""


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


def regularization_matrix(kernel_size, *, regularization_type=_REFERENCE.regularization_type,
                          stencil=_REFERENCE.central_regularization_stencil,
                          orders=_REFERENCE.forward_regularization_orders,
                          border_penalty=_REFERENCE.regularization_border_penalty):
    """Penalty matrix ``H`` on the kernel pixels, ``penalty = k^T H k``.

    Central difference: ``H = L^T L`` with ``L`` the 5- or 9-point Laplacian.
    Forward difference: sum over ``orders`` of ``D^T D`` for x and y
    differences (order 0 is the identity). Border pixels get an extra
    ``border_penalty`` on their squared value, pulling the kernel edge to zero.

    Examples
    --------
    >>> from astropsfmatch._engine.solve import regularization_matrix
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
    """Solve candidate-last systems (nb, nb, n) a = (nb, n); singular ones by least squares.

    LAPACK solves stacks with the stack axis first: the one transposition of
    the solver is here.
    """
    stack, rhs = np.moveaxis(matrices, -1, 0), vectors.T
    try:
        return np.linalg.solve(stack, rhs[..., None])[..., 0].T
    except np.linalg.LinAlgError:
        out = np.empty_like(rhs)
        for k in range(stack.shape[0]):
            out[k] = np.linalg.lstsq(stack[k], rhs[k], rcond=None)[0]
        return out.T


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
    spatial_residuals : ndarray, shape (n, V, V)
        ``(source ⊛ K(x, y) - target)`` / target peak at each candidate,
        with the spatial kernel, on the complete-convolution region.
    spatial_residual_max : ndarray
        Max of ``abs(spatial_residuals)`` at each candidate.
    info : dict
        Condition numbers, solver, unknowns, regularization strength, timings.
    basis : KernelBasis
        The basis the spatial fit used (PCA components when PCA is on).
    """

    kernel: SpatialKernel
    fits: list
    rejected: np.ndarray
    reasons: list
    spatial_residuals: np.ndarray
    spatial_residual_max: np.ndarray
    info: dict
    basis: KernelBasis

    def scaled(self, kernel_sum):
        """The same solution for a kernel summing to ``kernel_sum`` (targets scaled by it).

        Least squares is linear in the target: every kernel, coefficient and
        model scales by ``kernel_sum``; residuals relative to the target peak
        do not change.
        """
        if kernel_sum == 1.0:
            return self
        fits = [dataclasses.replace(fit, coefficients=fit.coefficients * kernel_sum,
                                    kernel=fit.kernel * kernel_sum,
                                    kernel_sum=fit.kernel_sum * kernel_sum,
                                    model=fit.model * kernel_sum)
                for fit in self.fits]
        return dataclasses.replace(self, kernel=self.kernel.scaled(kernel_sum), fits=fits)


def _weights(targets_valid, constant):
    """Pixel weights, (P, n) like the candidate-last targets."""
    if constant:
        return np.ones_like(targets_valid)
    # Poisson-like weighting of a bright star, floored so the wings count
    peak = np.abs(targets_valid).max(axis=0, keepdims=True)
    return 1.0 / (np.abs(targets_valid) + 1e-3 * peak)


def _models(coefficients, convolved):
    """Model stamps (P, n) from coefficients (nb, n) and convolutions (nb, P, n)."""
    return np.einsum("bn,bpn->pn", coefficients, convolved, optimize=True)


class _Problem:
    """The stamps of one fit in the candidate-last layout, and their normal equations."""

    def __init__(self, sources, targets, kernel_size, config):
        n, size = sources.shape[0], sources.shape[1]
        half = kernel_size // 2
        self.valid = size - kernel_size + 1
        self.config = config
        # the one conversion of the inputs: candidate axis last
        self.sources = np.ascontiguousarray(np.moveaxis(sources, 0, -1), dtype=np.float64)
        window = targets[:, half:half + self.valid, half:half + self.valid]
        self.targets = np.ascontiguousarray(
            np.moveaxis(window.reshape(n, -1), 0, -1), dtype=np.float64)  # (P, n)
        self.peaks = targets.max(axis=(1, 2))
        self.weights = _weights(self.targets, config.constant_variance_weighting)
        self.regularization_lambda = 0.0

    def normal_equations(self, basis, regularize):
        """Convolutions (nb, P, n), matrices (nb, nb, n) and vectors (nb, n) of ``basis``."""
        convolved = basis.convolve(self.sources)
        convolved = convolved.reshape(basis.n_basis, self.valid * self.valid, -1)
        matrices, vectors = fitting.normal_equations(convolved, self.targets, self.weights)
        if regularize:
            config = self.config
            pixels = basis.images.reshape(basis.n_basis, -1)
            penalty = regularization_matrix(
                basis.size, regularization_type=config.regularization_type,
                stencil=config.central_regularization_stencil,
                orders=config.forward_regularization_orders,
                border_penalty=config.regularization_border_penalty)
            if config.lambda_type == "relative":
                mean_trace = np.trace(matrices, axis1=0, axis2=1).mean()
                lam = config.lambda_scaling * mean_trace / np.trace(penalty)
            else:
                lam = config.lambda_value
            matrices = matrices + lam * (pixels @ penalty @ pixels.T)[:, :, None]
            self.regularization_lambda = float(lam)
        return convolved, matrices, vectors

    def fit_candidates(self, basis, convolved, matrices, vectors):
        """Unconstrained per-candidate solutions: coefficients (nb, n), kernels, fits."""
        coefficients = _solve_stack(matrices, vectors)
        models = _models(coefficients, convolved)
        residuals = (models - self.targets) / self.peaks
        kernels = np.tensordot(coefficients.T, basis.images, axes=(1, 0))
        conditions = _condition_numbers(np.moveaxis(matrices, -1, 0),
                                        self.config.condition_number_type)
        shape = (self.valid, self.valid)
        # the one conversion of the outputs: one CandidateFit per candidate
        sums = kernels.sum(axis=(1, 2)).tolist()
        means = residuals.mean(axis=0).tolist()
        stds = residuals.std(axis=0).tolist()
        maxima = np.abs(residuals).max(axis=0).tolist()
        fits = [CandidateFit(coefficients=coefficients[:, k], kernel=kernels[k],
                             kernel_sum=sums[k], model=models[:, k].reshape(shape),
                             residual=residuals[:, k].reshape(shape), residual_mean=means[k],
                             residual_std=stds[k], residual_max=maxima[k],
                             condition_number=float(conditions[k]))
                for k in range(coefficients.shape[1])]
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
    _, renormalized = renormalize(images.reshape(-1, size, size))
    return renormalized


def _reject(conditions, config):
    """Candidates rejected by the condition-number check, with their reasons."""
    rejected = np.zeros(len(conditions), dtype=bool)
    reasons = [""] * len(conditions)
    if config.check_condition_number:
        limit = config.effective_max_condition_number
        for k in np.flatnonzero(conditions > limit):
            rejected[k] = True
            reasons[k] = f"condition number {conditions[k]:.3g} > {limit:.3g}"
    if rejected.all():
        msg = (f"all {len(conditions)} kernel candidates were rejected "
               f"({reasons[0] if reasons else 'none given'}); relax max_condition_number "
               "or use a smaller kernel_size")
        raise KernelSolutionError(msg)
    return rejected, reasons


def _spatial_fit(matrices, vectors, terms, n_basis, config):
    """Spatial coefficients (nb, nt) of a unit-sum kernel, its condition number and solver."""
    full_matrix, full_vector = fitting.accumulate_spatial(
        np.ascontiguousarray(matrices), np.ascontiguousarray(vectors),
        np.ascontiguousarray(terms))
    n_terms = terms.shape[0]
    sp_matrix, sp_vector = _spatial_unknowns(full_matrix, full_vector, n_basis, n_terms)
    # the kernel-sum coefficient is fixed at 1: move its column to the right-hand side
    reduced_matrix = sp_matrix[1:, 1:]
    reduced_vector = sp_vector[1:] - sp_matrix[1:, 0]
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
    if solver == "pseudo-inverse":
        log.warning(f"spatial normal matrix is singular (condition number {condition:.3g}); "
                    "solved with the pseudo-inverse")
    coefficients = np.zeros((n_basis, n_terms))
    coefficients[0, 0] = 1.0
    coefficients[1:] = solution.reshape(n_basis - 1, n_terms)
    return coefficients, condition, solver


def solve_spatial_kernel(sources, targets, x, y, *, basis, config, bbox):
    """Solve the spatially varying, unit-sum kernel from PSF stamp pairs.

    Parameters
    ----------
    sources, targets : ndarray, shape (n, S, S)
        Unit-flux source and target stamps at each candidate.
    x, y : ndarray, shape (n,)
        Candidate positions in image pixels.
    basis : KernelBasis
        Basis to fit.
    config : MatchConfig
        Spatial model and order, regularization, PCA, condition checks,
        weighting.
    bbox : tuple
        ``(xmin, xmax, ymin, ymax)`` over which positions are normalized.

    Returns
    -------
    solution : SpatialSolution
        Its kernel sums to 1 at every position; `SpatialSolution.scaled`
        gives another sum.

    Raises
    ------
    KernelSolutionError
        No usable candidate, or the spatial condition number above
        ``max_spatial_condition_number`` with ``check_condition_number``.
    """
    timings = {}
    start = time.perf_counter()
    problem = _Problem(np.asarray(sources), np.asarray(targets), basis.size, config)
    regularize = basis.kind == "delta-function" and config.use_regularization
    convolved, matrices, vectors = problem.normal_equations(basis, regularize)
    timings["normal_equations"] = time.perf_counter() - start

    t0 = time.perf_counter()
    fits, kernels, conditions = problem.fit_candidates(basis, convolved, matrices, vectors)
    rejected, reasons = _reject(conditions, config)
    if config.use_pca_for_spatial_kernel:
        images = _pca_basis(kernels[~rejected], config.num_principal_components,
                            config.subtract_mean_for_pca)
        basis = KernelBasis.from_images(
            images, kind="pca",
            parameters={"from": basis.kind, "n_components": images.shape[0] - 1},
            labels=["mean" if config.subtract_mean_for_pca else "PC0"]
            + [f"PC{k}" for k in range(1, images.shape[0])])
        convolved, matrices, vectors = problem.normal_equations(basis, False)
        fits, kernels, conditions = problem.fit_candidates(basis, convolved, matrices, vectors)
    timings["candidate_fits"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    xn, yn = normalize_coordinates(x, y, bbox)
    terms = spatial_terms(xn, yn, config.spatial_order, config.spatial_model)  # (nt, n)
    use = ~rejected
    coefficients, condition, solver = _spatial_fit(
        matrices[:, :, use], vectors[:, use], terms[:, use], basis.n_basis, config)
    timings["spatial_solve"] = time.perf_counter() - t0

    kernel = SpatialKernel(basis.images, coefficients, spatial_model=config.spatial_model,
                           spatial_order=config.spatial_order, bbox=bbox)
    models = _models(coefficients @ terms, convolved)  # (P, n) with the spatial kernel
    residuals = (models - problem.targets) / problem.peaks
    valid = problem.valid
    spatial_residuals = np.moveaxis(residuals, -1, 0).reshape(-1, valid, valid)
    timings["total"] = time.perf_counter() - start
    info = {
        "regularization_lambda": problem.regularization_lambda,
        "n_unknowns": int(1 + (basis.n_basis - 1) * terms.shape[0]),
        "spatial_condition_number": condition,
        "solver": solver,
        "candidate_condition_numbers": conditions,
        "timings": timings,
    }
    return SpatialSolution(kernel=kernel, fits=fits, rejected=rejected, reasons=reasons,
                           spatial_residuals=spatial_residuals,
                           spatial_residual_max=np.abs(residuals).max(axis=0), info=info,
                           basis=basis)
