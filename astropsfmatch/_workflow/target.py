"""A common target PSF that every exposure of a set can be matched to by convolution.

Matching an image to a PSF that is narrower than its own, in any direction, is
a deconvolution: the kernel must sharpen, it amplifies noise and rings. Before
co-adding a set of exposures, `common_target_psf` measures the PSF models of
all of them across their fields and returns one constant PSF that is broader
than each of them everywhere, so that every matching kernel is a smoothing
one.
"""

from dataclasses import dataclass, field

import numpy as np
from astropy.modeling import Model
from astropy.nddata import NDData
from photutils.psf import CircularGaussianPRF, GriddedPSFModel, MoffatPSF

from .._adapters.psf import as_psf
from .._engine.moments import (
    GAUSSIAN_SIGMA_TO_FWHM,
    largest_eigenvalue,
    second_moments,
    smallest_eigenvalue,
)
from .._logging import log
from .._validate import choice, fail, integer, is_int, real, sequence_of, shape2d

# the public names of this module, re-exported by astropsfmatch/__init__.py
__all__ = ["CommonTarget", "common_target_psf"]

_PROFILES = ("gaussian", "moffat")

#: Largest ``margin`` (the target's width over the broadest input's).
_MAX_MARGIN = 10.0

#: At most this many enlargements of the target are tried so that its
#: realized stamp reaches the required second moment (one is always enough
#: in practice: the first guess only misses by pixel-sampling effects).
_MAX_ADJUSTMENTS = 20


@dataclass(frozen=True)
class CommonTarget:
    """The common target PSF of a set of exposures, and what it was derived from.

    Returned by `common_target_psf`.

    Attributes
    ----------
    psf : `~photutils.psf.CircularGaussianPRF` or `~photutils.psf.MoffatPSF`
        The constant target PSF (unit flux, centred at the origin): pass it as
        ``target_psf`` to `~astropsfmatch.match_psf` or
        `~astropsfmatch.match_many`.
    fwhm : float
        Full width at half maximum of the target profile, in pixels (the
        ``fwhm`` of the Gaussian, or of the Moffat core).
    profile : str
        ``'gaussian'`` or ``'moffat'``.
    beta : float or None
        The Moffat ``beta`` (None for a Gaussian).
    margin : float
        The factor applied to the broadest input PSF.
    required_fwhm : float
        The broadest input PSF found, as the FWHM of a Gaussian with the same
        largest second moment (pixels): ``fwhm`` is at least ``margin`` times
        this.
    fwhm_range : `~numpy.ndarray`
        Shape ``(n, 2)``: for each exposure, the smallest and largest
        Gaussian-equivalent FWHM over its field (from the mean of the two
        second moments, as :func:`~astropsfmatch.realize_psf` stamps give
        them).
    major_fwhm : `~numpy.ndarray`
        Shape ``(n,)``: for each exposure, the largest FWHM along any
        direction over its field (from the largest eigenvalue of the
        second-moment matrix); equals the upper end of ``fwhm_range`` for
        round PSFs and exceeds it for elliptical ones.
    limiting_exposure : int
        Index of the exposure with the broadest PSF.
    limiting_position : tuple of float
        The ``(x, y)`` pixel position in that exposure where it was found.
    n_positions : `~numpy.ndarray`
        Shape ``(n,)``: the number of positions sampled in each exposure.
    """

    psf: object
    fwhm: float
    profile: str
    beta: float
    margin: float
    required_fwhm: float
    fwhm_range: np.ndarray = field(repr=False)
    major_fwhm: np.ndarray = field(repr=False)
    limiting_exposure: int = 0
    limiting_position: tuple = (0.0, 0.0)
    n_positions: np.ndarray = field(default=None, repr=False)

    @property
    def n_exposures(self):
        """Number of exposures the target was derived from."""
        return len(self.major_fwhm)

    def __repr__(self):
        beta = f", beta={self.beta:g}" if self.beta is not None else ""
        return (f"<CommonTarget {self.profile} fwhm={self.fwhm:.4g}{beta} "
                f"(margin {self.margin:g} over the broadest input, {self.required_fwhm:.4g} px "
                f"in exposure {self.limiting_exposure}) from {self.n_exposures} exposure(s)>")


def common_target_psf(psfs, *, shapes=None, profile="gaussian", margin=1.05, beta=2.5,
                      n_samples=5):
    r"""
    A constant target PSF that every exposure can be matched to by convolution.

    Each exposure's PSF model is realized on a grid of positions across its
    field; at each position the second-moment matrix of the unit-flux stamp
    gives the width of the PSF along its major axis. The target is a round
    profile whose width is ``margin`` times the largest of these over all
    positions of all exposures, so it is broader than every input PSF along
    every direction (elliptical PSFs included), and every matching kernel
    is a smoothing one: no deconvolution anywhere.

    Parameters
    ----------
    psfs : sequence
        One entry per exposure: a PSF accepted by
        `~astropsfmatch.match_psf` (photutils PSF model such as
        `~photutils.psf.GriddedPSFModel`, astropy 2-D model, or 2-D
        odd-sized array), or a `~astropy.nddata.NDData`/`~astropy.nddata.CCDData`
        image whose ``psf`` is used and whose shape gives the field.
    shapes : tuple or sequence of tuple, optional
        The image shape ``(ny, nx)`` over which each PSF is sampled: one
        shape for all exposures, or a sequence with one shape (or None) per
        exposure. Needed for spatially varying models to cover the whole
        field; a `~photutils.psf.GriddedPSFModel` without a shape is sampled
        over its ePSF grid. Defaults to the shapes of image entries.
    profile : {'gaussian', 'moffat'}, optional
        The target profile: a `~photutils.psf.CircularGaussianPRF` or a
        `~photutils.psf.MoffatPSF`.
    margin : float, optional
        Factor (>= 1) by which the target is broader than the broadest input.
        The default 5% leaves headroom for errors of the PSF models (their
        widths are rarely known better than a few percent) while costing
        little resolution; 1 makes the kernel a near-delta function where the
        PSF is broadest.
    beta : float, optional
        Moffat power index (> 1 and at most 1e6, where a Moffat is a
        Gaussian to 1e-6: use ``profile='gaussian'``); used only for
        ``profile='moffat'``.
    n_samples : int, optional
        Number of sample positions along each axis of a field (2 to 1000;
        the field corners are always included).

    Returns
    -------
    target : CommonTarget
        The target PSF (``target.psf``), its FWHM and the per-exposure FWHM
        ranges that were found.

    Raises
    ------
    ValueError
        An empty ``psfs``, an image without PSF, a bad option, or
        ``shapes`` that do not match ``psfs``.
    TypeError
        An unsupported PSF type.

    Notes
    -----
    Widths are measured from the second moments :math:`I_{xx}, I_{yy},
    I_{xy}` of the stamps that the matcher itself uses. Second moments add
    under convolution, so a smoothing kernel exists only if the target's
    moment matrix exceeds each input's along every direction, that is if
    :math:`\sigma_t^2 \ge \lambda_{\max}` for a round target of moment
    :math:`\sigma_t^2`, where :math:`\lambda_{\max}` is the largest
    eigenvalue of an input's moment matrix. The target's FWHM is set to
    ``margin`` times :math:`2\sqrt{2\ln 2}\,\sqrt{\max \lambda_{\max}}`
    and then enlarged, if needed, until the realized target stamp satisfies
    :math:`\sigma_t^2 \ge \mathrm{margin}^2 \max\lambda_{\max}`. For a
    Moffat target this makes the core at least as broad as the inputs, and
    its wings broader still.

    For a `~photutils.psf.GriddedPSFModel` the stamps are bilinear
    combinations of the grid ePSFs, so along each image axis the moment
    matrix is linear in position between grid points and its largest
    eigenvalue is convex: the maximum over the field lies on the corners of
    the grid cells clipped to the field. Those positions are always sampled,
    so the maximum is found exactly, whatever ``n_samples``.

    Examples
    --------
    >>> from photutils.psf import CircularGaussianPRF, GaussianPRF
    >>> from astropsfmatch import common_target_psf
    >>> psfs = [CircularGaussianPRF(fwhm=3.0), GaussianPRF(x_fwhm=2.6, y_fwhm=3.4)]
    >>> target = common_target_psf(psfs, margin=1.05)
    >>> target.limiting_exposure
    1
    >>> bool(target.fwhm >= 1.05 * target.major_fwhm.max())
    True
    >>> type(target.psf).__name__
    'CircularGaussianPRF'
    """
    # profile names are case-insensitive
    profile = choice(*_PROFILES)("profile", profile.lower() if isinstance(profile, str)
                                 else profile)
    margin = real(ge=1)("margin", margin)
    if margin > _MAX_MARGIN:
        # a target ten times broader than the broadest input is no longer a PSF match
        fail("margin", margin, f"<= {_MAX_MARGIN:g} (a target at most {_MAX_MARGIN:g} times "
             "the broadest input PSF)")
    beta = real(gt=1, le=MAX_BETA)("beta", beta) if profile == "moffat" else None
    n_samples = integer(2, maximum=MAX_SAMPLES)("n_samples", n_samples)
    entries = _exposure_psfs(psfs, shapes)

    n = len(entries)
    fwhm_range = np.empty((n, 2))
    major = np.empty(n)
    n_positions = np.empty(n, dtype=int)
    worst = (-np.inf, 0, (0.0, 0.0))
    for index, (psf, shape) in enumerate(entries):
        x, y = _sample_positions(psf, shape, int(n_samples))
        stamps = psf.stamps(x, y, _moment_size(psf, x, y))
        ixx, iyy, ixy = second_moments(stamps)
        mean_fwhm = GAUSSIAN_SIGMA_TO_FWHM * np.sqrt(np.maximum((ixx + iyy) / 2.0, 0.0))
        lam = largest_eigenvalue(ixx, iyy, ixy)
        fwhm_range[index] = mean_fwhm.min(), mean_fwhm.max()
        k = int(np.argmax(lam))
        major[index] = GAUSSIAN_SIGMA_TO_FWHM * np.sqrt(lam[k])
        n_positions[index] = x.size
        if lam[k] > worst[0]:
            worst = (float(lam[k]), index, (float(x[k]), float(y[k])))

    lam_max, limiting, position = worst
    required_fwhm = GAUSSIAN_SIGMA_TO_FWHM * np.sqrt(lam_max)
    required_moment = margin**2 * lam_max
    fwhm = margin * required_fwhm
    for _ in range(_MAX_ADJUSTMENTS):
        model = _make_profile(profile, fwhm, beta)
        moment = _round_moment(as_psf(model, name="target"))
        if moment >= required_moment * (1 - 1e-12):
            break
        fwhm *= np.sqrt(required_moment / moment) * (1 + 1e-6)
    else:  # pragma: no cover - the first enlargement always suffices
        msg = f"could not find a {profile} target broader than {required_fwhm:.4g} px"
        raise RuntimeError(msg)
    log.debug(f"common target: {profile} fwhm={fwhm:.4g} px, broadest input "
              f"{required_fwhm:.4g} px in exposure {limiting} at {position}")
    return CommonTarget(psf=model, fwhm=float(fwhm), profile=profile, beta=beta,
                        margin=margin, required_fwhm=float(required_fwhm),
                        fwhm_range=fwhm_range, major_fwhm=major, limiting_exposure=limiting,
                        limiting_position=position, n_positions=n_positions)


#: The largest Moffat beta: beyond it the profile is a Gaussian to 1e-6.
MAX_BETA = 1e6

#: The most sample positions along each axis of a field (a million per field).
MAX_SAMPLES = 1000


def _make_profile(profile, fwhm, beta):
    if profile == "gaussian":
        return CircularGaussianPRF(fwhm=fwhm)
    alpha = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    return MoffatPSF(alpha=alpha, beta=beta)


def _round_moment(psf):
    """The smaller eigenvalue of the second-moment matrix of a constant PSF's stamp."""
    stamps = psf.stamps(np.zeros(1), np.zeros(1), _moment_size(psf, 0.0, 0.0))
    return float(smallest_eigenvalue(*second_moments(stamps))[0])


def _moment_size(psf, x, y):
    """Stamp size for the moments: twice the natural size.

    The natural size of an analytic model holds 99.9% of its flux, which
    would bias its second moments low by ~0.3%.
    """
    return 2 * psf.native_size(x, y) + 1


def _sample_positions(psf, shape, n_samples):
    """Positions (x, y) where a PSF is realized: a grid over the field and the ePSF grid."""
    model = psf.model
    gridded = isinstance(model, GriddedPSFModel)
    if shape is None and not gridded:
        return np.zeros(1), np.zeros(1)  # the same shape everywhere
    if gridded:
        xypos = np.asarray(model.grid_xypos, dtype=float)
        nodes_x, nodes_y = np.unique(xypos[:, 0]), np.unique(xypos[:, 1])
    if shape is None:
        xs, ys = nodes_x, nodes_y
    else:
        ny, nx = shape
        xs = np.linspace(0.0, nx - 1.0, n_samples)
        ys = np.linspace(0.0, ny - 1.0, n_samples)
        if gridded:
            xs = np.union1d(xs, nodes_x[(nodes_x > 0) & (nodes_x < nx - 1)])
            ys = np.union1d(ys, nodes_y[(nodes_y > 0) & (nodes_y < ny - 1)])
    x, y = np.meshgrid(xs, ys)
    return x.ravel(), y.ravel()


def _exposure_psfs(psfs, shapes):
    """Validate ``psfs`` and ``shapes``: a list of (_PSF, shape or None)."""
    psfs = sequence_of("psfs", psfs, "a sequence with one PSF (or image) per exposure", item="PSF",
                       not_items=(NDData, np.ndarray, Model))
    n = len(psfs)
    if shapes is None:
        shapes = [None] * n
    elif _is_pair_of_integers(shapes):
        shapes = [shape2d("shapes", shapes)] * n
    else:
        shapes = list(shapes)
        if len(shapes) != n:
            msg = (f"shapes must be one (ny, nx) shape or one per exposure: got {len(shapes)} "
                   f"shapes for {n} PSFs")
            raise ValueError(msg)
    entries = []
    for index, (item, shape) in enumerate(zip(psfs, shapes, strict=True)):
        name = f"psfs[{index}]"
        if isinstance(item, NDData):
            if item.psf is None:
                msg = f"{name} is an image without a PSF (its psf attribute is None)"
                raise ValueError(msg)
            if shape is None:
                shape = np.shape(item.data)
            item = item.psf
        if shape is not None:
            if not _is_shape(shape) or len(shape) != 2:
                msg = f"shapes[{index}] must be an image shape (ny, nx), got {shape!r}"
                raise ValueError(msg)
            shape = (int(shape[0]), int(shape[1]))
        entries.append((as_psf(item, name=name), shape))
    return entries


def _is_pair_of_integers(value):
    """True for a pair of integers (of any sign): one shape, not a sequence of shapes."""
    return isinstance(value, tuple | list) and len(value) == 2 and all(is_int(v) for v in value)


def _is_shape(value):
    """True for a pair of positive integers."""
    if not isinstance(value, tuple | list) or len(value) != 2:
        return False
    return all(is_int(v) and v > 0 for v in value)
