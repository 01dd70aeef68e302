"""Diagnostic figures of a PSF match: what the reference task's debug displays show.

Each ``plot_*`` function returns a `matplotlib.figure.Figure` built without
`matplotlib.pyplot`, so no GUI backend (no display) is ever needed; save it
with ``figure.savefig('file.png')``, or show it in a notebook. Pass
``figure=`` to draw into a figure of your own (e.g. one from
``pyplot.figure()``). matplotlib is imported only when a figure is made:
the rest of the package works without it.

============================  =====================================================
reference debug display       here
============================  =====================================================
``displayCandidates``         `plot_candidates`: source, target, model, residual
``showBadCandidates``         ... with rejected candidates marked in red
``displayKernelBasis``        `plot_basis`: the basis images
``displayKernelMosaic``       `plot_kernel_mosaic`: the kernel across the field
                              (``difference=True``: its variation alone)
``plotKernelSpatialModel``    `plot_spatial_coefficients`: coefficient maps, and
                              `plot_kernel_moments`: what the kernel does there
``displaySpatialCells``       `plot_cells`: the cells (or nodes) on the image
(none)                        `plot_heldout`: the residual where no fit looked
============================  =====================================================

`save_diagnostics` writes all of them as PNG files.
"""

import math
import textwrap
import time
from pathlib import Path

import numpy as np

from ._engine.grid import NodeGrid
from ._engine.kernel import SpatialKernel
from ._engine.moments import kernel_moments
from ._logging import log
from ._optional import require
from ._validate import integer, real

__all__ = ["DIAGNOSTIC_FILES", "plot_basis", "plot_candidates", "plot_cells", "plot_heldout",
           "plot_kernel_moments", "plot_kernel_mosaic", "plot_spatial_coefficients",
           "save_diagnostics", "select_candidates", "spatial_residual"]

#: File name written by `save_diagnostics` for each figure, in writing order.
DIAGNOSTIC_FILES = {
    "heldout": "heldout.png",
    "cells": "cells.png",
    "candidates": "candidates.png",
    "basis": "basis.png",
    "kernel_mosaic": "kernel_mosaic.png",
    "kernel_difference": "kernel_difference.png",
    "kernel_moments": "kernel_moments.png",
    "spatial_coefficients": "spatial_coefficients.png",
}

#: Residual panels span at least this fraction of the match's ``max_residual``:
#: a residual far below what was asked for (round-off) is drawn faint, not at
#: full contrast.
_RESIDUAL_SCALE_FLOOR = 0.1

_GOOD_COLOUR = "tab:green"
_BAD_COLOUR = "tab:red"
_MASK_COLOUR = (1.0, 0.55, 0.0)


def _new_figure(figure, figsize):
    """A Figure to draw into: the given one, or a new one with no pyplot involved."""
    if figure is not None:
        return figure
    return require("matplotlib.figure", "the diagnostic figures need").Figure(figsize=figsize)


def _kernel_of(result):
    """The SpatialKernel of a MatchResult, or the argument itself if it is one."""
    if isinstance(result, SpatialKernel):
        return result
    kernel = getattr(result, "kernel", None)
    if isinstance(kernel, SpatialKernel):
        return kernel
    msg = f"result must be a MatchResult or a SpatialKernel, got {type(result).__name__}"
    raise TypeError(msg)


def _image_shape(result, shape):
    """Image shape from ``shape=`` or the result's cell grid."""
    if shape is None:
        grid = getattr(result, "grid", None)
        if grid is None:
            msg = "shape=(ny, nx) is required when plotting a SpatialKernel without a MatchResult"
            raise ValueError(msg)
        return tuple(grid.shape)
    shape = tuple(int(s) for s in np.atleast_1d(shape))
    if len(shape) != 2 or min(shape) < 1:
        msg = f"shape must be a pair of positive integers (ny, nx), got {shape}"
        raise ValueError(msg)
    return shape


def _check_count(name, value, minimum=1):
    return integer(minimum)(name, value)


def _spread(n, k):
    """Up to ``k`` indices spread evenly over ``range(n)``, ends included."""
    return np.unique(np.round(np.linspace(0, n - 1, min(n, k))).astype(int))


def _bare(ax):
    ax.set_xticks([])
    ax.set_yticks([])


def _frame(ax, colour, width=2.0):
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(width)


def _title(fig, text, width_inches, *, fontsize=9):
    """A figure title wrapped to the figure's width; returns its height in inches.

    Each paragraph (one per line of ``text``) is wrapped on its own, so that a title
    is never clipped on a narrow figure.
    """
    chars = max(int(width_inches * 72.0 / (0.55 * fontsize)), 20)
    lines = [line for part in text.split("\n") for line in textwrap.wrap(part, chars) or [""]]
    fig.suptitle("\n".join(lines), fontsize=fontsize, y=0.995, va="top")
    return 0.2 + len(lines) * fontsize * 1.3 / 72.0


def _max_residual(result):
    """The ``max_residual`` the match was run with, if the result knows it."""
    config = getattr(result, "config", None)
    return getattr(config, "max_residual", None)


def _is_nodes(result):
    """True for a bilinear (node) spatial model."""
    return getattr(_kernel_of(result), "nodes", None) is not None


def select_candidates(result, *, max_per_side=5, show_rejected=True):
    """A representative subset of candidates, spread across the cell grid.

    With many cells, `plot_candidates` shows the candidates of up to
    ``max_per_side`` cell rows and columns, spread evenly over the grid and
    including its corners (5 x 5 = 25 cells by default).

    Parameters
    ----------
    result : MatchResult
        A match result.
    max_per_side : int, optional
        Most cell rows (and columns) to take.
    show_rejected : bool, optional
        Keep rejected candidates in the subset.

    Returns
    -------
    rows, cols : ndarray of int
        The cell rows and columns taken.
    candidates : dict
        ``{(iy, ix): Candidate}`` for the cells of those rows and columns.
    """
    max_per_side = _check_count("max_per_side", max_per_side)
    ny, nx = result.grid.n_cells
    rows, cols = _spread(ny, max_per_side), _spread(nx, max_per_side)
    wanted = {(int(r), int(c)) for r in rows for c in cols}
    chosen = {tuple(c.index): c for c in result.candidates
              if tuple(c.index) in wanted and (show_rejected or not c.rejected)}
    return rows, cols, chosen


def spatial_residual(result, candidate):
    """Residual of the *spatial* kernel at a candidate, relative to the target peak.

    ``(source ⊛ K(x, y) - target) / max(target)`` on the pixels where the
    convolution is complete, with ``K(x, y)`` the solved spatially varying
    kernel at the candidate's position: what the matched image gets there.
    Its largest absolute value is ``candidate.spatial_residual_max``.

    Parameters
    ----------
    result : MatchResult
        A match result.
    candidate : Candidate
        One of ``result.candidates``.

    Returns
    -------
    residual : ndarray, shape (V, V)
    """
    if candidate.spatial_residual is not None:  # kept by the solver
        return candidate.spatial_residual
    from scipy.signal import fftconvolve

    kernel = result.kernel.evaluate(candidate.x, candidate.y)
    model = fftconvolve(candidate.source, kernel, mode="valid")
    half = kernel.shape[0] // 2
    valid = model.shape[0]
    target = candidate.target[half:half + valid, half:half + valid]
    return (model - target) / float(np.max(candidate.target))


def plot_candidates(result, *, max_per_side=5, show_rejected=True, residual_scale=None,
                    figure=None):
    """The kernel candidates (cells or nodes): stamps, kernel, models and residuals.

    Each shown candidate gets one axes with a 2 x 3 block of panels (six
    images):

    * top: the source PSF stamp ``S``, the target stamp ``T`` and the model
      ``M`` of the target made with the candidate's own kernel (``S`` ⊛ own
      kernel);
    * bottom: the spatially varying kernel at the candidate ``K``, the
      residual of the own kernel ``R = M - T``, and the residual of the
      spatial kernel ``Rs = S ⊛ K - T`` (see `spatial_residual`), which is
      what the matched image gets at that position.

    Blocks are laid out like the candidates on the image (y up). Models and
    residuals exist only where the convolution is complete: the stamp
    shrunk by the kernel half-width, outlined by the dashed box on ``S`` and
    ``T``. Stamps share one square-root stretch; both kinds of residual
    share one symmetric scale for all blocks, in units of the target peak,
    printed in the title, and each residual panel gives its largest
    absolute value. The scale is never below a tenth of the match's
    ``max_residual``, so that residuals far below the accuracy asked for
    (round-off of an exact match) show as faint, not as full-contrast
    patterns. Frames are green for candidates used in the spatial fit and
    red for rejected ones.

    With many candidates only a representative subset is drawn: those of up
    to ``max_per_side`` rows and columns spread over the grid, corners
    included (see `select_candidates`).

    Parameters
    ----------
    result : MatchResult
        A match result.
    max_per_side : int, optional
        Most rows and columns of candidates shown (default 5: at most 25).
    show_rejected : bool, optional
        Also show rejected candidates (the reference's ``showBadCandidates``).
    residual_scale : float, optional
        Half-range of the residual colour scale (fraction of the target
        peak); default the largest residual shown, at least a tenth of
        ``max_residual``.
    figure : `~matplotlib.figure.Figure`, optional
        Figure to draw into; default a new one.

    Returns
    -------
    figure : `~matplotlib.figure.Figure`
        With one axes per shown candidate, holding its six images in the
        order S, T, M, K, R, Rs (fewer when a candidate has no fit).
    """
    from matplotlib.colors import PowerNorm

    rows, cols, chosen = select_candidates(result, max_per_side=max_per_side,
                                           show_rejected=show_rejected)
    if residual_scale is not None:
        residual_scale = real(gt=0, normal=True)("residual_scale", residual_scale)
    nrow, ncol = len(rows), len(cols)
    width = 3.4 * ncol + 0.4
    where = "nodes" if _is_nodes(result) else "cells"
    if not chosen:
        fig = _new_figure(figure, (width, 2.0))
        _title(fig, "no candidates to show", width)
        return fig
    spatial = {key: spatial_residual(result, c) for key, c in chosen.items()}
    peak = max(float(np.max(c.target)) for c in chosen.values())
    norm = PowerNorm(0.5, vmin=0.0, vmax=peak)
    residuals = [np.abs(r).max() for r in spatial.values()]
    residuals += [np.abs(c.fit.residual).max() for c in chosen.values() if c.fit is not None]
    largest = float(max(residuals))
    if residual_scale is None:
        floor = _max_residual(result)
        floor = 1e-12 if floor is None else _RESIDUAL_SCALE_FLOOR * floor
        residual_scale = max(largest, floor)
    res_max = residual_scale
    kernels = {key: result.kernel.evaluate(c.x, c.y) for key, c in chosen.items()}
    k_max = max(float(np.abs(k).max()) for k in kernels.values()) or 1.0

    n_bad = sum(c.rejected for c in result.candidates)
    title = (
        f"Kernel candidates at {where}: {len(chosen)} of {len(result.candidates)} shown, "
        f"{n_bad} rejected (red frames)\n"
        "S source, T target, M = S ⊛ own kernel; K spatial kernel here; R = M - T, "
        "Rs = S ⊛ K - T; dashed box: where the convolution is complete\n"
        f"residual scale ±{100 * res_max:.2g}% of the target peak "
        f"(largest shown {100 * largest:.2g}%)")
    # the title's height is known once it is wrapped to the figure's width
    fig = _new_figure(figure, (width, 2.3 * nrow + 1.0))
    title_height = _title(fig, title, width)
    height = 2.3 * nrow + title_height
    if figure is None:
        fig.set_size_inches(width, height)
    outer = fig.add_gridspec(nrow, ncol, left=0.02, right=0.98, bottom=0.02,
                             top=1.0 - title_height / height, wspace=0.1, hspace=0.22)
    for r, iy in enumerate(rows):
        for c, ix in enumerate(cols):
            key = (int(iy), int(ix))
            cand = chosen.get(key)
            if cand is None:
                continue
            ax = fig.add_subplot(outer[nrow - 1 - r, c])
            _candidate_block(ax, cand, kernels[key], spatial[key], norm=norm, k_max=k_max,
                             res_max=res_max)
    return fig


#: Gap between the panels of a candidate's block, as a fraction of the stamp size.
_PANEL_GAP = 0.08


def _candidate_block(ax, cand, kernel, spatial, *, norm, k_max, res_max):
    """One candidate's 2 x 3 panels as six images in one axes (far faster to draw than
    six axes): S, T, M on top, K, R, Rs below, each in a stamp-sized square.
    """
    from matplotlib.patches import Rectangle

    size = cand.source.shape[0]
    step = size * (1.0 + _PANEL_GAP)
    colour = _BAD_COLOUR if cand.rejected else _GOOD_COLOUR
    fit = cand.fit
    panels = [("S", cand.source), ("T", cand.target),
              ("M", None if fit is None else fit.model), ("K", kernel),
              ("R", None if fit is None else fit.residual), ("Rs", spatial)]
    _bare(ax)
    _frame(ax, colour)
    for k, (label, image) in enumerate(panels):
        x0, y0 = (k % 3) * step - 0.5, (1 - k // 3) * step - 0.5  # the square's corner
        if image is not None:
            if label == "K":  # the kernel fills its square
                extent = (x0, x0 + size, y0, y0 + size)
            else:  # models and residuals are smaller than the stamps: centred
                offset = (size - image.shape[0]) / 2.0
                extent = (x0 + offset, x0 + offset + image.shape[0],
                          y0 + offset, y0 + offset + image.shape[0])
            if label == "K":
                ax.imshow(image, origin="lower", cmap="RdBu_r", vmin=-k_max, vmax=k_max,
                          extent=extent, interpolation="nearest")
            elif label.startswith("R"):
                ax.imshow(image, origin="lower", cmap="RdBu_r", vmin=-res_max, vmax=res_max,
                          extent=extent, interpolation="nearest")
                ax.text(x0 + 0.96 * size, y0 + 0.04 * size,
                        f"{100 * np.abs(image).max():.2g}%", va="bottom", ha="right",
                        fontsize=6)
            else:
                ax.imshow(image, origin="lower", cmap="viridis", norm=norm, extent=extent,
                          interpolation="nearest")
            if label in ("S", "T") and fit is not None:
                valid = fit.model.shape[0]
                offset = (size - valid) / 2.0
                ax.add_patch(Rectangle((x0 + offset, y0 + offset), valid, valid, fill=False,
                                       lw=0.6, ls="--", ec="white"))
        ax.add_patch(Rectangle((x0, y0), size, size, fill=False, lw=0.5, ec="0.6"))
        ax.text(x0 + 0.04 * size, y0 + 0.96 * size, label, va="top", ha="left", fontsize=7,
                color="black", bbox={"fc": "white", "ec": "none", "alpha": 0.7, "pad": 1.0})
    ax.set_xlim(-0.5 - 0.5 * _PANEL_GAP * size, 2 * step + size - 0.5 + 0.5 * _PANEL_GAP * size)
    ax.set_ylim(-0.5 - 0.5 * _PANEL_GAP * size, step + size - 0.5 + 0.5 * _PANEL_GAP * size)
    ax.set_aspect("equal")
    status = " rejected" if cand.rejected else ""
    ax.set_title(f"({cand.x:.0f}, {cand.y:.0f}){status}", fontsize=7, loc="left",
                 color=colour, pad=2)


def _basis_labels(result, n_basis):
    """Labels of the basis images (Gaussian width and polynomial powers for Alard-Lupton)."""
    # a MatchResult's KernelBasis (a SpatialKernel's basis is a plain array)
    labels = getattr(getattr(result, "basis", None), "labels", None)
    if labels is not None and len(labels) == n_basis:
        return labels
    return [f"B{i}" for i in range(n_basis)]


def plot_basis(result, *, max_functions=100, figure=None):
    """The kernel basis images.

    Each image has its own symmetric colour scale (red positive, blue
    negative). ``B0`` sums to one and carries the kernel sum; every other
    image sums to zero. For the Alard-Lupton basis the labels give the
    Gaussian width and the powers of the polynomial ``u^a v^b``.

    Parameters
    ----------
    result : MatchResult or SpatialKernel
        A match result, or a kernel.
    max_functions : int, optional
        Most basis images shown (the first ones); a delta-function basis has
        one image per kernel pixel.
    figure : `~matplotlib.figure.Figure`, optional
        Figure to draw into; default a new one.

    Returns
    -------
    figure : `~matplotlib.figure.Figure`
        With one axes per shown basis image.
    """
    kernel = _kernel_of(result)
    max_functions = _check_count("max_functions", max_functions)
    images = kernel.basis[:max_functions]
    n = images.shape[0]
    ncol = math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    fig = _new_figure(figure, (1.5 * ncol + 0.4, 1.6 * nrow + 0.7))
    labels = _basis_labels(result, kernel.n_basis)
    grid = fig.add_gridspec(nrow, ncol, left=0.02, right=0.98, bottom=0.02,
                            top=1.0 - 0.6 / (1.6 * nrow + 0.7), wspace=0.08, hspace=0.3)
    for i in range(n):
        ax = fig.add_subplot(grid[i // ncol, i % ncol])
        _bare(ax)
        vmax = float(np.max(np.abs(images[i]))) or 1.0
        ax.imshow(images[i], origin="lower", cmap="RdBu_r", vmin=-vmax, vmax=vmax,
                  interpolation="nearest")
        ax.set_title(labels[i], fontsize=6, pad=2)
    shown = f"first {n} of {kernel.n_basis}" if n < kernel.n_basis else f"{n}"
    _title(fig, f"Kernel basis: {shown} images of {kernel.kernel_size}x{kernel.kernel_size} "
           "(B0 sums to 1, the others to 0; each on its own scale, red positive)",
           1.5 * ncol + 0.4)
    return fig


def _positions(shape, n):
    """``n`` x and y positions spread over an image, edges included."""
    ny, nx = shape
    return np.linspace(0.0, nx - 1.0, n), np.linspace(0.0, ny - 1.0, n)


def plot_kernel_mosaic(result, *, shape=None, n=5, difference=False, figure=None):
    """The kernel realized on an ``n`` x ``n`` grid of positions across the image.

    Kernels are drawn where they sit on the image (y up), all on one
    symmetric colour scale, so that negative pixels (blue) stand out. With
    ``difference=True`` each panel shows ``K(x, y) - K(centre)``: the
    spatial variation alone, on a scale never below a tenth of the match's
    ``max_residual`` times the kernel peak (so that the round-off of a
    constant kernel shows as faint, not as a full-contrast pattern); the
    title gives the scale and the largest difference.

    Parameters
    ----------
    result : MatchResult or SpatialKernel
        A match result, or a kernel (then ``shape`` is required).
    shape : tuple of int, optional
        Image shape ``(ny, nx)``; default the result's.
    n : int, optional
        Kernels per side; positions spread evenly from edge to edge.
    difference : bool, optional
        Show differences from the kernel at the image centre.
    figure : `~matplotlib.figure.Figure`, optional
        Figure to draw into; default a new one.

    Returns
    -------
    figure : `~matplotlib.figure.Figure`
        With ``n * n`` kernel axes and one colour bar axes.
    """
    kernel = _kernel_of(result)
    shape = _image_shape(result, shape)
    n = _check_count("n", n)
    xs, ys = _positions(shape, n)
    images = np.array([[kernel.evaluate(x, y) for x in xs] for y in ys])
    k_peak = float(np.max(np.abs(images))) or 1.0
    if difference:
        images = images - kernel.evaluate((shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0)
    largest = float(np.max(np.abs(images)))
    vmax = largest or 1.0
    if difference:
        # a variation far below what the match was asked to reach (round-off of a
        # constant kernel) is drawn faint, not autoscaled to full contrast
        floor = _max_residual(result)
        floor = 1e-12 if floor is None else _RESIDUAL_SCALE_FLOOR * floor
        vmax = max(largest, floor * k_peak)
    width = 1.6 * n + 1.2
    if difference:
        title = (f"Kernel variation K(x, y) - K(centre), {kernel.kernel_size}x"
                 f"{kernel.kernel_size}: scale ±{vmax:.2g} ({100 * vmax / k_peak:.2g}% of the "
                 f"kernel peak), largest {100 * largest / k_peak:.2g}%")
    else:
        title = (f"Kernel mosaic K(x, y), {kernel.kernel_size}x{kernel.kernel_size}, sum "
                 f"{kernel.kernel_sum:.4g}: red positive, blue negative, scale ±{vmax:.2g}")
    fig = _new_figure(figure, (width, 1.6 * n + 0.8))
    title_height = _title(fig, title, width)
    height = 1.6 * n + title_height + 0.1
    if figure is None:
        fig.set_size_inches(width, height)
    grid = fig.add_gridspec(n, n, left=0.03, right=0.86, bottom=0.03,
                            top=1.0 - title_height / height, wspace=0.06, hspace=0.22)
    for r in range(n):
        for c in range(n):
            ax = fig.add_subplot(grid[n - 1 - r, c])
            _bare(ax)
            im = ax.imshow(images[r, c], origin="lower", cmap="RdBu_r", vmin=-vmax, vmax=vmax,
                           interpolation="nearest")
            ax.set_title(f"x={xs[c]:.0f} y={ys[r]:.0f}", fontsize=6, pad=2)
    cax = fig.add_axes((0.89, 0.1, 0.025, 0.7))
    fig.colorbar(im, cax=cax)
    return fig


def _varying_functions(kernel, maps, max_functions):
    """Indices (ascending) of the basis images whose coefficients vary most over the image."""
    first = 1 if kernel.n_basis > 1 else 0
    candidates = np.arange(first, kernel.n_basis)
    spread = np.ptp(maps[candidates].reshape(len(candidates), -1), axis=1)
    varying = candidates[spread > 1e-9 * max(float(spread.max(initial=0.0)), 1e-300)]
    if varying.size == 0:
        return [int(i) for i in candidates[:max_functions]] or [0]
    order = varying[np.argsort(-spread[varying - first], kind="stable")][:max_functions]
    return sorted(int(i) for i in order)


def plot_spatial_coefficients(result, *, shape=None, functions=None, max_functions=12,
                              resolution=64, figure=None):
    """Maps of the spatial coefficient of basis images across the field.

    Each panel is the coefficient of one basis image as a function of
    position (the spatial model), over the image and the box the spatial
    fit was normalized on; the image outline is drawn in black. With a match
    result, each candidate's own per-cell coefficient is overplotted as a
    dot on the same colour scale (red crosses: rejected candidates): a dot
    whose colour differs from the map beneath it marks a cell the spatial
    model does not follow. The coefficient of ``B0`` is the kernel sum,
    constant by construction, and is not shown.

    By default the maps shown are those of the (at most ``max_functions``)
    basis images whose coefficients vary most over the image, in basis
    order: coefficients that are the same everywhere (for example those of
    odd basis images when every PSF is symmetric) say nothing about the
    spatial variation. Each colour scale spans at least a millionth of the
    largest coefficient shown, so that round-off is not drawn as structure.

    Coefficients of overlapping basis functions (the Gaussians of an
    Alard-Lupton basis) can trade off against each other while the kernel
    stays the same: large opposite swings in two maps are not by themselves
    a failure. `plot_kernel_moments` maps what the kernel does, which does
    not depend on how it is expanded.

    Parameters
    ----------
    result : MatchResult or SpatialKernel
        A match result, or a kernel (then ``shape`` is required).
    shape : tuple of int, optional
        Image shape ``(ny, nx)``; default the result's.
    functions : sequence of int, optional
        Basis images whose coefficients to map (instead of the most varying).
    max_functions : int, optional
        Most maps shown when ``functions`` is not given.
    resolution : int, optional
        Map samples per axis.
    figure : `~matplotlib.figure.Figure`, optional
        Figure to draw into; default a new one.

    Returns
    -------
    figure : `~matplotlib.figure.Figure`
        With one map axes and one colour bar axes per shown basis image.
    """
    kernel = _kernel_of(result)
    shape = _image_shape(result, shape)
    max_functions = _check_count("max_functions", max_functions)
    resolution = _check_count("resolution", resolution, 2)
    ny, nx = shape
    xmin, xmax, ymin, ymax = kernel.bbox
    x0, x1 = min(xmin, -0.5), max(xmax, nx - 0.5)
    y0, y1 = min(ymin, -0.5), max(ymax, ny - 0.5)
    xs, ys = np.linspace(x0, x1, resolution), np.linspace(y0, y1, resolution)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    maps = kernel.coefficients_at(xx, yy)
    if functions is None:
        inside = kernel.coefficients_at(*np.meshgrid(np.linspace(0, nx - 1, resolution),
                                                     np.linspace(0, ny - 1, resolution)))
        indices = _varying_functions(kernel, inside, max_functions)
    else:
        indices = [int(i) for i in np.atleast_1d(functions)]
        if not indices or min(indices) < 0 or max(indices) >= kernel.n_basis:
            msg = (f"functions must be indices of basis images in [0, {kernel.n_basis - 1}], "
                   f"got {functions!r}")
            raise ValueError(msg)
    candidates = [c for c in getattr(result, "candidates", []) if c.fit is not None
                  and len(c.fit.coefficients) == kernel.n_basis]

    n = len(indices)
    ncol = math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    width = 3.1 * ncol + 0.3
    which = "chosen" if functions is not None else "most varying"
    order = "" if kernel.nodes is not None else f", order {kernel.spatial_order}"
    fig = _new_figure(figure, (width, 2.7 * nrow + 0.7))
    title_height = _title(
        fig, f"Spatial model ({kernel.spatial_model}{order}): coefficients of the {n} "
        f"{which} of {kernel.n_basis} basis images; dots: per-{_candidate_word(kernel)} fits"
        "\noverlapping basis functions can trade coefficients off at the same kernel: "
        "see the kernel moments figure", width)
    height = 2.7 * nrow + title_height
    if figure is None:
        fig.set_size_inches(width, height)
    grid = fig.add_gridspec(nrow, ncol, left=0.08, right=0.96, bottom=0.06,
                            top=1.0 - title_height / height, wspace=0.45, hspace=0.45)
    floor = 1e-6 * max(float(np.abs(maps[indices]).max()), 1e-300)
    for k, i in enumerate(indices):
        ax = fig.add_subplot(grid[k // ncol, k % ncol])
        values = maps[i]
        points = np.array([c.fit.coefficients[i] for c in candidates], dtype=float)
        everything = np.concatenate([values.ravel(), points])
        lo, hi = _span(float(everything.min()), float(everything.max()), floor)
        im = _field_map(ax, values, (x0, x1, y0, y1), (nx, ny), candidates, points, lo, hi)
        _field_axes(ax, x0, x1, y0, y1)
        ax.set_title(f"coefficient of B{i}", fontsize=8, pad=2)
        _linear_colour_bar(fig, im, ax)
    return fig


def _field_map(ax, values, extent, shape, candidates, points, lo, hi, **imshow):
    """A map over the field (``shape`` = image ``(nx, ny)``, outlined) with the
    candidates' own values as dots on the same colour scale (rejected ones as crosses).
    Returns the image, for its colour bar.
    """
    from matplotlib.patches import Rectangle

    im = ax.imshow(values, origin="lower", extent=extent, cmap="viridis", vmin=lo, vmax=hi,
                   aspect="equal", **imshow)
    ax.add_patch(Rectangle((-0.5, -0.5), shape[0], shape[1], fill=False, ec="black",
                           lw=1.0))
    if candidates:
        rejected = np.array([c.rejected for c in candidates])
        cx = np.array([c.x for c in candidates])
        cy = np.array([c.y for c in candidates])
        ax.scatter(cx[~rejected], cy[~rejected], c=points[~rejected], cmap="viridis",
                   vmin=lo, vmax=hi, **_dot_style(len(candidates)))
        if rejected.any():
            ax.scatter(cx[rejected], cy[rejected], c=_BAD_COLOUR, marker="x", s=18,
                       linewidths=1.0)
    return im


def _dot_style(n):
    """Scatter options of per-candidate dots: smaller and thinner when there are many."""
    if n > 100:
        return {"s": 6, "edgecolors": "white", "linewidths": 0.25}
    return {"s": 18, "edgecolors": "white", "linewidths": 0.5}


def _candidate_word(kernel):
    return "node" if getattr(kernel, "nodes", None) is not None else "cell"


def _span(lo, hi, floor):
    """Colour limits: ``lo, hi`` widened about their middle to span at least ``floor``."""
    if hi - lo < floor:
        middle = (lo + hi) / 2.0
        lo, hi = middle - floor / 2.0, middle + floor / 2.0
    return lo, hi


def _field_axes(ax, x0, x1, y0, y1):
    """Limits, labels and a few small ticks of a map of the field (every tick is a
    line and a text that matplotlib lays out: most of such a figure's drawing time).
    """
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel("x (pixels)", fontsize=6, labelpad=1)
    ax.set_ylabel("y (pixels)", fontsize=6, labelpad=1)
    ax.locator_params(nbins=3)
    ax.tick_params(labelsize=6)


def _linear_colour_bar(fig, image, ax):
    """A colour bar beside ``ax`` with at most five small ticks (linear scales)."""
    from matplotlib.ticker import MaxNLocator

    cbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    cbar.locator = MaxNLocator(nbins=4)
    cbar.update_ticks()
    cbar.ax.tick_params(labelsize=6)
    return cbar


#: What `plot_kernel_moments` maps: key of `kernel_moments`, label, unit, and the
#: smallest colour span (variations below it are immaterial to any match).
_MOMENT_PANELS = (
    ("sigma2", "(Ixx + Iyy) / 2", "px²", 1e-4),
    ("e1", "(Ixx - Iyy) / 2", "px²", 1e-4),
    ("e2", "Ixy", "px²", 1e-4),
    ("dx", "centroid x offset", "px", 1e-5),
    ("dy", "centroid y offset", "px", 1e-5),
    ("noise_gain", "noise gain sqrt(sum K²) / sum K", "", 1e-5),
)


def plot_kernel_moments(result, *, shape=None, resolution=24, figure=None):
    """Maps of what the kernel does across the field: its width, shape, centroid and noise.

    The kernel's own second moments, centroid and noise gain (see the
    returned quantities below) as functions of position. Unlike the spatial
    coefficients, they do not depend on how the kernel is expanded in its
    basis, so a map that is flat means a kernel that does not vary. Second
    moments add under convolution: for Gaussian PSFs ``(Ixx + Iyy) / 2`` is
    ``sigma_target² - sigma_source²``, and ``(Ixx - Iyy) / 2`` and ``Ixy``
    are the difference of the two PSFs' shapes; a negative value means the
    kernel narrows the PSF along that direction. With a match result, each
    candidate's own kernel is overplotted as a dot on the same colour scale
    (red crosses: rejected). Each colour scale spans at least a small
    immaterial amount (1e-4 px² for moments, 1e-5 px for centroids), so a
    constant kernel is drawn as a flat map.

    Parameters
    ----------
    result : MatchResult or SpatialKernel
        A match result, or a kernel (then ``shape`` is required).
    shape : tuple of int, optional
        Image shape ``(ny, nx)``; default the result's.
    resolution : int, optional
        Map samples per axis.
    figure : `~matplotlib.figure.Figure`, optional
        Figure to draw into; default a new one.

    Returns
    -------
    figure : `~matplotlib.figure.Figure`
        With six map axes and their colour bars.
    """
    kernel = _kernel_of(result)
    shape = _image_shape(result, shape)
    resolution = _check_count("resolution", resolution, 2)
    ny, nx = shape
    xs, ys = np.linspace(0.0, nx - 1.0, resolution), np.linspace(0.0, ny - 1.0, resolution)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    maps = kernel_moments(kernel.evaluate_many(xx.ravel(), yy.ravel()))
    candidates = [c for c in getattr(result, "candidates", []) if c.fit is not None]
    own = kernel_moments(np.array([c.fit.kernel for c in candidates])) if candidates else None
    width = 10.0
    fig = _new_figure(figure, (width, 5.8))
    title_height = _title(
        fig, f"What the kernel does across the field ({kernel.kernel_size}x"
        f"{kernel.kernel_size}, {kernel.spatial_model}): its moments, independent of the "
        f"basis; dots: per-{_candidate_word(kernel)} own kernels", width)
    # the panels' own two-line titles need room below the figure's
    title_height += 0.3
    height = 5.4 + title_height
    if figure is None:
        fig.set_size_inches(width, height)
    grid = fig.add_gridspec(2, 3, left=0.07, right=0.95, bottom=0.08,
                            top=1.0 - title_height / height, wspace=0.45, hspace=0.45)
    extent = (-0.5, nx - 0.5, -0.5, ny - 0.5)
    for k, (key, label, unit, floor) in enumerate(_MOMENT_PANELS):
        ax = fig.add_subplot(grid[k // 3, k % 3])
        values = maps[key].reshape(resolution, resolution)
        points = own[key] if own is not None else np.zeros(0)
        everything = np.concatenate([values.ravel(), points])
        low, high = float(everything.min()), float(everything.max())
        lo, hi = _span(low, high, floor)
        im = _field_map(ax, values, extent, (nx, ny), candidates, points, lo, hi,
                        interpolation="bilinear")
        _field_axes(ax, -0.5 - 0.02 * nx, nx - 0.5 + 0.02 * nx, -0.5 - 0.02 * ny,
                    ny - 0.5 + 0.02 * ny)
        suffix = f" {unit}" if unit else ""
        ax.set_title(f"{label}\n{low:.4g} to {high:.4g}{suffix}", fontsize=7, pad=2)
        _linear_colour_bar(fig, im, ax)
    return fig


def plot_heldout(result, *, figure=None):
    """Where in the field the kernel is worst: the residual at the held-out positions.

    The verdict of a match (``result.metadata['quality']``) is measured at
    quasi-random positions that no fit saw; this map shows, at each, the
    largest ``|source ⊛ K(x, y) - target|`` relative to the target peak
    (``result.heldout``), on a logarithmic colour scale. Positions above the
    match's ``max_residual`` are ringed in red, the worst one is a star, and
    the positions the kernel was fitted at (cells or nodes) are black
    crosses. A histogram of the residuals against ``max_residual`` is on the
    right.

    Parameters
    ----------
    result : MatchResult
        A match result.
    figure : `~matplotlib.figure.Figure`, optional
        Figure to draw into; default a new one.

    Returns
    -------
    figure : `~matplotlib.figure.Figure`
        With a map axes, its colour bar and a histogram axes.
    """
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle

    table = getattr(result, "heldout", None)
    if table is None or len(table) == 0:
        msg = "result has no held-out measurement (result.heldout); it must be a MatchResult"
        raise ValueError(msg)
    x, y = np.asarray(table["x"]), np.asarray(table["y"])
    residual = np.maximum(np.asarray(table["residual_max"], dtype=float), 1e-16)
    limit = _max_residual(result)
    quality = result.metadata["quality"]
    ny, nx = result.grid.shape
    width = 11.0
    fig = _new_figure(figure, (width, 6.0))
    verdict = "passed" if quality.get("passed", True) else "NOT passed"
    limit_text = "" if limit is None else f" (limit {limit:.2g}: {verdict})"
    title_height = _title(
        fig, f"Held-out residual max |S ⊛ K - T| / peak at {len(x)} positions no fit saw: "
        f"largest {residual.max():.2g}{limit_text}, rms {quality['heldout_residual_rms']:.2g}",
        width)
    height = 5.6 + title_height
    if figure is None:
        fig.set_size_inches(width, height)
    top = 1.0 - title_height / height
    ax = fig.add_axes((0.07, 0.1, 0.5, top - 0.14))
    # colours span the residuals; the histogram also spans the limit
    norm = LogNorm(vmin=float(residual.min()) / 1.2, vmax=float(residual.max()) * 1.2)
    low = min(float(residual.min()), limit if limit is not None else np.inf)
    high = max(float(residual.max()), limit if limit is not None else 0.0)
    points = ax.scatter(x, y, c=residual, cmap="magma", norm=norm, s=14, linewidths=0)
    if limit is not None and (residual > limit).any():
        above = residual > limit
        ax.scatter(x[above], y[above], s=40, facecolors="none", edgecolors=_BAD_COLOUR,
                   linewidths=1.0, label=f"above max_residual ({above.sum()})")
    worst = int(np.argmax(residual))
    ax.scatter([x[worst]], [y[worst]], marker="*", s=160, c="cyan", edgecolors="black",
               linewidths=0.6, label=f"worst ({x[worst]:.0f}, {y[worst]:.0f})")
    fx, fy = result.grid.positions()
    many = len(fx) > 100
    ax.scatter(fx, fy, marker="+", s=8 if many else 30, c="0.5" if many else "black",
               linewidths=0.5 if many else 0.8,
               label=f"fitted {_candidate_word(result.kernel)}s ({len(fx)})")
    ax.add_patch(Rectangle((-0.5, -0.5), nx, ny, fill=False, ec="black", lw=1.0))
    _field_axes(ax, -0.5 - 0.03 * nx, nx - 0.5 + 0.03 * nx, -0.5 - 0.03 * ny,
                ny - 0.5 + 0.03 * ny)
    ax.set_aspect("equal", adjustable="box")
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.08), ncol=3, fontsize=6,
              framealpha=0.8)
    cbar = fig.colorbar(points, ax=ax, fraction=0.046, pad=0.03)
    cbar.set_label("max |S ⊛ K - T| / peak", fontsize=7)
    cbar.ax.tick_params(labelsize=6)
    hist = fig.add_axes((0.72, 0.14, 0.25, top - 0.2))
    bins = np.geomspace(low / 1.5, high * 1.5, 30)
    hist.hist(residual, bins=bins, color="0.4")
    hist.set_xscale("log")
    if limit is not None:
        hist.axvline(limit, color=_BAD_COLOUR, ls="--", lw=1.0, label="max_residual")
        hist.legend(fontsize=6)
    hist.set_xlabel("max |S ⊛ K - T| / peak", fontsize=7)
    hist.set_ylabel("held-out positions", fontsize=7)
    hist.tick_params(labelsize=6)
    return fig


def _display_limits(data, step=1):
    """zscale limits of the finite pixels (or their range), from every ``step``-th row and
    column of a large image.
    """
    from astropy.visualization import ZScaleInterval

    finite = np.asarray(data)[::step, ::step].astype(float)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = ZScaleInterval().get_limits(finite)
    if not hi > lo:
        lo, hi = float(finite.min()), float(finite.max()) + 1.0
    return float(lo), float(hi)


def _block_factor(shape, axes_pixels):
    """Pixels per displayed pixel: an image never has more pixels than its axes."""
    return max(1, int(np.ceil(max(shape) / max(axes_pixels, 1.0))))


def _block_reduce(image, factor, fill, combine):
    """``combine`` (a binary ufunc: add, logical_or) over each ``factor`` x ``factor``
    block of ``image`` padded with ``fill`` to whole blocks: ``factor`` passes over
    whole rows, then ``factor`` strided passes over the ``factor`` times smaller result
    (about two reads of the image; reducing short axes is far slower).
    """
    ny, nx = image.shape
    ny_blocks, nx_blocks = -(-ny // factor), -(-nx // factor)
    along_y = np.full((ny_blocks, nx_blocks * factor), fill, dtype=image.dtype)
    for k in range(factor):
        rows = image[k::factor]
        combine(along_y[:rows.shape[0], :nx], rows, out=along_y[:rows.shape[0], :nx])
    out = along_y[:, ::factor].copy()
    for k in range(1, factor):
        combine(out, along_y[:, k::factor], out=out)
    return out


def _block_mean(data, factor):
    """Mean of the finite pixels of each ``factor`` x ``factor`` block (NaN: none), and
    whether a block holds any non-finite pixel; the last blocks may be smaller.
    """
    finite = np.isfinite(data)
    if factor == 1:
        return data, ~finite
    rows, cols = (np.minimum(factor, n - np.arange(0, n, factor)) for n in data.shape)
    sizes = rows[:, None] * cols[None, :]
    if finite.all():
        return _block_reduce(data, factor, 0, np.add) / sizes, np.zeros(sizes.shape, bool)
    totals = _block_reduce(np.where(finite, data, 0), factor, 0, np.add)
    counts = _block_reduce(finite.astype(np.int32), factor, 0, np.add)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = totals / counts
    return means, counts < sizes


def _block_any(mask, factor):
    """Whether each ``factor`` x ``factor`` block of a boolean image holds a True pixel."""
    if factor == 1:
        return mask
    return _block_reduce(mask, factor, False, np.logical_or)


def plot_cells(result, image=None, *, show_mask=True, figure=None):
    """The cells (or nodes) and their candidates drawn over the image.

    The image is shown on a zscale stretch with masked pixels (and NaN
    pixels, such as the unmatched edge of a matched image) in orange. For
    the reference's polynomial model, cell boundaries are white lines; for
    the bilinear model, the node lines between which the kernel is
    interpolated are dashed white lines. The image outline is black.
    Candidates used in the spatial fit are green circles, rejected ones red
    crosses. The legend names every colour.

    Parameters
    ----------
    result : MatchResult
        A match result.
    image : 2-D array or `~astropy.nddata.NDData`, optional
        Image to draw, usually the input; default ``result.matched``. An
        NDData's mask is shown too.
    show_mask : bool, optional
        Overlay masked and non-finite pixels.
    figure : `~matplotlib.figure.Figure`, optional
        Figure to draw into; default a new one.

    Returns
    -------
    figure : `~matplotlib.figure.Figure`
        With one axes.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    grid = result.grid
    if image is None:
        image = result.matched
    mask = getattr(image, "mask", None)
    data = np.asarray(getattr(image, "data", image))
    if data.dtype.kind != "f" or data.dtype.itemsize < 4:
        data = data.astype(float)  # integers and float16: a float copy; float32 stays
    if data.shape != tuple(grid.shape):
        msg = f"image must have the shape of the matched image {grid.shape}, got {data.shape}"
        raise ValueError(msg)
    ny, nx = data.shape
    height = 7.5 * ny / nx + 1.6
    fig = _new_figure(figure, (7.5, height))
    ax = fig.add_axes((0.1, 1.3 / height, 0.86, 1.0 - 1.8 / height))
    # a large image is shown as block means, about as many as the axes' pixels (at
    # 1.5 times the figure's dpi, for sharper saved files): the same picture, far faster
    factor = _block_factor(data.shape, 1.5 * 0.86 * 7.5 * fig.dpi)
    lo, hi = _display_limits(data, factor)
    shown, bad_blocks = _block_mean(data, factor)
    extent = (-0.5, nx - 0.5, -0.5, ny - 0.5)
    ax.imshow(shown, origin="lower", cmap="gray", vmin=lo, vmax=hi, extent=extent,
              interpolation="nearest" if factor > 1 else None)
    handles = []
    if show_mask:
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            n_bad = int(np.count_nonzero(mask | ~np.isfinite(data)))
            bad_blocks = bad_blocks | _block_any(mask, factor)
        else:
            n_bad = int(np.count_nonzero(~np.isfinite(data)))
        if n_bad:
            ax.imshow(np.ma.masked_where(~bad_blocks, bad_blocks.astype(float)),
                      origin="lower", cmap=ListedColormap([_MASK_COLOUR]), alpha=0.7, vmin=0,
                      vmax=1, interpolation="nearest", extent=extent)
            handles.append(Patch(facecolor=_MASK_COLOUR, alpha=0.7,
                                 label=f"masked or NaN ({n_bad} px)"))
    n_y, n_x = grid.n_cells
    if isinstance(grid, NodeGrid):
        for line in grid.nodes_x:
            ax.axvline(line, color="white", ls="--", lw=0.6, alpha=0.8)
        for line in grid.nodes_y:
            ax.axhline(line, color="white", ls="--", lw=0.6, alpha=0.8)
        handles.append(Line2D([], [], color="white", ls="--", lw=0.8,
                              label="node lines (kernel interpolated between)"))
    else:
        for iy in range(n_y):
            for ix in range(n_x):
                cx0, cx1, cy0, cy1 = grid.cell_bounds(iy, ix)
                ax.add_patch(Rectangle((cx0 - 0.5, cy0 - 0.5), cx1 - cx0, cy1 - cy0,
                                       fill=False, ec="white", lw=0.6, alpha=0.8))
        handles.append(Patch(facecolor="none", edgecolor="white", label="cell boundaries"))
    ax.add_patch(Rectangle((-0.5, -0.5), nx, ny, fill=False, ec="black", lw=1.5))
    good = [c for c in result.candidates if not c.rejected]
    bad_c = [c for c in result.candidates if c.rejected]
    handles.append(ax.scatter([c.x for c in good], [c.y for c in good], marker="o", s=30,
                              facecolors="none", edgecolors=_GOOD_COLOUR, linewidths=1.2,
                              label=f"candidates used ({len(good)})"))
    handles.append(ax.scatter([c.x for c in bad_c], [c.y for c in bad_c], marker="x", s=40,
                              c=_BAD_COLOUR, linewidths=1.5,
                              label=f"candidates rejected ({len(bad_c)})"))
    bx0, bx1, by0, by1 = grid.bbox
    ax.set_xlim(min(bx0, 0) - 0.5 - 0.02 * nx, max(bx1, nx - 1) + 0.5 + 0.02 * nx)
    ax.set_ylim(min(by0, 0) - 0.5 - 0.02 * ny, max(by1, ny - 1) + 0.5 + 0.02 * ny)
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("y (pixels)")
    ax.tick_params(labelsize=7)
    # the legend (dark frame: the white entries must show) sits below the image
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2,
              fontsize=7, facecolor="0.6", framealpha=0.9)
    cy_, cx_ = grid.cell_size
    if isinstance(grid, NodeGrid):
        title = (f"{n_y} x {n_x} kernel nodes, spacing about {cy_} x {cx_} pixels: the "
                 "kernel is solved at each and interpolated bilinearly between them")
    else:
        title = f"{n_y} x {n_x} cells of {cy_} x {cx_} pixels, one candidate each"
    ax.set_title("\n".join(textwrap.wrap(title, 90)), fontsize=9)
    return fig


def save_diagnostics(result, directory, image=None, *, overwrite=False, dpi=100,
                     progress=None):
    """Write every diagnostic figure of a match as a PNG file.

    The files are those of `DIAGNOSTIC_FILES`: ``heldout.png``
    (`plot_heldout`), ``cells.png``, ``candidates.png``, ``basis.png``,
    ``kernel_mosaic.png``, ``kernel_difference.png`` (the mosaic with
    ``difference=True``), ``kernel_moments.png`` and
    ``spatial_coefficients.png``.

    Parameters
    ----------
    result : MatchResult
        A match result.
    directory : str or path-like
        Where to write; created if needed.
    image : 2-D array or `~astropy.nddata.NDData`, optional
        The image under the cells in ``cells.png`` (usually the input);
        default the matched image.
    overwrite : bool, optional
        Replace existing files.
    dpi : int, optional
        Resolution of the PNG files.
    progress : callable, optional
        Called after each figure as ``progress(index, total, path, seconds)``
        (the command line prints a line per figure with it). Each figure is
        also logged at DEBUG level.

    Returns
    -------
    paths : list of `~pathlib.Path`
        The files written, in the order of `DIAGNOSTIC_FILES`.

    Raises
    ------
    FileExistsError
        If a file exists and ``overwrite`` is False (nothing is written).
    ImportError
        Without matplotlib.
    """
    dpi = integer(1, maximum=2400)("dpi", dpi)
    directory = Path(directory)
    paths = [directory / name for name in DIAGNOSTIC_FILES.values()]
    if not overwrite:
        existing = [str(p) for p in paths if p.exists()]
        if existing:
            msg = f"{', '.join(existing)} already exist(s); use overwrite=True to replace"
            raise FileExistsError(msg)
    _new_figure(None, (1, 1))  # fail early without matplotlib
    makers = {
        "heldout": lambda: plot_heldout(result),
        "cells": lambda: plot_cells(result, image),
        "candidates": lambda: plot_candidates(result),
        "basis": lambda: plot_basis(result),
        "kernel_mosaic": lambda: plot_kernel_mosaic(result),
        "kernel_difference": lambda: plot_kernel_mosaic(result, difference=True),
        "kernel_moments": lambda: plot_kernel_moments(result),
        "spatial_coefficients": lambda: plot_spatial_coefficients(result),
    }
    directory.mkdir(parents=True, exist_ok=True)
    if progress is not None and not callable(progress):
        msg = f"progress must be None or callable, got {type(progress).__name__}"
        raise TypeError(msg)
    for index, (name, path) in enumerate(zip(DIAGNOSTIC_FILES, paths, strict=True), start=1):
        start = time.perf_counter()
        makers[name]().savefig(path, dpi=dpi)
        seconds = time.perf_counter() - start
        log.debug(f"figure {index}/{len(paths)}: {path.name} ({seconds:.1f} s)")
        if progress is not None:
            progress(index, len(paths), path, seconds)
    return paths
