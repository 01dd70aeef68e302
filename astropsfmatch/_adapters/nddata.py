"""Images in and out: a CCDData/NDData/array image split into plain arrays, and the
matched `~astropy.nddata.CCDData` built from arrays (uncertainty of the input's kind,
mask, WCS, unit, meta with the operation recorded, PSF).
"""

import copy
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

from .._engine.weights import inverse_variance_weights

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


def variance_of(uncertainty, shape):
    """Variance array of an astropy uncertainty, with its class."""
    if uncertainty is None:
        return None, None
    if not isinstance(uncertainty, UNCERTAINTY_KINDS):
        msg = (f"image.uncertainty must be StdDevUncertainty, VarianceUncertainty or "
               f"InverseVariance, got {type(uncertainty).__name__}")
        raise TypeError(msg)
    array = np.asarray(uncertainty.array)
    array = array.astype(np.result_type(array.dtype, np.float32), copy=False)
    if array.shape != shape:
        msg = f"image.uncertainty has shape {array.shape}, the data has shape {shape}"
        raise ValueError(msg)
    if isinstance(uncertainty, StdDevUncertainty):
        variance = array**2
    elif isinstance(uncertainty, VarianceUncertainty):
        variance = array
    else:
        with np.errstate(divide="ignore"):
            variance = np.where(array > 0, 1 / np.where(array > 0, array, 1), np.inf)
        variance = variance.astype(array.dtype.newbyteorder("="), copy=False)
    return variance, type(uncertainty)


def parse_image(image, source_psf=None):
    """Split an image into data, variance, mask, unit, WCS, meta and PSF.

    Parameters
    ----------
    image : `~astropy.nddata.CCDData`, `~astropy.nddata.NDData` or 2-D array
        The image to match (a `~numpy.ma.MaskedArray` gives its mask, a
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
        if isinstance(image, u.Quantity):
            data, unit = image.value, image.unit
        elif isinstance(image, np.ma.MaskedArray):
            data, unit, mask = image.data, None, np.ma.getmaskarray(image)
        else:
            data, unit = np.asarray(image), None
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
        mask = np.asarray(mask)
        if mask.shape != data.shape:
            msg = f"image.mask has shape {mask.shape}, the data has shape {data.shape}"
            raise ValueError(msg)
        mask = mask.astype(bool, copy=False)
    variance, kind = variance_of(uncertainty, data.shape)
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

    For `~astropy.nddata.InverseVariance` the inverse-variance ``weights``
    (0 where masked) are used as they are, so they are computed only once.
    """
    if kind is None or variance is None:
        return None
    if kind is StdDevUncertainty:
        return StdDevUncertainty(np.sqrt(variance))
    if kind is VarianceUncertainty:
        return VarianceUncertainty(variance)
    if weights is None:
        weights = inverse_variance_weights(variance, ~np.isfinite(variance))
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
