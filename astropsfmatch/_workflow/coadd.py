"""Co-add PSF-matched exposures with reproject: inverse-variance weighted mean and its variance."""

import copy
import os
import warnings
from collections.abc import Sequence

import astropy.units as u
import numpy as np
from astropy.io import fits
from astropy.nddata import CCDData, NDData, VarianceUncertainty
from astropy.utils.exceptions import AstropyUserWarning
from astropy.wcs import WCS

from .._adapters.files import read_matched
from .._adapters.nddata import (
    UNCERTAINTY_KINDS,
    annotated_meta,
    uncertainty_of_kind,
    variance_of,
)
from .._adapters.psf import as_psf
from .._engine.grid import resize_stamp
from .._engine.weights import inverse_variance_weights
from .._logging import log
from .._optional import require
from .._validate import sequence_of
from .many import ManyResult
from .provenance import COADD_HISTORY, coadd_record
from .result import MatchResult

# the public names of this module, re-exported by astropsfmatch/__init__.py
__all__ = ["coadd"]

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
    (with a warning).

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

    inputs = _Inputs(items, user_weights, dict(read_kwargs or {}))
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
            psfs.append(None if image.psf is None else np.asarray(image.psf, dtype=float))
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
        data = np.array(image.data, dtype=np.float64) * factor
        invalid = ~np.isfinite(data)
        if image.mask is not None:
            invalid |= np.asarray(image.mask, dtype=bool)
        variance = None
        if image.uncertainty is not None:
            variance, _ = variance_of(image.uncertainty, data.shape, unit=image.unit,
                                      name=f"matched[{index}].uncertainty")
            variance = np.asarray(variance, dtype=np.float64) * factor**2
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
