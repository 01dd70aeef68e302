r"""Exact spatially varying convolution of an image, its variance and its mask.

The kernel of a :class:`~astropsfmatch.SpatialKernel` is a polynomial in the
normalized pixel coordinates, :math:`K(x, y) = \sum_n x_n^{a_n} y_n^{b_n} G_n`
with fixed images :math:`G_n` (:meth:`~astropsfmatch.SpatialKernel.monomial_kernels`).
The spatially varying convolution is therefore a weighted sum of ordinary
convolutions, which FFTs compute exactly — no kernel interpolation.
"""

import abc
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.fft

from .._threads import thread_scope
from .._validate import InvalidTypeError, real, same_shape
from ..config import MatchConfig
from ._numba.convolution import dilate_box, weighted_sum_columns, weighted_sum_rows
from .kernel import SpatialKernel
from .spatial import node_intervals, spatial_exponents

# the public names of this module, re-exported by astropsfmatch/__init__.py
__all__ = ["ConvolvedImage", "convolve_spatially_varying"]

#: The option defaults (`MatchConfig` is their one source).
_REFERENCE = MatchConfig()

# Target side of the FFT tiles. Tiles of a few hundred pixels keep every
# per-tile array in the CPU caches; on 4096 x 4096 float32 images with a
# 21 x 21 kernel (benchmarks/bench_convolve.py) 128..256 are the fastest
# (256: 250-pixel FFTs, 8 % overlap); 512 and more are 10-30 % slower.
_FFT_LENGTH = 256


@dataclass(frozen=True)
class ConvolvedImage:
    """Result of :func:`convolve_spatially_varying`.

    Attributes
    ----------
    data : ndarray
        Convolved image; NaN where ``mask`` is True.
    variance : ndarray or None
        Propagated variance (None when no variance was given); NaN where
        ``mask`` is True. Neighbouring pixels are correlated after the
        convolution: this is the variance of each pixel alone.
    mask : ndarray of bool
        True where the output is not valid: within the kernel footprint of a
        masked or non-finite input pixel, or within a kernel half-width of
        the image edge.
    variance_error : float
        Bound on the relative over-estimate of ``variance`` where the input
        variance is uniform under the kernel footprint: 0 when the variance
        was propagated exactly, otherwise at most the ``variance_tolerance``
        of the call (see `convolve_spatially_varying`).
    """

    data: np.ndarray
    variance: np.ndarray | None
    mask: np.ndarray
    variance_error: float = 0.0


def _compute_dtype(array, name):
    """float32 for float16/float32 input, float64 for other real numbers."""
    kind = array.dtype.kind
    if kind == "f" and array.dtype.itemsize <= 4:
        return np.dtype(np.float32)
    if kind in "biuf":
        return np.dtype(np.float64)
    msg = f"{name} must hold real numbers, got dtype {array.dtype}"
    raise InvalidTypeError(msg)


def _squared_monomials(exponents, images):
    """Monomial form of the squared kernel.

    With ``K = sum_n m_n G_n`` (pixel by pixel), ``K**2 = sum_{n,m} m_n m_m G_n G_m``;
    products with the same total powers are summed. Returns
    ``(exponents2, images2)`` with every monomial of total degree <= twice the
    largest degree of ``exponents`` (15 for spatial order 2).
    """
    order = int(exponents.sum(axis=1).max())
    exponents2 = spatial_exponents(2 * order)
    index = {tuple(e): q for q, e in enumerate(exponents2.tolist())}
    images2 = np.zeros((len(exponents2), *images.shape[1:]))
    for n in range(len(exponents)):
        for m in range(n, len(exponents)):
            q = index[(int(exponents[n, 0] + exponents[m, 0]),
                       int(exponents[n, 1] + exponents[m, 1]))]
            images2[q] += (1.0 if n == m else 2.0) * images[n] * images[m]
    return exponents2, images2


def _spectra(images, length, dtype):
    """2-D real FFTs of K x K images zero-padded to ``length`` x ``length``.

    Only the K non-zero rows are transformed along x, then the columns along
    y, in place: 0.57 of a full padded ``rfft2`` for K = 21 and ``length`` =
    150. ``images`` (n, K, K) real; returns (n, length, length // 2 + 1).
    """
    images = np.asarray(images, dtype=dtype)
    half_spectra = scipy.fft.rfft(images, n=length, axis=-1, workers=1)
    out = np.zeros((images.shape[0], length, half_spectra.shape[-1]), dtype=half_spectra.dtype)
    out[:, :images.shape[-2]] = half_spectra
    return scipy.fft.fft(out, axis=-2, overwrite_x=True, workers=1)


@dataclass
class _Plane:
    """How one image (data or variance) is convolved over one region of the output.

    The region's output is ``sum_g column_weights[g](x) sum_{n: group[n] == g}
    row_weights[n](y) (image * kernel_n)(x, y)``; the spectrum of kernel
    image n at the tile FFT size is ``banks[bank[n]][index[n]]``, where
    ``banks`` is the tuple of spectrum arrays passed with the planes. The
    weights are given for the region's rows and columns only.
    """

    bank: list
    index: list
    row_weights: np.ndarray
    group: np.ndarray
    column_weights: np.ndarray


@dataclass(frozen=True)
class _Region:
    """Output pixels ``y0 .. y1 - 1``, ``x0 .. x1 - 1`` convolved with the same planes."""

    y0: int
    y1: int
    x0: int
    x1: int


def _group_by_power(exponents, x_weights, y_weights):
    """Monomials ``xl**a yl**b`` as a plane's weights: rows ``yl**b``, groups by ``a``."""
    x_powers, group = np.unique(exponents[:, 0], return_inverse=True)
    row_weights = y_weights[None, :] ** exponents[:, 1:2]
    column_weights = x_weights[None, :] ** x_powers[:, None]
    return row_weights, group.ravel(), column_weights


class _Convolver(abc.ABC):
    """Tiled overlap-save FFT convolution of one or two images with a spatially varying kernel.

    The output is cut into regions where the kernel is one polynomial (the
    whole image for a polynomial model; each cell between node lines for the
    bilinear model), and each region into tiles of at most ``step`` x
    ``step`` output pixels, each convolved with one FFT of ``length`` x
    ``length`` pixels per image (`run_tile`). Subclasses say which regions
    there are, their planes and the units of work of the threads.
    """

    def __init__(self, sources, outputs, bad, half, dtype, length):
        self.sources = sources
        self.outputs = outputs
        self.bad = bad
        self.half = half
        self.shape = sources[0].shape
        self.dtype = np.dtype(dtype)
        self.complex_dtype = np.result_type(self.dtype, np.complex64)
        self.length = length
        self.step = length - 2 * half
        self.variance = len(sources) > 1
        self.variance_error = 0.0  # bound of the interpolated squared kernel (0: exact)

    def tiles(self, region):
        """Output tiles ``(y0, x0, rows, cols)`` of one region."""
        step = self.step
        return [(y0, x0, min(step, region.y1 - y0), min(step, region.x1 - x0))
                for y0 in range(region.y0, region.y1, step)
                for x0 in range(region.x0, region.x1, step)]

    def workspace(self):
        """Per-thread scratch arrays (grown when needed)."""
        n_freq = self.length // 2 + 1
        return {"buffer": np.empty((self.length, self.length), dtype=self.dtype),
                "products": np.empty((0, self.length, n_freq), dtype=self.complex_dtype),
                "grouped": np.empty((0, self.step, n_freq), dtype=self.complex_dtype)}

    def _scratch(self, work, key, n):
        """The first ``n`` planes of a scratch array of the workspace, grown when needed."""
        if work[key].shape[0] < n:
            work[key] = np.empty((n, *work[key].shape[1:]), dtype=self.complex_dtype)
        return work[key][:n]

    def run_tile(self, tile, region, planes, banks, work):
        """Convolve one tile of every image with its plane; write the outputs."""
        y0, x0, rows, cols = tile
        half, (n_y, n_x), length = self.half, self.shape, self.length
        r0, c0 = y0 - half, x0 - half
        r1, c1 = min(r0 + length, n_y), min(c0 + length, n_x)
        buffer = work["buffer"]
        window = buffer[:r1 - r0, :c1 - c0]
        bad = None if self.bad is None else self.bad[r0:r1, c0:c1]
        for plane, source, output in zip(planes, self.sources, self.outputs, strict=True):
            if window.shape != buffer.shape:
                buffer[...] = 0.0
            np.copyto(window, source[r0:r1, c0:c1])
            if bad is not None:
                np.copyto(window, 0.0, where=bad)
            spectrum = scipy.fft.rfft2(buffer, workers=1)
            products = self._scratch(work, "products", len(plane.bank))
            for n, (b, k) in enumerate(zip(plane.bank, plane.index, strict=True)):
                np.multiply(spectrum, banks[b][k], out=products[n])
            products = scipy.fft.ifft(products, axis=1, overwrite_x=True, workers=1)
            grouped = self._scratch(work, "grouped", plane.column_weights.shape[0])
            weighted_sum_rows(products.view(self.dtype), 2 * half, plane.row_weights,
                              y0 - region.y0, rows, plane.group, grouped.view(self.dtype))
            columns = scipy.fft.irfft(grouped[:, :rows], n=length, axis=2, workers=1)
            weighted_sum_columns(columns, 2 * half, plane.column_weights, x0 - region.x0,
                                 output, y0, x0, cols)

    @abc.abstractmethod
    def units(self, workers):
        """Units of work of ``workers`` threads (see `run_unit`)."""

    @abc.abstractmethod
    def run_unit(self, unit, work):
        """Convolve one unit of work."""

    def run(self, workers, extra=None):
        """Convolve every tile with ``workers`` threads; ``extra()`` runs alongside."""
        units = self.units(workers)
        workers = min(workers, len(units))  # more threads than units of work would idle
        if workers == 1:
            if extra is not None:
                extra()
            work = self.workspace()
            for unit in units:
                self.run_unit(unit, work)
            return
        lock = threading.Lock()
        pending = iter(units)

        def loop():
            work = self.workspace()
            while True:
                with lock:
                    unit = next(pending, None)
                if unit is None:
                    return
                self.run_unit(unit, work)

        with ThreadPoolExecutor(max_workers=workers) as executor:
            futures = [] if extra is None else [executor.submit(extra)]
            futures += [executor.submit(loop) for _ in range(workers)]
            for future in futures:
                future.result()


def _tile_length(longest, half):
    """FFT length of the tiles: about _FFT_LENGTH, no longer than ``longest`` pixels need."""
    target = max(_FFT_LENGTH, 4 * (2 * half + 1)) - 2 * half
    return scipy.fft.next_fast_len(min(target, longest) + 2 * half, real=True)


class _PolynomialConvolver(_Convolver):
    """A polynomial kernel: one region, monomial spectra computed once; the tiles are the units."""

    def __init__(self, sources, outputs, bad, half, dtype, kernel, kernel_sum):
        shape = sources[0].shape
        self.region = _Region(half, shape[0] - half, half, shape[1] - half)
        longest = max(self.region.y1 - self.region.y0, self.region.x1 - self.region.x0)
        super().__init__(sources, outputs, bad, half, dtype, _tile_length(longest, half))
        (piece,) = kernel.pieces(shape)
        images = piece.images / kernel_sum
        region = self.region
        xl = piece.xl[region.x0:region.x1]
        yl = piece.yl[region.y0:region.y1]
        planes = [(piece.exponents, images)]
        if self.variance:
            planes.append(_squared_monomials(piece.exponents, images))
        self.planes, spectra = [], []
        for k, (exponents, plane_images) in enumerate(planes):
            keep = np.flatnonzero(np.any(plane_images != 0, axis=(1, 2)))
            if keep.size == 0:  # a zero kernel: keep one (zero) monomial
                keep = np.array([0])
            rows, group, columns = _group_by_power(exponents[keep], xl, yl)
            self.planes.append(_Plane([k] * keep.size, list(range(keep.size)),
                                      np.ascontiguousarray(rows, dtype=self.dtype),
                                      group.astype(np.int64),
                                      np.ascontiguousarray(columns, dtype=self.dtype)))
            spectra.append(_spectra(plane_images[keep], self.length, self.dtype))
        self.banks = tuple(spectra)

    def units(self, workers):
        return self.tiles(self.region)

    def run_unit(self, unit, work):
        self.run_tile(unit, self.region, self.planes, self.banks, work)


def _clipped_intervals(nodes, size, half):
    """`node_intervals` cut to the output pixels with a complete kernel (non-empty ones)."""
    out = []
    for start, stop, low, high in node_intervals(nodes, size):
        start, stop = max(start, half), min(stop, size - half)
        if stop > start:
            out.append((start, stop, low, high))
    return out


def _local(nodes, start, stop, low, high):
    """Local coordinate of pixels ``start .. stop - 1`` between two nodes (None: the same)."""
    if low == high:
        return None
    return (np.arange(start, stop) - nodes[low]) / (nodes[high] - nodes[low])


def _hat_weights(t, n, dtype):
    """Rows ``(1 - t, t)`` (linear) and ``((1 - t)**2, 2 t (1 - t), t**2)`` (squared)
    of a local coordinate, or one row of ones without one: two (m, n) arrays.
    """
    if t is None:
        ones = np.ones((1, n), dtype=dtype)
        return ones, ones
    linear = np.array([1.0 - t, t], dtype=dtype)
    quadratic = np.array([(1.0 - t) ** 2, 2.0 * t * (1.0 - t), t**2], dtype=dtype)
    return linear, quadratic


# The banks of a cell row of the bilinear model, in the tuple passed to run_tile:
# the node kernels, their squares and the products of neighbours along the bottom node row,
# the same along the top node row, then the products of the two rows: same column, cross.
_KERNELS, _SQUARES, _PRODUCTS = 0, 1, 2
_TOP = 3
_VERTICAL, _CROSS = 6, 7


def _cell_layout(x_nodes, x_squares, two_rows):
    """Bank, index and group of each spectrum of a cell (data, exact variance,
    interpolated variance), and the row-weight function of each (0, 1: linear
    ``1 - v, v``; 0, 1, 2: squared).
    """
    row_banks = [0, _TOP] if two_rows else [0]
    data = [(base + _KERNELS, k, g, q) for g, k in enumerate(x_nodes)
            for q, base in enumerate(row_banks)]
    # the node squares with the data's weights: sum_s w_s K_s**2
    interpolated = [(bank - _KERNELS + _SQUARES, k, g, q) for bank, k, g, q in data]
    variance = []
    for g, (kind, k) in enumerate(x_squares):
        # along y: the bottom row's square, the two rows' product, the top row's square
        if not two_rows:
            y_banks = [_SQUARES if kind == "square" else _PRODUCTS]
        elif kind == "square":
            y_banks = [_SQUARES, _VERTICAL, _TOP + _SQUARES]
        else:
            y_banks = [_PRODUCTS, _CROSS, _TOP + _PRODUCTS]
        variance += [(b, k, g, q) for q, b in enumerate(y_banks)]
    layouts = []
    for items in (data, variance, interpolated):
        bank, index, group, which = zip(*items, strict=True)
        layouts.append((list(bank), list(index), np.array(group, dtype=np.int64),
                        np.array(which)))
    return layouts


#: Points per side of the grid of local coordinates on which the error of the
#: interpolated squared kernel is evaluated in each cell.
_ERROR_GRID = 33


def _interpolation_errors(images, n_columns, y_intervals, x_intervals):
    r"""Relative error of the interpolated squared kernel in each cell, for a flat variance.

    In a cell with corner kernels :math:`K_s` and bilinear weights :math:`w_s`,
    :math:`\sum_s w_s K_s^2 - K^2 = \sum_s w_s (K_s - K)^2 \geq 0` pixel by
    pixel, so its sum over the kernel relative to :math:`\sum K^2` is
    :math:`r = \sum_s w_s G_{ss} / w^T G w - 1` with the Gram matrix
    :math:`G_{st} = \langle K_s, K_t \rangle` of the corners. Returns the
    largest ``r`` over a `_ERROR_GRID` x `_ERROR_GRID` grid of the cell,
    shape (len(y_intervals), len(x_intervals)); inf for a zero kernel.
    """
    flat = images.reshape(images.shape[0], -1).astype(np.float64, copy=False)
    corners = np.array([[(bottom, low), (bottom, high), (top, low), (top, high)]
                        for _, _, bottom, top in y_intervals
                        for _, _, low, high in x_intervals])
    index = corners[..., 0] * n_columns + corners[..., 1]
    stacked = flat[index]                                   # (cells, 4, pixels)
    gram = stacked @ stacked.transpose(0, 2, 1)            # (cells, 4, 4)
    t = np.linspace(0.0, 1.0, _ERROR_GRID)
    u, v = (a.ravel() for a in np.meshgrid(t, t))
    weights = np.stack([(1 - u) * (1 - v), u * (1 - v), (1 - u) * v, u * v], axis=1)
    mean_square = np.diagonal(gram, axis1=1, axis2=2) @ weights.T      # (cells, points)
    square = np.sum((gram @ weights.T) * weights.T, axis=1)          # w^T G w
    with np.errstate(divide="ignore", invalid="ignore"):
        errors = np.where(square > 0, mean_square / square - 1.0, np.inf)
    return errors.max(axis=1).reshape(len(y_intervals), len(x_intervals))


class _SharedRows:
    """Node-row spectra computed once, by the first thread that needs them, and dropped
    when every cell row that uses them is done.
    """

    def __init__(self, compute, users):
        self.compute = compute
        self.users = users
        self.entries = {}
        self.lock = threading.Lock()

    def get(self, row):
        with self.lock:
            entry = self.entries.get(row)
            owner = entry is None
            if owner:
                entry = self.entries[row] = {"ready": threading.Event()}
        if owner:
            try:
                entry["value"] = self.compute(row)
            except BaseException as exc:
                entry["error"] = exc
                raise
            finally:
                entry["ready"].set()
        entry["ready"].wait()
        if "error" in entry:
            raise entry["error"]
        return entry["value"]

    def release(self, row):
        with self.lock:
            self.users[row] -= 1
            if self.users[row] == 0:
                self.entries.pop(row, None)


class _BilinearConvolver(_Convolver):
    r"""A bilinear node kernel: one region per cell between node lines, node spectra shared.

    In a cell with corner nodes :math:`s` and local coordinates ``u, v``,
    :math:`K = \sum_s w_s K_s` with the hat weights :math:`w_s` (``(1-u)(1-v)``,
    ...), so the data's output is :math:`\sum_s w_s(x, y)\,(D \circledast K_s)`:
    the four node kernels' spectra, each computed once per node and shared by
    the cells around it, rows weighted by ``1-v`` or ``v`` and grouped by
    node column, columns by ``1-u`` or ``u``. The squared kernel is
    :math:`K^2 = \sum_{s,t} w_s w_t K_s K_t = \sum_{p,q} A_p(u) B_q(v) Q_{pq}`
    with the degree-2 Bernstein weights ``(1-t)^2, 2t(1-t), t^2`` and nine
    images: the node squares :math:`K_s^2` (shared by four cells), the
    products of neighbouring nodes along a node line (shared by two cells),
    and one cross product :math:`(K_{00} K_{11} + K_{10} K_{01}) / 2` per
    cell: four new spectra per cell instead of nine. Both are exact.

    With ``variance_tolerance`` > 0 a cell where it is accurate enough uses
    the interpolated square :math:`\sum_s w_s K_s^2` instead, with the data's
    weights and the node squares' spectra only: as cheap as the data. It
    exceeds :math:`K^2` by :math:`\sum_s w_s (K_s - K)^2 \geq 0` pixel by
    pixel (the variance is over-estimated, never under-), by at most
    ``variance_tolerance`` of :math:`\sum K^2` (`_interpolation_errors`).

    The units of work are the cell rows; the spectra of a node row are
    computed once (`_SharedRows`) and kept while a cell row uses them.
    """

    def __init__(self, sources, outputs, bad, half, dtype, kernel, kernel_sum,
                 variance_tolerance=0.0):
        shape = sources[0].shape
        self.nodes_x, self.nodes_y = (np.asarray(n, dtype=np.float64) for n in kernel.nodes)
        self.x_intervals = _clipped_intervals(self.nodes_x, shape[1], half)
        self.y_intervals = _clipped_intervals(self.nodes_y, shape[0], half)
        longest = max(max(b - a for a, b, _, _ in self.x_intervals),
                      max(b - a for a, b, _, _ in self.y_intervals))
        super().__init__(sources, outputs, bad, half, dtype, _tile_length(longest, half))
        self.images = kernel.term_images / kernel_sum
        self.columns = sorted({c for _, _, low, high in self.x_intervals for c in (low, high)})
        self.pairs = [(low, high) for _, _, low, high in self.x_intervals if low != high]
        column = {c: k for k, c in enumerate(self.columns)}
        pair = {p: k for k, p in enumerate(self.pairs)}
        # per cell column: its x weights and the layout of its spectra (one or two node rows)
        self.cell_columns = []
        for start, stop, low, high in self.x_intervals:
            weights = _hat_weights(_local(self.nodes_x, start, stop, low, high), stop - start,
                                   self.dtype)
            x_nodes = [column[low]] if low == high else [column[low], column[high]]
            x_squares = [("square", column[low])]
            if low != high:
                x_squares += [("product", pair[(low, high)]), ("square", column[high])]
            layouts = {two: _cell_layout(x_nodes, x_squares, two) for two in (False, True)}
            self.cell_columns.append((weights, layouts))
        # cells whose squared kernel is interpolated (True) or exact (False)
        self.interpolated = np.zeros((len(self.y_intervals), len(self.x_intervals)), dtype=bool)
        self.variance_error = 0.0
        if self.variance and variance_tolerance > 0:
            errors = _interpolation_errors(self.images, self.nodes_x.size, self.y_intervals,
                                           self.x_intervals)
            self.interpolated = errors <= variance_tolerance
            if self.interpolated.any():
                self.variance_error = float(errors[self.interpolated].max())
        self.empty = np.zeros((0, self.length, self.length // 2 + 1), dtype=self.complex_dtype)
        # the spectra that only exact cells use, per cell row: the pairs (products along
        # a node line, cross products) and node columns (products across node lines)
        self.exact_pairs, self.exact_columns = [], []
        for row in self.interpolated:
            cells = [self.x_intervals[c] for c in np.flatnonzero(~row)]
            self.exact_pairs.append({pair[(low, high)] for _, _, low, high in cells
                                     if low != high})
            self.exact_columns.append({column[c] for _, _, low, high in cells
                                       for c in (low, high)})
        self.row_pairs = {}  # per node row: the pairs of the exact cells next to it
        users = {}
        for cell_row, (_, _, bottom, top) in enumerate(self.y_intervals):
            for row in {bottom, top}:
                users[row] = users.get(row, 0) + 1
                self.row_pairs.setdefault(row, set()).update(self.exact_pairs[cell_row])
        self.rows = _SharedRows(self.node_row, users)

    def _node(self, row, column):
        return self.images[row * self.nodes_x.size + column]

    def _sparse_spectra(self, images, count):
        """Spectra of ``count`` images, of which only ``images`` ({index: image}) are
        needed: the others are left zero (no cell uses them).
        """
        out = np.zeros((count, self.length, self.length // 2 + 1), dtype=self.complex_dtype)
        if images:
            out[list(images)] = _spectra(np.stack(list(images.values())), self.length,
                                         self.dtype)
        return out

    def node_row(self, row):
        """Spectra of one node row: the kernels, their squares and neighbours' products
        (those of the exact cells next to it).
        """
        kernels = np.stack([self._node(row, c) for c in self.columns])
        if not self.variance:
            return (_spectra(kernels, self.length, self.dtype), self.empty, self.empty)
        spectra = _spectra(np.concatenate([kernels, kernels**2]), self.length, self.dtype)
        n = len(self.columns)
        products = self._sparse_spectra(
            {k: self._node(row, self.pairs[k][0]) * self._node(row, self.pairs[k][1])
             for k in sorted(self.row_pairs[row])}, len(self.pairs))
        return spectra[:n], spectra[n:], products

    def between(self, cell_row, bottom, top):
        """Spectra of the products of two node rows that the exact cells of a cell row use:
        same column, and the cells' cross products.
        """
        vertical = self._sparse_spectra(
            {k: self._node(bottom, c) * self._node(top, c)
             for k, c in enumerate(self.columns) if k in self.exact_columns[cell_row]},
            len(self.columns))
        cross = self._sparse_spectra(
            {k: 0.5 * (self._node(bottom, low) * self._node(top, high)
                       + self._node(bottom, high) * self._node(top, low))
             for k, (low, high) in enumerate(self.pairs) if k in self.exact_pairs[cell_row]},
            len(self.pairs))
        return vertical, cross

    def units(self, workers):
        """The cell rows, in order, with their index."""
        return list(enumerate(self.y_intervals))

    def run_unit(self, unit, work):
        cell_row, (y0, y1, bottom, top) = unit
        two_rows = bottom != top
        node_rows = [bottom, top] if two_rows else [bottom]
        try:
            spectra = [self.rows.get(row) for row in node_rows]
            vertical = cross = self.empty
            if self.variance and two_rows and not self.interpolated[cell_row].all():
                vertical, cross = self.between(cell_row, bottom, top)
            banks = (*spectra[0], *spectra[-1], vertical, cross)
            linear_y, quadratic_y = _hat_weights(_local(self.nodes_y, y0, y1, bottom, top),
                                                 y1 - y0, self.dtype)
            for cell_column, (x0, x1, _, _) in enumerate(self.x_intervals):
                (linear_x, quadratic_x), layouts = self.cell_columns[cell_column]
                data, exact, interpolated = layouts[two_rows]
                weights = [(data, linear_y, linear_x)]
                if self.interpolated[cell_row, cell_column]:
                    weights.append((interpolated, linear_y, linear_x))
                else:
                    weights.append((exact, quadratic_y, quadratic_x))
                planes = [_Plane(bank, index, np.ascontiguousarray(y_weights[which]), group,
                                 x_weights)
                          for (bank, index, group, which), y_weights, x_weights in weights]
                region = _Region(y0, y1, x0, x1)
                for tile in self.tiles(region):
                    self.run_tile(tile, region, planes[:len(self.sources)], banks, work)
        finally:
            for row in node_rows:
                self.rows.release(row)


def convolve_spatially_varying(data, kernel, *, variance=None, mask=None, normalize=True,
                               variance_tolerance=_REFERENCE.variance_tolerance,
                               workers=None):
    r"""Convolve an image with a spatially varying kernel, exactly.

    With the kernel written as monomials of the normalized coordinates,
    :math:`K(x, y) = \sum_n x_n^{a_n} y_n^{b_n} G_n`, the output is

    .. math::

        D'(x, y) = \frac{1}{S} \sum_n x_n^{a_n} y_n^{b_n}\, (D \circledast G_n)(x, y)
                 = \frac{1}{S} \sum_{j,i} K_{(x,y)}[j, i]\, D[y + h - j, x + h - i],

    the exact convolution with the kernel of each output pixel (no
    interpolation of kernel images), where :math:`S` is the kernel sum
    (``normalize=True``; flux is conserved) or 1, and :math:`h = K // 2`.
    The variance is propagated exactly with the squared kernel,

    .. math::

        V'(x, y) = \frac{1}{S^2} \sum_{j,i} K_{(x,y)}[j, i]^2\, V[y + h - j, x + h - i],

    using :math:`K^2 = \sum_{n,m} x_n^{a_n + a_m} y_n^{b_n + b_m} G_n G_m`
    regrouped by monomial (15 monomial images for spatial order 2). The
    output noise is correlated between neighbouring pixels; ``variance`` is
    the variance of each pixel alone. For the bilinear node model, cells
    where it is accurate to ``variance_tolerance`` use the interpolated
    squared kernel :math:`\sum_s w_s K_s^2` of the four corner nodes
    :math:`K_s` (hat weights :math:`w_s`) instead of :math:`K^2`, as cheap
    as the data: it is never smaller than :math:`K^2`, and exceeds it by at
    most ``variance_tolerance`` of :math:`\sum K^2` (see Notes).

    Parameters
    ----------
    data : array_like, shape (ny, nx)
        Image (float32 stays float32; every other real type gives float64).
        Big-endian, read-only and non-contiguous arrays are accepted; the
        inputs are never modified.
    kernel : `~astropsfmatch.SpatialKernel`
        Kernel; ``kernel.evaluate(x, y)`` is the kernel at column ``x``, row ``y``.
    variance : array_like, shape (ny, nx), optional
        Variance of ``data``.
    mask : array_like of bool, shape (ny, nx), optional
        True for bad input pixels.
    normalize : bool, optional
        Divide by the kernel sum, so that flux is conserved (default).
    variance_tolerance : float, optional
        Largest relative error (>= 0) of the propagated variance allowed
        where the input variance is uniform under the kernel (the sky-limited
        case), for the bilinear node model. Default 1e-4; 0 propagates the
        variance exactly everywhere (about 1.5 times slower with variance).
        The polynomial models always propagate it exactly.
    workers : int, optional
        Number of threads (tiles convolved at once, and FFT workers);
        default all the CPUs this process may use.

    Returns
    -------
    result : `ConvolvedImage`
        ``data``, ``variance`` (None without input variance) and ``mask``.
        An output pixel is masked — and NaN in ``data`` and ``variance`` —
        when any input pixel under its kernel footprint is masked or
        non-finite (in ``data`` or ``variance``), and within ``h`` pixels of
        the image edge, where the kernel is incomplete. Bad input values are
        replaced by zero before convolving, so they never spread beyond
        their footprint.

    Raises
    ------
    ValueError
        If ``kernel`` is not a `~astropsfmatch.SpatialKernel`, ``data`` is not
        2-D or not real, the image is smaller than the kernel, ``variance`` or
        ``mask`` does not have the shape of ``data``, ``normalize`` is True
        with a kernel sum of zero, or ``workers`` is not a positive integer.

    Notes
    -----
    The image is cut into tiles of about 256 x 256 pixels (overlap-save),
    processed by ``workers`` threads: one forward FFT per tile and plane,
    then for each monomial a product with the kernel spectrum and an inverse
    FFT along y; the rows are weighted by :math:`y_n^{b}` and summed over the
    monomials that share a power of x, so that one inverse FFT along x per
    power of x suffices, followed by the weights :math:`x_n^{a}`. For spatial
    order 2 that is 6 + 3 one-dimensional inverse passes for the data and
    15 + 5 for the variance.

    The interpolated squared kernel over-estimates the variance by
    :math:`\Delta V'(x, y) = \sum_j E_j V_j \geq 0` with
    :math:`E = \sum_s w_s (K_s - K)^2`; in each cell the largest
    :math:`\sum E / \sum K^2` (on a 33 x 33 grid of the cell, from the Gram
    matrix of its corner kernels) must be at most ``variance_tolerance``, or
    the cell is propagated exactly. So :math:`0 \leq \Delta V' / V' \leq`
    ``variance_tolerance`` where ``V`` is uniform under the kernel, and
    :math:`\Delta V' \leq` ``variance_tolerance`` :math:`\sum K^2 \max V`
    everywhere (max over the footprint). ``result.variance_error`` is the
    largest such ratio of the cells that were interpolated.

    Accuracy: float64 input is computed in double precision and agrees with
    a direct per-pixel sum to ~1e-15 relative. float32 input uses
    single-precision FFTs: absolute errors are ~3e-7 of the largest value
    in the same tile (measured on 4096 x 4096 star fields, against the
    float64 path), far below the noise of any float32 image. The variance
    is exact (no approximation) to the same precision.

    Examples
    --------
    >>> import numpy as np
    >>> from astropsfmatch import (SpatialKernel, convolve_spatially_varying,
    ...                            make_alard_lupton_basis)
    >>> basis = make_alard_lupton_basis(5, [1.0], [1])
    >>> coefficients = [[1.0, 0.0, 0.0], [0.0, 0.2, 0.0], [0.0, 0.0, 0.1]]
    >>> kernel = SpatialKernel(basis, coefficients, spatial_model='chebyshev1',
    ...                        spatial_order=1, bbox=(0, 39, 0, 39))
    >>> image = np.ones((40, 40), dtype=np.float32)
    >>> result = convolve_spatially_varying(image, kernel, variance=image)
    >>> result.data.dtype, int(result.mask.sum())
    (dtype('float32'), 304)
    >>> bool(np.allclose(result.data[~result.mask], 1.0, atol=1e-6))
    True
    """
    inputs = check_convolution_inputs(data, kernel, variance, mask, normalize)
    variance_tolerance = real(ge=0)("variance_tolerance", variance_tolerance)
    with thread_scope(workers) as n_threads:
        return convolve_checked(*inputs, n_threads=n_threads,
                                variance_tolerance=variance_tolerance)


#: Values above the dtype's largest over this factor are scaled down before the FFTs:
#: a tile's spectrum sums ~2**16 pixels times the kernel.
_FFT_HEADROOM = 2.0**30


def _overflow_exponent(values, good):
    """0, or the power of two to divide ``values`` by so that the FFTs cannot overflow."""
    limit = float(np.finfo(values.dtype).max) / _FFT_HEADROOM
    where = True if good is None else good
    # the largest and smallest, not max(abs()): no temporary copy of the image
    largest = max(abs(float(np.max(values, where=where, initial=-np.inf))),
                  abs(float(np.min(values, where=where, initial=np.inf))))
    if not largest > limit or not np.isfinite(largest):
        return 0
    return int(np.frexp(largest)[1])


def check_convolution_inputs(data, kernel, variance, mask, normalize):
    """Validate the inputs: ``(data, kernel, variance, mask, kernel_sum, dtype)``."""
    if not isinstance(kernel, SpatialKernel):
        msg = f"kernel must be a SpatialKernel, got {type(kernel).__name__}"
        raise ValueError(msg)
    data = np.asarray(data)
    if data.ndim != 2:
        msg = f"data must be a 2-D array, got {data.ndim} dimension(s) (shape {data.shape})"
        raise ValueError(msg)
    dtype = _compute_dtype(data, "data")
    size = kernel.kernel_size
    if data.shape[0] < size or data.shape[1] < size:
        msg = (f"data of shape {data.shape} is smaller than the {size} x {size} kernel: "
               "no output pixel would have a complete kernel")
        raise ValueError(msg)
    if variance is not None:
        variance = same_shape("variance", variance, data.shape, of="data")
        _compute_dtype(variance, "variance")
    if mask is not None:
        mask = same_shape("mask", mask, data.shape, of="data").astype(bool, copy=False)
    kernel_sum = kernel.kernel_sum if normalize else 1.0
    if not (np.isfinite(kernel_sum) and kernel_sum != 0):
        msg = (f"normalize=True needs a finite non-zero kernel sum, got {kernel_sum}; "
               "use normalize=False")
        raise ValueError(msg)
    return data, kernel, variance, mask, kernel_sum, dtype


def convolve_checked(data, kernel, variance, mask, kernel_sum, dtype, *, n_threads,
                     variance_tolerance):
    """The convolution on inputs that `check_convolution_inputs` has validated.

    For callers that hold a thread scope already (the matcher):
    ``n_threads`` tiles are convolved at once; ``variance_tolerance`` as in
    `convolve_spatially_varying` (checked by the caller).
    """
    shape, half = data.shape, kernel.kernel_size // 2
    # one dtype per call, native and contiguous (a copy only for other inputs)
    data = np.ascontiguousarray(data, dtype=dtype)
    if variance is not None:
        variance = np.ascontiguousarray(variance, dtype=dtype)
    good = np.isfinite(data)
    if variance is not None:
        np.logical_and(good, np.isfinite(variance), out=good)
    if mask is not None:
        np.logical_and(good, ~mask, out=good)
    bad = np.logical_not(good, out=good) if not good.all() else None

    sources = [data] if variance is None else [data, variance]
    # values so large that the FFT sums would overflow are convolved scaled by a power
    # of two (exact), then scaled back
    exponents = [_overflow_exponent(source, None if bad is None else ~bad)
                 for source in sources]
    sources = [source if e == 0 else np.ldexp(source, -e).astype(dtype, copy=False)
               for source, e in zip(sources, exponents, strict=True)]
    outputs = [np.empty(shape, dtype=dtype) for _ in sources]
    out_mask = np.zeros(shape, dtype=bool)
    extra = None if bad is None else (lambda: dilate_box(bad, half, out_mask))
    if kernel.nodes is None:
        convolver = _PolynomialConvolver(sources, outputs, bad, half, dtype, kernel, kernel_sum)
    else:
        convolver = _BilinearConvolver(sources, outputs, bad, half, dtype, kernel, kernel_sum,
                                       variance_tolerance)
    convolver.run(n_threads, extra)

    for output, e in zip(outputs, exponents, strict=True):
        if e:
            with np.errstate(over="ignore"):  # a result beyond the dtype is inf, as it is
                np.copyto(output, np.ldexp(output, e), casting="unsafe")
    if bad is not None:
        for output in outputs:
            np.copyto(output, np.nan, where=out_mask)
    for edge in (np.s_[:half, :], np.s_[shape[0] - half:, :],
                 np.s_[:, :half], np.s_[:, shape[1] - half:]):
        out_mask[edge] = True
        for output in outputs:
            output[edge] = np.nan
    return ConvolvedImage(outputs[0], None if variance is None else outputs[1], out_mask,
                          convolver.variance_error)
