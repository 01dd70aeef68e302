"""Images in and out: a CCDData/NDData/array image split into plain arrays, and the
matched `~astropy.nddata.CCDData` built from arrays (uncertainty of the input's kind,
mask, WCS, unit, meta with the operation recorded, PSF).
"""

import copy
import warnings
from dataclasses import dataclass

import astropy.units as u
import numpy as np
from astropy.io import fits
from astropy.nddata import (
    CCDData,
    InverseVariance,
    NDData,
    StdDevUncertainty,
    VarianceUncertainty,
)
from astropy.utils.exceptions import AstropyUserWarning
from astropy.utils.masked import Masked

from .._engine.weights import inverse_variance_weights
from .._validate import InvalidTypeError

__all__ = []  # internal to the package: nothing here is public

UNCERTAINTY_KINDS = (StdDevUncertainty, VarianceUncertainty, InverseVariance)


@dataclass
class ParsedImage:
    """The parts of an input image, as the matcher needs them.

    ``data``, ``variance`` and ``mask`` are the user's arrays or read-only
    derived arrays; nothing here is ever written to.
    """

    data: np.ndarray
    variance: np.ndarray = None
    mask: np.ndarray = None
    uncertainty_type: type = None
    unit: object = None
    wcs: object = None
    meta: object = None
    psf: object = None


def variance_of(uncertainty, shape, *, unit=None, name="image.uncertainty", dtype=np.float64):
    """Variance of an astropy uncertainty in ``unit**2``, with its class.

    In float32 when ``dtype`` is float32 and every variance is a normal
    float32 number, else in float64 (`scaled_variance` then brings it into
    the float32 range for the convolution).

    The uncertainty's own unit is honoured: a `~astropy.nddata.StdDevUncertainty`
    in mJy of an image in Jy is converted. Negative variances (or standard
    deviations, or inverse variances) are refused.

    Returns
    -------
    variance, kind : ndarray or None, type or None
        ``variance`` may be the uncertainty's own array (a
        `~astropy.nddata.VarianceUncertainty` in the data unit and dtype):
        callers must not write to it.

    Raises
    ------
    TypeError
        An unsupported uncertainty class.
    ValueError
        A shape that is not the data's, or negative values.
    astropy.units.UnitsError
        An uncertainty unit that does not convert to the data's.
    """
    if uncertainty is None:
        return None, None
    if not isinstance(uncertainty, UNCERTAINTY_KINDS):
        msg = (f"{name} must be StdDevUncertainty, VarianceUncertainty or "
               f"InverseVariance, got {type(uncertainty).__name__}")
        raise TypeError(msg)
    array = np.asarray(uncertainty.array)
    if array.dtype.kind not in "biuf":
        msg = f"{name} must hold real numbers, got dtype {array.dtype}"
        raise TypeError(msg)
    if array.shape != shape:
        msg = f"{name} has shape {array.shape}, the data has shape {shape}"
        raise ValueError(msg)
    negative = int(np.count_nonzero(array < 0))
    if negative:
        msg = (f"{name} holds {negative} negative value(s) ({type(uncertainty).__name__}); "
               "uncertainties must be >= 0 (mask the pixels instead)")
        raise ValueError(msg)
    factor = _unit_factor(uncertainty, unit, name)
    value_range = _variance_range(array, factor, uncertainty)
    high = 0.0 if value_range is None else value_range[1]
    if not high < _MAX_VARIANCE:
        msg = (f"{name} gives variances up to {high:.3g} in the data unit squared, beyond "
               f"what float64 holds with the margin the convolution needs ({_MAX_VARIANCE:.3g}); "
               "express the data in a larger unit")
        raise ValueError(msg)
    work = np.float64
    if np.dtype(dtype) == np.float32 and _float32_safe(value_range):
        work = np.float32
    array = np.asarray(array, dtype=work)
    factor = work(factor)
    if isinstance(uncertainty, StdDevUncertainty):
        variance = (array * factor) ** 2
    elif isinstance(uncertainty, VarianceUncertainty):
        # in the data unit already: the array itself (read, never written: no copy)
        variance = array if factor == 1 else array * factor
    else:
        with np.errstate(divide="ignore"):
            variance = np.where(array > 0, 1 / np.where(array > 0, array * factor, 1), np.inf)
    return variance, type(uncertainty)


#: The largest variance accepted: the convolution sums products of it with the squared
#: kernel over many pixels, which must not overflow float64.
_MAX_VARIANCE = float(np.finfo(np.float64).max) / 1e6


def _variance_range(array, factor, uncertainty):
    """Smallest and largest variance of the positive finite values of ``array`` (None: none).

    Computed in float64 without warnings: an overflow gives ``inf``. Two
    reductions over the positive finite values, no copy of them.
    """
    valid = array > 0
    np.logical_and(valid, array < np.inf, out=valid)
    if not valid.any():
        return None
    smallest = np.min(array, where=valid, initial=np.inf)
    largest = np.max(array, where=valid, initial=-np.inf)
    with np.errstate(over="ignore", divide="ignore", under="ignore"):
        low = np.float64(smallest) * np.float64(factor)
        high = np.float64(largest) * np.float64(factor)
        if isinstance(uncertainty, StdDevUncertainty):
            low, high = low * low, high * high
        elif isinstance(uncertainty, InverseVariance):
            low, high = np.float64(1.0) / high, np.float64(1.0) / low
    return float(low), float(high)


def _float32_safe(value_range):
    """True when every variance of ``value_range`` (low, high; None: there are none besides
    0, inf and nan) is a normal float32 number.
    """
    if value_range is None:
        return True
    low, high = value_range
    info = np.finfo(np.float32)
    # margins: the convolution sums hundreds of products of the kernel squared
    return low > float(info.tiny) * 1e6 and high < float(info.max) / 1e6


def _unit_factor(uncertainty, unit, name):
    """Factor taking the uncertainty's values to the data unit (squared for variances)."""
    own = getattr(uncertainty, "_unit", None)
    if own is None or unit is None:
        return 1.0
    target = {StdDevUncertainty: unit, VarianceUncertainty: unit**2,
              InverseVariance: unit**-2}[type(uncertainty)]
    try:
        return float(u.Unit(own).to(target))
    except u.UnitConversionError as exc:
        msg = (f"{name} has unit {u.Unit(own)}, which does not convert to {target} "
               f"(the data are in {unit})")
        raise u.UnitsError(msg) from exc


#: float32 FFT round-off, relative to the largest value of a tile (measured on star
#: fields against the float64 path).
_FLOAT32_FFT_ROUNDOFF = 3e-7


def warn_if_dynamic_range(data, mask, dtype, *, stacklevel=2):
    """Warn when float32 FFT round-off of the brightest pixel exceeds the image's scatter.

    A float32 FFT convolution errs by ~3e-7 of the largest value in a tile: an
    unmasked outlier of 1e12 on a background of scatter 1 changes thousands of
    pixels by ~1e5. The image is usable (the outlier's footprint aside), but
    convert it to float64 or mask the outlier for an exact result.
    """
    if np.dtype(dtype) != np.float32:
        return
    good = np.isfinite(data)
    if mask is not None:
        np.logical_and(good, ~mask, out=good)
    n_good = int(np.count_nonzero(good))
    if n_good < 16:
        return
    # the largest and smallest, not max(abs()): no copy of the image
    peak = max(abs(float(np.max(data, where=good, initial=-np.inf))),
               abs(float(np.min(data, where=good, initial=np.inf))))
    # about 100,000 good values, sampled before selecting (no image-sized copy)
    step = max(data.size // 100_000, 1)
    sample = data.ravel()[::step][good.ravel()[::step]].astype(np.float64)
    if sample.size == 0:
        sample = data[good].astype(np.float64)
    scatter = float(np.median(np.abs(sample - np.median(sample))))
    if scatter == 0:
        scatter = float(np.median(np.abs(sample))) or 1.0
    error = _FLOAT32_FFT_ROUNDOFF * peak
    if error > 0.1 * scatter:
        msg = (f"image: float32 data whose largest unmasked value ({peak:.3g}) is "
               f"{peak / scatter:.3g} times the typical scatter ({scatter:.3g}): the float32 "
               f"FFT round-off near it (~{error:.2g}) exceeds a tenth of that scatter; mask "
               "the outlier or convert the image to float64 for an exact result")
        warnings.warn(msg, AstropyUserWarning, stacklevel=stacklevel)


def scaled_variance(variance, dtype):
    """``(variance / scale, scale)`` in ``dtype``: float32 holds any finite variance.

    The convolution of a float32 image runs in float32, whose normal numbers
    span 1e-38 to 3e38: a standard deviation of 3e-20 (variance 9e-40) or 1e20
    would underflow or overflow. Dividing by a power of two near the largest
    finite variance keeps every value in range; the output is multiplied back
    in float64 (`unscaled`).
    """
    if variance is None:
        return None, 1.0
    scale = 1.0
    if np.dtype(dtype) == np.float32 and variance.dtype != np.float32:
        value_range = _variance_range(variance, 1.0, None)
        if value_range is not None:
            scale = float(2.0 ** np.round(np.log2(value_range[1])))
    if scale == 1.0 and variance.dtype == np.dtype(dtype):
        return variance, scale  # already what the convolution takes (it never writes to it)
    with np.errstate(over="ignore", under="ignore"):
        # divided in the variance's own precision: a float32 scale of 2**-166 is 0
        return (variance / scale).astype(dtype, copy=False), scale


def unscaled(array, scale, dtype):
    """``array * scale`` in ``dtype`` if it fits there (normal numbers), else in float64."""
    if array is None:
        return None
    out = np.multiply(array, scale, dtype=np.float64)
    if np.dtype(dtype) == np.float64:
        return out
    finite = np.abs(out[np.isfinite(out) & (out != 0)])
    info = np.finfo(dtype)
    if finite.size and (finite.max() > info.max / 16 or finite.min() < info.tiny * 16):
        return out
    return out.astype(dtype)


def parse_image(image, source_psf=None):
    """Split an image into data, variance, mask, unit, WCS, meta and PSF.

    Parameters
    ----------
    image : `~astropy.nddata.CCDData`, `~astropy.nddata.NDData` or 2-D array
        The image to match (a `~numpy.ma.MaskedArray` or an astropy
        `~astropy.utils.masked.Masked` array gives its mask, a
        `~astropy.units.Quantity` its unit).
    source_psf : optional
        Its PSF; when None, ``image.psf`` is used.

    Returns
    -------
    parsed : ParsedImage

    Raises
    ------
    TypeError
        An unsupported image or uncertainty type.
    ValueError
        Not 2-D, mismatched mask or uncertainty, or no PSF at all.
    """
    if isinstance(image, NDData):
        data = np.asarray(image.data)
        unit, wcs, meta, psf = image.unit, image.wcs, image.meta, image.psf
        mask = image.mask
        uncertainty = image.uncertainty
    elif isinstance(image, np.ndarray | list | tuple) or hasattr(image, "__array__"):
        mask = None
        if isinstance(image, Masked):
            data, unit, mask = np.asarray(image.unmasked), None, np.asarray(image.mask)
            if isinstance(data, u.Quantity):
                data, unit = data.value, data.unit
        elif isinstance(image, u.Quantity):
            data, unit = image.value, image.unit
        elif isinstance(image, np.ma.MaskedArray):
            data, unit, mask = image.data, None, np.ma.getmaskarray(image)
        else:
            try:
                data, unit = np.asarray(image), None
            except (TypeError, ValueError) as exc:  # e.g. a ragged nested list
                msg = (f"image must be a 2-D array of real numbers, got "
                       f"{type(image).__name__}: {exc}")
                raise InvalidTypeError(msg) from exc
        wcs, meta, psf, uncertainty = None, {}, None, None
    else:
        msg = f"image must be a CCDData, NDData or 2-D array, got {type(image).__name__}"
        raise TypeError(msg)
    if data.ndim != 2:
        msg = f"image data must be 2-D, got {data.ndim} dimension(s) with shape {data.shape}"
        raise ValueError(msg)
    if not (np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.integer)):
        msg = f"image data must be real numbers, got dtype {data.dtype}"
        raise TypeError(msg)
    if mask is not None:
        try:
            mask = np.asarray(mask)
        except (TypeError, ValueError) as exc:  # ragged nested sequences
            msg = f"image.mask must be an array of booleans of the data's shape: {exc}"
            raise InvalidTypeError(msg) from exc
        if mask.dtype.kind not in "biuf":
            # a string or object array would be "True" everywhere
            msg = f"image.mask must hold booleans (or 0/1 numbers), got dtype {mask.dtype}"
            raise InvalidTypeError(msg)
        if mask.shape != data.shape:
            msg = f"image.mask has shape {mask.shape}, the data has shape {data.shape}"
            raise ValueError(msg)
        mask = mask.astype(bool, copy=False)
    variance, kind = variance_of(uncertainty, data.shape, unit=unit,
                                 dtype=np.float32 if data.dtype == np.float32 else np.float64)
    if source_psf is None:
        source_psf = psf
    if source_psf is None:
        msg = ("the image has no PSF (image.psf is None): pass source_psf= a photutils PSF "
               "model or a 2-D array")
        raise ValueError(msg)
    return ParsedImage(data=data, variance=variance, mask=mask, uncertainty_type=kind, unit=unit,
                       wcs=wcs, meta=meta, psf=source_psf)


def uncertainty_of_kind(kind, variance, weights=None):
    """An astropy uncertainty of class ``kind`` holding ``variance`` (None without one).

    ``variance`` becomes the uncertainty's array (no copy): pass an array
    nothing else holds.
    For `~astropy.nddata.InverseVariance` the inverse-variance ``weights``
    (0 where masked) are used as they are, so they are computed only once.
    """
    if kind is None or variance is None:
        return None
    # ``variance`` is the caller's new array (a convolution's output): it is not copied;
    # given weights are (the caller keeps them too)
    if kind is StdDevUncertainty:
        return StdDevUncertainty(np.sqrt(variance), copy=False)
    if kind is VarianceUncertainty:
        return VarianceUncertainty(variance, copy=False)
    if weights is None:
        return InverseVariance(inverse_variance_weights(variance, ~np.isfinite(variance)),
                               copy=False)
    return InverseVariance(weights)


def annotated_meta(meta, record, history):
    """Copy of ``meta`` with ``record`` (``{KEY: (value, comment)}``) added.

    A FITS `~astropy.io.fits.Header` gets the keywords with their comments
    and one ``HISTORY`` card; any other mapping gets the values.
    """
    if isinstance(meta, fits.Header):
        out = meta.copy()
        for key, (value, comment) in record.items():
            out[key] = (value, comment)
        out.add_history(history)
        return out
    out = copy.deepcopy(dict(meta)) if meta is not None else {}
    for key, (value, _comment) in record.items():
        out[key] = value
    return out


def build_matched_ccd(parsed, convolved, weights, *, target_stamp, record, history):
    """The matched CCDData: data, uncertainty of the input's kind, mask, WCS, unit, meta, PSF.

    Parameters
    ----------
    parsed : ParsedImage
        The input.
    convolved : ConvolvedImage
        Convolved data, variance (or None) and mask.
    weights : ndarray or None
        Inverse-variance weights of the output (used for an
        `~astropy.nddata.InverseVariance` input).
    target_stamp : ndarray
        The target PSF stamp (becomes ``psf``).
    record : dict
        ``{KEY: (value, comment)}`` FITS-safe record of the operation.
    history : str
        The HISTORY line of a FITS header.
    """
    unit = parsed.unit if parsed.unit is not None else u.dimensionless_unscaled
    return CCDData(
        convolved.data, unit=unit, mask=convolved.mask,
        uncertainty=uncertainty_of_kind(parsed.uncertainty_type, convolved.variance, weights),
        wcs=copy.deepcopy(parsed.wcs), meta=annotated_meta(parsed.meta, record, history),
        psf=np.array(target_stamp, copy=True))
