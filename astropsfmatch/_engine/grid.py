"""The cell grid of the candidates, and PSF stamp sizing and padding."""

import math
from dataclasses import dataclass

import numpy as np

from ..config import MatchConfig

# the public names of this module, re-exported by astropsfmatch/__init__.py
__all__ = ["CellGrid"]

#: The reference defaults, the one source of the defaults below.
_REFERENCE = MatchConfig()


def next_odd(value):
    """Smallest odd integer >= ``value``.

    Examples
    --------
    >>> from astropsfmatch._engine.grid import next_odd
    >>> next_odd(29.4), next_odd(13), next_odd(12)
    (31, 13, 13)
    """
    n = math.ceil(value)
    return n if n % 2 else n + 1


@dataclass(frozen=True)
class CellGrid:
    """Cells over an image bounding box, optionally grown by whole cells.

    The box is the image grown by ``grow`` cells on every side; it holds
    ``n = (size + 2 * grow * cell) // cell`` cells along each axis, and the
    candidate of each cell sits at its centre. A grown box starts its cells
    at its origin, with the leftover pixels at the far end, as the reference
    pipeline does; without growth (the default) the cells are centred on the
    image (leftover pixels split evenly at both ends), which keeps the
    candidates symmetric. Spatial functions are
    normalized to [-1, 1] over the box (:attr:`bbox`).

    The reference pipeline grows the box by one cell. That constrains the
    spatial fit beyond the image edges when the PSF model extrapolates
    smoothly, but PSF models such as ``GriddedPSFModel`` hold the edge PSF
    constant outside their grid, and candidates there bend the fit inside
    the image; the default here is therefore no growth.

    Parameters
    ----------
    shape : tuple of int
        Image shape ``(ny, nx)``.
    cell_size : tuple of int
        Cell shape ``(cell_y, cell_x)``.
    grow : int, optional
        Cells added on every side of the image box (the reference: 1).

    Examples
    --------
    >>> from astropsfmatch import CellGrid
    >>> CellGrid((4096, 4096), (128, 128), grow=1).n_candidates
    1156
    >>> CellGrid((4096, 4096), (128, 128)).n_cells
    (32, 32)
    """

    shape: tuple
    cell_size: tuple
    grow: int = _REFERENCE.grow_cells

    def __post_init__(self):
        shape = tuple(int(s) for s in self.shape)
        cell = (self.cell_size, self.cell_size) if np.isscalar(self.cell_size) else self.cell_size
        cell = tuple(int(c) for c in cell)
        if len(shape) != 2 or len(cell) != 2 or min(cell) < 1:
            msg = f"shape and cell_size must be pairs of positive integers, got {shape}, {cell}"
            raise ValueError(msg)
        if shape[0] < cell[0] or shape[1] < cell[1]:
            msg = (f"image of shape {shape} is smaller than one cell of cell_size {cell}: "
                   "use a smaller cell_size (each >= 32)")
            raise ValueError(msg)
        if isinstance(self.grow, bool) or int(self.grow) != self.grow or self.grow < 0:
            msg = f"grow must be an integer >= 0, got {self.grow!r}"
            raise ValueError(msg)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "cell_size", cell)
        object.__setattr__(self, "grow", int(self.grow))

    def _axis(self, axis):
        """(box start, box stop (exclusive), number of cells, first cell start) on one axis."""
        size, cell = self.shape[axis], self.cell_size[axis]
        start, stop = -self.grow * cell, size + self.grow * cell
        n = (stop - start) // cell
        if self.grow:
            # the reference's grid: cells from the grown box's origin, the leftover
            # pixels at the far end (candidates at cell * i + cell // 2 - grow * cell)
            first = start
        else:
            first = start + ((stop - start) - n * cell) // 2
        return start, stop, n, first

    @property
    def n_cells(self):
        """Number of cells ``(n_y, n_x)``."""
        return (self._axis(0)[2], self._axis(1)[2])

    @property
    def n_candidates(self):
        """Number of cells (one candidate each)."""
        return self.n_cells[0] * self.n_cells[1]

    @property
    def bbox(self):
        """Box ``(xmin, xmax, ymin, ymax)`` in pixels, for spatial normalization."""
        x0, x1, _, _ = self._axis(1)
        y0, y1, _, _ = self._axis(0)
        return (float(x0), float(x1 - 1), float(y0), float(y1 - 1))

    def _centres(self, axis):
        _, _, n, first = self._axis(axis)
        cell = self.cell_size[axis]
        return first + cell * np.arange(n) + cell // 2

    @property
    def centres_x(self):
        """x of the cell centres (1-D)."""
        return self._centres(1)

    @property
    def centres_y(self):
        """y of the cell centres (1-D)."""
        return self._centres(0)

    def positions(self):
        """Flat arrays ``(x, y)`` of all candidate positions, row by row."""
        y, x = np.meshgrid(self.centres_y, self.centres_x, indexing="ij")
        return x.ravel().astype(float), y.ravel().astype(float)

    def cell_bounds(self, iy, ix):
        """Cell ``(iy, ix)`` as ``(x0, x1, y0, y1)``, half-open, in image pixels."""
        x0 = self._axis(1)[3] + self.cell_size[1] * ix
        y0 = self._axis(0)[3] + self.cell_size[0] * iy
        return (x0, x0 + self.cell_size[1], y0, y0 + self.cell_size[0])


def psf_stamp_size(native_size, kernel_size, *, auto_pad_psf=_REFERENCE.auto_pad_psf,
                   auto_pad_psf_to=_REFERENCE.auto_pad_psf_to, pad_psf_by=_REFERENCE.pad_psf_by):
    """Side of the PSF stamps, after padding, checked against the kernel size.

    Parameters
    ----------
    native_size : int
        Largest natural PSF stamp size over the cell centres (odd).
    kernel_size : int
        Kernel side (odd).
    auto_pad_psf : bool
        Pad to at least ``next_odd(kernel_size * auto_pad_psf_to)``.
    auto_pad_psf_to : float
        Factor of the automatic padding.
    pad_psf_by : int
        Pixels added when ``auto_pad_psf`` is off (even).

    Returns
    -------
    size : int

    Raises
    ------
    ValueError
        When the kernel does not fit in the stamp with room for a complete
        convolution.

    Examples
    --------
    >>> from astropsfmatch._engine.grid import psf_stamp_size
    >>> psf_stamp_size(11, 9)
    13
    >>> psf_stamp_size(11, 9, auto_pad_psf=False, pad_psf_by=4)
    15
    """
    if pad_psf_by % 2:
        msg = f"pad_psf_by must be even to keep the PSF centred, got {pad_psf_by}"
        raise ValueError(msg)
    if auto_pad_psf:
        size = max(native_size, next_odd(kernel_size * auto_pad_psf_to))
    else:
        size = native_size + pad_psf_by
    max_kernel = size - 1 if (size - 1) % 2 else size - 2
    if kernel_size > max_kernel:
        msg = (f"kernel_size {kernel_size} is too large for PSF stamps of {size}x{size} "
               f"(largest allowed: {max_kernel}); use a smaller kernel_size, set "
               "auto_pad_psf=True, or increase pad_psf_by")
        raise ValueError(msg)
    return size


def resize_stamp(stamp, size):
    """Pad with zeros or clip an odd-sized stamp to ``size`` x ``size``, keeping its centre.

    Works on a stack of square stamps too (last two axes). A single 2-D
    stamp may be rectangular (both sides odd).
    """
    stamp = np.asarray(stamp)
    ny, nx = stamp.shape[-2:]
    if ny == nx == size:
        return stamp
    half = size // 2
    ry, rx = min(ny // 2, half), min(nx // 2, half)
    out = np.zeros((*stamp.shape[:-2], size, size), dtype=np.result_type(stamp, np.float64))
    out[..., half - ry:half + ry + 1, half - rx:half + rx + 1] = stamp[
        ..., ny // 2 - ry:ny // 2 + ry + 1, nx // 2 - rx:nx // 2 + rx + 1]
    return out


@dataclass(frozen=True)
class NodeGrid:
    """The nodes of a bilinear spatial model: where its kernels are solved.

    Has the interface of `CellGrid` that figures and results use: ``n_cells``
    (nodes per axis), ``positions``, ``cell_bounds`` (the part of the image
    closest to a node), ``bbox`` and ``cell_size`` (the median node
    spacing).

    Parameters
    ----------
    shape : tuple of int
        Image shape ``(ny, nx)``.
    nodes_x, nodes_y : array_like
        Node lines (pixels), strictly increasing.
    """

    shape: tuple
    nodes_x: np.ndarray
    nodes_y: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "nodes_x", np.asarray(self.nodes_x, dtype=float))
        object.__setattr__(self, "nodes_y", np.asarray(self.nodes_y, dtype=float))

    @property
    def n_cells(self):
        """Number of nodes ``(n_y, n_x)``."""
        return (self.nodes_y.size, self.nodes_x.size)

    @property
    def n_candidates(self):
        """Number of nodes."""
        return self.nodes_x.size * self.nodes_y.size

    @property
    def grow(self):
        """0: nodes are not laid on a grown box."""
        return 0

    @property
    def bbox(self):
        """The box of the nodes and the image ``(xmin, xmax, ymin, ymax)``."""
        ny, nx = self.shape
        return (min(float(self.nodes_x[0]), 0.0), max(float(self.nodes_x[-1]), nx - 1.0),
                min(float(self.nodes_y[0]), 0.0), max(float(self.nodes_y[-1]), ny - 1.0))

    @property
    def cell_size(self):
        """Median node spacing ``(y, x)`` in whole pixels (the image size for one node)."""
        def spacing(nodes, size):
            return int(round(float(np.median(np.diff(nodes))))) if nodes.size > 1 else size
        return (spacing(self.nodes_y, self.shape[0]), spacing(self.nodes_x, self.shape[1]))

    @property
    def centres_x(self):
        """x of the nodes (1-D)."""
        return self.nodes_x

    @property
    def centres_y(self):
        """y of the nodes (1-D)."""
        return self.nodes_y

    def positions(self):
        """Flat arrays ``(x, y)`` of all node positions, row by row."""
        y, x = np.meshgrid(self.nodes_y, self.nodes_x, indexing="ij")
        return x.ravel(), y.ravel()

    def cell_bounds(self, iy, ix):
        """The pixels closest to node ``(iy, ix)`` as ``(x0, x1, y0, y1)``, half-open."""
        def bounds(nodes, i, size):
            low = 0 if i == 0 else int(np.ceil((nodes[i - 1] + nodes[i]) / 2.0))
            high = size if i == nodes.size - 1 else int(np.ceil((nodes[i] + nodes[i + 1]) / 2.0))
            return max(low, 0), min(max(high, 0), size)
        x0, x1 = bounds(self.nodes_x, ix, self.shape[1])
        y0, y1 = bounds(self.nodes_y, iy, self.shape[0])
        return (x0, x1, y0, y1)
