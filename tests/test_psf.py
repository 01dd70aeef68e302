"""Tests of astropsfmatch._adapters.psf: PSF coercion and unit-flux stamp realization."""

import re

import numpy as np
import pytest
from astropy.modeling import Fittable2DModel, Parameter, models
from astropy.nddata import NDData
from photutils.psf import (
    AiryDiskPSF,
    CircularGaussianPRF,
    CircularGaussianPSF,
    CircularGaussianSigmaPRF,
    GaussianPRF,
    GaussianPSF,
    GriddedPSFModel,
    ImagePSF,
    MoffatPSF,
    make_psf_model,
)

import astropsfmatch._adapters.psf as psf_module
from astropsfmatch._adapters.psf import PSFAdapter, as_psf, realize_psf

SIGMA_TO_FWHM = 2.0 * np.sqrt(2.0 * np.log(2.0))
TOL = 1e-6  # agreement with the model's own evaluation, relative to the peak


def offsets(size):
    return np.arange(size, dtype=float) - size // 2


def reference_stamp(model, x, y, size, *, x_name="x_0", y_name="y_0"):
    """The model's own evaluation around (x, y), centred there, unit sum."""
    model = model.copy()
    setattr(model, x_name, x)
    setattr(model, y_name, y)
    d = offsets(size)
    yy, xx = np.meshgrid(y + d, x + d, indexing="ij")
    values = np.asarray(model(xx, yy), dtype=float)
    return values / values.sum()


def assert_agrees(stamp, reference):
    assert stamp.shape == reference.shape
    assert np.max(np.abs(stamp - reference)) <= TOL * reference.max()


def centroid(stamp):
    d = offsets(stamp.shape[-1])
    total = stamp.sum()
    return (stamp.sum(axis=0) @ d) / total, (stamp.sum(axis=1) @ d) / total


def gaussian_image(size, sigma_x, sigma_y=None, *, theta=0.0, oversampling=1, centre=None):
    """A Gaussian image sampled on an (oversampled) grid, peak at ``centre``."""
    sigma_y = sigma_x if sigma_y is None else sigma_y
    centre = (size - 1) / 2 if centre is None else centre
    model = GaussianPSF(
        x_0=centre,
        y_0=centre,
        x_fwhm=SIGMA_TO_FWHM * sigma_x * oversampling,
        y_fwhm=SIGMA_TO_FWHM * sigma_y * oversampling,
        theta=theta,
    )
    yy, xx = np.mgrid[:size, :size]
    return model(xx, yy) * oversampling**2


GRID_X = (0.0, 511.5, 1023.0)
GRID_Y = (0.0, 600.0, 1023.0)  # uneven spacing on purpose


def make_gridded(*, oversampling=1, size=31, fill_value=0.0, grid_x=GRID_X, grid_y=GRID_Y):
    """A 3x3 grid over 1024x1024 whose Gaussian width goes from 1.5 to 2.5 px.

    The ePSFs fall to < 1e-7 of their peak at the data edge: there photutils'
    evaluation centred at x may drop the last sample, because ``(x + d) - x``
    can round to just beyond the data; stamps use the exact offsets.
    """
    data, xypos = [], []
    for x in grid_x:
        for y in grid_y:
            sigma_x = 1.5 + x / 1023.0
            sigma_y = 1.5 + y / 1023.0
            data.append(
                gaussian_image(size, sigma_x, sigma_y, theta=20.0 * x / 1023.0,
                               oversampling=oversampling)
            )
            xypos.append((x, y))
    nddata = NDData(np.array(data), meta={"grid_xypos": xypos, "oversampling": oversampling})
    return GriddedPSFModel(nddata, fill_value=fill_value)


ANALYTIC_MODELS = [
    CircularGaussianPSF(fwhm=3.0),
    CircularGaussianPRF(fwhm=3.0),
    CircularGaussianSigmaPRF(sigma=1.3),
    GaussianPSF(x_fwhm=3.0, y_fwhm=4.0, theta=30.0),
    GaussianPRF(x_fwhm=3.5, y_fwhm=2.5, theta=-10.0),
    MoffatPSF(alpha=2.0, beta=4.0),
    AiryDiskPSF(radius=1.5),
]

ASTROPY_MODELS = [
    (models.Gaussian2D(amplitude=3.0, x_stddev=1.6, y_stddev=2.0, theta=0.3), "x_mean", "y_mean"),
    (models.Moffat2D(amplitude=2.0, gamma=2.0, alpha=3.5), "x_0", "y_0"),
    (models.AiryDisk2D(amplitude=1.0, radius=2.0), "x_0", "y_0"),
]


class TestArrayPSF:
    def test_natural_size_and_unit_flux(self):
        data = gaussian_image(15, 2.0) * 7.0
        psf = as_psf(data)
        assert psf.kind == "array"
        assert psf.native_size([1.0, 2.0], [3.0, 4.0]) == 15
        stamp = realize_psf(data, 10.0, 20.0)
        assert stamp.dtype == np.float64
        np.testing.assert_allclose(stamp, data / data.sum(), rtol=0, atol=1e-15)
        assert stamp.sum() == pytest.approx(1.0, abs=1e-14)

    @pytest.mark.filterwarnings("ignore:.*a PSF array is centred on its centre pixel")
    def test_pad_and_clip_centred(self):
        data = np.arange(1.0, 26.0).reshape(5, 5)  # peak in a corner: warned, still realized
        padded = realize_psf(data, 0, 0, size=9)
        assert padded.shape == (9, 9)
        np.testing.assert_allclose(padded[2:7, 2:7], data / data.sum())
        assert np.all(padded[:2] == 0) and np.all(padded[:, 7:] == 0)
        clipped = realize_psf(data, 0, 0, size=3)
        np.testing.assert_allclose(clipped, data[1:4, 1:4] / data[1:4, 1:4].sum())

    def test_non_square_list_and_quantity(self):
        import astropy.units as u

        data = np.zeros((3, 7))
        data[1, 3] = 2.0
        data[1, 2] = data[1, 4] = 1.0
        psf = as_psf(data.tolist())
        assert psf.native_size(0, 0) == 7
        stamp = psf.stamps(0.0, 0.0, 7)[0]
        assert stamp[3, 3] == 0.5 and stamp[3, 2] == stamp[3, 4] == 0.25
        stamp_q = as_psf(data * u.one).stamps(0.0, 0.0, 7)[0]
        np.testing.assert_array_equal(stamp_q, stamp)

    def test_big_endian_and_read_only(self):
        data = gaussian_image(11, 1.5).astype(">f4")
        data.flags.writeable = False
        stamp = realize_psf(data, 0, 0)
        assert stamp.dtype == np.float64 and stamp.dtype.isnative
        assert stamp.sum() == pytest.approx(1.0)

    def test_stamps_many_positions(self):
        data = gaussian_image(9, 1.5)
        stamps = as_psf(data).stamps(np.arange(6.0).reshape(2, 3), 5.0, 11)
        assert stamps.shape == (6, 11, 11)
        stamps[0, 0, 0] = 99.0  # independent, writable copies
        assert stamps[1, 0, 0] == 0.0

    def test_fwhm(self):
        data = gaussian_image(41, 2.0)
        fwhm = as_psf(data).fwhm([0.0, 100.0], [0.0, 50.0])
        np.testing.assert_allclose(fwhm, SIGMA_TO_FWHM * 2.0, rtol=1e-6)


class TestAnalyticModels:
    @pytest.mark.parametrize("model", ANALYTIC_MODELS, ids=lambda m: type(m).__name__)
    @pytest.mark.parametrize("size", [None, 7, 31])
    def test_agrees_with_model(self, model, size):
        x, y = 123.4, 567.8
        stamp = realize_psf(model, x, y, size=size)
        size = stamp.shape[0] if size is None else size
        assert stamp.shape == (size, size)
        assert stamp.sum() == pytest.approx(1.0, abs=1e-12)
        assert_agrees(stamp, reference_stamp(model, x, y, size))

    @pytest.mark.parametrize("model", ANALYTIC_MODELS, ids=lambda m: type(m).__name__)
    def test_centred_and_same_everywhere(self, model):
        psf = as_psf(model)
        stamps = psf.stamps([0.0, 512.3, -40.0], [0.0, 1000.7, 3.0], 21)
        np.testing.assert_array_equal(stamps[0], stamps[1])
        np.testing.assert_array_equal(stamps[0], stamps[2])
        cx, cy = centroid(stamps[0])
        assert abs(cx) < 1e-12 and abs(cy) < 1e-12
        assert stamps[0].argmax() == 10 * 21 + 10

    @pytest.mark.parametrize("model", ANALYTIC_MODELS, ids=lambda m: type(m).__name__)
    def test_natural_size_holds_flux(self, model):
        """The natural size is the smallest odd size holding 99.9% of the flux."""
        size = as_psf(model).native_size(0.0, 0.0)
        assert size % 2 == 1 and size >= 3
        big = 1023
        d = offsets(big)
        yy, xx = np.meshgrid(d, d, indexing="ij")
        values = model.copy()
        values.x_0 = values.y_0 = 0.0
        values.flux = 1.0
        image = values(xx, yy)
        total = max(image.sum(), 1.0)  # photutils models integrate to flux = 1
        c = big // 2

        def held(s):
            return image[c - s // 2:c + s // 2 + 1, c - s // 2:c + s // 2 + 1].sum() / total

        assert held(size) >= 0.999
        if size > 3:
            assert held(size - 2) < 0.999

    def test_known_natural_sizes(self):
        assert realize_psf(CircularGaussianPSF(fwhm=3.0), 0, 0).shape == (9, 9)
        assert as_psf(MoffatPSF(alpha=2.65, beta=2.5)).native_size(0, 0) == 49

    def test_psf_size_overrides_natural_size(self):
        psf = as_psf(CircularGaussianPSF(fwhm=3.0), psf_size=31)
        assert psf.native_size(0, 0) == 31
        assert psf.stamps(0, 0, 31).shape == (1, 31, 31)

    @pytest.mark.parametrize(
        ("model", "x_name", "y_name"), ASTROPY_MODELS, ids=lambda m: type(m).__name__
    )
    def test_astropy_models(self, model, x_name, y_name):
        x, y = 40.2, 77.7
        psf = as_psf(model)
        assert psf.kind == "analytic"
        for size in (psf.native_size(x, y), 15):
            stamp = psf.stamps(x, y, size)[0]
            assert stamp.sum() == pytest.approx(1.0, abs=1e-12)
            assert_agrees(stamp, reference_stamp(model, x, y, size, x_name=x_name, y_name=y_name))
            cx, cy = centroid(stamp)
            assert abs(cx) < 1e-10 and abs(cy) < 1e-10

    def test_make_psf_model_output(self):
        base = models.Gaussian2D(x_stddev=1.7, y_stddev=1.7)
        wrapped = make_psf_model(base, x_name="x_mean", y_name="y_mean")
        x, y = 12.0, 13.5
        stamp = realize_psf(wrapped, x, y, size=13)
        reference = reference_stamp(wrapped, x, y, 13, x_name=wrapped.x_name,
                                    y_name=wrapped.y_name)
        assert_agrees(stamp, reference)
        # the same shape as the unwrapped model
        assert_agrees(stamp, realize_psf(base, x, y, size=13))

    def test_make_psf_model_without_names(self):
        """A model centred at 0 given positions by make_psf_model."""
        wrapped = make_psf_model(models.Gaussian2D(x_stddev=1.5, y_stddev=2.0))
        stamp = realize_psf(wrapped, 3.0, 4.0, size=15)
        assert_agrees(stamp, realize_psf(models.Gaussian2D(x_stddev=1.5, y_stddev=2.0), 0, 0, 15))

    def test_custom_fittable_model_with_x0_y0(self):
        class Ring(Fittable2DModel):
            amplitude = Parameter(default=1.0)
            x_0 = Parameter(default=0.0)
            y_0 = Parameter(default=0.0)

            @staticmethod
            def evaluate(x, y, amplitude, x_0, y_0):
                r2 = (x - x_0) ** 2 + (y - y_0) ** 2
                return amplitude * (1.0 + r2) * np.exp(-r2 / 4.0)

        model = Ring(amplitude=5.0, x_0=3.0, y_0=4.0)
        stamp = realize_psf(model, 100.0, 200.0, size=21)
        assert_agrees(stamp, reference_stamp(model, 100.0, 200.0, 21))

    def test_fwhm_of_gaussian(self):
        psf = as_psf(CircularGaussianPSF(fwhm=4.0), psf_size=41)
        np.testing.assert_allclose(psf.fwhm([0.0, 10.0], [0.0, 5.0]), 4.0, rtol=1e-6)
        # the pixel response adds 1/12 px^2 to the variance of a PRF
        prf = as_psf(CircularGaussianPRF(fwhm=4.0), psf_size=41)
        sigma = 4.0 / SIGMA_TO_FWHM
        expected = SIGMA_TO_FWHM * np.sqrt(sigma**2 + 1.0 / 12.0)
        np.testing.assert_allclose(prf.fwhm(0.0, 0.0), expected, rtol=1e-6)

    def test_fwhm_of_elliptical_gaussian(self):
        psf = as_psf(models.Gaussian2D(x_stddev=1.5, y_stddev=2.5, theta=0.4), psf_size=41)
        expected = SIGMA_TO_FWHM * np.sqrt((1.5**2 + 2.5**2) / 2)
        np.testing.assert_allclose(psf.fwhm(0.0, 0.0), expected, rtol=1e-5)


class TestImagePSF:
    @pytest.mark.parametrize("size", [None, 5, 35])
    def test_agrees_with_model(self, size):
        model = ImagePSF(gaussian_image(25, 2.0), flux=3.0, x_0=1.0, y_0=2.0)
        x, y = 300.25, 400.75
        stamp = realize_psf(model, x, y, size)
        assert stamp.shape[0] == (25 if size is None else size)
        assert_agrees(stamp, reference_stamp(model, x, y, stamp.shape[0]))
        cx, cy = centroid(stamp)
        assert abs(cx) < 1e-12 and abs(cy) < 1e-12

    def test_even_sized_data(self):
        """Origin at (11.5, 11.5): integer offsets fall between samples."""
        model = ImagePSF(gaussian_image(24, 2.0))
        psf = as_psf(model)
        assert psf.kind == "image"
        assert psf.native_size(0, 0) == 23
        assert_agrees(psf.stamps(5.0, 5.0, 23)[0], reference_stamp(model, 5.0, 5.0, 23))

    @pytest.mark.parametrize(("oversampling", "size", "native"), [(4, 101, 25), (2, 51, 25),
                                                                  (3, 61, 21)])
    def test_oversampled(self, oversampling, size, native):
        data = gaussian_image(size, 1.8, 2.2, oversampling=oversampling)
        model = ImagePSF(data, oversampling=oversampling)
        psf = as_psf(model)
        assert psf.native_size([0.0, 1.0], [0.0, 2.0]) == native
        stamp = psf.stamps(17.5, 3.25, native)[0]
        assert_agrees(stamp, reference_stamp(model, 17.5, 3.25, native))
        fwhm = psf.fwhm(0.0, 0.0)[0]
        assert fwhm == pytest.approx(SIGMA_TO_FWHM * np.sqrt((1.8**2 + 2.2**2) / 2), rel=1e-3)

    def test_oversampled_samples_are_data_nodes(self):
        """Every 4th sample from the centre: the spline reproduces the data exactly."""
        data = gaussian_image(101, 2.0, oversampling=4)
        stamp = realize_psf(ImagePSF(data, oversampling=4), 0.0, 0.0)
        nodes = data[2::4, 2::4]  # 50 - 4 * 12 = 2
        np.testing.assert_allclose(stamp, nodes / nodes.sum(), rtol=0, atol=1e-14)

    def test_anisotropic_oversampling_and_origin(self):
        data = gaussian_image(41, 2.0, oversampling=2, centre=22.0)
        model = ImagePSF(data, oversampling=(2, 2), origin=(22.0, 22.0))
        psf = as_psf(model)
        assert psf.native_size(0, 0) == 23  # reaches 22 / 2 = 11 px on one side
        assert_agrees(psf.stamps(0.0, 0.0, 23)[0], reference_stamp(model, 0.0, 0.0, 23))
        model = ImagePSF(gaussian_image(45, 2.0), oversampling=(1, 3))
        assert as_psf(model).native_size(0, 0) == 45


class TestGriddedPSF:
    @pytest.fixture(scope="class")
    @classmethod
    def gridded(cls):
        return make_gridded()

    @pytest.fixture(scope="class")
    @classmethod
    def gridded_oversampled(cls):
        return make_gridded(oversampling=4, size=101)

    def positions(self):
        rng = np.random.default_rng(42)
        grid = np.array([(x, y) for x in GRID_X for y in GRID_Y])
        between = np.column_stack([rng.uniform(0, 1023, 30), rng.uniform(0, 1023, 30)])
        outside = np.array([(-200.0, 100.0), (1500.0, -30.0), (300.0, 2000.0), (-5.0, -5.0)])
        return np.vstack([grid, between, [(255.75, 300.0), (767.25, 811.5)], outside])

    @pytest.mark.parametrize("fixture", ["gridded", "gridded_oversampled"])
    @pytest.mark.parametrize("size", [None, 9, 33])
    def test_agrees_with_photutils(self, request, fixture, size):
        model = request.getfixturevalue(fixture)
        psf = as_psf(model)
        assert psf.kind == "gridded"
        xy = self.positions()
        size = psf.native_size(xy[:, 0], xy[:, 1]) if size is None else size
        stamps = psf.stamps(xy[:, 0], xy[:, 1], size)
        assert stamps.shape == (len(xy), size, size)
        np.testing.assert_allclose(stamps.sum(axis=(1, 2)), 1.0, rtol=0, atol=1e-12)
        for (x, y), stamp in zip(xy, stamps, strict=True):
            assert_agrees(stamp, reference_stamp(model, x, y, size))

    def test_native_size(self, gridded, gridded_oversampled):
        assert as_psf(gridded).native_size([0.0, 500.0], [0.0, 10.0]) == 31
        assert as_psf(gridded_oversampled).native_size(0.0, 0.0) == 25
        # even-sized ePSFs, origin 24.5: reaches 24.5 / 2 = 12.25 px
        assert as_psf(make_gridded(oversampling=2, size=50)).native_size(0.0, 0.0) == 25

    def test_width_varies_across_field(self, gridded):
        psf = as_psf(gridded)
        x = np.array([0.0, 511.5, 1023.0, 0.0, 1023.0])
        y = np.array([0.0, 600.0, 1023.0, 1023.0, 0.0])
        fwhm = psf.fwhm(x, y)
        sigma_x, sigma_y = 1.5 + x / 1023.0, 1.5 + y / 1023.0
        expected = SIGMA_TO_FWHM * np.sqrt((sigma_x**2 + sigma_y**2) / 2)
        np.testing.assert_allclose(fwhm, expected, rtol=1e-4)
        # bilinear in between: halfway between two grid points
        mid = psf.stamps(255.75, 0.0, 25)[0]
        ends = psf.stamps([0.0, 511.5], [0.0, 0.0], 25)
        # (up to the small difference of the two raw ePSF sums)
        np.testing.assert_allclose(mid, ends.mean(axis=0), rtol=0, atol=1e-9 * mid.max())

    def test_centred(self, gridded):
        stamps = as_psf(gridded).stamps([0.0, 1023.0, 400.0], [0.0, 1023.0, 900.0], 25)
        for stamp in stamps:
            cx, cy = centroid(stamp)
            assert abs(cx) < 1e-10 and abs(cy) < 1e-10

    def test_no_per_position_photutils_evaluation(self, gridded, monkeypatch):
        def forbidden(*args, **kwargs):
            raise AssertionError("GriddedPSFModel.evaluate called")

        monkeypatch.setattr(GriddedPSFModel, "evaluate", forbidden)
        monkeypatch.setattr(GriddedPSFModel, "_calc_model_values", forbidden)
        rng = np.random.default_rng(0)
        x, y = rng.uniform(0, 1023, 1156), rng.uniform(0, 1023, 1156)
        stamps = as_psf(gridded).stamps(x, y, 25)
        assert stamps.shape == (1156, 25, 25)

    def test_oversampled_templates_are_data_nodes(self, gridded_oversampled):
        """The spline reproduces the ePSF data at every 4th sample from the centre."""
        psf = as_psf(gridded_oversampled)
        index = int(np.flatnonzero((gridded_oversampled.grid_xypos == (0.0, 0.0)).all(axis=1))[0])
        nodes = gridded_oversampled.data[index][2::4, 2::4]
        np.testing.assert_allclose(psf.stamps(0.0, 0.0, 25)[0], nodes / nodes.sum(), rtol=0,
                                   atol=1e-14)

    def test_grid_point_stamp_is_epsf_data(self, gridded):
        """At a grid point the natural stamp is that ePSF, edge samples included."""
        psf = as_psf(gridded)
        for index, (x, y) in enumerate(gridded.grid_xypos):
            data = gridded.data[index]
            np.testing.assert_allclose(psf.stamps(x, y, 31)[0], data / data.sum(), rtol=0,
                                       atol=1e-15)

    def test_single_epsf(self):
        data = gaussian_image(25, 2.0)[np.newaxis]
        model = GriddedPSFModel(NDData(data, meta={"grid_xypos": [(10.0, 10.0)],
                                                   "oversampling": 1}))
        stamps = as_psf(model).stamps([0.0, 900.0], [0.0, 300.0], 25)
        for x, y, stamp in zip([0.0, 900.0], [0.0, 300.0], stamps, strict=True):
            assert_agrees(stamp, reference_stamp(model, x, y, 25))

    def test_fill_value_none(self):
        model = make_gridded(fill_value=None)
        psf = as_psf(model)
        for x, y in [(100.0, 200.0), (700.0, 1100.0)]:
            assert_agrees(psf.stamps(x, y, 25)[0], reference_stamp(model, x, y, 25))


class TestErrors:
    def test_not_model_nor_array(self):
        with pytest.raises(TypeError, match=r"source_psf must be a photutils PSF model.*str"):
            as_psf("gaussian")
        with pytest.raises(TypeError, match=r"target_psf must be .*NoneType"):
            as_psf(None, name="target_psf")
        with pytest.raises(TypeError, match=r"model must be .*dict"):
            realize_psf({"fwhm": 3}, 0, 0)

    def test_array_not_numeric(self):
        with pytest.raises(TypeError, match=r"source_psf must be a 2-D array of real numbers.*<U"):
            as_psf(np.array([["a", "b", "c"]] * 3))
        with pytest.raises(TypeError, match=r"real numbers, got dtype complex128"):
            as_psf(np.ones((3, 3), dtype=complex))
        with pytest.raises(TypeError, match=r"2-D array of real numbers, got list"):
            as_psf([[1.0, 2.0, 3.0], [1.0]])

    @pytest.mark.parametrize("shape", [(5,), (3, 3, 3), ()])
    def test_array_not_2d(self, shape):
        expected = f"source_psf must be a 2-D array, got {len(shape)}-D with shape {shape}"
        with pytest.raises(ValueError, match=re.escape(expected)):
            as_psf(np.ones(shape))

    @pytest.mark.parametrize("shape", [(4, 4), (5, 4), (4, 5)])
    def test_array_even(self, shape):
        with pytest.raises(ValueError, match=r"target_psf must have odd dimensions.*"
                                             + re.escape(str(shape))):
            as_psf(np.ones(shape), name="target_psf")

    @pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
    def test_array_non_finite(self, bad):
        data = np.ones((5, 5))
        data[1, 2] = bad
        with pytest.raises(ValueError, match=r"source_psf must contain only finite values, "
                                             r"got 1 non-finite of 25"):
            as_psf(data)

    @pytest.mark.parametrize("fill", [0.0, -1.0])
    def test_array_non_positive_sum(self, fill):
        with pytest.raises(ValueError, match=r"source_psf must have a positive sum, got -?\d"):
            as_psf(np.full((5, 5), fill))

    @pytest.mark.filterwarnings("ignore:.*a PSF array is centred on its centre pixel")
    def test_array_clipped_to_non_positive_sum(self):
        data = -np.ones((5, 5))
        data[0, 0] = 100.0
        with pytest.raises(ValueError, match=r"model gives a realized 3x3 stamp with "
                                             r"non-positive sum \(-9\.0\)"):
            realize_psf(data, 0, 0, size=3)

    def test_model_without_position_parameters(self):
        with pytest.raises(ValueError, match=r"source_psf must have position parameters.*Const2D"
                                             r".*make_psf_model"):
            as_psf(models.Const2D(1.0))
        compound = models.Gaussian2D() + models.Gaussian2D(x_stddev=3, y_stddev=3)
        with pytest.raises(ValueError, match=r"position parameters.*x_mean_0"):
            as_psf(compound)

    def test_model_not_2d(self):
        with pytest.raises(TypeError, match=r"source_psf must be a 2-D model.*Gaussian1D with 1 "
                                            r"input"):
            as_psf(models.Gaussian1D())

    def test_model_set(self):
        model = models.Gaussian2D(amplitude=[1.0, 1.0], x_mean=[0.0, 0.0], y_mean=[0.0, 0.0],
                                  x_stddev=[1.0, 2.0], y_stddev=[1.0, 2.0], theta=[0.0, 0.0],
                                  n_models=2)
        with pytest.raises(ValueError, match=r"source_psf must be a single model, got a set of 2"):
            as_psf(model)

    def test_make_psf_model_failing(self, monkeypatch):
        def failing(*args, **kwargs):
            msg = "'x_mean' parameter name not found in the input model"
            raise ValueError(msg)

        monkeypatch.setattr(psf_module, "make_psf_model", failing)
        with pytest.raises(ValueError, match=r"source_psf \(Gaussian2D\) could not be made a PSF "
                                             r"model with photutils.psf.make_psf_model: 'x_mean'"):
            as_psf(models.Gaussian2D())

    def test_model_evaluation_failing(self):
        class Broken(Fittable2DModel):
            x_0 = Parameter(default=0.0)
            y_0 = Parameter(default=0.0)

            @staticmethod
            def evaluate(x, y, x_0, y_0):
                msg = "no data loaded"
                raise RuntimeError(msg)

        with pytest.raises(ValueError, match=r"source_psf could not be evaluated as a 2-D PSF "
                                             r"model: no data loaded"):
            as_psf(Broken())

    @staticmethod
    def _custom(function):
        class Custom(Fittable2DModel):
            x_0 = Parameter(default=0.0)
            y_0 = Parameter(default=0.0)

            @staticmethod
            def evaluate(x, y, x_0, y_0):
                return function((x - x_0) ** 2 + (y - y_0) ** 2)

        return Custom()

    def test_model_non_finite(self):
        model = self._custom(lambda r2: np.log(4.0 - r2))  # NaN beyond r = 2
        with pytest.raises(ValueError, match=r"source_psf gives non-finite values when realized "
                                             r"on a 15x15 stamp"):
            as_psf(model)
        with pytest.raises(ValueError, match=r"source_psf gives a non-finite realized 9x9 stamp"):
            as_psf(model, psf_size=9)
        with pytest.raises(ValueError, match=r"model gives non-finite values when realized"):
            realize_psf(CircularGaussianPSF(fwhm=np.nan), 0, 0, size=5)

    def test_model_non_positive_sum(self):
        model = self._custom(lambda r2: -np.exp(-r2))
        with pytest.raises(ValueError, match=r"source_psf has a non-positive sum \(-3\.1.*\) when "
                                             r"realized on a 15x15 stamp"):
            as_psf(model)
        with pytest.raises(ValueError, match=r"target_psf gives a realized 5x5 stamp with "
                                             r"non-positive sum"):
            as_psf(model, name="target_psf", psf_size=5)

    def test_image_psf_non_positive_sum(self):
        with pytest.raises(ValueError, match=r"source_psf gives a realized 9x9 stamp with "
                                             r"non-positive sum \(0\.0\)"):
            as_psf(ImagePSF(np.zeros((9, 9))))

    def test_gridded_bad_epsf(self):
        data = np.array([gaussian_image(9, 1.5)] * 4)
        data[3] *= -1.0
        meta = {"grid_xypos": [(0, 0), (100, 0), (0, 100), (100, 100)], "oversampling": 1}
        with pytest.raises(ValueError, match=r"source_psf has grid ePSF 3 at \(x, y\) = "
                                             r"\(100\.0, 100\.0\) whose realized stamp"):
            as_psf(GriddedPSFModel(NDData(data, meta=meta)))

    @pytest.mark.parametrize(("size", "error"), [(4, ValueError), (0, ValueError),
                                                 (-3, ValueError), (5.0, TypeError),
                                                 (True, TypeError), ("9", TypeError)])
    def test_bad_size(self, size, error):
        psf = as_psf(np.ones((3, 3)))
        with pytest.raises(error, match=r"size must be an odd integer >= 1, got"):
            psf.stamps(0.0, 0.0, size)
        with pytest.raises(error, match=r"size must be an odd integer >= 1"):
            realize_psf(np.ones((3, 3)), 0.0, 0.0, size)

    @pytest.mark.parametrize(("psf_size", "error"), [(1, ValueError), (8, ValueError),
                                                     (9.0, TypeError)])
    def test_bad_psf_size(self, psf_size, error):
        with pytest.raises(error, match=rf"psf_size must be an odd integer >= 3, got {psf_size}"):
            as_psf(CircularGaussianPSF(), psf_size=psf_size)

    def test_bad_positions(self):
        psf = as_psf(np.ones((3, 3)))
        with pytest.raises(ValueError, match=r"x and y must be finite"):
            psf.stamps([0.0, np.nan], [0.0, 1.0], 3)
        with pytest.raises(ValueError, match=r"x and y must be finite"):
            psf.fwhm(0.0, np.inf)
        with pytest.raises(ValueError, match=r"broadcastable shapes, got \(2,\) and \(3,\)"):
            psf.native_size([0.0, 1.0], [0.0, 1.0, 2.0])
        with pytest.raises(TypeError, match=r"x and y must be real numbers"):
            psf.stamps("a", 0.0, 3)
        with pytest.raises(ValueError, match=r"y must be a finite real number, got nan"):
            realize_psf(np.ones((3, 3)), 0.0, np.nan)
        with pytest.raises(ValueError, match=r"x must be a finite real number, got \[1\.0, 2\.0\]"):
            realize_psf(np.ones((3, 3)), [1.0, 2.0], 0.0)
        with pytest.raises(TypeError, match=r"x must be a finite real number, got 'a'"):
            realize_psf(np.ones((3, 3)), "a", 0.0)


class TestDoesNotChangeInput:
    def test_array(self):
        data = gaussian_image(11, 2.0) * 5.0
        data[0, 0] = 0.05  # an asymmetric array, still peaked on its centre pixel
        original = data.copy()
        psf = as_psf(data)
        psf.stamps([0.0, 3.0], [0.0, 4.0], 7)
        psf.stamps(0.0, 0.0, 15)[0][:] = 1e9
        psf.fwhm(0.0, 0.0)
        np.testing.assert_array_equal(data, original)
        assert psf.model is data
        data[5, 5] = 1e6  # later changes to the caller's array do not leak in
        np.testing.assert_array_equal(psf.stamps(0, 0, 11)[0], original / original.sum())

    @pytest.mark.parametrize(
        "model",
        [
            CircularGaussianPSF(flux=10.0, x_0=3.0, y_0=4.0, fwhm=2.5),
            MoffatPSF(flux=2.0, x_0=-1.0, y_0=7.0, alpha=2.0, beta=3.0),
            models.Gaussian2D(amplitude=4.0, x_mean=5.0, y_mean=6.0, x_stddev=1.5, y_stddev=2.0),
            ImagePSF(gaussian_image(25, 2.0), flux=3.0, x_0=5.0, y_0=7.0),
        ],
        ids=lambda m: type(m).__name__,
    )
    def test_model(self, model):
        params = model.parameters.copy()
        data = model.data.copy() if hasattr(model, "data") else None
        psf = as_psf(model)
        psf.stamps([0.0, 100.0], [0.0, 50.0], 15)
        psf.fwhm(1.0, 2.0)
        realize_psf(model, 1.0, 2.0)
        np.testing.assert_array_equal(model.parameters, params)
        if data is not None:
            np.testing.assert_array_equal(model.data, data)
        assert psf.model is model

    def test_gridded(self):
        model = make_gridded()
        model.x_0, model.y_0, model.flux = 3.0, 4.0, 5.0
        data, xypos = model.data.copy(), model.grid_xypos.copy()
        psf = as_psf(model)
        psf.stamps([0.0, 100.0], [0.0, 50.0], 15)
        psf.fwhm(1.0, 2.0)
        np.testing.assert_array_equal(model.data, data)
        np.testing.assert_array_equal(model.grid_xypos, xypos)
        np.testing.assert_array_equal(model.parameters, [5.0, 3.0, 4.0])
        assert model._interpolator == {}  # photutils' own spline cache untouched


class TestAsPSF:
    def test_idempotent(self):
        psf = as_psf(CircularGaussianPSF(fwhm=2.0))
        assert isinstance(psf, PSFAdapter)
        assert as_psf(psf) is psf
        assert "source_psf" in repr(psf) and "CircularGaussianPSF" in repr(psf)

    def test_psf_size_ignored_for_image_models(self):
        assert as_psf(np.ones((5, 5)), psf_size=9).native_size(0, 0) == 5
        assert as_psf(ImagePSF(np.ones((7, 7))), psf_size=9).native_size(0, 0) == 7

    def test_public_api(self):
        assert psf_module.__all__ == ["realize_psf"]
