"""Synthetic data for the demonstration (``astropsfmatch demo``) and for tests.

`make_demo_data` makes what the reference task's example script makes when it
is given no images: an exposure whose PSF varies across the field. Here it is
a `~astropy.nddata.CCDData` with stars, noise, a variance, a mask with a few
bad pixels and a TAN WCS, its PSF as a photutils
`~photutils.psf.GriddedPSFModel`, and a target PSF slightly broader than the
worst PSF of the image. `measure_fwhm` measures star widths before and after
matching.
"""

import math
import warnings
from dataclasses import dataclass

import numpy as np

from ._validate import integer

__all__ = ["DemoData", "demo_cell_size", "demo_psf_fwhm", "make_demo_data",
           "measure_fwhm"]

#: Stars in a 1024 x 1024 image; smaller images get proportionally fewer.
_STARS_PER_MEGAPIXEL = 200

#: ePSF grid: points per axis, oversampling and half-width (detector pixels).
_GRID_POINTS = 3
_OVERSAMPLING = 2
_EPSF_HALF_WIDTH = 12

#: Sky level (electrons, already subtracted), read noise (electrons), gain 1.
_SKY = 200.0
_READ_NOISE = 5.0

#: Brightness of the isolated probe stars on which FWHMs are measured.
_PROBE_FLUX = 40000.0
_PROBE_FRACTIONS = (0.15, 0.5, 0.85)
_PROBE_ISOLATION = 24.0

#: Target FWHM = this factor times the broadest PSF axis, rounded up to 0.1 px.
_TARGET_MARGIN = 1.15


@dataclass
class DemoData:
    """A synthetic exposure, its PSF model and a target PSF.

    Attributes
    ----------
    ccd : `~astropy.nddata.CCDData`
        The exposure: float32 data in adu (sky subtracted), a
        `~astropy.nddata.StdDevUncertainty`, a mask of bad pixels (their
        data set high, as hot pixels are), a TAN `~astropy.wcs.WCS` and
        ``meta``. ``ccd.psf`` is None: the PSF varies, see ``psf_model``.
    psf_model : `~photutils.psf.GriddedPSFModel`
        The PSF of the exposure: a 3 x 3 grid of elliptical Gaussian ePSFs
        (oversampled by 2) whose width and orientation change across the
        field.
    target_psf : `~photutils.psf.CircularGaussianPRF`
        A round Gaussian slightly broader than the broadest PSF of the
        exposure.
    stars : `~astropy.table.Table`
        ``x``, ``y``, ``flux`` of every star; ``probe`` marks the bright
        isolated stars (a 3 x 3 pattern) used to measure FWHMs.
    """

    ccd: object
    psf_model: object
    target_psf: object
    stars: object

    @property
    def probes(self):
        """``(x, y)`` arrays of the probe stars."""
        probe = np.asarray(self.stars["probe"])
        return (np.asarray(self.stars["x"])[probe], np.asarray(self.stars["y"])[probe])


def demo_psf_fwhm(x, y, size):
    """FWHMs ``(x_fwhm, y_fwhm)`` and angle (degrees) of the demo PSF at ``(x, y)``.

    The PSF broadens from about 2.4 pixels at ``(0, 0)`` to about 3.7 pixels
    at the opposite corner, and turns from -30 to +30 degrees.

    Examples
    --------
    >>> from astropsfmatch.demo import demo_psf_fwhm
    >>> demo_psf_fwhm(0, 0, 1024)
    (2.4, 2.4, 0.0)
    """
    u = float(x) / (size - 1)
    v = float(y) / (size - 1)
    return (round(2.4 + 1.0 * u + 0.3 * v, 6), round(2.4 + 0.4 * u + 0.8 * v, 6),
            round(30.0 * (u - v), 6))


def demo_cell_size(size):
    """Cell size the demo uses for an image of ``size`` pixels: 128, or size // 4 (>= 32)."""
    return 128 if size >= 512 else max(32, size // 4)


def _psf_grid(size):
    """The GriddedPSFModel of the demo exposure and its broadest FWHM."""
    from astropy.nddata import NDData
    from photutils.psf import GaussianPRF, GriddedPSFModel

    n = 2 * _EPSF_HALF_WIDTH * _OVERSAMPLING + 1
    offsets = (np.arange(n) - n // 2) / _OVERSAMPLING
    yy, xx = np.meshgrid(offsets, offsets, indexing="ij")
    points = np.linspace(0.0, size - 1.0, _GRID_POINTS)
    epsfs, positions, broadest = [], [], 0.0
    for y in points:
        for x in points:
            x_fwhm, y_fwhm, theta = demo_psf_fwhm(x, y, size)
            broadest = max(broadest, x_fwhm, y_fwhm)
            model = GaussianPRF(x_fwhm=x_fwhm, y_fwhm=y_fwhm, theta=theta)
            # ePSF samples of the pixel-integrated PSF: they sum to oversampling**2
            epsfs.append(model(xx, yy))
            positions.append((float(x), float(y)))
    meta = {"grid_xypos": positions, "oversampling": _OVERSAMPLING}
    return GriddedPSFModel(NDData(np.array(epsfs), meta=meta)), broadest


def _star_table(size, n_stars, rng):
    """Random stars plus a 3 x 3 pattern of bright isolated probe stars."""
    from astropy.table import Table

    probe_x, probe_y = np.meshgrid([f * (size - 1) for f in _PROBE_FRACTIONS],
                                   [f * (size - 1) for f in _PROBE_FRACTIONS])
    # sub-pixel offsets so the probes do not all sit on pixel centres
    probe_x = probe_x.ravel() + rng.uniform(-0.5, 0.5, probe_x.size)
    probe_y = probe_y.ravel() + rng.uniform(-0.5, 0.5, probe_y.size)
    x = rng.uniform(-5.0, size + 4.0, 3 * n_stars)
    y = rng.uniform(-5.0, size + 4.0, 3 * n_stars)
    distance = np.hypot(x[:, None] - probe_x, y[:, None] - probe_y).min(axis=1)
    keep = np.flatnonzero(distance > _PROBE_ISOLATION)[:n_stars]
    x, y = x[keep], y[keep]
    # log-uniform fluxes from faint to bright (electrons = adu, gain 1)
    flux = 10.0 ** rng.uniform(2.7, 4.7, x.size)
    return Table({"x": np.concatenate([x, probe_x]), "y": np.concatenate([y, probe_y]),
                  "flux": np.concatenate([flux, np.full(probe_x.size, _PROBE_FLUX)]),
                  "probe": np.concatenate([np.zeros(x.size, bool), np.ones(probe_x.size, bool)])})


def _render(psf_model, stars, size):
    """Noise-free image of the stars, each drawn with the PSF at its position."""
    image = np.zeros((size, size))
    half = _EPSF_HALF_WIDTH
    offsets = np.arange(-half, half + 1)
    for x0, y0, flux in zip(stars["x"], stars["y"], stars["flux"], strict=True):
        ix, iy = int(round(x0)), int(round(y0))
        xs, ys = offsets + ix, offsets + iy
        xs, ys = xs[(xs >= 0) & (xs < size)], ys[(ys >= 0) & (ys < size)]
        if xs.size == 0 or ys.size == 0:
            continue
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        image[ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1] += psf_model.evaluate(
            xx, yy, flux, x0, y0)
    return image


def _wcs(size):
    from astropy.wcs import WCS

    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.1, 2.2]
    wcs.wcs.crpix = [(size + 1) / 2.0, (size + 1) / 2.0]
    wcs.wcs.cdelt = [-0.2 / 3600.0, 0.2 / 3600.0]
    wcs.wcs.cunit = ["deg", "deg"]
    return wcs


def _bad_pixels(size, rng, probe_x, probe_y):
    """A short bad column and a dozen hot pixels, none near a probe star."""
    mask = np.zeros((size, size), dtype=bool)
    column = int(0.3 * size)
    mask[int(0.2 * size):int(0.45 * size), column] = True
    hot = rng.integers(0, size, size=(200, 2))
    distance = np.hypot(hot[:, :1] - probe_x, hot[:, 1:] - probe_y).min(axis=1)
    hot = hot[distance > _PROBE_ISOLATION][:12]
    mask[hot[:, 1], hot[:, 0]] = True
    return mask


def make_demo_data(*, size=1024, n_stars=None, seed=0):
    """Make a synthetic exposure with a PSF that varies across the field.

    Parameters
    ----------
    size : int, optional
        Side of the square image in pixels (>= 128).
    n_stars : int, optional
        Number of random stars; default 200 for a 1024 x 1024 image and
        proportionally fewer (at least 20) for smaller ones. Nine bright
        probe stars are always added; random stars are kept 24 pixels away
        from them, so small images may hold fewer. Hot pixels stay away
        from the probes too.
    seed : int, optional
        Seed of the random generator (positions, fluxes, noise, bad pixels).

    Returns
    -------
    data : DemoData

    Raises
    ------
    ValueError
        If ``size``, ``n_stars`` or ``seed`` is not an integer in range.

    Examples
    --------
    >>> from astropsfmatch.demo import make_demo_data
    >>> demo = make_demo_data(size=128, seed=1)
    >>> demo.ccd.shape, demo.ccd.unit.to_string(), demo.ccd.wcs.wcs.ctype[0]
    ((128, 128), 'adu', 'RA---TAN')
    >>> float(demo.target_psf.fwhm.value) > 3.5
    True
    """
    import astropy.units as u
    from astropy.nddata import CCDData, StdDevUncertainty
    from photutils.psf import CircularGaussianPRF

    size = integer(128)("size", size)
    seed = integer(0)("seed", seed)
    if n_stars is None:
        n_stars = max(20, round(_STARS_PER_MEGAPIXEL * (size / 1024) ** 2))
    n_stars = integer(0)("n_stars", n_stars)
    rng = np.random.default_rng(seed)

    psf_model, broadest = _psf_grid(size)
    stars = _star_table(size, n_stars, rng)
    signal = _render(psf_model, stars, size)
    variance = _SKY + _READ_NOISE**2 + np.clip(signal, 0.0, None)
    data = signal + rng.normal(size=signal.shape) * np.sqrt(variance)
    probe = np.asarray(stars["probe"])
    mask = _bad_pixels(size, rng, np.asarray(stars["x"])[probe], np.asarray(stars["y"])[probe])
    data[mask] = 6.0e4  # hot / bad pixels: large, and masked

    meta = {"OBJECT": "astropsfmatch demo", "EXPTIME": 300.0, "GAIN": 1.0,
            "RDNOISE": _READ_NOISE, "SKYLEVEL": _SKY, "NSTARS": len(stars),
            "PSFMODEL": "GriddedPSFModel 3x3 elliptical Gaussian ePSFs"}
    ccd = CCDData(data.astype(np.float32), unit=u.adu, mask=mask,
                  uncertainty=StdDevUncertainty(np.sqrt(variance).astype(np.float32)),
                  wcs=_wcs(size), meta=meta)
    target_fwhm = math.ceil(_TARGET_MARGIN * broadest * 10.0) / 10.0
    return DemoData(ccd=ccd, psf_model=psf_model, target_psf=CircularGaussianPRF(fwhm=target_fwhm),
                    stars=stars)


def measure_fwhm(data, x, y, *, mask=None, fwhm=3.0, fit_shape=None):
    """FWHM of stars by fitting a circular Gaussian (`photutils.psf.fit_fwhm`).

    Parameters
    ----------
    data : 2-D array
        Background-subtracted image; non-finite pixels are ignored.
    x, y : array_like
        Approximate star positions.
    mask : 2-D bool array, optional
        Pixels to ignore.
    fwhm : float, optional
        Initial guess.
    fit_shape : odd int, optional
        Side of the fitted box; default the odd number nearest ``3 * fwhm``
        (at least 7).

    Returns
    -------
    fwhm : ndarray
        One value per star; NaN where the fit did not converge cleanly.
    """
    from photutils.psf import fit_fwhm

    if fit_shape is None:
        fit_shape = max(7, 2 * int(round(1.5 * fwhm)) + 1)
    data = np.asarray(data, dtype=np.float64)
    out = np.full(np.size(x), np.nan)
    for k, (xk, yk) in enumerate(zip(np.atleast_1d(x), np.atleast_1d(y), strict=True)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                out[k] = fit_fwhm(data, xypos=[(xk, yk)], fwhm=fwhm, fit_shape=fit_shape,
                                  mask=mask)[0]
            except Exception:  # noqa: BLE001, S112 - a failed fit is reported as NaN
                continue
    return out
