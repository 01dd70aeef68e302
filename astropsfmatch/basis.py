"""Kernel bases: Alard-Lupton (Gaussians times polynomials) and delta functions."""

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["AlardLuptonParameters", "alard_lupton_sigmas", "make_alard_lupton_basis",
           "make_delta_function_basis", "n_alard_lupton_basis"]

_GAUSSIAN_SIGMA_TO_FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))

# Sums smaller than this are "zero": the basis function is odd and cannot be
# normalized by its sum (float32 epsilon, as the reference pipeline uses).
_SUM_EPSILON = float(np.finfo(np.float32).eps)


def _check_kernel_size(kernel_size):
    if (isinstance(kernel_size, bool) or int(kernel_size) != kernel_size
            or kernel_size < 1 or kernel_size % 2 == 0):
        msg = f"kernel_size must be an odd integer >= 1, got {kernel_size!r}"
        raise ValueError(msg)
    return int(kernel_size)


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
        msg = f"sigmas must be finite and > 0, got {sigmas}"
        raise ValueError(msg)
    if any(int(d) != d or d < 0 for d in degrees):
        msg = f"degrees must be integers >= 0, got {tuple(degrees.tolist())}"
        raise ValueError(msg)
    return sigmas, tuple(int(d) for d in degrees)


def n_alard_lupton_basis(degrees):
    """Number of Alard-Lupton basis functions: sum of (d+1)(d+2)/2.

    Examples
    --------
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


def _renormalization(raw):
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
        matrix[i] /= np.sqrt(np.sum(image**2))
    basis = np.tensordot(matrix, raw, axes=1)
    return matrix, basis


def _alard_lupton_parts(kernel_size, sigmas, degrees):
    """The basis with its separable structure: ``(basis, matrix, x_factors, y_factors)``."""
    x_factors, y_factors = _alard_lupton_factors(kernel_size, sigmas, degrees)
    raw = np.einsum("iy,ix->iyx", y_factors, x_factors)
    matrix, basis = _renormalization(raw)
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


def alard_lupton_sigmas(source_fwhm, target_fwhm, *, sigmas=(0.7, 1.5, 3.0), degrees=(4, 2, 2),
                        min_sigma=0.7, min_sigma_deconv=0.4, degree_deconv=3, gauss_beta=2.0,
                        fwhm_scaling=6.0, kernel_size_min=21, kernel_size_max=35,
                        kernel_size=21):
    r"""Gaussian widths of the Alard-Lupton basis scaled to the PSF widths.

    Treating both PSFs as Gaussians, the kernel that turns the source PSF
    into the target has :math:`\sigma_k^2 = |\sigma_t^2 - \sigma_s^2|`.

    - ``target_fwhm > source_fwhm`` (mode ``'convolution'``): :math:`\sigma_k`
      is floored at ``min_sigma``; the widths are
      :math:`[\sigma_k/\beta, \sigma_k, \sigma_k\beta, \ldots]` when
      :math:`\sigma_k/\beta` is above the floor, else
      :math:`[\sigma_k, \sigma_k\beta, \ldots]`, as many as ``sigmas``, with
      the configured ``degrees``.
    - ``target_fwhm < source_fwhm`` (``'deconvolution'``): the same with the
      floor ``min_sigma_deconv`` and every degree ``degree_deconv``.
    - equal widths (``'config'``): the configured ``sigmas``, ``degrees`` and
      ``kernel_size`` unchanged.

    In the scaled modes the kernel size is ``int(fwhm_scaling * sigmas[-1])``
    made odd and clamped to ``[kernel_size_min, kernel_size_max]``.

    Parameters
    ----------
    source_fwhm, target_fwhm : float
        FWHM in pixels of the PSF to convolve and of the PSF to match.
    sigmas, degrees : sequence
        Configured widths (their count is kept) and degrees.
    min_sigma, min_sigma_deconv, degree_deconv, gauss_beta, fwhm_scaling : float
        Floors, deconvolution degree, width ratio and size factor.
    kernel_size_min, kernel_size_max, kernel_size : int
        Clamp of the scaled size, and the size kept in ``'config'`` mode.

    Returns
    -------
    params : AlardLuptonParameters

    Examples
    --------
    >>> from astropsfmatch import alard_lupton_sigmas
    >>> p = alard_lupton_sigmas(4.0, 8.0)
    >>> p.mode, [round(s, 3) for s in p.sigmas], p.kernel_size
    ('convolution', [1.471, 2.942, 5.884], 35)
    """
    sigmas, degrees = _check_sigmas_degrees(sigmas, degrees)
    for name, value in (("source_fwhm", source_fwhm), ("target_fwhm", target_fwhm)):
        if not np.isfinite(value) or value <= 0:
            msg = f"{name} must be finite and > 0, got {value!r}"
            raise ValueError(msg)
    if gauss_beta <= 1:
        msg = f"gauss_beta must be > 1, got {gauss_beta!r}"
        raise ValueError(msg)
    if kernel_size_min > kernel_size_max:
        msg = (f"kernel_size_min must be <= kernel_size_max, got {kernel_size_min} > "
               f"{kernel_size_max}")
        raise ValueError(msg)
    source_sigma = source_fwhm / _GAUSSIAN_SIGMA_TO_FWHM
    target_sigma = target_fwhm / _GAUSSIAN_SIGMA_TO_FWHM
    if np.isclose(source_sigma, target_sigma, rtol=1e-12, atol=0):
        return AlardLuptonParameters(sigmas, degrees, _check_kernel_size(kernel_size), "config")
    if target_sigma > source_sigma:
        mode, floor, new_degrees = "convolution", min_sigma, degrees
    else:
        mode, floor = "deconvolution", min_sigma_deconv
        new_degrees = (int(degree_deconv),) * len(sigmas)
    kernel_sigma = max(math.sqrt(abs(target_sigma**2 - source_sigma**2)), floor)
    if len(sigmas) > 1 and kernel_sigma / gauss_beta > floor:
        widths = [kernel_sigma / gauss_beta, kernel_sigma]
    else:
        widths = [kernel_sigma]
    while len(widths) < len(sigmas):
        widths.append(widths[-1] * gauss_beta)
    size = int(fwhm_scaling * widths[-1])
    size += 0 if size % 2 else 1
    size = min(kernel_size_max, max(size, kernel_size_min))
    return AlardLuptonParameters(tuple(widths), new_degrees, size, mode)
