"""Tests of astropsfmatch._workflow.coadd, and of the whole co-addition workflow.

common_target_psf -> match_many (serially and on a dask LocalCluster) -> coadd.
"""

import warnings

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import (
    CCDData,
    InverseVariance,
    NDData,
    NDUncertainty,
    StdDevUncertainty,
    VarianceUncertainty,
)
from astropy.utils.exceptions import AstropyUserWarning
from astropy.wcs import WCS
from photutils.psf import CircularGaussianPRF, GriddedPSFModel, fit_fwhm

from astropsfmatch import MatchConfig, MatchResult
from astropsfmatch._workflow.coadd import coadd
from astropsfmatch._workflow.many import match_many
from astropsfmatch._workflow.target import common_target_psf

N = 256
CONFIG = MatchConfig(cell_size=64)
OVERSAMPLING = 4
HALF = 12  # stars are drawn on (2 HALF + 1)^2 cutouts
FLUX = 5000.0
# how the FWHM (pixels) of each exposure's PSF varies over its field, u = x/(N-1), v = y/(N-1)
FWHM_LAWS = [
    lambda u, v: 2.4 + 0.8 * u,
    lambda u, v: 3.0 - 0.4 * v,
    lambda u, v: 2.7 + 0.3 * (abs(2 * u - 1) + abs(2 * v - 1)),
    lambda u, v: 2.8 + 0.2 * (u + v),
]
# pixel offsets of the exposures on the sky (whole pixels: see the coadd Notes)
SHIFTS = [(0, 0), (7, -5), (-6, 4), (3, 8)]
NOISE = [1.0, 1.5, 2.0, 2.5]


def make_wcs(dx=0.0, dy=0.0, *, n=N, scale=1.0):
    """A TAN WCS of 0.22"/pixel (times scale) that FITS headers store exactly."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.cdelt = [-scale * 2.0**-14, scale * 2.0**-14]
    wcs.wcs.crpix = [n / 2 + 0.5 + dx, n / 2 + 0.5 + dy]
    return wcs


def gridded_psf(law):
    """A 3x3 GriddedPSFModel of Gaussian PRFs over the N x N field, 4x oversampled."""
    nodes = np.linspace(0, N - 1, 3)
    d = (np.arange(2 * HALF * OVERSAMPLING + 1) - HALF * OVERSAMPLING) / OVERSAMPLING
    yy, xx = np.meshgrid(d, d, indexing="ij")
    data, xypos = [], []
    for y in nodes:
        for x in nodes:
            data.append(CircularGaussianPRF(fwhm=law(x / (N - 1), y / (N - 1)))(xx, yy))
            xypos.append((x, y))
    meta = {"grid_xypos": xypos, "oversampling": OVERSAMPLING}
    return GriddedPSFModel(NDData(np.array(data), meta=meta))


def star_positions(seed=3):
    """Sky positions of the stars, as pixel positions in the output (reference) grid."""
    rng = np.random.default_rng(seed)
    return [(x + rng.uniform(-0.5, 0.5), y + rng.uniform(-0.5, 0.5))
            for y in range(34, N - 26, 24) for x in range(34, N - 26, 24)]


def make_exposures():
    """Four exposures of the same stars with different spatially varying PSFs and WCS."""
    rng = np.random.default_rng(7)
    stars = star_positions()
    images, psfs = [], []
    for law, (dx, dy), sigma in zip(FWHM_LAWS, SHIFTS, NOISE, strict=True):
        psf = gridded_psf(law)
        data = rng.normal(0.0, sigma, (N, N))
        for xr, yr in stars:
            model = psf.copy()
            model.x_0, model.y_0, model.flux = xr + dx, yr + dy, FLUX
            iy, ix = round(yr + dy), round(xr + dx)
            yy, xx = np.mgrid[iy - HALF:iy + HALF + 1, ix - HALF:ix + HALF + 1]
            data[iy - HALF:iy + HALF + 1, ix - HALF:ix + HALF + 1] += model(xx, yy)
        images.append(CCDData(data, unit="electron", wcs=make_wcs(dx, dy),
                              uncertainty=StdDevUncertainty(np.full((N, N), sigma))))
        psfs.append(psf)
    return images, psfs


def measure_fwhm(image, positions, guess):
    data = np.asarray(image.data)
    return fit_fwhm(np.nan_to_num(data), xypos=positions, fit_shape=11, fwhm=guess,
                    mask=~np.isfinite(data))


def simple_image(value=1.0, sigma=1.0, *, shape=(40, 50), wcs=None, unit="electron",
                 uncertainty=StdDevUncertainty, psf=None, mask=None):
    """A constant image with a (known) uncertainty, on the reference grid by default."""
    unc = None
    if uncertainty is not None:
        array = np.full(shape, float(sigma))
        if uncertainty is VarianceUncertainty:
            array = array**2
        elif uncertainty is InverseVariance:
            array = 1 / array**2
        unc = uncertainty(array)
    return CCDData(np.full(shape, float(value)), unit=unit, mask=mask, uncertainty=unc,
                   wcs=make_wcs(n=shape[1]) if wcs is None else wcs, psf=psf)


@pytest.fixture(scope="module")
def exposures():
    return make_exposures()


@pytest.fixture(scope="module")
def target(exposures):
    return common_target_psf(exposures[1], shapes=(N, N))


@pytest.fixture(scope="module")
def serial(exposures, target):
    images, psfs = exposures
    return match_many(images, target.psf, source_psfs=psfs, config=CONFIG, progress=False)


@pytest.fixture(scope="module")
def coadded(serial):
    return coadd(serial, make_wcs(), (N, N))


class TestWorkflow:
    def test_target_broader_than_every_input(self, target):
        def prf_moment_fwhm(fwhm):  # the pixel adds a variance of 1/12
            return np.hypot(fwhm, 2 * np.sqrt(2 * np.log(2)) / np.sqrt(12))

        assert target.limiting_exposure == 2  # FWHM 3.3 at its corners
        assert target.limiting_position in [(0.0, 0.0), (0.0, 255.0), (255.0, 0.0),
                                            (255.0, 255.0)]
        np.testing.assert_allclose(target.required_fwhm, prf_moment_fwhm(3.3), rtol=1e-3)
        assert target.fwhm >= 1.05 * target.major_fwhm.max()
        np.testing.assert_allclose(target.fwhm_range[0], prf_moment_fwhm(np.array([2.4, 3.2])),
                                   rtol=1e-3)

    def test_all_matched(self, serial):
        assert serial.succeeded == [0, 1, 2, 3]
        assert all(isinstance(r, MatchResult) for r in serial.results)

    def test_coadd_stars_have_the_target_fwhm_everywhere(self, coadded, target):
        stars = star_positions()  # 9 x 9 over the field, the outer ones 34 px from the edges
        assert len(stars) == 81
        fwhm = measure_fwhm(coadded, stars, target.fwhm)
        assert np.all(np.abs(fwhm / target.fwhm - 1) < 0.02)

    def test_inputs_had_other_fwhms(self, exposures, target):
        # the test above is not trivial: before matching the stars were up to 30% narrower
        image = exposures[0][0]
        stars = [(x, y) for x, y in star_positions() if 30 < x < 100 and 30 < y < N - 30]
        fwhm = measure_fwhm(image, stars, 3.0)
        assert np.all(fwhm < 0.85 * target.fwhm)

    def test_flux_conserved(self, coadded):
        y, x = np.mgrid[:N, :N]
        for xs, ys in star_positions()[::7]:
            if 30 < xs < N - 30 and 30 < ys < N - 30:
                inside = (x - xs) ** 2 + (y - ys) ** 2 < 10**2
                assert np.sum(coadded.data[inside]) == pytest.approx(FLUX, rel=0.01)

    def test_coverage_mask_and_psf(self, coadded, serial):
        footprint = coadded.footprint
        assert footprint.shape == (N, N)
        assert np.all(footprint[40:-40, 40:-40] == 4)
        # matched edges are NaN (no complete kernel there): fewer inputs near the borders
        assert set(np.unique(footprint)) == {0.0, 1.0, 2.0, 3.0, 4.0}
        np.testing.assert_array_equal(coadded.mask, footprint == 0)
        assert np.all(np.isnan(coadded.data[coadded.mask]))
        assert np.all(np.isfinite(coadded.data[~coadded.mask]))
        stamp = serial.results[0].matched.psf
        np.testing.assert_allclose(coadded.psf, stamp / stamp.sum(), atol=1e-12)
        assert coadded.unit == u.electron
        assert isinstance(coadded.uncertainty, StdDevUncertainty)
        assert coadded.meta["NCOMBINE"] == 4
        assert coadded.meta["CWEIGHTS"] == "inverse-variance"
        assert coadded.meta["PSFMTPSF"].startswith("CircularGaussianPRF fwhm=")

    def test_inverse_variance_variance(self, coadded, serial):
        # interior, integer shifts: the reprojection is exact, 1 / sum of the weights
        weights = [r.weights for r in serial.results]
        y, x = 120, 130
        expected = 1 / sum(w[y + sy, x + sx] for w, (sx, sy) in zip(weights, SHIFTS, strict=True))
        assert coadded.uncertainty.array[y, x] ** 2 == pytest.approx(expected, rel=1e-10)

    def test_dask_cluster_equals_serial(self, exposures, target, serial, coadded):
        distributed = pytest.importorskip("distributed")
        images, psfs = exposures
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                      dashboard_address=":0") as cluster, \
                distributed.Client(cluster) as client:
            many = match_many(images, target.psf, source_psfs=psfs, config=CONFIG,
                              client=client, progress=False)
        assert many.succeeded == [0, 1, 2, 3]
        for a, b in zip(many.results, serial.results, strict=True):
            np.testing.assert_array_equal(a.matched.data, b.matched.data)
        result = coadd(many, make_wcs(), (N, N))
        np.testing.assert_array_equal(result.data, coadded.data)
        np.testing.assert_array_equal(result.uncertainty.array, coadded.uncertainty.array)
        np.testing.assert_array_equal(result.footprint, coadded.footprint)

    def test_from_files(self, serial, coadded, tmp_path, exposures, target):
        images, psfs = exposures
        many = match_many(images, target.psf, source_psfs=psfs, config=CONFIG,
                          output_dir=tmp_path, progress=False)
        result = coadd(many.results, make_wcs(), (N, N))
        np.testing.assert_allclose(result.data, coadded.data, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(result.uncertainty.array, coadded.uncertainty.array,
                                   rtol=1e-12)

    def test_empirical_noise_of_a_matched_coadd(self, target):
        """On pure noise, the per-pixel variance of the coadd is the propagated one."""
        rng = np.random.default_rng(11)
        psf = CircularGaussianPRF(fwhm=2.5)
        images = [CCDData(rng.normal(0.0, s, (N, N)), unit="adu", wcs=make_wcs(dx, dy),
                          uncertainty=StdDevUncertainty(np.full((N, N), s)))
                  for (dx, dy), s in zip(SHIFTS, NOISE, strict=True)]
        many = match_many(images, target.psf, source_psfs=[psf] * 4, config=CONFIG,
                          progress=False)
        result = coadd(many, make_wcs(), (N, N))
        inner = (slice(40, -40), slice(40, -40))
        predicted = result.uncertainty.array[inner] ** 2
        assert np.ptp(predicted) < 1e-6 * predicted.mean()
        # the noise is correlated: ~N^2/(4 pi sigma^2) independent samples, a few % error
        assert np.var(result.data[inner]) == pytest.approx(predicted.mean(), rel=0.08)
        # matching smooths: far below the variance of the unmatched weighted mean
        assert predicted.mean() < 0.3 / sum(1 / s**2 for s in NOISE)


class TestCombination:
    def test_inverse_variance_mean(self):
        images = [simple_image(1.0, 1.0), simple_image(4.0, 2.0)]
        result = coadd(images, make_wcs(n=50), (40, 50))
        np.testing.assert_allclose(result.data, 1.6)
        np.testing.assert_allclose(result.uncertainty.array, np.sqrt(0.8))
        np.testing.assert_array_equal(result.footprint, 2.0)
        assert not result.mask.any()
        assert result.psf is None
        assert result.wcs.wcs.crpix[0] == make_wcs(n=50).wcs.crpix[0]

    def test_uniform_mean(self):
        images = [simple_image(1.0, 1.0), simple_image(4.0, 2.0)]
        result = coadd(images, make_wcs(n=50), (40, 50), weights="uniform")
        np.testing.assert_allclose(result.data, 2.5)
        np.testing.assert_allclose(result.uncertainty.array**2, (1 + 4) / 4)
        assert result.meta["CWEIGHTS"] == "uniform"

    def test_weight_arrays(self):
        images = [simple_image(1.0, 1.0), simple_image(4.0, 2.0)]
        weights = [np.full((40, 50), 3.0), np.full((40, 50), 1.0)]
        result = coadd(images, make_wcs(n=50), (40, 50), weights=weights)
        np.testing.assert_allclose(result.data, (3 * 1 + 4) / 4)
        np.testing.assert_allclose(result.uncertainty.array**2, (9 * 1 + 1 * 4) / 16)
        assert result.meta["CWEIGHTS"] == "arrays"

    def test_sum(self):
        images = [simple_image(1.0, 1.0), simple_image(4.0, 2.0)]
        result = coadd(images, make_wcs(n=50), (40, 50), combine="sum")
        np.testing.assert_allclose(result.data, 5.0)
        np.testing.assert_allclose(result.uncertainty.array**2, 5.0)
        assert result.meta["COMBINE"] == "sum"
        assert result.meta["CWEIGHTS"] == "uniform"

    def test_inverse_variance_sum(self):
        images = [simple_image(1.0, 1.0), simple_image(4.0, 2.0)]
        result = coadd(images, make_wcs(n=50), (40, 50), combine="sum",
                       weights="inverse-variance")
        np.testing.assert_allclose(result.data, 1 + 4 / 4)
        np.testing.assert_allclose(result.uncertainty.array**2, 1 + 1 / 4)

    def test_no_uncertainty(self):
        images = [simple_image(1.0, uncertainty=None), simple_image(3.0, uncertainty=None)]
        result = coadd(images, make_wcs(n=50), (40, 50))
        np.testing.assert_allclose(result.data, 2.0)
        assert result.uncertainty is None
        np.testing.assert_array_equal(result.footprint, 2.0)
        weighted = coadd(images, make_wcs(n=50), (40, 50),
                         weights=[np.ones((40, 50)), np.full((40, 50), 3.0)])
        np.testing.assert_allclose(weighted.data, 2.5)
        assert weighted.uncertainty is None
        np.testing.assert_array_equal(weighted.footprint, 2.0)

    def test_some_without_uncertainty(self):
        images = [simple_image(1.0, 1.0), simple_image(3.0, uncertainty=None)]
        with pytest.warns(AstropyUserWarning, match=r"matched\[1\] has no uncertainty: the "
                                                    r"inputs are co-added with uniform weights"):
            result = coadd(images, make_wcs(n=50), (40, 50))
        np.testing.assert_allclose(result.data, 2.0)
        assert result.uncertainty is None

    @pytest.mark.parametrize("kind", [StdDevUncertainty, VarianceUncertainty, InverseVariance])
    def test_uncertainty_kind_kept(self, kind):
        images = [simple_image(1.0, 1.0, uncertainty=kind), simple_image(4.0, 2.0,
                                                                          uncertainty=kind)]
        result = coadd(images, make_wcs(n=50), (40, 50))
        assert isinstance(result.uncertainty, kind)
        np.testing.assert_allclose(result.data, 1.6)
        variance = {StdDevUncertainty: lambda a: a**2, VarianceUncertainty: lambda a: a,
                    InverseVariance: lambda a: 1 / a}[kind](result.uncertainty.array)
        np.testing.assert_allclose(variance, 0.8)

    def test_mixed_uncertainty_kinds_give_variance(self):
        images = [simple_image(1.0, 1.0), simple_image(4.0, 2.0, uncertainty=InverseVariance)]
        result = coadd(images, make_wcs(n=50), (40, 50))
        assert isinstance(result.uncertainty, VarianceUncertainty)
        np.testing.assert_allclose(result.uncertainty.array, 0.8)

    def test_masked_pixels_and_partial_coverage(self):
        mask = np.zeros((40, 50), dtype=bool)
        mask[10, 20] = True
        first = simple_image(1.0, 1.0, mask=mask)
        first.data[30, 5] = np.nan
        # the second image is shifted by 10 pixels in x: it covers x >= 10 only
        second = simple_image(4.0, 2.0, wcs=make_wcs(-10, 0, n=50))
        result = coadd([first, second], make_wcs(n=50), (40, 50))
        assert result.data[10, 20] == pytest.approx(4.0)
        assert result.uncertainty.array[10, 20] == pytest.approx(2.0)
        assert result.footprint[10, 20] == 1
        assert np.isnan(result.data[30, 5])
        assert result.mask[30, 5]
        assert result.footprint[30, 5] == 0
        assert result.data[5, 5] == pytest.approx(1.0)
        assert result.data[5, 15] == pytest.approx(1.6)

    def test_unit_conversion(self):
        images = [simple_image(1.0, 1.0, unit="electron/s"),
                  simple_image(3600 * 4.0, 3600 * 2.0, unit="electron/h")]
        result = coadd(images, make_wcs(n=50), (40, 50))
        assert result.unit == u.electron / u.s
        np.testing.assert_allclose(result.data, 1.6)
        np.testing.assert_allclose(result.uncertainty.array**2, 0.8)

    def test_inputs_of_every_kind(self, tmp_path):
        image = simple_image(1.0, 1.0)
        path = tmp_path / "b.fits"
        simple_image(4.0, 2.0).write(path)
        nddata = NDData(np.full((40, 50), 4.0), wcs=make_wcs(n=50), unit="electron",
                        uncertainty=StdDevUncertainty(np.full((40, 50), 2.0)))
        for second in (str(path), path, nddata):
            result = coadd([image, second], make_wcs(n=50), (40, 50))
            np.testing.assert_allclose(result.data, 1.6)

    def test_header_output(self):
        header = make_wcs(n=50).to_header()
        header["NAXIS"], header["NAXIS1"], header["NAXIS2"] = 2, 50, 40
        result = coadd([simple_image(1.0, 1.0)], header)
        assert result.shape == (40, 50)
        wcs = make_wcs(n=50)
        wcs.array_shape = (40, 50)
        assert coadd([simple_image(1.0, 1.0)], wcs).shape == (40, 50)

    def test_other_reprojection(self):
        from reproject import reproject_exact

        images = [simple_image(1.0, 1.0), simple_image(4.0, 2.0)]
        result = coadd(images, make_wcs(n=50), (40, 50), reproject_function=reproject_exact)
        np.testing.assert_allclose(result.data[5:-5, 5:-5], 1.6)
        assert result.meta["REPROJ"] == "reproject_exact"

    def test_nothing_covered(self):
        far = make_wcs(n=50)
        far.wcs.crval = [10.0, -30.0]
        with pytest.warns(AstropyUserWarning, match="no output pixel is covered"):
            result = coadd([simple_image(1.0, 1.0)], far, (40, 50))
        assert result.mask.all()
        assert np.isnan(result.data).all()
        np.testing.assert_array_equal(result.footprint, 0.0)

    def test_does_not_change_input(self, serial):
        result = serial.results[1]
        before = (result.matched.data.copy(), result.matched.uncertainty.array.copy(),
                  result.weights.copy(), result.matched.mask.copy())
        coadd([result], make_wcs(), (N, N))
        np.testing.assert_array_equal(result.matched.data, before[0])
        np.testing.assert_array_equal(result.matched.uncertainty.array, before[1])
        np.testing.assert_array_equal(result.weights, before[2])
        np.testing.assert_array_equal(result.matched.mask, before[3])


class TestPsf:
    def test_given_psf(self):
        images = [simple_image(1.0, 1.0)]
        result = coadd(images, make_wcs(n=50), (40, 50), psf=CircularGaussianPRF(fwhm=3.0))
        assert result.psf.shape[0] % 2 == 1
        assert result.psf.sum() == pytest.approx(1.0)
        stamp = np.ones((3, 3))
        result = coadd(images, make_wcs(n=50), (40, 50), psf=stamp)
        np.testing.assert_allclose(result.psf, stamp / 9)

    def test_psfs_of_different_sizes_agree(self):
        small = np.zeros((3, 3))
        small[1, 1] = 1.0
        large = np.zeros((5, 5))
        large[2, 2] = 2.0
        images = [simple_image(1.0, 1.0, psf=small), simple_image(1.0, 1.0, psf=large)]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            result = coadd(images, make_wcs(n=50), (40, 50))
        assert result.psf.shape == (5, 5)
        assert result.psf[2, 2] == pytest.approx(1.0)

    def test_different_psfs(self):
        images = [simple_image(1.0, 1.0, psf=np.ones((3, 3))),
                  simple_image(1.0, 1.0, psf=np.eye(3))]
        with pytest.warns(AstropyUserWarning, match="the inputs have different PSFs"):
            coadd(images, make_wcs(n=50), (40, 50))

    def test_some_without_psf(self):
        images = [simple_image(1.0, 1.0, psf=np.ones((3, 3))), simple_image(1.0, 1.0)]
        with pytest.warns(AstropyUserWarning, match="some inputs have no psf"):
            result = coadd(images, make_wcs(n=50), (40, 50))
        np.testing.assert_allclose(result.psf, 1 / 9)

    def test_other_pixel_scale(self):
        images = [simple_image(1.0, 1.0, psf=np.ones((3, 3)))]
        with pytest.warns(AstropyUserWarning, match="the output pixel scale differs"):
            result = coadd(images, make_wcs(n=25, scale=2.0), (20, 25))
        assert result.psf is None


class _OtherUncertainty(NDUncertainty):
    @property
    def uncertainty_type(self):
        return "other"

    def _data_unit_to_uncertainty_unit(self, value):
        return value

    def _propagate_add(self, *args):  # pragma: no cover - never called
        return None

    _propagate_subtract = _propagate_multiply = _propagate_divide = _propagate_add


class TestErrors:
    def test_empty(self):
        with pytest.raises(ValueError, match="matched must contain at least one image"):
            coadd([], make_wcs(), (N, N))

    @pytest.mark.parametrize("matched", [simple_image(), "a.fits", 3])
    def test_not_a_sequence(self, matched):
        with pytest.raises(TypeError, match="matched must be a sequence of MatchResults"):
            coadd(matched, make_wcs(), (N, N))

    def test_bad_item(self):
        with pytest.raises(TypeError, match=r"matched\[1\] must be a MatchResult, a "
                                            r"CCDData/NDData image or a FITS path, got int"):
            coadd([simple_image(), 3], make_wcs(), (N, N))

    def test_missing_file(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="missing.fits"):
            coadd([str(tmp_path / "missing.fits")], make_wcs(), (N, N))

    def test_no_wcs(self):
        image = simple_image()
        image.wcs = None
        with pytest.raises(ValueError, match=r"matched\[0\] has no WCS"):
            coadd([image], make_wcs(), (N, N))

    def test_not_2d(self):
        image = NDData(np.ones((2, 3, 4)), wcs=WCS(naxis=3))
        with pytest.raises(ValueError, match=r"matched\[0\] must be a 2-D image"):
            coadd([image], make_wcs(), (N, N))

    @pytest.mark.parametrize("combine", ["median", "max", None])
    def test_combine(self, combine):
        with pytest.raises(ValueError, match="combine must be one of 'mean', 'sum'"):
            coadd([simple_image()], make_wcs(), (N, N), combine=combine)

    def test_weights_mode(self):
        with pytest.raises(ValueError, match="weights must be None, 'inverse-variance', "
                                             "'uniform' or one array per input"):
            coadd([simple_image()], make_wcs(), (N, N), weights="ivar")

    def test_weights_length(self):
        with pytest.raises(ValueError, match="weights must have one array per input: got 2 "
                                             "for 1"):
            coadd([simple_image()], make_wcs(), (N, N), weights=[np.ones((40, 50))] * 2)

    def test_weights_shape(self):
        with pytest.raises(ValueError, match=r"weights\[0\] has shape \(3, 3\), matched\[0\] "
                                             r"has shape \(40, 50\)"):
            coadd([simple_image()], make_wcs(), (N, N), weights=[np.ones((3, 3))])

    def test_negative_weights(self):
        with pytest.raises(ValueError, match=r"weights\[0\] must be >= 0"):
            coadd([simple_image()], make_wcs(), (N, N), weights=[-np.ones((40, 50))])

    def test_inverse_variance_without_uncertainty(self):
        with pytest.raises(ValueError, match=r"matched\[1\] has no uncertainty, so no "
                                             r"inverse-variance weights"):
            coadd([simple_image(), simple_image(uncertainty=None)], make_wcs(), (N, N),
                  weights="inverse-variance")

    def test_unsupported_uncertainty(self):
        image = simple_image(uncertainty=None)
        image.uncertainty = _OtherUncertainty(np.ones((40, 50)))
        with pytest.raises(TypeError, match="image.uncertainty must be StdDevUncertainty"):
            coadd([image], make_wcs(), (N, N))

    def test_incompatible_units(self):
        with pytest.raises(u.UnitsError, match=r"matched\[1\] has unit adu, incompatible with "
                                                r"the unit electron of matched\[0\]"):
            coadd([simple_image(), simple_image(unit="adu")], make_wcs(), (N, N))

    def test_output_wcs_type(self):
        with pytest.raises(TypeError, match="output_wcs must be an astropy WCS or a FITS "
                                            "Header, got str"):
            coadd([simple_image()], "RA---TAN", (N, N))

    def test_output_wcs_dimensions(self):
        with pytest.raises(ValueError, match="output_wcs must be a 2-D WCS, got 3"):
            coadd([simple_image()], WCS(naxis=3), (N, N))

    def test_shape_required(self):
        with pytest.raises(ValueError, match="shape_out is required"):
            coadd([simple_image()], make_wcs())
        with pytest.raises(ValueError, match="shape_out is required"):
            coadd([simple_image()], fits.Header())

    @pytest.mark.parametrize("shape", [(10,), (10, 0), (10.0, 10), "10x10", (True, 10)])
    def test_bad_shape(self, shape):
        with pytest.raises(ValueError, match="shape_out must be a pair"):
            coadd([simple_image()], make_wcs(), shape)

    @pytest.mark.parametrize("key", ["match_background", "input_weights", "combine_function"])
    def test_reserved_options(self, key):
        with pytest.raises(ValueError, match=f"coadd sets {key} itself"):
            coadd([simple_image()], make_wcs(), (N, N), **{key: None})

    def test_reproject_function(self):
        with pytest.raises(TypeError, match="reproject_function must be callable, got str"):
            coadd([simple_image()], make_wcs(), (N, N), reproject_function="interp")
