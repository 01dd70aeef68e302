"""PSF models shared by the tests (not numba twins: see naive.py for those)."""

import numpy as np
from astropy.nddata import NDData
from photutils.psf import GriddedPSFModel


def gaussian_stamp(size, sigma, sigma_y=None, theta=0.0):
    """Unit-sum (possibly elliptical) Gaussian on an odd square stamp."""
    sigma_y = sigma if sigma_y is None else sigma_y
    half = size // 2
    y, x = np.mgrid[-half:half + 1, -half:half + 1].astype(float)
    c, s = np.cos(theta), np.sin(theta)
    u, v = c * x + s * y, -s * x + c * y
    g = np.exp(-0.5 * ((u / sigma) ** 2 + (v / sigma_y) ** 2))
    return g / g.sum()


def varying_gaussian_grid(shape, sigma_range=(1.6, 2.4), n_grid=3, size=25):
    """GriddedPSFModel whose Gaussian width grows smoothly with x + y across ``shape``."""
    ny, nx = shape
    xs = np.linspace(0, nx - 1, n_grid)
    ys = np.linspace(0, ny - 1, n_grid)
    data, positions = [], []
    for y in ys:
        for x in xs:
            frac = (x / (nx - 1) + y / (ny - 1)) / 2
            sigma = sigma_range[0] + frac * (sigma_range[1] - sigma_range[0])
            data.append(gaussian_stamp(size, sigma))
            positions.append((x, y))
    nddata = NDData(np.array(data), meta={"grid_xypos": positions, "oversampling": 1})
    return GriddedPSFModel(nddata)


#: The reference pipeline's model (Alard-Lupton basis of 21 pixels, one candidate per cell,
#: a Chebyshev polynomial of the position): what the tests of that machinery use, since the
#: defaults choose the basis, the kernel size and a bilinear node model from the PSFs.
REFERENCE = {"kernel_basis": "alard-lupton", "kernel_size": 21, "spatial_model": "chebyshev1"}


def _reference_config():
    from astropsfmatch import MatchConfig

    return MatchConfig(**REFERENCE)


#: ... as a configuration: ``ModelPsfMatcher(REFERENCE_CONFIG, cell_size=64)``.
REFERENCE_CONFIG = _reference_config()


def field_psf(shape, *, n_grid=5, half_size=20, oversampling=2, fwhm=(2.8, 4.0),
              ellipticity=0.15):
    """A GriddedPSFModel whose Gaussian PSF broadens and elongates towards the corners.

    At a node with normalized coordinates ``u, v`` in [-1, 1] and ``r2 = (u**2 +
    v**2) / 2``: FWHM ``fwhm[0] + (fwhm[1] - fwhm[0]) * r2`` (geometric mean of the
    axes), ellipticity ``ellipticity * r2``, the major axis radial (as field
    aberrations do). The benchmark's "mild" field is ``fwhm=(3.0, 3.6),
    ellipticity=0.1`` and its "strong" one ``fwhm=(2.8, 4.0), ellipticity=0.15``.
    """
    from photutils.psf import GaussianPSF

    ny, nx = shape
    xs = np.linspace(0.0, nx - 1.0, n_grid)
    ys = np.linspace(0.0, ny - 1.0, n_grid)
    n_data = 2 * half_size * oversampling + 1
    centre = (n_data - 1) / 2.0
    yy, xx = np.mgrid[:n_data, :n_data].astype(float)
    data, xypos = [], []
    for y in ys:
        for x in xs:
            u, v = 2.0 * x / (nx - 1) - 1.0, 2.0 * y / (ny - 1) - 1.0
            r2 = (u * u + v * v) / 2.0
            width = fwhm[0] + (fwhm[1] - fwhm[0]) * r2
            e = ellipticity * r2
            major, minor = width / np.sqrt(1.0 - e), width * np.sqrt(1.0 - e)
            theta = np.degrees(np.arctan2(v, u)) if r2 > 0 else 0.0
            model = GaussianPSF(x_0=centre, y_0=centre, x_fwhm=major * oversampling,
                                y_fwhm=minor * oversampling, theta=theta)
            epsf = model(xx, yy)
            data.append(epsf / epsf.sum() * oversampling**2)
            xypos.append((x, y))
    meta = {"grid_xypos": xypos, "oversampling": oversampling}
    return GriddedPSFModel(NDData(np.array(data), meta=meta))


MILD = {"fwhm": (3.0, 3.6), "ellipticity": 0.1}
STRONG = {"fwhm": (2.8, 4.0), "ellipticity": 0.15}
