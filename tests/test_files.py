"""The one on-disk layout of a matched exposure: written by the CLI and match_many, read
by coadd."""

import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import CCDData, StdDevUncertainty
from astropy.wcs import WCS
from photutils.psf import CircularGaussianPRF

from astropsfmatch import coadd, match_many, match_psf
from astropsfmatch._adapters.files import read_matched, write_matched
from astropsfmatch.cli import main

N = 192


def make_wcs():
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [10.0, 20.0]
    wcs.wcs.crpix = [N / 2, N / 2]
    wcs.wcs.cdelt = [-1e-4, 1e-4]
    return wcs


def make_ccd(value=1.0, sigma=1.0):
    rng = np.random.default_rng(3)
    data = value + 0.01 * rng.normal(size=(N, N))
    return CCDData(data, unit="electron", wcs=make_wcs(),
                   uncertainty=StdDevUncertainty(np.full((N, N), sigma)),
                   meta={"OBJECT": "field", "CHECKSUM": "stale", "DATASUM": "0"})


@pytest.fixture(scope="module")
def result():
    return match_psf(make_ccd(), CircularGaussianPRF(fwhm=5.0),
                     source_psf=CircularGaussianPRF(fwhm=3.0), cell_size=64)


def hdu_names(path):
    with fits.open(path) as hdul:
        return [hdu.name for hdu in hdul]


class TestLayout:
    def test_round_trip(self, result, tmp_path):
        path = tmp_path / "m.fits"
        write_matched(result.matched, path, weights=result.weights)
        assert hdu_names(path) == ["PRIMARY", "MASK", "UNCERT", "PSFIMAGE", "WEIGHTS"]
        ccd, weights = read_matched(path)
        np.testing.assert_array_equal(ccd.data, result.matched.data)
        np.testing.assert_array_equal(ccd.mask, result.matched.mask)
        np.testing.assert_array_equal(weights, result.weights)
        assert ccd.meta["OBJECT"] == "field"
        assert CCDData.read(path).unit == result.matched.unit

    def test_checksums_are_fresh(self, result, tmp_path):
        path = tmp_path / "m.fits"
        write_matched(result.matched, path, weights=result.weights)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a bad checksum warns
            with fits.open(path, checksum=True) as hdul:
                for hdu in hdul:
                    assert hdu.header["CHECKSUM"] != "stale"
                    assert hdu.verify_checksum() == 1

    def test_no_partial_file_on_failure(self, tmp_path):
        path = tmp_path / "m.fits"
        with pytest.raises(ValueError, match="bad shape while writing"):
            _fail_writing(path)
        assert list(tmp_path.iterdir()) == []

    def test_cli_and_match_many_write_the_same_layout(self, result, tmp_path):
        science = tmp_path / "science.fits"
        ccd = make_ccd()
        ccd.psf = np.asarray(
            CircularGaussianPRF(fwhm=3.0)(*np.meshgrid(np.arange(-10, 11), np.arange(-10, 11))))
        ccd.write(science)
        cli_out = tmp_path / "cli.fits"
        assert main(["match", str(science), "-t", "gaussian:fwhm=5", "-o", str(cli_out),
                     "--cell-size", "64"]) == 0
        many = match_many([str(science)], CircularGaussianPRF(fwhm=5.0),
                          output_dir=tmp_path / "many", progress=False,
                          config=result.config)
        assert hdu_names(cli_out) == hdu_names(many.results[0])


def _fail_writing(path):
    from astropsfmatch._adapters.files import atomic_write

    def writer(partial):
        with open(partial, "w") as handle:
            handle.write("half a file")
        msg = "bad shape while writing"
        raise ValueError(msg)

    atomic_write(path, writer)


class TestCoaddReadsStoredWeights:
    def test_stored_weights_are_used(self, tmp_path):
        target = CircularGaussianPRF(fwhm=5.0)
        paths = []
        for k, value in enumerate((1.0, 3.0)):
            res = match_psf(make_ccd(value=value), target,
                            source_psf=CircularGaussianPRF(fwhm=3.0), cell_size=64)
            path = tmp_path / f"m{k}.fits"
            weights = res.weights.copy()
            if k == 1:
                weights[:] = 0.0  # stored weights say: do not use this exposure
            write_matched(res.matched, path, weights=weights)
            paths.append(path)
        out = coadd(paths, make_wcs(), (N, N))
        good = ~out.mask
        assert good.sum() > 0.5 * N * N
        # only the first exposure counts: the second has zero stored weights
        np.testing.assert_allclose(out.data[good], 1.0, atol=0.05)
