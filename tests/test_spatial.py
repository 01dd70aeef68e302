import numpy as np
import pytest
from numpy.polynomial import chebyshev

from astropsfmatch._engine.spatial import (
    monomial_matrix,
    n_spatial_terms,
    normalize_coordinates,
    spatial_exponents,
    spatial_terms,
)


class TestSpatialTerms:
    @pytest.mark.parametrize(("order", "n"), [(0, 1), (1, 3), (2, 6), (3, 10)])
    def test_counts(self, order, n):
        assert n_spatial_terms(order) == n
        assert len(spatial_exponents(order)) == n

    def test_order_of_terms(self):
        assert spatial_exponents(2).tolist() == [[0, 0], [1, 0], [0, 1], [2, 0], [1, 1], [0, 2]]

    @pytest.mark.parametrize("order", [0, 1, 2, 3])
    def test_chebyshev_values(self, order):
        rng = np.random.default_rng(1)
        x, y = rng.uniform(-1, 1, 20), rng.uniform(-1, 1, 20)
        terms = spatial_terms(x, y, order, "chebyshev1")
        for t, (i, j) in enumerate(spatial_exponents(order)):
            expected = (chebyshev.chebval(x, np.eye(i + 1)[i])
                        * chebyshev.chebval(y, np.eye(j + 1)[j]))
            np.testing.assert_allclose(terms[t], expected, atol=1e-14)

    @pytest.mark.parametrize("model", ["chebyshev1", "polynomial"])
    @pytest.mark.parametrize("order", [0, 1, 2, 3])
    def test_monomial_matrix(self, model, order):
        rng = np.random.default_rng(2)
        x, y = rng.uniform(-1, 1, 30), rng.uniform(-1, 1, 30)
        terms = spatial_terms(x, y, order, model)
        monomials = spatial_terms(x, y, order, "polynomial")
        np.testing.assert_allclose(terms, monomial_matrix(order, model) @ monomials, atol=1e-13)

    def test_normalization(self):
        xn, yn = normalize_coordinates([-128, 1151], [-64, 575], (-128, 1151, -64, 575))
        np.testing.assert_allclose(xn, [-1, 1])
        np.testing.assert_allclose(yn, [-1, 1])
