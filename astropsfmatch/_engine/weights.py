"""Inverse-variance weight maps, as ``reproject_and_coadd(input_weights=...)`` takes them."""

import numpy as np

from .._validate import real_dtype
from ._numba import weights as weights_kernel

# the public names of this module, re-exported by astropsfmatch/__init__.py
__all__ = ["inverse_variance_weights"]


def inverse_variance_weights(variance, mask):
    """Inverse-variance weights, 0 where masked or the variance is not usable.

    This is what ``reproject_and_coadd`` takes as ``input_weights``.

    Parameters
    ----------
    variance : ndarray or None
        Variance map (2-D).
    mask : ndarray of bool
        True where a pixel is bad.

    Returns
    -------
    weights : ndarray or None
        Same dtype as ``variance`` (floating); None when ``variance`` is None.

    Examples
    --------
    >>> import numpy as np
    >>> from astropsfmatch import inverse_variance_weights
    >>> inverse_variance_weights(np.array([[4.0, np.nan, 0.0, 1.0]]),
    ...                          np.array([[False, False, False, True]]))
    array([[0.25, 0.  , 0.  , 0.  ]])
    """
    if variance is None:
        return None
    variance = real_dtype("variance", np.asarray(variance))
    dtype = np.result_type(variance.dtype, np.float32).newbyteorder("=")
    variance = np.ascontiguousarray(variance, dtype=dtype)
    mask = np.ascontiguousarray(mask, dtype=bool)
    if variance.ndim != 2 or mask.shape != variance.shape:
        msg = (f"variance must be 2-D with the shape of mask, got {variance.shape} "
               f"and {mask.shape}")
        raise ValueError(msg)
    return weights_kernel.inverse_variance(variance, mask)
