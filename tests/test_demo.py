import re

import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import CCDData, StdDevUncertainty
from photutils.psf import CircularGaussianPRF, GriddedPSFModel

from astropsfmatch import SpatialKernel, match_psf
from astropsfmatch._adapters.psf import as_psf
from astropsfmatch.cli import main
from astropsfmatch.demo import demo_cell_size, demo_psf_fwhm, make_demo_data, measure_fwhm
from astropsfmatch.diagnostics import DIAGNOSTIC_FILES

FITS_FILES = ["kernel.fits", "matched.fits", "psf.fits", "science.fits", "weights.fits"]


@pytest.fixture(scope="module")
def demo():
    return make_demo_data(size=256, seed=4)


class TestMakeDemoData:
    def test_exposure(self, demo):
        ccd = demo.ccd
        assert isinstance(ccd, CCDData)
        assert ccd.shape == (256, 256) and ccd.data.dtype == np.float32
        assert ccd.unit == "adu"
        assert isinstance(ccd.uncertainty, StdDevUncertainty)
        assert np.all(ccd.uncertainty.array >= np.sqrt(200.0 + 25.0) - 1e-3)
        assert ccd.psf is None
        assert ccd.wcs.wcs.ctype[0] == "RA---TAN" and ccd.wcs.celestial.naxis == 2
        np.testing.assert_allclose(ccd.wcs.proj_plane_pixel_scales()[0].to_value("arcsec"),
                                   0.2)
        assert ccd.meta["OBJECT"] == "astropsfmatch demo"

    def test_bad_pixels(self, demo):
        mask = demo.ccd.mask
        assert 12 <= mask.sum() < 200
        assert np.all(demo.ccd.data[mask] == 6e4)
        assert mask[int(0.2 * 256):int(0.45 * 256), int(0.3 * 256)].all()  # the bad column

    def test_noise_matches_the_uncertainty(self, demo):
        # far from stars the data are pure noise with the stated sigma
        x, y = demo.stars["x"], demo.stars["y"]
        yy, xx = np.mgrid[:256, :256]
        far = np.ones((256, 256), dtype=bool)
        for xs, ys in zip(x, y, strict=True):
            far &= np.hypot(xx - xs, yy - ys) > 15
        far &= ~demo.ccd.mask
        pulls = demo.ccd.data[far] / demo.ccd.uncertainty.array[far]
        assert far.sum() > 10000
        assert abs(pulls.mean()) < 0.05 and abs(pulls.std() - 1) < 0.05

    def test_psf_varies_across_the_field(self, demo):
        assert isinstance(demo.psf_model, GriddedPSFModel)
        assert len(demo.psf_model.grid_xypos) == 9
        fwhm = as_psf(demo.psf_model).fwhm([0.0, 255.0, 0.0, 255.0], [0.0, 0.0, 255.0, 255.0])
        assert fwhm[0] < fwhm[1] < fwhm[3] and fwhm[0] < fwhm[2] < fwhm[3]
        assert fwhm[3] - fwhm[0] > 0.8

    def test_target_broader_than_every_psf(self, demo):
        assert isinstance(demo.target_psf, CircularGaussianPRF)
        broadest = max(demo_psf_fwhm(255, 255, 256)[:2])
        assert demo.target_psf.fwhm.value == pytest.approx(np.ceil(1.15 * broadest * 10) / 10)

    def test_stars_and_probes(self, demo):
        assert len(demo.stars) == 20 + 9
        x, y = demo.probes
        assert len(x) == 9
        assert np.all((x > 30) & (x < 226) & (y > 30) & (y < 226))
        # probes are isolated
        others = ~np.asarray(demo.stars["probe"])
        d = np.hypot(demo.stars["x"][others][:, None] - x, demo.stars["y"][others][:, None] - y)
        assert d.min() > 24

    def test_probe_stars_have_the_model_fwhm(self, demo):
        x, y = demo.probes
        measured = measure_fwhm(demo.ccd.data, x, y, mask=demo.ccd.mask)
        model = as_psf(demo.psf_model).fwhm(x, y)
        np.testing.assert_allclose(measured, model, atol=0.25)

    def test_reproducible(self, demo):
        again = make_demo_data(size=256, seed=4)
        np.testing.assert_array_equal(again.ccd.data, demo.ccd.data)
        other = make_demo_data(size=256, seed=5)
        assert not np.array_equal(other.ccd.data, demo.ccd.data)

    def test_star_count_option(self):
        assert len(make_demo_data(size=128, n_stars=0).stars) == 9

    @pytest.mark.parametrize(("options", "message"), [
        ({"size": 64}, "size must be an integer >= 128"),
        ({"size": 200.0}, "size must be an integer >= 128"),
        ({"size": True}, "size must be an integer >= 128"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"n_stars": -5}, "n_stars must be an integer >= 0"),
    ])
    def test_errors(self, options, message):
        with pytest.raises(ValueError, match=message):
            make_demo_data(**options)


class TestHelpers:
    def test_psf_fwhm(self):
        assert demo_psf_fwhm(0, 0, 1024) == (2.4, 2.4, 0.0)
        assert demo_psf_fwhm(1023, 1023, 1024) == (3.7, 3.6, 0.0)
        assert demo_psf_fwhm(1023, 0, 1024) == (3.4, 2.8, 30.0)

    def test_cell_size(self):
        assert demo_cell_size(1024) == 128
        assert demo_cell_size(256) == 64
        assert demo_cell_size(128) == 32

    def test_measure_fwhm(self):
        yy, xx = np.mgrid[:64, :64]
        image = CircularGaussianPRF(fwhm=3.7, flux=1e4, x_0=30.2, y_0=33.7)(xx, yy)
        np.testing.assert_allclose(measure_fwhm(image, [30], [34]), [3.7], rtol=1e-3)

    def test_measure_fwhm_failure_is_nan(self):
        assert np.isnan(measure_fwhm(np.full((32, 32), np.nan), [16], [16])).all()


def test_matching_makes_every_star_the_target_width(demo):
    result = match_psf(demo.ccd, demo.target_psf, source_psf=demo.psf_model,
                       cell_size=demo_cell_size(256))
    x, y = demo.probes
    target = demo.target_psf.fwhm.value
    before = measure_fwhm(demo.ccd.data, x, y, mask=demo.ccd.mask)
    after = measure_fwhm(result.matched.data, x, y, mask=result.matched.mask, fwhm=target)
    assert np.all(before < target - 0.7)
    np.testing.assert_allclose(after, target, atol=0.06)


class TestDemoCommand:
    def test_writes_everything_and_prints_a_summary(self, tmp_path, capsys, quick_figures):
        folder = tmp_path / "demo"
        assert main(["demo", "--output", str(folder), "--size", "128", "--seed", "1"]) == 0
        out, err = capsys.readouterr()
        # stderr: only one progress line per figure
        assert err.splitlines() == [
            line for line in err.splitlines()
            if re.fullmatch(r"astropsfmatch: figure [1-8]/8: \w+\.png \(\d+\.\d s\)", line)]
        assert len(err.splitlines()) == 8
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            FITS_FILES + list(DIAGNOSTIC_FILES.values()))
        assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # no stray temporary files
        lines = out.splitlines()
        assert lines[0].startswith("astropsfmatch ")
        assert " demo: 128x128 synthetic exposure, " in lines[0]
        assert "star FWHM (px, circular Gaussian fit) of the 9 bright probe stars" in out
        assert "kernel sum 1.000000, spatial condition number" in out
        assert "(up to 4.5e+12 the float64 solve keeps three significant digits)" in out
        assert lines[4].startswith("  quality: held-out residual max ")
        assert lines[4].endswith("(passed: limit 0.01)")
        assert lines[-1].startswith(f"  figures: 8 PNG files in {folder}/ (start with heldout")
        assert lines[-2] == (f"  wrote 5 FITS files to {folder}/: science.fits, psf.fits, "
                             "matched.fits, weights.fits, kernel.fits")
        assert "time (s): synthetic data" in out and "convolution" in out
        table = lines[lines.index("       x       y   before   after") + 1:][:9]
        after = np.array([float(line.split()[3]) for line in table])
        before = np.array([float(line.split()[2]) for line in table])
        np.testing.assert_allclose(after, 4.3, atol=0.08)
        assert before.max() < 3.7

        matched = CCDData.read(folder / "matched.fits")
        assert matched.shape == (128, 128) and matched.psf is not None
        assert fits.getheader(folder / "matched.fits")["PSFMATCH"] is True
        science = CCDData.read(folder / "science.fits")
        assert science.mask.any() and science.uncertainty is not None
        assert SpatialKernel.read(folder / "kernel.fits").kernel_sum == pytest.approx(1.0)
        assert fits.getdata(folder / "weights.fits").shape == (128, 128)

        # a second run does not replace anything without --overwrite
        before_bytes = {p.name: p.read_bytes() for p in folder.iterdir()}
        assert main(["demo", "--output", str(folder), "--size", "128", "--seed", "2"]) == 1
        out, err = capsys.readouterr()
        assert out == ""
        assert err == (f"astropsfmatch: error: --output: {folder / 'science.fits'} already "
                       "exists (use --overwrite to replace it)\n")
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before_bytes

    def test_overwrite_without_figures(self, tmp_path, capsys):
        folder = tmp_path / "demo"
        folder.mkdir()
        (folder / "matched.fits").write_text("old")
        (folder / "notes.txt").write_text("mine")
        assert main(["demo", "-o", str(folder), "--size", "128", "--no-figures",
                     "--overwrite"]) == 0
        out = capsys.readouterr().out
        assert "wrote 5 FITS files" in out and "figures:" not in out
        assert sorted(p.name for p in folder.iterdir()) == sorted(FITS_FILES + ["notes.txt"])
        assert fits.getheader(folder / "matched.fits")["PSFMATCH"] is True

    def test_verbose_says_what_was_chosen(self, tmp_path, capsys, caplog):
        caplog.set_level("DEBUG", logger="astropy.astropsfmatch")
        assert main(["demo", "-o", str(tmp_path), "--size", "128", "--no-figures", "-v"]) == 0
        messages = [r.getMessage() for r in caplog.records if r.levelname == "INFO"]
        assert messages[0].startswith("made a 128x128 synthetic exposure with ")
        assert any(m.startswith("half-maximum FWHM: source ") for m in messages)
        assert any(m.startswith("basis: alard-lupton, 27 functions of ") for m in messages)
        assert any(m.startswith("match stages (s): basis choice ") for m in messages)
        # without -v the command sets the level to WARNING: no INFO message
        caplog.clear()
        assert main(["demo", "-o", str(tmp_path), "--size", "128", "--no-figures",
                     "--overwrite"]) == 0
        assert not [r for r in caplog.records if r.levelname == "INFO"]
        assert capsys.readouterr().err == ""

    def test_output_is_a_file(self, tmp_path, capsys):
        target = tmp_path / "file"
        target.write_text("x")
        assert main(["demo", "-o", str(target)]) == 1
        err = capsys.readouterr().err
        assert err == f"astropsfmatch: error: --output: {target} exists and is not a directory\n"

    def test_without_matplotlib(self, tmp_path, capsys, monkeypatch):
        monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
        assert main(["demo", "-o", str(tmp_path), "--size", "128"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("matplotlib is not installed: skipping the diagnostic figures")
        assert sorted(p.name for p in tmp_path.iterdir()) == FITS_FILES
