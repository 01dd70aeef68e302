"""The ePSF stack: node ePSFs built from the stars by iterated residual stacking.

`stack_stars` stacks the pixels of the stars (local background subtracted,
neighbours masked, weighted by their inverse variance, outliers clipped per
bin) into a constant ePSF and, for a grid, fits its variation over the image
as a polynomial in the star position.
"""

import math

import numpy as np
from scipy import ndimage
from scipy.interpolate import RectBivariateSpline
from scipy.spatial import cKDTree

from ..._logging import log
from .epsf import (
    StarModel,
    gaussian_epsf,
    node_positions,
    node_weights,
    windowed_centroid,
)
from .measure import FWHM_PER_SIGMA, boxes, fit_box_size
from .robust import clip_bins

__all__ = []  # internal to the package: nothing here is public

#: Relative size of the ridge that keeps poorly sampled ePSF pixels in place.
_RIDGE = 1e-2

#: The stack stops when the largest model change is below this fraction of
#: its peak and no star moves by more than the position tolerance (pixels).
_STACK_TOLERANCE = 1e-3
_POSITION_TOLERANCE = 5e-3

#: Stack iterations during which outliers are clipped (then frozen).
_CLIP_ITERATIONS = 4


def _neighbour_mask(xx, yy, x, y, others, self_radius, radius):
    """Pixels of the star boxes within ``radius`` of another source."""
    masked = np.zeros((x.size, yy.shape[1], xx.shape[1]), dtype=bool)
    if others is None or len(others) == 0:
        return masked
    tree = cKDTree(others)
    reach = 0.75 * xx.shape[1] + radius
    for k, near in enumerate(tree.query_ball_point(np.column_stack([x, y]), reach)):
        for j in near:
            ox, oy = others[j]
            if math.hypot(ox - x[k], oy - y[k]) <= self_radius:
                continue  # the star itself
            d2 = (yy[k][:, None] - oy) ** 2 + (xx[k][None, :] - ox) ** 2
            masked[k] |= d2 <= radius * radius
    return masked


def _refine_stars(model, xx, yy, values, valid, xs, ys, fs, weight, steps=2, positions=True):
    """Gauss-Newton refits of the stars' fluxes and positions with the model
    (fluxes only when not ``positions``).

    The weighted mean position change is removed: a common shift of all
    stars is the same as a shift of the model, which the final recentring
    fixes.
    """
    valid = valid.astype(np.float64)
    if not positions:
        s, _, _ = model(xx, yy, xs, ys)
        s = s * valid
        num = (s * values).sum(axis=(1, 2))
        den = (s * s).sum(axis=(1, 2))
        fitted = np.where(den > 0, num / np.where(den > 0, den, 1.0), fs)
        return xs, ys, np.where(fitted > 0, fitted, fs)
    for _ in range(steps):
        s, sx, sy = model(xx, yy, xs, ys, derivatives=True)
        jac = np.stack([s, fs[:, None, None] * sx, fs[:, None, None] * sy], axis=-1)
        jac *= valid[..., None]
        resid = (values - fs[:, None, None] * s) * valid
        normal = np.einsum("nijk,nijl->nkl", jac, jac) + 1e-12 * np.eye(3)
        rhs = np.einsum("nijk,nij->nk", jac, resid)
        try:
            step = np.linalg.solve(normal, rhs[..., None])[..., 0]
        except np.linalg.LinAlgError:
            step = np.einsum("nkl,nl->nk", np.linalg.pinv(normal), rhs)
        step = np.where(np.isfinite(step), step, 0.0)
        fs = np.where(fs + step[:, 0] > 0, fs + step[:, 0], fs)
        shift_x = np.clip(step[:, 1], -0.25, 0.25)
        shift_y = np.clip(step[:, 2], -0.25, 0.25)
        xs = xs + shift_x - np.average(shift_x, weights=weight)
        ys = ys + shift_y - np.average(shift_y, weights=weight)
    return xs, ys, fs


def _bin_lstsq(bins, resid, design, omega, n_bins, current=None):
    """Per-bin weighted least squares of ``resid`` on the columns of ``design``.

    Returns the coefficient increments (J, n_bins). A ridge of ``_RIDGE``
    times the mean diagonal (1e-9 for the first, constant column) penalizes
    the coefficients ``current + increment`` (``current`` defaults to 0), so
    that poorly sampled bins stay near zero and the iteration converges to
    the regularized solution.
    """
    n_terms = design.shape[1]
    if n_terms == 1:
        num = np.bincount(bins, omega * resid * design[:, 0], minlength=n_bins)
        den = np.bincount(bins, omega * design[:, 0] ** 2, minlength=n_bins)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(den > 0, num / den, 0.0)[None]
    normal = np.zeros((n_bins, n_terms, n_terms))
    rhs = np.zeros((n_bins, n_terms))
    for k in range(n_terms):
        rhs[:, k] = np.bincount(bins, omega * design[:, k] * resid, minlength=n_bins)
        for j in range(k, n_terms):
            a = np.bincount(bins, omega * design[:, k] * design[:, j], minlength=n_bins)
            normal[:, k, j] = normal[:, j, k] = a
    scale = np.einsum("bkk->b", normal) / n_terms
    ridge = np.full(n_terms, _RIDGE)
    ridge[0] = 1e-9
    penalty = (scale[:, None] + 1e-30) * ridge  # (n_bins, J)
    normal += penalty[:, :, None] * np.eye(n_terms)
    if current is not None:
        rhs -= penalty * current.T
    return np.linalg.solve(normal, rhs[..., None])[..., 0].T


def _smooth(maps, kernel):
    """Separable smoothing of stacked 2-D maps (..., n, n), zero outside."""
    maps = ndimage.convolve1d(maps, kernel, axis=-1, mode="constant")
    return ndimage.convolve1d(maps, kernel, axis=-2, mode="constant")


def _spatial_basis(x, y, shape, degree):
    """Monomials ``u**i v**j`` (i + j <= degree) of coordinates scaled to [-1, 1]."""
    ny, nx = shape
    u = 2.0 * np.asarray(x, dtype=np.float64) / max(nx - 1, 1) - 1.0
    v = 2.0 * np.asarray(y, dtype=np.float64) / max(ny - 1, 1) - 1.0
    columns = [np.ones_like(u)]
    for total in range(1, degree + 1):
        for j in range(total + 1):
            columns.append(u ** (total - j) * v ** j)
    return np.column_stack(columns)


class _Samples:
    """The pixels of the PSF stars: boxes, noise, validity and bins on the ePSF grid."""

    def __init__(self, sub, bad, error, x, y, background, others, *, fwhm, half, oversampling):
        self.os = oversampling
        self.half = half
        self.n = 2 * oversampling * half + 1
        self.box = 2 * half + 3
        self.xx, self.yy, values, valid = boxes(sub, bad, x, y, self.box)
        self.values = values - background[:, None, None]
        self.err2 = None
        if error is not None:
            _, _, err, _ = boxes(error, bad, x, y, self.box)
            self.err2 = err ** 2
            valid &= self.err2 > 0
        self_radius = max(1.5, 0.5 * fwhm)
        self.valid = valid & ~_neighbour_mask(self.xx, self.yy, x, y, others, self_radius,
                                              max(2.0, 1.5 * fwhm))
        fit_half = fit_box_size(fwhm) // 2
        self.core = slice(half + 1 - fit_half, half + 2 + fit_half)
        self.owner_all = np.repeat(np.arange(x.size), self.box * self.box)

    def refine(self, model, xs, ys, fs, weight, positions=True):
        c = self.core
        return _refine_stars(model, self.xx[:, c], self.yy[:, c], self.values[:, c, c],
                             self.valid[:, c, c], xs, ys, fs, weight, positions=positions)

    def residuals(self, model, xs, ys, fs):
        """Flux-normalized residuals of the used samples, their bins, stars,
        model signal (data units) and error variance (None without an error map).
        """
        s, _, _ = model(self.xx, self.yy, xs, ys)
        dx = self.xx - xs[:, None]
        dy = self.yy - ys[:, None]
        reach = self.half + 0.5 / self.os  # samples that fall in the outermost bins
        inside = (np.abs(dy)[:, :, None] <= reach) & (np.abs(dx)[:, None, :] <= reach)
        use = (self.valid & inside).ravel()
        resid = (self.values / fs[:, None, None] - s).ravel()[use]
        signal = (fs[:, None, None] * s).ravel()[use]
        centre = self.os * self.half
        jx = np.clip(np.rint(self.os * dx + centre).astype(int), 0, self.n - 1)
        jy = np.clip(np.rint(self.os * dy + centre).astype(int), 0, self.n - 1)
        bins = (jy[:, :, None] * self.n + jx[:, None, :]).ravel()[use]
        err2 = None if self.err2 is None else self.err2.ravel()[use]
        return use, resid, bins, self.owner_all[use], signal, err2


def _photon_coefficient(resid_data, signal, background_var):
    """Slope ``b`` of the pixel variance ``a + b * signal`` (``1/gain``) from
    residuals in data units: robust variances in bins of signal, fitted
    through the background variance ``a``. 0 when the data do not show it.
    """
    bright = signal > 5.0 * math.sqrt(background_var)
    if bright.sum() < 50:
        return 0.0
    sig, res2 = signal[bright], resid_data[bright] ** 2
    edges = np.quantile(sig, np.linspace(0.0, 1.0, 9))
    index = np.clip(np.searchsorted(edges, sig, side="right") - 1, 0, 7)
    centres, variances = [], []
    for j in range(8):
        sel = index == j
        if sel.sum() >= 10:
            centres.append(np.median(sig[sel]))
            variances.append(np.median(res2[sel]) / 0.4549)  # median of chi2(1) = 0.4549
    centres, variances = np.array(centres), np.array(variances)
    if centres.size < 2:
        return 0.0
    slope = float(np.sum((variances - background_var) * centres) / np.sum(centres ** 2))
    return max(slope, 0.0)


def _coarse_bins(bins, n, oversampling, half):
    """Detector-pixel bins (on a ``2 * half + 1`` grid) of oversampled bins."""
    jy, jx = np.divmod(bins, n)
    n_coarse = 2 * half + 1
    cx = np.clip(np.rint((jx - oversampling * half) / oversampling).astype(int) + half, 0,
                 n_coarse - 1)
    cy = np.clip(np.rint((jy - oversampling * half) / oversampling).astype(int) + half, 0,
                 n_coarse - 1)
    return cy * n_coarse + cx


def _radial_taper(n, oversampling, inner, outer):
    """1 within ``inner`` pixels of the centre, falling (cosine) to 0 at ``outer``."""
    u = (np.arange(n) - (n - 1) / 2.0) / oversampling
    r = np.hypot(u[:, None], u[None, :])
    t = np.clip((r - inner) / max(outer - inner, 1e-9), 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * t))


def stack_stars(sub, bad, error, rms, x, y, flux, background, others, *, fwhm, half, oversampling,
                grid, maxiters):
    """Build the ePSFs of the grid nodes from the stars.

    First a constant ePSF by iterated residual stacking: starting from a
    Gaussian of the stars' FWHM, each iteration (1) refits every star's flux
    and position with the current model (Gauss-Newton in the central fitting
    box), (2) bins the flux-normalized residuals of all the stars' pixels
    (local background subtracted, neighbours masked) on the oversampled grid
    by their offsets from the star centres, (3) weights every pixel by its
    inverse variance (from the error map, or from the background noise and a
    photon-noise slope measured on the residuals), (4) during the first
    iterations rejects outliers per bin (3 sigma from the median, sigma from
    the MAD of the normalized residuals; then frozen), (5) adds the weighted
    mean residual of each bin, smoothed by a 1-2-1 kernel, which keeps the
    iteration stable without moving its fixed point.

    For a grid, the variation over the image is then a polynomial in the
    star position (degree 1 for a 2 x 2 grid, 2 for 3 x 3 and larger) whose
    coefficients are maps on detector-pixel bins (smooth by construction,
    interpolated onto the oversampled grid by cubic splines). It is fitted
    by the same residual iteration, per bin by weighted least squares with a
    small ridge on the position terms, with the stars' positions and fluxes
    of the constant stack (a smooth error of the fluxes only scales the node
    ePSFs, which their normalization removes) and outliers clipped again
    against the varying model. The variation is kept to the core (tapered
    from 2 to 3 FWHMs) and evaluated at the nodes.

    At the end each node ePSF is shifted onto its windowed centroid and
    normalized to unit flux. Returns the ePSFs (K, n, n), the refined star
    positions and fluxes, the iterations of the constant stack and whether
    it converged.
    """
    os = oversampling
    samples = _Samples(sub, bad, error, x, y, background, others, fwhm=fwhm, half=half,
                       oversampling=os)
    n = samples.n
    n_bins = n * n
    ones = np.ones((x.size, 1))
    epsf = gaussian_epsf(fwhm, half, os)[None]
    xs, ys, fs = x.copy(), y.copy(), flux.copy()
    background_var = rms ** 2
    sigma = fwhm / FWHM_PER_SIGMA
    star_weight = np.clip(flux / (rms * math.sqrt(4.0 * math.pi) * sigma), 1.0, None)
    photon = 0.0
    kernel = np.array([0.25, 0.5, 0.25])
    interior = (slice(None), slice(os, n - os), slice(os, n - os))
    accepted = None
    converged = False
    iteration = 0

    def weights(resid, signal, err2, owner, estimate):
        nonlocal photon
        if err2 is not None:
            variance = err2
        else:
            if estimate:
                photon = _photon_coefficient(resid * fs[owner], signal, background_var)
            variance = background_var + photon * np.maximum(signal, 0.0)
        return fs[owner] ** 2 / variance

    for iteration in range(1, maxiters + 1):
        model = StarModel(epsf, ones, os)
        start_x, start_y = xs.copy(), ys.copy()
        xs, ys, fs = samples.refine(model, xs, ys, fs, star_weight)
        use, resid, bins, owner, signal, err2 = samples.residuals(model, xs, ys, fs)
        clipping = iteration <= _CLIP_ITERATIONS
        omega = weights(resid, signal, err2, owner, clipping and iteration > 1)
        if clipping:
            keep = clip_bins(resid * np.sqrt(omega), bins, n_bins)
            accepted = np.zeros(use.size, dtype=bool)
            accepted[np.flatnonzero(use)[keep]] = True
        else:
            keep = accepted[use]
        delta = _bin_lstsq(bins[keep], resid[keep], np.ones((keep.sum(), 1)), omega[keep],
                           n_bins).reshape(1, n, n)
        if os > 1:
            delta = _smooth(delta, kernel)
        previous = epsf
        # the overall scale is degenerate with the fluxes: keep unit flux
        epsf = epsf + delta
        scale = os ** 2 / epsf.sum()
        epsf *= scale
        fs = fs / scale
        change = float(np.abs((epsf - previous)[interior]).max() / np.abs(epsf).max())
        moved = float(np.max(np.hypot(xs - start_x, ys - start_y)))
        log.debug(f"estimate_psf: stack iteration {iteration}: model change {change:.2e}, "
                  f"largest star move {moved:.2e} px")
        if iteration > _CLIP_ITERATIONS and change < _STACK_TOLERANCE \
                and moved < _POSITION_TOLERANCE:
            converged = True
            break

    xs_nodes, ys_nodes = node_positions(sub.shape, grid)
    node_w = node_weights(xs, ys, xs_nodes, ys_nodes)
    if grid == (1, 1):
        epsfs = epsf
    else:
        degree = min(2, min(grid) - 1)
        gx, gy = np.meshgrid(xs_nodes, ys_nodes)
        node_basis = _spatial_basis(gx.ravel(), gy.ravel(), sub.shape, degree)
        # the variation is solved on detector-pixel bins and interpolated onto
        # the oversampled grid of the ePSFs
        n_coarse = 2 * half + 1
        coarse = np.arange(n_coarse, dtype=np.float64) * os
        fine = np.arange(n, dtype=np.float64)

        def upsample(maps):
            return np.array([RectBivariateSpline(coarse, coarse, m, kx=3, ky=3, s=0)(fine, fine)
                             for m in maps])

        coeffs = np.zeros((node_basis.shape[1], n_coarse, n_coarse))
        epsfs = np.repeat(epsf, node_basis.shape[0], axis=0)
        design_all = _spatial_basis(xs, ys, sub.shape, degree)
        node_w = node_weights(xs, ys, xs_nodes, ys_nodes)
        step, last_change = 1.0, np.inf
        for spatial_iteration in range(1, maxiters + 1):
            model = StarModel(epsfs, node_w, os)
            use, resid, bins, owner, signal, err2 = samples.residuals(model, xs, ys, fs)
            omega = weights(resid, signal, err2, owner, False)
            if spatial_iteration <= _CLIP_ITERATIONS:
                # clip again: the constant ePSF does not fit the stars far from the mean
                keep = clip_bins(resid * np.sqrt(omega), bins, n_bins)
                accepted = np.zeros(use.size, dtype=bool)
                accepted[np.flatnonzero(use)[keep]] = True
            else:
                keep = accepted[use]
            delta = _bin_lstsq(_coarse_bins(bins[keep], n, os, half), resid[keep],
                               design_all[owner[keep]], omega[keep], n_coarse * n_coarse,
                               current=coeffs.reshape(coeffs.shape[0], -1))
            coeffs = coeffs + step * delta.reshape(coeffs.shape)
            previous = epsfs
            epsfs = epsf + np.einsum("kj,jab->kab", node_basis, upsample(coeffs))
            change = float(np.abs((epsfs - previous)[interior]).max() / np.abs(epsf).max())
            log.debug(f"estimate_psf: spatial iteration {spatial_iteration}: model change "
                      f"{change:.2e} (step {step:g})")
            if change < _STACK_TOLERANCE and spatial_iteration > _CLIP_ITERATIONS:
                break
            if change > last_change and spatial_iteration > _CLIP_ITERATIONS:
                step = max(step / 2.0, 0.125)  # damp an oscillating iteration
            last_change = change
        # the variation is kept to the core, where it is measurable
        taper = _radial_taper(n_coarse, 1, 2.0 * fwhm, 3.0 * fwhm)
        epsfs = epsf + np.einsum("kj,jab->kab", node_basis, upsample(coeffs * taper))

    # centre every node ePSF on its windowed centroid, and move the stars with it
    sigma_window = max(fwhm / FWHM_PER_SIGMA, 0.5)
    offsets = np.zeros((epsfs.shape[0], 2))
    epsfs = epsfs.copy()
    for k in range(epsfs.shape[0]):
        cx, cy = windowed_centroid(epsfs[k], os, sigma_window)
        offsets[k] = cx, cy
        epsfs[k] = ndimage.shift(epsfs[k], (-cy * os, -cx * os), order=3, mode="constant",
                                 cval=0.0)
        epsfs[k] *= os ** 2 / epsfs[k].sum()
    xs = xs + node_w @ offsets[:, 0]
    ys = ys + node_w @ offsets[:, 1]
    return epsfs, xs, ys, fs, iteration, converged
