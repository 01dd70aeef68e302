"""Kernel bases: Alard-Lupton (Gaussians times polynomials) and delta functions.

The basis images (`make_alard_lupton_basis`, `make_delta_function_basis`),
the FWHM-scaled widths (`alard_lupton_sigmas`), and `KernelBasis`: the basis
the solver fits, with its fastest way of convolving PSF stamps, its labels
and the parameters that describe it. `build_basis` turns a configuration
into a `KernelBasis`: **a new kind of basis is added here** (a constructor on
`KernelBasis`, a branch in `build_basis`) and its name in the
``kernel_basis`` choices of `~astropsfmatch.MatchConfig`.
"""

import math
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .._threads import run_in_parts
from .._validate import fail, integer
from ..config import MatchConfig
from ._numba import fitting
from .moments import GAUSSIAN_SIGMA_TO_FWHM

# the public names of this module, re-exported by astropsfmatch/__init__.py
__all__ = ["AlardLuptonParameters", "alard_lupton_sigmas", "make_alard_lupton_basis",
           "make_delta_function_basis"]

#: The reference defaults, the one source of every default below.
_REFERENCE = MatchConfig()

# Sums smaller than this are "zero": the basis function is odd and cannot be
# normalized by its sum (float32 epsilon, as the reference pipeline uses).
_SUM_EPSILON = float(np.finfo(np.float32).eps)


def _check_kernel_size(kernel_size):
    # integral floats (21.0) are accepted as sizes here, as in 0.1
    if isinstance(kernel_size, float) and kernel_size.is_integer():
        kernel_size = int(kernel_size)
    return integer(1, odd=True)("kernel_size", kernel_size)


def _check_sigmas_degrees(sigmas, degrees):
    sigmas = tuple(float(s) for s in np.atleast_1d(sigmas))
    degrees = np.atleast_1d(degrees)
    if len(sigmas) == 0:
        msg = "sigmas must hold at least one Gaussian width, got an empty sequence"
        raise ValueError(msg)
    if len(sigmas) != len(degrees):
        msg = (f"sigmas and degrees must have the same length, got {len(sigmas)} sigmas "
               f"and {len(degrees)} degrees")
        raise ValueError(msg)
    if not all(np.isfinite(s) and s > 0 for s in sigmas):
        fail("sigmas", sigmas, "finite and > 0")
    if any(int(d) != d or d < 0 for d in degrees):
        fail("degrees", tuple(degrees.tolist()), "integers >= 0")
    return sigmas, tuple(int(d) for d in degrees)


def n_alard_lupton_basis(degrees):
    """Number of Alard-Lupton basis functions: sum of (d+1)(d+2)/2.

    Examples
    --------
    >>> from astropsfmatch._engine.basis import n_alard_lupton_basis
    >>> n_alard_lupton_basis((4, 2, 2))
    27
    """
    return sum((d + 1) * (d + 2) // 2 for d in degrees)


def _alard_lupton_factors(kernel_size, sigmas, degrees):
    """Separable factors of the raw basis: g_s(u) u**a times g_s(v) v**b.

    Returns ``(x_factors, y_factors)`` each of shape (n_basis, K), with the
    raw basis ``raw[i] = outer(y_factors[i], x_factors[i])``; each Gaussian
    is normalized to unit sum over the K x K grid.
    """
    half = kernel_size // 2
    offsets = np.arange(-half, half + 1, dtype=np.float64)
    scaled = offsets / half if half > 0 else offsets
    x_factors, y_factors = [], []
    for sigma, degree in zip(sigmas, degrees, strict=True):
        gauss = np.exp(-0.5 * (offsets / sigma) ** 2)
        gauss /= gauss.sum()
        for ix in range(degree + 1):
            for iy in range(degree + 1 - ix):
                x_factors.append(gauss * scaled**ix)
                y_factors.append(gauss * scaled**iy)
    return np.array(x_factors), np.array(y_factors)


def renormalize(raw):
    """Linear map from the raw basis to the renormalized one.

    Returns ``(matrix, basis)`` with ``basis = tensordot(matrix, raw, 1)``:
    B0 = raw0 (sum 1); for i > 0, where the sum is not zero, raw_i is
    divided by its sum and B0 subtracted (so it sums to zero); every
    B_i (i > 0) is then scaled to unit L2 norm.
    """
    n_basis = raw.shape[0]
    matrix = np.zeros((n_basis, n_basis))
    matrix[0, 0] = 1.0 / raw[0].sum()
    for i in range(1, n_basis):
        total = raw[i].sum()
        if abs(total) > _SUM_EPSILON:
            matrix[i, i] = 1.0 / total
            matrix[i] -= matrix[0]
        else:
            matrix[i, i] = 1.0
        image = np.tensordot(matrix[i], raw, axes=1)
        norm = np.sqrt(np.sum(image**2))
        if not norm > 1e-12 * max(1.0, float(np.abs(matrix[i]).max())):
            msg = (f"basis function {i} vanishes on the kernel grid (a Gaussian too narrow or "
                   "too broad for the kernel size, or two equal widths): choose other "
                   "sigmas or kernel_size")
            raise ValueError(msg)
        matrix[i] /= norm
    basis = np.tensordot(matrix, raw, axes=1)
    return matrix, basis


def _alard_lupton_parts(kernel_size, sigmas, degrees):
    """The basis with its separable structure: ``(basis, matrix, x_factors, y_factors)``."""
    x_factors, y_factors = _alard_lupton_factors(kernel_size, sigmas, degrees)
    raw = np.einsum("iy,ix->iyx", y_factors, x_factors)
    matrix, basis = renormalize(raw)
    return basis, matrix, x_factors, y_factors


def make_alard_lupton_basis(kernel_size, sigmas, degrees):
    r"""Alard-Lupton kernel basis: Gaussians times polynomials.

    For each Gaussian width :math:`\sigma_k` with polynomial degree
    :math:`d_k` the raw functions are

    .. math::

        G_{\sigma_k}(x, y)\, u^a v^b, \qquad a + b \le d_k,

    with :math:`u, v` the offsets from the kernel centre divided by the
    half-width (so in [-1, 1]) and each Gaussian normalized to unit sum.
    They are then renormalized: the first keeps unit sum; each other one is
    divided by its sum (where that is not zero) and has the first
    subtracted, so it sums to zero, and is scaled to unit L2 norm. The sum
    of any kernel built from this basis is therefore the coefficient of the
    first function.

    Parameters
    ----------
    kernel_size : int
        Side of the square kernel (odd).
    sigmas : sequence of float
        Gaussian widths in pixels.
    degrees : sequence of int
        Polynomial degree for each Gaussian.

    Returns
    -------
    basis : ndarray, shape (n_basis, kernel_size, kernel_size)
        float64, with ``n_basis = sum((d + 1) * (d + 2) // 2)``.

    Raises
    ------
    ValueError
        Even kernel size, empty or mismatched sigmas and degrees,
        non-positive sigmas or negative degrees.

    See Also
    --------
    make_delta_function_basis, alard_lupton_sigmas

    Examples
    --------
    >>> from astropsfmatch import make_alard_lupton_basis
    >>> basis = make_alard_lupton_basis(21, (0.7, 1.5, 3.0), (4, 2, 2))
    >>> basis.shape
    (27, 21, 21)
    >>> round(float(basis[0].sum()), 12), round(float(abs(basis[1:].sum())), 12)
    (1.0, 0.0)
    """
    kernel_size = _check_kernel_size(kernel_size)
    sigmas, degrees = _check_sigmas_degrees(sigmas, degrees)
    return _alard_lupton_parts(kernel_size, sigmas, degrees)[0]


def make_delta_function_basis(kernel_size):
    """Delta-function basis: one function per kernel pixel.

    Parameters
    ----------
    kernel_size : int
        Side of the square kernel (odd).

    Returns
    -------
    basis : ndarray, shape (kernel_size**2, kernel_size, kernel_size)
        ``basis[j * K + i]`` is 1 at pixel ``[j, i]``.

    Notes
    -----
    Unlike the Alard-Lupton basis these functions do not sum to zero after
    the first, so the kernel sum is the sum of all coefficients; the solver
    reparametrizes them (central pixel first) to keep the kernel sum a
    single coefficient. They need regularization to give a smooth kernel.

    Examples
    --------
    >>> from astropsfmatch import make_delta_function_basis
    >>> make_delta_function_basis(3).shape
    (9, 3, 3)
    """
    kernel_size = _check_kernel_size(kernel_size)
    n_pixels = kernel_size * kernel_size
    return np.eye(n_pixels).reshape(n_pixels, kernel_size, kernel_size)


def separable_convolve_valid(stamps, x_factors, y_factors, x_index):
    """Convolve stamps with separable functions ``outer(y_factors[b], x_factors[x_index[b]])``.

    stamps (S, S, n) candidate-last; x_factors (nx, K) distinct x profiles;
    y_factors (nb, K); x_index (nb,) the x profile of each function. Returns
    (nb, V, V, n) with ``V = S - K + 1``, the valid region. The x pass is
    shared by every function with the same x profile; both passes run on the
    threads of the caller's `thread_scope`, with the same result for any
    number of threads.
    """
    stamps = np.ascontiguousarray(stamps, dtype=np.float64)
    x_factors = np.ascontiguousarray(x_factors, dtype=np.float64)
    y_factors = np.ascontiguousarray(y_factors, dtype=np.float64)
    x_index = np.ascontiguousarray(x_index, dtype=np.int64)
    size, n = stamps.shape[0], stamps.shape[2]
    n_x, ksize = x_factors.shape
    valid = size - ksize + 1
    rows = np.zeros((n_x, size, valid, n))
    run_in_parts(fitting.separable_rows, n_x * size, stamps, x_factors, rows)
    out = np.zeros((y_factors.shape[0], valid, valid, n))
    run_in_parts(fitting.separable_columns, y_factors.shape[0] * valid, rows, y_factors,
                 x_index, out)
    return out


@dataclass(frozen=True)
class AlardLuptonParameters:
    """Gaussian widths, degrees and kernel size chosen by :func:`alard_lupton_sigmas`.

    Attributes
    ----------
    sigmas : tuple of float
    degrees : tuple of int
    kernel_size : int
    mode : {'config', 'convolution', 'deconvolution'}
    """

    sigmas: tuple
    degrees: tuple
    kernel_size: int
    mode: str


def alard_lupton_sigmas(source_fwhm, target_fwhm, *, sigmas=_REFERENCE.alard_sigmas,
                        degrees=_REFERENCE.alard_degrees, min_sigma=_REFERENCE.alard_min_sigma,
                        min_sigma_deconv=_REFERENCE.alard_min_sigma_deconv,
                        gauss_beta=_REFERENCE.alard_gauss_beta,
                        fwhm_scaling=_REFERENCE.kernel_size_fwhm_scaling,
                        kernel_size_min=_REFERENCE.kernel_size_min,
                        kernel_size_max=None):
    r"""Gaussian widths of the Alard-Lupton basis scaled to the PSF widths.

    The rule of the reference pipeline's current ``makeKernelBasisList``.
    Treating both PSFs as Gaussians, the kernel that turns the source PSF
    into the target has :math:`\sigma_k^2 = |\sigma_t^2 - \sigma_s^2|`.

    - ``target_fwhm > source_fwhm`` (mode ``'convolution'``): :math:`\sigma_k`
      is floored at ``min_sigma``; the widths are
      :math:`[\max(f, \sigma_k/\beta), \times\beta, \times\beta^2, \ldots]`,
      as many as ``sigmas`` (one width: :math:`[\sigma_k]`), with the
      configured ``degrees``.
    - ``target_fwhm < source_fwhm`` (``'deconvolution'``): the same with the
      floor ``min_sigma_deconv`` and, as in the reference since 2025, the same
      configured ``degrees``.
    - equal widths (``'config'``): the configured ``sigmas``.

    In every mode the kernel size is ``int(fwhm_scaling * sigmas[-1])``, made
    odd and clamped to ``[kernel_size_min, kernel_size_max]``.

    Parameters
    ----------
    source_fwhm, target_fwhm : float
        FWHM in pixels of the PSF to convolve and of the PSF to match.
    sigmas, degrees : sequence
        Configured widths (their count is kept) and degrees.
    min_sigma, min_sigma_deconv, gauss_beta, fwhm_scaling : float
        Floors, width ratio and size factor.
    kernel_size_min : int
        Smallest kernel size.
    kernel_size_max : int or None
        Largest kernel size; None (the default) lets the size follow the
        widths: the reference's 35 cannot hold the kernel of a large FWHM
        jump (3 -> 15 pixels needs 75).

    Returns
    -------
    params : AlardLuptonParameters

    Examples
    --------
    >>> from astropsfmatch import alard_lupton_sigmas
    >>> p = alard_lupton_sigmas(4.0, 8.0, kernel_size_max=35)
    >>> p.mode, [round(s, 3) for s in p.sigmas], p.kernel_size
    ('convolution', [1.471, 2.942, 5.884], 35)
    >>> p = alard_lupton_sigmas(3.0, 4.0)
    >>> [round(s, 3) for s in p.sigmas], p.kernel_size
    ([0.7, 1.4, 2.8], 21)
    """
    sigmas, degrees = _check_sigmas_degrees(sigmas, degrees)
    for name, value in (("source_fwhm", source_fwhm), ("target_fwhm", target_fwhm)):
        if not np.isfinite(value) or value <= 0:
            msg = f"{name} must be finite and > 0, got {value!r}"
            raise ValueError(msg)
    if gauss_beta <= 1:
        msg = f"gauss_beta must be > 1, got {gauss_beta!r}"
        raise ValueError(msg)
    if kernel_size_max is not None and kernel_size_min > kernel_size_max:
        msg = (f"kernel_size_min must be <= kernel_size_max, got {kernel_size_min} > "
               f"{kernel_size_max}")
        raise ValueError(msg)
    source_sigma = source_fwhm / GAUSSIAN_SIGMA_TO_FWHM
    target_sigma = target_fwhm / GAUSSIAN_SIGMA_TO_FWHM
    if source_sigma == target_sigma:
        mode, widths = "config", list(sigmas)
    else:
        if target_sigma > source_sigma:
            mode, floor = "convolution", min_sigma
        else:
            mode, floor = "deconvolution", min_sigma_deconv
        kernel_sigma = max(math.sqrt(abs(target_sigma**2 - source_sigma**2)), floor)
        if len(sigmas) > 1:
            widths = [max(floor, kernel_sigma / gauss_beta)]
        else:
            widths = [kernel_sigma]
        while len(widths) < len(sigmas):
            widths.append(widths[-1] * gauss_beta)
    raw_size = fwhm_scaling * widths[-1]
    if not raw_size <= _MAX_SCALED_KERNEL_SIZE:
        msg = (f"the kernel size from the PSF widths would be {raw_size:.3g} pixels "
               f"(fwhm_scaling {fwhm_scaling:g} x the widest Gaussian, sigma {widths[-1]:.3g}; "
               f"at most {_MAX_SCALED_KERNEL_SIZE}): check fwhm_scaling, min_sigma and "
               "gauss_beta (MatchConfig: kernel_size_fwhm_scaling, alard_min_sigma, "
               "alard_gauss_beta)")
        raise ValueError(msg)
    size = int(raw_size)
    size += 0 if size % 2 else 1
    size = max(size, kernel_size_min)
    if kernel_size_max is not None:
        size = min(size, kernel_size_max)
    return AlardLuptonParameters(tuple(widths), degrees, size, mode)


#: Kernel sizes scaled from the PSF widths above this are refused before any array is made.
_MAX_SCALED_KERNEL_SIZE = 100_001


def _alard_lupton_labels(sigmas, degrees):
    """Label of each Alard-Lupton function: its Gaussian width and polynomial powers."""
    # the order of _alard_lupton_factors: per sigma, x power outer, y power inner
    return [f"B{k} σ={sigma:g} u{a}v{b}"
            for k, (sigma, a, b) in enumerate(
                (sigma, a, b) for sigma, degree in zip(sigmas, degrees, strict=True)
                for a in range(degree + 1) for b in range(degree + 1 - a))]


class KernelBasis:
    """Basis images and the fastest way to convolve PSF stamps with them.

    Use the constructors :meth:`alard_lupton`, :meth:`delta_function` and
    :meth:`from_images` (or `build_basis` from a configuration).
    ``images[0]`` sums to one and all others sum to zero, so the kernel sum
    is the first coefficient.

    Attributes
    ----------
    images : ndarray, shape (n_basis, K, K)
        The basis images (float64, C-contiguous).
    kind : str
        ``'alard-lupton'``, ``'delta-function'`` or ``'pca'``.
    parameters : dict
        What defines the basis (Gaussian widths, degrees, mode, ...).
    labels : list of str
        A short label per image, for figures.
    """

    def __init__(self, images, *, kind, convolve, parameters=None, labels=None):
        self.images = np.ascontiguousarray(images, dtype=np.float64)
        self.kind = kind
        self._convolve = convolve
        self.parameters = dict(parameters or {})
        self.labels = list(labels) if labels is not None else [
            f"B{i}" for i in range(self.images.shape[0])]

    def __repr__(self):
        return f"<KernelBasis {self.kind} n_basis={self.n_basis} size={self.size}>"

    @property
    def size(self):
        """Kernel side K."""
        return self.images.shape[1]

    @property
    def n_basis(self):
        """Number of basis functions."""
        return self.images.shape[0]

    def describe(self):
        """The basis as a plain dictionary (kind, size, count and its parameters)."""
        return {"kind": self.kind, "n_basis": self.n_basis, "kernel_size": self.size,
                **self.parameters}

    def convolve(self, stamps):
        """Valid-region convolutions of candidate-last stamps with every basis image.

        Parameters
        ----------
        stamps : ndarray, shape (S, S, n)
            Stamps in the candidate-last layout of the fitting kernels.

        Returns
        -------
        convolved : ndarray, shape (nb, V, V, n)
            ``V = S - K + 1``.
        """
        return self._convolve(np.ascontiguousarray(stamps, dtype=np.float64))

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
            raw = separable_convolve_valid(stamps, distinct, y_factors, x_index)
            # the renormalization is linear: one matrix product over all pixels
            return (matrix @ raw.reshape(raw.shape[0], -1)).reshape(raw.shape)

        sigmas = tuple(float(s) for s in sigmas)
        degrees = tuple(int(d) for d in degrees)
        parameters = {"n_gauss": len(sigmas), "sigmas": sigmas, "degrees": degrees,
                      "mode": mode}
        return cls(images, kind="alard-lupton", convolve=convolve, parameters=parameters,
                   labels=_alard_lupton_labels(sigmas, degrees))

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
        half = kernel_size // 2
        labels = [f"B{row} δ({p % kernel_size - half},{p // kernel_size - half})"
                  for row, p in enumerate(order)]

        def convolve(stamps):
            valid = stamps.shape[0] - kernel_size + 1
            n = stamps.shape[2]
            # windows[oy, ox, c] is the valid-size window at offset (oy, ox); the
            # delta at kernel pixel (j, i) picks offset (K-1-j, K-1-i)
            windows = sliding_window_view(stamps, (valid, valid), axis=(0, 1))
            shifted = np.moveaxis(windows[::-1, ::-1], 2, -1).reshape(n_pixels, -1)
            return (matrix @ shifted).reshape(n_pixels, valid, valid, n)

        return cls(images, kind="delta-function", convolve=convolve, labels=labels)

    @classmethod
    def from_images(cls, images, *, kind="pca", parameters=None, labels=None):
        """Any dense basis (e.g. principal components); direct convolution."""
        images = np.ascontiguousarray(images, dtype=np.float64)
        return cls(images, kind=kind, convolve=lambda s: fitting.convolve_valid(s, images),
                   parameters=parameters, labels=labels)


def build_basis(config, *, source_fwhm=None, target_fwhm=None):
    """The `KernelBasis` a configuration asks for.

    Parameters
    ----------
    config : MatchConfig
        ``kernel_basis``, ``kernel_size`` and the Alard-Lupton options.
    source_fwhm, target_fwhm : float, optional
        PSF widths (pixels); needed with ``scale_by_fwhm``.

    Returns
    -------
    basis : KernelBasis
    """
    if config.kernel_basis == "delta-function":
        return KernelBasis.delta_function(config.kernel_size)
    if config.scale_by_fwhm:
        params = alard_lupton_sigmas(
            source_fwhm, target_fwhm,
            sigmas=config.alard_sigmas, degrees=config.alard_degrees,
            min_sigma=config.alard_min_sigma, min_sigma_deconv=config.alard_min_sigma_deconv,
            gauss_beta=config.alard_gauss_beta, fwhm_scaling=config.kernel_size_fwhm_scaling,
            kernel_size_min=config.kernel_size_min, kernel_size_max=config.kernel_size_max)
        return KernelBasis.alard_lupton(params.kernel_size, params.sigmas, params.degrees,
                                        mode=params.mode)
    return KernelBasis.alard_lupton(config.kernel_size, config.alard_sigmas,
                                    config.alard_degrees, mode="config")
