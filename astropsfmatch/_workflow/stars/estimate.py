"""`estimate_psf`: a photutils PSF model measured on an image's stars, with its
check (`PSFEstimate`).

Finds the stars (`find_candidates`), stacks them into node ePSFs
(`stack_stars`) on the grid asked for or chosen from the stars, makes the
photutils model and checks it against the stars' FWHMs, trying coarser grids
when it does not agree.
"""

import math
import warnings
from dataclasses import dataclass

import numpy as np
from astropy.nddata import NDData
from astropy.table import Table
from astropy.utils.exceptions import AstropyUserWarning
from photutils.psf import GriddedPSFModel, ImagePSF

from ..._logging import log
from .detect import estimate_background, guess_fwhm, smoothed_peaks
from .epsf import node_positions, regions
from .find import ISOLATION_FWHMS, check_find_options, find_candidates, rejection_summary
from .image import integer, positive, prepare, star_positions
from .measure import gaussian_fits, model_fwhm
from .robust import robust_stats
from .stack import stack_stars

# the public names of this module, re-exported by astropsfmatch/__init__.py
__all__ = ["PSFEstimate", "estimate_psf"]


@dataclass(frozen=True, eq=False)
class PSFEstimate:
    """A PSF model measured on an image's stars, with its checks.

    Attributes
    ----------
    psf : `~photutils.psf.GriddedPSFModel` or `~photutils.psf.ImagePSF`
        The PSF: oversampled ePSFs of unit flux (the model evaluated on
        detector pixels sums to 1), centred on their windowed centroid. A
        `~photutils.psf.GriddedPSFModel` (``meta``: ``grid_xypos``,
        ``oversampling``, ``fwhm``, ``n_stars``, ``method``) whose nodes span
        the image from edge to edge (for a 3 x 3 grid: the corners, the
        middles of the edges and the centre), so that its bilinear
        interpolation covers the whole image; or an
        `~photutils.psf.ImagePSF` for a constant PSF.
    stars : `~astropy.table.Table`
        The stars used (as `find_stars` returns them) with the columns
        ``x_psf``, ``y_psf``, ``flux_psf`` (fitted with the model),
        ``star_fwhm`` (the star's FWHM measured from ``x_psf, y_psf``),
        ``model_fwhm`` (the model's FWHM measured in the same way) and
        ``region`` (``iy * nx + ix``).
    star_fwhm : float
        Median FWHM of the stars (pixels).
    model_fwhm : float
        Median FWHM of the model rendered at the stars' positions.
    deviation : float
        Median of the ratios of model to star FWHMs, minus one.
    converged : bool
        Whether the model reproduces the stars: ``abs(deviation) <=
        tolerance`` and, in every region with three stars or more, the
        median ratio within twice the tolerance (or three standard errors);
        for a constant PSF the regions of a 2 x 2 grid are checked.
    grid_shape : tuple of int
        ``(ny, nx)``: nodes of the grid and regions of the image (its
        ``ny x nx`` equal parts); ``(1, 1)`` for a constant PSF.
    n_stars : `~numpy.ndarray` of int, shape ``grid_shape``
        Stars per region.
    region_star_fwhm, region_model_fwhm : `~numpy.ndarray`, shape ``grid_shape``
        Median star and model FWHMs per region (NaN for an empty region).
    oversampling : int
        Oversampling of the ePSFs.
    size : int
        Side of the ePSFs in detector pixels.
    iterations : int
        Iterations of the stack.
    message : str
        One sentence saying what was done.
    """

    psf: object
    stars: Table
    star_fwhm: float
    model_fwhm: float
    deviation: float
    converged: bool
    grid_shape: tuple
    n_stars: np.ndarray
    region_star_fwhm: np.ndarray
    region_model_fwhm: np.ndarray
    oversampling: int
    size: int
    iterations: int
    message: str

    def __repr__(self):
        return f"<PSFEstimate: {self.message}>"


def _check_grid(grid):
    if grid is None:
        return None
    try:
        gy, gx = grid
    except (TypeError, ValueError) as exc:
        msg = f"grid must be None or a pair (ny, nx) of integers, got {grid!r}"
        raise TypeError(msg) from exc
    gy = integer("grid[0]", gy, 1, 10)
    gx = integer("grid[1]", gx, 1, 10)
    if (gy == 1) != (gx == 1):
        msg = f"grid must be (1, 1) (a constant PSF) or have at least 2 nodes along both " \
              f"axes (photutils' GriddedPSFModel needs a 2-D grid), got {grid!r}"
        raise ValueError(msg)
    return gy, gx


def _auto_grid(x, y, shape, stars_per_region, largest=3):
    """Largest square grid (up to ``largest``) whose every region has enough stars."""
    for g in range(largest, 1, -1):
        counts = np.bincount(regions(x, y, shape, (g, g)), minlength=g * g)
        if counts.min() >= stars_per_region:
            return g, g
    return 1, 1


def _auto_oversampling(fwhm, per_region):
    """2 for well-sampled stars, 3 or 4 for undersampled ones when there are enough."""
    if fwhm >= 2.5:
        return 2
    if per_region >= 32:
        return 4
    if per_region >= 18:
        return 3
    return 2


def _make_psf_model(epsfs, nodes, oversampling, meta):
    xs, ys = nodes
    if epsfs.shape[0] == 1:
        model = ImagePSF(epsfs[0], oversampling=oversampling)
        model.meta.update(meta)
        return model
    grid_xypos = [(float(xn), float(yn)) for yn in ys for xn in xs]
    return GriddedPSFModel(NDData(epsfs, meta={"grid_xypos": grid_xypos,
                                               "oversampling": oversampling, **meta}))


def _per_region(values, region, n_regions, shape):
    out = np.full(n_regions, np.nan)
    for k in range(n_regions):
        sel = (region == k) & np.isfinite(values)
        if sel.any():
            out[k] = np.median(values[sel])
    return out.reshape(shape)


def estimate_psf(image, *, grid=None, oversampling=None, size=None, fwhm=None, mask=None,
                 stars=None, min_stars=5, stars_per_region=8, tolerance=0.02, maxiters=40,
                 threshold=5.0, isolation=None, saturation=None, max_stars=500):
    """Measure the PSF of an image on its stars: a photutils ePSF model.

    The stars (from `find_stars` unless given) are stacked into an
    oversampled ePSF by iterated residual stacking: starting from a Gaussian,
    every star's flux and position are refitted with the current model, the
    flux-normalized residuals of its pixels (local background subtracted,
    neighbours masked) are binned on the oversampled grid by their offsets
    from its centre, weighted by their inverse variance, clipped per bin
    (cosmic rays, neighbours) and their mean, slightly smoothed, is added to
    the model. For a grid, the variation of the ePSF over the image is then
    fitted, in the same way, as a polynomial in the star position (degree 1
    for 2 x 2 nodes, 2 for 3 x 3) and evaluated at the nodes, which span the
    image from edge to edge: the model interpolates everywhere and never
    extrapolates.

    The model is then checked: rendered at the stars' positions and
    measured as the stars are (circular Gaussian PRF fits in the same
    boxes, see the docstring of ``astropsfmatch._workflow.stars``), its FWHMs
    must agree with the stars' (median ratio within ``tolerance``, every
    region within twice that).
    Otherwise coarser grids are tried, down to a constant PSF (and a 2 x 2
    grid when there were too few stars for one but a constant PSF does not
    follow the stars); if none agrees, an
    `~astropy.utils.exceptions.AstropyUserWarning` is emitted,
    ``converged`` is False and ``message`` says so.

    Parameters
    ----------
    image : 2-D array, `~astropy.nddata.NDData`, `~astropy.nddata.CCDData` or masked array
        The image, as for `find_stars` (never modified). The uncertainty of
        an NDData, when it has one, gives the weights of the pixels in the
        stack (else the background noise and the photon noise measured on
        the stars).
    grid : tuple of int, optional
        ``(ny, nx)`` nodes of a `~photutils.psf.GriddedPSFModel` (2 or more
        along both axes), or ``(1, 1)`` for a constant
        `~photutils.psf.ImagePSF`. By default the largest of 3 x 3 and
        2 x 2 whose every region (the image divided into ``ny x nx`` equal
        parts) holds ``stars_per_region`` stars, else constant.
    oversampling : int, optional
        Oversampling of the ePSFs (1 to 8); by default 2 when the FWHM is
        2.5 pixels or more, up to 4 for undersampled stars when there are
        enough.
    size : odd int, optional
        Side of the ePSFs in detector pixels; by default
        ``2 * ceil(3 * fwhm) + 1``, at most a third of the image side.
    fwhm : float, optional
        FWHM of the stars (pixels), passed to `find_stars`; measured when
        not given.
    mask : 2-D bool array, optional
        Bad pixels (True), in addition to the image's own mask.
    stars : `~astropy.table.Table`, optional
        The stars to use, with ``x`` and ``y`` columns (for example a
        filtered output of `find_stars`); found with `find_stars` if not
        given.
    min_stars : int, optional
        Fewest stars to build a PSF from.
    stars_per_region : int, optional
        Fewest stars per region for the automatic grid.
    tolerance : float, optional
        Largest accepted relative difference between the model and star
        FWHMs.
    maxiters : int, optional
        Largest number of iterations of the stack (and of the fit of the
        variation).
    threshold, isolation, saturation, max_stars : optional
        Passed to `find_stars`.

    Returns
    -------
    estimate : `PSFEstimate`

    Raises
    ------
    ValueError
        If fewer than ``min_stars`` stars are found (the message gives the
        number and the thresholds), or for an invalid image or option.
    TypeError
        For an option of the wrong type.

    Examples
    --------
    >>> import numpy as np
    >>> from photutils.psf import CircularGaussianPRF, ImagePSF
    >>> from astropsfmatch._workflow.stars import estimate_psf
    >>> yy, xx = np.mgrid[:150, :150]
    >>> image = np.random.default_rng(1).normal(100.0, 5.0, xx.shape)
    >>> for x0 in range(15, 150, 30):
    ...     for y0 in range(15, 150, 30):
    ...         image += CircularGaussianPRF(flux=3e4, x_0=x0 + 0.27, y_0=y0 - 0.41,
    ...                                      fwhm=3.2)(xx, yy)
    >>> estimate = estimate_psf(image)
    >>> isinstance(estimate.psf, ImagePSF), estimate.converged
    (True, True)
    >>> print(estimate.message)  # doctest: +ELLIPSIS
    constant ImagePSF from 25 stars ..., FWHM 3.20 px (stars 3.20 px)
    >>> model = estimate.psf.copy()   # unit flux on detector pixels
    >>> model.x_0, model.y_0 = 10.3, 10.6
    >>> yy, xx = np.mgrid[:21, :21]
    >>> round(float(model(xx, yy).sum()), 3)
    1.0
    """
    grid = _check_grid(grid)
    oversampling = integer("oversampling", oversampling, 1, 8, allow_none=True)
    size = integer("size", size, 5, allow_none=True)
    if size is not None and size % 2 == 0:
        msg = f"size must be an odd integer >= 5 (detector pixels), got {size!r}"
        raise ValueError(msg)
    min_stars = integer("min_stars", min_stars, 1)
    stars_per_region = integer("stars_per_region", stars_per_region, 1)
    tolerance = positive("tolerance", tolerance, allow_none=False)
    maxiters = integer("maxiters", maxiters, 1)
    fwhm, threshold, isolation, saturation, max_stars, _ = check_find_options(
        fwhm, threshold, isolation, saturation, max_stars, 20.0)
    prep = prepare(image, mask, "image")

    if stars is None:
        table, context = find_candidates(prep, fwhm=fwhm, threshold=threshold, isolation=isolation,
                                         saturation=saturation, max_stars=max_stars, min_snr=20.0)
        n_detected = len(table)
        rejected = rejection_summary(table["flags"])
        table = table[np.asarray(table["flags"]) == 0]
        star_fwhm_guess = context["fwhm"]
    else:
        x_in, y_in = star_positions(stars)
        table = Table(stars, copy=True)
        table["x"], table["y"] = x_in, y_in
        guess = fwhm
        if guess is None and "fwhm" in table.colnames:
            values = np.asarray(table["fwhm"], dtype=np.float64)
            values = values[np.isfinite(values) & (values > 0)]
            guess = float(np.median(values)) if values.size else None
        if guess is None:
            median, std = robust_stats(prep.data[~prep.bad])
            guess = guess_fwhm(prep.data - median, prep.bad, std, None, prep.data) or 3.0
        background, rms, _ = estimate_background(prep.data, prep.bad, guess)
        sub = prep.data - background
        sub[prep.bad] = 0.0
        xp, yp = smoothed_peaks(sub, prep.bad, guess, rms, threshold)
        context = {"sub": sub, "rms": rms, "fwhm": guess, "threshold": threshold,
                   "isolation": isolation if isolation is not None else ISOLATION_FWHMS * guess,
                   "saturation": saturation, "neighbours": np.column_stack([xp, yp])}
        n_detected = len(table)
        rejected = "none (stars given)"
        star_fwhm_guess = guess

    if len(table) >= min_stars:
        # the stars as measured here (all of those from find_stars are measurable)
        first = gaussian_fits(context["sub"], prep.bad, np.asarray(table["x"], float),
                              np.asarray(table["y"], float), float(star_fwhm_guess))
        if not first["ok"].all():
            log.debug(f"estimate_psf: {int((~first['ok']).sum())} of the stars given could "
                      f"not be measured and are left out")
            table = table[first["ok"]]
            first = {key: value[first["ok"]] for key, value in first.items()}
    n_found = len(table)
    if n_found < min_stars:
        sat = context.get("saturation")
        isolation_text = f"{context['isolation']:.1f} px" if math.isfinite(context["isolation"]) \
            else f"{ISOLATION_FWHMS:g} FWHMs"
        fwhm_text = f"{context['fwhm']:.2f} px" if math.isfinite(context["fwhm"]) \
            else "not measured (no peak)"
        msg = (f"estimate_psf needs at least min_stars={min_stars} stars, found {n_found} "
               f"(of {n_detected} detections at threshold={context['threshold']:g} sigma; "
               f"isolation={isolation_text}, "
               f"saturation={'none' if sat is None else format(sat, 'g')}, "
               f"FWHM {fwhm_text}; rejected: {rejected})")
        raise ValueError(msg)

    sub, bad = context["sub"], prep.bad
    star_fwhm_guess = float(star_fwhm_guess)
    flux, x, y = first["flux"], first["x"], first["y"]
    local = first["background"]
    rms = context["rms"]

    if grid is None:
        grid = _auto_grid(x, y, sub.shape, stars_per_region)
        automatic_grid = True
    else:
        automatic_grid = False
    if size is None:
        size = 2 * int(math.ceil(3.0 * star_fwhm_guess)) + 1
        size = max(5, min(size, 2 * (min(sub.shape) // 6) + 1))
    half = size // 2

    sequence = _grid_sequence(grid)
    if automatic_grid and grid == (1, 1) and \
            np.bincount(regions(x, y, sub.shape, (2, 2)), minlength=4).min() >= 3:
        sequence.append((2, 2))  # if a constant PSF does not follow the stars
    tried = []
    best = None
    for g in sequence:
        per_region = np.bincount(regions(x, y, sub.shape, g), minlength=g[0] * g[1]).min()
        os = oversampling if oversampling is not None else \
            _auto_oversampling(star_fwhm_guess, per_region)
        result = _build_and_check(sub, bad, prep.error, rms, x, y, flux, local,
                                  context["neighbours"], fwhm=star_fwhm_guess, half=half,
                                  oversampling=os, grid=g, maxiters=maxiters,
                                  tolerance=tolerance)
        log.debug(f"estimate_psf: grid {g[0]}x{g[1]}, oversampling {os}: model FWHM "
                  f"{result['model_fwhm']:.3f} px, stars {result['star_fwhm']:.3f} px, "
                  f"deviation {result['deviation']:+.2%}, worst region "
                  f"{result['worst_region']:+.2%}")
        if best is None or result["score"] < best["score"]:
            best = result
        if result["agrees"]:
            best = result
            break
        tried.append(result)
    converged = bool(best["agrees"])
    g = best["grid"]
    kind = "constant ImagePSF" if g == (1, 1) else f"{g[0]}x{g[1]} GriddedPSFModel"
    counts = best["n_stars"]
    if counts.size > 1:
        spread = f"{counts.min()}-{counts.max()} per region"
    elif automatic_grid and grid == (1, 1):
        spread = f"too few for a 2x2 grid at {stars_per_region} per region"
    elif g == tuple(grid):
        spread = "a constant PSF as asked"
    else:
        spread = "a constant PSF"
    message = (f"{kind} from {x.size} stars ({spread}), oversampling {best['oversampling']}, "
               f"FWHM {best['model_fwhm']:.2f} px (stars {best['star_fwhm']:.2f} px)")
    failed = [r for r in tried if r is not best]
    if failed:
        names = [f"the {r['grid'][0]}x{r['grid'][1]} grid" if r["grid"] != (1, 1)
                 else "a constant PSF" for r in failed]
        message += "; " + " and ".join(names) + " did not reproduce the stars' FWHMs" + \
            (" either" if not converged else "")
    if not converged:
        message += (f"; did not converge: the model FWHM differs from the stars' by "
                    f"{best['deviation']:+.1%} overall and up to {best['worst_region']:+.1%} "
                    f"in a region (tolerance {tolerance:.1%})")
        warnings.warn(f"estimate_psf: {message}", AstropyUserWarning, stacklevel=2)
    log.debug(f"estimate_psf: {message}")

    used = Table(table, copy=True)
    used["x_psf"] = best["x"]
    used["y_psf"] = best["y"]
    used["flux_psf"] = best["flux"]
    used["star_fwhm"] = best["star_fwhms"]
    used["model_fwhm"] = best["model_fwhms"]
    used["region"] = best["region"]
    return PSFEstimate(psf=best["psf"], stars=used, star_fwhm=best["star_fwhm"],
                       model_fwhm=best["model_fwhm"], deviation=best["deviation"],
                       converged=converged, grid_shape=g, n_stars=counts,
                       region_star_fwhm=best["region_star_fwhm"],
                       region_model_fwhm=best["region_model_fwhm"],
                       oversampling=best["oversampling"], size=size,
                       iterations=best["iterations"], message=message)


def _grid_sequence(grid):
    """The grid asked for, then coarser square grids down to a constant PSF."""
    out = [tuple(grid)]
    g = min(grid)
    while g > 2:
        g -= 1
        if (g, g) != out[-1]:
            out.append((g, g))
    if tuple(grid) != (1, 1):
        out.append((1, 1))
    return out


def _build_and_check(sub, bad, error, rms, x, y, flux, background, others, *, fwhm, half,
                     oversampling, grid, maxiters, tolerance):
    """One stack and its FWHM check."""
    nodes = node_positions(sub.shape, grid)
    epsfs, xs, ys, fs, iterations, _ = stack_stars(sub, bad, error, rms, x, y, flux, background,
                                                   others, fwhm=fwhm, half=half,
                                                   oversampling=oversampling, grid=tuple(grid),
                                                   maxiters=maxiters)
    meta = {"fwhm": fwhm, "method": "astropsfmatch stack of image stars",
            "n_stars": int(x.size)}
    psf = _make_psf_model(epsfs, nodes, oversampling, meta)
    star = gaussian_fits(sub, bad, xs, ys, fwhm)
    star_fwhms = star["fwhm"]
    x_fit = np.where(star["ok"], star["x"], xs)
    y_fit = np.where(star["ok"], star["y"], ys)
    model_fwhms = model_fwhm(psf, x_fit, y_fit, fwhm, xs, ys)
    paired = np.isfinite(star_fwhms) & np.isfinite(model_fwhms)
    if paired.any():
        deviation = float(np.median(model_fwhms[paired] / star_fwhms[paired]) - 1.0)
        star_median = float(np.median(star_fwhms[paired]))
        model_median = float(np.median(model_fwhms[paired]))
    else:
        deviation, star_median, model_median = math.inf, math.nan, math.nan
    region = regions(xs, ys, sub.shape, grid)
    n_regions = grid[0] * grid[1]
    # every region with three stars or more must agree within twice the
    # tolerance or three standard errors of its median ratio (the regions of
    # a 2 x 2 grid for a constant PSF: does it follow the stars over the image?)
    check_grid = (2, 2) if tuple(grid) == (1, 1) else tuple(grid)
    check_region = regions(xs, ys, sub.shape, check_grid)
    worst, excess = 0.0, 0.0
    ratio = np.where(paired, model_fwhms / np.where(paired, star_fwhms, 1.0), np.nan)
    for k in range(check_grid[0] * check_grid[1]):
        values = ratio[(check_region == k) & paired]
        if values.size < 3:
            continue
        dev = float(np.median(values) - 1.0)
        spread = 1.4826 * float(np.median(np.abs(values - np.median(values))))
        limit = max(2.0 * tolerance, 3.0 * 1.2533 * spread / math.sqrt(values.size))
        if abs(dev) > abs(worst):
            worst = dev
        excess = max(excess, abs(dev) / limit)
    agrees = bool(abs(deviation) <= tolerance and excess <= 1.0)
    score = max(abs(deviation) / tolerance, excess)
    return {"agrees": agrees, "score": score, "worst_region": worst, "psf": psf,
            "grid": tuple(grid), "oversampling": oversampling, "x": xs, "y": ys, "flux": fs,
            "iterations": iterations, "star_fwhms": star_fwhms,
            "model_fwhms": model_fwhms, "deviation": deviation, "star_fwhm": star_median,
            "model_fwhm": model_median, "region": region,
            "n_stars": np.bincount(region, minlength=n_regions).reshape(grid),
            "region_star_fwhm": _per_region(np.where(paired, star_fwhms, np.nan), region,
                                            n_regions, grid),
            "region_model_fwhm": _per_region(np.where(paired, model_fwhms, np.nan), region,
                                             n_regions, grid)}
