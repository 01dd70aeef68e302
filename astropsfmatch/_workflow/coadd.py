"""Co-add exposures at a common PSF.

`coadd` co-adds exposures that were matched to a common PSF (reprojected with
reproject: an inverse-variance weighted mean and its variance);
`coadd_psf_matched` matches each exposure in its own frame to the target as
that frame sees it and warps it to the output grid, so that the coadd's PSF
is the target on the output grid (the pieces are in ``warp.py``).
"""

import copy
import os
import warnings
from collections.abc import Mapping, Sequence

import astropy.units as u
import numpy as np
from astropy.io import fits
from astropy.modeling import Model
from astropy.nddata import CCDData, NDData, VarianceUncertainty
from astropy.utils.exceptions import AstropyUserWarning
from astropy.wcs import WCS

from .._about import __version__
from .._adapters.files import read_matched
from .._adapters.nddata import (
    UNCERTAINTY_KINDS,
    annotated_meta,
    uncertainty_of_kind,
    variance_of,
)
from .._adapters.psf import as_psf
from .._engine.grid import next_odd, resize_stamp
from .._engine.resample import KERNELS
from .._engine.weights import inverse_variance_weights
from .._logging import log
from .._optional import require
from .._threads import resolve_workers, thread_scope
from .._validate import InvalidTypeError, check_type, choice, real_dtype, sequence_of
from ..config import MatchConfig
from .many import ManyResult
from .matcher import ModelPsfMatcher
from .provenance import COADD_HISTORY, coadd_record, describe_psf
from .result import MatchResult
from .warp import (
    FrameMap,
    coadd_psf_model,
    detector_target,
    exposure_psf_stamps,
    heldout_candidates,
    psf_verdict,
    stamp_support,
    warp_matched,
)

# the public names of this module, re-exported by astropsfmatch/__init__.py
__all__ = ["coadd", "coadd_psf_matched"]

_COMBINES = ("mean", "sum")
_WEIGHT_MODES = ("inverse-variance", "uniform")

#: Keyword arguments of reproject_and_coadd itself that would apply to the
#: variance and coverage passes too, where they make no sense.
_RESERVED = ("combine_function", "input_weights", "match_background", "background_reference",
             "output_array", "output_footprint", "hdu_in", "hdu_weights", "shape_out",
             "output_projection", "reproject_function")

#: Two target PSF stamps agree if they differ by less than this fraction of the peak.
_PSF_TOLERANCE = 1e-3

#: The coadd's PSF is that of the inputs only if the pixel scales agree this well.
_SCALE_TOLERANCE = 1e-3


def coadd(matched, output_wcs, shape_out=None, *, combine="mean", weights=None,
          reproject_function=None, psf=None, read_kwargs=None, **reproject_kwargs):
    r"""
    Co-add PSF-matched exposures on a common pixel grid with reproject.

    A thin layer over `reproject.mosaicking.reproject_and_coadd`: each
    exposure is reprojected onto ``output_wcs`` with its masked and edge
    pixels as NaN (so they are ignored) and combined with inverse-variance
    weights; the weights are reprojected and co-added as well to give the
    variance of the result.

    Parameters
    ----------
    matched : sequence or `~astropsfmatch.ManyResult`
        The matched exposures: `~astropsfmatch.MatchResult` objects,
        `~astropy.nddata.CCDData`/`~astropy.nddata.NDData` images with a WCS,
        or paths of FITS files (e.g. those written by
        `~astropsfmatch.match_many`, read one at a time), in any mix; or a
        `~astropsfmatch.ManyResult`, whose successful results are used.
    output_wcs : `~astropy.wcs.WCS` or `~astropy.io.fits.Header`
        The output pixel grid.
    shape_out : tuple, optional
        Output shape ``(ny, nx)``; by default from the header's ``NAXISn`` or
        the WCS's ``array_shape``.
    combine : {'mean', 'sum'}, optional
        Weighted mean (the usual coadd) or weighted sum of the inputs.
    weights : {None, 'inverse-variance', 'uniform'} or sequence of arrays, optional
        How the inputs are weighted. None (default): inverse-variance weights
        for ``combine='mean'`` when every input has an uncertainty (or
        ``MatchResult.weights``), uniform weights otherwise and for
        ``combine='sum'``. ``'inverse-variance'`` requires them;
        ``'uniform'`` weights every valid pixel equally; or one weight array
        per input, of its shape.
    reproject_function : callable, optional
        The reprojection, `reproject.reproject_interp` by default (also
        `reproject.reproject_adaptive` or `reproject.reproject_exact`).
    psf : 2-D array or PSF model, optional
        The PSF of the coadd; by default the (common) ``psf`` stamp of the
        inputs, the target PSF they were matched to.
    read_kwargs : dict, optional
        Keyword arguments of `CCDData.read <astropy.nddata.CCDData.read>` for
        FITS paths.
    **reproject_kwargs
        Passed to the reprojection function, e.g. ``order='bicubic'`` for
        `~reproject.reproject_interp`.

    Returns
    -------
    coadd : `~astropy.nddata.CCDData`
        The co-added image on the output grid, in the unit of the inputs,
        with

        * ``uncertainty``: its variance (the inputs' uncertainty class if
          they all share one, else `~astropy.nddata.VarianceUncertainty`);
          None when the inputs have no uncertainty;
        * ``mask``: True where no input contributes (and there ``data`` and
          the variance are NaN);
        * ``psf``: the target PSF stamp;
        * ``footprint`` (an extra attribute, float array of the output
          shape): the number of inputs contributing to each pixel, as the
          sum of reproject's footprints. It is not kept by
          `~astropy.nddata.CCDData.copy`, arithmetic or
          `~astropy.nddata.CCDData.write`: save it separately if needed;
        * ``meta``: a FITS header recording the operation (``NCOMBINE``,
          ``COMBINE``, ``CWEIGHTS``, ``REPROJ``, ``PSFMTPSF``).

    Raises
    ------
    ValueError
        No inputs, an input without WCS, bad ``combine``, ``weights`` or
        ``shape_out``, inverse-variance weights for an input without
        uncertainty, or a reproject option that this function sets itself.
    TypeError
        An unsupported input or ``output_wcs``.
    astropy.units.UnitsError
        Inputs in incompatible units (compatible ones are converted to the
        unit of the first input).
    ImportError
        reproject is not installed.

    Notes
    -----
    With weights :math:`w_i` (reprojected, zero where input :math:`i` does
    not cover a pixel or is masked), data :math:`x_i` and variances
    :math:`\sigma_i^2`, the mean is :math:`\sum_i w_i x_i / \sum_i w_i`
    and its variance :math:`\sum_i w_i^2 \sigma_i^2 / (\sum_i w_i)^2`, which
    is :math:`1 / \sum_i w_i` for inverse-variance weights; the sum is
    :math:`\sum_i w_i x_i` with variance :math:`\sum_i w_i^2 \sigma_i^2`.
    Two calls of `~reproject.mosaicking.reproject_and_coadd` compute these:
    one for the data and weights, one for the variance terms and the
    coverage.

    This variance is per pixel: it does not include the covariance between
    neighbouring pixels that the matching kernel (and, more weakly, the
    reprojection's interpolation) introduces, so it underestimates the
    variance of sums over several pixels (aperture fluxes). Use the
    matching kernels (``MatchResult.kernel``) to propagate it where needed.

    Resampling with interpolation broadens the PSF slightly where the output
    pixels are offset from the input pixels by a fraction of a pixel
    (bilinear interpolation at a half-pixel offset adds a variance of 1/4
    pixel\ :sup:`2`): prefer output grids aligned with the inputs, or
    ``order='bicubic'``. The ``psf`` of the coadd is that of the inputs in
    their pixels; if the output pixel scale differs, it is not attached
    (with a warning). For exposures that do not line up with the output grid
    (rotated, offset by fractions of a pixel, at another scale) or a target
    that is not round, `coadd_psf_matched` matches and co-adds so that the
    coadd's PSF is the target on the output grid.

    Examples
    --------
    >>> import numpy as np
    >>> from astropy.nddata import CCDData, StdDevUncertainty
    >>> from astropy.wcs import WCS
    >>> from astropsfmatch import coadd
    >>> wcs = WCS(naxis=2)
    >>> wcs.wcs.ctype = ['RA---TAN', 'DEC--TAN']
    >>> wcs.wcs.cdelt = [-1e-4, 1e-4]
    >>> images = [CCDData(np.full((50, 50), value), unit='electron', wcs=wcs,
    ...                   uncertainty=StdDevUncertainty(np.full((50, 50), sigma)))
    ...           for value, sigma in [(1.0, 1.0), (4.0, 2.0)]]
    >>> result = coadd(images, wcs, (50, 50))
    >>> float(result.data[25, 25])   # (1/1 * 1 + 1/4 * 4) / (1/1 + 1/4)
    1.6
    >>> float(result.uncertainty.array[25, 25])   # sqrt(1 / (1/1 + 1/4))
    0.894427190999916
    >>> float(result.footprint[25, 25])
    2.0
    """
    reproject_interp = require("reproject", "coadd needs").reproject_interp
    reproject_and_coadd = require("reproject.mosaicking", "coadd needs").reproject_and_coadd
    items = _check_items(matched)
    n = len(items)
    if not isinstance(combine, str) or combine not in _COMBINES:
        msg = f"combine must be one of {', '.join(map(repr, _COMBINES))}, got {combine!r}"
        raise ValueError(msg)
    wcs_out, shape_out = _check_output(output_wcs, shape_out)
    reserved = sorted(set(reproject_kwargs) & set(_RESERVED))
    if reserved:
        msg = f"coadd sets {', '.join(reserved)} itself; do not pass them"
        raise ValueError(msg)
    if reproject_function is None:
        reproject_function = reproject_interp
    elif not callable(reproject_function):
        msg = f"reproject_function must be callable, got {type(reproject_function).__name__}"
        raise TypeError(msg)
    user_weights = None
    if weights is None or isinstance(weights, str):
        if weights is not None and weights not in _WEIGHT_MODES:
            msg = (f"weights must be None, {', '.join(map(repr, _WEIGHT_MODES))} or one array "
                   f"per input, got {weights!r}")
            raise ValueError(msg)
        mode = weights
    else:
        if not hasattr(weights, "__len__") or len(weights) != n:
            count = len(weights) if hasattr(weights, "__len__") else type(weights).__name__
            msg = f"weights must have one array per input: got {count} for {n} input(s)"
            raise ValueError(msg)
        user_weights, mode = list(weights), "arrays"

    inputs = _Inputs(items, user_weights, _read_options(read_kwargs))
    scan = inputs.scan()
    if mode is None:
        if combine == "mean" and all(scan["has_weights"]):
            mode = "inverse-variance"
        else:
            mode = "uniform"
            if combine == "mean" and any(scan["has_weights"]):
                missing = [i for i, ok in enumerate(scan["has_weights"]) if not ok]
                warnings.warn(f"matched[{missing[0]}] has no uncertainty: the inputs are "
                              "co-added with uniform weights", AstropyUserWarning, stacklevel=2)
    elif mode == "inverse-variance" and not all(scan["has_weights"]):
        missing = [i for i, ok in enumerate(scan["has_weights"]) if not ok]
        msg = (f"matched[{missing[0]}] has no uncertainty, so no inverse-variance weights; "
               "pass weights='uniform' or weight arrays")
        raise ValueError(msg)
    inputs.mode = mode
    has_variance = all(scan["has_variance"])
    weighted = mode != "uniform"

    common = {"reproject_function": reproject_function, "combine_function": "sum",
              **reproject_kwargs}
    # pass 1: sum of w x and of w (uniform weights: of x and of the footprints)
    total, sum_w = reproject_and_coadd(
        _Lazy(inputs, "data"), wcs_out, shape_out=shape_out,
        input_weights=_Lazy(inputs, "weights") if weighted else None, **common)
    coverage = sum_w
    sum_q = None
    # pass 2: the variance terms (Q) and, with weights, the coverage
    if weighted or has_variance:
        if not has_variance or mode == "inverse-variance":
            inputs.q_kind = "indicator"
        else:
            inputs.q_kind = "variance"
        sum_q, coverage = reproject_and_coadd(_Lazy(inputs, "q"), wcs_out, shape_out=shape_out,
                                              **common)

    good = (sum_w > 0) & (coverage > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        if combine == "mean":
            data = total / sum_w
        else:
            data = total.copy()
        variance = None
        if has_variance:
            if mode == "inverse-variance":
                variance = 1.0 / sum_w if combine == "mean" else sum_w.copy()
            elif combine == "mean":
                variance = sum_q / sum_w**2
            else:
                variance = sum_q
    good &= np.isfinite(data)
    if not good.any():
        warnings.warn("no output pixel is covered by valid data: check that the inputs overlap "
                      "output_wcs; note that interpolation orders above 'bilinear' spread the "
                      "NaN of masked and edge pixels over whole images", AstropyUserWarning,
                      stacklevel=2)
    mask = ~good
    data[mask] = np.nan
    if variance is not None:
        variance[mask] = np.nan
        kinds = set(scan["kinds"])
        kind = kinds.pop() if len(kinds) == 1 else VarianceUncertainty
        uncertainty = uncertainty_of_kind(kind, variance)
    else:
        uncertainty = None
    coadd_psf = _coadd_psf(psf, scan, wcs_out)
    targets = {t for t in scan["targets"] if t is not None}
    record = coadd_record(n_inputs=n, combine=combine, weights=mode,
                          reproject_name=getattr(reproject_function, "__name__", "?"),
                          target=targets.pop() if len(targets) == 1 else None)
    meta = annotated_meta(fits.Header(), record, COADD_HISTORY)
    result = CCDData(data, unit=scan["unit"], uncertainty=uncertainty, mask=mask,
                     wcs=copy.deepcopy(wcs_out), meta=meta, psf=coadd_psf)
    result.footprint = coverage
    log.debug(f"coadd: {n} input(s) on a {shape_out} grid, {mode} weights, "
              f"{int(good.sum())} pixels covered")
    return result


#: The history card of a PSF-matched coadd.
_PSF_COADD_HISTORY = ("Co-added by astropsfmatch.coadd_psf_matched: each exposure matched in "
                      "its frame to the target as seen there, then resampled to this grid")

#: The target stamp on the output grid spans at least this many target FWHMs.
_TARGET_STAMP_FWHMS = 6.0


def coadd_psf_matched(images, target_psf, output_wcs, shape_out=None, *, source_psfs=None,
                      config=None, weights=None, resampling="kaiser5", read_kwargs=None,
                      workers=None, **options):
    r"""
    Match exposures to a target PSF defined on the output grid and co-add them there.

    The coadd's PSF is the target, on the output grid, by construction. For
    each exposure:

    1. the local affine transform of its pixels onto the output grid (from
       the two WCSs: rotation, scale, shear) takes the target into the
       exposure's own frame, where the target is *precompensated* for the
       response of the resampling kernel: warping the detector-frame target
       (at the sub-pixel phases the exposure's pixels fall on) gives back the
       target;
    2. the exposure is matched to that detector-frame target with
       `~astropsfmatch.ModelPsfMatcher`, in its own frame, where its PSF
       model varies (the kernel nodes on the model's own node lines);
    3. the matched image, its variance and its mask are resampled to the
       output grid with an interpolation kernel of finite footprint
       (``resampling``): masked, edge and NaN pixels are never read, and
       an output pixel is masked when any input pixel it reads is;
       the pixel-area ratio keeps fluxes;

    and the warped exposures are averaged with inverse-variance weights on
    the output grid, with no further resampling. The PSF of the coadd is then
    *measured* at held-out positions, star by star: each exposure's PSF model
    convolved with its solved kernel and resampled at that position's own
    sub-pixel phase, combined with the coadd's weights and compared with the
    target (``meta['PSFCRES']``).

    Parameters
    ----------
    images : sequence
        The exposures (not matched yet): `~astropy.nddata.CCDData` or
        `~astropy.nddata.NDData` images with a celestial WCS, or FITS paths
        (read one at a time with `CCDData.read <astropy.nddata.CCDData.read>`).
        Their uncertainties and masks are propagated.
    target_psf : photutils PSF model, astropy 2-D model, or 2-D array
        The PSF of the coadd, **in output pixels** and in the orientation of
        the output grid (a non-round target keeps its position angle on the
        output grid whatever the exposures' orientations). It must be
        constant, and broader than every exposure's PSF along every
        direction once taken to the output grid (e.g. from
        `~astropsfmatch.common_target_psf` for same-scale grids).
    output_wcs : `~astropy.wcs.WCS` or `~astropy.io.fits.Header`
        The output pixel grid.
    shape_out : tuple, optional
        Output shape ``(ny, nx)``; by default from the header's ``NAXISn`` or
        the WCS's ``array_shape``.
    source_psfs : sequence, optional
        One PSF model (or None) per exposure, in its own pixels; None uses the
        exposure's ``psf``.
    config : `~astropsfmatch.MatchConfig`, optional
        Matching options, the same for every exposure.
    weights : {None, 'inverse-variance', 'uniform'}, optional
        None (default): inverse-variance weights when every exposure has an
        uncertainty, else uniform (with a warning when only some have one).
    resampling : str, optional
        The interpolation kernel: ``'kaiser5'`` (default), ``'kaiser4'``
        (sincs windowed by a Kaiser window, of half-width 5 and 4 pixels),
        ``'lanczos5'``, ``'lanczos4'``, ``'lanczos3'``, ``'cubic'`` (Keys)
        or ``'linear'``. Its response is precompensated whichever is
        chosen; the longer windowed sincs leave the smallest star-to-star
        scatter (see Notes).
    read_kwargs : dict, optional
        Keyword arguments of `CCDData.read <astropy.nddata.CCDData.read>` for
        FITS paths.
    workers : int, optional
        Threads for every stage; default all the CPUs this process may use.
    **options
        `~astropsfmatch.MatchConfig` fields that override ``config``.

    Returns
    -------
    coadd : `~astropy.nddata.CCDData`
        The coadd on the output grid, in the unit of the first exposure,
        with

        * ``uncertainty``: its variance (the exposures' uncertainty class if
          they all share one, else `~astropy.nddata.VarianceUncertainty`);
          None without uncertainties;
        * ``mask``: True where no exposure contributes (``data`` is NaN there);
        * ``psf``: the unit-sum target stamp on the output grid;
        * ``meta``: a FITS header: ``NCOMBINE``, ``COMBINE``, ``CWEIGHTS``,
          ``RESAMPLE`` (the kernel), ``PSFMTPSF`` (the target), ``PSFCOADD``
          (True: the PSF of this coadd is the target) and the measured PSF of
          the coadd at held-out positions: ``PSFCRES`` (largest
          \|PSF - target\| / target peak), ``PSFCRRMS`` (its rms),
          ``PSFCFWD`` (largest \|width / width(target) - 1\|, adaptive
          moments), ``PSFCELL``
          (largest ellipticity difference), ``PSFCNHO`` (number of
          positions), ``PSFCMRES`` (the largest held-out residual of the
          exposures' matches);

        and extra attributes (not kept by copies, arithmetic or
        `~astropy.nddata.CCDData.write`):

        * ``coadd_psf``: the PSF as a `~photutils.psf.ImagePSF` for PSF
          photometry on the coadd (oversampled 4 times from an analytic
          target);
        * ``footprint``: the number of exposures contributing to each pixel;
        * ``psf_quality``: a dict with the held-out measurement
          (``residual_max``, ``residual_rms``, ``fwhm_deviation_max``,
          ``ellipticity_deviation_max``, ``n_heldout``,
          ``residual_max_per_position``, ``positions``) and ``exposures``, one
          dict per exposure: ``index``, ``used``, ``bbox``, ``rotation``
          (degrees) and ``scale`` of its pixels on the output grid,
          ``target_varies``, ``precompensation_residual``, ``kernel_size`` (of
          the matching kernel: masks grow by its half-size, then by the
          resampling kernel's),
          ``match_quality`` (the match's held-out verdict) and
          ``psf_residual_max`` (its own warped PSF against the target).

    Raises
    ------
    ValueError
        No exposures, an exposure without WCS or PSF, bad ``source_psfs``,
        ``weights``, ``resampling`` or ``shape_out``, a target that varies,
        inverse-variance weights for an exposure without uncertainty.
    TypeError
        An unsupported exposure, PSF, ``config`` or ``output_wcs``.
    astropy.units.UnitsError
        Exposures in incompatible units.

    Warns
    -----
    AstropyUserWarning
        An exposure that does not overlap the output grid (it is left out);
        some exposures without uncertainty (uniform weights); no held-out
        position where the PSF could be measured.

    Notes
    -----
    Resampling the matched image is an interpolation between its pixels: the
    output pixels fall on the input pixels at sub-pixel phases that change
    across the image (constant for shifts, in a moiré pattern for
    rotations), and the interpolation kernel smooths a little differently at
    each phase. The detector-frame target is iterated so that its warp,
    *averaged over the phases of the exposure's own output pixels*, is the
    target (exact for a pure shift, where all phases are the same). What is
    left is a scatter from star to star: for a target of FWHM 3.5 pixels and
    an exposure rotated by 15 or 30 degrees, about 3e-4 of the peak with
    ``'kaiser5'``, 1e-3 with ``'kaiser4'`` and 4e-3 with ``'lanczos3'``;
    averaging exposures reduces it further. ``PSFCRES`` measures all of it,
    with the matching residual.

    Matching happens in each exposure's frame (not on the output grid)
    because the PSF models vary there: a `~photutils.psf.GriddedPSFModel`
    interpolates bilinearly between its grid lines, which a rotation would
    turn into oblique lines that no axis-aligned node grid of the output
    follows.

    The variance is resampled like an image (the matched noise is
    correlated over the matching kernel, so it varies as smoothly as the
    interpolation weights), times the squared pixel-area ratio; like
    `coadd`'s, it is per pixel and ignores the covariance of neighbouring
    pixels.

    Examples
    --------
    >>> import numpy as np
    >>> from astropy.nddata import CCDData, StdDevUncertainty
    >>> from astropy.wcs import WCS
    >>> from photutils.psf import CircularGaussianPRF
    >>> from astropsfmatch import coadd_psf_matched
    >>> def sky_wcs(angle, dx, dy):
    ...     wcs = WCS(naxis=2)
    ...     wcs.wcs.ctype = ['RA---TAN', 'DEC--TAN']
    ...     wcs.wcs.crval = [150.0, 2.0]
    ...     wcs.wcs.crpix = [64.5 + dx, 64.5 + dy]
    ...     c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    ...     wcs.wcs.cd = 1e-4 * np.array([[-c, s], [s, c]])
    ...     return wcs
    >>> yy, xx = np.mgrid[:128, :128]
    >>> images = []
    >>> for angle, dx, dy, fwhm in [(0, 0.3, -0.2, 2.5), (30, -0.4, 0.45, 3.0)]:
    ...     star = CircularGaussianPRF(fwhm=fwhm, x_0=63.5 + dx, y_0=64.2 + dy, flux=1000.0)
    ...     image = CCDData(star(xx, yy), unit='electron', wcs=sky_wcs(angle, dx, dy),
    ...                     uncertainty=StdDevUncertainty(np.ones((128, 128))))
    ...     image.psf = CircularGaussianPRF(fwhm=fwhm)(*np.mgrid[-10:11, -10:11][::-1])
    ...     images.append(image)
    >>> stack = coadd_psf_matched(images, CircularGaussianPRF(fwhm=4.0), sky_wcs(0, 0, 0),
    ...                           (128, 128), cell_size=64)
    >>> stack.meta['NCOMBINE'], stack.meta['RESAMPLE']
    (2, 'kaiser5')
    >>> bool(stack.meta['PSFCRES'] < 1e-3)   # the coadd's PSF is the target
    True
    >>> round(float(np.nansum(stack.data[44:84, 44:84])))   # the star's flux
    1000
    """
    items = sequence_of("images", images, "CCDData/NDData images or FITS paths",
                        item="image", not_items=(NDData, os.PathLike))
    n = len(items)
    source_psfs = _per_exposure(source_psfs, n)
    if config is None:
        config = MatchConfig()
    check_type("config", config, MatchConfig, "a MatchConfig or None")
    if options:
        config = config.replace(**options)
    target = as_psf(target_psf, name="target_psf", psf_size=config.psf_size)
    if not target.constant:
        msg = ("target_psf must be a constant PSF (the PSF of the coadd), got a "
               f"{type(target_psf).__name__} that varies with position")
        raise ValueError(msg)
    wcs_out, shape_out = _check_output(output_wcs, shape_out)
    resampling = choice(*KERNELS)("resampling", resampling)
    if weights is not None:
        weights = choice(*_WEIGHT_MODES)("weights", weights)
    resolve_workers(workers)
    read_kwargs = _read_options(read_kwargs)
    target_out = _target_stamp(target)

    scanned = [_scan(item, read_kwargs) for item in items]
    mode = _weight_mode(weights, [has for has, _ in scanned])
    _check_units([unit for _, unit in scanned])
    totals = _Totals(shape_out)
    candidates = heldout_candidates(shape_out, target_out.shape[0])
    heldout = _Heldout(candidates, target_out.shape[0])
    exposures, kinds, has_variance = [], [], []
    unit = None
    with thread_scope(workers) as n_threads:
        for index, item in enumerate(items):
            image = _exposure(item, index, read_kwargs)
            if unit is None:
                unit = u.Unit(image.unit) if image.unit is not None \
                    else u.dimensionless_unscaled
            factor = _unit_factor(image, unit, index)
            source = source_psfs[index] if source_psfs[index] is not None else image.psf
            if source is None:
                msg = (f"images[{index}] has no PSF: pass source_psfs= (one PSF model per "
                       "exposure) or give the image a psf")
                raise ValueError(msg)
            kind = None if image.uncertainty is None else type(image.uncertainty)
            info = {"index": index, "used": False, "bbox": None}
            exposures.append(info)
            frame = FrameMap(image.wcs, np.shape(image.data), wcs_out, shape_out)
            if frame.bbox is None:
                warnings.warn(f"images[{index}] does not overlap the output grid: it is left "
                              "out", AstropyUserWarning, stacklevel=2)
                continue
            detector_psf, target_info = detector_target(target_out, frame, resampling)
            result = ModelPsfMatcher(config).match(image, detector_psf, source_psf=source,
                                                   workers=n_threads)
            data, variance, invalid = _matched_arrays(result.matched, factor, index)
            x_in, y_in, area = frame.coordinates()
            warped, warped_variance, bad = warp_matched(data, variance, invalid, x_in, y_in,
                                                        area, resampling)
            del x_in, y_in, data, variance, invalid
            w = _exposure_weights(mode, warped_variance, bad)
            totals.add(frame.bbox, warped, warped_variance, w, bad)
            support = stamp_support(target_out.shape[0], target_info["jacobian"])
            own = heldout.add(frame, bad, w, as_psf(source, name=f"source_psfs[{index}]"),
                              result.kernel, resampling, support, target_out)
            kinds.append(kind)
            has_variance.append(warped_variance is not None)
            quality = result.metadata["quality"]
            info.update(used=True, bbox=frame.bbox, rotation=target_info["rotation"],
                        scale=target_info["scale"], target_varies=target_info["varying"],
                        precompensation_residual=target_info["residual"],
                        kernel_size=int(result.kernel.kernel_size),
                        match_quality={k: quality[k] for k in (
                            "heldout_residual_max", "heldout_residual_rms",
                            "fwhm_deviation_max", "ellipticity_max", "passed")},
                        psf_residual_max=own)
            log.debug(f"coadd_psf_matched: images[{index}] matched and warped onto "
                      f"{frame.bbox} (rotation {target_info['rotation']:.2f} deg, scale "
                      f"{target_info['scale']:.4f})")
    used = [e for e in exposures if e["used"]]
    if not used:
        msg = "none of the images overlaps the output grid"
        raise ValueError(msg)
    uniform = mode == "uniform"
    data, variance, mask = totals.result(uniform, all(has_variance))
    verdict = heldout.verdict(target_out)
    if verdict["n_heldout"] == 0:
        warnings.warn("no held-out position is covered by complete exposures: the coadd's PSF "
                      "could not be measured (PSFCRES is not set)", AstropyUserWarning,
                      stacklevel=2)
    verdict["exposures"] = exposures
    uncertainty = None
    if variance is not None:
        distinct = set(kinds)
        kind = distinct.pop() if len(distinct) == 1 else VarianceUncertainty
        uncertainty = uncertainty_of_kind(kind, variance)
    record = _psf_coadd_record(len(used), "uniform" if uniform else "inverse-variance",
                               resampling, target_psf, verdict, used)
    meta = annotated_meta(fits.Header(), record, _PSF_COADD_HISTORY)
    result = CCDData(data, unit=unit, uncertainty=uncertainty, mask=mask,
                     wcs=copy.deepcopy(wcs_out), meta=meta, psf=target_out.copy())
    result.footprint = totals.count
    result.coadd_psf = coadd_psf_model(target_psf, target_out)
    result.psf_quality = verdict
    return result


#: Positive weights outside this range would overflow or underflow their squares and sums.
_WEIGHT_RANGE = (1e-150, 1e150)


def _read_options(read_kwargs):
    """``read_kwargs`` as a dict of keyword arguments (None: none), or a TypeError naming it."""
    if read_kwargs is None:
        return {}
    if not isinstance(read_kwargs, Mapping) or not all(isinstance(k, str) for k in read_kwargs):
        msg = ("read_kwargs must be a dict of CCDData.read keyword arguments or None, got "
               f"{type(read_kwargs).__name__} {read_kwargs!r}")
        raise InvalidTypeError(msg)
    return dict(read_kwargs)


def _per_exposure(values, n):
    if values is None:
        return [None] * n
    values = sequence_of("source_psfs", values, "None or a sequence with one PSF per exposure",
                         not_items=(Model, NDData, np.ndarray))
    if len(values) != n:
        msg = (f"source_psfs must have one entry per exposure: got {len(values)} for "
               f"{n} exposure(s)")
        raise ValueError(msg)
    return values


def _scan(item, read_kwargs):
    """Whether an exposure has an uncertainty, and its unit (None if unknown), before any work.

    For a FITS path: whether it has the uncertainty extension, and its ``BUNIT``.
    """
    if isinstance(item, NDData):
        return item.uncertainty is not None, item.unit
    if isinstance(item, str | os.PathLike):
        name = read_kwargs.get("hdu_uncertainty", "UNCERT")
        with fits.open(item) as hdul:
            unit = read_kwargs.get("unit", hdul[0].header.get("BUNIT"))
            return name is not None and name in hdul, unit
    return False, None  # not an image: _exposure raises the TypeError


def _check_units(units):
    """Refuse, before any work, exposures whose units do not convert to the first one's."""
    known = [(index, unit) for index, unit in enumerate(units) if unit is not None]
    if not known or known[0][0] != 0:
        return
    for index, unit in known[1:]:
        try:
            reference, other = u.Unit(known[0][1]), u.Unit(unit)
        except ValueError:
            return  # CCDData.read reports a unit it cannot parse
        _unit_factor_of(other, reference, index)


def _weight_mode(weights, has_uncertainty):
    """The weights used: inverse-variance when every exposure has an uncertainty."""
    missing = [i for i, ok in enumerate(has_uncertainty) if not ok]
    if weights == "uniform":
        return "uniform"
    if weights == "inverse-variance":
        if missing:
            msg = (f"images[{missing[0]}] has no uncertainty, so no inverse-variance weights; "
                   "pass weights='uniform'")
            raise ValueError(msg)
        return "inverse-variance"
    if missing and len(missing) < len(has_uncertainty):
        warnings.warn(f"images[{missing[0]}] has no uncertainty: the exposures are co-added "
                      "with uniform weights", AstropyUserWarning, stacklevel=3)
    return "uniform" if missing else "inverse-variance"


def _target_stamp(target):
    """The unit-sum target stamp on the output grid: its natural size, 6 FWHM at least."""
    fwhm = float(target.fwhm(0.0, 0.0)[0])
    size = max(target.native_size(0.0, 0.0), next_odd(_TARGET_STAMP_FWHMS * fwhm))
    return target.stamps(0.0, 0.0, size)[0]


def _exposure(item, index, read_kwargs):
    """One exposure as NDData, checked (2-D with a 2-D WCS)."""
    if isinstance(item, str | os.PathLike):
        image = CCDData.read(item, **read_kwargs)
    elif isinstance(item, NDData):
        image = item
    else:
        msg = (f"images[{index}] must be a CCDData/NDData image or a FITS path, got "
               f"{type(item).__name__}")
        raise TypeError(msg)
    if np.ndim(image.data) != 2:
        msg = f"images[{index}] must be a 2-D image, got shape {np.shape(image.data)}"
        raise ValueError(msg)
    if image.wcs is None or image.wcs.pixel_n_dim != 2:
        msg = f"images[{index}] has no 2-D WCS: its pixels cannot be mapped to the output"
        raise ValueError(msg)
    return image


def _unit_factor(image, unit, index):
    own = u.Unit(image.unit) if image.unit is not None else u.dimensionless_unscaled
    return _unit_factor_of(own, unit, index)


def _unit_factor_of(own, unit, index):
    try:
        return own.to(unit)
    except u.UnitConversionError as exc:
        msg = (f"images[{index}] has unit {own!s}, incompatible with the unit {unit!s} of "
               "images[0]")
        raise u.UnitsError(msg) from exc


def _arrays_in_unit(image, factor, name):
    """Data, invalid pixels (non-finite or masked) and variance (or None) of an image,
    float64 copies in the common unit (``factor`` takes the image's unit to it).
    """
    data = np.array(image.data, dtype=np.float64) * factor
    invalid = ~np.isfinite(data)
    if image.mask is not None:
        invalid |= np.asarray(image.mask, dtype=bool)
    variance = None
    if image.uncertainty is not None:
        variance, _ = variance_of(image.uncertainty, data.shape, unit=image.unit,
                                  name=f"{name}.uncertainty")
        variance = np.asarray(variance, dtype=np.float64) * factor**2
    return data, invalid, variance


def _matched_arrays(matched, factor, index):
    """Data (0 where invalid), variance and invalid pixels of a matched image, in the unit."""
    data, invalid, variance = _arrays_in_unit(matched, factor, f"images[{index}]")
    if variance is not None:
        invalid |= ~(np.isfinite(variance) & (variance > 0))
        variance = np.where(invalid, 0.0, variance)
    data[invalid] = 0.0
    return data, variance, invalid


def _exposure_weights(mode, variance, bad):
    if mode == "inverse-variance":
        with np.errstate(divide="ignore"):
            w = np.where(bad, 0.0, 1.0 / np.where(bad, 1.0, variance))
    else:
        w = np.where(bad, 0.0, 1.0)
    return w


class _Totals:
    """The running sums of the coadd on the output grid."""

    def __init__(self, shape):
        self.sum_w = np.zeros(shape)
        self.sum_wx = np.zeros(shape)
        self.sum_w2v = np.zeros(shape)
        self.count = np.zeros(shape)

    def add(self, bbox, data, variance, w, bad):
        y0, y1, x0, x1 = bbox
        region = (slice(y0, y1), slice(x0, x1))
        self.sum_w[region] += w
        self.sum_wx[region] += w * data
        if variance is not None:
            self.sum_w2v[region] += w**2 * variance
        self.count[region] += ~bad

    def result(self, uniform, has_variance):
        good = self.sum_w > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            data = self.sum_wx / self.sum_w
            variance = None
            if has_variance:
                variance = self.sum_w2v / self.sum_w**2 if uniform else 1.0 / self.sum_w
        mask = ~good
        data[mask] = np.nan
        if variance is not None:
            variance[mask] = np.nan
        return data, variance, mask


class _Heldout:
    """The coadd's PSF at held-out positions, accumulated exposure by exposure."""

    def __init__(self, positions, size):
        self.positions = positions
        self.size = size
        n = len(positions)
        self.num = np.zeros((n, size, size))
        self.den = np.zeros(n)
        self.partial = np.zeros(n, dtype=bool)

    def add(self, frame, bad, w, source, kernel, resampling, support, target_out):
        """Add one warped exposure; return its own largest residual / peak (NaN if none)."""
        y0, y1, x0, x1 = frame.bbox
        half = self.size // 2
        full = []
        for k, (x, y) in enumerate(self.positions):
            ya, yb, xa, xb = y - half, y + half + 1, x - half, x + half + 1
            inside = (max(ya, y0), min(yb, y1), max(xa, x0), min(xb, x1))
            if inside[1] <= inside[0] or inside[3] <= inside[2]:
                continue  # the exposure does not reach this position
            window = bad[inside[0] - y0:inside[1] - y0, inside[2] - x0:inside[3] - x0]
            n_valid = window.size - int(np.count_nonzero(window))
            if n_valid == 0:
                continue
            if n_valid < self.size * self.size:
                self.partial[k] = True  # coverage changes within the stamp: not a clean PSF
                continue
            full.append(k)
        if not full:
            return float("nan")
        index = np.array(full)
        positions = self.positions[index]
        stamps = exposure_psf_stamps(frame, source, kernel, positions.astype(np.float64),
                                     self.size, resampling, support)
        weights = w[positions[:, 1] - y0, positions[:, 0] - x0]
        self.num[index] += weights[:, None, None] * stamps
        self.den[index] += weights
        return float(np.abs(stamps - target_out[None]).max() / target_out.max())

    def verdict(self, target_out):
        keep = (self.den > 0) & ~self.partial
        stamps = self.num[keep] / self.den[keep][:, None, None]
        verdict = psf_verdict(stamps, target_out)
        verdict["positions"] = self.positions[keep]
        return verdict


def _psf_coadd_record(n_used, weights, resampling, target_psf, verdict, used):
    """FITS-safe keywords of a PSF-matched coadd."""
    record = {
        "COADD": (True, "co-added by astropsfmatch.coadd_psf_matched"),
        "PSFMVERS": (str(__version__), "astropsfmatch version"),
        "NCOMBINE": (n_used, "number of co-added images"),
        "COMBINE": ("mean", "combination of the images"),
        "CWEIGHTS": (weights, "weights of the images"),
        "RESAMPLE": (resampling, "resampling kernel (its response precompensated)"),
        "PSFMTPSF": (describe_psf(target_psf), "target PSF: the PSF of this coadd"),
        "PSFCOADD": (True, "the PSF of this coadd is PSFMTPSF (PSFCRES)"),
    }
    if verdict["n_heldout"]:
        record.update({
            "PSFCRES": (verdict["residual_max"], "max held-out |coadd PSF - target| / peak"),
            "PSFCRRMS": (verdict["residual_rms"], "rms held-out |coadd PSF - target| / peak"),
            "PSFCFWD": (verdict["fwhm_deviation_max"], "max |width / width(target) - 1|"),
            "PSFCELL": (verdict["ellipticity_deviation_max"],
                        "max |ellipticity - that of the target|"),
            "PSFCNHO": (verdict["n_heldout"], "held-out positions of PSFCRES"),
        })
    record["PSFCMRES"] = (max(e["match_quality"]["heldout_residual_max"] for e in used),
                          "max held-out residual of the matches")
    return record


def _check_items(matched):
    if isinstance(matched, ManyResult):
        matched = matched.matched
    items = sequence_of("matched", matched, "MatchResults, CCDData/NDData images or FITS paths",
                        item="image", not_items=(NDData, MatchResult, os.PathLike))
    return items


def _check_output(output_wcs, shape_out):
    if isinstance(output_wcs, fits.Header):
        header = output_wcs
        wcs = WCS(header)
        if shape_out is None and header.get("NAXIS1") and header.get("NAXIS2"):
            shape_out = (header["NAXIS2"], header["NAXIS1"])
    elif isinstance(output_wcs, WCS):
        wcs = output_wcs
        if shape_out is None and wcs.array_shape is not None:
            shape_out = wcs.array_shape
    else:
        msg = f"output_wcs must be an astropy WCS or a FITS Header, got {type(output_wcs).__name__}"
        raise TypeError(msg)
    if wcs.pixel_n_dim != 2:
        msg = f"output_wcs must be a 2-D WCS, got {wcs.pixel_n_dim} pixel dimensions"
        raise ValueError(msg)
    if shape_out is None:
        msg = "shape_out is required: output_wcs does not give the output shape"
        raise ValueError(msg)
    if not isinstance(shape_out, tuple | list) or len(shape_out) != 2 or not all(
            isinstance(s, int | np.integer) and not isinstance(s, bool) and s > 0
            for s in shape_out):
        msg = f"shape_out must be a pair (ny, nx) of positive integers, got {shape_out!r}"
        raise ValueError(msg)
    return wcs, (int(shape_out[0]), int(shape_out[1]))


class _Inputs:
    """The inputs, loaded one at a time (paths are read when needed, not kept)."""

    def __init__(self, items, user_weights, read_kwargs):
        self.items = items
        self.user_weights = user_weights
        self.read_kwargs = read_kwargs
        self.mode = None
        self.q_kind = None
        self.factors = [1.0] * len(items)
        self._cached = (None, None)

    def __len__(self):
        return len(self.items)

    def _open(self, index):
        """(CCDData/NDData, MatchResult weights or None) of one input, without copies."""
        item = self.items[index]
        name = f"matched[{index}]"
        weights = None
        if isinstance(item, MatchResult):
            image, weights = item.matched, item.weights
        elif isinstance(item, NDData):
            image = item
        elif isinstance(item, str | os.PathLike):
            # the matched-exposure layout: the weights stored with the image
            image, weights = read_matched(item, **self.read_kwargs)
        else:
            msg = (f"{name} must be a MatchResult, a CCDData/NDData image or a FITS path, "
                   f"got {type(item).__name__}")
            raise TypeError(msg)
        if np.ndim(image.data) != 2:
            msg = f"{name} must be a 2-D image, got shape {np.shape(image.data)}"
            raise ValueError(msg)
        if image.wcs is None:
            msg = f"{name} has no WCS: reprojection needs one"
            raise ValueError(msg)
        if self.user_weights is not None:
            weights = np.asarray(self.user_weights[index], dtype=np.float64)
            if weights.shape != np.shape(image.data):
                msg = (f"weights[{index}] has shape {weights.shape}, matched[{index}] has shape "
                       f"{np.shape(image.data)}")
                raise ValueError(msg)
            if np.any(weights < 0):
                msg = f"weights[{index}] must be >= 0, got negative values"
                raise ValueError(msg)
            if not np.all(np.isfinite(weights)):
                bad = int(np.count_nonzero(~np.isfinite(weights)))
                msg = (f"weights[{index}] must be finite, got {bad} non-finite value(s) "
                       "(give 0 for pixels to leave out)")
                raise ValueError(msg)
            positive = weights[weights > 0]
            if positive.size and not (_WEIGHT_RANGE[0] <= positive.min()
                                      and positive.max() <= _WEIGHT_RANGE[1]):
                msg = (f"weights[{index}] must be 0 or within [{_WEIGHT_RANGE[0]:g}, "
                       f"{_WEIGHT_RANGE[1]:g}] (their squares and sums must stay finite; only "
                       f"their ratios matter), got {positive.min():.3g} to {positive.max():.3g}")
                raise ValueError(msg)
        real_dtype(f"{name}.data", np.asarray(image.data))
        if image.mask is not None:
            mask = np.asarray(image.mask)
            if mask.dtype.kind not in "biuf" or mask.shape != np.shape(image.data):
                msg = (f"{name}.mask must be booleans of the data's shape "
                       f"{np.shape(image.data)}, got dtype {mask.dtype}, shape {mask.shape}")
                raise ValueError(msg)
        return image, weights

    def scan(self):
        """Units (converted to the first input's), uncertainty kinds and PSFs of all inputs."""
        units, kinds, has_variance, has_weights, psfs, wcss, targets = [], [], [], [], [], [], []
        for index in range(len(self)):
            image, weights = self._open(index)
            unit = u.Unit(image.unit) if image.unit is not None else u.dimensionless_unscaled
            units.append(unit)
            uncertainty = image.uncertainty
            if uncertainty is not None and not isinstance(uncertainty, UNCERTAINTY_KINDS):
                variance_of(uncertainty, np.shape(image.data))  # raises the TypeError
            kind = None if uncertainty is None else type(uncertainty)
            kinds.append(kind)
            has_variance.append(kind is not None)
            has_weights.append(kind is not None or weights is not None)
            psfs.append(None if image.psf is None else _checked_psf(image.psf, index))
            wcss.append(image.wcs)
            meta = image.meta or {}
            targets.append(meta.get("PSFMTPSF") if hasattr(meta, "get") else None)
        reference = units[0]
        for index, unit in enumerate(units):
            if unit == reference:
                continue
            try:
                self.factors[index] = unit.to(reference)
            except u.UnitConversionError as exc:
                msg = (f"matched[{index}] has unit {unit!s}, incompatible with the unit "
                       f"{reference!s} of matched[0]")
                raise u.UnitsError(msg) from exc
        return {"unit": reference, "kinds": [k for k in kinds if k is not None],
                "has_variance": has_variance, "has_weights": has_weights, "psfs": psfs,
                "wcss": wcss, "targets": targets}

    def load(self, index):
        """Data (NaN where invalid), variance, weights and WCS of one input; cached."""
        if self._cached[0] == index:
            return self._cached[1]
        self._cached = (None, None)  # release the previous input first
        image, weights = self._open(index)
        factor = self.factors[index]
        data, invalid, variance = _arrays_in_unit(image, factor, f"matched[{index}]")
        if self.mode == "inverse-variance":
            if weights is not None:  # stored with the match (MatchResult, WEIGHTS extension)
                weights = np.asarray(weights, dtype=np.float64) / factor**2
            else:
                weights = inverse_variance_weights(variance, invalid)
        if weights is not None:
            weights = np.where(np.isfinite(weights), weights, 0.0).astype(np.float64)
            invalid |= ~(weights >= 0)
        data[invalid] = np.nan
        if weights is not None:
            weights[invalid] = 0.0
        loaded = {"data": data, "variance": variance, "weights": weights, "wcs": image.wcs,
                  "invalid": invalid}
        self._cached = (index, loaded)
        return loaded

    def get(self, index, what):
        loaded = self.load(index)
        if what == "data":
            return loaded["data"], loaded["wcs"]
        if what == "weights":
            return loaded["weights"]
        # the variance terms, NaN exactly where the data are (same footprints)
        if self.q_kind == "indicator":
            q = np.ones_like(loaded["data"])
        elif self.mode == "uniform":
            q = np.array(loaded["variance"], dtype=np.float64)
        else:  # explicit weight arrays: w^2 var, 0 where w = 0
            w = loaded["weights"]
            with np.errstate(invalid="ignore"):
                q = np.where(w > 0, w**2 * loaded["variance"], 0.0)
        q[loaded["invalid"]] = np.nan
        return q, loaded["wcs"]


def _checked_psf(psf, index):
    """An input's psf stamp (unit sum), checked: odd, finite, with a positive sum."""
    stamp = np.asarray(psf) if not isinstance(psf, Model) else None
    checked = as_psf(psf, name=f"matched[{index}].psf")
    size = max(stamp.shape) if stamp is not None and stamp.ndim == 2 else \
        checked.native_size(0.0, 0.0)
    return np.array(checked.stamps(0.0, 0.0, size)[0])


class _Lazy(Sequence):
    """What reproject_and_coadd indexes: one input's (array, WCS) or weights at a time."""

    def __init__(self, inputs, what):
        self.inputs = inputs
        self.what = what

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.inputs.get(index, self.what)


def _coadd_psf(psf, scan, wcs_out):
    """The PSF stamp of the coadd: given, or the inputs' common stamp."""
    if psf is not None:
        if isinstance(psf, np.ndarray):
            return np.array(as_psf(psf, name="psf").stamps(0.0, 0.0, max(psf.shape))[0])
        checked = as_psf(psf, name="psf")
        return checked.stamps(0.0, 0.0, checked.native_size(0.0, 0.0))[0]
    stamps = [p for p in scan["psfs"] if p is not None]
    if not stamps:
        return None
    if len(stamps) < len(scan["psfs"]):
        warnings.warn("some inputs have no psf: the coadd's psf is that of the others",
                      AstropyUserWarning, stacklevel=3)
    size = max(max(s.shape) for s in stamps)
    size += 1 - size % 2
    resized = [resize_stamp(s / s.sum(), size) for s in stamps]
    if any(np.max(np.abs(r - resized[0])) > _PSF_TOLERANCE * resized[0].max() for r in resized):
        warnings.warn("the inputs have different PSFs (psf stamps): they were not all matched "
                      "to the same target; the coadd's psf is their mean",
                      AstropyUserWarning, stacklevel=3)
    stamp = np.mean(resized, axis=0)
    scale_out = _pixel_scale(wcs_out)
    scales_in = [_pixel_scale(w) for w in scan["wcss"]]
    if any(abs(s / scale_out - 1) > _SCALE_TOLERANCE for s in scales_in):
        warnings.warn("the output pixel scale differs from the inputs': the psf stamps of the "
                      "inputs do not describe the coadd, which gets no psf (pass psf=)",
                      AstropyUserWarning, stacklevel=3)
        return None
    return stamp


def _pixel_scale(wcs):
    """Square root of the pixel area in world units."""
    try:
        matrix = wcs.celestial.pixel_scale_matrix if wcs.has_celestial \
            else wcs.pixel_scale_matrix
    except Exception:  # noqa: BLE001 - an unusual WCS: assume the same scale
        return 1.0
    return float(np.sqrt(abs(np.linalg.det(matrix))))
