"""The pieces of `coadd_psf_matched`: an exposure's pixel map onto the coadd grid, its
detector-frame target, its warp, and the coadd PSF that results.

An exposure is matched in its own (detector) frame, where its PSF model was
made, to the target *as the detector sees it*: the target of the output grid
taken through the local affine transform of the pixel mapping and
precompensated for the response of the resampling kernel. Warping the matched
exposure to the output grid then gives the target there, by construction:

* `FrameMap`: the output-to-input pixel mapping of one exposure (from the two
  WCSs), over the part of the output grid it covers, and its local
  Jacobians;
* `detector_target`: the detector-frame target (one stamp, or a
  `~photutils.psf.GriddedPSFModel` when the mapping's Jacobian varies over
  the exposure), iterated until warping it gives the target;
* `warp_matched`: the matched image, its variance and its mask resampled to
  the output grid, with the pixel-area factor that conserves flux;
* `exposure_psf_stamps`: the PSF that warping gives, star by star, at
  held-out positions: the source PSF model, the solved matching kernel and
  the resampling at that exact sub-pixel phase, for the measured residual
  of the coadd PSF.
"""

import math

import numpy as np
import scipy.signal
from astropy.nddata import NDData
from astropy.wcs.utils import pixel_to_pixel
from photutils.psf import GriddedPSFModel, ImagePSF

from .._engine.moments import adaptive_moments, ellipticity
from .._engine.quality import heldout_positions
from .._engine.resample import (
    StampResampler,
    fourier_shift,
    half_width,
    resample,
    sinc_affine,
)

__all__ = []  # internal to the package: nothing here is public

#: Integer output positions over which the resampling response is averaged.
RESPONSE_SAMPLES = 25

#: At most this many fixed-point iterations of the precompensated detector-frame target;
#: they stop below the tolerance (residual / peak) or when one gains less than the factor.
PRECOMPENSATION_ITERATIONS = 20
PRECOMPENSATION_TOLERANCE = 1e-6
PRECOMPENSATION_GAIN = 0.9

#: One detector-frame target for the whole exposure when the targets at its
#: corners and edges differ from the one at its centre by less than this
#: fraction of the peak (an affine WCS relation, or a small field).
TARGET_VARIATION_TOLERANCE = 1e-4

#: Jacobians that differ less than this over the exposure give one target, unchecked.
_JACOBIAN_TOLERANCE = 1e-6

#: Zeros around a stamp before it is shifted by a fraction of a pixel.
FOURIER_PAD = 8

#: Candidate held-out positions of the coadd PSF measurement.
HELDOUT_CANDIDATES = 64

#: Points along each edge of an exposure mapped to find the output region it covers.
_EDGE_POINTS = 33

#: Output pixels mapped at once.
_MAP_CHUNK = 1 << 20

#: Oversampling of the `coadd_psf` model built from an analytic target.
COADD_PSF_OVERSAMPLING = 4


class FrameMap:
    """The output-to-input pixel mapping of one exposure.

    Parameters
    ----------
    wcs_in, shape_in : WCS and (ny, nx)
        The exposure.
    wcs_out, shape_out : WCS and (ny, nx)
        The output grid.

    Attributes
    ----------
    bbox : tuple or None
        ``(y0, y1, x0, x1)``: the part of the output grid whose pixels map
        into (or near) the exposure; None when nothing overlaps.
    """

    def __init__(self, wcs_in, shape_in, wcs_out, shape_out):
        self.wcs_in, self.wcs_out = wcs_in, wcs_out
        self.shape_in, self.shape_out = tuple(shape_in), tuple(shape_out)
        self.bbox = self._overlap()

    def to_input(self, x, y):
        """Input pixel coordinates of output pixel coordinates."""
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        xi, yi = pixel_to_pixel(self.wcs_out, self.wcs_in, x, y)
        return np.asarray(xi, dtype=np.float64), np.asarray(yi, dtype=np.float64)

    def to_output(self, x, y):
        """Output pixel coordinates of input pixel coordinates."""
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        xo, yo = pixel_to_pixel(self.wcs_in, self.wcs_out, x, y)
        return np.asarray(xo, dtype=np.float64), np.asarray(yo, dtype=np.float64)

    def _overlap(self):
        ny, nx = self.shape_in
        edge_x = np.linspace(-0.5, nx - 0.5, _EDGE_POINTS)
        edge_y = np.linspace(-0.5, ny - 0.5, _EDGE_POINTS)
        x = np.concatenate([edge_x, edge_x, np.full(_EDGE_POINTS, -0.5),
                            np.full(_EDGE_POINTS, nx - 0.5)])
        y = np.concatenate([np.full(_EDGE_POINTS, -0.5), np.full(_EDGE_POINTS, ny - 0.5),
                            edge_y, edge_y])
        with np.errstate(invalid="ignore"):
            xo, yo = self.to_output(x, y)
        good = np.isfinite(xo) & np.isfinite(yo)
        if not good.any():
            return None
        x0 = max(int(math.floor(xo[good].min())) - 1, 0)
        x1 = min(int(math.ceil(xo[good].max())) + 2, self.shape_out[1])
        y0 = max(int(math.floor(yo[good].min())) - 1, 0)
        y1 = min(int(math.ceil(yo[good].max())) + 2, self.shape_out[0])
        if x1 <= x0 or y1 <= y0:
            return None
        return (y0, y1, x0, x1)

    def coordinates(self):
        """Input coordinates ``(x, y)`` of every output pixel of ``bbox``, and the pixel-area
        ratio (input pixels per output pixel, the local Jacobian determinant).
        """
        y0, y1, x0, x1 = self.bbox
        xo = np.arange(x0, x1, dtype=np.float64)
        x_in = np.empty((y1 - y0, x1 - x0))
        y_in = np.empty_like(x_in)
        rows = max(_MAP_CHUNK // max(x1 - x0, 1), 1)
        for start in range(y0, y1, rows):
            stop = min(start + rows, y1)
            yy, xx = np.meshgrid(np.arange(start, stop, dtype=np.float64), xo, indexing="ij")
            with np.errstate(invalid="ignore"):
                x_in[start - y0:stop - y0], y_in[start - y0:stop - y0] = self.to_input(xx, yy)
        area = self.area_ratio(x_in, y_in)
        return x_in, y_in, area

    @staticmethod
    def area_ratio(x_in, y_in):
        """``|det J|`` from the mapped coordinates of neighbouring output pixels."""
        if min(x_in.shape) < 2:
            return np.ones_like(x_in)
        dxdy, dxdx = np.gradient(x_in)
        dydy, dydx = np.gradient(y_in)
        return np.abs(dxdx * dydy - dxdy * dydx)

    def jacobian(self, x, y, *, step=0.5):
        """Local Jacobians ``d(x_in, y_in) / d(x_out, y_out)`` at output positions, (n, 2, 2)."""
        x = np.atleast_1d(np.asarray(x, dtype=np.float64))
        y = np.atleast_1d(np.asarray(y, dtype=np.float64))
        xs = np.concatenate([x + step, x - step, x, x])
        ys = np.concatenate([y, y, y + step, y - step])
        xi, yi = self.to_input(xs, ys)
        n = x.size
        jac = np.empty((n, 2, 2))
        jac[:, 0, 0] = (xi[:n] - xi[n:2 * n]) / (2 * step)
        jac[:, 1, 0] = (yi[:n] - yi[n:2 * n]) / (2 * step)
        jac[:, 0, 1] = (xi[2 * n:3 * n] - xi[3 * n:]) / (2 * step)
        jac[:, 1, 1] = (yi[2 * n:3 * n] - yi[3 * n:]) / (2 * step)
        return jac


def stamp_support(target_size, jac):
    """Odd side of a detector-frame stamp that holds a target stamp of ``target_size``."""
    stretch = float(np.linalg.svd(jac, compute_uv=False).max())
    half = int(math.ceil((target_size // 2) * stretch)) + 1
    return 2 * half + 1


def _normalized(stamp):
    return stamp / stamp.sum()


class StampWarp:
    """Detector-frame stamps, each centred at a detector position, resampled onto output stamps.

    What warping an image that holds these stars gives around ``positions``:
    each stamp is moved to its star's sub-pixel phase (`fourier_shift`) and
    resampled at the input coordinates of the output pixels, with the kernel
    of the image warp. The taps are computed once and applied to any stamps.

    Parameters
    ----------
    frame : FrameMap
    centres : ndarray (n, 2)
        The detector positions ``(x, y)`` of the stars (exact, sub-pixel).
    positions : ndarray (n, 2)
        Integer output positions of the centres of the output stamps.
    size : odd int
        Side of the output stamps.
    stamp_size : odd int
        Side of the detector-frame stamps.
    resampling : str
        The kernel.
    """

    def __init__(self, frame, centres, positions, size, stamp_size, resampling):
        centres = np.asarray(centres, dtype=np.float64)
        n = len(centres)
        self.rounded = np.round(centres)
        self.shift = centres - self.rounded
        self.pad = max(FOURIER_PAD, half_width(resampling) + 2)
        box = stamp_size + 2 * self.pad
        centre_index = box // 2
        offsets = np.arange(size) - size // 2
        dy, dx = np.meshgrid(offsets, offsets, indexing="ij")
        qx = positions[:, 0, None, None] + dx[None]
        qy = positions[:, 1, None, None] + dy[None]
        px, py = frame.to_input(qx, qy)
        # the stamps side by side in one image: each reads only its own box (zeros around it)
        local_x = px - self.rounded[:, 0, None, None] + centre_index + box * np.arange(n)[
            :, None, None]
        local_y = py - self.rounded[:, 1, None, None] + centre_index
        self.resampler = StampResampler((box, box * n), local_x, local_y, resampling)

    def __call__(self, stamps):
        """Output stamps (n, size, size) of detector stamps (n, m, m) (or one, for all)."""
        stamps = np.asarray(stamps, dtype=np.float64)
        if stamps.ndim == 2:
            stamps = np.broadcast_to(stamps, (len(self.shift), *stamps.shape))
        shifted = fourier_shift(stamps, self.shift[:, 0], self.shift[:, 1], pad=self.pad)
        return self.resampler(np.concatenate(list(shifted), axis=1))


def _response_positions(frame, centre_out, spread):
    """Integer output positions around ``centre_out`` where the response is averaged."""
    x, y = heldout_positions((2 * spread + 1, 2 * spread + 1), RESPONSE_SAMPLES, seed=1)
    positions = np.stack([np.round(centre_out[0] + x - spread),
                          np.round(centre_out[1] + y - spread)], axis=-1)
    return positions


def precompensated_target(target_out, frame, centre_out, spread, resampling):
    """The detector-frame stamp whose warp, averaged over nearby output pixels, is the target.

    Parameters
    ----------
    target_out : ndarray (n_t, n_t)
        The unit-sum target stamp on the output grid.
    frame : FrameMap
    centre_out : (x, y)
        Output position where the local Jacobian is taken.
    spread : int
        Half-side (pixels) of the output region whose pixels sample the
        phases of the resampling.
    resampling : str

    Returns
    -------
    stamp : ndarray (m, m)
        Unit-sum detector-frame target.
    residual : float
        Largest ``|warp(stamp) - target| / peak`` left, averaged over the
        phases.
    """
    size = target_out.shape[0]
    jac = frame.jacobian(*centre_out)[0]
    area = abs(float(np.linalg.det(jac)))
    m = stamp_support(size, jac)
    inverse = np.linalg.inv(jac)
    positions = _response_positions(frame, centre_out, spread)
    centres = np.stack(frame.to_input(positions[:, 0], positions[:, 1]), axis=-1)
    warp = StampWarp(frame, centres, positions, size, m, resampling)
    peak = target_out.max()

    def to_detector(stamp):
        return sinc_affine(stamp, inverse, m) / area

    def mean_warp(stamp):
        return area * warp(stamp).mean(axis=0)

    stamp = _normalized(to_detector(target_out))
    error = target_out - mean_warp(stamp)
    residual = float(np.abs(error).max() / peak)
    for _ in range(PRECOMPENSATION_ITERATIONS):
        if residual <= PRECOMPENSATION_TOLERANCE:
            break
        trial = _normalized(stamp + to_detector(error))
        trial_error = target_out - mean_warp(trial)
        trial_residual = float(np.abs(trial_error).max() / peak)
        if not trial_residual < PRECOMPENSATION_GAIN * residual:
            break  # converged as far as this kernel allows
        stamp, error, residual = trial, trial_error, trial_residual
    return stamp, residual


def detector_target(target_out, frame, resampling):
    """The target of one exposure in its detector frame, precompensated for the resampling.

    Returns
    -------
    target : ndarray or `~photutils.psf.GriddedPSFModel`
        One stamp when the mapping's Jacobian is constant enough over the
        exposure, else a 3x3 grid of stamps over the detector.
    info : dict
        ``varying`` (bool), ``residual`` (largest remaining response
        residual / peak), ``jacobian`` at the centre, ``rotation`` (deg) and
        ``scale`` (input pixels per output pixel) there.
    """
    ny, nx = frame.shape_in
    nodes_x = np.array([0.0, (nx - 1) / 2.0, nx - 1.0])
    nodes_y = np.array([0.0, (ny - 1) / 2.0, ny - 1.0])
    gx, gy = np.meshgrid(nodes_x, nodes_y)
    out_x, out_y = frame.to_output(gx.ravel(), gy.ravel())
    jacs = frame.jacobian(out_x, out_y)
    size = target_out.shape[0]
    m = max(stamp_support(size, j) for j in jacs)
    varying = False
    if np.abs(jacs - jacs[4]).max() > _JACOBIAN_TOLERANCE:
        simple = np.array([_normalized(sinc_affine(target_out, np.linalg.inv(j), m))
                           for j in jacs])
        peak = simple[4].max()
        varying = bool(np.abs(simple - simple[4]).max() > TARGET_VARIATION_TOLERANCE * peak)
    centre = (float(out_x[4]), float(out_y[4]))
    jac = jacs[4]
    info = {"varying": varying, "jacobian": jac,
            "rotation": float(np.degrees(np.arctan2(jac[0, 1] - jac[1, 0],
                                                     jac[0, 0] + jac[1, 1]))),
            "scale": float(np.sqrt(abs(np.linalg.det(jac))))}
    if not varying:
        spread = max(min(frame.shape_in) // 2, 1)
        stamp, residual = precompensated_target(target_out, frame, centre, spread, resampling)
        info["residual"] = residual
        return stamp, info
    spread = max(int(min(np.diff(nodes_x).min(), np.diff(nodes_y).min()) // 2), 1)
    stamps, residuals = [], []
    for k in range(len(jacs)):
        stamp, residual = precompensated_target(target_out, frame, (out_x[k], out_y[k]),
                                                spread, resampling)
        stamps.append(resize_odd(stamp, m))
        residuals.append(residual)
    info["residual"] = float(max(residuals))
    xypos = [(float(x), float(y)) for y in nodes_y for x in nodes_x]
    model = GriddedPSFModel(NDData(np.array(stamps), meta={"grid_xypos": xypos,
                                                            "oversampling": 1}))
    return model, info


def resize_odd(stamp, size):
    """Pad with zeros or clip a centred odd stamp to ``size``."""
    current = stamp.shape[-1]
    if current == size:
        return stamp
    if current < size:
        pad = (size - current) // 2
        return np.pad(stamp, pad)
    cut = (current - size) // 2
    return stamp[cut:cut + size, cut:cut + size]


def warp_matched(data, variance, invalid, x_in, y_in, area, resampling):
    """The matched image and its variance on the output grid, and where they are invalid.

    The data are multiplied by the pixel-area ratio (flux per output pixel);
    the variance is resampled with the same weights, as an image (the noise
    of a matched image is correlated over the matching kernel, so it is as
    smooth as the weights), times the squared area ratio.
    """
    arrays = [data] if variance is None else [data, variance]
    values, bad = resample(arrays, invalid, x_in, y_in, resampling)
    warped = values[0] * area
    warped_variance = None
    if variance is not None:
        warped_variance = values[1] * area**2
        bad |= ~(warped_variance > 0)
    bad |= ~np.isfinite(warped)
    warped[bad] = 0.0
    if warped_variance is not None:
        warped_variance[bad] = 0.0
    return warped, warped_variance, bad


def exposure_psf_stamps(frame, source, kernel, positions, size, resampling, stamp_size):
    """The PSF of the warped matched exposure at integer output positions, star by star.

    The source PSF model at each position's exact detector position,
    convolved with the solved kernel there, moved to that sub-pixel phase and
    resampled as the image is: what a star there looks like on the output
    grid (unit flux, times the pixel-area ratio).
    """
    centres = np.stack(frame.to_input(positions[:, 0], positions[:, 1]), axis=-1)
    jacs = frame.jacobian(positions[:, 0], positions[:, 1])
    area = np.abs(np.linalg.det(jacs))
    k_size = kernel.kernel_size
    sources = source.stamps(centres[:, 0], centres[:, 1], stamp_size + k_size - 1)
    kernels = kernel.evaluate_many(centres[:, 0], centres[:, 1])
    matched = scipy.signal.fftconvolve(sources, kernels, mode="valid", axes=(1, 2))
    stamps = StampWarp(frame, centres, positions, size, stamp_size, resampling)(matched)
    return stamps * area[:, None, None]


def heldout_candidates(shape_out, size):
    """Integer output positions, a stamp away from the edges, quasi-randomly spread."""
    ny, nx = shape_out
    margin = size // 2 + 1
    inner = (max(ny - 2 * margin, 1), max(nx - 2 * margin, 1))
    x, y = heldout_positions(inner, HELDOUT_CANDIDATES, seed=2)
    return np.stack([np.round(x) + margin, np.round(y) + margin], axis=-1).astype(np.int64)


def psf_verdict(stamps, target_out):
    """How far the coadd PSF at held-out positions is from the target.

    Returns
    -------
    dict
        ``n_heldout``, ``residual_max`` and ``residual_rms`` (|PSF - target|
        / target peak), ``fwhm_deviation_max`` (of the geometric-mean width
        ``(det C)^(1/4)`` of the adaptive second moments ``C``),
        ``ellipticity_deviation_max`` (``1 - b/a`` of adaptive moments,
        against the target's) and ``residual_max_per_position``.
    """
    if len(stamps) == 0:
        nan = float("nan")
        return {"n_heldout": 0, "residual_max": nan, "residual_rms": nan,
                "fwhm_deviation_max": nan, "ellipticity_deviation_max": nan,
                "residual_max_per_position": np.zeros(0)}
    peak = target_out.max()
    residuals = (stamps - target_out[None]) / peak
    per_position = np.abs(residuals).max(axis=(1, 2))
    moments = np.array(adaptive_moments(stamps))
    target_moments = np.array(adaptive_moments(target_out[None]))[:, 0]
    # the geometric-mean width of adaptive moments, (det C)^(1/4)
    width = (moments[0] * moments[1] - moments[2] ** 2) ** 0.25
    target_width = (target_moments[0] * target_moments[1] - target_moments[2] ** 2) ** 0.25
    e = ellipticity(*moments)
    target_e = ellipticity(*target_moments)
    return {"n_heldout": int(len(stamps)),
            "residual_max": float(per_position.max()),
            "residual_rms": float(np.sqrt(np.mean(residuals**2))),
            "fwhm_deviation_max": float(np.abs(width / target_width - 1.0).max()),
            "ellipticity_deviation_max": float(np.abs(e - target_e).max()),
            "residual_max_per_position": per_position}


def coadd_psf_model(target_psf, target_out):
    """An `~photutils.psf.ImagePSF` of the coadd's PSF (the target) for photometry.

    From an astropy model with ``x_0``/``y_0`` (photutils PSF models): the
    model sampled `COADD_PSF_OVERSAMPLING` times finer than the pixels (and
    normalized as photutils expects: the samples sum to the oversampling
    squared); from an array: the stamp itself.
    """
    params = getattr(target_psf, "param_names", ())
    if "x_0" in params and "y_0" in params:
        model = target_psf.copy()
        model.x_0, model.y_0 = 0.0, 0.0
        if "flux" in params:
            model.flux = 1.0
        over = COADD_PSF_OVERSAMPLING
        half = (target_out.shape[0] // 2) * over
        offsets = np.arange(-half, half + 1) / over
        yy, xx = np.meshgrid(offsets, offsets, indexing="ij")
        data = np.asarray(model(xx, yy), dtype=np.float64)
        if np.all(np.isfinite(data)) and data.sum() > 0:
            return ImagePSF(data * over**2 / data.sum(), oversampling=over)
    return ImagePSF(target_out / target_out.sum())
