import numpy as np
import pytest
from naive import naive_inverse_variance

from astropsfmatch import inverse_variance_weights
from astropsfmatch._engine._numba.weights import inverse_variance


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_matches_naive(dtype):
    rng = np.random.default_rng(14)
    variance = rng.uniform(-1, 5, size=(40, 30)).astype(dtype)
    variance[3, 4] = np.nan
    variance[5, 6] = np.inf
    variance[7, 8] = 0
    mask = rng.random((40, 30)) < 0.1
    got = inverse_variance(variance, mask)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, naive_inverse_variance(variance, mask))


def test_wrapper_accepts_big_endian_and_rejects_bad_shapes():
    variance = np.full((4, 5), 4.0, dtype=">f8")
    mask = np.zeros((4, 5), bool)
    np.testing.assert_array_equal(inverse_variance_weights(variance, mask), 0.25)
    assert inverse_variance_weights(None, mask) is None
    with pytest.raises(ValueError, match="variance must be 2-D with the shape of mask"):
        inverse_variance_weights(variance, mask[:2])
