"""Moments of PSF stamps: second moments, Gaussian-equivalent FWHM, deconvolution depth.

Every function takes a stack of stamps, shape ``(n, S, S)`` with S odd and
the PSF centre on the centre pixel, and measures about each stamp's own
centroid, in pixels.
"""

import math

import numpy as np

__all__ = []  # internal to the package: nothing here is public

#: FWHM of a Gaussian in units of its sigma, 2 sqrt(2 ln 2).
GAUSSIAN_SIGMA_TO_FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))


def second_moments(stamps):
    """Central second moments ``(Ixx, Iyy, Ixy)`` of each stamp, in px².

    Examples
    --------
    >>> import numpy as np
    >>> from astropsfmatch._engine.moments import second_moments
    >>> y, x = np.mgrid[-10:11, -10:11]
    >>> stamp = np.exp(-0.5 * (x**2 / 4.0 + y**2 / 1.0))
    >>> [round(float(m[0]), 6) for m in second_moments(stamp[None])]
    [4.0, 1.0, 0.0]
    """
    stamps = np.asarray(stamps, dtype=np.float64)
    size = stamps.shape[-1]
    offsets = np.arange(size, dtype=np.float64) - size // 2
    total = stamps.sum(axis=(1, 2))
    px = stamps.sum(axis=1) / total[:, np.newaxis]  # marginal along x
    py = stamps.sum(axis=2) / total[:, np.newaxis]  # marginal along y
    cx, cy = px @ offsets, py @ offsets
    ixx = px @ offsets**2 - cx**2
    iyy = py @ offsets**2 - cy**2
    ixy = np.einsum("nyx,y,x->n", stamps, offsets, offsets) / total - cx * cy
    return ixx, iyy, ixy


def covariance_matrices(stamps):
    """Second-moment matrices, shape ``(n, 2, 2)`` (x first), in px²."""
    ixx, iyy, ixy = second_moments(stamps)
    return np.stack([np.stack([ixx, ixy], -1), np.stack([ixy, iyy], -1)], -2)


def largest_eigenvalue(ixx, iyy, ixy):
    """Largest eigenvalue of the moment matrix: the variance along the major axis."""
    return (ixx + iyy) / 2.0 + np.sqrt(((ixx - iyy) / 2.0) ** 2 + ixy**2)


def smallest_eigenvalue(ixx, iyy, ixy):
    """Smallest eigenvalue of the moment matrix: the variance along the minor axis."""
    return (ixx + iyy) / 2.0 - np.sqrt(((ixx - iyy) / 2.0) ** 2 + ixy**2)


def moment_fwhm(stamps):
    """Gaussian-equivalent FWHM ``2 sqrt(2 ln 2) sqrt((Ixx + Iyy) / 2)`` of each stamp.

    Exact for a well-sampled Gaussian; larger than the true FWHM for
    profiles with extended wings (Moffat, Airy).
    """
    ixx, iyy, _ = second_moments(stamps)
    return GAUSSIAN_SIGMA_TO_FWHM * np.sqrt(np.maximum((ixx + iyy) / 2.0, 0.0))


def deconvolution_depth(sources, targets):
    """How much narrower (px², >= 0) each target is than its source along any direction.

    The smallest eigenvalue of the difference of the second-moment matrices,
    sign flipped; 0 where the target is broader in every direction, as a
    convolution needs (second moments add under convolution).
    """
    difference = covariance_matrices(targets) - covariance_matrices(sources)
    return np.maximum(-np.linalg.eigvalsh(difference)[:, 0], 0.0)
