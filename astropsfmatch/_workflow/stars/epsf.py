"""The ePSF models of the stack: their grid of nodes and their evaluation at the stars.

The nodes, spanning the image from edge to edge (`node_positions`), the
bilinear weights with which `~photutils.psf.GriddedPSFModel` interpolates
them (`node_weights`), the regions of the image (`regions`), the Gaussian
the stack starts from (`gaussian_epsf`), the windowed centroid an ePSF is
centred on (`windowed_centroid`), and `StarModel`, which evaluates the node
ePSFs at the pixels of the stars as photutils does.
"""

import numpy as np
from scipy.interpolate import BSpline, RectBivariateSpline

from .measure import FWHM_PER_SIGMA, prf_axis

__all__ = []  # internal to the package: nothing here is public


def node_positions(shape, grid):
    """Node coordinates of a grid spanning the image from edge to edge."""
    ny, nx = shape
    gy, gx = grid
    xs = np.linspace(0.0, nx - 1.0, gx) if gx > 1 else np.array([(nx - 1) / 2.0])
    ys = np.linspace(0.0, ny - 1.0, gy) if gy > 1 else np.array([(ny - 1) / 2.0])
    return xs, ys


def _hat_weights(v, nodes):
    """1-D linear interpolation weights, clamped outside the nodes (as photutils)."""
    n = v.size
    if nodes.size == 1:
        return np.ones((n, 1))
    i = np.clip(np.searchsorted(nodes, v) - 1, 0, nodes.size - 2)
    t = np.clip((v - nodes[i]) / (nodes[i + 1] - nodes[i]), 0.0, 1.0)
    w = np.zeros((n, nodes.size))
    w[np.arange(n), i] = 1.0 - t
    w[np.arange(n), i + 1] = t
    return w


def node_weights(x, y, xs, ys):
    """(N, K) bilinear weights of the nodes (``k = iy * nx + ix``), as
    `~photutils.psf.GriddedPSFModel` interpolates its ePSFs.
    """
    wx, wy = _hat_weights(x, xs), _hat_weights(y, ys)
    return (wy[:, :, None] * wx[:, None, :]).reshape(x.size, -1)


def regions(x, y, shape, grid):
    """Index (``iy * nx + ix``) of the region of each position: the image
    divided into ``grid`` equal parts.
    """
    ny, nx = shape
    gy, gx = grid
    ix = np.clip(np.floor((np.asarray(x) + 0.5) * gx / nx).astype(int), 0, gx - 1)
    iy = np.clip(np.floor((np.asarray(y) + 0.5) * gy / ny).astype(int), 0, gy - 1)
    return iy * gx + ix


def gaussian_epsf(fwhm, half, oversampling):
    """An oversampled ePSF of a circular Gaussian: sums to oversampling**2."""
    u = (np.arange(2 * oversampling * half + 1) - oversampling * half) / oversampling
    value, _, _ = prf_axis(u, fwhm / FWHM_PER_SIGMA)
    epsf = np.outer(value, value)
    return epsf * oversampling ** 2 / epsf.sum()


def windowed_centroid(epsf, oversampling, sigma):
    """Centroid (x, y) in detector pixels from the ePSF centre, in a Gaussian
    window of ``sigma`` pixels that follows the centroid.
    """
    n = epsf.shape[0]
    u = (np.arange(n) - (n - 1) / 2.0) / oversampling
    cx = cy = 0.0
    for _ in range(10):
        wx = np.exp(-0.5 * ((u - cx) / sigma) ** 2)
        wy = np.exp(-0.5 * ((u - cy) / sigma) ** 2)
        weighted = epsf * wy[:, None] * wx[None, :]
        total = weighted.sum()
        if not total > 0:
            return 0.0, 0.0
        new_x = float((weighted.sum(axis=0) * u).sum() / total)
        new_y = float((weighted.sum(axis=1) * u).sum() / total)
        done = abs(new_x - cx) < 1e-6 and abs(new_y - cy) < 1e-6
        cx, cy = new_x, new_y
        if done:
            break
    return cx, cy


class StarModel:
    """Evaluates the node ePSFs at the pixels of the stars, as
    `~photutils.psf.GriddedPSFModel` does: the interpolating bicubic spline
    of every node ePSF (its B-spline coefficients, from
    `~scipy.interpolate.RectBivariateSpline`), combined with the star's
    bilinear node weights, evaluated on the star's pixel box as a tensor
    product of 1-D B-spline bases; zero off the ePSF grid.
    """

    def __init__(self, epsfs, node_weights, oversampling):
        n = epsfs.shape[1]
        index = np.arange(n, dtype=np.float64)
        coeffs = []
        for epsf in epsfs:
            # spline(x_index, y_index) = epsf[y, x], as photutils evaluates its models
            spline = RectBivariateSpline(index, index, epsf.T, kx=3, ky=3, s=0)
            coeffs.append(spline.get_coeffs())
        knots = spline.get_knots()[0]
        n_coeffs = knots.size - 4
        self.coeffs = np.array(coeffs).reshape(len(epsfs), n_coeffs, n_coeffs)  # [k, x, y]
        self.basis = BSpline(knots, np.eye(n_coeffs), 3, extrapolate=False)
        self.weights = node_weights
        self.os = oversampling
        self.centre = (n - 1) / 2.0
        self.last = n - 1.0

    def _basis(self, t, derivative=False):
        basis = self.basis.derivative() if derivative else self.basis
        values = basis(t.ravel()).reshape(t.shape + (-1,))
        inside = (t >= 0) & (t <= self.last)
        return np.where(inside[..., None] & np.isfinite(values), values, 0.0)

    def __call__(self, xx, yy, x, y, *, derivatives=False):
        xi = self.os * (xx - x[:, None]) + self.centre
        yi = self.os * (yy - y[:, None]) + self.centre
        bx, by = self._basis(xi), self._basis(yi)  # (N, m, n_coeffs)
        coeffs = np.einsum("nk,kij->nji", self.weights, self.coeffs)  # [star, y, x]
        along_y = by @ coeffs  # (N, m_y, n_coeffs_x)
        value = along_y @ bx.transpose(0, 2, 1)
        if not derivatives:
            return value, None, None
        # derivatives with respect to the star position (x0, y0)
        d_x = -self.os * (along_y @ self._basis(xi, True).transpose(0, 2, 1))
        d_y = -self.os * ((self._basis(yi, True) @ coeffs) @ bx.transpose(0, 2, 1))
        return value, d_x, d_y
