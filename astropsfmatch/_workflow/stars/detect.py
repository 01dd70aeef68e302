"""Background, noise and detection: what the search for stars starts from.

The background map and the noise of the background-subtracted image
(`estimate_background`), every source as a local maximum of the smoothed
image (`smoothed_peaks`), the `~photutils.detection.DAOStarFinder`
detections (`daofind`), the saturation plateau of the image
(`saturation_plateau`) and the first guess of the FWHM (`guess_fwhm`).
"""

import math
import warnings

import numpy as np
from astropy.stats import SigmaClip
from photutils.background import Background2D, MedianBackground
from photutils.detection import DAOStarFinder
from scipy import ndimage

from .measure import FWHM_PER_SIGMA
from .robust import robust_stats

__all__ = []  # internal to the package: nothing here is public

#: Detection threshold (in units of the noise) of the brightest peaks whose
#: half-maximum areas give the first guess of the FWHM.
_GUESS_SNR = (20.0, 10.0, 5.0)


def estimate_background(data, bad, fwhm):
    """Background map, its median and the noise of the background-subtracted image.

    A `~photutils.background.Background2D` (sigma-clipped medians in boxes of
    about eight FWHMs, median-filtered) with the pixels of bright sources
    left out; a constant for images too small for boxes.
    """
    good = ~bad
    median, std = robust_stats(data[good])
    sources = good & (data - median > 3.0 * std)
    sources = ndimage.binary_dilation(sources, iterations=max(1, int(round(fwhm))))
    box = int(np.clip(round(8.0 * fwhm), 16, 64))
    background = None
    if min(data.shape) >= 2 * box:
        for excluded in (bad | sources, bad):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    estimate = Background2D(data, box, mask=excluded, filter_size=3,
                                            sigma_clip=SigmaClip(sigma=3.0, maxiters=10),
                                            bkg_estimator=MedianBackground(),
                                            exclude_percentile=50.0)
                background = np.array(estimate.background, dtype=np.float64)
                break
            except ValueError:  # too few unmasked pixels in the boxes: fewer exclusions
                continue
    if background is None or not np.all(np.isfinite(background)):
        background = np.full(data.shape, median)
    residual = data - background
    quiet = good & ~sources
    if quiet.sum() < 100:
        quiet = good
    _, rms = robust_stats(residual[quiet])
    return background, rms, float(np.median(background[good]))


def smoothed_peaks(sub, bad, fwhm, rms, threshold):
    """Local maxima of the image smoothed by a Gaussian of the FWHM, above
    ``threshold`` times the noise of the smoothed image: every source, also
    the faint companions of bright stars that a star finder may drop.
    """
    sigma = max(fwhm / FWHM_PER_SIGMA, 0.5)
    good = (~bad).astype(np.float64)
    smooth = ndimage.gaussian_filter(sub * good, sigma, mode="constant")
    cover = ndimage.gaussian_filter(good, sigma, mode="constant")
    with np.errstate(divide="ignore", invalid="ignore"):
        smooth = np.where(cover > 0.2, smooth / cover, 0.0)
    impulse = np.zeros((8 * int(math.ceil(sigma)) + 1,) * 2)
    impulse[impulse.shape[0] // 2, impulse.shape[1] // 2] = 1.0
    gain = math.sqrt(float((ndimage.gaussian_filter(impulse, sigma, mode="constant") ** 2).sum()))
    level = threshold * rms * gain
    peaks = (smooth == ndimage.maximum_filter(smooth, size=3)) & (smooth > level) & (cover > 0.2)
    yp, xp = np.nonzero(peaks)
    return xp.astype(np.float64), yp.astype(np.float64)


def daofind(sub, bad, fwhm, level):
    """`~photutils.detection.DAOStarFinder` detections: positions, sharpness, roundness."""
    finder = DAOStarFinder(level, fwhm, min_separation=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = finder(sub, mask=bad)
    names = ("x", "y", "sharpness", "roundness1", "roundness2")
    if table is None or len(table) == 0:
        return {key: np.zeros(0) for key in names}
    xname, yname = ("x_centroid", "y_centroid") if "x_centroid" in table.colnames else \
        ("xcentroid", "ycentroid")
    return {"x": np.array(table[xname], dtype=np.float64),
            "y": np.array(table[yname], dtype=np.float64),
            "sharpness": np.array(table["sharpness"], dtype=np.float64),
            "roundness1": np.array(table["roundness1"], dtype=np.float64),
            "roundness2": np.array(table["roundness2"], dtype=np.float64)}


def saturation_plateau(data, bad):
    """The image maximum when three or more pixels share it (a plateau), else None."""
    values = data[~bad]
    top = float(values.max())
    tolerance = 1e-6 * max(abs(top), 1.0)
    count = int(np.count_nonzero(values >= top - tolerance))
    return (top if count >= 3 else None), count


def guess_fwhm(sub, bad, rms, saturation, raw):
    """First FWHM guess: median half-maximum diameter of bright isolated peaks.

    The area ``A`` of the connected pixels above half the peak value gives
    ``2 sqrt(A / pi)``. The brightest tenth of the peaks (possibly saturated
    or non-linear) is skipped, and so are saturated peaks unless all are.
    Returns None when there is no peak.
    """
    guess = _half_maximum_diameter(sub, bad, rms, saturation, raw)
    if guess is None and saturation is not None:
        guess = _half_maximum_diameter(sub, bad, rms, None, raw)
    return guess


def _half_maximum_diameter(sub, bad, rms, saturation, raw):
    """See `guess_fwhm`."""
    ny, nx = sub.shape
    local_max = (sub == ndimage.maximum_filter(sub, size=3)) & ~bad
    radius = 15
    for snr in _GUESS_SNR:
        peaks = local_max & (sub > snr * rms)
        yp, xp = np.nonzero(peaks)
        inside = (xp >= radius) & (xp < nx - radius) & (yp >= radius) & (yp < ny - radius)
        xp, yp = xp[inside], yp[inside]
        if saturation is not None:
            unsaturated = raw[yp, xp] < saturation
            xp, yp = xp[unsaturated], yp[unsaturated]
        if xp.size >= 3:
            break
    if xp.size == 0:
        return None
    order = np.argsort(-sub[yp, xp])
    if order.size >= 20:
        order = order[order.size // 10:]
    diameters = []
    for k in order[:100]:
        x0, y0 = int(xp[k]), int(yp[k])
        window = sub[y0 - radius:y0 + radius + 1, x0 - radius:x0 + radius + 1]
        above = window >= 0.5 * sub[y0, x0]
        labels, _ = ndimage.label(above)
        component = labels == labels[radius, radius]
        if component[0].any() or component[-1].any() or component[:, 0].any() \
                or component[:, -1].any():
            continue  # wider than the window: not a star
        diameters.append(2.0 * math.sqrt(component.sum() / math.pi))
    if not diameters:
        return None
    return float(np.clip(np.median(diameters), 1.0, 2.0 * radius / 3.0))
