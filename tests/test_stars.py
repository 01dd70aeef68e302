"""Tests of astropsfmatch._workflow.stars: stars found in an image, a PSF model
estimated from them, and the check of a PSF match against the stars.

The synthetic field is drawn here with its own spatially varying
GriddedPSFModel (elliptical Gaussian ePSFs on a 3 x 3 grid), photon and read
noise, saturated stars, cosmic rays and close pairs. Widths are checked with
photutils' own ``fit_fwhm`` on rendered stamps, independently of the module's
fitter.
"""

import os
import warnings

import astropy
import numpy as np
import pytest
from astropy.io import fits
from astropy.modeling.models import Gaussian2D
from astropy.nddata import CCDData, NDData, StdDevUncertainty
from astropy.table import Table
from astropy.utils.exceptions import AstropyUserWarning
from astropy.utils.masked import Masked
from photutils.psf import (
    CircularGaussianPRF,
    GaussianPRF,
    GriddedPSFModel,
    ImagePSF,
    PSFPhotometry,
    fit_fwhm,
)
from scipy import ndimage

from astropsfmatch._workflow.stars import (
    STAR_FLAGS,
    PSFEstimate,
    StarCheck,
    estimate_psf,
    find_stars,
    star_check,
)

M13_DIR = os.path.join(os.path.dirname(astropy.__file__), "io", "fits", "hdu", "compressed",
                       "tests", "data")
SIZE = 512
OVERSAMPLING = 4
HALF = 12          # half-width (detector pixels) of the true ePSFs
SATURATION = 40000.0
SKY = 300.0        # electrons (gain 1), subtracted again from the image
READ_NOISE = 5.0


# ----------------------------------------------------------------------------
# A synthetic field with a known, spatially varying PSF
# ----------------------------------------------------------------------------

def true_psf_shape(x, y):
    """x and y FWHMs (pixels) and angle (degrees) of the true PSF at (x, y)."""
    u, v = x / (SIZE - 1), y / (SIZE - 1)
    return 2.8 + 0.9 * u + 0.3 * v, 2.8 + 0.3 * u + 0.7 * v, 25.0 * (u - v)


def true_psf():
    """The field's PSF: 3 x 3 elliptical Gaussian ePSFs, oversampled by 4."""
    n = 2 * HALF * OVERSAMPLING + 1
    offsets = (np.arange(n) - n // 2) / OVERSAMPLING
    yy, xx = np.meshgrid(offsets, offsets, indexing="ij")
    nodes = np.linspace(0.0, SIZE - 1.0, 3)
    epsfs, positions = [], []
    for y in nodes:
        for x in nodes:
            x_fwhm, y_fwhm, theta = true_psf_shape(x, y)
            epsf = GaussianPRF(x_fwhm=x_fwhm, y_fwhm=y_fwhm, theta=theta)(xx, yy)
            epsfs.append(epsf * OVERSAMPLING ** 2 / epsf.sum())
            positions.append((float(x), float(y)))
    meta = {"grid_xypos": positions, "oversampling": OVERSAMPLING}
    return GriddedPSFModel(NDData(np.array(epsfs), meta=meta))


def render(psf, x, y, flux, shape):
    """Noise-free image of point sources drawn with ``psf`` at their positions."""
    image = np.zeros(shape)
    offsets = np.arange(-HALF, HALF + 1)
    for x0, y0, f in zip(x, y, flux, strict=True):
        xs = offsets + int(round(x0))
        ys = offsets + int(round(y0))
        xs = xs[(xs >= 0) & (xs < shape[1])]
        ys = ys[(ys >= 0) & (ys < shape[0])]
        if xs.size and ys.size:
            gx, gy = np.meshgrid(xs, ys)
            image[ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1] += psf.evaluate(gx, gy, f, x0, y0)
    return image


def stamp(psf, x0, y0, half=10):
    """Unit-flux star of ``psf`` at (x0, y0) on its pixels, and the pixel grids."""
    gx, gy = np.meshgrid(np.arange(-half, half + 1) + round(x0),
                         np.arange(-half, half + 1) + round(y0))
    model = psf.copy()
    model.x_0, model.y_0, model.flux = x0, y0, 1.0
    return model(gx, gy), gx, gy


def photutils_fwhm(psf, x0, y0):
    """FWHM of ``psf`` rendered at (x0, y0), measured with photutils' fit_fwhm."""
    data, gx, gy = stamp(psf, x0, y0)
    return float(fit_fwhm(data, xypos=[(x0 - gx[0, 0], y0 - gy[0, 0])], fwhm=3.3,
                          fit_shape=11)[0])


@pytest.fixture(scope="module")
def field():
    rng = np.random.default_rng(20260211)
    psf = true_psf()
    n = 800
    x = rng.uniform(-5.0, SIZE + 5.0, n)
    y = rng.uniform(-5.0, SIZE + 5.0, n)
    flux = 10.0 ** rng.uniform(3.3, 5.0, n)
    # close pairs, 4 to 7 pixels apart (1.2 to 2 FWHMs)
    pair_x, pair_y = rng.uniform(40, SIZE - 40, 6), rng.uniform(40, SIZE - 40, 6)
    angle, separation = rng.uniform(0, 2 * np.pi, 6), rng.uniform(4.0, 7.0, 6)
    pairs = (np.concatenate([pair_x, pair_x + separation * np.cos(angle)]),
             np.concatenate([pair_y, pair_y + separation * np.sin(angle)]))
    # saturated stars
    saturated = (rng.uniform(40, SIZE - 40, 4), rng.uniform(40, SIZE - 40, 4))
    all_x = np.concatenate([x, pairs[0], saturated[0]])
    all_y = np.concatenate([y, pairs[1], saturated[1]])
    all_flux = np.concatenate([flux, np.full(6, 3e4), np.full(6, 2e4), np.full(4, 2e6)])
    signal = render(psf, all_x, all_y, all_flux, (SIZE, SIZE))
    image = rng.poisson(signal + SKY).astype(np.float64) + rng.normal(0.0, READ_NOISE,
                                                                       signal.shape)
    # cosmic rays: two-pixel hits
    cosmic = (rng.integers(20, SIZE - 20, 8), rng.integers(20, SIZE - 20, 8))
    for cx, cy in zip(*cosmic, strict=True):
        image[cy, cx] += 5000.0
        image[cy, cx + 1] += 2000.0
    image = np.minimum(image, SATURATION)
    return {"image": image, "psf": psf, "pairs": pairs, "saturated": saturated,
            "cosmic": cosmic, "x": all_x, "y": all_y}


@pytest.fixture(scope="module")
def field_stars(field):
    return find_stars(field["image"], return_all=True)


@pytest.fixture(scope="module")
def field_estimate(field):
    return estimate_psf(field["image"])


def nearest(table, x, y):
    """Distance from each (x, y) to the nearest star of the table."""
    tx, ty = np.asarray(table["x"]), np.asarray(table["y"])
    return np.hypot(tx[:, None] - np.asarray(x), ty[:, None] - np.asarray(y)).min(axis=0)


def small_field(n_side=5, fwhm=3.0, flux=2e4, size=150, seed=0, spacing=30):
    """A background of 100 with noise 5 and a square pattern of Gaussian stars."""
    yy, xx = np.mgrid[:size, :size]
    image = np.random.default_rng(seed).normal(100.0, 5.0, xx.shape)
    positions = []
    for i in range(n_side):
        for j in range(n_side):
            x0, y0 = 15 + spacing * i + 0.3, 15 + spacing * j - 0.2
            image += CircularGaussianPRF(flux=flux, x_0=x0, y_0=y0, fwhm=fwhm)(xx, yy)
            positions.append((x0, y0))
    return image, np.array(positions)


# ----------------------------------------------------------------------------
# find_stars
# ----------------------------------------------------------------------------

class TestFindStars:
    def test_columns_and_good_stars(self, field_stars):
        good = field_stars[field_stars["flags"] == 0]
        assert len(good) > 200
        for name in ("id", "x", "y", "flux", "peak", "fwhm", "ellipticity", "sharpness",
                     "roundness1", "roundness2", "snr", "nearest", "flags"):
            assert name in field_stars.colnames
        assert np.all(np.isfinite(good["fwhm"])) and np.all(good["snr"] >= 20)
        assert 2.8 < np.median(good["fwhm"]) < 3.8
        assert np.all(good["nearest"] >= field_stars.meta["isolation"])
        # brightest first, and the default output is exactly the good stars
        assert np.all(np.diff(good["flux"]) <= 0)

    def test_meta(self, field_stars):
        meta = field_stars.meta
        assert meta["saturation"] == SATURATION  # the plateau at the image maximum
        assert meta["isolation"] == pytest.approx(2.5 * meta["fwhm"])
        assert 3.0 < meta["fwhm"] < 3.6
        assert meta["threshold"] == 5.0 and meta["n_detected"] == len(field_stars)

    def test_rejects_saturated_stars(self, field, field_stars):
        good = field_stars[field_stars["flags"] == 0]
        assert np.all(nearest(good, *field["saturated"]) > 5.0)
        flagged = field_stars[(field_stars["flags"] & STAR_FLAGS["saturated"]) > 0]
        assert np.all(nearest(flagged, *field["saturated"]) < 3.0)

    def test_rejects_cosmic_rays(self, field, field_stars):
        good = field_stars[field_stars["flags"] == 0]
        assert np.all(nearest(good, *field["cosmic"]) > 3.0)

    def test_rejects_close_pairs(self, field, field_stars):
        good = field_stars[field_stars["flags"] == 0]
        assert np.all(nearest(good, *field["pairs"]) > 3.0)

    def test_default_returns_the_good_stars(self, field):
        stars = find_stars(field["image"], fwhm=3.3, isolation=10.0, max_stars=50)
        assert len(stars) == 50 and np.all(stars["flags"] == 0)
        np.testing.assert_array_equal(stars["id"], np.arange(1, 51))

    def test_same_fwhm_as_photutils_fit_fwhm(self):
        # on a sky-subtracted image the local background is about zero, and the fit is
        # fit_fwhm's in the same box (11 pixels for 3.2 px)
        image, positions = small_field(fwhm=3.2)
        image = image - 100.0
        stars = find_stars(image, fwhm=3.2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyUserWarning)
            reference = fit_fwhm(image, xypos=np.column_stack([stars["x"], stars["y"]]),
                                 fwhm=3.2, fit_shape=11)
        np.testing.assert_allclose(stars["fwhm"], reference, rtol=3e-3)

    def test_explicit_saturation_and_mask(self):
        image, positions = small_field()
        mask = np.zeros(image.shape, dtype=bool)
        mask[75, 75] = True  # in the core of the star at (75.3, 74.8)
        stars = find_stars(image, saturation=600.0, mask=mask, return_all=True)
        bright = stars[stars["peak"] + 100 > 600]
        assert len(bright) and np.all(bright["flags"] & STAR_FLAGS["saturated"])
        masked = stars[np.hypot(stars["x"] - 75.3, stars["y"] - 74.8) < 2]
        assert masked["flags"][0] & STAR_FLAGS["masked"]

    def test_masked_and_nddata_inputs(self):
        image, positions = small_field()
        mask = np.zeros(image.shape, dtype=bool)
        mask[:, :8] = True
        reference = find_stars(image, mask=mask)
        for variant in (np.ma.MaskedArray(image, mask=mask), Masked(image, mask=mask),
                        NDData(image, mask=mask),
                        CCDData(image, unit="adu", mask=mask,
                                uncertainty=StdDevUncertainty(np.full(image.shape, 5.0)))):
            stars = find_stars(variant)
            np.testing.assert_allclose(stars["fwhm"], reference["fwhm"])

    def test_no_star(self):
        noise = np.random.default_rng(3).normal(100.0, 5.0, (64, 64))
        stars = find_stars(noise)
        assert len(stars) == 0 and "fwhm" in stars.colnames

    @pytest.mark.parametrize(("kwargs", "error", "match"), [
        ({"fwhm": -1.0}, ValueError, r"fwhm must be a positive number or None, got -1\.0"),
        ({"fwhm": "3"}, TypeError, r"fwhm must be a positive number or None, got '3'"),
        ({"fwhm": 200.0}, ValueError, r"fwhm must be from 0\.5 to 100 pixels"),
        ({"threshold": 0.0}, ValueError, r"threshold must be a positive number, got 0\.0"),
        ({"threshold": None}, TypeError, r"threshold must be a positive number, got None"),
        ({"isolation": -2}, ValueError, r"isolation must be a positive number or None"),
        ({"saturation": "high"}, TypeError, r"saturation must be a number .* got 'high'"),
        ({"saturation": np.inf}, ValueError, r"saturation must be a finite number or None"),
        ({"max_stars": 0}, ValueError, r"max_stars must be an integer >= 1, got 0"),
        ({"max_stars": 2.5}, TypeError, r"max_stars must be an integer >= 1, got 2\.5"),
        ({"min_snr": -1.0}, ValueError, r"min_snr must be a positive number, got -1\.0"),
    ])
    def test_invalid_options(self, kwargs, error, match):
        with pytest.raises(error, match=match):
            find_stars(np.zeros((32, 32)), **kwargs)

    @pytest.mark.parametrize(("image", "kwargs", "error", "match"), [
        (np.zeros((4, 32, 32)), {}, ValueError, r"image must be a 2-D image, got an array "
                                                r"of shape \(4, 32, 32\)"),
        (np.zeros((10, 40)), {}, ValueError, r"image must be at least 16 x 16 pixels, got "
                                             r"shape \(10, 40\)"),
        ([[1.0, 2.0], [3.0]], {}, TypeError, r"image must be a 2-D array of numbers, an "
                                             r"NDData or a masked array, got list"),
        (np.full((32, 32), "a"), {}, TypeError, r"image must hold real numbers .* dtype <U1"),
        (np.zeros((32, 32), complex), {}, TypeError, r"image must hold real numbers"),
        (np.full((32, 32), np.nan), {}, ValueError, r"image has no valid pixel"),
        (np.zeros((32, 32)), {"mask": np.zeros((8, 8), bool)}, ValueError,
         r"mask must have the shape of image \(32, 32\), got \(8, 8\)"),
        (np.zeros((32, 32)), {"mask": np.zeros((32, 32))}, TypeError,
         r"mask must be a boolean array, got dtype float64"),
        (NDData(np.zeros((32, 32)), mask=np.zeros((8, 8), bool)), {}, ValueError,
         r"the mask of image must have the shape of image"),
    ])
    def test_invalid_images(self, image, kwargs, error, match):
        with pytest.raises(error, match=match):
            find_stars(image, **kwargs)


# ----------------------------------------------------------------------------
# estimate_psf
# ----------------------------------------------------------------------------

class TestEstimatePSF:
    def test_result(self, field_estimate):
        estimate = field_estimate
        assert isinstance(estimate, PSFEstimate) and estimate.converged
        assert isinstance(estimate.psf, GriddedPSFModel)
        assert estimate.grid_shape == (3, 3) and estimate.n_stars.shape == (3, 3)
        assert estimate.n_stars.min() >= 10 and estimate.n_stars.sum() == len(estimate.stars)
        assert abs(estimate.deviation) < 0.02
        assert estimate.model_fwhm == pytest.approx(estimate.star_fwhm, rel=0.02)
        np.testing.assert_allclose(estimate.region_model_fwhm, estimate.region_star_fwhm,
                                   rtol=0.04)
        assert estimate.message.startswith(f"3x3 GriddedPSFModel from {len(estimate.stars)} "
                                           "stars (")
        assert "per region), oversampling 2, FWHM" in estimate.message
        assert repr(estimate) == f"<PSFEstimate: {estimate.message}>"
        for name in ("x_psf", "y_psf", "flux_psf", "star_fwhm", "model_fwhm", "region"):
            assert name in estimate.stars.colnames

    def test_photutils_model(self, field_estimate):
        psf = field_estimate.psf
        meta = psf.meta
        assert len(meta["grid_xypos"]) == 9 and meta["oversampling"] == 2
        xs = sorted({p[0] for p in meta["grid_xypos"]})
        assert xs == [0.0, (SIZE - 1) / 2.0, SIZE - 1.0]  # the nodes span the image
        assert psf.data.shape[1] % 2 == 1 and np.all(np.isfinite(psf.data))

    def test_unit_flux_and_centred(self, field_estimate):
        psf = field_estimate.psf
        os_ = int(psf.oversampling[0])
        np.testing.assert_allclose(psf.data.sum(axis=(1, 2)), os_ ** 2, rtol=1e-9)
        rng = np.random.default_rng(1)
        for x0, y0 in rng.uniform(20, SIZE - 20, (5, 2)):
            data, gx, gy = stamp(psf, x0, y0)
            assert data.sum() == pytest.approx(1.0, abs=2e-3)
            # centroid and Gaussian centre of the star on (x0, y0)
            core = np.hypot(gx - x0, gy - y0) < 5.0
            cx = (data * gx)[core].sum() / data[core].sum()
            cy = (data * gy)[core].sum() / data[core].sum()
            assert abs(cx - x0) < 0.05 and abs(cy - y0) < 0.05
        n = psf.data.shape[1]
        u = (np.arange(n) - (n - 1) / 2) / os_
        for epsf in psf.data:
            window = np.hypot(u[None, :], u[:, None]) < 4.0
            assert abs((epsf * u[None, :])[window].sum() / epsf[window].sum()) < 0.05
            assert abs((epsf * u[:, None])[window].sum() / epsf[window].sum()) < 0.05

    def test_held_out_positions(self, field, field_estimate):
        # positions at least 12 px from every star of the image (none was used there)
        rng = np.random.default_rng(7)
        candidates = rng.uniform(8, SIZE - 8, (4000, 2))
        far = np.hypot(candidates[:, :1] - field["x"], candidates[:, 1:] - field["y"]).min(
            axis=1) > 12.0
        held_out = candidates[far][:40]
        assert len(held_out) == 40
        truth, model = field["psf"], field_estimate.psf
        ratios, errors = [], []
        for x0, y0 in held_out:
            ratios.append(photutils_fwhm(model, x0, y0) / photutils_fwhm(truth, x0, y0))
            a, _, _ = stamp(truth, x0, y0)
            b, _, _ = stamp(model, x0, y0)
            errors.append(np.abs(b - a).max() / a.max())
        ratios, errors = np.array(ratios), np.array(errors)
        assert np.all(np.abs(ratios - 1.0) < 0.02)
        assert abs(np.median(ratios) - 1.0) < 0.01
        assert np.median(errors) < 0.02 and errors.max() < 0.05

    def test_photometry_with_the_model(self, field, field_estimate):
        # photutils' PSF photometry with the model gives back the flux and position
        # of noise-free true stars
        x0 = np.array([100.3, 256.0, 450.8])
        y0 = np.array([400.6, 256.5, 60.2])
        image = render(field["psf"], x0, y0, np.full(3, 1000.0), (SIZE, SIZE))
        photometry = PSFPhotometry(field_estimate.psf, (11, 11))
        init = Table({"x": np.round(x0), "y": np.round(y0), "flux": np.full(3, 800.0)})
        result = photometry(image, init_params=init)
        np.testing.assert_allclose(result["flux_fit"], 1000.0, rtol=0.025)
        np.testing.assert_allclose(result["x_fit"], x0, atol=0.03)
        np.testing.assert_allclose(result["y_fit"], y0, atol=0.03)
        assert np.all(result["flags"] == 0)

    def test_few_stars_give_a_constant_psf(self):
        image, _ = small_field(n_side=3, spacing=50)
        estimate = estimate_psf(image)
        assert isinstance(estimate.psf, ImagePSF) and estimate.grid_shape == (1, 1)
        assert estimate.converged and len(estimate.stars) == 9
        assert estimate.n_stars.tolist() == [[9]]
        assert estimate.message.startswith("constant ImagePSF from 9 stars (too few for a "
                                           "2x2 grid at 8 per region)")
        assert estimate.model_fwhm == pytest.approx(3.0, rel=0.01)
        assert estimate.psf.data.sum() / 4 == pytest.approx(1.0)

    def test_no_star_raises(self):
        noise = np.random.default_rng(3).normal(100.0, 5.0, (64, 64))
        with pytest.raises(ValueError, match=r"estimate_psf needs at least min_stars=5 stars, "
                                             r"found 0 \(of 0 detections at threshold=5 sigma"):
            estimate_psf(noise)

    def test_too_few_stars_raises(self):
        image, _ = small_field(n_side=2, spacing=60)
        with pytest.raises(ValueError, match=r"needs at least min_stars=5 stars, found 4 "
                                             r"\(of 4 detections .* isolation=7\.\d px, "
                                             r"saturation=none, FWHM 3\.0\d px; rejected: "
                                             r"none\)"):
            estimate_psf(image)

    def test_grid_asked_for_and_stars_given(self, field, field_estimate):
        stars = field_estimate.stars[:120]
        estimate = estimate_psf(field["image"], stars=stars, grid=(2, 2))
        assert estimate.grid_shape == (2, 2) and len(estimate.stars) == 120
        assert isinstance(estimate.psf, GriddedPSFModel)
        assert len(estimate.psf.meta["grid_xypos"]) == 4

    def test_not_converged_warns(self):
        image, _ = small_field(n_side=3, spacing=50)
        with pytest.warns(AstropyUserWarning, match=r"estimate_psf: constant ImagePSF .*; did "
                                                    r"not converge: the model FWHM differs"):
            estimate = estimate_psf(image, tolerance=1e-7)
        assert not estimate.converged and "did not converge" in estimate.message

    def test_a_psf_that_no_model_follows_is_reported(self):
        # 25 stars whose FWHM grows from 2.5 to 4.5 px across the image: a constant PSF
        # does not follow them, and neither does the 2 x 2 grid tried next (bilinear
        # interpolation between so different ePSFs is not a PSF of intermediate width)
        yy, xx = np.mgrid[:150, :150]
        rng = np.random.default_rng(9)
        image = rng.normal(100.0, 5.0, xx.shape)
        for i in range(5):
            for j in range(5):
                x0, y0 = 15 + 30 * i + rng.uniform(-0.5, 0.5), 15 + 30 * j + rng.uniform(-0.5,
                                                                                      0.5)
                image += CircularGaussianPRF(flux=3e4, x_0=x0, y_0=y0,
                                             fwhm=2.5 + 2.0 * x0 / 150)(xx, yy)
        with pytest.warns(AstropyUserWarning, match=r"2x2 GriddedPSFModel from 25 stars .*; a "
                                                    r"constant PSF did not reproduce the stars' "
                                                    r"FWHMs either; did not converge"):
            estimate = estimate_psf(image)
        assert not estimate.converged and estimate.grid_shape == (2, 2)

    def test_uncertainty_is_used(self):
        image, _ = small_field(n_side=3, spacing=50)
        ccd = CCDData(image, unit="adu",
                      uncertainty=StdDevUncertainty(np.sqrt(25.0 + np.clip(image - 100, 0,
                                                                           None))))
        estimate = estimate_psf(ccd)
        assert estimate.converged and estimate.model_fwhm == pytest.approx(3.0, rel=0.01)

    @pytest.mark.parametrize(("kwargs", "error", "match"), [
        ({"grid": (1, 3)}, ValueError, r"grid must be \(1, 1\) \(a constant PSF\) or have at "
                                       r"least 2 nodes along both axes .* got \(1, 3\)"),
        ({"grid": 3}, TypeError, r"grid must be None or a pair \(ny, nx\) of integers, got 3"),
        ({"grid": (0, 2)}, ValueError, r"grid\[0\] must be an integer from 1 to 10, got 0"),
        ({"grid": (2, 2.0)}, TypeError, r"grid\[1\] must be an integer from 1 to 10"),
        ({"oversampling": 0}, ValueError, r"oversampling must be an integer from 1 to 8 or "
                                          r"None, got 0"),
        ({"oversampling": 2.0}, TypeError, r"oversampling must be an integer"),
        ({"size": 10}, ValueError, r"size must be an odd integer >= 5 \(detector pixels\), "
                                   r"got 10"),
        ({"size": 3}, ValueError, r"size must be an integer >= 5 or None, got 3"),
        ({"min_stars": 0}, ValueError, r"min_stars must be an integer >= 1, got 0"),
        ({"stars_per_region": 0}, ValueError, r"stars_per_region must be an integer >= 1"),
        ({"tolerance": 0}, ValueError, r"tolerance must be a positive number, got 0"),
        ({"maxiters": 0}, ValueError, r"maxiters must be an integer >= 1, got 0"),
        ({"fwhm": 0.1}, ValueError, r"fwhm must be from 0\.5 to 100 pixels"),
        ({"stars": [1, 2]}, TypeError, r"stars must be a table with 'x' and 'y' columns"),
        ({"stars": Table({"a": [1.0]})}, ValueError, r"stars must have 'x' and 'y' columns "
                                                    r".* got columns \['a'\]"),
        ({"stars": Table({"x": [1.0], "y": [np.nan]})}, ValueError,
         r"stars has non-finite positions in columns 'x', 'y'"),
    ])
    def test_invalid_options(self, kwargs, error, match):
        with pytest.raises(error, match=match):
            estimate_psf(np.zeros((32, 32)), **kwargs)


# ----------------------------------------------------------------------------
# M13 (DSS, big-endian int16, and its Rice-compressed twin)
# ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def m13():
    data = fits.getdata(os.path.join(M13_DIR, "m13.fits"))
    assert data.dtype.byteorder == ">"
    return data


@pytest.fixture(scope="module")
def m13_estimate(m13):
    return estimate_psf(m13)


class TestM13:
    def test_converges(self, m13_estimate):
        estimate = m13_estimate
        assert estimate.converged
        assert len(estimate.stars) >= 40
        assert 3.0 < estimate.star_fwhm < 3.5
        assert estimate.model_fwhm == pytest.approx(estimate.star_fwhm, rel=0.03)
        assert abs(estimate.deviation) < 0.03

    def test_rice_twin_gives_the_same_psf(self, m13_estimate):
        ccd = CCDData.read(os.path.join(M13_DIR, "m13_rice.fits"), hdu=1, unit="adu")
        estimate = estimate_psf(ccd)
        assert estimate.message == m13_estimate.message
        np.testing.assert_allclose(estimate.psf.data, m13_estimate.psf.data, atol=1e-12)

    def test_matching_to_a_gaussian(self, m13, m13_estimate):
        try:
            import photutils.psf_matching as psf_matching
        except ImportError:  # photutils < 3.0
            import photutils.psf.matching as psf_matching

        # make_kernel since photutils 3.0, create_matching_kernel (deprecated there) before
        make_kernel = getattr(psf_matching, "make_kernel", None) or \
            psf_matching.create_matching_kernel

        size = 31
        source, _, _ = stamp(m13_estimate.psf, 150.0, 150.0, half=size // 2)
        yy, xx = np.mgrid[:size, :size]
        target = CircularGaussianPRF(fwhm=5.0, x_0=size // 2, y_0=size // 2)(xx, yy)
        kernel = make_kernel(source, target,
                             window=psf_matching.SplitCosineBellWindow(alpha=0.3, beta=0.3))
        matched = ndimage.convolve(m13.astype(np.float64), kernel, mode="nearest")
        check = star_check(m13, matched, stars=m13_estimate.stars, target_fwhm=5.0,
                           source_psf=m13_estimate.psf)
        assert check.n_stars >= 30
        assert abs(check.after_deviation) < 0.03
        assert abs(check.model_deviation) < 0.03
        # and the isolated stars found in the matched image measure 5 px
        found = find_stars(matched, fwhm=5.0, isolation=15.0)
        assert len(found) >= 5
        assert np.median(found["fwhm"]) == pytest.approx(5.0, rel=0.03)


# ----------------------------------------------------------------------------
# star_check
# ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pair():
    image, positions = small_field(n_side=6, fwhm=3.0, flux=3e4, size=190, seed=5)
    matched = ndimage.gaussian_filter(image, 4.0 / 2.3548)  # FWHM 3 -> 5 pixels
    matched[:12] = np.nan  # NaN edges, as a matched image has
    return image, matched, positions


class TestStarCheck:
    def test_before_after_and_model(self, pair):
        image, matched, _ = pair
        check = star_check(image, matched, target_fwhm=5.0,
                           source_psf=CircularGaussianPRF(fwhm=2.5))
        assert isinstance(check, StarCheck)
        assert check.n_stars == 30  # the 6 stars of the NaN rows are not measured after
        assert np.count_nonzero(np.isnan(check.fwhm_after)) == 6
        assert check.median_before == pytest.approx(3.0, rel=0.005)
        assert check.median_after == pytest.approx(5.0, rel=0.01)
        assert abs(check.after_deviation) < 0.01
        assert check.model_deviation == pytest.approx(2.5 / 3.0 - 1.0, abs=0.01)
        np.testing.assert_allclose(check.source_model_fwhm, 2.5, rtol=2e-3)
        assert check.target_fwhm == 5.0
        assert check.summary().startswith("30 stars: FWHM 3.00 px before, 5.0")
        assert "source PSF model 2.50 px (-16.7% vs the stars)" in check.summary()
        assert repr(check) == f"<StarCheck: {check.summary()}>"

    def test_right_model_and_no_target(self, pair):
        image, matched, positions = pair
        stars = Table({"x": positions[:, 0], "y": positions[:, 1]})
        check = star_check(image, matched, stars=stars, source_psf=CircularGaussianPRF(fwhm=3.0))
        assert len(check.x) == 36 and check.target_fwhm is None
        assert abs(check.model_deviation) < 0.005
        assert np.isnan(check.after_deviation)
        assert check.median_after == pytest.approx(5.0, rel=0.01)
        assert "target" not in check.summary()

    def test_gridded_model_and_mask(self, field, field_estimate):
        image = field["image"]
        mask = np.zeros(image.shape, dtype=bool)
        mask[:, :SIZE // 2] = True
        check = star_check(image, image, stars=field_estimate.stars, mask=mask,
                           source_psf=field["psf"], target_fwhm=3.3)
        assert 0 < check.n_stars < len(field_estimate.stars)
        assert np.all(np.isnan(check.fwhm_before[check.x < SIZE / 2 - 12]))
        assert abs(check.model_deviation) < 0.01
        # the same image: the same widths (up to the background boxes, chosen from the
        # stars' FWHM before and from the target after)
        np.testing.assert_allclose(check.fwhm_after[check.valid],
                                   check.fwhm_before[check.valid], rtol=0.03)
        assert check.median_after == pytest.approx(check.median_before, rel=0.003)
        no_model = star_check(image, image, stars=field_estimate.stars[:20])
        assert no_model.source_model_fwhm is None and np.isnan(no_model.model_deviation)

    @pytest.mark.parametrize(("kwargs", "error", "match"), [
        ({"matched": np.zeros((40, 40))}, ValueError,
         r"matched must have the shape of image \(64, 64\), got \(40, 40\)"),
        ({"source_psf": np.ones((5, 5))}, TypeError,
         r"source_psf must be a photutils PSF model \(ImagePSF, GriddedPSFModel, "
         r"CircularGaussianPRF, \.\.\.\), got ndarray"),
        ({"source_psf": Gaussian2D()}, TypeError,
         r"source_psf must be a 2-D photutils PSF model with 'flux', 'x_0' and 'y_0' "
         r"parameters, got Gaussian2D"),
        ({"target_fwhm": -1.0}, ValueError, r"target_fwhm must be a positive number or None"),
        ({"stars": Table({"x": [], "y": []})}, ValueError,
         r"stars is empty: star_check needs at least one star"),
        ({}, ValueError, r"star_check found no star in image"),
    ])
    def test_invalid(self, kwargs, error, match):
        noise = np.random.default_rng(3).normal(100.0, 5.0, (64, 64))
        matched = kwargs.pop("matched", noise)
        with pytest.raises(error, match=match):
            star_check(noise, matched, **kwargs)


# ----------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------

class TestInputs:
    def test_inputs_are_not_modified(self):
        image, positions = small_field(n_side=3, spacing=50)
        image[5, 5] = np.nan
        mask = np.zeros(image.shape, dtype=bool)
        mask[100:110, 3] = True
        ccd = CCDData(image.copy(), unit="adu", mask=mask.copy())
        stars = Table({"x": positions[:, 0], "y": positions[:, 1]})
        source_psf = CircularGaussianPRF(fwhm=3.0, x_0=1.0, y_0=2.0, flux=3.0)
        copies = (image.copy(), mask.copy(), ccd.data.copy(), ccd.mask.copy(),
                  Table(stars, copy=True))
        find_stars(image, mask=mask)
        estimate = estimate_psf(ccd)
        psf_data = estimate.psf.data.copy()
        star_check(image, ccd, stars=stars, source_psf=source_psf, mask=mask)
        star_check(image, image, source_psf=estimate.psf)
        np.testing.assert_array_equal(image, copies[0])
        np.testing.assert_array_equal(mask, copies[1])
        np.testing.assert_array_equal(ccd.data, copies[2])
        np.testing.assert_array_equal(ccd.mask, copies[3])
        assert stars.colnames == ["x", "y"]
        np.testing.assert_array_equal(stars["x"], copies[4]["x"])
        assert (source_psf.x_0.value, source_psf.y_0.value, source_psf.flux.value) == \
            (1.0, 2.0, 3.0)
        np.testing.assert_array_equal(estimate.psf.data, psf_data)
        assert (estimate.psf.x_0.value, estimate.psf.flux.value) == (0.0, 1.0)

    def test_big_endian_int16(self):
        image, _ = small_field(n_side=3, spacing=50)
        big = np.round(image).astype(">i2")
        native = np.round(image).astype(np.float64)
        a, b = find_stars(big), find_stars(native)
        np.testing.assert_array_equal(a["fwhm"], b["fwhm"])
        e1, e2 = estimate_psf(big), estimate_psf(native)
        np.testing.assert_array_equal(e1.psf.data, e2.psf.data)
        assert big.dtype.byteorder == ">"
