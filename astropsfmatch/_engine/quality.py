"""How good a kernel is where it was not fitted: residuals, widths, shapes and noise.

The kernel is solved at candidates or nodes; these functions measure
``source ⊛ K(x, y) - target`` at *held-out* positions, which no fit saw
(quasi-random points between the fitted ones and toward the edges), and the
width, shape and noise of the match there.
"""

import numpy as np
import scipy.signal
from scipy.stats import qmc

from .moments import GAUSSIAN_SIGMA_TO_FWHM, adaptive_moments, ellipticity, half_max_fwhm

__all__ = []  # internal to the package: nothing here is public

#: Largest number of held-out stamps convolved at once (bounds the memory).
_CHUNK = 256

#: Widths and shapes are measured on at most this many held-out positions.
_SHAPE_POSITIONS = 16


def heldout_positions(shape, count, *, seed=0):
    """``count`` quasi-random positions ``(x, y)`` covering an image of ``shape``.

    A scrambled 2-D Halton sequence with a fixed seed: deterministic,
    spread evenly (between any fitted positions and up to the edges), and
    the first ``m`` positions of a longer sequence are the ``m`` of a
    shorter one, so that measurements with different counts compare.
    """
    ny, nx = shape
    points = qmc.Halton(d=2, scramble=True, seed=seed).random(int(count))
    return points[:, 0] * (nx - 1), points[:, 1] * (ny - 1)


def model_stamps(kernels, sources):
    """``source ⊛ kernel`` on the complete-convolution region, for stacks (n, S, S), (n, K, K)."""
    out = []
    for start in range(0, len(sources), _CHUNK):
        chunk = slice(start, start + _CHUNK)
        out.append(scipy.signal.fftconvolve(sources[chunk], kernels[chunk], mode="valid",
                                            axes=(1, 2)))
    return np.concatenate(out)


def valid_window(stamps, kernel_size):
    """The complete-convolution window of stamps (n, S, S) for a kernel of ``kernel_size``."""
    half = kernel_size // 2
    return stamps[:, half:stamps.shape[1] - half, half:stamps.shape[2] - half]


def linear_residual_max(kernel, x, y, stamps):
    """Largest held-out ``|source ⊛ K - target| / peak`` for `LinearStamps`."""
    weights = stamps.weights(x, y)
    return float(np.abs(stamps.residuals(weights, kernel.coefficients_at(x, y))).max())


def heldout_residuals(kernel, x, y, sources, targets):
    """Residuals ``(source ⊛ K(x, y) - target) / peak``, shape (n, V, V), and the models."""
    kernels = kernel.evaluate_many(x, y)
    models = model_stamps(kernels, sources)
    window = valid_window(targets, kernel.kernel_size)
    peaks = targets.max(axis=(1, 2))
    return (models - window) / peaks[:, None, None], models, kernels


def gaussian_noise_gain(source_fwhm, target_fwhm, kernel_size):
    """``sqrt(sum K**2)`` of the unit-sum Gaussian kernel that takes one FWHM to the other."""
    sigma = np.sqrt(max(target_fwhm**2 - source_fwhm**2, 0.0)) / GAUSSIAN_SIGMA_TO_FWHM
    half = kernel_size // 2
    offsets = np.arange(-half, half + 1)
    if sigma < 1e-3:
        return 1.0
    g = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = np.outer(g, g)
    kernel /= kernel.sum()
    return float(np.sqrt((kernel**2).sum()))


def verdict(models, target_window, kernels, x, y, source_fwhm):
    """The held-out verdict from the models ``source ⊛ K`` at held-out positions.

    Parameters
    ----------
    models : ndarray, shape (n, V, V)
        ``source ⊛ K(x, y)`` on the complete-convolution region (unit-sum K).
    target_window : ndarray, shape (n, V, V) or (1, V, V)
        The target there.
    kernels : ndarray, shape (n, K, K)
        The unit-sum kernels there.
    x, y : ndarray
        The positions.
    source_fwhm : float
        Typical half-maximum FWHM of the source PSF (for the Gaussian noise gain).

    Returns
    -------
    quality : dict
        ``heldout_residual_max`` and ``heldout_residual_rms`` (|source ⊛ K -
        target| / target peak), ``worst_position``, ``fwhm_deviation_max``
        (largest ``|FWHM(source ⊛ K) / FWHM(target) - 1|``, half-maximum
        widths), ``ellipticity_max`` of ``source ⊛ K`` and
        ``target_ellipticity_max`` (``1 - b/a`` of adaptive moments),
        ``noise_gain`` (largest ``sqrt(sum K**2)``: the output noise of white
        input noise of unit variance) and ``noise_gain_gaussian`` (that of a
        Gaussian kernel from the source to the target width), ``n_heldout``;
        and per position, ``positions`` ``(x, y)`` and
        ``residual_max_per_position``.
    """
    peaks = target_window.max(axis=(1, 2))
    residuals = (models - target_window) / peaks[:, None, None]
    worst = np.abs(residuals).max(axis=(1, 2))
    pick = np.unique(np.linspace(0, len(x) - 1, min(len(x), _SHAPE_POSITIONS)).astype(int))
    targets = np.broadcast_to(target_window, models.shape)
    model_fwhm = half_max_fwhm(models[pick])
    target_fwhm = half_max_fwhm(targets[pick])
    model_e = ellipticity(*adaptive_moments(models[pick]))
    target_e = ellipticity(*adaptive_moments(targets[pick]))
    noise = np.sqrt((kernels**2).sum(axis=(1, 2)))
    k = int(np.argmax(worst))
    return {
        "n_heldout": int(len(x)),
        "heldout_residual_max": float(worst.max()),
        "heldout_residual_rms": float(np.sqrt(np.mean(residuals**2))),
        "worst_position": (float(x[k]), float(y[k])),
        "fwhm_deviation_max": float(np.abs(model_fwhm / target_fwhm - 1.0).max()),
        "ellipticity_max": float(model_e.max()),
        "target_ellipticity_max": float(target_e.max()),
        "noise_gain": float(noise.max()),
        "noise_gain_gaussian": gaussian_noise_gain(source_fwhm, float(np.median(target_fwhm)),
                                                   kernels.shape[-1]),
        "residual_max_per_position": worst,
        "positions": (np.asarray(x, dtype=float), np.asarray(y, dtype=float)),
    }


def quality(kernel, x, y, sources, targets):
    """`verdict` of a unit-sum kernel from source and target stamps (n, S, S) at ``x, y``."""
    kernels = kernel.evaluate_many(x, y)
    models = model_stamps(kernels, sources)
    source_fwhm = float(np.median(half_max_fwhm(sources[:: max(len(x) // 8, 1)])))
    return verdict(models, valid_window(targets, kernel.kernel_size), kernels, x, y,
                   source_fwhm)


def linear_quality(kernel, x, y, stamps):
    """`verdict` of a unit-sum kernel for `LinearStamps` (no stamp convolved)."""
    weights = stamps.weights(x, y)
    models = stamps.models(weights, kernel.coefficients_at(x, y))
    valid = stamps.problem.valid
    models = np.moveaxis(models, -1, 0).reshape(-1, valid, valid)
    window = stamps.target.reshape(1, valid, valid)
    # the source at a few held-out positions (templates need not be PSFs: PSFEx's
    # higher-order basis images are not)
    pick = slice(None, None, max(len(x) // 8, 1))
    sources = np.tensordot(weights[pick], np.moveaxis(stamps.problem.sources, -1, 0), axes=1)
    source_fwhm = float(np.median(half_max_fwhm(sources)))
    return verdict(models, window, kernel.evaluate_many(x, y), x, y, source_fwhm)
