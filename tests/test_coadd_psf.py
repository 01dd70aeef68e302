"""Tests of astropsfmatch._workflow.coadd.coadd_psf_matched: a coadd whose PSF is the target.

Four exposures of one star field, each with its own spatially varying PSF
(a GriddedPSFModel), sub-pixel offsets and a position angle of 0, 15, 30 or
90 degrees on the output grid, are matched and co-added; the stars of the
coadd are measured with photutils and compared with the target. Then the
pieces: the resampling engine, masks, other geometries, inputs and errors.
"""

import warnings

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.modeling import Model
from astropy.modeling.fitting import TRFLSQFitter
from astropy.nddata import CCDData, NDData, StdDevUncertainty, VarianceUncertainty
from astropy.utils.exceptions import AstropyUserWarning
from astropy.wcs import WCS
from photutils.psf import (
    CircularGaussianPRF,
    GaussianPRF,
    GriddedPSFModel,
    ImagePSF,
    MoffatPSF,
    fit_fwhm,
)

from astropsfmatch._engine.resample import (
    KERNELS,
    StampResampler,
    fourier_shift,
    half_width,
    resample,
    sinc_affine,
)
from astropsfmatch._workflow.coadd import coadd, coadd_psf_matched
from astropsfmatch._workflow.target import common_target_psf
from astropsfmatch._workflow.warp import FrameMap, detector_target

N = 256
#: for the small tests of one or two exposures of constant PSFs (the automatic basis choice
#: costs more than the match itself)
QUICK = {"cell_size": 48, "kernel_basis": "alard-lupton"}
OVERSAMPLING = 4
HALF = 12  # stars are drawn on (2 HALF + 1)^2 cutouts
FLUX = 1.0e4
SCALE = 2.0**-14  # degrees per pixel (0.22")
# how the FWHM (pixels) of each exposure's PSF varies over its field, u = x/(N-1), v = y/(N-1)
FWHM_LAWS = [
    lambda u, v: 2.5 + 0.4 * u,
    lambda u, v: 2.9 - 0.3 * v,
    lambda u, v: 2.7 + 0.15 * (abs(2 * u - 1) + abs(2 * v - 1)),
    lambda u, v: 2.75 + 0.15 * (u + v),
]
ANGLES = [0.0, 15.0, 30.0, 90.0]  # position angles of the exposures on the output grid
SHIFTS = [(0.37, -0.21), (-0.44, 0.29), (0.13, 0.46), (0.31, -0.38)]  # sub-pixel offsets
NOISE = [1.0, 1.3, 1.6, 2.0]  # the uncertainties (the images are noise-free)


def make_wcs(angle=0.0, dx=0.0, dy=0.0, *, n=N, scale=1.0, crval=(150.0, 2.0)):
    """A TAN WCS rotated by ``angle`` degrees, its reference pixel offset by (dx, dy)."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = list(crval)
    wcs.wcs.crpix = [(n + 1) / 2 + dx, (n + 1) / 2 + dy]
    c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    wcs.wcs.cd = scale * SCALE * np.array([[-c, s], [s, c]])
    return wcs


def gridded_psf(law, n=N):
    """A 3x3 GriddedPSFModel of Gaussian PRFs over the n x n field, 4x oversampled."""
    nodes = np.linspace(0, n - 1, 3)
    d = (np.arange(2 * HALF * OVERSAMPLING + 1) - HALF * OVERSAMPLING) / OVERSAMPLING
    yy, xx = np.meshgrid(d, d, indexing="ij")
    data, xypos = [], []
    for y in nodes:
        for x in nodes:
            data.append(CircularGaussianPRF(fwhm=law(x / (n - 1), y / (n - 1)))(xx, yy))
            xypos.append((x, y))
    return GriddedPSFModel(NDData(np.array(data), meta={"grid_xypos": xypos,
                                                        "oversampling": OVERSAMPLING}))


def star_positions(n=N, step=20, radius=92.0, seed=3):
    """Output-grid positions of isolated stars (20 px apart) inside every rotated exposure."""
    rng = np.random.default_rng(seed)
    centre = (n - 1) / 2
    grid = np.arange(centre - 5 * step, centre + 5 * step + 1, step)
    stars = [(x + rng.uniform(-0.5, 0.5), y + rng.uniform(-0.5, 0.5))
             for y in grid for x in grid if (x - centre) ** 2 + (y - centre) ** 2 < radius**2]
    return np.array(stars)


def render(psf, positions, shape, flux=FLUX):
    """An image of unit-flux ``psf`` stars (times flux) at detector ``positions``."""
    data = np.zeros(shape)
    for x, y in positions:
        model = psf.copy()
        model.x_0, model.y_0, model.flux = x, y, flux
        ix, iy = round(x), round(y)
        yy, xx = np.mgrid[iy - HALF:iy + HALF + 1, ix - HALF:ix + HALF + 1]
        data[iy - HALF:iy + HALF + 1, ix - HALF:ix + HALF + 1] += model(xx, yy)
    return data


def make_exposures(stars=None, *, n=N, laws=FWHM_LAWS, angles=ANGLES, shifts=SHIFTS,
                   noise=NOISE, output_wcs=None, scale=1.0):
    """Noise-free exposures of the stars (output-grid positions), with their PSF models."""
    output_wcs = make_wcs(n=n) if output_wcs is None else output_wcs
    stars = star_positions(n) if stars is None else stars
    sky = output_wcs.pixel_to_world(stars[:, 0], stars[:, 1])
    images, psfs = [], []
    for law, angle, (dx, dy), sigma in zip(laws, angles, shifts, noise, strict=True):
        wcs = make_wcs(angle, dx, dy, n=n, scale=scale)
        psf = law if isinstance(law, Model) else gridded_psf(law, n)
        x, y = wcs.world_to_pixel(sky)
        images.append(CCDData(render(psf, zip(x, y, strict=True), (n, n)), unit="electron",
                              wcs=wcs, uncertainty=StdDevUncertainty(np.full((n, n), sigma))))
        psfs.append(psf)
    return images, psfs


def cutout(data, x, y, half=7):
    ix, iy = round(x), round(y)
    yy, xx = np.mgrid[iy - half:iy + half + 1, ix - half:ix + half + 1]
    return data[iy - half:iy + half + 1, ix - half:ix + half + 1], xx, yy


def fit_shapes(data, stars, guess):
    """Elliptical Gaussian PRF fits of the stars: (major FWHM, minor FWHM, angle of the major
    axis in degrees in [-90, 90))."""
    fitter = TRFLSQFitter()
    shapes = []
    for x, y in stars:
        cut, xx, yy = cutout(data, x, y)
        model = GaussianPRF(flux=cut.sum(), x_0=x, y_0=y, x_fwhm=1.05 * guess,
                            y_fwhm=0.95 * guess, theta=20.0)
        for name in ("x_fwhm", "y_fwhm", "theta"):
            getattr(model, name).fixed = False
        fit = fitter(model, xx, yy, cut, maxiter=500)
        a, b, theta = fit.x_fwhm.value, fit.y_fwhm.value, fit.theta.value
        if b > a:
            a, b, theta = b, a, theta + 90.0
        shapes.append((a, b, (theta + 90.0) % 180.0 - 90.0))
    return np.array(shapes)


def profile_residuals(data, stars, psf_model):
    """Fit ``psf_model`` (flux, x_0, y_0) to each star: largest |star - model| / peak, flux."""
    fitter = TRFLSQFitter()
    out = []
    for x, y in stars:
        cut, xx, yy = cutout(data, x, y)
        model = psf_model.copy()
        model.x_0, model.y_0, model.flux = x, y, cut.sum()
        fit = fitter(model, xx, yy, cut, maxiter=200)
        best = fit(xx, yy)
        out.append((np.abs(cut - best).max() / best.max(), fit.flux.value))
    return np.array(out)


def aperture_fluxes(data, stars, radius=12.0):
    yy, xx = np.mgrid[:data.shape[0], :data.shape[1]]
    return np.array([np.nansum(data[(xx - x) ** 2 + (yy - y) ** 2 < radius**2])
                     for x, y in stars])


@pytest.fixture(scope="module")
def exposures():
    return make_exposures()


@pytest.fixture(scope="module")
def target(exposures):
    return common_target_psf(exposures[1], shapes=(N, N))


@pytest.fixture(scope="module")
def round_coadd(exposures, target):
    images, psfs = exposures
    return coadd_psf_matched(images, target.psf, make_wcs(), (N, N), source_psfs=psfs)


@pytest.fixture(scope="module")
def elliptical_target(target):
    # axis ratio 0.8, major axis at 30 degrees on the output grid; the minor axis is as
    # broad as the round target, so no exposure needs a deconvolution
    return GaussianPRF(x_fwhm=target.fwhm / 0.8, y_fwhm=target.fwhm, theta=30.0)


@pytest.fixture(scope="module")
def elliptical_coadd(exposures, elliptical_target):
    images, psfs = exposures
    return coadd_psf_matched(images, elliptical_target, make_wcs(), (N, N), source_psfs=psfs)


@pytest.fixture(scope="module")
def shifted():
    n = 96
    stars = star_positions(n, step=24, radius=30.0)
    psf = CircularGaussianPRF(fwhm=2.6)
    images, _ = make_exposures(stars, n=n, laws=[psf], angles=[0.0], shifts=[(0.5, 0.5)],
                               noise=[1.0], output_wcs=make_wcs(n=n))
    return images[0], psf, stars


@pytest.fixture(scope="module")
def small():
    n = 96
    stars = star_positions(n, step=24, radius=30.0)
    psfs = [CircularGaussianPRF(fwhm=2.5), CircularGaussianPRF(fwhm=3.0)]
    return n, stars, psfs


@pytest.fixture(scope="module")
def masked():
    n = 128
    stars = star_positions(n, step=24, radius=45.0)
    psfs = [CircularGaussianPRF(fwhm=2.5), CircularGaussianPRF(fwhm=3.0)]
    images, _ = make_exposures(stars, n=n, laws=psfs, angles=[0.0, 30.0],
                               shifts=[(0.3, -0.2), (-0.4, 0.45)], noise=[1.0, 2.0],
                               output_wcs=make_wcs(n=n))
    mask = np.zeros((n, n), dtype=bool)
    mask[60:63, 40:44] = True  # a bad patch
    images[1].mask = mask
    images[1].data[20, 90] = np.nan  # and a NaN pixel
    result = coadd_psf_matched(images, CircularGaussianPRF(fwhm=4.0), make_wcs(n=n),
                               (n, n), source_psfs=psfs, **QUICK)
    return n, images, result


@pytest.fixture(scope="module")
def pair():
    n = 96
    stars = star_positions(n, step=24, radius=30.0)
    psfs = [CircularGaussianPRF(fwhm=2.5), CircularGaussianPRF(fwhm=3.0)]
    images, _ = make_exposures(stars, n=n, laws=psfs, angles=[0.0, 30.0],
                               shifts=[(0.3, -0.2), (-0.4, 0.45)], noise=[1.0, 2.0],
                               output_wcs=make_wcs(n=n))
    return n, images, psfs, stars


@pytest.fixture(scope="module")
def pair_coadd(pair):
    n, images, psfs, _ = pair
    return coadd_psf_matched(images, CircularGaussianPRF(fwhm=4.0), make_wcs(n=n), (n, n),
                             source_psfs=psfs, **QUICK)


@pytest.fixture(scope="module")
def image():
    n = 64
    return CCDData(np.zeros((n, n)), unit="electron", wcs=make_wcs(n=n),
                   uncertainty=StdDevUncertainty(np.ones((n, n))))


class TestRoundTarget:
    def test_every_star_has_the_target_fwhm(self, round_coadd, target):
        stars = star_positions()
        assert len(stars) > 60
        fwhm = fit_fwhm(np.nan_to_num(round_coadd.data), xypos=stars, fit_shape=11,
                        fwhm=target.fwhm)
        assert np.all(np.abs(fwhm / target.fwhm - 1) < 0.005)

    def test_stars_are_round(self, round_coadd, target):
        shapes = fit_shapes(round_coadd.data, star_positions(), target.fwhm)
        assert np.all(1 - shapes[:, 1] / shapes[:, 0] < 0.01)

    def test_the_exposures_were_not(self, exposures, target):
        # the inputs' stars are up to 25% narrower than the target, each field in its own way
        images, psfs = exposures
        sky = make_wcs().pixel_to_world(*star_positions()[::3].T)
        widths = []
        for image in images:
            xy = np.stack(image.wcs.world_to_pixel(sky), axis=-1)
            widths.append(fit_fwhm(image.data, xypos=xy, fit_shape=11, fwhm=3.0))
        widths = np.concatenate(widths)
        assert widths.min() < 0.8 * target.fwhm
        assert widths.max() < 0.95 * target.fwhm

    def test_flux_of_every_star_is_conserved(self, round_coadd):
        fluxes = aperture_fluxes(round_coadd.data, star_positions())
        np.testing.assert_allclose(fluxes, FLUX, rtol=1e-3)

    def test_reported_psf_is_the_star_profile(self, round_coadd):
        # the coadd_psf model fitted to each star: the residual is below 1e-3 of the peak
        # and the flux is the star's
        residuals = profile_residuals(round_coadd.data, star_positions(), round_coadd.coadd_psf)
        assert residuals[:, 0].max() < 1e-3
        np.testing.assert_allclose(residuals[:, 1], FLUX, rtol=1e-3)

    def test_reported_residual(self, round_coadd):
        meta = round_coadd.meta
        assert meta["PSFCOADD"] is True
        assert 0 < meta["PSFCRES"] < 1e-3
        assert meta["PSFCRRMS"] < meta["PSFCRES"]
        assert meta["PSFCFWD"] < 5e-3
        assert meta["PSFCELL"] < 0.01
        assert meta["PSFCNHO"] >= 20
        quality = round_coadd.psf_quality
        assert quality["residual_max"] == meta["PSFCRES"]
        assert quality["n_heldout"] == meta["PSFCNHO"] == len(quality["positions"])
        # the measured profile residual of the stars agrees with the reported one
        residuals = profile_residuals(round_coadd.data, star_positions()[::4],
                                      round_coadd.coadd_psf)
        assert residuals[:, 0].max() < 3 * meta["PSFCRES"]

    def test_what_each_exposure_was(self, round_coadd):
        exposures = round_coadd.psf_quality["exposures"]
        assert [e["index"] for e in exposures] == [0, 1, 2, 3]
        assert all(e["used"] for e in exposures)
        np.testing.assert_allclose([e["rotation"] for e in exposures], ANGLES, atol=1e-6)
        np.testing.assert_allclose([e["scale"] for e in exposures], 1.0, atol=1e-6)
        assert not any(e["target_varies"] for e in exposures)
        assert all(e["precompensation_residual"] < 1e-4 for e in exposures)
        assert all(e["match_quality"]["passed"] for e in exposures)
        assert all(e["psf_residual_max"] < 1e-3 for e in exposures)

    def test_result(self, round_coadd, target):
        result = round_coadd
        assert isinstance(result, CCDData)
        assert result.shape == (N, N)
        assert result.unit == u.electron
        assert isinstance(result.uncertainty, StdDevUncertainty)
        assert result.meta["NCOMBINE"] == 4
        assert result.meta["COMBINE"] == "mean"
        assert result.meta["CWEIGHTS"] == "inverse-variance"
        assert result.meta["RESAMPLE"] == "kaiser5"
        assert result.meta["PSFMTPSF"].startswith("CircularGaussianPRF fwhm=")
        assert result.meta["PSFCMRES"] < 1e-3
        assert "coadd_psf_matched" in str(result.meta["HISTORY"])
        stamp = result.psf
        assert stamp.shape[0] % 2 == 1 and stamp.sum() == pytest.approx(1.0)
        assert np.unravel_index(stamp.argmax(), stamp.shape) == (stamp.shape[0] // 2,) * 2
        assert isinstance(result.coadd_psf, ImagePSF)
        assert result.coadd_psf.oversampling.tolist() == [4, 4]
        # the model is the target: evaluated at integer offsets it is the psf stamp
        half = stamp.shape[0] // 2
        yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
        np.testing.assert_allclose(result.coadd_psf(xx, yy), stamp, atol=1e-4 * stamp.max())
        np.testing.assert_array_equal(result.wcs.wcs.crpix, make_wcs().wcs.crpix)
        np.testing.assert_array_equal(result.wcs.wcs.cd, make_wcs().wcs.cd)

    def test_coverage_and_variance(self, round_coadd):
        footprint = round_coadd.footprint
        assert footprint.max() == 4
        assert footprint[128, 128] == 4
        np.testing.assert_array_equal(round_coadd.mask, footprint == 0)
        assert np.all(np.isnan(round_coadd.data[round_coadd.mask]))
        assert np.all(np.isfinite(round_coadd.data[~round_coadd.mask]))
        # the corners of the output grid miss some rotated exposures
        assert set(np.unique(footprint)) >= {1.0, 2.0, 3.0, 4.0}
        # inverse-variance weights: the variance of the mean is below the smallest input's
        variance = round_coadd.uncertainty.array[128, 128] ** 2
        assert variance < 1 / sum(1 / s**2 for s in NOISE)


class TestEllipticalTarget:
    def test_axis_ratio_and_position_angle(self, elliptical_coadd, target):
        shapes = fit_shapes(elliptical_coadd.data, star_positions(), target.fwhm)
        np.testing.assert_allclose(shapes[:, 1] / shapes[:, 0], 0.8, rtol=0.01)
        np.testing.assert_allclose(shapes[:, 2], 30.0, atol=1.0)
        # and the sizes of the axes
        np.testing.assert_allclose(shapes[:, 0], target.fwhm / 0.8, rtol=5e-3)
        np.testing.assert_allclose(shapes[:, 1], target.fwhm, rtol=5e-3)

    def test_reported_psf_is_the_star_profile(self, elliptical_coadd):
        residuals = profile_residuals(elliptical_coadd.data, star_positions(),
                                      elliptical_coadd.coadd_psf)
        assert residuals[:, 0].max() < 1e-3
        assert elliptical_coadd.meta["PSFCRES"] < 1e-3

    def test_flux_of_every_star_is_conserved(self, elliptical_coadd):
        fluxes = aperture_fluxes(elliptical_coadd.data, star_positions())
        np.testing.assert_allclose(fluxes, FLUX, rtol=1e-3)

    def test_the_detector_frame_targets_are_rotated(self, exposures, elliptical_target):
        # matched in its own frame, each exposure's stars point elsewhere: matching each to
        # the unrotated target and reprojecting (the reproject path) would be wrong
        images, _ = exposures
        t_out = elliptical_target(*np.mgrid[-15:16, -15:16][::-1])
        t_out /= t_out.sum()
        for image, angle in zip(images, ANGLES, strict=True):
            frame = FrameMap(image.wcs, image.shape, make_wcs(), (N, N))
            detector, _ = detector_target(t_out, frame, "kaiser5")
            size = detector.shape[0]
            shapes = fit_shapes(np.pad(detector, 20), [(size // 2 + 20, size // 2 + 20)], 4.0)
            # the major axis turns with the exposure (position angle on the sky, 30 deg on
            # the output grid, is 30 - angle in the exposure's pixels)
            expected = (30.0 - angle + 90.0) % 180.0 - 90.0
            assert shapes[0, 2] == pytest.approx(expected, abs=0.5)


class TestResamplingResponse:
    """One exposure, shifted by half a pixel: where interpolation smooths the most."""

    @pytest.mark.parametrize("resampling", ["linear", "kaiser5"])
    def test_response_is_precompensated(self, shifted, resampling):
        image, psf, stars = shifted
        n = image.shape[0]
        target = CircularGaussianPRF(fwhm=3.8)
        result = coadd_psf_matched([image], target, make_wcs(n=n), (n, n), source_psfs=[psf],
                                   resampling=resampling, **QUICK)
        fwhm = fit_fwhm(np.nan_to_num(result.data), xypos=stars, fit_shape=11, fwhm=3.8)
        assert np.all(np.abs(fwhm / 3.8 - 1) < 0.005)
        assert result.meta["PSFCRES"] < 1e-3
        assert result.meta["RESAMPLE"] == resampling
        np.testing.assert_allclose(aperture_fluxes(result.data, stars), FLUX, rtol=1e-3)

    def test_without_precompensation_linear_interpolation_broadens(self):
        # what the precompensation corrects: a FWHM-3.8 star resampled at half a pixel
        d = np.arange(-15, 16)
        star = CircularGaussianPRF(fwhm=3.8)(*np.meshgrid(d, d))
        yy, xx = np.mgrid[0:31, 0:31].astype(float)
        (linear,), _ = resample([star], None, xx + 0.5, yy + 0.5, "linear",
                                outside_invalid=False)
        fwhm = fit_fwhm(linear, xypos=[(14.5, 14.5)], fit_shape=11, fwhm=3.8)[0]
        assert fwhm / 3.8 - 1 > 0.02


class TestOtherTargetsAndGeometries:
    def test_moffat_target(self, small):
        n, stars, psfs = small
        images, _ = make_exposures(stars, n=n, laws=psfs[1:], angles=[30.0],
                                   shifts=[(-0.4, 0.45)], noise=[1.0], output_wcs=make_wcs(n=n))
        # FWHM 2 alpha sqrt(2^(1/beta) - 1) = 4.4; its wings need a larger kernel than the
        # automatic size (from the half-maximum widths)
        beta = 4.765
        target = MoffatPSF(alpha=4.4 / (2 * np.sqrt(2 ** (1 / beta) - 1)), beta=beta)
        result = coadd_psf_matched(images, target, make_wcs(n=n), (n, n),
                                   source_psfs=psfs[1:], cell_size=48, kernel_size=21)
        residuals = profile_residuals(result.data, stars, result.coadd_psf)
        assert residuals[:, 0].max() < 1e-3
        assert result.meta["PSFCRES"] < 1e-3
        np.testing.assert_allclose(residuals[:, 1], FLUX, rtol=1e-3)

    def test_other_pixel_scale_conserves_flux(self, small):
        # exposures of 0.8x the output pixel size: the target is in output pixels
        n, stars, psfs = small
        images, _ = make_exposures(stars, n=n, laws=psfs[:1], angles=[30.0],
                                   shifts=[(0.3, -0.2)], noise=[1.0], output_wcs=make_wcs(n=n),
                                   scale=0.8)
        result = coadd_psf_matched(images, CircularGaussianPRF(fwhm=4.0), make_wcs(n=n),
                                   (n, n), source_psfs=psfs[:1], **QUICK)
        assert result.psf_quality["exposures"][0]["scale"] == pytest.approx(1 / 0.8, rel=1e-6)
        np.testing.assert_allclose(aperture_fluxes(result.data, stars), FLUX, rtol=1e-3)
        fwhm = fit_fwhm(np.nan_to_num(result.data), xypos=stars, fit_shape=11, fwhm=4.0)
        assert np.all(np.abs(fwhm / 4.0 - 1) < 0.005)
        assert result.meta["PSFCRES"] < 1e-3

    def test_varying_jacobian_gives_a_gridded_target(self):
        # a 2-degree field: the TAN projection stretches the pixels towards the edges
        n = 96
        output_wcs = make_wcs(n=n, scale=300.0, crval=(150.0, 2.0))
        stars = star_positions(n, step=24, radius=30.0)
        psf = CircularGaussianPRF(fwhm=2.5)
        wcs = make_wcs(20.0, 0.3, -0.2, n=n, scale=300.0, crval=(150.1, 2.05))
        sky = output_wcs.pixel_to_world(stars[:, 0], stars[:, 1])
        x, y = wcs.world_to_pixel(sky)
        image = CCDData(render(psf, zip(x, y, strict=True), (n, n)), unit="electron", wcs=wcs,
                        uncertainty=StdDevUncertainty(np.ones((n, n))))
        result = coadd_psf_matched([image], CircularGaussianPRF(fwhm=3.8), output_wcs, (n, n),
                                   source_psfs=[psf], **QUICK)
        info = result.psf_quality["exposures"][0]
        assert info["target_varies"]
        assert result.meta["PSFCRES"] < 1e-3
        # flux per output pixel: the stars keep their flux although the pixel areas differ
        np.testing.assert_allclose(aperture_fluxes(result.data, stars, radius=10.0), FLUX,
                                   rtol=1e-3)


class TestMasks:
    def test_no_nan_beyond_the_footprint_of_the_masks(self, masked):
        n, images, result = masked
        footprint = result.footprint
        # exposure 1 is missing only within reach of its bad pixels: the matching kernel's
        # half-size, then the resampling kernel's half-width, in its own pixels
        reach = result.psf_quality["exposures"][1]["kernel_size"] // 2 + half_width("kaiser5")
        bad_y, bad_x = np.nonzero(images[1].mask | ~np.isfinite(images[1].data))
        yy, xx = np.mgrid[:n, :n]
        x_in, y_in = images[1].wcs.world_to_pixel(make_wcs(n=n).pixel_to_world(xx, yy))
        distance = np.full((n, n), np.inf)
        for bx, by in zip(bad_x, bad_y, strict=True):
            distance = np.minimum(distance, np.maximum(np.abs(x_in - bx), np.abs(y_in - by)))
        centre = (n - 1) / 2
        interior = np.hypot(xx - centre, yy - centre) < 45  # covered by both, away from edges
        assert np.all(footprint[interior & (distance >= reach)] == 2)
        assert np.all(footprint[distance < reach - 1] <= 1)
        assert np.count_nonzero(interior & (footprint == 1)) > 100
        # the coadd is finite wherever one exposure contributes, NaN only where none does
        assert np.all(np.isfinite(result.data[footprint > 0]))
        assert np.all(np.isnan(result.data[footprint == 0]))
        np.testing.assert_array_equal(result.mask, footprint == 0)

    def test_stars_next_to_the_masks_keep_the_target(self, masked):
        n, _, result = masked
        stars = star_positions(n, step=24, radius=45.0)
        residuals = profile_residuals(result.data, stars, result.coadd_psf)
        assert residuals[:, 0].max() < 1e-3
        np.testing.assert_allclose(residuals[:, 1], FLUX, rtol=1e-3)


class TestResamplingEngine:
    @pytest.mark.parametrize("name", sorted(KERNELS))
    def test_constant_stays_constant_and_integer_shifts_are_exact(self, name):
        rng = np.random.default_rng(0)
        image = rng.normal(size=(40, 50))
        yy, xx = np.mgrid[:30, :30].astype(float)
        (values,), bad = resample([np.ones((40, 50))], None, xx * 0.93 + 7.31, yy * 1.07 + 3.6,
                                  name)
        np.testing.assert_allclose(values[~bad], 1.0, atol=1e-12)
        assert not bad[5:-5, 5:-5].any()
        (values,), bad = resample([image], None, xx + 6.0, yy + 4.0, name)
        np.testing.assert_allclose(values, image[4:34, 6:36], atol=1e-12)
        assert not bad.any()

    @pytest.mark.parametrize("name", sorted(KERNELS))
    def test_invalid_pixels_are_never_read_and_spread_only_over_the_footprint(self, name):
        image = np.ones((40, 40))
        invalid = np.zeros((40, 40), dtype=bool)
        invalid[20, 20] = True
        image[20, 20] = np.nan
        a = half_width(name)
        yy, xx = np.mgrid[:40, :40].astype(float)
        x, y = xx + 0.3, yy - 0.4
        (values,), bad = resample([image], invalid, x, y, name)
        assert np.all(np.isfinite(values))
        np.testing.assert_allclose(values[~bad], 1.0, atol=1e-12)
        reach = np.maximum(np.abs(x - 20), np.abs(y - 20)) < a
        inside = (x >= a - 1) & (x <= 40 - a) & (y >= a - 1) & (y <= 40 - a)
        np.testing.assert_array_equal(bad[inside], reach[inside])

    def test_outside_is_invalid_for_images_and_zero_for_stamps(self):
        image = np.ones((10, 10))
        (values,), bad = resample([image], None, np.array([-3.0, 4.5, 12.0]),
                                  np.array([4.5, 4.5, 4.5]), "lanczos3")
        assert bad.tolist() == [True, False, True]
        (values,), bad = resample([image], None, np.array([-30.0, 4.5, np.nan]),
                                  np.array([4.5, 4.5, 4.5]), "lanczos3", outside_invalid=False)
        assert bad.tolist() == [False, False, True]
        assert values[0] == 0.0 and values[1] == pytest.approx(1.0)

    def test_linear_is_bilinear_interpolation(self):
        rng = np.random.default_rng(1)
        image = rng.normal(size=(8, 8))
        (value,), _ = resample([image], None, np.array([2.25]), np.array([5.5]), "linear")
        expected = 0.5 * (0.75 * image[5, 2] + 0.25 * image[5, 3]) + 0.5 * (
            0.75 * image[6, 2] + 0.25 * image[6, 3])
        assert value[0] == pytest.approx(expected)

    def test_stamp_resampler_is_resample(self):
        rng = np.random.default_rng(2)
        image = rng.normal(size=(21, 21))
        x, y = rng.uniform(-2, 22, (2, 5, 7))
        (expected,), _ = resample([image], None, x, y, "kaiser5", outside_invalid=False)
        np.testing.assert_allclose(StampResampler(image.shape, x, y, "kaiser5")(image), expected,
                                   atol=1e-14)

    def test_fourier_shift_moves_a_well_sampled_star(self):
        d = np.arange(-12, 13)
        xx, yy = np.meshgrid(d, d)
        star = CircularGaussianPRF(fwhm=3.0)(xx, yy)
        moved = fourier_shift(star, 0.3, -0.45, pad=0)
        expected = CircularGaussianPRF(fwhm=3.0, x_0=0.3, y_0=-0.45)(xx, yy)
        np.testing.assert_allclose(moved, expected, atol=1e-4 * star.max())
        assert fourier_shift(star[None], [0.3], [-0.45], pad=4).shape == (1, 33, 33)

    def test_sinc_affine_rotates_and_scales(self):
        d = np.arange(-15, 16)
        xx, yy = np.meshgrid(d, d)
        star = GaussianPRF(x_fwhm=4.0, y_fwhm=3.0, theta=0.0)(xx, yy)
        angle = np.radians(35.0)
        c, s = np.cos(angle), np.sin(angle)
        rotation = np.array([[c, s], [-s, c]])  # output offsets -> offsets of the input stamp
        out = sinc_affine(star, rotation, 31)
        expected = GaussianPRF(x_fwhm=4.0, y_fwhm=3.0, theta=35.0)(xx, yy)
        # the rotated pixel box differs from the axis-aligned one at the 1e-3 level
        np.testing.assert_allclose(out, expected, atol=3e-3 * star.max())
        double = sinc_affine(star, 0.5 * np.eye(2), 31)
        np.testing.assert_allclose(double.sum(), 4 * star.sum(), rtol=1e-3)


class TestInputs:
    def run(self, pair, images=None, **kwargs):
        n, own, psfs, _ = pair
        kwargs.setdefault("source_psfs", psfs)
        for key, value in QUICK.items():
            kwargs.setdefault(key, value)
        return coadd_psf_matched(own if images is None else images,
                                 CircularGaussianPRF(fwhm=4.0), make_wcs(n=n), (n, n),
                                 **kwargs)

    def test_does_not_change_the_inputs(self, pair, pair_coadd):
        n, images, _, stars = pair
        for image, sigma in zip(images, [1.0, 2.0], strict=True):
            assert image.mask is None
            np.testing.assert_array_equal(image.uncertainty.array, sigma)
        np.testing.assert_allclose(aperture_fluxes(pair_coadd.data, stars, radius=10.0), FLUX,
                                   rtol=1e-3)

    def test_fits_paths_their_psf_and_units(self, pair, pair_coadd, tmp_path):
        # exposure 0 in electron/s, exposure 1 in electron/h, each with its PSF as an image
        n, images, psfs, stars = pair
        paths = []
        for k, (image, psf, factor, unit) in enumerate(zip(
                images, psfs, [1.0, 3600.0], ["electron/s", "electron/h"], strict=True)):
            d = np.arange(-10, 11)
            stamp = psf(*np.meshgrid(d, d))
            sigma = image.uncertainty.array * factor
            uncertainty = StdDevUncertainty(sigma) if k == 0 else VarianceUncertainty(sigma**2)
            ccd = CCDData(image.data * factor, unit=unit, wcs=image.wcs, psf=stamp / stamp.sum(),
                          uncertainty=uncertainty)
            paths.append(tmp_path / f"exposure{k}.fits")
            ccd.write(paths[-1])
        result = self.run(pair, [str(paths[0]), paths[1]], source_psfs=None)
        assert result.unit == u.electron / u.s
        assert result.meta["NCOMBINE"] == 2
        np.testing.assert_allclose(result.data, pair_coadd.data, atol=1e-6 * FLUX / 100)
        # different uncertainty classes: the coadd has a variance
        assert isinstance(result.uncertainty, VarianceUncertainty)
        good = ~result.mask
        np.testing.assert_allclose(np.sqrt(result.uncertainty.array[good]),
                                   pair_coadd.uncertainty.array[good], rtol=1e-6)

    def test_uniform_weights(self, pair, pair_coadd):
        n, images, _, stars = pair
        uniform = self.run(pair, weights="uniform")
        assert uniform.meta["CWEIGHTS"] == "uniform"
        assert pair_coadd.meta["CWEIGHTS"] == "inverse-variance"
        # the variance of a uniform mean, (v0 + v1) / 4, exceeds 1 / (1/v0 + 1/v1)
        assert uniform.uncertainty.array[48, 48] > pair_coadd.uncertainty.array[48, 48]
        np.testing.assert_allclose(aperture_fluxes(uniform.data, stars, radius=10.0), FLUX,
                                   rtol=1e-3)

    def test_exposures_without_uncertainty(self, pair):
        n, images, _, stars = pair
        bare = CCDData(images[1].data, unit=images[1].unit, wcs=images[1].wcs)
        with pytest.warns(AstropyUserWarning, match=r"images\[1\] has no uncertainty: the "
                                                    r"exposures are co-added with uniform"):
            result = self.run(pair, [images[0], bare])
        assert result.uncertainty is None
        assert result.meta["CWEIGHTS"] == "uniform"
        np.testing.assert_allclose(aperture_fluxes(result.data, stars, radius=10.0), FLUX,
                                   rtol=1e-3)

    def test_incompatible_units_fail_before_any_work(self, pair):
        n, images, _, _ = pair
        other = CCDData(images[1].data, unit="adu", wcs=images[1].wcs,
                        uncertainty=StdDevUncertainty(images[1].uncertainty.array))
        with pytest.raises(u.UnitsError, match=r"images\[1\] has unit adu, incompatible with "
                                               r"the unit electron of images\[0\]"):
            self.run(pair, [images[0], other])

    def test_an_exposure_off_the_grid_is_left_out(self, pair):
        n, images, psfs, _ = pair
        far = images[1].copy()
        far.wcs = make_wcs(n=n, crval=(160.0, 2.0))
        with pytest.warns(AstropyUserWarning, match=r"images\[1\] does not overlap the output"):
            result = self.run(pair, [images[0], far])
        assert result.meta["NCOMBINE"] == 1
        assert result.psf_quality["exposures"][1]["used"] is False
        with pytest.warns(AstropyUserWarning, match="does not overlap"), pytest.raises(
                ValueError, match="none of the images overlaps the output grid"):
            self.run(pair, [far], source_psfs=psfs[:1])


class TestErrors:
    def call(self, image, **kwargs):
        kwargs.setdefault("source_psfs", [CircularGaussianPRF(fwhm=2.5)])
        images = kwargs.pop("images", [image])
        target = kwargs.pop("target_psf", CircularGaussianPRF(fwhm=4.0))
        return coadd_psf_matched(images, target, make_wcs(n=64), (64, 64), **kwargs)

    def test_empty(self, image):
        with pytest.raises(ValueError, match="images must contain at least one image"):
            self.call(image, images=[], source_psfs=None)

    @pytest.mark.parametrize("images", [3, "a.fits"])
    def test_not_a_sequence(self, image, images):
        with pytest.raises(TypeError, match="images must be a sequence of CCDData/NDData"):
            self.call(image, images=images)

    def test_bad_item(self, image):
        with pytest.raises(TypeError, match=r"images\[0\] must be a CCDData/NDData image or a "
                                            r"FITS path, got int"):
            self.call(image, images=[3])

    def test_no_wcs(self, image):
        bare = CCDData(image.data, unit="electron")
        with pytest.raises(ValueError, match=r"images\[0\] has no 2-D WCS"):
            self.call(image, images=[bare])

    def test_not_2d(self, image):
        cube = NDData(np.zeros((2, 3, 4)), wcs=WCS(naxis=3))
        with pytest.raises(ValueError, match=r"images\[0\] must be a 2-D image"):
            self.call(image, images=[cube])

    def test_no_psf(self, image):
        with pytest.raises(ValueError, match=r"images\[0\] has no PSF: pass source_psfs="):
            self.call(image, source_psfs=None)

    def test_source_psfs_length(self, image):
        with pytest.raises(ValueError, match="source_psfs must have one entry per exposure: "
                                             "got 2 for 1"):
            self.call(image, source_psfs=[None, None])
        with pytest.raises(TypeError, match="source_psfs must be None or a sequence"):
            self.call(image, source_psfs=CircularGaussianPRF(fwhm=2.5))

    def test_varying_target(self, image):
        with pytest.raises(ValueError, match="target_psf must be a constant PSF"):
            self.call(image, target_psf=gridded_psf(FWHM_LAWS[0], 64))

    def test_bad_target(self, image):
        with pytest.raises(TypeError, match="target_psf must be a photutils PSF model"):
            self.call(image, target_psf="gaussian")

    def test_resampling(self, image):
        with pytest.raises(ValueError, match="resampling must be one of 'kaiser5', 'kaiser4', "
                                             "'lanczos5'.*, got 'bicubic'"):
            self.call(image, resampling="bicubic")

    def test_weights(self, image):
        with pytest.raises(ValueError, match="weights must be one of 'inverse-variance', "
                                             "'uniform', got 'ivar'"):
            self.call(image, weights="ivar")
        bare = CCDData(image.data, unit="electron", wcs=image.wcs)
        with pytest.raises(ValueError, match=r"images\[0\] has no uncertainty, so no "
                                             r"inverse-variance weights"):
            self.call(image, images=[bare], weights="inverse-variance")

    def test_config(self, image):
        with pytest.raises(TypeError, match="config must be a MatchConfig or None, got dict"):
            self.call(image, config={"cell_size": 64})
        with pytest.raises(ValueError, match="cell_size"):
            self.call(image, cell_size=-3)

    def test_workers(self, image):
        with pytest.raises(ValueError, match="workers must be None or an integer >= 1, got 0"):
            self.call(image, workers=0)

    def test_output(self, image):
        with pytest.raises(TypeError, match="output_wcs must be an astropy WCS or a FITS "
                                            "Header, got str"):
            coadd_psf_matched([image], CircularGaussianPRF(fwhm=4.0), "TAN", (64, 64))
        with pytest.raises(ValueError, match="shape_out is required"):
            coadd_psf_matched([image], CircularGaussianPRF(fwhm=4.0), fits.Header())


def test_the_reproject_path_is_still_there():
    # coadd keeps its behaviour: matched inputs, reprojected with reproject
    image = CCDData(np.full((40, 50), 2.0), unit="electron", wcs=make_wcs(n=50),
                    uncertainty=StdDevUncertainty(np.ones((40, 50))))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = coadd([image], make_wcs(n=50), (40, 50))
    np.testing.assert_allclose(result.data, 2.0)
