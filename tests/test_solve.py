"""The kernel solution: physics and the reference task's own checks."""

import numpy as np
import pytest
from photutils.psf import CircularGaussianPRF
from psf_models import REFERENCE_CONFIG, gaussian_stamp, varying_gaussian_grid
from scipy.signal import fftconvolve

from astropsfmatch import KernelSolutionError, ModelPsfMatcher
from astropsfmatch._adapters.psf import as_psf
from astropsfmatch._engine.basis import KernelBasis
from astropsfmatch._engine.solve import regularization_matrix

SIGMA_S, SIGMA_T = 2.0, 3.5
SIGMA_RANGE = (1.8, 2.2)


def second_moment_width(kernel):
    half = kernel.shape[0] // 2
    y, x = np.mgrid[-half:half + 1, -half:half + 1]
    total = kernel.sum()
    return np.sqrt((kernel * (x**2 + y**2)).sum() / total / 2)


def residual_at(kernel, source_psf, target_psf, x, y, size):
    """max |source ⊛ K(x, y) - target| / peak on the complete-convolution region."""
    source = as_psf(source_psf).stamps(np.array([x]), np.array([y]), size)[0]
    target = as_psf(target_psf).stamps(np.array([x]), np.array([y]), size)[0]
    model = fftconvolve(source, kernel.evaluate(x, y), mode="valid")
    half = kernel.kernel_size // 2
    valid = model.shape[0]
    return np.abs(model - target[half:half + valid, half:half + valid]).max() / target.max()


@pytest.fixture(scope="module")
def gaussian_solution():
    source = gaussian_stamp(31, SIGMA_S)
    target = gaussian_stamp(31, SIGMA_T)
    return ModelPsfMatcher(REFERENCE_CONFIG, cell_size=128).solve((512, 512), source, target)


class TestGaussianToGaussian:
    def test_candidate_residuals(self, gaussian_solution):
        solution, candidates, *_ = gaussian_solution
        assert len(candidates) == 16
        for cand in candidates:
            assert cand.fit.residual_max <= 1e-3
            assert cand.spatial_residual_max <= 1e-3

    def test_kernel_width(self, gaussian_solution):
        kernel = gaussian_solution[0].kernel
        for x, y in [(0, 0), (255, 255), (511, 100)]:
            width = second_moment_width(kernel.evaluate(x, y))
            assert width == pytest.approx(np.sqrt(SIGMA_T**2 - SIGMA_S**2), rel=0.02)

    def test_kernel_is_centred(self, gaussian_solution):
        k = gaussian_solution[0].kernel.evaluate(200, 300)
        half = k.shape[0] // 2
        y, x = np.mgrid[-half:half + 1, -half:half + 1]
        assert abs((k * x).sum()) < 1e-6 and abs((k * y).sum()) < 1e-6

    def test_stamp_padding_and_count(self, gaussian_solution):
        _, candidates, grid, target_stamp, _ = gaussian_solution
        assert target_stamp.shape == (31, 31)  # next_odd(21 * 1.4)
        assert candidates[0].source.shape == (31, 31)
        assert grid.n_cells == (4, 4)


class TestKernelSum:
    """The reference task's own test: the kernel sums to kernel_sum everywhere."""

    @pytest.mark.parametrize("order", [0, 1, 2])
    @pytest.mark.parametrize("kernel_sum", [0.5, 1.0, 2.7])
    def test_sum_everywhere(self, order, kernel_sum):
        matcher = ModelPsfMatcher(REFERENCE_CONFIG, cell_size=64, spatial_order=order)
        solution = matcher.solve((256, 256), varying_gaussian_grid((256, 256)),
                                 CircularGaussianPRF(fwhm=7.0), kernel_sum=kernel_sum)[0]
        rng = np.random.default_rng(8)
        for x, y in rng.uniform(-50, 300, size=(10, 2)):
            assert solution.kernel.evaluate(x, y).sum() == pytest.approx(kernel_sum, abs=1e-6)
        assert solution.kernel.kernel_sum == pytest.approx(kernel_sum, abs=1e-12)

    @pytest.mark.parametrize("bad", [0.0, -1.0, np.nan, np.inf, "1", True])
    def test_bad_kernel_sum(self, bad):
        with pytest.raises(ValueError, match="kernel_sum must be a finite number > 0"):
            ModelPsfMatcher(REFERENCE_CONFIG).solve((256, 256), gaussian_stamp(11, 2.0),
                                    gaussian_stamp(11, 3.0), kernel_sum=bad)


class TestVaryingGriddedPsf:
    """PSF width varying by +-10% across the field (FWHM 4.2 to 5.2 px)."""

    @pytest.fixture(scope="class")
    @classmethod
    def varying(cls):
        shape = (1024, 1024)
        source = varying_gaussian_grid(shape, sigma_range=SIGMA_RANGE)
        target = CircularGaussianPRF(fwhm=2.3548 * 3.2)
        result = ModelPsfMatcher(REFERENCE_CONFIG).solve(shape, source, target)
        return result, source, target

    def test_candidates(self, varying):
        (solution, candidates, *_), _, _ = varying
        assert max(c.fit.residual_max for c in candidates) <= 2e-3
        assert max(c.spatial_residual_max for c in candidates) <= 2e-3

    def test_between_candidates(self, varying):
        (solution, *_), source, target = varying
        rng = np.random.default_rng(9)
        for x, y in rng.uniform(0, 1023, size=(12, 2)):
            assert residual_at(solution.kernel, source, target, x, y, 31) <= 2e-3

    def test_kernel_width_follows_the_psf(self, varying):
        (solution, *_), _, _ = varying
        narrow = second_moment_width(solution.kernel.evaluate(0, 0))
        broad = second_moment_width(solution.kernel.evaluate(1023, 1023))
        assert narrow == pytest.approx(np.sqrt(3.2**2 - SIGMA_RANGE[0]**2), rel=0.02)
        assert broad == pytest.approx(np.sqrt(3.2**2 - SIGMA_RANGE[1]**2), rel=0.02)


class TestAlternativeBases:
    def test_delta_function_with_regularization(self):
        config = REFERENCE_CONFIG.replace(kernel_basis="delta-function", cell_size=64,
                                          spatial_order=1)
        solution, candidates, *_ = ModelPsfMatcher(config).solve(
            (192, 192), gaussian_stamp(31, SIGMA_S), gaussian_stamp(31, SIGMA_T))
        assert solution.basis.kind == "delta-function"
        assert 0 < solution.info["regularization_lambda"] < 1e-6  # relative to tr(M)
        assert max(c.spatial_residual_max for c in candidates) <= 5e-3
        assert solution.kernel.kernel_sum == pytest.approx(1.0)

    def test_regularization_smooths(self):
        source, target = gaussian_stamp(31, SIGMA_S), gaussian_stamp(31, SIGMA_T)
        rough = []
        for lam in (1e-8, 1e-2):
            config = REFERENCE_CONFIG.replace(kernel_basis="delta-function", kernel_size=11,
                                              cell_size=64,
                                 spatial_order=0, lambda_type="absolute", lambda_value=lam)
            kernel = ModelPsfMatcher(config).solve((192, 192), source, target)[0].kernel
            k = kernel.evaluate(64, 64).ravel()
            rough.append(k @ regularization_matrix(11) @ k)
        assert rough[1] < rough[0]

    @pytest.mark.parametrize("lambda_type", ["absolute", "relative"])
    @pytest.mark.parametrize("regularization_type", ["central-difference", "forward-difference"])
    def test_regularization_options(self, lambda_type, regularization_type):
        config = REFERENCE_CONFIG.replace(kernel_basis="delta-function", kernel_size=15,
                                          cell_size=64,
                             spatial_order=0, lambda_type=lambda_type, lambda_value=1e-7,
                             regularization_type=regularization_type,
                             central_regularization_stencil=5)
        solution, candidates, *_ = ModelPsfMatcher(config).solve(
            (192, 192), gaussian_stamp(31, SIGMA_S), gaussian_stamp(31, SIGMA_T))
        assert solution.info["regularization_lambda"] > 0
        assert max(c.spatial_residual_max for c in candidates) <= 2e-2

    @pytest.mark.parametrize("subtract_mean", [True, False])
    def test_pca(self, subtract_mean):
        config = REFERENCE_CONFIG.replace(use_pca_for_spatial_kernel=True,
                                          num_principal_components=3,
                             subtract_mean_for_pca=subtract_mean, cell_size=128)
        shape = (512, 512)
        solution, candidates, *_ = ModelPsfMatcher(config).solve(
            shape, varying_gaussian_grid(shape), CircularGaussianPRF(fwhm=7.5))
        assert solution.basis.kind == "pca"
        # the reference's count includes the mean kernel (subtract_mean) or not
        assert solution.kernel.n_basis == 3
        assert max(c.spatial_residual_max for c in candidates) <= 5e-3
        assert solution.kernel.kernel_sum == pytest.approx(1.0)


class TestConditionNumber:
    def test_spatial_check_raises(self):
        config = REFERENCE_CONFIG.replace(check_condition_number=True,
                                          max_spatial_condition_number=10.0,
                             max_condition_number=1e30, cell_size=64)
        with pytest.raises(KernelSolutionError, match="spatial condition number .* exceeds"):
            ModelPsfMatcher(config).solve((192, 192), gaussian_stamp(11, 2.0),
                                          gaussian_stamp(11, 3.0))

    def test_all_candidates_rejected(self):
        config = REFERENCE_CONFIG.replace(check_condition_number=True, max_condition_number=1.0,
                                          cell_size=64)
        with pytest.raises(KernelSolutionError, match="all 9 kernel candidates were rejected"):
            ModelPsfMatcher(config).solve((192, 192), gaussian_stamp(11, 2.0),
                                          gaussian_stamp(11, 3.0))

    @pytest.mark.parametrize("kind", ["eigenvalue", "svd"])
    def test_reported(self, kind):
        config = REFERENCE_CONFIG.replace(condition_number_type=kind, cell_size=64)
        solution, candidates, *_ = ModelPsfMatcher(config).solve(
            (192, 192), gaussian_stamp(11, 2.0), gaussian_stamp(11, 3.0))
        assert np.isfinite(solution.info["spatial_condition_number"])
        assert solution.info["spatial_condition_number"] > 1
        assert all(np.isfinite(c.fit.condition_number) for c in candidates)

    def test_singular_falls_back_to_pseudo_inverse(self):
        # identical PSFs everywhere: spatial terms are degenerate when there is one cell row
        basis = KernelBasis.alard_lupton(5, (1.0,), (1,))
        from astropsfmatch._engine.solve import _lu_or_pseudo_inverse
        matrix = np.ones((3, 3))
        solution, solver = _lu_or_pseudo_inverse(matrix, np.ones(3))
        assert solver == "pseudo-inverse"
        np.testing.assert_allclose(matrix @ solution, np.ones(3))
        assert basis.n_basis == 3


class TestFwhmScaling:
    def test_scaled_basis(self):
        config = REFERENCE_CONFIG.replace(scale_by_fwhm=True, cell_size=64)
        solution, candidates, *_ = ModelPsfMatcher(config).solve(
            (192, 192), gaussian_stamp(25, 1.5), gaussian_stamp(25, 4.0))
        params = solution.basis.parameters
        assert params["mode"] == "convolution"
        sigma_k = np.sqrt(4.0**2 - 1.5**2)
        assert params["sigmas"][1] == pytest.approx(sigma_k, rel=0.05)
        assert max(c.spatial_residual_max for c in candidates) <= 2e-3


class TestConditionCheckDefaults:
    """check_condition_number=True passes with the defaults (issue 15)."""

    def test_defaults_pass(self):
        psf = varying_gaussian_grid((512, 512))
        solution = ModelPsfMatcher(check_condition_number=True).solve(
            (512, 512), psf, CircularGaussianPRF(fwhm=6.0))[0]
        conditions = solution.info["candidate_condition_numbers"]
        assert np.all(conditions < ModelPsfMatcher().config.effective_max_condition_number)

    def test_reference_limits_are_reachable(self):
        psf = varying_gaussian_grid((512, 512))
        with pytest.raises(KernelSolutionError, match="above max_condition_number 5e"):
            ModelPsfMatcher(check_condition_number=True, max_condition_number=5e7).solve(
                (512, 512), psf, CircularGaussianPRF(fwhm=6.0))


class TestLinearStampModels:
    """`LinearStamps.models`: the dense product and the per-template loop agree with the
    definition, the weighted sum of the templates' basis convolutions.
    """

    @pytest.mark.parametrize("n_grid", [3, 5])
    def test_both_paths_match_the_definition(self, monkeypatch, n_grid):
        from astropsfmatch import MatchConfig
        from astropsfmatch._engine import solve as solve_module
        from astropsfmatch._workflow import policy

        config = MatchConfig()
        source = as_psf(varying_gaussian_grid((512, 512), n_grid=n_grid), name="source_psf")
        target = as_psf(CircularGaussianPRF(fwhm=6.0), name="target_psf")
        basis = policy.choose_basis(config, source, target, None, shape=(512, 512))
        stamps = policy.linear_stamps(source, target, 41, basis, config)
        rng = np.random.default_rng(5)
        x, y = rng.uniform(-20, 530, 50), rng.uniform(-20, 530, 50)
        w = stamps.weights(x, y)
        coefficients = rng.normal(size=(basis.n_basis, 50))
        expected = np.einsum("nm,bn,mbp->pn", w, coefficients, stamps._template_rows)
        monkeypatch.setattr(solve_module, "_DENSE_MODEL_TEMPLATES", 10**6)
        dense = stamps.models(w, coefficients)
        monkeypatch.setattr(solve_module, "_DENSE_MODEL_TEMPLATES", 0)
        loop = stamps.models(w, coefficients)
        scale = np.abs(expected).max()
        np.testing.assert_allclose(dense, expected, rtol=0, atol=1e-13 * scale)
        np.testing.assert_allclose(loop, expected, rtol=0, atol=1e-13 * scale)
