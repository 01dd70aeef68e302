"""Tests of the exact spatially varying convolution (astropsfmatch._engine.convolve)."""

import dataclasses
import threading

import numpy as np
import pytest
from naive import (
    naive_dilate_box,
    naive_spatially_varying_convolution,
    naive_weighted_sum_columns,
    naive_weighted_sum_rows,
)

from astropsfmatch._engine import convolve as convolve_module
from astropsfmatch._engine._numba.convolution import (
    dilate_box,
    weighted_sum_columns,
    weighted_sum_rows,
)
from astropsfmatch._engine.basis import make_alard_lupton_basis
from astropsfmatch._engine.convolve import (
    ConvolvedImage,
    _squared_monomials,
    convolve_spatially_varying,
)
from astropsfmatch._engine.kernel import SpatialKernel
from astropsfmatch._engine.spatial import n_spatial_terms


def make_kernel(order=2, model="chebyshev1", *, size=11, bbox=(-10.0, 90.0, -20.0, 80.0),
                amplitude=0.2, seed=0, symmetric=False):
    """An Alard-Lupton kernel whose shape changes strongly across ``bbox``.

    The first basis coefficient is constant (kernel sum 1 everywhere), the
    others get random spatial coefficients of size ``amplitude``.
    """
    rng = np.random.default_rng(seed)
    if symmetric:  # even Gaussians only: no first moments
        basis = make_alard_lupton_basis(size, [0.8, 1.6, 2.6], [0, 0, 0])
    else:
        basis = make_alard_lupton_basis(size, [0.7, 1.5, 2.5], [2, 1, 1])
    coefficients = amplitude * rng.normal(size=(len(basis), n_spatial_terms(order)))
    coefficients[0] = 0.0
    coefficients[0, 0] = 1.0
    return SpatialKernel(basis, coefficients, spatial_model=model, spatial_order=order,
                         bbox=bbox)


def make_bilinear_kernel(nodes_x, nodes_y, *, size=11, amplitude=0.3, seed=0):
    """A bilinear node kernel whose node kernels differ strongly (kernel sum 1 everywhere)."""
    rng = np.random.default_rng(seed)
    basis = make_alard_lupton_basis(size, [0.7, 1.5, 2.5], [2, 1, 1])
    n_nodes = len(nodes_x) * len(nodes_y)
    coefficients = amplitude * rng.normal(size=(len(basis), n_nodes))
    coefficients[0] = 1.0
    return SpatialKernel(basis, coefficients, spatial_model="bilinear",
                         nodes=(np.asarray(nodes_x, float), np.asarray(nodes_y, float)))


#: Node lines that exercise every kind of cell: beyond the image (constant kernel), a
#: fraction of a pixel apart, irregular spacing, outside the image.
BILINEAR_NODES = {
    "irregular": ([-3.0, 17.5, 40.2, 41.0, 90.0], [8.0, 30.0, 30.4, 52.7]),
    "one column": ([30.0], [-10.0, 20.0, 45.5, 80.0]),
    "one node": ([33.3], [21.0]),
    "inside only": ([12.0, 50.0], [15.0, 40.0]),
}


def relative_error(result, reference):
    """Largest error over the valid pixels, relative to the largest |reference|."""
    valid = np.isfinite(reference)
    return np.max(np.abs(result[valid] - reference[valid])) / np.max(np.abs(reference[valid]))


@pytest.fixture
def image(rng):
    """A 64 x 72 image (positive, structured) and its variance."""
    data = 10.0 + rng.normal(size=(64, 72))
    data[20:30, 40:45] += 50.0
    variance = 1.0 + rng.random((64, 72))
    return data, variance


_NAIVE_CACHE = {}


def naive_cached(key, data, kernel, variance, normalize=True):
    if key not in _NAIVE_CACHE:
        _NAIVE_CACHE[key] = naive_spatially_varying_convolution(data, kernel, variance,
                                                                normalize=normalize)
    return _NAIVE_CACHE[key]


class TestExact:
    """The output equals a brute-force convolution with kernel.evaluate(x, y) at every pixel."""

    @pytest.mark.parametrize("dtype", [np.float64, np.float32])
    @pytest.mark.parametrize("model", ["chebyshev1", "polynomial"])
    @pytest.mark.parametrize("order", [0, 1, 2])
    def test_matches_brute_force(self, image, order, model, dtype):
        data, variance = image
        kernel = make_kernel(order, model)
        reference, reference_variance = naive_cached(("image", order, model), data, kernel,
                                                     variance)
        result = convolve_spatially_varying(data.astype(dtype), kernel,
                                            variance=variance.astype(dtype),
                                            variance_tolerance=0.0)
        assert result.variance_error == 0.0
        assert result.data.dtype == dtype
        assert result.variance.dtype == dtype
        tolerance = 1e-5 if dtype == np.float32 else 1e-12
        assert relative_error(result.data, reference) < tolerance
        assert relative_error(result.variance, reference_variance) < tolerance
        np.testing.assert_array_equal(result.mask, np.isnan(reference))

    @pytest.mark.parametrize("fft_length", [24, 40])
    def test_many_tiles(self, image, monkeypatch, fft_length):
        # small tiles: many of them, partial ones at the far edges
        monkeypatch.setattr(convolve_module, "_FFT_LENGTH", fft_length)
        data, variance = image
        kernel = make_kernel(2, size=7)
        reference, reference_variance = naive_cached(("tiles", 7), data, kernel, variance)
        for dtype, tolerance in ((np.float64, 1e-12), (np.float32, 1e-5)):
            result = convolve_spatially_varying(data.astype(dtype), kernel,
                                                variance=variance.astype(dtype),
                                                variance_tolerance=0.0)
            assert relative_error(result.data, reference) < tolerance
            assert relative_error(result.variance, reference_variance) < tolerance

    def test_200x200_kernel_21(self, rng):
        # the acceptance test: 200 x 200 image, 21 x 21 kernel, spatial order 2
        data = 100.0 + 10.0 * rng.normal(size=(200, 200))
        variance = data + rng.random((200, 200))
        kernel = make_kernel(2, size=21, bbox=(-64.0, 264.0, -64.0, 264.0), amplitude=0.3)
        reference, reference_variance = naive_spatially_varying_convolution(data, kernel,
                                                                            variance)
        for dtype, tolerance in ((np.float64, 1e-12), (np.float32, 1e-5)):
            result = convolve_spatially_varying(data.astype(dtype), kernel,
                                                variance=variance.astype(dtype))
            assert relative_error(result.data, reference) < tolerance
            assert relative_error(result.variance, reference_variance) < tolerance

    def test_not_normalized(self, image):
        data, variance = image
        kernel = make_kernel(1)
        scaled = SpatialKernel(kernel.basis, 2.5 * kernel.coefficients,
                               spatial_model=kernel.spatial_model, spatial_order=1,
                               bbox=kernel.bbox)
        reference, reference_variance = naive_spatially_varying_convolution(
            data, scaled, variance, normalize=False)
        result = convolve_spatially_varying(data, scaled, variance=variance, normalize=False)
        assert relative_error(result.data, reference) < 1e-12
        assert relative_error(result.variance, reference_variance) < 1e-12
        normalized = convolve_spatially_varying(data, scaled, variance=variance)
        np.testing.assert_allclose(normalized.data, result.data / 2.5, rtol=1e-12)
        np.testing.assert_allclose(normalized.variance, result.variance / 2.5**2, rtol=1e-12)

    def test_arbitrary_basis(self, rng):
        # a basis with no structure at all (e.g. principal components), kernel sum not 1
        basis = rng.normal(size=(4, 5, 5))
        coefficients = rng.normal(size=(4, 3))
        kernel = SpatialKernel(basis, coefficients, spatial_model="polynomial",
                               spatial_order=1, bbox=(0.0, 40.0, 0.0, 30.0))
        data = rng.normal(size=(31, 41))
        variance = rng.random((31, 41))
        reference, reference_variance = naive_spatially_varying_convolution(
            data, kernel, variance, normalize=False)
        result = convolve_spatially_varying(data, kernel, variance=variance, normalize=False)
        assert relative_error(result.data, reference) < 1e-12
        assert relative_error(result.variance, reference_variance) < 1e-12

    def test_image_outside_bbox(self, image):
        # coordinates beyond [-1, 1] are extrapolated like kernel.evaluate does
        data, variance = image
        kernel = make_kernel(2, bbox=(10.0, 30.0, 5.0, 25.0), amplitude=0.05)
        reference, reference_variance = naive_spatially_varying_convolution(data, kernel,
                                                                            variance)
        result = convolve_spatially_varying(data, kernel, variance=variance)
        assert relative_error(result.data, reference) < 1e-12
        assert relative_error(result.variance, reference_variance) < 1e-12

    def test_x_is_column(self):
        # a kernel that is a delta shifted right by one pixel on the right half of the
        # image only: the column (x) index selects it
        size = 3
        basis = np.zeros((2, size, size))
        basis[0, 1, 1] = 1.0  # identity
        basis[1, 1, 2] = 1.0  # out[y, x] = data[y, x - 1]
        basis[1, 1, 1] = -1.0
        coefficients = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])  # weight (1 + xn) / 2
        kernel = SpatialKernel(basis, coefficients, spatial_model="polynomial",
                               spatial_order=1, bbox=(0.0, 20.0, 0.0, 10.0))
        data = np.arange(11 * 21, dtype=float).reshape(11, 21)
        result = convolve_spatially_varying(data, kernel, normalize=False)
        y, x = 5, 20 - 1  # near the right edge xn ~ 0.9
        weight = (1 + kernel.normalize_xy(x, y)[0]) / 2
        expected = (1 - weight) * data[y, x] + weight * data[y, x - 1]
        assert result.data[y, x] == pytest.approx(expected, rel=1e-12)
        assert result.data[y, 1] == pytest.approx(
            data[y, 1] - (1 + kernel.normalize_xy(1, y)[0]) / 2, rel=1e-12)

    def test_image_size_of_kernel(self, rng):
        kernel = make_kernel(1, size=7)
        data = rng.normal(size=(7, 9))
        reference, _ = naive_spatially_varying_convolution(data, kernel)
        result = convolve_spatially_varying(data, kernel)
        assert (~result.mask).sum() == 3
        assert relative_error(result.data, reference) < 1e-12

    def test_zero_kernel(self, rng):
        basis = np.zeros((1, 3, 3))
        kernel = SpatialKernel(basis, [[0.0]], spatial_model="polynomial", spatial_order=0,
                               bbox=(0.0, 9.0, 0.0, 9.0))
        result = convolve_spatially_varying(rng.normal(size=(10, 10)), kernel,
                                            variance=np.ones((10, 10)), normalize=False)
        assert np.all(result.data[~result.mask] == 0)
        assert np.all(result.variance[~result.mask] == 0)

    @pytest.mark.parametrize("workers", [1, 2, 3])
    def test_workers_give_identical_results(self, image, monkeypatch, workers):
        monkeypatch.setattr(convolve_module, "_FFT_LENGTH", 32)
        data, variance = image
        kernel = make_kernel(2, size=7)
        serial = convolve_spatially_varying(data, kernel, variance=variance, workers=1)
        result = convolve_spatially_varying(data, kernel, variance=variance, workers=workers)
        np.testing.assert_array_equal(result.data, serial.data)
        np.testing.assert_array_equal(result.variance, serial.variance)

    def test_thread_safe(self, image):
        data, variance = image
        kernel = make_kernel(2)
        expected = convolve_spatially_varying(data, kernel, variance=variance)
        results = [None] * 4

        def work(i):
            results[i] = convolve_spatially_varying(data, kernel, variance=variance)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for result in results:
            np.testing.assert_array_equal(result.data, expected.data)
            np.testing.assert_array_equal(result.variance, expected.variance)


class TestBilinear:
    """The bilinear node model (one piece per cell) against the brute-force convolution."""

    @pytest.mark.parametrize("dtype", [np.float64, np.float32])
    @pytest.mark.parametrize("nodes", list(BILINEAR_NODES))
    def test_matches_brute_force(self, image, nodes, dtype):
        data, variance = image
        kernel = make_bilinear_kernel(*BILINEAR_NODES[nodes])
        reference, reference_variance = naive_cached(("bilinear", nodes), data, kernel,
                                                     variance)
        result = convolve_spatially_varying(data.astype(dtype), kernel,
                                            variance=variance.astype(dtype),
                                            variance_tolerance=0.0)
        assert result.variance_error == 0.0
        assert result.data.dtype == dtype
        assert result.variance.dtype == dtype
        tolerance = 1e-5 if dtype == np.float32 else 1e-12
        assert relative_error(result.data, reference) < tolerance
        assert relative_error(result.variance, reference_variance) < tolerance
        np.testing.assert_array_equal(result.mask, np.isnan(reference))
        alone = convolve_spatially_varying(data.astype(dtype), kernel)  # data only
        np.testing.assert_array_equal(alone.data, result.data)

    @pytest.mark.parametrize("fft_length", [24, 40])
    def test_cells_cut_into_tiles(self, image, monkeypatch, fft_length):
        # tiles smaller than the cells: several per cell, partial ones at the cell edges
        monkeypatch.setattr(convolve_module, "_FFT_LENGTH", fft_length)
        data, variance = image
        kernel = make_bilinear_kernel(*BILINEAR_NODES["irregular"], size=7)
        reference, reference_variance = naive_cached(("bilinear tiles", 7), data, kernel,
                                                     variance)
        for dtype, tolerance in ((np.float64, 1e-12), (np.float32, 1e-5)):
            result = convolve_spatially_varying(data.astype(dtype), kernel,
                                                variance=variance.astype(dtype),
                                                variance_tolerance=0.0)
            assert relative_error(result.data, reference) < tolerance
            assert relative_error(result.variance, reference_variance) < tolerance

    def test_200x200_kernel_21(self, rng):
        # the acceptance test of the polynomial model, for the default bilinear model:
        # 128-pixel cells as the defaults make them, nodes on the image edges
        data = 100.0 + 10.0 * rng.normal(size=(200, 200))
        variance = data + rng.random((200, 200))
        kernel = make_bilinear_kernel([0.0, 64.0, 128.0, 199.0], [0.0, 100.0, 199.0],
                                      size=21, amplitude=0.1)
        reference, reference_variance = naive_spatially_varying_convolution(data, kernel,
                                                                            variance)
        for dtype, tolerance in ((np.float64, 1e-12), (np.float32, 1e-5)):
            result = convolve_spatially_varying(data.astype(dtype), kernel,
                                                variance=variance.astype(dtype),
                                                variance_tolerance=0.0)
            assert relative_error(result.data, reference) < tolerance
            assert relative_error(result.variance, reference_variance) < tolerance

    @pytest.mark.parametrize("workers", [1, 2, 3])
    def test_workers_give_identical_results(self, image, workers):
        data, variance = image
        kernel = make_bilinear_kernel(*BILINEAR_NODES["irregular"])
        serial = convolve_spatially_varying(data, kernel, variance=variance, workers=1)
        result = convolve_spatially_varying(data, kernel, variance=variance, workers=workers)
        np.testing.assert_array_equal(result.data, serial.data)
        np.testing.assert_array_equal(result.variance, serial.variance)

    def test_mask_footprint(self, image):
        data, variance = image
        kernel = make_bilinear_kernel(*BILINEAR_NODES["irregular"])
        half = kernel.kernel_size // 2
        clean = convolve_spatially_varying(data, kernel, variance=variance)
        mask = np.zeros(data.shape, dtype=bool)
        mask[30, 41] = True  # next to the node lines at x = 40.2 and 41
        result = convolve_spatially_varying(data, kernel, variance=variance, mask=mask)
        footprint = np.zeros(data.shape, dtype=bool)
        footprint[30 - half:30 + half + 1, 41 - half:41 + half + 1] = True
        np.testing.assert_array_equal(result.mask, clean.mask | footprint)
        outside = ~result.mask
        np.testing.assert_allclose(result.data[outside], clean.data[outside], rtol=1e-12)
        np.testing.assert_allclose(result.variance[outside], clean.variance[outside],
                                   rtol=1e-12)

    def test_flux_of_point_source_conserved(self):
        # as for the polynomial model: symmetric kernels whose width changes across the field
        rng = np.random.default_rng(3)
        basis = make_alard_lupton_basis(21, [0.8, 1.6, 2.6], [0, 0, 0])
        coefficients = 0.3 * rng.normal(size=(len(basis), 4))
        coefficients[0] = 1.0
        kernel = SpatialKernel(basis, coefficients, spatial_model="bilinear",
                               nodes=([-500.0, 600.0], [-500.0, 600.0]))
        data = np.zeros((101, 101), dtype=np.float32)
        data[37, 61] = 1000.0
        result = convolve_spatially_varying(data, kernel)
        assert np.nansum(result.data) == pytest.approx(1000.0, rel=1e-4)


def make_smooth_bilinear_kernel(nodes_x, nodes_y, *, size=11, spread=2e-3, rough_columns=0,
                                seed=0):
    """A bilinear node kernel whose node kernels differ by ~``spread`` (the node model of a
    slowly varying PSF), except the ``rough_columns`` last node columns, which differ
    strongly.
    """
    rng = np.random.default_rng(seed)
    basis = make_alard_lupton_basis(size, [0.7, 1.5, 2.5], [2, 1, 1])
    nx, ny = len(nodes_x), len(nodes_y)
    base = 0.3 * rng.normal(size=len(basis))
    coefficients = base[:, None] + spread * rng.normal(size=(len(basis), nx * ny))
    for column in range(nx - rough_columns, nx):
        coefficients[:, column::nx] += 0.3 * rng.normal(size=(len(basis), ny))
    coefficients[0] = 1.0
    return SpatialKernel(basis, coefficients, spatial_model="bilinear",
                         nodes=(np.asarray(nodes_x, float), np.asarray(nodes_y, float)))


class TestInterpolatedVariance:
    """Cells whose squared kernel is interpolated between the nodes, against brute force."""

    NODES = ([-3.0, 17.5, 40.2, 41.0, 70.0], [8.0, 30.0, 52.7])

    @pytest.fixture
    def fields(self, rng):
        """Data, a flat variance and one with a bright star (varies under the kernel)."""
        data = 10.0 + rng.normal(size=(64, 72))
        flat = np.full(data.shape, 2.5)
        star = 1.0 + rng.random(data.shape)
        star[30:33, 20:23] += 400.0
        return data, flat, star

    @staticmethod
    def bound(kernel, variance):
        """tolerance-free part of the bound: sum K**2 times the largest V under the kernel."""
        from scipy.ndimage import maximum_filter

        _, squares = naive_spatially_varying_convolution(np.zeros(variance.shape), kernel,
                                                         np.ones(variance.shape))
        return squares * maximum_filter(variance, size=kernel.kernel_size, mode="constant")

    @pytest.mark.parametrize(("tolerance", "spread"), [(1e-4, 2e-3), (1e-5, 5e-4)])
    def test_within_tolerance_and_never_below(self, fields, tolerance, spread):
        data, flat, star = fields
        kernel = make_smooth_bilinear_kernel(*self.NODES, spread=spread)
        for variance in (flat, star):
            _, exact = naive_spatially_varying_convolution(data, kernel, variance)
            result = convolve_spatially_varying(data, kernel, variance=variance,
                                                variance_tolerance=tolerance)
            assert 0.0 < result.variance_error <= tolerance
            valid = np.isfinite(exact)
            excess = result.variance[valid] - exact[valid]
            assert excess.min() >= -1e-12 * exact[valid].max()   # an over-estimate only
            assert np.all(excess <= result.variance_error * self.bound(kernel, variance)[valid]
                          * (1 + 1e-9))
            if variance is flat:
                assert np.max(excess / exact[valid]) <= result.variance_error * (1 + 1e-9)
                assert np.max(excess / exact[valid]) > 0.1 * result.variance_error
            # the data are exact whatever the variance does
            reference, _ = naive_spatially_varying_convolution(data, kernel)
            assert relative_error(result.data, reference) < 1e-12

    def test_float32(self, fields):
        data, _, star = fields
        kernel = make_smooth_bilinear_kernel(*self.NODES)
        _, exact = naive_spatially_varying_convolution(data, kernel, star)
        result = convolve_spatially_varying(data.astype(np.float32), kernel,
                                            variance=star.astype(np.float32))
        assert result.variance.dtype == np.float32
        assert 0.0 < result.variance_error <= 1e-4
        assert relative_error(result.variance, exact) < 1e-4 + 1e-5

    def test_rough_cells_stay_exact(self, fields):
        # strongly varying node kernels in the last node columns: those cells exceed the
        # tolerance and are propagated exactly, the others are interpolated
        data, flat, _ = fields
        kernel = make_smooth_bilinear_kernel(*self.NODES, rough_columns=1)
        _, exact = naive_spatially_varying_convolution(data, kernel, flat)
        result = convolve_spatially_varying(data, kernel, variance=flat)
        assert 0.0 < result.variance_error <= 1e-4
        half = kernel.kernel_size // 2
        right = np.s_[half:-half, 42:72 - half]    # cells between x = 41 and the rough column
        np.testing.assert_allclose(result.variance[right], exact[right], rtol=1e-12)
        left = np.s_[half:-half, half:17]
        assert np.max(result.variance[left] / exact[left] - 1) > 1e-7

    def test_zero_tolerance_is_exact(self, fields):
        data, _, star = fields
        kernel = make_smooth_bilinear_kernel(*self.NODES)
        _, exact = naive_spatially_varying_convolution(data, kernel, star)
        result = convolve_spatially_varying(data, kernel, variance=star, variance_tolerance=0)
        assert result.variance_error == 0.0
        assert relative_error(result.variance, exact) < 1e-12

    def test_error_bound_holds_between_grid_points(self, rng):
        # the per-cell bound is evaluated on a grid; at random points inside the cells the
        # ratio sum(sum_s w_s K_s**2 - K**2) / sum(K**2) stays below it
        kernel = make_smooth_bilinear_kernel([0.0, 30.0, 60.0], [0.0, 40.0])
        images = kernel.term_images / kernel.kernel_sum
        intervals_x = [(0, 30, 0, 1), (30, 60, 1, 2)]
        intervals_y = [(0, 40, 0, 1)]
        errors = convolve_module._interpolation_errors(images, 3, intervals_y, intervals_x)
        assert errors.shape == (1, 2)
        for column, (_, _, low, high) in enumerate(intervals_x):
            corners = [images[0 * 3 + low], images[0 * 3 + high],
                       images[1 * 3 + low], images[1 * 3 + high]]
            for u, v in rng.random((200, 2)):
                w = [(1 - u) * (1 - v), u * (1 - v), (1 - u) * v, u * v]
                k = sum(a * c for a, c in zip(w, corners, strict=True))
                excess = sum(a * c**2 for a, c in zip(w, corners, strict=True)) - k**2
                assert excess.min() >= -1e-15
                assert excess.sum() / np.sum(k**2) <= errors[0, column] * (1 + 1e-3)

    @pytest.mark.parametrize("bad", [-1e-4, np.nan, np.inf, "1e-4"])
    def test_bad_tolerance(self, fields, bad):
        data, flat, _ = fields
        kernel = make_smooth_bilinear_kernel(*self.NODES)
        with pytest.raises((ValueError, TypeError),
                           match=r"variance_tolerance must be a finite number >= 0"):
            convolve_spatially_varying(data, kernel, variance=flat, variance_tolerance=bad)


class TestPhysics:
    def test_flux_of_point_source_conserved(self):
        # the kernel width changes strongly across the field; flux is conserved
        kernel = make_kernel(2, size=21, bbox=(-500.0, 600.0, -500.0, 600.0),
                             amplitude=0.3, symmetric=True)
        data = np.zeros((101, 101), dtype=np.float32)
        data[37, 61] = 1000.0
        result = convolve_spatially_varying(data, kernel)
        assert np.nansum(result.data) == pytest.approx(1000.0, rel=1e-4)

    def test_flux_with_kernel_sum(self):
        kernel = make_kernel(0, size=11)
        scaled = SpatialKernel(kernel.basis, 3.0 * kernel.coefficients,
                               spatial_model="chebyshev1", spatial_order=0, bbox=kernel.bbox)
        data = np.zeros((51, 51))
        data[25, 25] = 7.0
        assert np.nansum(convolve_spatially_varying(data, scaled).data) == pytest.approx(7.0)
        assert np.nansum(convolve_spatially_varying(data, scaled, normalize=False).data) == (
            pytest.approx(21.0))

    def test_constant_variance(self):
        # a flat variance V gives V * sum(K(x, y)**2) / S**2 at each pixel
        kernel = make_kernel(2)
        variance = np.full((40, 50), 4.0)
        result = convolve_spatially_varying(np.zeros((40, 50)), kernel, variance=variance)
        for x, y in [(5, 5), (20, 30), (44, 34)]:
            expected = 4.0 * np.sum(kernel.evaluate(x, y) ** 2) / kernel.kernel_sum**2
            assert result.variance[y, x] == pytest.approx(expected, rel=1e-12)

    def test_no_variance_gives_none(self, image):
        result = convolve_spatially_varying(image[0], make_kernel(1))
        assert result.variance is None

    @pytest.mark.parametrize(("order", "n_terms"), [(0, 1), (1, 6), (2, 15), (3, 28)])
    def test_squared_monomials(self, order, n_terms, rng):
        kernel = make_kernel(order)
        exponents, images = kernel.monomial_kernels()
        exponents2, images2 = _squared_monomials(exponents, images)
        assert len(exponents2) == n_terms
        xn, yn = 0.3, -0.7
        squared = sum(xn**a * yn**b * image for (a, b), image in zip(exponents2, images2,
                                                                       strict=True))
        x, y = (np.array(kernel.bbox[0::2]) + np.array(kernel.bbox[1::2])) / 2 + np.array(
            [xn * (kernel.bbox[1] - kernel.bbox[0]), yn * (kernel.bbox[3] - kernel.bbox[2])]) / 2
        np.testing.assert_allclose(squared, kernel.evaluate(x, y) ** 2, atol=1e-15)


class TestMask:
    @pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
    @pytest.mark.parametrize("where", ["data", "variance"])
    def test_one_bad_pixel_changes_only_its_footprint(self, image, bad_value, where):
        data, variance = image
        kernel = make_kernel(2)
        half = kernel.kernel_size // 2
        clean = convolve_spatially_varying(data, kernel, variance=variance)
        y0, x0 = 30, 33
        inputs = {"data": data.copy(), "variance": variance.copy()}
        inputs[where][y0, x0] = bad_value
        result = convolve_spatially_varying(inputs["data"], kernel,
                                            variance=inputs["variance"])
        footprint = np.zeros(data.shape, dtype=bool)
        footprint[y0 - half:y0 + half + 1, x0 - half:x0 + half + 1] = True
        np.testing.assert_array_equal(result.mask, clean.mask | footprint)
        assert np.all(np.isnan(result.data[footprint]))
        assert np.all(np.isnan(result.variance[footprint]))
        outside = ~result.mask
        np.testing.assert_allclose(result.data[outside], clean.data[outside], rtol=1e-12)
        np.testing.assert_allclose(result.variance[outside], clean.variance[outside],
                                   rtol=1e-12)

    def test_masked_value_does_not_leak(self, image):
        # a huge value under the mask is zero-filled: no FFT ringing elsewhere
        data, variance = image
        kernel = make_kernel(2)
        clean = convolve_spatially_varying(data, kernel, variance=variance)
        data = data.copy()
        variance = variance.copy()
        data[10, 60] = 1e30
        variance[10, 60] = 1e30
        mask = np.zeros(data.shape, dtype=bool)
        mask[10, 60] = True
        result = convolve_spatially_varying(data, kernel, variance=variance, mask=mask)
        outside = ~result.mask
        assert result.mask.sum() > clean.mask.sum()
        np.testing.assert_allclose(result.data[outside], clean.data[outside], rtol=1e-12)
        np.testing.assert_allclose(result.variance[outside], clean.variance[outside],
                                   rtol=1e-12)

    def test_mask_propagation(self, rng):
        kernel = make_kernel(1, size=5)
        data = rng.normal(size=(40, 30)).astype(np.float32)
        mask = rng.random((40, 30)) < 0.01
        mask[0, 0] = True  # in the edge frame: its footprint reaches inside
        result = convolve_spatially_varying(data, kernel, mask=mask.astype(np.int16))
        expected = np.zeros_like(mask)
        naive_dilate_box(mask, 2, expected)
        expected[:2] = expected[-2:] = True
        expected[:, :2] = expected[:, -2:] = True
        np.testing.assert_array_equal(result.mask, expected)
        assert np.all(np.isnan(result.data[expected]))
        assert np.all(np.isfinite(result.data[~expected]))

    def test_edges_nan_and_masked(self, image):
        data, variance = image
        kernel = make_kernel(1, size=9)
        result = convolve_spatially_varying(data, kernel, variance=variance)
        assert result.mask.dtype == bool
        assert result.mask.shape == data.shape
        interior = np.zeros(data.shape, dtype=bool)
        interior[4:-4, 4:-4] = True
        np.testing.assert_array_equal(result.mask, ~interior)
        assert np.all(np.isnan(result.data[~interior]))
        assert np.all(np.isnan(result.variance[~interior]))
        assert np.all(np.isfinite(result.data[interior]))
        assert np.all(np.isfinite(result.variance[interior]))

    def test_everything_masked(self, image):
        data, variance = image
        result = convolve_spatially_varying(data, make_kernel(1), variance=variance,
                                            mask=np.ones(data.shape, dtype=bool))
        assert result.mask.all()
        assert np.isnan(result.data).all()
        assert np.isnan(result.variance).all()


class TestInputs:
    def test_big_endian(self, image):
        data, variance = image
        kernel = make_kernel(2)
        native = convolve_spatially_varying(data.astype(np.float32), kernel,
                                            variance=variance.astype(np.float32))
        result = convolve_spatially_varying(data.astype(">f4"), kernel,
                                            variance=variance.astype(">f8"))
        assert result.data.dtype == np.float32
        assert result.data.dtype.isnative
        np.testing.assert_array_equal(result.data, native.data)
        np.testing.assert_allclose(result.variance, native.variance, rtol=1e-6)

    def test_read_only_memory_map(self, image, tmp_path):
        # what a FITS file opened with memmap gives: big-endian, read-only
        data, variance = image
        kernel = make_kernel(2)
        path = tmp_path / "data.bin"
        data.astype(">f4").tofile(path)
        mapped = np.memmap(path, dtype=">f4", mode="r", shape=data.shape)
        assert not mapped.flags.writeable
        frozen = variance.astype(np.float32)
        frozen.flags.writeable = False
        result = convolve_spatially_varying(mapped, kernel, variance=frozen)
        expected = convolve_spatially_varying(data.astype(np.float32), kernel,
                                              variance=variance.astype(np.float32))
        np.testing.assert_array_equal(result.data, expected.data)
        np.testing.assert_array_equal(result.variance, expected.variance)
        del mapped

    def test_non_contiguous(self, rng):
        kernel = make_kernel(2)
        big = rng.normal(size=(120, 150))
        variance = rng.random((150, 120)).T  # Fortran order
        mask = rng.random((120, 300)) < 0.01
        data = big[::2, :]
        result = convolve_spatially_varying(data, kernel, variance=variance[::2],
                                            mask=mask[::2, ::2])
        expected = convolve_spatially_varying(np.ascontiguousarray(data), kernel,
                                              variance=np.ascontiguousarray(variance[::2]),
                                              mask=np.ascontiguousarray(mask[::2, ::2]))
        assert result.mask.sum() > expected.mask[:10].sum()
        np.testing.assert_array_equal(result.data, expected.data)
        np.testing.assert_array_equal(result.variance, expected.variance)
        np.testing.assert_array_equal(result.mask, expected.mask)

    def test_does_not_change_input(self, image):
        data, variance = image
        data = data.copy()
        data[5, 5] = np.nan
        variance = variance.copy()
        variance[50, 50] = np.inf
        mask = np.zeros(data.shape, dtype=bool)
        mask[30, 30] = True
        copies = data.copy(), variance.copy(), mask.copy()
        kernel = make_kernel(2)
        coefficients = kernel.coefficients.copy()
        convolve_spatially_varying(data, kernel, variance=variance, mask=mask)
        np.testing.assert_array_equal(data, copies[0])
        np.testing.assert_array_equal(variance, copies[1])
        np.testing.assert_array_equal(mask, copies[2])
        np.testing.assert_array_equal(kernel.coefficients, coefficients)

    @pytest.mark.parametrize(("dtype", "expected"), [
        (np.float32, np.float32), (np.float64, np.float64), (np.float16, np.float32),
        (np.int16, np.float64), (np.uint8, np.float64), (np.int64, np.float64),
        (bool, np.float64),
    ])
    def test_dtypes(self, dtype, expected):
        kernel = make_kernel(1, size=5)
        data = (np.arange(20 * 30).reshape(20, 30) % 7).astype(dtype)
        result = convolve_spatially_varying(data, kernel, variance=data)
        assert result.data.dtype == expected
        assert result.variance.dtype == expected
        reference, _ = naive_spatially_varying_convolution(data.astype(float), kernel)
        tolerance = 1e-5 if expected == np.float32 else 1e-12
        assert relative_error(result.data, reference) < tolerance

    def test_lists(self):
        kernel = make_kernel(0, size=3)
        result = convolve_spatially_varying([[1, 2, 3], [4, 5, 6], [7, 8, 9]], kernel)
        assert result.data.shape == (3, 3)
        assert np.isfinite(result.data[1, 1])


class TestResult:
    def test_frozen_dataclass(self, image):
        result = convolve_spatially_varying(image[0], make_kernel(0))
        assert isinstance(result, ConvolvedImage)
        assert [f.name for f in dataclasses.fields(result)] == ["data", "variance", "mask",
                                                             "variance_error"]
        with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign"):
            result.data = None


class TestErrors:
    def test_kernel_type(self, image):
        with pytest.raises(ValueError, match="kernel must be a SpatialKernel, got ndarray"):
            convolve_spatially_varying(image[0], np.ones((3, 3)))

    @pytest.mark.parametrize("shape", [(10,), (2, 10, 10), ()])
    def test_data_not_2d(self, shape):
        with pytest.raises(ValueError, match="data must be a 2-D array"):
            convolve_spatially_varying(np.zeros(shape), make_kernel(0, size=3))

    def test_complex_data(self):
        with pytest.raises(ValueError, match="data must hold real numbers, got dtype complex"):
            convolve_spatially_varying(np.zeros((10, 10), complex), make_kernel(0, size=3))

    def test_complex_variance(self):
        with pytest.raises(ValueError, match="variance must hold real numbers"):
            convolve_spatially_varying(np.zeros((10, 10)), make_kernel(0, size=3),
                                       variance=np.zeros((10, 10), complex))

    @pytest.mark.parametrize("shape", [(10, 20), (20, 10), (10, 10)])
    def test_image_smaller_than_kernel(self, shape):
        with pytest.raises(ValueError, match=r"smaller than the 11 x 11 kernel"):
            convolve_spatially_varying(np.zeros(shape), make_kernel(0, size=11))

    def test_variance_shape(self):
        with pytest.raises(ValueError, match=r"variance must have the shape of data \(20, 20\), "
                                             r"got \(20, 21\)"):
            convolve_spatially_varying(np.zeros((20, 20)), make_kernel(0, size=3),
                                       variance=np.zeros((20, 21)))

    def test_mask_shape(self):
        with pytest.raises(ValueError, match=r"mask must have the shape of data \(20, 20\), "
                                             r"got \(21, 20\)"):
            convolve_spatially_varying(np.zeros((20, 20)), make_kernel(0, size=3),
                                       mask=np.zeros((21, 20), dtype=bool))

    def test_zero_kernel_sum(self):
        basis = np.zeros((1, 3, 3))
        kernel = SpatialKernel(basis, [[0.0]], spatial_model="polynomial", spatial_order=0,
                               bbox=(0.0, 9.0, 0.0, 9.0))
        with pytest.raises(ValueError, match="needs a finite non-zero kernel sum, got 0.0"):
            convolve_spatially_varying(np.zeros((10, 10)), kernel)

    @pytest.mark.parametrize(("workers", "error"), [(0, ValueError), (-1, ValueError),
                                                    (1.5, TypeError), (2.0, TypeError),
                                                    (True, TypeError), ("2", TypeError)])
    def test_workers(self, workers, error):
        with pytest.raises(error, match="workers must be None or an integer >= 1"):
            convolve_spatially_varying(np.zeros((10, 10)), make_kernel(0, size=3),
                                       workers=workers)


class TestKernels:
    """The numba kernels agree with their twins in tests/naive.py."""

    @pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
    def test_weighted_sum_rows(self, rng, dtype):
        spectra = (rng.normal(size=(5, 12, 7)) + 1j * rng.normal(size=(5, 12, 7))).astype(dtype)
        real_dtype = np.empty(0, dtype).real.dtype
        weights = rng.normal(size=(5, 11)).astype(real_dtype)
        group = np.array([0, 1, 0, 2, 1])
        out = np.full((3, 9, 7), np.nan, dtype=dtype)
        # rows 3 .. 10 of the spectra, weights from column 2
        weighted_sum_rows(spectra.view(real_dtype), 3, weights, 2, 8, group,
                          out.view(real_dtype))
        expected = np.zeros((3, 8, 7), dtype=dtype)
        naive_weighted_sum_rows(spectra[:, 3:11], weights[:, 2:10], group, expected)
        np.testing.assert_allclose(out[:, :8], expected, rtol=1e-5)
        assert np.isnan(out[:, 8]).all()  # rows beyond n_rows untouched

    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    def test_weighted_sum_columns(self, rng, dtype):
        planes = rng.normal(size=(3, 6, 10)).astype(dtype)
        weights = rng.normal(size=(3, 12)).astype(dtype)
        out = np.full((15, 20), np.nan, dtype=dtype)
        # columns 2 .. 8 of the planes, weights from column 5, into out[4:10, 9:16]
        weighted_sum_columns(planes, 2, weights, 5, out, 4, 9, 7)
        expected = np.full((15, 20), np.nan, dtype=dtype)
        naive_weighted_sum_columns(planes[:, :, 2:9], weights[:, 5:12], expected[4:10, 9:16])
        np.testing.assert_allclose(out, expected, rtol=1e-5)

    @pytest.mark.parametrize("half", [0, 1, 3, 30])
    def test_dilate_box(self, rng, half):
        bad = rng.random((23, 31)) < 0.02
        bad[0, 5] = bad[22, 30] = True
        out = np.zeros_like(bad)
        dilate_box(bad, half, out)
        expected = np.zeros_like(bad)
        naive_dilate_box(bad, half, expected)
        np.testing.assert_array_equal(out, expected)



class TestCompileNotice:
    """The hook that lets the matcher say once that the kernels are being compiled."""

    def test_called_once_for_package_kernels_only(self):
        from types import SimpleNamespace

        import numba

        from astropsfmatch._engine._numba.notice import on_first_compilation

        calls = []
        listener = on_first_compilation(lambda: calls.append(1))
        try:
            def event(function):
                dispatcher = SimpleNamespace(py_func=getattr(function, "py_func", function))
                return numba.core.event.Event("numba:compile", numba.core.event.EventStatus.START,
                                              data={"dispatcher": dispatcher, "args": ()})

            def foreign(x):
                return x

            listener.on_start(event(foreign))  # not a kernel of the package
            assert calls == []
            listener.on_start(event(dilate_box))
            listener.on_start(event(weighted_sum_rows))
            assert calls == [1]
            listener.on_end(event(dilate_box))
        finally:
            numba.core.event.unregister("numba:compile", listener)
