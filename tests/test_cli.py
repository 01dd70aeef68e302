import json
import logging
import os
import subprocess
import sys

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import CCDData, StdDevUncertainty, VarianceUncertainty
from astropy.wcs import WCS
from photutils.psf import CircularGaussianPRF, MoffatPSF

from astropsfmatch import SpatialKernel, __version__
from astropsfmatch._logging import log
from astropsfmatch.cli import main, parse_psf_spec
from astropsfmatch.diagnostics import DIAGNOSTIC_FILES

SIZE = 192  # 3 x 3 cells of 64 pixels
SOURCE_FWHM = 3.0
TARGET_FWHM = 4.5


def gaussian_stamp(fwhm, size=25):
    offsets = np.arange(size) - size // 2
    yy, xx = np.meshgrid(offsets, offsets, indexing="ij")
    stamp = CircularGaussianPRF(fwhm=fwhm)(xx, yy)
    return stamp / stamp.sum()


def make_wcs():
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [10.0, -5.0]
    wcs.wcs.crpix = [SIZE / 2, SIZE / 2]
    wcs.wcs.cdelt = [-1e-4, 1e-4]
    return wcs


def write_science(path, *, uncertainty=True, mask=True, psf=True, bunit="electron",
                  uncertainty_type="std"):
    """A FITS image as a pipeline writes it (big-endian float32), with optional extensions."""
    rng = np.random.default_rng(5)
    data = rng.normal(0.0, 1.0, (SIZE, SIZE))
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for x0, y0 in [(60.0, 70.0), (130.3, 120.6), (96.0, 40.0)]:
        data += CircularGaussianPRF(fwhm=SOURCE_FWHM, flux=5000.0, x_0=x0, y_0=y0)(xx, yy)
    header = make_wcs().to_header()
    if bunit:
        header["BUNIT"] = bunit
    hdus = [fits.PrimaryHDU(data.astype(np.float32), header=header)]
    if uncertainty:
        std = np.ones((SIZE, SIZE), dtype=np.float32)
        value, name = (std, "StdDevUncertainty") if uncertainty_type == "std" else (
            std**2, "VarianceUncertainty")
        hdus.append(fits.ImageHDU(value, header=fits.Header({"UTYPE": name}), name="UNCERT"))
    if mask:
        bad = np.zeros((SIZE, SIZE), dtype=np.uint8)
        bad[100, 100] = 1
        hdus.append(fits.ImageHDU(bad, name="MASK"))
    if psf:
        hdus.append(fits.ImageHDU(gaussian_stamp(SOURCE_FWHM), name="PSFIMAGE"))
    fits.HDUList(hdus).writeto(path)
    return path


@pytest.fixture
def science(tmp_path):
    return write_science(tmp_path / "science.fits")


@pytest.fixture(autouse=True)
def _restore_log_level():
    level = log.level
    yield
    assert log.level == level  # main() restores it
    log.setLevel(level)


def run(argv, capsys):
    """main(argv) -> (status, stdout, stderr); ``match`` gets cells of 64 unless told otherwise."""
    argv = [str(a) for a in argv]
    if argv[:1] == ["match"] and "--cell-size" not in argv:
        argv += ["--cell-size", "64"]
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def files_in(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


class TestMatch:
    def test_psf_from_the_file(self, science, tmp_path, capsys):
        output = tmp_path / "matched.fits"
        status, out, err = run(["match", science, "--target-psf", f"gaussian:fwhm={TARGET_FWHM}",
                                "-o", output], capsys)
        assert status == 0, err
        assert err == ""
        assert "science.fits -> " in out and "held-out residual max" in out
        matched = CCDData.read(output)
        assert matched.shape == (SIZE, SIZE)
        assert matched.unit == "electron"
        assert isinstance(matched.uncertainty, StdDevUncertainty)
        assert matched.mask[100, 100] and matched.mask[0, 0]  # bad pixel and edge
        assert not matched.mask[50, 150]
        assert np.isnan(matched.data[0, 0])
        assert matched.wcs.wcs.ctype[0] == "RA---TAN"
        np.testing.assert_allclose(matched.wcs.wcs.crval, [10.0, -5.0])
        assert matched.psf.shape[0] % 2 == 1
        np.testing.assert_allclose(matched.psf.sum(), 1.0)
        header = fits.getheader(output)
        assert header["PSFMATCH"] is True
        assert header["PSFMKSZ"] % 2 == 1  # chosen from the PSF widths
        assert header["PSFMQOK"] is True and header["PSFMQHMX"] < 1e-2
        assert "fwhm=4.5" in header["PSFMTPSF"]
        # flux is conserved, the star is now broader
        star = matched.data[101:141, 112:150]
        before = fits.getdata(science)[101:141, 112:150]
        np.testing.assert_allclose(np.nansum(star), before.sum(), rtol=0.02)
        assert star.max() < 0.6 * before.max()
        assert files_in(tmp_path) == ["matched.fits", "science.fits"]

    def test_without_uncertainty_and_mask(self, tmp_path, capsys):
        science = write_science(tmp_path / "plain.fits", uncertainty=False, mask=False)
        output = tmp_path / "out.fits"
        status, _, err = run(["match", science, "-t", "gaussian:fwhm=4", "-o", output], capsys)
        assert status == 0, err
        with fits.open(output) as hdus:
            names = [hdu.name for hdu in hdus]
        assert names == ["PRIMARY", "MASK", "PSFIMAGE"]  # edges are masked
        assert CCDData.read(output).uncertainty is None

    def test_variance_kind_kept_and_extra_outputs(self, tmp_path, capsys):
        science = write_science(tmp_path / "var.fits", uncertainty_type="var")
        output, weights, kernel = (tmp_path / name for name in ("o.fits", "w.fits", "k.fits"))
        status, _, err = run(["match", science, "-t", "moffat:fwhm=4.5,beta=3", "-o", output,
                              "--weights", weights, "--save-kernel", kernel,
                              "--kernel-sum", "2"], capsys)
        assert status == 0, err
        matched = CCDData.read(output)
        assert isinstance(matched.uncertainty, VarianceUncertainty)
        w = fits.getdata(weights)
        header = fits.getheader(weights)
        assert w.shape == (SIZE, SIZE)
        assert u.Unit(header["BUNIT"]) == u.electron**-2
        good = ~matched.mask
        np.testing.assert_allclose(w[good], 1.0 / matched.uncertainty.array[good], rtol=1e-5)
        assert np.all(w[matched.mask] == 0)
        assert WCS(header).wcs.ctype[0] == "RA---TAN"
        solved = SpatialKernel.read(kernel)
        assert solved.kernel_sum == pytest.approx(2.0)

    def test_options_and_config_files(self, science, tmp_path, capsys):
        toml = tmp_path / "config.toml"
        toml.write_text('kernel_basis = "alard-lupton"\nspatial_model = "chebyshev1"\n'
                        'max_residual = 0.05\n'
                        'kernel_size = 15\nspatial_order = 1\nalard_sigmas = [0.7, 1.5]\n'
                        'alard_degrees = [2, 1]\n')
        output = tmp_path / "a.fits"
        status, _, err = run(["match", science, "-t", "gaussian:sigma=2", "-o", output,
                              "--config", toml], capsys)
        assert status == 0, err
        header = fits.getheader(output)
        assert (header["PSFMKSZ"], header["PSFMSPO"], header["PSFMNBAS"]) == (15, 1, 9)
        # the command line wins over the file
        config = tmp_path / "config.json"
        config.write_text(json.dumps({"kernel_size": 15, "cell_size": [64, 96],
                                      "kernel_basis": "alard-lupton",
                                      "spatial_model": "chebyshev1"}))
        output = tmp_path / "b.fits"
        status, _, err = run(["match", science, "-t", "gaussian:fwhm=4.7", "-o", output,
                              "--config", config, "--kernel-size", "13", "--spatial-order", "0",
                              "--cell-size", "64"], capsys)
        assert status == 0, err
        header = fits.getheader(output)
        assert (header["PSFMKSZ"], header["PSFMSPO"]) == (13, 0)

    def test_psf_files(self, tmp_path, capsys):
        science = write_science(tmp_path / "nopsf.fits", psf=False, bunit=None)
        source = tmp_path / "source_psf.fits"
        fits.PrimaryHDU(gaussian_stamp(SOURCE_FWHM).astype(">f8")).writeto(source)
        # a matched file as the target: its PSFIMAGE extension is the PSF
        target = tmp_path / "other.fits"
        hdus = [fits.PrimaryHDU(np.zeros((4, 4))),
                fits.ImageHDU(gaussian_stamp(TARGET_FWHM, 31), name="PSFIMAGE")]
        fits.HDUList(hdus).writeto(target)
        output = tmp_path / "out.fits"
        status, _, err = run(["match", science, "-t", target, "-s", source, "-o", output],
                             capsys)
        assert status == 0, err
        matched = CCDData.read(output)
        assert matched.unit == "adu"  # no BUNIT: adu
        # the target as the fit realized it: the 31-pixel image, padded to the stamp size
        size = matched.psf.shape[0]
        cut = (size - 31) // 2
        np.testing.assert_allclose(matched.psf[cut:cut + 31, cut:cut + 31],
                                   gaussian_stamp(TARGET_FWHM, 31), atol=1e-12)
        assert matched.psf.sum() == pytest.approx(1.0)
        assert fits.getheader(output)["PSFMTPSF"] == "ndarray"

    def test_unit_option(self, tmp_path, capsys):
        science = write_science(tmp_path / "nobunit.fits", bunit=None)
        output = tmp_path / "out.fits"
        status, _, err = run(["match", science, "-t", "gaussian:fwhm=4", "-o", output,
                              "--unit", "ph"], capsys)
        assert status == 0, err
        assert CCDData.read(output).unit == "ph"

    def test_gridded_psf_file(self, tmp_path, capsys):
        science = write_science(tmp_path / "s.fits", psf=False)
        grid = tmp_path / "grid.fits"
        # ePSFs oversampled by 2 at the four corners (photutils reads DET_YX as "(x, y)")
        offsets = (np.arange(41) - 20) / 2.0
        yy, xx = np.meshgrid(offsets, offsets, indexing="ij")
        stamps = np.array([CircularGaussianPRF(fwhm=f)(xx, yy) for f in (2.8, 3.0, 3.0, 3.2)])
        header = fits.Header({"OVERSAMP": 2})
        for k, (x, y) in enumerate([(0, 0), (191, 0), (0, 191), (191, 191)]):
            header[f"DET_YX{k}"] = str((x, y))
        fits.PrimaryHDU(stamps, header=header).writeto(grid)
        output = tmp_path / "out.fits"
        status, _, err = run(["match", science, "-t", "gaussian:fwhm=4.5", "-s", grid,
                              "-o", output], capsys)
        assert status == 0, err
        assert fits.getheader(output)["PSFMATCH"] is True

    def test_diagnostics(self, science, tmp_path, capsys, quick_figures):
        output, folder = tmp_path / "out.fits", tmp_path / "figs"
        status, out, err = run(["match", science, "-t", "gaussian:fwhm=4.5", "-o", output,
                                "--diagnostics", folder, "--kernel-size", "11"], capsys)
        assert status == 0, err
        assert files_in(folder) == sorted(DIAGNOSTIC_FILES.values())
        assert out.splitlines()[-1].startswith(f"  figures: 8 PNG files in {folder}/")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["figs", "out.fits",
                                                              "science.fits"]
        progress = [line for line in err.splitlines() if " figure " in line]
        assert [line.split(":")[1].split()[1] for line in progress] == \
            [f"{k}/8" for k in range(1, 9)]
        assert progress[0].startswith("astropsfmatch: figure 1/8: heldout.png (")

    def test_overwrite(self, science, tmp_path, capsys):
        output = tmp_path / "out.fits"
        output.write_text("old")
        status, _, err = run(["match", science, "-t", "gaussian:fwhm=4.5", "-o", output,
                              "--overwrite", "--kernel-size", "11"], capsys)
        assert status == 0, err
        assert fits.getheader(output)["PSFMATCH"] is True

    def test_output_into_a_new_directory(self, science, tmp_path, capsys):
        output = tmp_path / "new" / "dir" / "out.fits"
        status, _, err = run(["match", science, "-t", "gaussian:fwhm=4.5", "-o", output,
                              "--kernel-size", "11"], capsys)
        assert status == 0, err
        assert output.is_file()

    def test_warnings_are_one_line_messages(self, science, tmp_path, capsys):
        # 192 pixels in cells of 96: two cells per axis cannot hold spatial order 2
        output = tmp_path / "out.fits"
        status, _, err = run(["match", science, "-t", "gaussian:fwhm=4.5", "-o", output,
                              "--cell-size", "96", "--kernel-size", "11",
                              "--spatial-model", "chebyshev1"], capsys)
        assert status == 0
        assert err.startswith("astropsfmatch: warning: spatial_order 2 needs")
        assert err.count("\n") == 1
        assert fits.getheader(output)["PSFMSPO"] == 1

    def test_verbose(self, science, tmp_path, capsys, caplog):
        caplog.set_level(logging.DEBUG, logger="astropy.astropsfmatch")
        status, _, err = run(["match", science, "-t", "gaussian:fwhm=4.5", "-o",
                              tmp_path / "o.fits", "-v", "--kernel-size", "11"], capsys)
        assert status == 0, err
        messages = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
        assert any(m.startswith("matching ") for m in messages)
        assert any("PSFIMAGE" in m for m in messages)

    def test_big_endian_input_is_left_unchanged(self, science, tmp_path, capsys):
        before = science.read_bytes()
        with fits.open(science) as hdus:
            assert hdus[0].data.dtype.byteorder == ">"
        status, _, _ = run(["match", science, "-t", "gaussian:fwhm=4.5", "-o",
                            tmp_path / "o.fits", "--kernel-size", "11"], capsys)
        assert status == 0
        assert science.read_bytes() == before


def expect_error(argv, capsys, status, message, folder):
    """The command fails with one line on stderr and leaves ``folder`` as it was."""
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    code, out, err = run(argv, capsys)
    assert code == status, err
    assert err.startswith("astropsfmatch: error: ")
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    assert message in err, err
    assert out == ""
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    return err


class TestMatchErrors:
    @pytest.mark.parametrize(("options", "status", "message"), [
        ([], 2, "the following arguments are required: -t/--target-psf"),
        (["-t", "gauss:fwhm=3"], 2, "unknown PSF kind 'gauss'"),
        (["-t", "gaussian:fwhm=abc"], 2, "fwhm must be a finite number > 0"),
        (["-t", "gaussian:fwhm=-2"], 2, "fwhm must be a finite number > 0"),
        (["-t", "gaussian:"], 2, "must give exactly one width: fwhm or sigma"),
        (["-t", "gaussian:fwhm=3,sigma=1"], 2, "must give exactly one width"),
        (["-t", "gaussian:fwhm=3,beta=2"], 2, "bad parameter 'beta=2'"),
        (["-t", "moffat:fwhm=3,beta=1"], 2, "beta must be a finite number > 1"),
        (["-t", "gaussian:fwhm=4", "--kernel-size", "4"], 2, "must be an odd integer >= 3"),
        (["-t", "gaussian:fwhm=4", "--kernel-size", "x"], 2, "must be an odd integer >= 3"),
        (["-t", "gaussian:fwhm=4", "--spatial-order", "-1"], 2, "must be an integer >= 0"),
        (["-t", "gaussian:fwhm=4", "--cell-size", "16"], 2, "integers >= 32"),
        (["-t", "gaussian:fwhm=4", "--cell-size", "64,a"], 2, "integers >= 32"),
        (["-t", "gaussian:fwhm=4", "--kernel-sum", "0"], 2, "must be a finite number > 0"),
        (["-t", "gaussian:fwhm=4", "--kernel-sum", "nan"], 2, "must be a finite number > 0"),
        (["-t", "gaussian:fwhm=4", "--unit", "furlongs"], 2, "not a valid unit"),
        (["-t", "gaussian:fwhm=4", "--bogus"], 2, "unrecognized arguments: --bogus"),
        (["-t", "missing_psf.fits"], 1, "--target-psf: missing_psf.fits: no such file"),
        (["-t", "gaussian:fwhm=4", "--config", "nope.toml"], 1, "--config: nope.toml: no such"),
        (["-t", "gaussian:fwhm=4", "--cell-size", "256", "--spatial-model", "chebyshev1"], 1,
         "smaller than one cell"),
    ])
    def test_option_errors(self, science, tmp_path, capsys, monkeypatch, options, status,
                           message):
        monkeypatch.chdir(tmp_path)
        expect_error(["match", science, "-o", tmp_path / "out.fits", *options], capsys,
                     status, message, tmp_path)

    def test_missing_science(self, tmp_path, capsys):
        expect_error(["match", tmp_path / "none.fits", "-t", "gaussian:fwhm=4", "-o",
                      tmp_path / "o.fits"], capsys, 1, "none.fits: no such file", tmp_path)

    def test_unreadable_science(self, tmp_path, capsys):
        bad = tmp_path / "bad.fits"
        bad.write_text("this is not FITS")
        expect_error(["match", bad, "-t", "gaussian:fwhm=4", "-o", tmp_path / "o.fits"],
                     capsys, 1, "cannot read", tmp_path)

    def test_science_is_a_directory(self, tmp_path, capsys):
        (tmp_path / "dir.fits").mkdir()
        expect_error(["match", tmp_path / "dir.fits", "-t", "gaussian:fwhm=4", "-o",
                      tmp_path / "o.fits"], capsys, 1, "not a file", tmp_path)

    def test_cube_science(self, tmp_path, capsys):
        cube = tmp_path / "cube.fits"
        fits.PrimaryHDU(np.zeros((2, 64, 64), dtype=np.float32),
                        header=fits.Header({"BUNIT": "adu"})).writeto(cube)
        expect_error(["match", cube, "-t", "gaussian:fwhm=4", "-s", "gaussian:fwhm=3", "-o",
                      tmp_path / "o.fits"], capsys, 1, "must be 2-D", tmp_path)

    def test_no_source_psf(self, tmp_path, capsys):
        science = write_science(tmp_path / "s.fits", psf=False)
        expect_error(["match", science, "-t", "gaussian:fwhm=4", "-o", tmp_path / "o.fits"],
                     capsys, 1, "has no PSF (no PSFIMAGE extension): give its PSF with "
                     "--source-psf", tmp_path)

    def test_existing_output(self, science, tmp_path, capsys):
        output = tmp_path / "out.fits"
        output.write_text("keep me")
        expect_error(["match", science, "-t", "gaussian:fwhm=4", "-o", output], capsys, 1,
                     "out.fits already exists (use --overwrite to replace it)", tmp_path)

    def test_existing_weights(self, science, tmp_path, capsys):
        (tmp_path / "w.fits").write_text("keep me")
        expect_error(["match", science, "-t", "gaussian:fwhm=4", "-o", tmp_path / "o.fits",
                      "--weights", tmp_path / "w.fits"], capsys, 1, "w.fits already exists",
                     tmp_path)

    def test_existing_figure(self, science, tmp_path, capsys):
        pytest.importorskip("matplotlib")
        (tmp_path / "figs").mkdir()
        (tmp_path / "figs" / "basis.png").write_text("keep me")
        expect_error(["match", science, "-t", "gaussian:fwhm=4", "-o", tmp_path / "o.fits",
                      "--diagnostics", tmp_path / "figs"], capsys, 1,
                     "basis.png already exists", tmp_path)

    def test_output_is_input(self, science, tmp_path, capsys):
        expect_error(["match", science, "-t", "gaussian:fwhm=4", "-o", science, "--overwrite"],
                     capsys, 1, "is the input file", tmp_path)

    def test_same_file_twice(self, science, tmp_path, capsys):
        expect_error(["match", science, "-t", "gaussian:fwhm=4", "-o", tmp_path / "o.fits",
                      "--weights", tmp_path / "o.fits"], capsys, 1,
                     "the same file is given as two outputs", tmp_path)

    def test_weights_without_uncertainty(self, tmp_path, capsys):
        science = write_science(tmp_path / "s.fits", uncertainty=False)
        expect_error(["match", science, "-t", "gaussian:fwhm=4", "-o", tmp_path / "o.fits",
                      "--weights", tmp_path / "w.fits"], capsys, 1, "has no uncertainty",
                     tmp_path)

    @pytest.mark.parametrize(("name", "text", "message"), [
        ("c.toml", "kernel_size = 21\ncolour = 'red'\n", "unknown MatchConfig option(s) 'colour'"),
        ("c.toml", "kernel_size = \n", "--config"),
        ("c.json", '{"kernel_size": 4}', "kernel_size must be"),
        ("c.json", "[1, 2]", "must be a mapping"),
        ("c.yaml", "kernel_size: 21", "must end with .toml or .json"),
    ])
    def test_bad_config(self, science, tmp_path, capsys, name, text, message):
        config = tmp_path / name
        config.write_text(text)
        expect_error(["match", science, "-t", "gaussian:fwhm=4", "-o", tmp_path / "o.fits",
                      "--config", config], capsys, 1, message, tmp_path)

    def test_bad_psf_files(self, science, tmp_path, capsys):
        even = tmp_path / "even.fits"
        fits.PrimaryHDU(np.ones((10, 10))).writeto(even)
        expect_error(["match", science, "-t", even, "-o", tmp_path / "o.fits"], capsys, 1,
                     "must have odd dimensions", tmp_path)
        empty = tmp_path / "empty.fits"
        fits.PrimaryHDU().writeto(empty)
        expect_error(["match", science, "-t", empty, "-o", tmp_path / "o.fits"], capsys, 1,
                     "the file holds no image", tmp_path)
        cube = tmp_path / "cube.fits"
        fits.PrimaryHDU(np.ones((2, 11, 11))).writeto(cube)
        expect_error(["match", science, "-t", "gaussian:fwhm=4", "-s", cube, "-o",
                      tmp_path / "o.fits"], capsys, 1, "GriddedPSFModel.read", tmp_path)
        text = tmp_path / "psf.fits"
        text.write_text("not fits")
        expect_error(["match", science, "-t", text, "-o", tmp_path / "o.fits"], capsys, 1,
                     "cannot read as FITS", tmp_path)

    def test_kernel_too_large_for_the_stamps(self, science, tmp_path, capsys):
        config = tmp_path / "c.toml"
        config.write_text('auto_pad_psf = false\nkernel_basis = "alard-lupton"\n')
        expect_error(["match", science, "-t", "gaussian:fwhm=4", "-o", tmp_path / "o.fits",
                      "--config", config, "--kernel-size", "41"], capsys, 1,
                     "kernel_size 41 is too large", tmp_path)

    def test_no_matplotlib(self, science, tmp_path, capsys, monkeypatch):
        monkeypatch.setitem(sys.modules, "matplotlib", None)
        expect_error(["match", science, "-t", "gaussian:fwhm=4", "-o", tmp_path / "o.fits",
                      "--diagnostics", tmp_path / "figs"], capsys, 1,
                     "--diagnostics needs matplotlib", tmp_path)

    def test_debug_shows_the_traceback(self, science, tmp_path, capsys):
        (tmp_path / "o.fits").write_text("keep")
        status = main(["match", str(science), "-t", "gaussian:fwhm=4", "-o",
                       str(tmp_path / "o.fits"), "--debug"])
        err = capsys.readouterr().err
        assert status == 1
        assert "Traceback" in err
        assert err.splitlines()[-1].startswith("astropsfmatch: error: --output:")

    def test_unexpected_errors_are_one_line(self, science, tmp_path, capsys, monkeypatch):
        import astropsfmatch._workflow.matcher

        def broken(*args, **kwargs):
            raise ZeroDivisionError("oops")

        monkeypatch.setattr(astropsfmatch._workflow.matcher.ModelPsfMatcher, "match", broken)
        err = expect_error(["match", science, "-t", "gaussian:fwhm=4", "-o",
                            tmp_path / "o.fits"], capsys, 1, "ZeroDivisionError: oops",
                           tmp_path)
        assert "rerun with --debug" in err


class TestTopLevel:
    def test_version(self, capsys):
        status, out, _ = run(["--version"], capsys)
        assert status == 0
        assert out.strip() == f"astropsfmatch {__version__}"

    @pytest.mark.parametrize("argv", [["--help"], ["match", "--help"], ["demo", "--help"]])
    def test_help(self, capsys, argv):
        status, out, _ = run(argv, capsys)
        assert status == 0
        assert out.startswith("usage: astropsfmatch")

    def test_help_mentions_the_unit_default(self, capsys):
        _, out, _ = run(["match", "--help"], capsys)
        assert "else adu" in " ".join(out.split())

    @pytest.mark.parametrize(("argv", "message"), [
        ([], "choose a command: match or demo"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["demo", "--size", "100"], "must be an integer >= 128"),
        (["demo", "--seed", "-3"], "must be an integer >= 0"),
    ])
    def test_usage_errors(self, capsys, tmp_path, argv, message):
        expect_error(argv, capsys, 2, message, tmp_path)


class TestParsePsfSpec:
    def test_gaussian(self):
        model = parse_psf_spec("gaussian:fwhm=4.5")
        assert isinstance(model, CircularGaussianPRF)
        assert model.fwhm.value == 4.5
        sigma = parse_psf_spec("Gaussian: sigma = 2")
        assert sigma.fwhm.value == pytest.approx(2 * 2.354820045)

    def test_moffat_fwhm(self):
        model = parse_psf_spec("moffat:fwhm=4.5,beta=2.5")
        assert isinstance(model, MoffatPSF)
        alpha, beta = model.alpha.value, model.beta.value
        assert 2 * alpha * np.sqrt(2 ** (1 / beta) - 1) == pytest.approx(4.5)
        assert parse_psf_spec("moffat:alpha=2").beta.value == 2.5

    @pytest.mark.parametrize(("spec", "message"), [
        ("airy:radius=3", "unknown PSF kind 'airy'"),
        ("moffat:beta=3", "must give exactly one width: fwhm or alpha"),
        ("gaussian:fwhm", "bad parameter 'fwhm'"),
        ("gaussian:fwhm=inf", "fwhm must be a finite number > 0"),
    ])
    def test_errors(self, spec, message):
        with pytest.raises(ValueError, match=message):
            parse_psf_spec(spec)


def test_module_entry_point(tmp_path):
    """``python -m astropsfmatch`` in a fresh process: a match and an error."""
    science = write_science(tmp_path / "s.fits")
    output = tmp_path / "o.fits"
    env = {**os.environ, "MPLBACKEND": "Agg"}
    ok = subprocess.run([sys.executable, "-m", "astropsfmatch", "match", str(science), "-t",
                         "gaussian:fwhm=4.5", "-o", str(output), "--kernel-size", "11",
                         "--cell-size", "64"],
                        capture_output=True, text=True, check=False, timeout=300, env=env)
    assert ok.returncode == 0, ok.stderr
    assert ok.stderr == ""
    assert fits.getheader(output)["PSFMATCH"] is True
    again = subprocess.run([sys.executable, "-m", "astropsfmatch", "match", str(science), "-t",
                            "gaussian:fwhm=4.5", "-o", str(output)],
                           capture_output=True, text=True, check=False, timeout=300, env=env)
    assert again.returncode == 1
    assert again.stderr == ("astropsfmatch: error: --output: "
                            f"{output} already exists (use --overwrite to replace it)\n")


def test_first_run_says_it_compiles(tmp_path):
    # a fresh numba cache: the command says once, on stderr, that it compiles the kernels
    import os
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "astropsfmatch", "demo", "--size", "128",
                           "--no-figures", "--output", str(tmp_path / "demo")], env=env,
                          capture_output=True, text=True, timeout=900, check=True)
    assert done.stderr.count("compiling the numerical kernels (first run after") == 1, \
        done.stderr
    assert "compiling" not in done.stdout
