"""From a real image to a matched image: PSFEx files, PSF files, the image's own stars, FITS."""

import importlib.util
import os
import warnings
from pathlib import Path

import astropy
import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import CCDData, StdDevUncertainty
from astropy.utils.masked import Masked
from photutils.psf import CircularGaussianPRF, ImagePSF, fit_fwhm

from astropsfmatch import PSFExPSF, match_many, match_psf
from astropsfmatch.cli import main

DATA = Path(__file__).parent / "data" / "psfex"
ASTROPY_DATA = Path(astropy.__file__).parent / "io" / "fits" / "hdu" / "compressed" / "tests" / \
    "data"
M13 = ASTROPY_DATA / "m13.fits"
M13_RICE = ASTROPY_DATA / "m13_rice.fits"


def _load_simulation():
    spec = importlib.util.spec_from_file_location("make_psfex_files", DATA / "make_psfex_files.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SIMULATION = _load_simulation()
PARAMS = SIMULATION.load_parameters(DATA / "simulation.json")


def run(argv, capsys):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def corner_field(size=384, step=64, flux=2e5):
    """The corner of the PSFEx test field: its true PSF rendered at a grid of stars (no noise).

    The corner's pixel coordinates are those of the full field, so the PSFEx
    model of the field describes it.
    """
    half = PARAMS["render_half_size"]
    axis = np.arange(step // 2 + 8, size - step // 2, step, dtype=float)
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    rng = np.random.default_rng(7)
    x = xx.ravel() + rng.uniform(-0.5, 0.5, xx.size)
    y = yy.ravel() + rng.uniform(-0.5, 0.5, yy.size)
    ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
    stamps = SIMULATION.render_psf(PARAMS, x, y, 2 * half + 1, dx=x - ix, dy=y - iy)
    image = np.zeros((size, size))
    for k in range(x.size):
        image[iy[k] - half:iy[k] + half + 1, ix[k] - half:ix[k] + half + 1] += flux * stamps[k]
    return image, x, y


class TestPSFExEndToEnd:
    @pytest.mark.parametrize("name", ["moffat_deg2_samp0.5.psf", "moffat_deg2_samp1.psf"])
    def test_stars_reach_the_target(self, name, tmp_path, capsys):
        image, x, y = corner_field()
        science = tmp_path / "field.fits"
        CCDData(image, unit="electron").write(science)
        output = tmp_path / "out.fits"
        status, out, err = run(["match", science, "--source-psf", DATA / name,
                                "--target-psf", "gaussian:fwhm=4.5", "-o", output], capsys)
        assert status == 0, err
        assert "PSFEx model" in out and "PSF_SAMP" in out
        matched = CCDData.read(output)
        fwhm = fit_fwhm(np.nan_to_num(matched.data), xypos=list(zip(x, y, strict=True)),
                        fit_shape=15)
        # every star within 1% of the target: the PSFEx model, not the truth, is matched
        np.testing.assert_allclose(fwhm, 4.5, rtol=0.01)

    def test_python_api(self):
        image, x, y = corner_field(size=256)
        model = PSFExPSF.read(DATA / "moffat_deg2_samp0.5.psf")
        result = match_psf(image, CircularGaussianPRF(fwhm=4.5), source_psf=model)
        assert result.metadata["quality"]["passed"]
        assert result.metadata["spatial"]["model"] == "bilinear"


class TestPSFFiles:
    def test_oversampled_epsf_file_equals_the_image_psf(self, tmp_path, capsys):
        # a 4x oversampled ePSF as photutils builds them, saved with its OVERSAMP keyword
        offsets = (np.arange(81) - 40) / 4.0
        yy, xx = np.meshgrid(offsets, offsets, indexing="ij")
        data = CircularGaussianPRF(fwhm=3.0)(xx, yy)
        path = tmp_path / "epsf.fits"
        fits.PrimaryHDU(data, header=fits.Header({"OVERSAMP": 4})).writeto(path)
        image = np.zeros((192, 192))
        image[96, 96] = 1.0
        science = tmp_path / "s.fits"
        CCDData(image, unit="adu").write(science)
        kernel_file = tmp_path / "k.fits"
        status, out, err = run(["match", science, "-s", path, "-t", "gaussian:fwhm=5", "-o",
                                tmp_path / "o.fits", "--save-kernel", kernel_file], capsys)
        assert status == 0, err
        assert "oversampled 4x" in out
        from astropsfmatch import SpatialKernel

        from_file = SpatialKernel.read(kernel_file).evaluate(96, 96)
        in_memory = match_psf(image, CircularGaussianPRF(fwhm=5.0),
                              source_psf=ImagePSF(data, oversampling=4)).kernel.evaluate(96, 96)
        np.testing.assert_allclose(from_file, in_memory, atol=1e-6 * in_memory.max())

    def test_oversampling_option(self, tmp_path, capsys):
        offsets = (np.arange(41) - 20) / 2.0
        yy, xx = np.meshgrid(offsets, offsets, indexing="ij")
        path = tmp_path / "epsf2.fits"
        fits.PrimaryHDU(CircularGaussianPRF(fwhm=3.0)(xx, yy)).writeto(path)
        science = tmp_path / "s.fits"
        CCDData(np.zeros((192, 192)), unit="adu").write(science)
        status, out, err = run(["match", science, "-s", path, "--psf-oversampling", "2", "-t",
                                "gaussian:fwhm=5", "-o", tmp_path / "o.fits"], capsys)
        assert status == 0, err
        assert "oversampled 2x" in out
        # without the option it would be read as a 6-pixel PSF, broader than the target
        status, _, err = run(["match", science, "-s", path, "-t", "gaussian:fwhm=5", "-o",
                              tmp_path / "o2.fits"], capsys)
        assert "narrower" in err


@pytest.mark.skipif(not M13.exists(), reason="astropy's test data is not installed")
class TestM13:
    """astropy's DSS image of M13 (big-endian int16, no PSF, no BUNIT) and its Rice twin."""

    @pytest.mark.parametrize("path", [M13, M13_RICE], ids=["m13", "m13_rice"])
    def test_from_the_stars_to_a_5_pixel_gaussian(self, path, tmp_path, capsys):
        output = tmp_path / "out.fits"
        status, out, err = run(["match", path, "--source-psf", "stars", "--target-psf",
                                "gaussian:fwhm=5", "-o", output], capsys)
        assert status == 0, err
        assert "estimated from the stars" in out and "stars:" in out
        from astropsfmatch import find_stars

        matched = CCDData.read(output)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stars = find_stars(np.nan_to_num(matched.data), mask=matched.mask)
        assert len(stars) >= 20
        assert np.median(stars["fwhm"]) == pytest.approx(5.0, rel=0.03)


class TestFitsAsPeopleHaveThem:
    def test_hdu_option(self, tmp_path, capsys):
        image = np.zeros((192, 192))
        image[90:95, 90:95] = 1.0
        path = tmp_path / "mef.fits"
        fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.ones((10, 10)), name="OTHER"),
                      fits.ImageHDU(image, name="SCI", ver=1)]).writeto(path)
        output = tmp_path / "o.fits"
        status, _, err = run(["match", path, "--hdu", "SCI,1", "-s", "gaussian:fwhm=3",
                              "-t", "gaussian:fwhm=5", "-o", output], capsys)
        assert status == 0, err
        assert CCDData.read(output).shape == (192, 192)
        status, _, err = run(["match", path, "--hdu", "NOPE", "-s", "gaussian:fwhm=3",
                              "-t", "gaussian:fwhm=5", "-o", tmp_path / "p.fits"], capsys)
        assert status == 1 and "--hdu NOPE: no such HDU" in err

    def test_every_file_written_has_valid_checksums_and_reads_back(self, tmp_path, capsys):
        science = tmp_path / "s.fits"
        header = fits.Header({"CHECKSUM": "0000000000000000", "DATASUM": "0"})
        CCDData(np.ones((192, 192)), unit="adu", meta=header,
                uncertainty=StdDevUncertainty(np.ones((192, 192)))).write(science)
        outputs = [tmp_path / n for n in ("o.fits", "w.fits", "k.fits")]
        status, _, err = run(["match", science, "-s", "gaussian:fwhm=3", "-t", "gaussian:fwhm=5",
                              "-o", outputs[0], "--weights", outputs[1], "--save-kernel",
                              outputs[2]], capsys)
        assert status == 0, err
        many = match_many([str(science)], CircularGaussianPRF(fwhm=5.0),
                          source_psfs=[CircularGaussianPRF(fwhm=3.0)],
                          output_dir=tmp_path / "many", progress=False)
        for path in outputs + many.results + many.kernel_paths:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                with fits.open(path, checksum=True) as hdul:
                    assert all(hdu.verify_checksum() == 1 for hdu in hdul)
        for path in [outputs[0], *many.results]:
            CCDData.read(path)  # no extra arguments

    def test_unitless_input_reads_back(self, tmp_path):
        result = match_psf(np.ones((192, 192)), CircularGaussianPRF(fwhm=5.0),
                           source_psf=CircularGaussianPRF(fwhm=3.0))
        from astropsfmatch._adapters.files import write_matched

        write_matched(result.matched, tmp_path / "o.fits")
        assert CCDData.read(tmp_path / "o.fits").unit == u.dimensionless_unscaled

    def test_masked_input_keeps_its_mask(self):
        data = Masked(np.ones((192, 192)), mask=np.zeros((192, 192), bool))
        data.mask[90, 90] = True
        out = match_psf(data, CircularGaussianPRF(fwhm=5.0),
                        source_psf=CircularGaussianPRF(fwhm=3.0)).matched
        assert out.mask[90, 90] and out.mask[92, 92] and not out.mask[150, 150]

    def test_big_endian_int16(self):
        data = (np.arange(192 * 192).reshape(192, 192) % 97).astype(">i2")
        out = match_psf(data, CircularGaussianPRF(fwhm=5.0),
                        source_psf=CircularGaussianPRF(fwhm=3.0)).matched
        assert np.isfinite(out.data[96, 96])


def test_demo_output_is_valid_cli_input(tmp_path, capsys, quick_figures):
    folder = tmp_path / "demo"
    assert main(["demo", "--output", str(folder), "--size", "128", "--no-figures"]) == 0
    capsys.readouterr()
    status, out, err = run(["match", folder / "science.fits", "-s", folder / "psf.fits",
                            "-t", "gaussian:fwhm=5", "-o", tmp_path / "again.fits"], capsys)
    assert status == 0, err
    assert "PSF grid psf.fits (9 ePSFs, oversampling 2)" in out
    assert os.path.exists(tmp_path / "again.fits")
