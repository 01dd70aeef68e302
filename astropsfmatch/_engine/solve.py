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


#: Above this many functions the normal equations are one BLAS product per candidate
#: (the candidate-vectorized kernel pays off for the small Alard-Lupton bases).
_LARGE_BASIS = 64

#: Relative strengths tried by ``lambda_type='adaptive'``, weakest first.
_ADAPTIVE_LAMBDAS = (1e-10, 1e-9, 1e-8, 1e-7, 1e-6, 1e-5)

#: ... and how much larger than the best one an accepted residual may be.
_ADAPTIVE_TOLERANCE = 1.25


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
    differences. Ridge: the identity (``k^T k``, the noise gain squared of
    the kernel). Border pixels get an extra
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
    elif regularization_type == "ridge":
        # the sum of the squared kernel pixels: the noise the kernel adds
        matrix = np.eye(kernel_size**2)
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


#: Values below this magnitude are set to zero before products: the far wings of a
#: Gaussian PSF are subnormal numbers, and arithmetic on them is ~10x slower.
_TINY = 1e-150


def flush_tiny(array):
    """``array`` with values smaller than 1e-150 in magnitude set to zero (in place)."""
    array[np.abs(array) < _TINY] = 0.0
    return array


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
        self.sources = flush_tiny(np.array(np.moveaxis(sources, 0, -1), dtype=np.float64,
                                           order="C"))
        window = targets[:, half:half + self.valid, half:half + self.valid]
        self.targets = np.ascontiguousarray(
            np.moveaxis(window.reshape(n, -1), 0, -1), dtype=np.float64)  # (P, n)
        self.peaks = targets.max(axis=(1, 2))
        self.weights = _weights(self.targets, config.constant_variance_weighting)
        self.regularization_lambda = 0.0

    def normal_equations(self, basis, regularize):
        """Convolutions (nb, P, n), matrices (nb, nb, n) and vectors (nb, n) of ``basis``.

        With ``regularize`` the matrices include the penalty at the strength
        of ``lambda_type`` (for ``'adaptive'``: at the smallest strength; see
        :meth:`solve_constrained`), and ``self.penalty`` holds the penalty
        matrix in basis coordinates.
        """
        convolved = basis.convolve(self.sources)
        convolved = convolved.reshape(basis.n_basis, self.valid * self.valid, -1)
        n = convolved.shape[2]
        if 4 * n < basis.n_basis or basis.n_basis > _LARGE_BASIS:
            # few candidates and a large basis: one BLAS product per candidate is faster
            # than the candidate-vectorized kernel, whose inner loop is then short
            matrices = np.empty((basis.n_basis, basis.n_basis, n))
            vectors = np.empty((basis.n_basis, n))
            for c in range(n):
                weighted = convolved[:, :, c] * self.weights[:, c]
                matrices[:, :, c] = weighted @ convolved[:, :, c].T
                vectors[:, c] = weighted @ self.targets[:, c]
        else:
            matrices, vectors = fitting.normal_equations(convolved, self.targets, self.weights)
        self.penalty = None
        self.lambdas = None
        if regularize:
            config = self.config
            pixels = basis.images.reshape(basis.n_basis, -1)
            operator = regularization_matrix(
                basis.size, regularization_type=config.regularization_type,
                stencil=config.central_regularization_stencil,
                orders=config.forward_regularization_orders,
                border_penalty=config.regularization_border_penalty)
            self.penalty = pixels @ operator @ pixels.T
            scale = np.trace(matrices, axis1=0, axis2=1).mean() / np.trace(operator)
            self.lambda_scale = scale
            if config.lambda_type == "relative":
                self.lambdas = [config.lambda_scaling * scale]
            elif config.lambda_type == "adaptive":
                self.lambdas = [r * scale for r in _ADAPTIVE_LAMBDAS]
            else:
                self.lambdas = [config.lambda_value]
            matrices = matrices + self.lambdas[0] * self.penalty[:, :, None]
            self.regularization_lambda = float(self.lambdas[0])
        return convolved, matrices, vectors

    def solve_constrained(self, convolved, matrices, vectors):
        """Per-candidate coefficients (nb, n) with the first one (the kernel sum) held at 1.

        With ``lambda_type='adaptive'`` each candidate takes the largest
        strength whose largest residual is within 25% of the smallest over
        the strengths tried: the least noisy kernel that matches as well.
        """
        def solve(mats):
            reduced = mats[1:, 1:]
            rhs = vectors[1:] - mats[1:, 0]
            coefficients = np.ones((mats.shape[0], mats.shape[2]))
            if reduced.shape[0]:
                coefficients[1:] = _solve_stack(reduced, rhs)
            return coefficients

        coefficients = solve(matrices)
        if not self.lambdas or len(self.lambdas) == 1:
            return coefficients
        residual = np.abs(_models(coefficients, convolved) - self.targets).max(axis=0)
        best, chosen = residual.copy(), coefficients
        lambdas = np.full(coefficients.shape[1], self.lambdas[0])
        for lam in self.lambdas[1:]:
            trial = solve(matrices + (lam - self.lambdas[0]) * self.penalty[:, :, None])
            trial_residual = np.abs(_models(trial, convolved) - self.targets).max(axis=0)
            best = np.minimum(best, trial_residual)
            accept = trial_residual <= _ADAPTIVE_TOLERANCE * best
            chosen = np.where(accept, trial, chosen)
            lambdas = np.where(accept, lam, lambdas)
        self.regularization_lambda = float(lambdas.max())
        return chosen

    @property
    def relative_lambda(self):
        """The regularization strength as a multiple of ``tr(M) / tr(H)`` (0 without)."""
        scale = getattr(self, "lambda_scale", 0.0)
        return self.regularization_lambda / scale if scale else 0.0

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
    # as in the reference, n_components counts the kernels kept, the mean included
    if subtract_mean:
        mean = flat.mean(axis=0)
        _, _, vt = np.linalg.svd(flat - mean, full_matrices=False)
        images = np.vstack([mean[None], vt[:n_components - 1]])
    else:
        _, _, vt = np.linalg.svd(flat, full_matrices=False)
        images = vt[:n_components].copy()
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
        limit = config.effective_max_spatial_condition_number
        if config.check_condition_number and condition > limit:
            msg = (f"spatial condition number {condition:.3g} exceeds "
                   f"max_spatial_condition_number {limit:.3g}; "
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
            parameters={"from": basis.kind, "n_components": images.shape[0]},
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


def solve_node_kernels(sources, targets, *, basis, config, nodes):
    """Solve one unit-sum kernel per node of a bilinear spatial model.

    Parameters
    ----------
    sources, targets : ndarray, shape (n, S, S)
        Unit-flux source and target stamps at the nodes, row by row
        (``n = len(nodes_y) * len(nodes_x)``).
    basis : KernelBasis
        Basis to fit.
    config : MatchConfig
        Regularization, weighting, condition-number options.
    nodes : tuple of ndarray
        ``(nodes_x, nodes_y)``.

    Returns
    -------
    solution : SpatialSolution
        Its kernel is the bilinear interpolation of the node kernels; each
        node kernel is the least-squares solution with the kernel sum held at
        1 (the nodes are independent: no spatial fit).

    Raises
    ------
    KernelSolutionError
        With ``check_condition_number``, a node whose normal matrix is above
        ``max_condition_number`` (a bilinear model needs every node).
    """
    timings = {}
    start = time.perf_counter()
    problem = _Problem(np.asarray(sources), np.asarray(targets), basis.size, config)
    regularize = basis.kind == "delta-function" and config.use_regularization
    convolved, matrices, vectors = problem.normal_equations(basis, regularize)
    timings["normal_equations"] = time.perf_counter() - start

    t0 = time.perf_counter()
    fits, _, conditions = problem.fit_candidates(basis, convolved, matrices, vectors)
    if config.check_condition_number:
        limit = config.effective_max_condition_number
        bad = np.flatnonzero(conditions > limit)
        if bad.size:
            msg = (f"{bad.size} of {len(conditions)} kernel nodes have a normal-matrix "
                   f"condition number above max_condition_number {limit:.3g} (largest "
                   f"{conditions.max():.3g}); relax max_condition_number or use a smaller "
                   "kernel_size")
            raise KernelSolutionError(msg)
    coefficients = problem.solve_constrained(convolved, matrices, vectors)
    timings["node_solve"] = time.perf_counter() - t0

    kernel = SpatialKernel(basis.images, coefficients, spatial_model="bilinear", nodes=nodes)
    residuals = (_models(coefficients, convolved) - problem.targets) / problem.peaks
    valid = problem.valid
    timings["total"] = time.perf_counter() - start
    info = {
        "regularization_lambda": problem.regularization_lambda,
        "relative_lambda": problem.relative_lambda,
        "n_unknowns": int((basis.n_basis - 1) * coefficients.shape[1]),
        "spatial_condition_number": float(conditions.max()),
        "solver": "lu per node",
        "candidate_condition_numbers": conditions,
        "timings": timings,
    }
    return SpatialSolution(kernel=kernel, fits=fits, rejected=np.zeros(len(fits), dtype=bool),
                           reasons=[""] * len(fits),
                           spatial_residuals=np.moveaxis(residuals, -1, 0).reshape(
                               -1, valid, valid),
                           spatial_residual_max=np.abs(residuals).max(axis=0), info=info,
                           basis=basis)


#: Up to this many templates `LinearStamps.models` is one dense product, beyond it the
#: templates one by one (1,024 positions, 27 functions: 9 templates 0.036 s against
#: 0.18 s, 25 templates 0.079 s against 0.046 s).
_DENSE_MODEL_TEMPLATES = 16


class LinearStamps:
    """Source stamps that are convex combinations of templates, with a constant target.

    ``source(x, y) = sum_m w_m(x, y) T_m``: the stamps of a
    `~photutils.psf.GriddedPSFModel` (bilinear in its grid ePSFs) or of a
    constant PSF. The basis is convolved with the m templates once; the normal
    equations of any position are then ``M = sum_{m,k} w_m w_k G_{mk}`` with the
    Gram matrices ``G_{mk} = C_m^T W C_k`` of the templates' convolutions, and
    ``b = sum_m w_m C_m^T W t``: the cost no longer grows with the number of
    positions times the pixels of a stamp.

    Parameters
    ----------
    templates : ndarray, shape (m, S, S)
        Unit-sum templates.
    weights : callable
        ``weights(x, y) -> (n, m)``, rows >= 0 summing to one.
    target : ndarray, shape (S, S)
        The (constant) unit-flux target stamp.
    basis : KernelBasis
    config : MatchConfig
    """

    def __init__(self, templates, weights, target, *, basis, config):
        problem = _Problem(np.asarray(templates), np.broadcast_to(target, templates.shape),
                           basis.size, config)
        self.problem = problem
        self.weights = weights
        self.basis = basis
        self.config = config
        # convolutions of the templates, (nb, P, m), and their Gram matrices
        self.convolved = flush_tiny(basis.convolve(problem.sources).reshape(
            basis.n_basis, problem.valid * problem.valid, -1))
        pixel_weights = problem.weights[:, 0]
        n_basis, _, m = self.convolved.shape
        stacked = np.moveaxis(self.convolved, 2, 0).reshape(m * n_basis, -1)
        gram = (stacked * pixel_weights) @ stacked.T
        # (m, m, nb, nb) flattened: row (m, k), column (a, b)
        self.gram = np.ascontiguousarray(
            gram.reshape(m, n_basis, m, n_basis).transpose(0, 2, 1, 3).reshape(m * m, -1))
        self.rhs = np.einsum("bpm,p,p->bm", self.convolved, pixel_weights,
                             problem.targets[:, 0])
        self.target = problem.targets[:, 0]
        self.peak = float(problem.peaks[0])
        # each template's convolutions as rows (m, nb, P), for the models
        self._template_rows = np.ascontiguousarray(np.moveaxis(self.convolved, 2, 0))

    def normal_equations(self, w):
        """Matrices (nb, nb, n) and vectors (nb, n) at positions of weights ``w`` (n, m)."""
        n, m = w.shape
        n_basis = self.basis.n_basis
        pairs = np.einsum("nm,nk->nmk", w, w).reshape(n, m * m)
        matrices = (pairs @ self.gram).reshape(n, n_basis, n_basis)
        return np.ascontiguousarray(np.moveaxis(matrices, 0, -1)), self.rhs @ w.T

    def models(self, w, coefficients):
        """Models (P, n) of coefficients (nb, n) at positions of weights ``w`` (n, m)."""
        n_templates, n_basis = w.shape[1], coefficients.shape[0]
        if n_templates <= _DENSE_MODEL_TEMPLATES:
            # one product over every (template, basis function) pair: most weights are
            # zero (at most four templates per position), but for a few templates one
            # dense BLAS product beats gathering and scattering rows per template
            terms = (w[:, :, None] * coefficients.T[:, None, :]).reshape(w.shape[0], -1)
            rows = self._template_rows.reshape(n_templates * n_basis, -1)
            return (terms @ rows).T
        out = np.zeros((w.shape[0], self.convolved.shape[1]))  # (n, P): rows scatter fast
        for m in range(w.shape[1]):
            use = np.flatnonzero(w[:, m])
            if use.size:
                out[use] += (coefficients[:, use] * w[use, m]).T @ self._template_rows[m]
        return out.T

    def residuals(self, w, coefficients):
        """``(model - target) / peak`` (P, n)."""
        return (self.models(w, coefficients) - self.target[:, None]) / self.peak


def solve_linear_node_kernels(stamps, x, y, *, nodes, fits=True):
    """`solve_node_kernels` for `LinearStamps`: the same kernels, far faster.

    Parameters
    ----------
    stamps : LinearStamps
        The templates, their weights and the target.
    x, y : ndarray
        Node positions, row by row.
    nodes : tuple of ndarray
        ``(nodes_x, nodes_y)``.
    fits : bool, optional
        Also compute each node's model and residual (for the result's
        candidates); False returns the kernel alone, with empty fits.

    Returns
    -------
    solution : SpatialSolution
    """
    timings = {}
    start = time.perf_counter()
    problem, basis, config = stamps.problem, stamps.basis, stamps.config
    w = stamps.weights(x, y)
    matrices, vectors = stamps.normal_equations(w)
    if basis.kind == "delta-function" and config.use_regularization:
        operator = regularization_matrix(
            basis.size, regularization_type=config.regularization_type,
            stencil=config.central_regularization_stencil,
            orders=config.forward_regularization_orders,
            border_penalty=config.regularization_border_penalty)
        pixels = basis.images.reshape(basis.n_basis, -1)
        scale = np.trace(matrices, axis1=0, axis2=1).mean() / np.trace(operator)
        lam = (config.lambda_scaling * scale if config.lambda_type == "relative"
               else config.lambda_value)
        matrices = matrices + lam * (pixels @ operator @ pixels.T)[:, :, None]
        problem.regularization_lambda = float(lam)
    timings["normal_equations"] = time.perf_counter() - start
    t0 = time.perf_counter()
    conditions = _condition_numbers(np.moveaxis(matrices, -1, 0), config.condition_number_type)
    if config.check_condition_number:
        limit = config.effective_max_condition_number
        if np.any(conditions > limit):
            msg = (f"{int(np.sum(conditions > limit))} of {len(conditions)} kernel nodes have a "
                   f"normal-matrix condition number above max_condition_number {limit:.3g} "
                   f"(largest {conditions.max():.3g}); relax max_condition_number or use a "
                   "smaller kernel_size")
            raise KernelSolutionError(msg)
    problem.lambdas = None
    coefficients = problem.solve_constrained(None, matrices, vectors)
    timings["node_solve"] = time.perf_counter() - t0
    kernel = SpatialKernel(basis.images, coefficients, spatial_model="bilinear", nodes=nodes)
    info = {"regularization_lambda": problem.regularization_lambda,
            "n_unknowns": int((basis.n_basis - 1) * coefficients.shape[1]),
            "spatial_condition_number": float(conditions.max()),
            "solver": "lu per node", "candidate_condition_numbers": conditions,
            "timings": timings}
    timings["total"] = time.perf_counter() - start
    solution = SpatialSolution(kernel=kernel, fits=[], rejected=np.zeros(0, dtype=bool),
                               reasons=[], spatial_residuals=None, spatial_residual_max=None,
                               info=info, basis=basis)
    return with_linear_node_fits(stamps, x, y, solution) if fits else solution


def with_linear_node_fits(stamps, x, y, solution):
    """``solution`` (of `solve_linear_node_kernels` with ``fits=False``) with each node's
    model and residual, as ``fits=True`` gives them: the kernels are not solved again.
    """
    start = time.perf_counter()
    problem, basis = stamps.problem, stamps.basis
    w = stamps.weights(x, y)
    coefficients = solution.kernel.coefficients
    conditions = solution.info["candidate_condition_numbers"]
    # node by node (n, P), so that each node's model and residual are views, and the
    # residuals are the spatial ones too (the kernel at a node is its own): no copies
    models = np.ascontiguousarray(stamps.models(w, coefficients).T)
    residuals = (models - stamps.target[None, :]) / stamps.peak
    valid = problem.valid
    shape = (valid, valid)
    kernels = np.tensordot(coefficients.T, basis.images, axes=(1, 0))
    maxima = np.abs(residuals).max(axis=1)
    means, stds = residuals.mean(axis=1), residuals.std(axis=1)
    node_fits = [CandidateFit(coefficients=coefficients[:, k], kernel=kernels[k],
                              kernel_sum=float(kernels[k].sum()),
                              model=models[k].reshape(shape),
                              residual=residuals[k].reshape(shape),
                              residual_mean=float(means[k]), residual_std=float(stds[k]),
                              residual_max=float(maxima[k]),
                              condition_number=float(conditions[k]))
                  for k in range(coefficients.shape[1])]
    timings = dict(solution.info["timings"])
    timings["node_fits"] = time.perf_counter() - start
    timings["total"] = timings.get("total", 0.0) + timings["node_fits"]
    return SpatialSolution(kernel=solution.kernel, fits=node_fits,
                           rejected=np.zeros(len(node_fits), dtype=bool),
                           reasons=[""] * len(node_fits),
                           spatial_residuals=residuals.reshape(-1, *shape),
                           spatial_residual_max=maxima,
                           info={**solution.info, "timings": timings}, basis=basis)
