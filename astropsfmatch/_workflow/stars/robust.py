"""Robust statistics: sigma-clipped level and noise, outliers from a trend over
the image, and outliers per bin of the ePSF stack.
"""

import math
import warnings

import numpy as np
from astropy.stats import sigma_clipped_stats

__all__ = []  # internal to the package: nothing here is public

#: Sigma of the clipping of outliers: FWHM and ellipticity outliers among the
#: stars, and samples of the ePSF stack.
CLIP_SIGMA = 3.0


def robust_stats(values):
    """Sigma-clipped median and standard deviation, without warnings (of a
    regular subsample of at most 250 000 values).
    """
    values = np.ravel(values)
    if values.size > 250_000:
        values = values[::int(math.ceil(values.size / 250_000))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, median, std = sigma_clipped_stats(values, sigma=3.0, maxiters=10)
    median, std = float(median), float(std)
    if not math.isfinite(std) or std <= 0.0:
        spread = np.percentile(values, [16.0, 84.0])
        std = max(float(spread[1] - spread[0]) / 2.0, 1e-12 * max(1.0, abs(median)))
    return median, std


def trend_outliers(x, y, values, floor):
    """Outliers from a robust low-order polynomial trend of ``values`` over the image.

    A quadratic (30 or more values), a plane (10 or more) or a constant,
    fitted with iterative 3-sigma clipping; the spread is at least ``floor``.
    Returns the outlier mask and the trend at the positions.
    """
    n = values.size
    if n == 0:
        return np.zeros(0, dtype=bool), np.zeros(0)
    u = (x - x.mean()) / max(np.ptp(x), 1.0)
    v = (y - y.mean()) / max(np.ptp(y), 1.0)
    columns = [np.ones(n)]
    if n >= 10:
        columns += [u, v]
    if n >= 30:
        columns += [u * u, u * v, v * v]
    design = np.column_stack(columns)
    keep = np.ones(n, dtype=bool)
    trend = np.full(n, np.median(values))
    for _ in range(10):
        if keep.sum() < design.shape[1] + 2:
            break
        coeffs, *_ = np.linalg.lstsq(design[keep], values[keep], rcond=None)
        trend = design @ coeffs
        resid = values - trend
        spread = max(1.4826 * np.median(np.abs(resid[keep] - np.median(resid[keep]))), floor)
        new_keep = np.abs(resid) <= CLIP_SIGMA * spread
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return ~keep, trend


def _grouped_median(keys, values, nkeys):
    """Median of ``values`` per integer key, and the counts (NaN for empty keys)."""
    by_value = np.argsort(values)
    order = by_value[np.argsort(keys[by_value], kind="stable")]
    sorted_values = values[order]
    counts = np.bincount(keys, minlength=nkeys)
    starts = np.cumsum(counts) - counts
    median = np.full(nkeys, np.nan)
    has = counts > 0
    lo = starts[has] + (counts[has] - 1) // 2
    hi = starts[has] + counts[has] // 2
    median[has] = 0.5 * (sorted_values[lo] + sorted_values[hi])
    return median, counts


def clip_bins(z, bins, n_bins):
    """Samples within 3 sigma (from the MAD) of their bin's median of ``z``."""
    med, counts = _grouped_median(bins, z, n_bins)
    dev = np.abs(z - med[bins])
    mad, _ = _grouped_median(bins, dev, n_bins)
    return (dev <= CLIP_SIGMA * 1.4826 * mad[bins]) | (counts[bins] < 5) | (mad[bins] == 0)
