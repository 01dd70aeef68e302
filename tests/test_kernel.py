import numpy as np
import pytest
from astropy.io import fits

from astropsfmatch import SpatialKernel, make_alard_lupton_basis
from astropsfmatch._engine.spatial import spatial_terms


@pytest.fixture(params=["chebyshev1", "polynomial"])
def kernel(request):
    rng = np.random.default_rng(10)
    basis = make_alard_lupton_basis(9, (1.0, 2.0), (2, 1))
    coefficients = rng.normal(size=(basis.shape[0], 6))
    coefficients[0] = [1.3, 0, 0, 0, 0, 0]
    return SpatialKernel(basis, coefficients, spatial_model=request.param, spatial_order=2,
                         bbox=(-10.0, 300.0, 5.0, 200.0))


class TestEvaluate:
    def test_matches_the_definition(self, kernel):
        x, y = 123.4, 77.0
        xn = (2 * x - (-10 + 300)) / 310
        yn = (2 * y - (5 + 200)) / 195
        terms = spatial_terms(xn, yn, 2, kernel.spatial_model)
        expected = np.einsum("it,t,ijk->jk", kernel.coefficients, terms, kernel.basis)
        np.testing.assert_allclose(kernel.evaluate(x, y), expected, atol=1e-13)

    def test_sum_is_constant(self, kernel):
        for x, y in [(-10, 5), (300, 200), (50, 150)]:
            assert kernel.evaluate(x, y).sum() == pytest.approx(1.3, abs=1e-12)
        assert kernel.kernel_sum == pytest.approx(1.3)

    def test_term_images(self, kernel):
        np.testing.assert_allclose(
            kernel.term_images, np.einsum("it,ijk->tjk", kernel.coefficients, kernel.basis))

    def test_monomial_kernels(self, kernel):
        exponents, images = kernel.monomial_kernels()
        x, y = 222.0, 10.5
        xn, yn = kernel.normalize_xy(x, y)
        rebuilt = sum(xn**a * yn**b * img for (a, b), img in zip(exponents, images, strict=True))
        np.testing.assert_allclose(rebuilt, kernel.evaluate(x, y), atol=1e-12)

    def test_coefficients_at(self, kernel):
        local = kernel.coefficients_at(np.array([0.0, 100.0]), np.array([50.0, 60.0]))
        assert local.shape == (kernel.n_basis, 2)
        np.testing.assert_allclose(np.tensordot(local[:, 1], kernel.basis, axes=1),
                                   kernel.evaluate(100.0, 60.0), atol=1e-13)

    def test_read_only(self, kernel):
        with pytest.raises(ValueError, match="read-only"):
            kernel.coefficients[0, 0] = 2.0

    def test_scalar_positions_only(self, kernel):
        with pytest.raises(ValueError, match="x and y must be scalars"):
            kernel.evaluate(np.arange(3), 1.0)

    def test_repr(self, kernel):
        assert "SpatialKernel size=9" in repr(kernel)


class TestFits:
    def test_round_trip_is_exact(self, kernel, tmp_path):
        path = tmp_path / "kernel.fits"
        kernel.write(path)
        back = SpatialKernel.read(path)
        np.testing.assert_array_equal(back.basis, kernel.basis)
        np.testing.assert_array_equal(back.coefficients, kernel.coefficients)
        assert back.bbox == kernel.bbox
        assert (back.spatial_model, back.spatial_order) == (kernel.spatial_model, 2)
        np.testing.assert_array_equal(back.evaluate(7.0, 8.0), kernel.evaluate(7.0, 8.0))

    def test_overwrite(self, kernel, tmp_path):
        path = tmp_path / "kernel.fits"
        kernel.write(path)
        with pytest.raises(OSError, match="already exists"):
            kernel.write(path)
        kernel.write(path, overwrite=True)

    def test_not_a_kernel_file(self, tmp_path):
        path = tmp_path / "other.fits"
        fits.PrimaryHDU(np.zeros((3, 3))).writeto(path)
        with pytest.raises(ValueError, match="not an astropsfmatch kernel file"):
            SpatialKernel.read(path)


class TestErrors:
    basis = make_alard_lupton_basis(5, (1.0,), (1,))

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [({"basis": np.zeros((2, 4, 4))}, r"basis must have shape \(n_basis, K, K\) with K odd"),
         ({"coefficients": np.zeros((3, 2))}, r"coefficients must have shape .* = \(3, 3\)"),
         ({"spatial_model": "legendre"}, "spatial_model must be one of"),
         ({"spatial_order": -1}, "spatial_order must be an integer >= 0"),
         ({"bbox": (0, 0, 0, 10)}, "bbox must be")])
    def test_bad_arguments(self, kwargs, match):
        args = {"basis": self.basis, "coefficients": np.zeros((3, 3)),
                "spatial_model": "chebyshev1", "spatial_order": 1, "bbox": (0, 10, 0, 10)}
        args.update(kwargs)
        with pytest.raises(ValueError, match=match):
            SpatialKernel(args.pop("basis"), args.pop("coefficients"), **args)
