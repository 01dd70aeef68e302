"""ModelPsfMatcher.match / match_psf end to end: the matched CCDData."""

import os
import warnings

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import (
    CCDData,
    InverseVariance,
    NDData,
    StdDevUncertainty,
    UnknownUncertainty,
    VarianceUncertainty,
)
from astropy.utils.exceptions import AstropyUserWarning
from astropy.wcs import WCS
from naive import naive_spatially_varying_convolution
from photutils.psf import CircularGaussianPRF, fit_fwhm
from psf_models import REFERENCE_CONFIG, gaussian_stamp, varying_gaussian_grid
from scipy.ndimage import binary_dilation

from astropsfmatch import MatchResult, ModelPsfMatcher, match_psf

TARGET_FWHM = 2.3548 * 3.2


def simple_wcs(shape):
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crpix = [shape[1] / 2, shape[0] / 2]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    return wcs


def make_ccd(shape=(200, 200), *, uncertainty="std", seed=11, dtype=np.float64):
    rng = np.random.default_rng(seed)
    data = rng.normal(100.0, 5.0, size=shape).astype(dtype)
    sigma = np.full(shape, 5.0, dtype=dtype)
    unc = {"std": StdDevUncertainty(sigma), "var": VarianceUncertainty(sigma**2),
           "ivar": InverseVariance(1 / sigma**2), None: None}[uncertainty]
    mask = np.zeros(shape, dtype=bool)
    mask[50, 60] = True
    meta = fits.Header({"OBJECT": "field", "EXPTIME": 30.0})
    return CCDData(data, unit="electron", uncertainty=unc, mask=mask, wcs=simple_wcs(shape),
                   meta=meta)


@pytest.fixture(scope="module")
def varying_psf():
    return varying_gaussian_grid((200, 200), sigma_range=(1.8, 2.2))


@pytest.fixture(scope="module")
def small_match(varying_psf):
    ccd = make_ccd()
    result = ModelPsfMatcher(REFERENCE_CONFIG, cell_size=64).match(ccd,
                                                                   CircularGaussianPRF(fwhm=TARGET_FWHM),
                                                 source_psf=varying_psf)
    return ccd, result


class TestExactConvolution:
    def test_equals_brute_force(self, small_match):
        ccd, result = small_match
        data = np.where(ccd.mask, 0.0, ccd.data)
        expected, expected_var = naive_spatially_varying_convolution(
            data, result.kernel, variance=ccd.uncertainty.array**2)
        out = result.matched
        good = ~out.mask
        assert good.sum() > 0.8 * (180 * 180) - 21 * 21
        np.testing.assert_allclose(out.data[good], expected[good], rtol=1e-5)
        np.testing.assert_allclose(out.uncertainty.array[good] ** 2, expected_var[good],
                                   rtol=1e-5)

    def test_edges_nan_and_masked(self, small_match):
        out = small_match[1].matched
        h = small_match[1].kernel.kernel_size // 2
        for edge in (out.data[:h], out.data[-h:], out.data[:, :h], out.data[:, -h:]):
            assert np.isnan(edge).all()
        assert out.mask[:h].all() and out.mask[:, -h:].all()
        assert not out.mask[h:-h, h:-h][:30, :30].any()

    def test_masked_pixel_footprint(self, small_match):
        out = small_match[1].matched
        h = small_match[1].kernel.kernel_size // 2
        footprint = out.mask[50 - h:50 + h + 1, 60 - h:60 + h + 1]
        assert footprint.all()
        assert np.isnan(out.data[50 - h:50 + h + 1, 60 - h:60 + h + 1]).all()
        assert not out.mask[50 + h + 1, 60] and not out.mask[50, 60 + h + 1]


class TestNanPixel:
    def test_only_its_footprint_changes(self, varying_psf):
        ccd = make_ccd(uncertainty=None)
        ccd.mask[:] = False
        bad = ccd.copy()
        bad.data[100, 90] = np.nan
        matcher = ModelPsfMatcher(REFERENCE_CONFIG, cell_size=64)
        target = CircularGaussianPRF(fwhm=TARGET_FWHM)
        clean = matcher.match(ccd, target, source_psf=varying_psf).matched
        dirty = matcher.match(bad, target, source_psf=varying_psf).matched
        h = 10
        footprint = np.zeros(ccd.shape, dtype=bool)
        footprint[100 - h:100 + h + 1, 90 - h:90 + h + 1] = True
        assert dirty.mask[footprint].all() and np.isnan(dirty.data[footprint]).all()
        np.testing.assert_array_equal(dirty.mask[~footprint], clean.mask[~footprint])
        same = ~footprint & ~clean.mask
        # FFT round-off (1e-16 relative) is the only change outside the footprint
        np.testing.assert_allclose(dirty.data[same], clean.data[same], rtol=1e-12, atol=0)


class TestPhysics:
    def test_flux_of_an_isolated_star(self):
        image = np.zeros((256, 256))
        image[120:135, 110:125] = 1000.0 * gaussian_stamp(15, 1.9)
        result = match_psf(image, CircularGaussianPRF(fwhm=TARGET_FWHM),
                           source_psf=gaussian_stamp(25, 1.9), cell_size=64)
        assert np.nansum(result.matched.data) == pytest.approx(1000.0, rel=1e-4)

    @pytest.mark.parametrize("kernel_sum", [0.5, 2.7])
    def test_flux_conserved_for_any_kernel_sum(self, kernel_sum):
        image = np.zeros((256, 256))
        image[128, 128] = 10.0
        result = match_psf(image, CircularGaussianPRF(fwhm=5.0),
                           source_psf=CircularGaussianPRF(fwhm=3.0), cell_size=64,
                           kernel_sum=kernel_sum)
        assert result.kernel.kernel_sum == pytest.approx(kernel_sum)
        assert np.nansum(result.matched.data) == pytest.approx(10.0, rel=1e-6)

    def test_star_fwhm_matches_the_target_everywhere(self):
        shape = (1024, 1024)
        psf = varying_gaussian_grid(shape, sigma_range=(1.6, 2.4), n_grid=5)
        rng = np.random.default_rng(12)
        image = np.zeros(shape)
        positions = []
        yy, xx = np.mgrid[-12:13, -12:13]
        for y0 in np.linspace(60, 964, 7):
            for x0 in np.linspace(60, 964, 7):
                x, y = x0 + rng.uniform(-0.5, 0.5), y0 + rng.uniform(-0.5, 0.5)
                ix, iy = int(round(x)), int(round(y))
                image[iy - 12:iy + 13, ix - 12:ix + 13] += psf.evaluate(
                    xx + ix, yy + iy, 5000.0, x, y)
                positions.append((x, y))
        before = fit_fwhm(image, xypos=positions, fit_shape=15)
        target = CircularGaussianPRF(fwhm=TARGET_FWHM)
        result = match_psf(image, target, source_psf=psf)
        after = fit_fwhm(np.nan_to_num(result.matched.data), xypos=positions, fit_shape=15)
        assert before.min() < 0.8 * TARGET_FWHM  # the input really varies
        assert before.max() - before.min() > 0.15 * TARGET_FWHM
        np.testing.assert_allclose(after, TARGET_FWHM, rtol=0.01)


class TestOutput:
    def test_result_contents(self, small_match):
        ccd, result = small_match
        assert isinstance(result, MatchResult)
        out = result.matched
        assert isinstance(out, CCDData)
        assert out.shape == ccd.shape and out.unit == u.electron
        np.testing.assert_allclose(out.wcs.pixel_to_world_values([0, 150], [10, 199]),
                                   ccd.wcs.pixel_to_world_values([0, 150], [10, 199]))
        assert isinstance(out.uncertainty, StdDevUncertainty)
        assert out.meta["OBJECT"] == "field" and out.meta["PSFMATCH"]
        assert out.meta["PSFMKSZ"] == 21 and out.meta["PSFMSPO"] == 2
        np.testing.assert_array_equal(out.psf, result.target_psf)
        assert result.target_psf.sum() == pytest.approx(1.0)
        # the configuration that was run: the matcher's, with the stamp size it used
        assert result.config == REFERENCE_CONFIG.replace(cell_size=64, stamp_size=31)

    def test_metadata(self, small_match):
        meta = small_match[1].metadata
        assert meta["basis"] == {"kind": "alard-lupton", "n_basis": 27, "kernel_size": 21,
                                 "n_gauss": 3, "sigmas": (0.7, 1.5, 3.0), "degrees": (4, 2, 2),
                                 "mode": "config"}
        assert meta["spatial"]["n_unknowns"] == 157
        assert meta["candidates"] == {"total": 9, "used": 9, "rejected": 0}
        assert meta["kernel_sum"] == 1.0
        assert set(meta["spatial_residuals"]) == {"mean", "median", "std", "max"}
        assert set(meta["timings"]) >= {"psf_realization", "kernel_solution", "convolution",
                                        "output", "total"}

    def test_weights(self, small_match):
        _, result = small_match
        out = result.matched
        assert (result.weights[out.mask] == 0).all()
        good = ~out.mask
        np.testing.assert_allclose(result.weights[good], 1 / out.uncertainty.array[good] ** 2,
                                   rtol=1e-12)

    @pytest.mark.parametrize("kind", ["std", "var", "ivar"])
    def test_uncertainty_kind_is_kept(self, kind, varying_psf):
        ccd = make_ccd(uncertainty=kind)
        out = match_psf(ccd, CircularGaussianPRF(fwhm=TARGET_FWHM), source_psf=varying_psf,
                        cell_size=64).matched
        assert type(out.uncertainty) is type(ccd.uncertainty)
        good = ~out.mask
        sigma = {"std": lambda a: a, "var": np.sqrt, "ivar": lambda a: 1 / np.sqrt(a)}[kind]
        values = sigma(out.uncertainty.array[good])
        # white noise of sigma 5 smoothed by a kernel of width ~2.5 px
        assert 0.5 < values.mean() < 2.0

    def test_no_uncertainty_no_weights(self, varying_psf):
        result = match_psf(make_ccd(uncertainty=None), CircularGaussianPRF(fwhm=TARGET_FWHM),
                           source_psf=varying_psf, cell_size=64)
        assert result.weights is None and result.matched.uncertainty is None

    def test_fits_round_trip(self, small_match, tmp_path):
        out = small_match[1].matched
        path = tmp_path / "matched.fits"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", fits.verify.VerifyWarning)
            out.write(path)
        back = CCDData.read(path)
        np.testing.assert_array_equal(back.mask, out.mask)
        np.testing.assert_array_equal(back.uncertainty.array, out.uncertainty.array)
        np.testing.assert_array_equal(back.data, out.data)
        assert back.header["PSFMKSZ"] == 21

    def test_float32_stays_float32(self, varying_psf):
        ccd = make_ccd(dtype=np.float32)
        out = match_psf(ccd, CircularGaussianPRF(fwhm=TARGET_FWHM), source_psf=varying_psf,
                        cell_size=64).matched
        assert out.data.dtype == np.float32

    def test_big_endian_input(self, small_match, varying_psf):
        ccd, result = small_match
        swapped = ccd.copy()
        swapped.data = ccd.data.astype(">f8")
        out = match_psf(swapped, CircularGaussianPRF(fwhm=TARGET_FWHM), source_psf=varying_psf,
                        config=REFERENCE_CONFIG, cell_size=64).matched
        np.testing.assert_allclose(out.data, result.matched.data, rtol=1e-12, equal_nan=True)


class TestInputs:
    target = CircularGaussianPRF(fwhm=5.0)

    def test_plain_array_needs_a_psf(self):
        with pytest.raises(ValueError, match="the image has no PSF"):
            match_psf(np.zeros((192, 192)), self.target, cell_size=64)

    def test_psf_from_the_image(self):
        ccd = CCDData(np.ones((192, 192)), unit="adu", psf=gaussian_stamp(15, 1.5))
        result = match_psf(ccd, self.target, config=REFERENCE_CONFIG, cell_size=64)
        assert result.candidates[0].source[15, 15] == pytest.approx(gaussian_stamp(15, 1.5)[7, 7])

    def test_nddata_and_quantity(self):
        nd = NDData(np.ones((192, 192)), unit="Jy", psf=gaussian_stamp(15, 1.5))
        out = match_psf(nd, self.target, config=REFERENCE_CONFIG, cell_size=64).matched
        assert out.unit == u.Jy
        out = match_psf(np.ones((192, 192)) * u.mJy, self.target,
                        source_psf=gaussian_stamp(15, 1.5), cell_size=64).matched
        assert out.unit == u.mJy

    @pytest.mark.parametrize(
        ("image", "error", "match"),
        [("not an image", TypeError, "image must be a CCDData, NDData or 2-D array"),
         (np.zeros((4, 128, 128)), ValueError, "image data must be 2-D"),
         (np.zeros((192, 192), dtype=complex), TypeError, "image data must be real"),
         (NDData(np.zeros((192, 192)), mask=np.zeros((3, 3), bool)), ValueError,
          r"image.mask has shape \(3, 3\)"),
         (NDData(np.zeros((192, 192)), uncertainty=StdDevUncertainty(np.ones((3, 3)))),
          ValueError, r"image.uncertainty has shape \(3, 3\)"),
         (NDData(np.zeros((192, 192)), uncertainty=UnknownUncertainty(np.ones((192, 192)))),
          TypeError, "image.uncertainty must be StdDevUncertainty")])
    def test_bad_images(self, image, error, match):
        with pytest.raises(error, match=match):
            match_psf(image, self.target, source_psf=gaussian_stamp(15, 1.5), cell_size=64)

    def test_bad_config(self):
        with pytest.raises(TypeError, match="config must be a MatchConfig"):
            ModelPsfMatcher({"kernel_size": 21})
        with pytest.raises(ValueError, match="kernel_size"):
            ModelPsfMatcher(REFERENCE_CONFIG, kernel_size=20)


class TestDoesNotChangeInput:
    @pytest.mark.parametrize("kind", ["std", "var", "ivar", None])
    def test_ccddata(self, kind, varying_psf):
        ccd = make_ccd(uncertainty=kind)
        ccd.data[3, 3] = np.nan
        before = ccd.copy()
        header_before = ccd.meta.copy()
        match_psf(ccd, CircularGaussianPRF(fwhm=TARGET_FWHM), source_psf=varying_psf,
                  cell_size=64)
        np.testing.assert_array_equal(ccd.data, before.data)
        np.testing.assert_array_equal(ccd.mask, before.mask)
        if kind:
            np.testing.assert_array_equal(ccd.uncertainty.array, before.uncertainty.array)
        assert ccd.meta == header_before and "PSFMATCH" not in ccd.meta

    def test_nddata_and_array_and_readonly(self):
        data = np.random.default_rng(13).normal(size=(192, 192))
        data.flags.writeable = False
        copy = data.copy()
        psf = gaussian_stamp(15, 1.5)
        psf_copy = psf.copy()
        nd = NDData(data, psf=psf, meta={"a": 1})
        match_psf(nd, CircularGaussianPRF(fwhm=5.0), cell_size=64)
        match_psf(data, CircularGaussianPRF(fwhm=5.0), source_psf=psf, cell_size=64)
        np.testing.assert_array_equal(data, copy)
        np.testing.assert_array_equal(psf, psf_copy)
        assert nd.meta == {"a": 1}


class TestReprojectCoadd:
    def test_accepts_matched_with_weights(self, small_match):
        pytest.importorskip("reproject")
        from reproject import reproject_interp
        from reproject.mosaicking import reproject_and_coadd
        _, result = small_match
        out = result.matched
        array, footprint = reproject_and_coadd(
            [(out.data, out.wcs)], out.wcs, shape_out=out.shape,
            input_weights=[result.weights], reproject_function=reproject_interp,
            match_background=False)
        # bilinear interpolation spreads NaN one pixel: compare away from masked pixels
        good = ~binary_dilation(out.mask, iterations=2)
        np.testing.assert_allclose(array[good], out.data[good], rtol=1e-10)
        assert (footprint[good] > 0).all()


class TestGridAndStamps:
    def test_spatial_order_lowered_for_a_small_grid(self):
        image = np.zeros((128, 128))
        with pytest.warns(AstropyUserWarning, match=r"spatial_order 2 needs at least 3 cells .* "
                                                    r"using spatial_order 1"):
            result = match_psf(image, CircularGaussianPRF(fwhm=5.0),
                               source_psf=CircularGaussianPRF(fwhm=3.0), config=REFERENCE_CONFIG,
                                   cell_size=64)
        assert result.kernel.spatial_order == 1
        assert result.metadata["spatial"]["order"] == 1
        assert result.metadata["spatial"]["requested_order"] == 2

    def test_heavy_winged_psf_stamps_are_capped(self):
        from photutils.psf import AiryDiskPSF
        result = ModelPsfMatcher(REFERENCE_CONFIG, cell_size=64).solve(
            (192, 192), AiryDiskPSF(radius=2.0), CircularGaussianPRF(fwhm=8.0))
        assert result[1][0].source.shape == (85, 85)  # 4 * 21 + 1, not 599

    def test_reference_grid_growth(self):
        result = match_psf(np.zeros((256, 256)), CircularGaussianPRF(fwhm=5.0),
                           source_psf=CircularGaussianPRF(fwhm=3.0), config=REFERENCE_CONFIG,
                               cell_size=64,
                           grow_cells=1)
        assert result.grid.n_cells == (6, 6)
        assert result.metadata["candidates"]["total"] == 36


class TestWorkers:
    def test_single_thread_gives_the_same_result(self, small_match, varying_psf):
        ccd, result = small_match
        one = ModelPsfMatcher(REFERENCE_CONFIG, cell_size=64).match(ccd,
                                                                    CircularGaussianPRF(fwhm=TARGET_FWHM),
                                                  source_psf=varying_psf, workers=1)
        np.testing.assert_allclose(one.matched.data, result.matched.data, rtol=1e-12,
                                   equal_nan=True)

    @pytest.mark.parametrize(("bad", "error"), [(0, ValueError), (-2, ValueError),
                                                (1.5, TypeError), (True, TypeError),
                                                ("2", TypeError)])
    def test_bad_workers(self, bad, error):
        with pytest.raises(error, match="workers must be None or an integer >= 1"):
            ModelPsfMatcher(REFERENCE_CONFIG).solve((256, 256), gaussian_stamp(11, 2.0),
                                                    gaussian_stamp(11, 3.0),
                                    workers=bad)


def test_masked_array_input_keeps_its_mask():
    data = np.ma.MaskedArray(np.ones((192, 192)), mask=np.zeros((192, 192), bool))
    data.mask[90, 90] = True
    out = match_psf(data, CircularGaussianPRF(fwhm=5.0), source_psf=gaussian_stamp(15, 1.5),
                    config=REFERENCE_CONFIG, cell_size=64).matched
    assert out.mask[90, 90] and out.mask[100, 100] and not out.mask[120, 120]


class TestDeconvolutionWarning:
    def test_narrower_target_warns(self):
        with pytest.warns(AstropyUserWarning, match=r"target_psf is narrower than the source PSF "
                                                    r"at 16 of 16 cells .* deconvolution"):
            match_psf(np.zeros((256, 256)), CircularGaussianPRF(fwhm=3.0),
                      source_psf=CircularGaussianPRF(fwhm=5.0), config=REFERENCE_CONFIG,
                          cell_size=64,
                      max_residual=0.5)

    def test_elliptical_source_narrower_along_one_axis_warns(self):
        # round target broader than the source's minor axis but not its major axis
        source = gaussian_stamp(31, 3.0, sigma_y=1.2)
        with pytest.warns(AstropyUserWarning, match="target_psf is narrower"):
            match_psf(np.zeros((256, 256)), gaussian_stamp(31, 2.5), source_psf=source,
                      cell_size=64)

    def test_broader_target_is_quiet(self):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            match_psf(np.zeros((256, 256)), gaussian_stamp(31, 3.1),
                      source_psf=gaussian_stamp(31, 3.0, sigma_y=1.2), cell_size=64)


def test_first_run_says_it_compiles(tmp_path):
    # a fresh numba cache: the first match compiles the kernels and says so, once
    import subprocess
    import sys

    code = ("import logging, numpy as np\n"
            "from astropsfmatch import match_psf, log\n"
            "from photutils.psf import CircularGaussianPRF\n"
            "log.setLevel('INFO')\n"
            "match_psf(np.zeros((48, 48)), CircularGaussianPRF(fwhm=3.0),\n"
            "          source_psf=CircularGaussianPRF(fwhm=2.0), kernel_size=7,\n"
            "          kernel_basis='alard-lupton')\n")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=600, check=True)
    said = done.stdout + done.stderr  # astropy's logger prints INFO on stdout
    assert said.count("compiling the numerical kernels (first run after") == 1, said
