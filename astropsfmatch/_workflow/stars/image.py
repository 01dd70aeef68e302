"""The inputs of the star functions: images, star tables and option checks.

`prepare` copies an image (a 2-D array, `~astropy.nddata.NDData` or
`~astropy.nddata.CCDData`, a masked array or a `~astropy.units.Quantity`) to
native float64 and collects its bad pixels; `star_positions` reads the
positions of a star table; `positive`, `integer` and `check_psf_model` check
the options.
"""

import math
from dataclasses import dataclass

import numpy as np
from astropy.modeling import Model
from astropy.nddata import NDData, StdDevUncertainty
from astropy.units import Quantity
from astropy.utils.masked import Masked

__all__ = []  # internal to the package: nothing here is public

#: Smallest image side accepted (pixels).
_MIN_IMAGE_SIZE = 16


def positive(name, value, *, allow_none=True):
    """A positive finite float (or None)."""
    if value is None and allow_none:
        return None
    allowed = "a positive number" + (" or None" if allow_none else "")
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        msg = f"{name} must be {allowed}, got {value!r}"
        raise TypeError(msg)
    value = float(value)
    if not (math.isfinite(value) and value > 0.0):
        msg = f"{name} must be {allowed}, got {value!r}"
        raise ValueError(msg)
    return value


def integer(name, value, minimum, maximum=None, *, allow_none=False):
    """An integer in ``[minimum, maximum]`` (or None)."""
    if value is None and allow_none:
        return None
    allowed = f"an integer >= {minimum}" if maximum is None else \
        f"an integer from {minimum} to {maximum}"
    if allow_none:
        allowed += " or None"
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        msg = f"{name} must be {allowed}, got {value!r}"
        raise TypeError(msg)
    if value < minimum or (maximum is not None and value > maximum):
        msg = f"{name} must be {allowed}, got {value!r}"
        raise ValueError(msg)
    return int(value)


@dataclass(frozen=True)
class _Image:
    """An input image as native float64 with bad pixels set to zero."""

    data: np.ndarray
    bad: np.ndarray
    error: np.ndarray | None


def prepare(image, mask, name):
    """Copy ``image`` to native float64 and collect its bad pixels.

    Accepts 2-D arrays (any endianness, integer or float), `~astropy.nddata.NDData`
    (including `~astropy.nddata.CCDData`: its mask and uncertainty are used),
    `numpy.ma.MaskedArray`, astropy `~astropy.utils.masked.Masked` arrays and
    `~astropy.units.Quantity`. Never modifies the input.
    """
    own_mask = None
    error = None
    if isinstance(image, NDData):
        data = image.data
        own_mask = image.mask
        if image.uncertainty is not None:
            try:
                error = image.uncertainty.represent_as(StdDevUncertainty).array
            except (TypeError, ValueError, AttributeError):
                error = None  # an uncertainty that cannot be a standard deviation is not used
    elif isinstance(image, Masked):
        data, own_mask = image.unmasked, image.mask
    elif isinstance(image, np.ma.MaskedArray):
        data, own_mask = image.data, np.ma.getmaskarray(image)
    else:
        data = image
    if isinstance(data, Quantity):
        data = data.value
    try:
        array = np.asarray(data)
    except (TypeError, ValueError) as exc:
        msg = f"{name} must be a 2-D array of numbers, an NDData or a masked array, " \
              f"got {type(image).__name__}"
        raise TypeError(msg) from exc
    if array.dtype.kind not in "iuf":
        msg = f"{name} must hold real numbers (integer or float), got dtype {array.dtype}"
        raise TypeError(msg)
    if array.ndim != 2:
        msg = f"{name} must be a 2-D image, got an array of shape {array.shape}"
        raise ValueError(msg)
    if min(array.shape) < _MIN_IMAGE_SIZE:
        msg = f"{name} must be at least {_MIN_IMAGE_SIZE} x {_MIN_IMAGE_SIZE} pixels, " \
              f"got shape {array.shape}"
        raise ValueError(msg)
    data = np.array(array, dtype=np.float64)  # a native-endian copy
    bad = ~np.isfinite(data)
    for extra, label in ((own_mask, f"the mask of {name}"), (mask, "mask")):
        if extra is None:
            continue
        extra = np.asarray(extra)
        if extra.shape != data.shape:
            msg = f"{label} must have the shape of {name} {data.shape}, got {extra.shape}"
            raise ValueError(msg)
        if extra.dtype.kind not in "biu":
            msg = f"{label} must be a boolean array, got dtype {extra.dtype}"
            raise TypeError(msg)
        bad |= extra.astype(bool)
    if error is not None:
        error = np.array(error, dtype=np.float64)
        if error.shape != data.shape:
            error = None
        else:
            bad |= ~np.isfinite(error) | (error < 0)
    if bad.all():
        msg = f"{name} has no valid pixel: every pixel is masked or not finite"
        raise ValueError(msg)
    data[bad] = 0.0
    if error is not None:
        error[bad] = 0.0
    return _Image(data=data, bad=bad, error=error)


def star_positions(stars, name="stars"):
    """``(x, y)`` float arrays from a table with ``x``/``y`` (or photutils) columns."""
    try:
        names = list(stars.colnames)
    except AttributeError:
        try:
            names = list(stars.keys())
        except AttributeError as exc:
            msg = f"{name} must be a table with 'x' and 'y' columns (as find_stars returns), " \
                  f"got {type(stars).__name__}"
            raise TypeError(msg) from exc
    for xname, yname in (("x", "y"), ("x_fit", "y_fit"), ("x_0", "y_0"),
                         ("x_centroid", "y_centroid"), ("xcentroid", "ycentroid")):
        if xname in names and yname in names:
            x = np.array(stars[xname], dtype=np.float64).ravel()
            y = np.array(stars[yname], dtype=np.float64).ravel()
            if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
                msg = f"{name} has non-finite positions in columns {xname!r}, {yname!r}"
                raise ValueError(msg)
            return x, y
    msg = f"{name} must have 'x' and 'y' columns (as find_stars returns), got columns {names}"
    raise ValueError(msg)


def check_psf_model(name, psf):
    """A photutils PSF model with ``flux``, ``x_0`` and ``y_0`` parameters."""
    if not isinstance(psf, Model):
        msg = f"{name} must be a photutils PSF model (ImagePSF, GriddedPSFModel, " \
              f"CircularGaussianPRF, ...), got {type(psf).__name__}"
        raise TypeError(msg)
    missing = [p for p in ("flux", "x_0", "y_0") if p not in psf.param_names]
    if missing or psf.n_inputs != 2:
        msg = f"{name} must be a 2-D photutils PSF model with 'flux', 'x_0' and 'y_0' " \
              f"parameters, got {type(psf).__name__} with parameters {list(psf.param_names)}"
        raise TypeError(msg)
    return psf
