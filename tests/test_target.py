"""Tests of astropsfmatch._workflow.target: the common target PSF of a set of exposures."""

import numpy as np
import pytest
from astropy.nddata import CCDData, NDData
from photutils.psf import (
    CircularGaussianPRF,
    CircularGaussianPSF,
    GaussianPRF,
    GaussianPSF,
    GriddedPSFModel,
    MoffatPSF,
)

from astropsfmatch._adapters.psf import as_psf, realize_psf
from astropsfmatch._workflow.target import CommonTarget, common_target_psf

SIGMA_TO_FWHM = 2.0 * np.sqrt(2.0 * np.log(2.0))


def moments(stamp):
    """(Ixx, Iyy, Ixy) of a stamp, about its centroid (written independently of the module)."""
    size = stamp.shape[0]
    yy, xx = np.mgrid[:size, :size] - size // 2
    total = stamp.sum()
    cx, cy = (stamp * xx).sum() / total, (stamp * yy).sum() / total
    ixx = (stamp * (xx - cx) ** 2).sum() / total
    iyy = (stamp * (yy - cy) ** 2).sum() / total
    ixy = (stamp * (xx - cx) * (yy - cy)).sum() / total
    return ixx, iyy, ixy


def eigenvalues(stamp):
    ixx, iyy, ixy = moments(stamp)
    return np.linalg.eigvalsh(np.array([[ixx, ixy], [ixy, iyy]]))


def gridded_model(shape, law, *, size=25, theta_law=None, grid=3):
    """GriddedPSFModel over ``shape``: elliptical Gaussians whose widths follow ``law(u, v)``."""
    ny, nx = shape
    xs = np.linspace(0, nx - 1, grid)
    ys = np.linspace(0, ny - 1, grid)
    yy, xx = np.mgrid[:size, :size]
    data, xypos = [], []
    for y in ys:
        for x in xs:
            u, v = x / (nx - 1), y / (ny - 1)
            fx, fy = law(u, v)
            theta = 0.0 if theta_law is None else theta_law(u, v)
            model = GaussianPSF(x_fwhm=fx, y_fwhm=fy, theta=theta, x_0=size // 2, y_0=size // 2)
            data.append(model(xx, yy))
            xypos.append((x, y))
    return GriddedPSFModel(NDData(np.array(data), meta={"grid_xypos": xypos, "oversampling": 1}))


def target_stamp(target):
    psf = as_psf(target.psf)
    return realize_psf(target.psf, 0.0, 0.0, size=psf.native_size(0.0, 0.0))


class TestConstantInputs:
    def test_gaussian_target(self):
        psfs = [CircularGaussianPSF(fwhm=f) for f in (2.5, 3.5, 3.0)]
        target = common_target_psf(psfs)
        assert isinstance(target, CommonTarget)
        assert isinstance(target.psf, CircularGaussianPRF)
        assert target.profile == "gaussian"
        assert target.beta is None
        assert target.margin == 1.05
        assert target.limiting_exposure == 1
        # moment FWHMs of well-sampled Gaussians are their FWHMs
        np.testing.assert_allclose(target.major_fwhm, [2.5, 3.5, 3.0], rtol=2e-3)
        np.testing.assert_allclose(target.fwhm_range[:, 0], target.fwhm_range[:, 1])
        np.testing.assert_allclose(target.fwhm_range[:, 1], target.major_fwhm)
        assert target.required_fwhm == pytest.approx(target.major_fwhm.max())
        assert target.fwhm == pytest.approx(1.05 * target.required_fwhm)
        assert target.psf.fwhm.value == pytest.approx(target.fwhm)
        assert target.n_exposures == 3
        np.testing.assert_array_equal(target.n_positions, [1, 1, 1])

    def test_moffat_target(self):
        psfs = [CircularGaussianPSF(fwhm=3.0), GaussianPSF(x_fwhm=2.5, y_fwhm=3.6, theta=40.0)]
        target = common_target_psf(psfs, profile="moffat", beta=3.0, margin=1.1)
        assert isinstance(target.psf, MoffatPSF)
        assert target.profile == "moffat"
        assert target.beta == 3.0
        assert target.psf.beta.value == 3.0
        # its core is margin times broader than the broadest input, along every direction
        assert target.psf.fwhm == pytest.approx(target.fwhm)
        assert target.fwhm >= 1.1 * target.required_fwhm * (1 - 1e-12)
        np.testing.assert_allclose(target.required_fwhm, 3.6, rtol=2e-3)

    def test_margin_one_gives_the_broadest_input(self):
        target = common_target_psf([CircularGaussianPSF(fwhm=3.0)], margin=1)
        assert target.fwhm == pytest.approx(target.required_fwhm)

    def test_arrays_and_images(self):
        stamp = realize_psf(CircularGaussianPSF(fwhm=4.0), 0.0, 0.0, size=25)
        image = CCDData(np.zeros((64, 80)), unit="adu", psf=stamp)
        target = common_target_psf([stamp, image, CircularGaussianPSF(fwhm=3.0)])
        np.testing.assert_allclose(target.major_fwhm[:2], 4.0, rtol=2e-3)
        assert target.limiting_exposure in (0, 1)

    def test_repr(self):
        target = common_target_psf([CircularGaussianPSF(fwhm=3.0)], profile="moffat")
        text = repr(target)
        assert text.startswith("<CommonTarget moffat fwhm=")
        assert "beta=2.5" in text
        assert "from 1 exposure(s)" in text


class TestNeverNarrower:
    """The target's moment matrix exceeds each input's along every direction."""

    def assert_broader(self, target, stamps):
        target_min = eigenvalues(target_stamp(target))[0]
        for stamp in stamps:
            assert eigenvalues(stamp)[1] * target.margin**2 <= target_min * (1 + 1e-9)

    @pytest.mark.parametrize("profile", ["gaussian", "moffat"])
    def test_elliptical_constant_inputs(self, profile):
        psfs = [GaussianPSF(x_fwhm=2.0, y_fwhm=4.2, theta=35.0),
                GaussianPRF(x_fwhm=3.9, y_fwhm=2.2, theta=-70.0),
                CircularGaussianPSF(fwhm=3.4)]
        target = common_target_psf(psfs, profile=profile)
        # the round-average FWHM alone would be far too small for the first two
        assert target.fwhm_range[:, 1].max() < 0.85 * target.required_fwhm
        assert target.fwhm >= 1.05 * 4.2 * (1 - 2e-3)
        stamps = [realize_psf(p, 0.0, 0.0, size=as_psf(p).native_size(0.0, 0.0)) for p in psfs]
        self.assert_broader(target, stamps)

    def test_spatially_varying_elliptical(self):
        shape = (200, 300)
        gridded = [
            gridded_model(shape, lambda u, v: (2.5 + u, 2.5 + 0.5 * v),
                          theta_law=lambda u, v: 60.0 * u),
            gridded_model(shape, lambda u, v: (3.2 - u, 2.4 + 0.3 * u * v),
                          theta_law=lambda u, v: -30.0 * v),
        ]
        target = common_target_psf(gridded, shapes=shape, n_samples=2)
        # dense sampling over the fields finds nothing broader than what was used
        yy, xx = np.mgrid[0:200:9.5, 0:300:13.0]
        stamps = []
        for model in gridded:
            psf = as_psf(model)
            stamps.extend(psf.stamps(xx.ravel(), yy.ravel(), psf.native_size(0.0, 0.0)))
        largest = max(eigenvalues(s)[1] for s in stamps)
        assert SIGMA_TO_FWHM * np.sqrt(largest) <= target.required_fwhm * (1 + 1e-9)
        self.assert_broader(target, stamps)
        # the broadest PSF is at a corner of exposure 0 (x_fwhm 3.5, rotated by 60 degrees)
        assert target.limiting_exposure == 0
        assert target.limiting_position == (299.0, 199.0)

    def test_gridded_sampled_over_the_field_only(self):
        model = gridded_model((256, 256), lambda u, v: (2.4 + 0.8 * u, 2.4 + 0.8 * u))
        full = common_target_psf([model], shapes=(256, 256))
        no_shape = common_target_psf([model])  # the ePSF grid
        left_half = common_target_psf([model], shapes=(256, 128))
        assert no_shape.required_fwhm == pytest.approx(full.required_fwhm)
        np.testing.assert_allclose(full.required_fwhm, 3.2, rtol=2e-3)
        assert left_half.required_fwhm < full.required_fwhm - 0.3
        at_edge = as_psf(model).stamps(np.array([127.0]), np.array([0.0]), 25)[0]
        assert left_half.required_fwhm == pytest.approx(
            SIGMA_TO_FWHM * np.sqrt(eigenvalues(at_edge)[1]))

    def test_shapes_per_exposure(self):
        model = gridded_model((256, 256), lambda u, v: (2.4 + 0.8 * u, 2.4 + 0.8 * u))
        target = common_target_psf([model, model], shapes=[(256, 64), None])
        assert target.major_fwhm[0] < target.major_fwhm[1]
        assert target.limiting_exposure == 1


class TestDoesNotChangeInput:
    def test_models_unchanged(self):
        model = GaussianPSF(x_fwhm=2.0, y_fwhm=3.0, x_0=10.0, y_0=20.0, flux=5.0)
        gridded = gridded_model((100, 100), lambda u, v: (2.5, 3.0))
        before = gridded.data.copy()
        common_target_psf([model, gridded], shapes=[None, (100, 100)])
        assert (model.x_0.value, model.y_0.value, model.flux.value) == (10.0, 20.0, 5.0)
        np.testing.assert_array_equal(gridded.data, before)


class TestErrors:
    def test_empty(self):
        with pytest.raises(ValueError, match="psfs must contain at least one PSF"):
            common_target_psf([])

    @pytest.mark.parametrize("psfs", [CircularGaussianPSF(fwhm=3.0), np.ones((5, 5)), "psf.fits",
                                      CCDData(np.ones((5, 5)), unit="adu")])
    def test_not_a_sequence(self, psfs):
        with pytest.raises(TypeError, match="psfs must be a sequence"):
            common_target_psf(psfs)

    def test_bad_psf(self):
        with pytest.raises(TypeError, match=r"psfs\[1\] must be a photutils PSF model"):
            common_target_psf([CircularGaussianPSF(fwhm=3.0), "not a psf"])

    def test_image_without_psf(self):
        with pytest.raises(ValueError, match=r"psfs\[0\] is an image without a PSF"):
            common_target_psf([CCDData(np.ones((5, 5)), unit="adu")])

    @pytest.mark.parametrize("profile", ["airy", 3, None])
    def test_profile(self, profile):
        with pytest.raises(ValueError, match="profile must be one of 'gaussian', 'moffat'"):
            common_target_psf([CircularGaussianPSF(fwhm=3.0)], profile=profile)

    @pytest.mark.parametrize("margin", [0.99, 0.0, -1.0, np.nan, np.inf, "1.1", True])
    def test_margin(self, margin):
        with pytest.raises(ValueError, match="margin must be a finite number >= 1"):
            common_target_psf([CircularGaussianPSF(fwhm=3.0)], margin=margin)

    @pytest.mark.parametrize("beta", [1.0, 0.5, np.nan, 2e6])
    def test_beta(self, beta):
        with pytest.raises(ValueError, match="beta must be a finite number > 1"):
            common_target_psf([CircularGaussianPSF(fwhm=3.0)], profile="moffat", beta=beta)

    def test_beta_ignored_for_gaussian(self):
        target = common_target_psf([CircularGaussianPSF(fwhm=3.0)], beta=0.5)
        assert target.beta is None

    @pytest.mark.parametrize("n_samples", [1, 0, 2.5, True, 1001])
    def test_n_samples(self, n_samples):
        with pytest.raises(ValueError, match=r"n_samples must be an integer in \[2, 1000\]"):
            common_target_psf([CircularGaussianPSF(fwhm=3.0)], n_samples=n_samples)

    def test_shapes_length(self):
        with pytest.raises(ValueError, match="got 3 shapes for 2 PSFs"):
            common_target_psf([CircularGaussianPSF(fwhm=3.0)] * 2,
                              shapes=[(10, 10), (10, 10), (10, 10)])

    @pytest.mark.parametrize("shape", [(10,), (10, 0), (10.5, 10), "ab", (10, 10, 10)])
    def test_bad_shape(self, shape):
        with pytest.raises(ValueError, match=r"shapes\[0\] must be an image shape \(ny, nx\)"):
            common_target_psf([CircularGaussianPSF(fwhm=3.0)], shapes=[shape])


class TestCommonTargetAsTarget:
    """A CommonTarget is accepted wherever a target PSF is (what users pass first)."""

    def test_match_psf_and_match_many(self):
        from astropsfmatch import match_many, match_psf

        source = CircularGaussianPRF(fwhm=3.0)
        target = common_target_psf([source, CircularGaussianPRF(fwhm=3.6)])
        image = np.zeros((96, 96))
        by_object = match_psf(image, target, source_psf=source)
        by_psf = match_psf(image, target.psf, source_psf=source)
        np.testing.assert_array_equal(by_object.kernel.evaluate(10, 20),
                                      by_psf.kernel.evaluate(10, 20))
        assert by_object.matched.meta["PSFMTPSF"] == by_psf.matched.meta["PSFMTPSF"]
        assert by_object.matched.meta["PSFMTPSF"].startswith("CircularGaussianPRF")
        many = match_many([CCDData(image, unit="adu")], target, source_psfs=[source])
        assert len(many) == 1

    def test_an_image_is_not_taken_for_its_psf(self):
        image = NDData(np.zeros((9, 9)), psf=np.ones((3, 3)))
        with pytest.raises(TypeError, match="target_psf must be a photutils PSF model"):
            as_psf(image, name="target_psf")

    def test_an_object_holding_no_psf(self):
        class Holder:
            psf = "a string"

        with pytest.raises(TypeError, match="got an object of type Holder"):
            as_psf(Holder(), name="target_psf")
