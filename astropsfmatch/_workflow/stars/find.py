"""Star detection and selection: `find_stars`, and the bits of its `STAR_FLAGS`.

`find_candidates` detects the candidates, flags the rejected ones and
measures the others, iterating on the FWHM when it is not given;
`find_stars` checks the options and returns its good stars, and
`estimate_psf` and `star_check` reuse it with what it found on the way (the
background-subtracted image, the noise, the other sources).
"""

import math

import numpy as np
from astropy.table import Table
from scipy.spatial import cKDTree

from ..._logging import log
from .detect import daofind, estimate_background, guess_fwhm, saturation_plateau, smoothed_peaks
from .image import integer, positive, prepare
from .measure import FWHM_PER_SIGMA, box_centres, boxes, fit_box_size, gaussian_fits
from .robust import CLIP_SIGMA, robust_stats, trend_outliers

# the public names of this module, re-exported by astropsfmatch/__init__.py
__all__ = ["STAR_FLAGS", "find_stars"]

#: Bits of the ``flags`` column of `find_stars`: why a candidate was rejected
#: (0 for the stars that were kept).
STAR_FLAGS = {
    "saturated": 1,       # a pixel at the saturation level, or a flat-topped core
    "crowded": 2,         # another source closer than ``isolation``
    "edge": 4,            # the fitting box leaves the image
    "masked": 8,          # a masked or non-finite pixel in the fitting box
    "bad_fit": 16,        # the Gaussian fit failed or wandered off
    "fwhm_outlier": 32,   # FWHM off the trend of the other stars (cosmic ray, galaxy, blend)
    "shape_outlier": 64,  # elongated compared with the other stars (blend)
    "faint": 128,         # signal-to-noise ratio below ``min_snr``
    "excess": 256,        # good, but fainter than the ``max_stars`` brightest
}

#: Default isolation radius, in FWHMs: no other source closer to a PSF star.
ISOLATION_FWHMS = 2.5

#: The smallest spread (as a fraction of the FWHM, and in ellipticity) that the
#: clipping of FWHM and ellipticity outliers assumes.
_FWHM_SPREAD_FLOOR = 0.015
_ELLIPTICITY_SPREAD_FLOOR = 0.03

#: The automatic FWHM is iterated until it changes by less than this fraction.
_FWHM_ITERATION_TOLERANCE = 0.01
_FWHM_ITERATIONS = 6


def _select(prep, sub, rms, fwhm, *, threshold, isolation, saturation, max_stars, min_snr):
    """Detect, flag and measure candidate stars at one FWHM.

    The cheap tests (edge, masked pixels, saturation, neighbours) come first;
    only the candidates that pass them are fitted.
    """
    data, bad = prep.data, prep.bad
    det = daofind(sub, bad, fwhm, threshold * rms)
    xp, yp = smoothed_peaks(sub, bad, fwhm, rms, threshold)
    n = det["x"].size
    flags = np.zeros(n, dtype=np.int64)
    size = fit_box_size(fwhm)
    half = size // 2
    ny, nx = sub.shape
    nearest = np.full(n, np.inf)
    peak = np.full(n, np.nan)
    if n:
        # edges and masked pixels in the fitting box
        cx, cy = box_centres(det["x"], det["y"])
        edge = (cx - half < 0) | (cy - half < 0) | (cx + half >= nx) | (cy + half >= ny)
        flags[edge] |= STAR_FLAGS["edge"]
        _, _, raw_boxes, raw_valid = boxes(data, bad, det["x"], det["y"], size)
        flags[~edge & ~raw_valid.all(axis=(1, 2))] |= STAR_FLAGS["masked"]
        _, _, sub_boxes, _ = boxes(sub, bad, det["x"], det["y"], size)
        peak = sub_boxes[:, half - 1:half + 2, half - 1:half + 2].max(axis=(1, 2))
        # saturation: a pixel of the box at the level, or a flat-topped core
        if saturation is not None:
            top = np.where(raw_valid, raw_boxes, -np.inf).max(axis=(1, 2))
            level = saturation - 1e-6 * abs(saturation)
            flags[top >= level] |= STAR_FLAGS["saturated"]
        flags[_flat_topped(sub, det["x"], det["y"], fwhm, rms)] |= STAR_FLAGS["saturated"]
        # neighbours: any other source within the isolation radius
        others = np.column_stack([np.concatenate([xp, det["x"]]),
                                  np.concatenate([yp, det["y"]])])
        self_radius = max(1.5, 0.5 * fwhm)
        dist, _ = cKDTree(others).query(np.column_stack([det["x"], det["y"]]),
                                        k=min(len(others), 12))
        dist = np.where(dist > self_radius, dist, np.inf).reshape(n, -1)
        nearest = dist.min(axis=1)
        flags[nearest < isolation] |= STAR_FLAGS["crowded"]

    fits = {key: np.full(n, np.nan) for key in ("x", "y", "flux", "fwhm", "ellipticity")}
    fits["ok"] = np.zeros(n, dtype=bool)
    todo = np.flatnonzero(flags == 0)
    if todo.size:
        measured = gaussian_fits(sub, bad, det["x"][todo], det["y"][todo], fwhm, shape=True)
        for key in fits:
            fits[key][todo] = measured[key]
        flags[todo[~measured["ok"]]] |= STAR_FLAGS["bad_fit"]
    sigma = np.where(fits["ok"], fits["fwhm"], fwhm) / FWHM_PER_SIGMA
    snr = fits["flux"] / (rms * np.sqrt(4.0 * math.pi) * sigma)
    flags[fits["ok"] & ~(snr >= min_snr)] |= STAR_FLAGS["faint"]

    # FWHM and shape outliers among the stars that survived so far
    good = flags == 0
    if good.sum() >= 3:
        outlier, _ = trend_outliers(fits["x"][good], fits["y"][good], fits["fwhm"][good],
                                    _FWHM_SPREAD_FLOOR * np.median(fits["fwhm"][good]))
        flags[np.flatnonzero(good)[outlier]] |= STAR_FLAGS["fwhm_outlier"]
        ell = fits["ellipticity"][good]
        finite = np.isfinite(ell)
        if finite.sum() >= 3:
            centre = np.median(ell[finite])
            spread = max(1.4826 * np.median(np.abs(ell[finite] - centre)),
                         _ELLIPTICITY_SPREAD_FLOOR)
            elongated = ~finite | (ell > centre + CLIP_SIGMA * spread)
            flags[np.flatnonzero(good)[elongated]] |= STAR_FLAGS["shape_outlier"]
    good = flags == 0
    if good.sum() > max_stars:
        order = np.flatnonzero(good)[np.argsort(-fits["flux"][good])]
        flags[order[max_stars:]] |= STAR_FLAGS["excess"]

    table = Table()
    table["x"] = np.where(fits["ok"], fits["x"], det["x"])
    table["y"] = np.where(fits["ok"], fits["y"], det["y"])
    table["flux"] = fits["flux"]
    table["peak"] = peak
    table["fwhm"] = fits["fwhm"]
    table["ellipticity"] = fits["ellipticity"]
    table["sharpness"] = det["sharpness"]
    table["roundness1"] = det["roundness1"]
    table["roundness2"] = det["roundness2"]
    table["snr"] = snr
    table["nearest"] = nearest
    table["flags"] = flags
    brightness = np.where(np.isfinite(fits["flux"]), fits["flux"], peak)
    order = np.lexsort((-np.nan_to_num(brightness, nan=-np.inf), flags != 0))
    table = table[order]
    table.add_column(np.arange(1, len(table) + 1), name="id", index=0)
    return table, np.column_stack([xp, yp])


def _flat_topped(sub, x, y, fwhm, rms):
    """Stars whose 3 x 3 core has five or more pixels within a quarter of the
    drop a Gaussian of the FWHM has over one pixel: a plateau (saturation,
    non-linearity) that no Gaussian-like PSF makes. Only tested where that
    tolerance is well above the noise.
    """
    if x.size == 0:
        return np.zeros(0, dtype=bool)
    ny, nx = sub.shape
    cx, cy = box_centres(x, y)
    cx, cy = np.clip(cx, 1, nx - 2), np.clip(cy, 1, ny - 2)
    offsets = np.arange(-1, 2)
    # the brightest pixel near the centre
    core = sub[(cy[:, None] + offsets)[:, :, None], (cx[:, None] + offsets)[:, None, :]]
    flat_index = core.reshape(x.size, 9).argmax(axis=1)
    px = np.clip(cx + flat_index % 3 - 1, 1, nx - 2)
    py = np.clip(cy + flat_index // 3 - 1, 1, ny - 2)
    core = sub[(py[:, None] + offsets)[:, :, None], (px[:, None] + offsets)[:, None, :]]
    peak = core.reshape(x.size, 9).max(axis=1)
    sigma = fwhm / FWHM_PER_SIGMA
    drop = 1.0 - math.exp(-0.5 / sigma ** 2)
    tolerance = 0.25 * drop * peak
    close = (core.reshape(x.size, 9) >= (peak - tolerance)[:, None]).sum(axis=1)
    return (close >= 5) & (tolerance > 5.0 * rms)


def find_candidates(prep, *, fwhm, threshold, isolation, saturation, max_stars, min_snr):
    """find_stars on a prepared image; also returns what estimate_psf reuses."""
    data, bad = prep.data, prep.bad
    auto_saturation, n_top = saturation_plateau(data, bad)
    level = saturation if saturation is not None else auto_saturation
    if saturation is None and auto_saturation is not None:
        log.debug(f"find_stars: saturation level {auto_saturation:g} "
                  f"({n_top} pixels share the image maximum)")
    fixed = fwhm is not None
    if fixed:
        current = fwhm
    else:
        median, std = robust_stats(data[~bad])
        current = guess_fwhm(data - median, bad, std, level, data)
    context = {"saturation": level, "threshold": threshold, "fwhm_iterations": 0}
    if current is None:
        background, rms, bkg_level = estimate_background(data, bad, 3.0)
        radius = isolation if isolation is not None else math.nan
        context.update(background=background, rms=rms, background_level=bkg_level,
                       fwhm=math.nan, isolation=radius, neighbours=np.zeros((0, 2)),
                       n_detected=0)
        table = _empty_star_table()
        table.meta.update({"fwhm": math.nan, "rms": rms, "background": bkg_level,
                           "saturation": level, "threshold": threshold, "isolation": radius,
                           "n_detected": 0})
        return table, context
    table, neighbours, background_fwhm = None, None, None
    for iteration in range(1, _FWHM_ITERATIONS + 1):
        if background_fwhm is None or abs(current / background_fwhm - 1.0) > 0.3:
            # background boxes of about eight FWHMs
            background, rms, bkg_level = estimate_background(data, bad, current)
            sub = data - background
            sub[bad] = 0.0
            background_fwhm = current
        radius = isolation if isolation is not None else ISOLATION_FWHMS * current
        table, neighbours = _select(prep, sub, rms, current, threshold=threshold,
                                    isolation=radius, saturation=level, max_stars=max_stars,
                                    min_snr=min_snr)
        context["fwhm_iterations"] = iteration
        good = np.asarray(table["flags"]) == 0
        if fixed or good.sum() < 3:
            break
        measured = float(np.median(np.asarray(table["fwhm"])[good]))
        if abs(measured / current - 1.0) < _FWHM_ITERATION_TOLERANCE:
            break
        current = measured
    context.update(background=background, rms=rms, background_level=bkg_level, fwhm=current,
                   isolation=radius, neighbours=neighbours, sub=sub, n_detected=len(table))
    table.meta.update({"fwhm": current, "rms": rms, "background": bkg_level,
                       "saturation": level, "threshold": threshold, "isolation": radius,
                       "n_detected": len(table)})
    return table, context


def _empty_star_table():
    table = Table(names=("id", "x", "y", "flux", "peak", "fwhm", "ellipticity", "sharpness",
                         "roundness1", "roundness2", "snr", "nearest", "flags"),
                  dtype=(np.int64,) + (np.float64,) * 11 + (np.int64,))
    return table


def rejection_summary(flags):
    """'12 saturated, 30 crowded, ...' for the rejected candidates."""
    parts = []
    for name, bit in STAR_FLAGS.items():
        count = int(np.count_nonzero(np.asarray(flags) & bit))
        if count:
            parts.append(f"{count} {name.replace('_', ' ')}")
    return ", ".join(parts) if parts else "none"


def check_find_options(fwhm, threshold, isolation, saturation, max_stars, min_snr):
    fwhm = positive("fwhm", fwhm)
    if fwhm is not None and not 0.5 <= fwhm <= 100.0:
        msg = f"fwhm must be from 0.5 to 100 pixels (or None to measure it), got {fwhm!r}"
        raise ValueError(msg)
    threshold = positive("threshold", threshold, allow_none=False)
    isolation = positive("isolation", isolation)
    if saturation is not None:
        if isinstance(saturation, bool) or not isinstance(saturation, int | float | np.integer
                                                          | np.floating):
            msg = f"saturation must be a number (the level in data units) or None, " \
                  f"got {saturation!r}"
            raise TypeError(msg)
        saturation = float(saturation)
        if not math.isfinite(saturation):
            msg = f"saturation must be a finite number or None, got {saturation!r}"
            raise ValueError(msg)
    max_stars = integer("max_stars", max_stars, 1)
    min_snr = positive("min_snr", min_snr, allow_none=False)
    return fwhm, threshold, isolation, saturation, max_stars, min_snr


def find_stars(image, *, fwhm=None, mask=None, threshold=5.0, isolation=None, saturation=None,
               max_stars=500, min_snr=20.0, return_all=False):
    """Find the isolated, unsaturated, well-measured stars of an image.

    The background is a `~photutils.background.Background2D` (sigma-clipped
    medians in boxes of about eight FWHMs, bright sources left out). Sources
    are detected with `~photutils.detection.DAOStarFinder` at ``threshold``
    times the background noise; every source, including faint companions,
    also comes from the local maxima of the image smoothed at the FWHM. A
    candidate is rejected when it is saturated, has another source closer
    than ``isolation``, is near the edge or a masked pixel; the others are
    measured (local background subtracted, circular Gaussian PRF fitted as
    `photutils.psf.fit_fwhm` does, see the docstring of
    ``astropsfmatch._workflow.stars``) and rejected when the fit fails,
    when they are too faint, or when their FWHM is off the trend of the
    other stars over the image (cosmic rays, galaxies, blends) or their
    elongation above theirs (blends). When ``fwhm`` is not given it is
    estimated: a first guess from the half-maximum areas of bright peaks,
    then detection and measurement are repeated with the median measured
    FWHM until it changes by less than 1%.

    Parameters
    ----------
    image : 2-D array, `~astropy.nddata.NDData`, `~astropy.nddata.CCDData` or masked array
        The image, with or without its background. Integer and big-endian
        data (as FITS files give) are copied to native float64; the input is
        never modified. The mask of an NDData or a masked array, and
        non-finite pixels, are bad pixels.
    fwhm : float, optional
        The FWHM of the stars in pixels; measured when not given.
    mask : 2-D bool array, optional
        More bad pixels (True).
    threshold : float, optional
        Detection threshold in units of the background noise.
    isolation : float, optional
        Stars with another source closer than this (pixels) are rejected;
        default 2.5 FWHMs.
    saturation : float, optional
        Saturation level in data units: stars with a pixel at or above it
        in their fitting box are rejected. By default the image maximum when
        three or more pixels share it. Flat-topped cores are rejected in
        any case.
    max_stars : int, optional
        Keep at most this many stars, the brightest.
    min_snr : float, optional
        Smallest signal-to-noise ratio of a star's flux (against the
        background noise).
    return_all : bool, optional
        Return every candidate, with the reasons of the rejections in
        ``flags``, instead of the good stars only.

    Returns
    -------
    stars : `~astropy.table.Table`
        One row per star, brightest first: ``id``, ``x``, ``y`` (fitted
        position, pixel centres at integers), ``flux`` (fitted Gaussian
        flux, background-subtracted), ``peak`` (highest background-subtracted
        pixel of the core), ``fwhm`` (fitted), ``ellipticity`` (``1 - b/a``
        from weighted second moments), ``sharpness``, ``roundness1``,
        ``roundness2`` (from `~photutils.detection.DAOStarFinder`), ``snr``,
        ``nearest`` (distance to the nearest other source) and ``flags``
        (bits of `STAR_FLAGS`, 0 for good stars). ``meta`` holds the FWHM
        used, the background noise ``rms`` and level, the saturation level,
        the thresholds and the number of detections. The table is empty when
        no star is found.

    Raises
    ------
    TypeError
        If ``image`` is not numeric or an option has the wrong type.
    ValueError
        If ``image`` is not 2-D or is smaller than 16 x 16 pixels, if
        ``mask`` has another shape, or if an option is out of range.

    Examples
    --------
    >>> import numpy as np
    >>> from photutils.psf import CircularGaussianPRF
    >>> from astropsfmatch._workflow.stars import find_stars
    >>> yy, xx = np.mgrid[:150, :150]
    >>> image = np.random.default_rng(0).normal(100.0, 5.0, xx.shape)
    >>> for x0 in range(15, 150, 30):
    ...     for y0 in range(15, 150, 30):
    ...         image += CircularGaussianPRF(flux=2e4, x_0=x0 + 0.3, y_0=y0 - 0.2,
    ...                                      fwhm=3.0)(xx, yy)
    >>> stars = find_stars(image)
    >>> len(stars), round(float(np.median(stars["fwhm"])), 2)
    (25, 3.0)
    >>> stars.colnames[:6]
    ['id', 'x', 'y', 'flux', 'peak', 'fwhm']
    """
    fwhm, threshold, isolation, saturation, max_stars, min_snr = check_find_options(
        fwhm, threshold, isolation, saturation, max_stars, min_snr)
    prep = prepare(image, mask, "image")
    table, context = find_candidates(prep, fwhm=fwhm, threshold=threshold, isolation=isolation,
                                     saturation=saturation, max_stars=max_stars, min_snr=min_snr)
    good = np.asarray(table["flags"]) == 0
    log.debug(f"find_stars: {int(good.sum())} stars of {len(table)} detections "
             f"(FWHM {context['fwhm']:.2f} px; rejected: {rejection_summary(table['flags'])})")
    if return_all:
        return table
    kept = table[good]
    kept["id"] = np.arange(1, len(kept) + 1)
    return kept
