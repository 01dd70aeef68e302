import numpy as np
import pytest

from astropsfmatch._engine.basis import (
    alard_lupton_sigmas,
    make_alard_lupton_basis,
    make_delta_function_basis,
    n_alard_lupton_basis,
)

BASIS_SETS = [
    (21, (0.7, 1.5, 3.0), (4, 2, 2)),
    (15, (1.0, 2.0), (3, 1)),
    (31, (0.8, 1.6, 3.2, 6.4), (2, 2, 2, 0)),
]


class TestAlardLuptonBasis:
    @pytest.mark.parametrize(("size", "sigmas", "degrees"), BASIS_SETS)
    def test_shape_and_count(self, size, sigmas, degrees):
        basis = make_alard_lupton_basis(size, sigmas, degrees)
        expected = sum((d + 1) * (d + 2) // 2 for d in degrees)
        assert basis.shape == (expected, size, size)
        assert basis.dtype == np.float64
        assert n_alard_lupton_basis(degrees) == expected

    def test_default_has_27_functions(self):
        assert make_alard_lupton_basis(21, (0.7, 1.5, 3.0), (4, 2, 2)).shape[0] == 27

    @pytest.mark.parametrize(("size", "sigmas", "degrees"), BASIS_SETS)
    def test_renormalization(self, size, sigmas, degrees):
        basis = make_alard_lupton_basis(size, sigmas, degrees)
        assert basis[0].sum() == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose(basis[1:].sum(axis=(1, 2)), 0.0, atol=1e-12)
        np.testing.assert_allclose(np.sqrt((basis[1:] ** 2).sum(axis=(1, 2))), 1.0, rtol=1e-12)

    def test_first_function_is_the_narrowest_gaussian(self):
        basis = make_alard_lupton_basis(21, (0.7, 1.5, 3.0), (4, 2, 2))
        h = np.arange(-10, 11)
        g = np.exp(-0.5 * (h / 0.7) ** 2)
        expected = np.outer(g, g) / np.outer(g, g).sum()
        np.testing.assert_allclose(basis[0], expected, atol=1e-15)

    def test_linearly_independent(self):
        basis = make_alard_lupton_basis(21, (0.7, 1.5, 3.0), (4, 2, 2))
        assert np.linalg.matrix_rank(basis.reshape(27, -1)) == 27

    @pytest.mark.parametrize(
        ("args", "match"),
        [((20, (1.0,), (0,)), "kernel_size must be an odd integer"),
         ((21.5, (1.0,), (0,)), "kernel_size must be an odd integer"),
         ((21, (), ()), "at least one Gaussian"),
         ((21, (1.0, 2.0), (1,)), "same length"),
         ((21, (0.0,), (1,)), "sigmas must be finite and > 0"),
         ((21, (1.0,), (-1,)), "degrees must be integers >= 0"),
         ((21, (1.0,), (1.5,)), "degrees must be integers >= 0")])
    def test_errors(self, args, match):
        with pytest.raises(ValueError, match=match):
            make_alard_lupton_basis(*args)


class TestDeltaFunctionBasis:
    @pytest.mark.parametrize("size", [1, 3, 9])
    def test_count_and_content(self, size):
        basis = make_delta_function_basis(size)
        assert basis.shape == (size * size, size, size)
        np.testing.assert_array_equal(basis.sum(axis=(1, 2)), 1.0)
        for k in range(size * size):
            assert basis[k].ravel()[k] == 1.0

    def test_even_size(self):
        with pytest.raises(ValueError, match="kernel_size must be an odd integer >= 1, got 4"):
            make_delta_function_basis(4)


class TestFwhmScaling:
    """The reference's current rules (lsst/ip_diffim makeKernelBasisList, 2026)."""

    def test_convolution_mode(self):
        p = alard_lupton_sigmas(4.0, 8.0, kernel_size_max=35)
        sigma_k = np.sqrt(8.0**2 - 4.0**2) / 2.3548200450309493
        assert p.mode == "convolution"
        np.testing.assert_allclose(p.sigmas, [sigma_k / 2, sigma_k, 2 * sigma_k])
        np.testing.assert_allclose(p.sigmas, [1.471069, 2.942137, 5.884274], atol=1e-6)
        assert p.degrees == (4, 2, 2)
        assert p.kernel_size == 35  # int(6 * 5.88) = 35, clamped to max

    def test_kernel_size_follows_the_widths_by_default(self):
        # the reference's 35 cannot hold the kernel of a large FWHM jump
        assert alard_lupton_sigmas(4.0, 8.0).kernel_size == 35
        p = alard_lupton_sigmas(3.0, 15.0)
        assert p.kernel_size == 75 and p.kernel_size > 35

    def test_kernel_size_rule(self):
        p = alard_lupton_sigmas(4.0, 5.0)
        expected = int(6.0 * p.sigmas[-1])
        expected += 0 if expected % 2 else 1
        assert p.kernel_size == max(21, expected)
        assert p.kernel_size % 2 == 1

    def test_first_width_is_floored_not_dropped(self):
        # 3.0 -> 4.0: sigma_k = 1.1235; the rule before 2026 gave [1.12, 2.25, 4.49] and 27
        p = alard_lupton_sigmas(3.0, 4.0)
        np.testing.assert_allclose(p.sigmas, [0.7, 1.4, 2.8])
        assert p.kernel_size == 21

    def test_widths_are_continuous_in_the_fwhm(self):
        below = alard_lupton_sigmas(3.0, np.sqrt(9.0 + (2 * 1.4 * 2.3548200450309493) ** 2)
                                    - 1e-6)
        above = alard_lupton_sigmas(3.0, np.sqrt(9.0 + (2 * 1.4 * 2.3548200450309493) ** 2)
                                    + 1e-6)
        np.testing.assert_allclose(below.sigmas, above.sigmas, rtol=1e-5)

    def test_floor_drops_the_narrow_width(self):
        # sigma_k below 2 * min_sigma: widths start at sigma_k (floored)
        p = alard_lupton_sigmas(4.0, 4.2)
        assert p.sigmas[0] == pytest.approx(0.7)
        np.testing.assert_allclose(p.sigmas, [0.7, 1.4, 2.8])
        assert p.kernel_size == 21

    def test_deconvolution_mode(self):
        # since 2025 the reference uses the configured degrees and the floor 0.4
        p = alard_lupton_sigmas(4.0, 3.0)
        assert p.mode == "deconvolution"
        assert p.degrees == (4, 2, 2)
        np.testing.assert_allclose(p.sigmas, [0.561774, 1.123547, 2.247094], atol=1e-6)
        assert p.kernel_size == 21

    def test_config_mode(self):
        # equal widths keep the configured sigmas; the size is recomputed from them
        p = alard_lupton_sigmas(3.0, 3.0)
        assert p.mode == "config"
        assert p.sigmas == (0.7, 1.5, 3.0) and p.kernel_size == 21

    def test_single_gaussian(self):
        p = alard_lupton_sigmas(3.0, 6.0, sigmas=(1.0,), degrees=(2,))
        assert len(p.sigmas) == 1
        assert p.sigmas[0] == pytest.approx(np.sqrt(36 - 9) / 2.3548200450309493)

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [({"source_fwhm": -1.0}, "source_fwhm must be finite and > 0"),
         ({"target_fwhm": np.nan}, "target_fwhm must be finite and > 0"),
         ({"gauss_beta": 1.0}, "gauss_beta must be > 1"),
         ({"kernel_size_min": 41, "kernel_size_max": 35},
          "kernel_size_min must be <= kernel_size_max")])
    def test_errors(self, kwargs, match):
        args = {"source_fwhm": 3.0, "target_fwhm": 5.0, **kwargs}
        with pytest.raises(ValueError, match=match):
            alard_lupton_sigmas(args.pop("source_fwhm"), args.pop("target_fwhm"), **args)
