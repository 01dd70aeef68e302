"""Moments of PSF stamps: second moments, Gaussian-equivalent FWHM, deconvolution depth.

Every function takes a stack of stamps, shape ``(n, S, S)`` with S odd and
the PSF centre on the centre pixel, and measures about each stamp's own
centroid, in pixels.
"""

import math

import numpy as np

__all__ = []  # internal to the package: nothing here is public

#: Variance of a uniform pixel (px²): the floor of adaptive moments.
_PIXEL_VARIANCE = 1.0 / 12.0

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


def adaptive_covariances(stamps):
    """Adaptive second-moment matrices (n, 2, 2) of stamps (see `adaptive_moments`)."""
    ixx, iyy, ixy = adaptive_moments(stamps)
    return np.stack([np.stack([ixx, ixy], -1), np.stack([ixy, iyy], -1)], -2)


def deconvolution_depth(sources, targets):
    """How much narrower (px², >= 0) each target's core is than its source's along any direction.

    The smallest eigenvalue of the difference of the adaptive (core-weighted)
    second-moment matrices, sign flipped; 0 where the target is broader in
    every direction, as a convolution needs. Unweighted moments would be
    dominated by the wings: an Airy disk of FWHM 2.5 has more second moment
    than a Gaussian of FWHM 5, which it can be matched to.
    """
    difference = adaptive_covariances(targets) - adaptive_covariances(sources)
    return np.maximum(-np.linalg.eigvalsh(difference)[:, 0], 0.0)


def half_max_fwhm(stamps, *, upsample=8):
    """FWHM from the area above half maximum: ``2 sqrt(A / pi)`` for each stamp.

    A robust width that, unlike second moments, does not depend on the
    wings: exact for any round profile (Gaussian, Moffat, Airy core), the
    geometric mean of the axes for an elliptical one. ``A`` is measured on
    a bicubic spline of the stamp, ``upsample`` times finer than the pixels,
    over a window around the peak.

    Examples
    --------
    >>> import numpy as np
    >>> from astropsfmatch._engine.moments import half_max_fwhm
    >>> y, x = np.mgrid[-15:16, -15:16]
    >>> r2 = (x**2 + y**2) / 2.0**2
    >>> moffat = (1 + r2) ** -2.5          # FWHM 2 * 2 * sqrt(2**(1/2.5) - 1) = 2.261
    >>> round(float(half_max_fwhm(moffat[None])[0]), 2)
    2.26
    """
    from scipy.ndimage import map_coordinates

    stamps = np.asarray(stamps, dtype=np.float64)
    n, size = stamps.shape[0], stamps.shape[-1]
    out = np.empty(n)
    fine = (np.arange(upsample) + 0.5) / upsample - 0.5  # sub-pixel offsets in a pixel
    for k in range(n):
        stamp = stamps[k]
        y0, x0 = np.unravel_index(np.argmax(stamp), stamp.shape)
        half = stamp[y0, x0] / 2.0
        radius = int(np.ceil(np.sqrt(np.count_nonzero(stamp >= half) / np.pi))) + 2
        # the spline of a window around the peak (3 more pixels for its support)
        ya, yb = max(y0 - radius - 3, 0), min(y0 + radius + 4, size)
        xa, xb = max(x0 - radius - 3, 0), min(x0 + radius + 4, size)
        window = stamp[ya:yb, xa:xb]
        ys = np.arange(max(y0 - radius, 0), min(y0 + radius + 1, size)) - ya
        xs = np.arange(max(x0 - radius, 0), min(x0 + radius + 1, size)) - xa
        gy = (ys[:, None] + fine[None, :]).ravel()
        gx = (xs[:, None] + fine[None, :]).ravel()
        yy, xx = np.meshgrid(gy, gx, indexing="ij")
        values = map_coordinates(window, [yy.ravel(), xx.ravel()], order=3, mode="nearest")
        area = np.count_nonzero(values >= half) / upsample**2
        out[k] = 2.0 * np.sqrt(area / np.pi)
    return out


def adaptive_moments(stamps, *, iterations=20):
    """Second moments ``(Ixx, Iyy, Ixy)`` of the elliptical Gaussian that best matches each stamp.

    Moments measured with an elliptical Gaussian weight whose covariance is
    updated to twice the weighted moments until it converges (adaptive
    moments, as in Bernstein & Jarvis 2002): for a Gaussian profile they are
    its own moments, whatever its shape; for other profiles they describe the
    core and are insensitive to the wings and to the stamp size.
    """
    stamps = np.asarray(stamps, dtype=np.float64)
    if len(stamps) > 1 and np.array_equal(stamps, np.broadcast_to(stamps[0], stamps.shape)):
        # identical stamps (a constant target PSF) are measured once
        moments = adaptive_moments(stamps[:1], iterations=iterations)
        return tuple(np.repeat(m, len(stamps)) for m in moments)
    size = stamps.shape[-1]
    offsets = np.arange(size, dtype=np.float64) - size // 2
    ixx, iyy, ixy = second_moments(stamps)
    # start from the unweighted moments, floored at a pixel
    cxx, cyy, cxy = np.maximum(ixx, 0.5), np.maximum(iyy, 0.5), np.clip(ixy, -0.4, 0.4)
    mx = my = np.zeros(len(stamps))
    # a stamp whose light is all where the weight is ~0 (e.g. a delta function far from
    # the centre) gets NaN moments, which every check downstream reads as a failure
    with np.errstate(divide="ignore", invalid="ignore"):
        return _adaptive_iterations(stamps, offsets, mx, my, cxx, cyy, cxy, iterations)


def _adaptive_iterations(stamps, offsets, mx, my, cxx, cyy, cxy, iterations):
    """The fixed-point iterations of `adaptive_moments`.

    ``offsets`` are the pixel offsets from the stamp centre, along x and y.
    The offsets from the centroid are a column vector and a row vector per
    stamp, so the weight's exponent is built from outer sums and the moments
    from the stamp's row and column marginals and one matrix-vector product
    (a few passes over the stamps per iteration instead of ~20).
    """
    columns = rows = offsets
    for _ in range(iterations):
        det = cxx * cyy - cxy**2
        ux, uy = columns[None] - mx[:, None], rows[None] - my[:, None]      # (n, size)
        q = ((cyy / det)[:, None] * ux**2)[:, None, :] + ((cxx / det)[:, None] * uy**2)[:, :, None]
        q -= ((2 * cxy / det)[:, None] * uy)[:, :, None] * ux[:, None, :]
        q *= -0.5
        weighted = np.exp(q, out=q)
        weighted *= stamps
        along_x, along_y = weighted.sum(axis=1), weighted.sum(axis=2)       # (n, size)
        total = along_x.sum(axis=1)
        mx = along_x @ columns / total
        my = along_y @ rows / total
        ux, uy = columns[None] - mx[:, None], rows[None] - my[:, None]
        mxx = (along_x * ux**2).sum(axis=1) / total
        myy = (along_y * uy**2).sum(axis=1) / total
        mxy = np.einsum("ni,ni->n", np.matmul(weighted, ux[:, :, None])[:, :, 0], uy) / total
        # for a Gaussian of covariance C seen through a weight of covariance W the
        # weighted moments are (C^-1 + W^-1)^-1; at the fixed point W = C they are C/2
        # (floored at a pixel's own variance, 1/12: an undersampled core must not
        # collapse the weight)
        cxx, cyy = np.maximum(2 * mxx, _PIXEL_VARIANCE), np.maximum(2 * myy, _PIXEL_VARIANCE)
        limit = 0.99 * np.sqrt(cxx * cyy)
        cxy = np.clip(2 * mxy, -limit, limit)
    return cxx, cyy, cxy


def ellipticity(ixx, iyy, ixy):
    """``1 - b / a`` from a second-moment matrix (a, b the major and minor axes)."""
    major = largest_eigenvalue(ixx, iyy, ixy)
    minor = np.maximum(smallest_eigenvalue(ixx, iyy, ixy), 0.0)
    return 1.0 - np.sqrt(minor / major)


def kernel_moments(kernels):
    """What each kernel of a stack (n, K, K) does, independent of how it is expanded.

    Kernels solved on overlapping basis functions can trade coefficients
    off against each other (a near null space) while the kernel images stay
    the same; these quantities are properties of the images alone. Second
    moments of a convolution add, so for Gaussian PSFs ``sigma2`` is
    ``sigma_target**2 - sigma_source**2`` and ``e1``, ``e2`` the difference
    of the two PSFs' shapes.

    Returns
    -------
    moments : dict of ndarray
        ``dx``, ``dy``: centroid offsets from the centre pixel (px);
        ``sigma2``: ``(Ixx + Iyy) / 2`` (px²); ``e1``: ``(Ixx - Iyy) / 2``
        and ``e2``: ``Ixy`` (px²); ``noise_gain``: ``sqrt(sum K**2) / sum K``
        (the output noise of unit white input noise per unit kernel sum).
    """
    kernels = np.asarray(kernels, dtype=np.float64)
    size = kernels.shape[-1]
    offsets = np.arange(size, dtype=np.float64) - size // 2
    total = kernels.sum(axis=(1, 2))
    dx = kernels.sum(axis=1) @ offsets / total
    dy = kernels.sum(axis=2) @ offsets / total
    ixx, iyy, ixy = second_moments(kernels)
    return {"dx": dx, "dy": dy, "sigma2": (ixx + iyy) / 2.0, "e1": (ixx - iyy) / 2.0,
            "e2": ixy, "noise_gain": np.sqrt((kernels**2).sum(axis=(1, 2))) / np.abs(total)}
