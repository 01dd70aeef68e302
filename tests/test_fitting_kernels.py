"""The numba kernels of the kernel fit agree with their NumPy twins."""

import numpy as np
import pytest
from naive import (
    naive_accumulate_spatial,
    naive_convolve_valid,
    naive_normal_equations,
    naive_separable_columns,
    naive_separable_convolve_valid,
    naive_separable_rows,
)

from astropsfmatch._engine._numba import fitting
from astropsfmatch._engine.basis import (
    KernelBasis,
    _alard_lupton_parts,
    separable_convolve_valid,
)
from astropsfmatch._engine.solve import _spatial_unknowns
from astropsfmatch._threads import thread_scope


def last(array):
    """Candidate axis (first) moved last, as the kernels take it."""
    return np.ascontiguousarray(np.moveaxis(array, 0, -1))


def first(array):
    """Candidate axis (first) of a naive result moved last, to compare with a kernel's."""
    return np.moveaxis(array, 0, -1)


@pytest.fixture(params=[np.float32, np.float64])
def stamps(request):
    rng = np.random.default_rng(3)
    return rng.normal(size=(4, 13, 13)).astype(request.param)


class TestBasisConvolution:
    def test_separable_matches_naive(self, stamps):
        _, _, x_factors, y_factors = _alard_lupton_parts(7, (0.8, 1.6), (2, 1))
        distinct, x_index = np.unique(x_factors, axis=0, return_inverse=True)
        x_index = x_index.ravel().astype(np.int64)
        data = np.ascontiguousarray(stamps, dtype=np.float64)
        expected = first(naive_separable_convolve_valid(data, distinct, y_factors, x_index))
        results = []
        for workers in (1, 2, 3):
            with thread_scope(workers):
                results.append(separable_convolve_valid(last(data), distinct, y_factors,
                                                        x_index))
        np.testing.assert_allclose(results[0], expected, rtol=1e-12, atol=1e-12)
        for other in results[1:]:  # one part per thread: the same sums in the same order
            np.testing.assert_array_equal(other, results[0])

    @pytest.mark.parametrize(("start", "stop"), [(0, None), (3, 11), (5, 5)])
    def test_passes_match_naive_on_their_ranges(self, stamps, start, stop):
        _, _, x_factors, y_factors = _alard_lupton_parts(7, (0.8, 1.6), (2, 1))
        distinct, x_index = np.unique(x_factors, axis=0, return_inverse=True)
        x_index = x_index.ravel().astype(np.int64)
        data = np.ascontiguousarray(stamps, dtype=np.float64)
        size, valid = data.shape[1], data.shape[1] - 7 + 1
        rows = np.zeros((len(distinct), size, valid, len(data)))
        stop_rows = len(distinct) * size if stop is None else stop
        fitting.separable_rows(last(data), distinct, rows, start, stop_rows)
        expected_rows = first(naive_separable_rows(data, distinct))
        done = np.zeros(len(distinct) * size, dtype=bool)
        done[start:stop_rows] = True
        done = done.reshape(len(distinct), size)
        np.testing.assert_allclose(rows[done], expected_rows[done], rtol=1e-12, atol=1e-12)
        assert not rows[~done].any()  # nothing outside the range is written
        # the y pass on the complete x pass
        full_rows = np.ascontiguousarray(expected_rows)
        out = np.zeros((len(y_factors), valid, valid, len(data)))
        stop_out = len(y_factors) * valid if stop is None else stop
        fitting.separable_columns(full_rows, y_factors, x_index, out, start, stop_out)
        expected = first(naive_separable_columns(np.moveaxis(full_rows, -1, 0), y_factors,
                                                 x_index))
        done = np.zeros(len(y_factors) * valid, dtype=bool)
        done[start:stop_out] = True
        done = done.reshape(len(y_factors), valid)
        np.testing.assert_allclose(out[done], expected[done], rtol=1e-12, atol=1e-12)
        assert not out[~done].any()

    def test_dense_matches_naive(self, stamps):
        rng = np.random.default_rng(4)
        basis = rng.normal(size=(3, 5, 5))
        data = np.ascontiguousarray(stamps, dtype=np.float64)
        np.testing.assert_allclose(fitting.convolve_valid(last(data), basis),
                                   first(naive_convolve_valid(data, basis)), rtol=1e-12,
                                   atol=1e-12)

    def test_dense_matches_scipy(self):
        from scipy.signal import fftconvolve
        rng = np.random.default_rng(5)
        data = rng.normal(size=(2, 15, 15))
        basis = rng.normal(size=(2, 7, 7))
        got = fitting.convolve_valid(last(data), basis)
        for c in range(2):
            for b in range(2):
                np.testing.assert_allclose(got[b, :, :, c],
                                           fftconvolve(data[c], basis[b], mode="valid"),
                                           atol=1e-12)

    @pytest.mark.parametrize("kind", ["alard-lupton", "delta-function"])
    def test_structured_bases_match_dense(self, kind, stamps):
        basis = (KernelBasis.alard_lupton(7, (0.8, 1.6), (2, 1)) if kind == "alard-lupton"
                 else KernelBasis.delta_function(5))
        got = basis.convolve(last(stamps))
        expected = first(naive_convolve_valid(stamps.astype(np.float64), basis.images))
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


class TestNormalEquations:
    def test_matches_naive(self, stamps):
        rng = np.random.default_rng(6)
        convolved = rng.normal(size=(5, 6, 7, 7))
        target = rng.normal(size=(5, 7, 7)).astype(stamps.dtype).astype(np.float64)
        weight = rng.uniform(0.5, 2.0, size=(5, 7, 7))
        m, b = fitting.normal_equations(
            np.ascontiguousarray(np.moveaxis(convolved.reshape(5, 6, -1), 0, -1)),
            last(target.reshape(5, -1)), last(weight.reshape(5, -1)))
        m2, b2 = naive_normal_equations(convolved, target, weight)
        np.testing.assert_allclose(np.moveaxis(m, -1, 0), m2, rtol=1e-12)
        np.testing.assert_allclose(b.T, b2, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(m, np.swapaxes(m, 0, 1))

    def test_spatial_accumulation_matches_naive(self):
        rng = np.random.default_rng(7)
        a = rng.normal(size=(11, 4, 4))
        matrix = a @ np.swapaxes(a, 1, 2)
        vector = rng.normal(size=(11, 4))
        terms = rng.normal(size=(11, 3))
        terms[:, 0] = 1.0  # the first spatial term is the constant
        full, full_vector = fitting.accumulate_spatial(
            np.ascontiguousarray(np.moveaxis(matrix, 0, -1)), last(vector), last(terms))
        m, b = _spatial_unknowns(full, full_vector, 4, 3)
        m2, b2 = naive_accumulate_spatial(matrix, vector, terms)
        np.testing.assert_allclose(m, m2, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(b, b2, rtol=1e-12, atol=1e-12)
