"""PSF model coercion and stamp realization.

Every PSF the package accepts -- a photutils PSF model, an astropy 2-D model
usable through `photutils.psf.make_psf_model`, or a 2-D odd-sized array -- is
turned into a `PSFAdapter` object by `as_psf`. That object realizes
*stamps*: float64 images of odd size that sum to one, with the PSF centre on
the centre pixel, carrying the PSF *shape* at a given image position.

Realization samples the model's own evaluation at integer pixel offsets
around its centre and normalizes the samples to unit sum. Analytic models and
`~photutils.psf.ImagePSF` have the same shape everywhere and are realized once
per stamp size; `~photutils.psf.GriddedPSFModel` is realized at many positions
at once by a vectorized reproduction of its own interpolation (bilinear
weights of the four nearest grid ePSFs, each ePSF sampled by its cubic spline).

**A new kind of PSF input is added here**: a `PSFAdapter` subclass that
realizes its stamps, and a branch in `as_psf`.
"""

import warnings

import numpy as np
from astropy.modeling import Model
from astropy.nddata import NDData
from astropy.units import Quantity
from astropy.utils.exceptions import AstropyUserWarning
from photutils.psf import GriddedPSFModel, ImagePSF, make_psf_model
from scipy.interpolate import RectBivariateSpline

from .._engine.grid import resize_stamp
from .._engine.moments import moment_fwhm
from .._validate import InvalidTypeError, integer
from .psfex import PSFExPSF

# the public names of this module, re-exported by astropsfmatch/__init__.py
__all__ = ["realize_psf"]

#: Fraction of the flux the natural stamp of an analytic model must hold.
_FLUX_FRACTION = 0.999

#: First and largest sizes tried when measuring an analytic model's extent.
_FIRST_PROBE_SIZE = 15
_MAX_NATURAL_SIZE = 1023

#: The extent measurement stops growing the probe stamp once the outer ring
#: added by the last doubling holds less than this fraction of the flux.
_RING_TOLERANCE = 1e-5

#: Smallest natural stamp size.
_MIN_NATURAL_SIZE = 3

#: (x, y) parameter names of the centre, tried in this order.
_POSITION_NAMES = (("x_0", "y_0"), ("x_mean", "y_mean"))

#: Names of a flux-like (scale) parameter, tried in this order.
_FLUX_NAMES = ("flux", "amplitude")


def realize_psf(model, x, y, size=None):
    """
    Realize a unit-flux PSF stamp at an image position.

    The stamp is the PSF model sampled at integer pixel offsets around its
    centre, normalized to unit sum, with the PSF centre on the centre pixel
    of the stamp. It carries the PSF *shape* at image position ``(x, y)``:
    this matters for a `~photutils.psf.GriddedPSFModel`, while analytic
    models, `~photutils.psf.ImagePSF` and arrays have the same shape
    everywhere.

    Parameters
    ----------
    model : `~astropy.modeling.Model` or 2-D `~numpy.ndarray`
        The PSF: a photutils PSF model (`~photutils.psf.ImagePSF`,
        including oversampled ones, `~photutils.psf.GriddedPSFModel`,
        `~photutils.psf.CircularGaussianPRF`, `~photutils.psf.GaussianPSF`,
        `~photutils.psf.MoffatPSF`, `~photutils.psf.AiryDiskPSF`, ...), any
        other 2-D astropy model with ``x_0``/``y_0`` or ``x_mean``/``y_mean``
        position parameters (wrapped with `~photutils.psf.make_psf_model`),
        a model returned by `~photutils.psf.make_psf_model`, or a 2-D array
        with odd dimensions whose centre pixel is the PSF centre.
    x, y : float
        The image position (pixel coordinates, pixel centres at integers)
        whose PSF shape is realized.
    size : odd int or `None`, optional
        The side of the square stamp. `None` gives the natural size:
        for image-based models the number of detector pixels the data span
        (made odd), for analytic models the smallest odd size that holds
        at least 99.9% of the flux, for arrays their larger dimension.
        Models are sampled over whatever size is asked for; arrays are
        padded with zeros or clipped, centred. The stamp is normalized after
        that.

    Returns
    -------
    stamp : 2-D `~numpy.ndarray`
        A float64 array of shape ``(size, size)`` that sums to one.

    Raises
    ------
    TypeError
        If ``model`` is neither a 2-D model nor an array.
    ValueError
        If ``model`` is an array that is not 2-D, has even dimensions,
        non-finite values or a non-positive sum; if it is a model without
        recognizable position parameters, or whose realized stamp is
        non-finite or has a non-positive sum; if ``size`` is not an odd
        positive integer; or if ``x`` or ``y`` is not finite.

    Notes
    -----
    The stamp is the model's own evaluation (a *PSF* model is sampled at
    pixel centres, a *PRF* model is integrated over pixels, as the model
    defines it) at ``(x + i, y + j)`` with the model centred on ``(x, y)``,
    for integer offsets ``i, j`` in ``[-(size // 2), size // 2]``, divided by
    its sum. For an `~photutils.psf.ImagePSF` the centre is its ``origin``;
    with ``oversampling`` the samples are every ``oversampling``-th data
    point from the origin, which the interpolating spline reproduces exactly
    when those points fall on data samples.

    For analytic models the flux fraction is measured on the sampled profile,
    relative to the model's total flux (1 for photutils models, whose
    ``flux`` parameter is the integral; otherwise the sum over a stamp grown
    until its outer ring holds < 0.001% of the flux, at most 1023 pixels).
    Profiles with power-law wings need large stamps: an
    `~photutils.psf.AiryDiskPSF` of radius 2 pixels has a natural size of
    about 600 pixels.

    Examples
    --------
    >>> import numpy as np
    >>> from photutils.psf import CircularGaussianPSF
    >>> from astropsfmatch import realize_psf
    >>> stamp = realize_psf(CircularGaussianPSF(fwhm=3.0), 100.0, 200.0,
    ...                     size=15)
    >>> stamp.shape
    (15, 15)
    >>> bool(np.isclose(stamp.sum(), 1.0))
    True
    >>> int(stamp.argmax()) == 7 * 15 + 7  # the centre pixel
    True
    >>> realize_psf(CircularGaussianPSF(fwhm=3.0), 0.0, 0.0).shape
    (9, 9)
    """
    psf = as_psf(model, name="model")
    x, y = _check_position(x, "x"), _check_position(y, "y")
    if size is None:
        size = psf.native_size(x, y)
    return psf.stamps(x, y, size)[0]


def held_psf(psf):
    """The PSF an object holds in its ``psf`` attribute (e.g. a `CommonTarget`), or ``psf``.

    Only an object that is not itself a model, an array or an image (whose
    ``psf`` is the PSF *of* the image) is unwrapped, and only when what it
    holds is a model or an array: so ``common_target_psf(...)`` can be
    passed wherever a PSF is, as users try first.
    """
    if isinstance(psf, (Model, np.ndarray, list, tuple, PSFAdapter, PSFExPSF, NDData)):
        return psf
    held = getattr(psf, "psf", None)
    return held if isinstance(held, (Model, np.ndarray)) else psf


def as_psf(psf, *, name="source_psf", psf_size=None):
    """
    Validate a PSF input and wrap it in a `PSFAdapter` object.

    Parameters
    ----------
    psf : `~astropy.modeling.Model`, 2-D array_like or `PSFAdapter`
        The PSF (see `realize_psf`). A `PSFAdapter` is returned unchanged;
        an object holding a PSF in its ``psf`` attribute, such as the
        `~astropsfmatch.CommonTarget` of `~astropsfmatch.common_target_psf`,
        stands for that PSF.
    name : str, optional
        The parameter name used in error messages.
    psf_size : odd int >= 3 or `None`, optional
        The natural stamp size of an analytic model (ignored for image-based
        models and arrays, which have their own size). `None` measures the
        size holding 99.9% of the flux.

    Returns
    -------
    psf : `PSFAdapter`
        The wrapped PSF. Its ``model`` attribute is the original object,
        which is never modified.
    """
    if isinstance(psf, PSFAdapter):
        return psf
    psf = held_psf(psf)
    if psf_size is not None:
        psf_size = integer(3, odd=True)("psf_size", psf_size)
    if isinstance(psf, GriddedPSFModel):
        return _GriddedPSF(psf, name)
    if isinstance(psf, PSFExPSF):
        return _PSFExAdapter(psf, name)
    if isinstance(psf, Model):
        return _ModelPSF(psf, name, psf_size)
    if isinstance(psf, (np.ndarray, list, tuple)):
        return _ArrayPSF(psf, name)
    msg = (
        f"{name} must be a photutils PSF model, a 2-D astropy model or a 2-D "
        f"array with odd dimensions, got an object of type {type(psf).__name__}"
    )
    raise TypeError(msg)


class PSFAdapter:
    """
    A validated PSF that realizes unit-flux stamps (base class).

    Subclasses implement ``_stamps(x, y, size)`` for validated flat position
    arrays and set ``_natural_size``.

    Attributes
    ----------
    model : object
        The original PSF object (never modified).
    name : str
        The parameter name used in error messages.
    """

    kind = "psf"

    def __init__(self, model, name):
        self.model = model
        self.name = name
        self._natural_size = None

    def __repr__(self):
        return (
            f"<{type(self).__name__} {self.name}: {type(self.model).__name__}, "
            f"natural size {self._natural_size}>"
        )

    #: True when the PSF has the same shape at every position.
    constant = False

    def node_lines(self, shape):
        """Node lines ``(xs, ys)`` along which the PSF model varies, for the bilinear model.

        None for a constant PSF. The default for a varying model is three lines
        per axis (edges and centre), which the matcher subdivides as needed.
        """
        if self.constant:
            return None
        ny, nx = shape
        return np.linspace(0.0, nx - 1.0, 3), np.linspace(0.0, ny - 1.0, 3)

    def linear_components(self, size):
        """The stamps as convex combinations of fixed templates, or None.

        Returns ``(templates, weights)``: unit-sum templates (m, size, size)
        and a function ``weights(x, y) -> (n, m)`` whose rows are >= 0 and sum
        to one, such that ``stamps(x, y, size) == weights(x, y) @ templates``.
        The matcher then convolves the m templates instead of every stamp.
        """
        return None

    def native_size(self, x, y):
        """
        The natural stamp size: the largest over the positions ``(x, y)``.

        Parameters
        ----------
        x, y : float or array_like
            Image positions (broadcast together).

        Returns
        -------
        size : int
            An odd stamp size.
        """
        _check_positions(x, y)
        return int(self._natural_size)

    def stamps(self, x, y, size):
        """
        Unit-flux stamps of the PSF shape at image positions.

        Parameters
        ----------
        x, y : float or array_like
            Image positions (broadcast together, then flattened).
        size : odd int
            Side of the square stamps.

        Returns
        -------
        stamps : `~numpy.ndarray`
            Float64 array of shape ``(n, size, size)``, each stamp summing to
            one with the PSF centre on its centre pixel.
        """
        x, y = _check_positions(x, y)
        size = integer(1, odd=True)("size", size)
        return self._stamps(x, y, size)

    def fwhm(self, x, y):
        """
        Gaussian-equivalent FWHM of the PSF at image positions.

        The FWHM is computed from the second moments of the stamp realized at
        the natural size, about its centroid, as
        ``2 sqrt(2 ln 2) * sqrt((Ixx + Iyy) / 2)``: exact for a well-sampled
        Gaussian; larger than the true FWHM for profiles with extended wings
        (Moffat, Airy), and it includes the pixel response of pixel-integrated
        (PRF) models.

        Parameters
        ----------
        x, y : float or array_like
            Image positions (broadcast together, then flattened).

        Returns
        -------
        fwhm : `~numpy.ndarray`
            Float64 array of shape ``(n,)`` in pixels.
        """
        x, y = _check_positions(x, y)
        return moment_fwhm(self._stamps(x, y, self._natural_size))


class _ConstantPSF(PSFAdapter):
    """A PSF with the same shape everywhere: one stamp per size, cached."""

    constant = True

    def __init__(self, model, name):
        super().__init__(model, name)
        self._cache = {}

    def _stamp(self, size):
        if size not in self._cache:
            stamp = _normalize(self._raw_stamp(size)[np.newaxis], self.name, self._what)[0]
            stamp.flags.writeable = False
            self._cache[size] = stamp
        return self._cache[size]

    def _stamps(self, x, y, size):
        return np.broadcast_to(self._stamp(size), (x.size, size, size)).copy()

    def linear_components(self, size):
        return self._stamp(size)[np.newaxis], lambda x, y: np.ones((np.size(x), 1))

    def fwhm(self, x, y):
        x, y = _check_positions(x, y)
        value = moment_fwhm(self._stamp(self._natural_size)[np.newaxis])[0]
        return np.full(x.size, value)

    fwhm.__doc__ = PSFAdapter.fwhm.__doc__


class _ArrayPSF(_ConstantPSF):
    """A constant PSF given as a 2-D array with odd dimensions."""

    kind = "array"

    def __init__(self, psf, name):
        super().__init__(psf, name)
        try:
            data = np.asarray(psf.value if isinstance(psf, Quantity) else psf)
        except (TypeError, ValueError) as exc:  # ragged nested sequences
            msg = f"{name} must be a 2-D array of real numbers, got {type(psf).__name__}: {exc}"
            raise InvalidTypeError(msg) from exc
        if data.dtype.kind not in "biuf":
            msg = f"{name} must be a 2-D array of real numbers, got dtype {data.dtype}"
            raise InvalidTypeError(msg)
        data = data.astype(np.float64)  # a private copy in native byte order
        if data.ndim != 2:
            msg = f"{name} must be a 2-D array, got {data.ndim}-D with shape {data.shape}"
            raise ValueError(msg)
        if data.shape[0] % 2 == 0 or data.shape[1] % 2 == 0:
            msg = (
                f"{name} must have odd dimensions (its centre pixel is the PSF "
                f"centre), got shape {data.shape}"
            )
            raise ValueError(msg)
        if not np.all(np.isfinite(data)):
            nbad = int(np.count_nonzero(~np.isfinite(data)))
            msg = f"{name} must contain only finite values, got {nbad} non-finite of {data.size}"
            raise ValueError(msg)
        largest = float(np.max(np.abs(data))) if data.size else 0.0
        if 0.0 < largest < np.finfo(np.float64).tiny:
            msg = (f"{name} has only subnormal values (largest {largest!r}): its shape is lost "
                   "to round-off; scale the array (a PSF is normalized to unit sum anyway)")
            raise ValueError(msg)
        data = _moderate_scale(data)
        total = float(data.sum())
        if not total > 0:
            msg = f"{name} must have a positive sum, got {total!r}"
            raise ValueError(msg)
        magnitude = float(np.abs(data).sum())
        if total < _MIN_POSITIVE_FRACTION * magnitude:
            # a sum that is positive by round-off: dividing by it amplifies everything
            msg = (f"{name} must have a positive sum, got {total!r}: only "
                   f"{total / magnitude:.2g} of the sum of its absolute values ({magnitude:.3g}); "
                   f"a PSF must be mostly positive (at least {_MIN_POSITIVE_FRACTION:g})")
            raise ValueError(msg)
        _warn_if_off_centre(data, name)
        data.flags.writeable = False
        self._data = data
        self._what = "array"
        self._natural_size = max(data.shape)

    def _raw_stamp(self, size):
        return resize_stamp(self._data, size)


class _ModelPSF(_ConstantPSF):
    """A PSF model with the same shape everywhere (analytic or ImagePSF)."""

    kind = "model"

    def __init__(self, model, name, psf_size=None):
        super().__init__(model, name)
        self._what = "model"
        if model.n_inputs != 2 or model.n_outputs != 1:
            msg = (
                f"{name} must be a 2-D model (two inputs, one output), got "
                f"{type(model).__name__} with {model.n_inputs} input(s) and "
                f"{model.n_outputs} output(s)"
            )
            raise TypeError(msg)
        if len(model) != 1:
            msg = f"{name} must be a single model, got a set of {len(model)} models"
            raise ValueError(msg)
        self._eval_model = _centred_model(model, name)
        self.kind = "image" if isinstance(model, ImagePSF) else "analytic"

        if isinstance(model, ImagePSF):
            oversampling = np.asarray(model.oversampling, dtype=float)  # (y, x)
            shape = np.asarray(model.data.shape, dtype=float)  # (ny, nx)
            origin = np.asarray(model.origin, dtype=float)[::-1]  # (y, x)
            self._natural_size = _image_native_size(shape, oversampling, origin)
        elif psf_size is not None:
            self._natural_size = psf_size
        else:
            self._natural_size = self._measure_size(model)
        # realize once so that a bad model fails here, not later
        self._stamp(self._natural_size)

    def _raw_stamp(self, size):
        offsets = np.arange(size, dtype=np.float64) - size // 2
        yy, xx = np.meshgrid(offsets, offsets, indexing="ij")
        try:
            with np.errstate(all="ignore"):
                values = self._eval_model(xx, yy)
        except Exception as exc:  # noqa: BLE001 - any failure is a bad model
            msg = f"{self.name} could not be evaluated as a 2-D PSF model: {exc}"
            raise ValueError(msg) from exc
        if isinstance(values, Quantity):
            values = values.value
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (size, size):
            values = np.broadcast_to(values, (size, size))
        return values

    def _measure_size(self, model):
        """Smallest odd stamp size holding ``_FLUX_FRACTION`` of the flux."""
        # photutils functional models integrate to their flux parameter (1)
        known_total = 1.0 if type(model).__module__.startswith("photutils.psf") else 0.0
        size = _FIRST_PROBE_SIZE
        while True:
            raw = self._raw_stamp(size)
            if not np.all(np.isfinite(raw)):
                msg = (
                    f"{self.name} gives non-finite values when realized on a "
                    f"{size}x{size} stamp around its centre"
                )
                raise ValueError(msg)
            cumulative = np.cumsum(_ring_sums(raw))  # flux within size 2r+1
            total = cumulative[-1]
            inner = cumulative[(size - 1) // 4]  # the previous probe size
            if not total > 0:
                msg = (
                    f"{self.name} has a non-positive sum ({float(total)!r}) when realized "
                    f"on a {size}x{size} stamp around its centre"
                )
                raise ValueError(msg)
            if abs(total - inner) <= _RING_TOLERANCE * total or size >= _MAX_NATURAL_SIZE:
                break
            size = 2 * size + 1
        reference = max(total, known_total)
        enough = np.flatnonzero(cumulative >= _FLUX_FRACTION * reference)
        radius = int(enough[0]) if enough.size else size // 2
        return max(2 * radius + 1, _MIN_NATURAL_SIZE)


class _GriddedPSF(PSFAdapter):
    """
    A `~photutils.psf.GriddedPSFModel`, realized at many positions at once.

    photutils evaluates the model at ``(x, y)`` as the bilinear combination
    of the four grid ePSFs around ``(x_0, y_0)`` (positions outside the grid
    are clipped to its edge), each ePSF interpolated by a cubic
    `~scipy.interpolate.RectBivariateSpline` at
    ``oversampling * (x - x_0) + origin``. Centred at integer offsets, the
    sampling points do not depend on the position, so each ePSF is sampled
    once per stamp size (a *template*) and the stamps are the bilinear
    weights times the templates: one matrix product for all positions.

    The offsets are exact. photutils, evaluated at ``x + d`` with ``x_0 = x``,
    computes ``(x + d) - x``, which can round to just beyond the last data
    sample and then returns ``fill_value`` there; so the two can differ on
    the outermost sample of the ePSF data (by that sample's value).
    """

    kind = "gridded"

    def __init__(self, model, name):
        super().__init__(model, name)
        data = np.asarray(model.data, dtype=np.float64)
        if data.ndim != 3 or not np.all(np.isfinite(data)):
            msg = f"{name} must have a finite 3-D ePSF grid, got shape {data.shape}"
            raise ValueError(msg)
        self._data = data
        xypos = np.asarray(model.grid_xypos, dtype=np.float64)
        self._xgrid = np.unique(xypos[:, 0])
        self._ygrid = np.unique(xypos[:, 1])
        # photutils sorts the ePSFs by y, then x: index = iy * nx_grid + ix
        self._oversampling = np.asarray(model.oversampling, dtype=float)  # (y, x)
        self._origin = (np.asarray(data.shape[1:], dtype=float) - 1) / 2  # (y, x)
        self._fill_value = model.fill_value
        self._splines = [None] * data.shape[0]
        self._templates = {}
        self._natural_size = _image_native_size(
            np.asarray(data.shape[1:], dtype=float), self._oversampling, self._origin
        )
        # every stamp is a convex combination of the grid templates: checking
        # the templates checks every position
        templates, invalid = self._get_templates(self._natural_size)
        flat = templates.reshape(len(templates), -1)
        if self._fill_value is not None:
            flat = np.where(invalid.ravel(), self._fill_value, flat)
        sums = flat.sum(axis=1)
        bad = np.flatnonzero(~np.all(np.isfinite(flat), axis=1) | ~(sums > 0))
        if bad.size:
            i = int(bad[0])
            msg = (
                f"{name} has grid ePSF {i} at (x, y) = {tuple(xypos[i].tolist())} whose "
                f"realized stamp is non-finite or has a non-positive sum ({float(sums[i])!r})"
            )
            raise ValueError(msg)

    @property
    def constant(self):
        """A grid of one ePSF is constant."""
        return self._data.shape[0] == 1

    def node_lines(self, shape):
        """The model's own node lines that matter for an image of ``shape``.

        photutils interpolates bilinearly between the grid ePSFs and holds
        the edge ePSFs beyond the grid, so the PSF is bilinear between these
        lines: every grid line inside the image, and the nearest one at or
        beyond each edge (or the outermost line when the grid stops short of
        the edge, beyond which the PSF is constant).
        """
        if self.constant:
            return None
        return (_bracketing_lines(self._xgrid, shape[1]), _bracketing_lines(self._ygrid, shape[0]))

    def coverage(self, shape):
        """How far (pixels) the image extends beyond the ePSF grid: ``(x, y)``, >= 0."""
        ny, nx = shape
        beyond_x = max(self._xgrid[0] - 0.0, (nx - 1.0) - self._xgrid[-1], 0.0)
        beyond_y = max(self._ygrid[0] - 0.0, (ny - 1.0) - self._ygrid[-1], 0.0)
        return float(beyond_x), float(beyond_y)

    def grid_spacing(self):
        """Typical spacing of the ePSF grid lines ``(x, y)`` (inf for a single line)."""
        def spacing(lines):
            return float(np.median(np.diff(lines))) if lines.size > 1 else np.inf
        return spacing(self._xgrid), spacing(self._ygrid)

    def _spline(self, index):
        if self._splines[index] is None:
            ny, nx = self._data.shape[1:]
            # the same spline as GriddedPSFModel._calc_interpolator
            self._splines[index] = RectBivariateSpline(
                np.arange(nx), np.arange(ny), self._data[index].T, kx=3, ky=3, s=0
            )
        return self._splines[index]

    def _get_templates(self, size):
        """Each ePSF sampled at the centred integer offsets: (N, size, size)."""
        if size not in self._templates:
            offsets = np.arange(size, dtype=np.float64) - size // 2
            yi = self._oversampling[0] * offsets + self._origin[0]
            xi = self._oversampling[1] * offsets + self._origin[1]
            ny, nx = self._data.shape[1:]
            templates = np.empty((self._data.shape[0], size, size))
            for index in range(self._data.shape[0]):
                # spline(x, y) on a grid is indexed [x, y]
                templates[index] = self._spline(index)(xi, yi, grid=True).T
            invalid = ((yi < 0) | (yi > ny - 1))[:, np.newaxis] | (
                (xi < 0) | (xi > nx - 1)
            )[np.newaxis, :]
            templates.flags.writeable = False
            self._templates[size] = (templates, invalid)
        return self._templates[size]

    def _weights(self, x, y):
        """Bilinear weights (n, N) of the grid ePSFs, as photutils computes them."""
        n = x.size
        npsf = self._data.shape[0]
        weights = np.zeros((n, npsf))
        if npsf == 1:
            weights[:, 0] = 1.0
            return weights
        xgrid, ygrid = self._xgrid, self._ygrid
        ix = np.clip(np.searchsorted(xgrid, x) - 1, 0, len(xgrid) - 2)
        iy = np.clip(np.searchsorted(ygrid, y) - 1, 0, len(ygrid) - 2)
        x0, x1 = xgrid[ix], xgrid[ix + 1]
        y0, y1 = ygrid[iy], ygrid[iy + 1]
        xc = np.clip(x, x0, x1)
        yc = np.clip(y, y0, y1)
        norm = (x1 - x0) * (y1 - y0)
        nxg = len(xgrid)
        rows = np.arange(n)
        # lower-left, lower-right, upper-left, upper-right (distinct columns)
        weights[rows, iy * nxg + ix] = (x1 - xc) * (y1 - yc) / norm
        weights[rows, iy * nxg + ix + 1] = (xc - x0) * (y1 - yc) / norm
        weights[rows, (iy + 1) * nxg + ix] = (x1 - xc) * (yc - y0) / norm
        weights[rows, (iy + 1) * nxg + ix + 1] = (xc - x0) * (yc - y0) / norm
        return weights

    def linear_components(self, size):
        templates, invalid = self._get_templates(size)
        templates = np.array(templates)
        if self._fill_value is not None:
            templates[:, invalid] = self._fill_value
        sums = templates.sum(axis=(1, 2))
        templates = _normalize(templates, self.name, "model")

        def weights(x, y):
            x, y = _check_positions(x, y)
            # the stamp is sum_m w_m T_m / sum_m w_m s_m: a convex combination of the
            # unit-sum templates with weights w_m s_m / sum_k w_k s_k
            scaled = self._weights(x, y) * sums
            return scaled / scaled.sum(axis=1, keepdims=True)

        return templates, weights

    def _stamps(self, x, y, size):
        templates, invalid = self._get_templates(size)
        npsf = templates.shape[0]
        stamps = self._weights(x, y) @ templates.reshape(npsf, size * size)
        stamps = stamps.reshape(x.size, size, size)
        if self._fill_value is not None:
            stamps[:, invalid] = self._fill_value
        return _normalize(stamps, self.name, "model")


class _PSFExAdapter(PSFAdapter):
    """A `~astropsfmatch.PSFExPSF`: a polynomial in the image position of fixed images."""

    kind = "psfex"

    def __init__(self, model, name):
        super().__init__(model, name)
        self._natural_size = int(model.natural_size)
        # realize once so that a model that cannot be realized fails here
        self._stamps(np.zeros(1), np.zeros(1), self._natural_size)

    @property
    def constant(self):
        """A PSFEx model without context variables is constant."""
        return not self.model.context

    def _stamps(self, x, y, size):
        try:
            return self.model.stamps(x, y, size)
        except ValueError as exc:
            msg = f"{self.name}: {exc}"
            raise ValueError(msg) from exc

    def linear_components(self, size):
        return self.model.stamp_components(size)


def _bracketing_lines(lines, size):
    """Grid lines inside [0, size - 1] plus the nearest one at or beyond each edge."""
    lines = np.unique(np.asarray(lines, dtype=float))
    inside = lines[(lines > 0) & (lines < size - 1)]
    below, above = lines[lines <= 0], lines[lines >= size - 1]
    low = below.max() if below.size else lines.min()
    high = above.min() if above.size else lines.max()
    return np.unique(np.concatenate([[low], inside, [high]]))


def _centred_model(model, name):
    """A copy of ``model`` centred at (0, 0) with unit flux, ready to evaluate."""
    x_name = getattr(model, "x_name", None)
    y_name = getattr(model, "y_name", None)
    flux_name = getattr(model, "flux_name", None)
    params = model.param_names
    if not (isinstance(x_name, str) and x_name in params and isinstance(y_name, str)
            and y_name in params):
        x_name = y_name = None
        for xn, yn in _POSITION_NAMES:
            if xn in params and yn in params:
                x_name, y_name = xn, yn
                break
    if x_name is None:
        msg = (
            f"{name} must have position parameters (one of "
            f"{', '.join('/'.join(p) for p in _POSITION_NAMES)}), got a "
            f"{type(model).__name__} with parameters {params}; wrap it with "
            "photutils.psf.make_psf_model(model, x_name=..., y_name=...)"
        )
        raise ValueError(msg)
    if not (isinstance(flux_name, str) and flux_name in params):
        flux_name = next((fn for fn in _FLUX_NAMES if fn in params), None)

    if (x_name, y_name) == ("x_0", "y_0") or hasattr(model, "x_name"):
        centred = model.copy()
    else:
        # an astropy model with other position names: make it a PSF model
        try:
            centred = make_psf_model(
                model, x_name=x_name, y_name=y_name, flux_name=flux_name, normalize=False
            )
        except Exception as exc:  # noqa: BLE001 - report any failure as a bad model
            msg = (
                f"{name} ({type(model).__name__}) could not be made a PSF model with "
                f"photutils.psf.make_psf_model: {exc}"
            )
            raise ValueError(msg) from exc
        x_name, y_name, flux_name = centred.x_name, centred.y_name, centred.flux_name
    setattr(centred, x_name, 0.0)
    setattr(centred, y_name, 0.0)
    if flux_name is not None:
        setattr(centred, flux_name, 1.0)
    return centred


def _image_native_size(shape, oversampling, origin):
    """
    Odd number of detector pixels spanned by (oversampled) image data.

    ``shape``, ``oversampling`` and ``origin`` are (y, x) arrays; the stamp
    holds every integer offset ``d`` whose sample ``oversampling * d +
    origin`` lies within the data.
    """
    reach = np.maximum(origin, shape - 1 - origin) / oversampling
    half = int(np.floor(np.max(reach) + 1e-9))
    return max(2 * half + 1, 1)


def _ring_sums(stamp):
    """Sums over square rings of Chebyshev radius 0, 1, ... of an odd stamp."""
    size = stamp.shape[-1]
    d = np.abs(np.arange(size) - size // 2)
    radius = np.maximum(d[:, np.newaxis], d[np.newaxis, :])
    return np.bincount(radius.ravel(), weights=stamp.ravel(), minlength=size // 2 + 1)


#: A PSF's sum must be at least this fraction of the sum of its absolute values.
_MIN_POSITIVE_FRACTION = 1e-2

#: Largest offset (pixels) of a PSF array's peak or centroid from its centre pixel.
#: A PSF array whose largest value is outside this range is rescaled by a power of two
#: (exact), so that its sums and moments neither overflow nor underflow.
_MODERATE_RANGE = (2.0**-100, 2.0**100)


def _moderate_scale(data):
    """``data`` divided by the power of two nearest its largest |value|, when that is extreme.

    A PSF is normalized to unit sum anyway: the factor changes nothing but
    keeps ``sum``, products and moments of 1e300-sized values finite.
    """
    largest = float(np.max(np.abs(data))) if data.size else 0.0
    if largest == 0.0 or _MODERATE_RANGE[0] <= largest <= _MODERATE_RANGE[1]:
        return data
    _, exponent = np.frexp(largest)
    return np.ldexp(data, -int(exponent))


_CENTRE_TOLERANCE = 0.5


def _warn_if_off_centre(data, name):
    """Warn when a PSF array's peak or centroid is off its centre pixel by > 0.5 pixel.

    An array PSF is centred on its centre pixel by definition: one that is not
    shifts the matched image (photutils warns the same way).
    """
    ny, nx = data.shape
    cy, cx = (ny - 1) / 2.0, (nx - 1) / 2.0
    peak = np.unravel_index(np.argmax(data), data.shape)
    if data[ny // 2, nx // 2] >= data.max() * (1 - 1e-9):
        peak = (ny // 2, nx // 2)  # the centre is a maximum (e.g. a flat top): no shift
    total = data.sum()
    yy, xx = np.indices(data.shape)
    centroid = ((data * yy).sum() / total, (data * xx).sum() / total)
    offsets = {"peak": (peak[1] - cx, peak[0] - cy), "centroid": (centroid[1] - cx,
                                                                  centroid[0] - cy)}
    far = {k: v for k, v in offsets.items() if np.hypot(*v) > _CENTRE_TOLERANCE}
    if far:
        what = ", ".join(f"its {k} by ({dx:+.2f}, {dy:+.2f}) px" for k, (dx, dy) in far.items())
        msg = (f"{name}: a PSF array is centred on its centre pixel, but {what}: the matched "
               "image would be shifted; recentre the array (or pass an ImagePSF)")
        warnings.warn(msg, AstropyUserWarning, stacklevel=4)


def _normalize(stamps, name, what):
    """Divide each stamp of (n, S, S) by its sum, checking it is usable."""
    stamps = np.array(stamps, dtype=np.float64)
    size = stamps.shape[-1]
    finite = np.all(np.isfinite(stamps), axis=(1, 2))
    sums = stamps.sum(axis=(1, 2))
    if not np.all(finite):
        msg = (
            f"{name} gives a non-finite realized {size}x{size} stamp; the {what} must "
            "evaluate to finite values around its centre"
        )
        raise ValueError(msg)
    magnitudes = np.abs(stamps).sum(axis=(1, 2))
    if not np.all(sums > _MIN_POSITIVE_FRACTION * magnitudes):
        bad = float(sums[~(sums > _MIN_POSITIVE_FRACTION * magnitudes)][0])
        msg = (
            f"{name} gives a realized {size}x{size} stamp with non-positive sum "
            f"({bad!r}); the {what} must have positive flux within the stamp"
        )
        raise ValueError(msg)
    stamps /= sums[:, np.newaxis, np.newaxis]
    return stamps


def _check_position(value, name):
    """Check a scalar position coordinate; return a float."""
    array = np.asarray(value)
    if array.ndim != 0 or not np.issubdtype(array.dtype, np.number):
        msg = f"{name} must be a finite real number, got {value!r}"
        raise InvalidTypeError(msg) if array.ndim == 0 else ValueError(msg)
    result = float(array)
    if not np.isfinite(result):
        msg = f"{name} must be a finite real number, got {value!r}"
        raise ValueError(msg)
    return result


def _check_positions(x, y):
    """Broadcast and flatten position arrays, checking they are finite."""
    try:
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        msg = f"x and y must be real numbers or arrays of them: {exc}"
        raise InvalidTypeError(msg) from exc
    try:
        x, y = np.broadcast_arrays(x, y)
    except ValueError as exc:
        msg = f"x and y must have broadcastable shapes, got {x.shape} and {y.shape}"
        raise ValueError(msg) from exc
    x, y = x.ravel(), y.ravel()
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        msg = "x and y must be finite, got non-finite positions"
        raise ValueError(msg)
    return x, y
