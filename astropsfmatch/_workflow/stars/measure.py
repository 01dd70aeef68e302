"""Star widths: circular Gaussian PRF fits of pixel boxes, vectorized over the stars.

The measurement described in the docstring of the package: pixel boxes
around the stars (`boxes`), the local background of each star (the
sigma-clipped median of an annulus), a Levenberg-Marquardt fit of a
pixel-integrated circular Gaussian with free flux, position and width (what
`photutils.psf.fit_fwhm` fits) in the central box of `fit_box_size` pixels
(`gaussian_fits`), and the same measurement of a PSF model rendered,
noise-free, on the stars' boxes (`model_fwhm`).
"""

import math
import warnings

import numpy as np
from astropy.stats import sigma_clip
from scipy.special import erf

__all__ = []  # internal to the package: nothing here is public

#: FWHM of a Gaussian in units of its sigma, 2 sqrt(2 ln 2).
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
_SQRT2 = math.sqrt(2.0)
_SQRT_PI = math.sqrt(math.pi)
_SQRT_2PI = math.sqrt(2.0 * math.pi)


def fit_box_size(fwhm):
    """Side of the fitting box for a FWHM: ``max(7, 2 * round(1.5 * fwhm) + 1)``."""
    return max(7, 2 * int(round(1.5 * float(fwhm))) + 1)


def box_centres(x, y):
    """Centre pixels of odd boxes around positions, as photutils chooses them."""
    return (np.ceil(np.asarray(x, dtype=np.float64) - 0.5).astype(int),
            np.ceil(np.asarray(y, dtype=np.float64) - 0.5).astype(int))


def boxes(data, bad, x, y, size):
    """Pixel coordinates ``X, Y`` (N, size), values ``V`` and validity ``W``
    (N, size, size) of odd boxes centred on the positions.
    """
    ny, nx = data.shape
    half = size // 2
    cx, cy = box_centres(x, y)
    offsets = np.arange(-half, half + 1)
    xx = cx[:, None] + offsets
    yy = cy[:, None] + offsets
    in_x = (xx >= 0) & (xx < nx)
    in_y = (yy >= 0) & (yy < ny)
    xc, yc = np.clip(xx, 0, nx - 1), np.clip(yy, 0, ny - 1)
    values = data[yc[:, :, None], xc[:, None, :]]
    valid = ~bad[yc[:, :, None], xc[:, None, :]] & in_y[:, :, None] & in_x[:, None, :]
    return xx.astype(np.float64), yy.astype(np.float64), values, valid


def prf_axis(u, sigma):
    """Pixel integral of a unit 1-D Gaussian at offsets ``u`` and its derivatives."""
    a = (u + 0.5) / (_SQRT2 * sigma)
    b = (u - 0.5) / (_SQRT2 * sigma)
    ga, gb = np.exp(-a * a), np.exp(-b * b)
    value = 0.5 * (erf(a) - erf(b))
    d_u = (ga - gb) / (_SQRT_2PI * sigma)
    d_sigma = -(a * ga - b * gb) / (_SQRT_PI * sigma)
    return value, d_u, d_sigma


def _prf_model(params, xx, yy):
    """Circular Gaussian PRF images (N, m, m) and their Jacobian (N, m, m, 4)
    in (flux, x0, y0, sigma).
    """
    flux, x0, y0, sigma = (params[:, k] for k in range(4))
    vx, dxu, dxs = prf_axis(xx - x0[:, None], sigma[:, None])
    vy, dyu, dys = prf_axis(yy - y0[:, None], sigma[:, None])
    shape = vy[:, :, None] * vx[:, None, :]
    f = flux[:, None, None]
    jac = np.empty(shape.shape + (4,))
    jac[..., 0] = shape
    jac[..., 1] = -f * vy[:, :, None] * dxu[:, None, :]
    jac[..., 2] = -f * dyu[:, :, None] * vx[:, None, :]
    jac[..., 3] = f * (dys[:, :, None] * vx[:, None, :] + vy[:, :, None] * dxs[:, None, :])
    return f * shape, jac


def _fit_prf(xx, yy, values, valid, x0, y0, fwhm0, *, maxiter=100):
    """Levenberg-Marquardt fits of circular Gaussian PRFs to pixel boxes.

    Unweighted least squares over the valid pixels with free flux, position
    and width, started (as `photutils.psf.fit_fwhm`) from the box sum as
    flux. A fit that collapses onto a single pixel (sigma below 0.2 pixel,
    a false minimum for undersampled stars started too wide) is started
    again from a third of the width, and the better of the two is kept.
    Returns the parameters (N, 4) as (flux, x0, y0, sigma) and whether each
    fit converged.
    """
    params, converged, chi2 = _fit_prf_once(xx, yy, values, valid, x0, y0, fwhm0,
                                            maxiter=maxiter)
    collapsed = np.flatnonzero(params[:, 3] < 0.2)
    if collapsed.size:
        start = np.broadcast_to(np.asarray(fwhm0, dtype=np.float64), x0.shape)[collapsed]
        again, again_ok, again_chi2 = _fit_prf_once(
            xx[collapsed], yy[collapsed], values[collapsed], valid[collapsed], x0[collapsed],
            y0[collapsed], start / 3.0, maxiter=maxiter)
        better = again_chi2 < chi2[collapsed]
        params[collapsed[better]] = again[better]
        converged[collapsed[better]] = again_ok[better]
    return params, converged


def _fit_prf_once(xx, yy, values, valid, x0, y0, fwhm0, *, maxiter=100):
    """One Levenberg-Marquardt pass of `_fit_prf`; also returns the chi2."""
    n = len(x0)
    weight = valid.astype(np.float64)
    flux0 = (values * weight).sum(axis=(1, 2))
    sigma0 = np.broadcast_to(np.asarray(fwhm0, dtype=np.float64) / FWHM_PER_SIGMA, (n,))
    params = np.column_stack([flux0, x0, y0, sigma0]).astype(np.float64)
    lam = np.full(n, 1e-3)
    model, jac = _prf_model(params, xx, yy)
    resid = (values - model) * weight
    chi2 = (resid ** 2).sum(axis=(1, 2))
    scale = (values ** 2 * weight).sum(axis=(1, 2)) + 1e-300
    active = np.ones(n, dtype=bool)
    converged = np.zeros(n, dtype=bool)
    eye = np.eye(4)
    for _ in range(maxiter):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        jw = (jac[idx] * weight[idx][..., None]).reshape(idx.size, -1, 4)
        jt = jw.transpose(0, 2, 1)
        normal = jt @ jw
        gradient = (jt @ resid[idx].reshape(idx.size, -1, 1))[..., 0]
        diag = np.einsum("nkk->nk", normal)
        damped = normal + lam[idx, None, None] * diag[:, :, None] * eye + 1e-300 * eye
        try:
            step = np.linalg.solve(damped, gradient[..., None])[..., 0]
        except np.linalg.LinAlgError:
            step = np.einsum("nkl,nl->nk", np.linalg.pinv(damped), gradient)
        trial = params[idx] + step
        trial[:, 3] = np.maximum(np.abs(trial[:, 3]), 1e-3)
        t_model, t_jac = _prf_model(trial, xx[idx], yy[idx])
        t_resid = (values[idx] - t_model) * weight[idx]
        t_chi2 = (t_resid ** 2).sum(axis=(1, 2))
        better = np.isfinite(t_chi2) & (t_chi2 <= chi2[idx])
        gain = chi2[idx] - t_chi2
        small = (np.abs(step[:, 1]) < 1e-6) & (np.abs(step[:, 2]) < 1e-6) \
            & (np.abs(step[:, 3]) < 1e-7 * params[idx, 3])
        done = better & ((gain <= 1e-10 * chi2[idx] + 1e-14 * scale[idx]) | small)
        accepted = idx[better]
        params[accepted] = trial[better]
        model[accepted], jac[accepted], resid[accepted] = \
            t_model[better], t_jac[better], t_resid[better]
        chi2[accepted] = t_chi2[better]
        lam[accepted] = np.maximum(lam[accepted] / 10.0, 1e-9)
        rejected = idx[~better]
        lam[rejected] *= 10.0
        finished = idx[done]
        converged[finished] = True
        active[finished] = False
        stuck = rejected[lam[rejected] > 1e10]  # no step improves: at the minimum
        converged[stuck] = True
        active[stuck] = False
    return params, converged, chi2


def _moment_ellipticity(xx, yy, values, valid, x0, y0, sigma):
    """Ellipticity ``1 - b/a`` from Gaussian-weighted second moments.

    The moments are weighted by a round Gaussian 1.5 times wider than the
    fitted one, whose effect is removed exactly for Gaussian sources
    (``C^-1 = M^-1 - W^-1``). NaN where the moments are not usable.
    """
    sw2 = (1.5 * sigma) ** 2
    dx = xx - x0[:, None]
    dy = yy - y0[:, None]
    w = np.exp(-0.5 * (dy[:, :, None] ** 2 + dx[:, None, :] ** 2) / sw2[:, None, None])
    w = w * values * valid
    total = w.sum(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        mx = (w * dx[:, None, :]).sum(axis=(1, 2)) / total
        my = (w * dy[:, :, None]).sum(axis=(1, 2)) / total
        ux = dx[:, None, :] - mx[:, None, None]
        uy = dy[:, :, None] - my[:, None, None]
        mxx = (w * ux * ux).sum(axis=(1, 2)) / total
        myy = (w * uy * uy).sum(axis=(1, 2)) / total
        mxy = (w * ux * uy).sum(axis=(1, 2)) / total
        det = mxx * myy - mxy * mxy
        # inverse moments minus the inverse weight: inverse intrinsic moments
        ixx, iyy, ixy = myy / det - 1.0 / sw2, mxx / det - 1.0 / sw2, -mxy / det
        half_trace = 0.5 * (ixx + iyy)
        root = np.sqrt(np.maximum(0.25 * (ixx - iyy) ** 2 + ixy ** 2, 0.0))
        small, large = half_trace - root, half_trace + root  # eigenvalues of C^-1
        ellipticity = 1.0 - np.sqrt(small / large)
    usable = (total > 0) & (det > 0) & (small > 0) & np.isfinite(ellipticity)
    return np.where(usable, ellipticity, np.nan)


def _annulus(fwhm):
    """Inner and outer radii (pixels) of the local-background annulus."""
    inner = max(2.5 * float(fwhm), 3.0)
    return inner, inner + max(3.0, 1.5 * float(fwhm))


def _measure_box_size(fwhm):
    """Side of the boxes holding the fitting box and the background annulus."""
    return max(fit_box_size(fwhm), 2 * int(math.ceil(_annulus(fwhm)[1])) + 1)


def _local_background(xx, yy, values, valid, x, y, fwhm):
    """Sigma-clipped median of each box in the annulus around ``(x, y)``
    (0 where fewer than 8 annulus pixels are valid).
    """
    inner, outer = _annulus(fwhm)
    r2 = (yy[:, :, None] - y[:, None, None]) ** 2 + (xx[:, None, :] - x[:, None, None]) ** 2
    ring = valid & (r2 >= inner * inner) & (r2 <= outer * outer)
    flat = np.ma.masked_array(values.reshape(x.size, -1), mask=~ring.reshape(x.size, -1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clipped = sigma_clip(flat, sigma=3.0, maxiters=5, axis=1)
        level = np.ma.median(clipped, axis=1)
    level = np.ma.filled(level, np.nan)
    enough = ring.reshape(x.size, -1).sum(axis=1) >= 8
    return np.where(enough & np.isfinite(level), level, 0.0)


def _fit_boxes(xx, yy, values, valid, x, y, fwhm, *, shape=False, local_background=True):
    """The star measurement on boxes of `_measure_box_size` centred at ``(x, y)``.

    Subtracts the local background (annulus median), then fits a circular
    Gaussian PRF in the central box of `fit_box_size` pixels, starting at
    ``(x, y)`` with the box sum as flux. Returns a dict of arrays: ``fwhm``,
    ``x``, ``y``, ``flux``, ``background``, ``ok`` (a clean fit on a full,
    unmasked box), ``full`` and, with ``shape``, ``ellipticity`` and
    ``peak`` (largest pixel of the central 3 x 3).
    """
    size = fit_box_size(fwhm)
    h, c = size // 2, xx.shape[1] // 2
    core = slice(c - h, c + h + 1)
    background = _local_background(xx, yy, values, valid, x, y, fwhm) if local_background \
        else np.zeros(x.size)
    fx, fy = xx[:, core], yy[:, core]
    fvalues = values[:, core, core] - background[:, None, None]
    fvalid = valid[:, core, core]
    full = fvalid.all(axis=(1, 2))
    fvalues = np.where(fvalid, fvalues, 0.0)
    with np.errstate(all="ignore"):
        params, converged = _fit_prf(fx, fy, fvalues, fvalid, x, y, fwhm)
    flux, xf, yf, sigma = params.T
    ok = (converged & full & np.all(np.isfinite(params), axis=1) & (flux > 0)
          & (sigma > 0.05) & (np.abs(xf - x) < size / 2.0) & (np.abs(yf - y) < size / 2.0))
    out = {"fwhm": np.where(ok, FWHM_PER_SIGMA * sigma, np.nan),
           "x": np.where(ok, xf, np.nan), "y": np.where(ok, yf, np.nan),
           "flux": np.where(ok, flux, np.nan), "background": background, "ok": ok,
           "full": full}
    if shape:
        with np.errstate(all="ignore"):
            ell = _moment_ellipticity(fx, fy, fvalues, fvalid, xf, yf, np.abs(sigma))
        out["ellipticity"] = np.where(ok, ell, np.nan)
        out["peak"] = fvalues[:, h - 1:h + 2, h - 1:h + 2].max(axis=(1, 2))
    return out


def gaussian_fits(data, bad, x, y, fwhm, *, shape=False, local_background=True):
    """Measure stars of an image at ``(x, y)``: see `_fit_boxes`."""
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    y = np.atleast_1d(np.asarray(y, dtype=np.float64))
    if x.size == 0:
        keys = ("fwhm", "x", "y", "flux", "background") + (("ellipticity", "peak") if shape
                                                            else ())
        out = {key: np.zeros(0) for key in keys}
        out.update(ok=np.zeros(0, dtype=bool), full=np.zeros(0, dtype=bool))
        return out
    xx, yy, values, valid = boxes(data, bad, x, y, _measure_box_size(fwhm))
    return _fit_boxes(xx, yy, values, valid, x, y, fwhm, shape=shape,
                      local_background=local_background)


def _render_boxes(psf, x, y, xx, yy):
    """Noise-free unit-flux stars of a photutils PSF model at ``(x, y)``,
    evaluated on the pixel boxes ``xx, yy`` (N, m). The caller's model is
    not modified (a copy is evaluated).
    """
    model = psf.copy()
    out = np.empty((x.size, yy.shape[1], xx.shape[1]))
    for k in range(x.size):
        model.x_0 = x[k]
        model.y_0 = y[k]
        model.flux = 1.0
        gx, gy = np.meshgrid(xx[k], yy[k])
        out[k] = model(gx, gy)
    return out


def model_fwhm(psf, x, y, fwhm, x_start=None, y_start=None):
    """FWHM of a PSF model rendered at ``(x, y)`` and measured as the stars are.

    The measurement (`_fit_boxes`) starts at ``(x_start, y_start)`` (default:
    the positions), with its boxes centred there, as for the stars.
    """
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    y = np.atleast_1d(np.asarray(y, dtype=np.float64))
    x_start = x if x_start is None else np.atleast_1d(np.asarray(x_start, dtype=np.float64))
    y_start = y if y_start is None else np.atleast_1d(np.asarray(y_start, dtype=np.float64))
    xx, yy, _, _ = boxes(np.zeros((1, 1)), np.zeros((1, 1), dtype=bool), x_start, y_start,
                         _measure_box_size(fwhm))
    values = _render_boxes(psf, x, y, xx, yy)
    valid = np.isfinite(values)
    values = np.where(valid, values, 0.0)
    return _fit_boxes(xx, yy, values, valid, x_start, y_start, fwhm)["fwhm"]
