"""The spatially varying PSF-matching kernel: `SpatialKernel`."""

import os
import warnings
from dataclasses import dataclass

import numpy as np
from astropy.io import fits

from .._validate import InvalidTypeError
from .spatial import (
    POLYNOMIAL_MODELS,
    SPATIAL_MODELS,
    bilinear_terms,
    check_nodes,
    monomial_matrix,
    n_spatial_terms,
    node_intervals,
    normalize_coordinates,
    spatial_exponents,
    spatial_terms,
)

# the public names of this module, re-exported by astropsfmatch/__init__.py
__all__ = ["SpatialKernel"]

_FORMAT_NAME = "ASTROPSFMATCH-KERNEL"
#: 1: polynomial models only (astropsfmatch 0.1); 2: adds the bilinear node model.
_FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)

#: Relative agreement required between the sums of the node kernels of a bilinear model.
_SUM_TOLERANCE = 1e-8


@dataclass(frozen=True)
class KernelPiece:
    """A region of the image where the kernel is one polynomial in local coordinates.

    ``K(x, y) = sum_n xl(x)**a_n * yl(y)**b_n * images[n]`` for the output
    pixels ``x0 <= x < x1``, ``y0 <= y < y1``; ``xl`` and ``yl`` are given for
    every column and row of the image (only the piece's are used).
    """

    x0: int
    x1: int
    y0: int
    y1: int
    xl: np.ndarray
    yl: np.ndarray
    exponents: np.ndarray
    images: np.ndarray


class SpatialKernel:
    r"""A convolution kernel that varies across an image.

    The kernel at pixel ``(x, y)`` is a linear combination of fixed basis
    images whose coefficients are functions of position:

    .. math::

        K(x, y) = \sum_i \sum_t a_{i,t}\, f_t(x, y)\, B_i = \sum_t f_t(x, y)\, K_t ,

    with one of two spatial models:

    * ``'chebyshev1'`` or ``'polynomial'`` (the reference pipeline's): the
      :math:`f_t` are Chebyshev (first kind) or plain polynomial terms of
      total order ``spatial_order`` in the coordinates normalized to [-1, 1]
      over ``bbox``;
    * ``'bilinear'``: the :math:`f_t` are the bilinear interpolation weights
      of the nodes at ``nodes = (nodes_x, nodes_y)`` (one term per node, row by
      row), constant beyond the outermost node lines; :math:`K_t` is the
      kernel solved at node :math:`t`.

    The first basis image sums to one and every other sums to zero, and the
    kernel sums to `kernel_sum` everywhere.

    Parameters
    ----------
    basis : array_like, shape (n_basis, K, K)
        Basis images (K odd, finite).
    coefficients : array_like, shape (n_basis, n_terms)
        Spatial coefficients of each basis image (finite). For the bilinear
        model ``(n_basis, n_y, n_x)`` is accepted too.
    spatial_model : {'chebyshev1', 'polynomial', 'bilinear'}
        Kind of spatial terms.
    spatial_order : int, optional
        Total degree of the polynomial terms (required for the polynomial
        models).
    bbox : tuple of float, optional
        ``(xmin, xmax, ymin, ymax)``: pixel coordinates mapped to -1 and +1
        (required for the polynomial models).
    nodes : tuple of array_like, optional
        ``(nodes_x, nodes_y)``: strictly increasing node positions in pixels
        (required for the bilinear model).

    Raises
    ------
    ValueError
        Shapes that do not fit, non-finite values, a missing or extra
        description of the spatial model, or node kernels of different sums.

    Examples
    --------
    >>> import numpy as np
    >>> from astropsfmatch import SpatialKernel, make_alard_lupton_basis
    >>> basis = make_alard_lupton_basis(7, [1.0], [0])
    >>> kernel = SpatialKernel(basis, [[1.0]], spatial_model='chebyshev1',
    ...                        spatial_order=0, bbox=(0, 99, 0, 99))
    >>> round(float(kernel.evaluate(50, 50).sum()), 6)
    1.0
    >>> nodes = SpatialKernel(basis, [[1.0, 1.0]], spatial_model='bilinear',
    ...                       nodes=([0.0, 99.0], [50.0]))
    >>> nodes.n_terms, round(float(nodes.evaluate(30, 10).sum()), 6)
    (2, 1.0)
    """

    def __init__(self, basis, coefficients, *, spatial_model, spatial_order=None, bbox=None,
                 nodes=None):
        basis = np.array(basis, dtype=np.float64)
        coefficients = np.array(coefficients, dtype=np.float64)
        if basis.ndim != 3 or basis.shape[1] != basis.shape[2] or basis.shape[1] % 2 == 0:
            msg = f"basis must have shape (n_basis, K, K) with K odd, got {basis.shape}"
            raise ValueError(msg)
        if spatial_model not in SPATIAL_MODELS:
            msg = f"spatial_model must be one of {SPATIAL_MODELS}, got {spatial_model!r}"
            raise ValueError(msg)
        if spatial_model in POLYNOMIAL_MODELS:
            n_terms = self._init_polynomial(spatial_order, bbox, nodes)
        else:
            n_terms = self._init_bilinear(spatial_order, bbox, nodes)
            if coefficients.ndim == 3:
                coefficients = coefficients.reshape(coefficients.shape[0], -1)
        expected = (basis.shape[0], n_terms)
        if coefficients.shape != expected:
            msg = (f"coefficients must have shape (n_basis, n_terms) = {expected}, "
                   f"got {coefficients.shape}")
            raise ValueError(msg)
        for name, array in (("basis", basis), ("coefficients", coefficients)):
            if not np.all(np.isfinite(array)):
                bad = int(np.count_nonzero(~np.isfinite(array)))
                msg = f"{name} must be finite, got {bad} non-finite value(s)"
                raise ValueError(msg)
        self.spatial_model = spatial_model
        self._basis = basis
        self._coefficients = coefficients
        self._term_images = np.einsum("it,ijk->tjk", coefficients, basis)
        for array in (self._basis, self._coefficients, self._term_images):
            array.flags.writeable = False
        if spatial_model == "bilinear":
            sums = self._term_images.sum(axis=(1, 2))
            if np.ptp(sums) > _SUM_TOLERANCE * max(np.abs(sums).max(), 1e-300):
                msg = (f"the node kernels must all have the same sum, got sums from "
                       f"{sums.min():.6g} to {sums.max():.6g}")
                raise ValueError(msg)

    def _init_polynomial(self, spatial_order, bbox, nodes):
        if nodes is not None:
            msg = "nodes are only used by spatial_model='bilinear'"
            raise ValueError(msg)
        if spatial_order is None or isinstance(spatial_order, bool) or \
                int(spatial_order) != spatial_order or spatial_order < 0:
            msg = f"spatial_order must be an integer >= 0, got {spatial_order!r}"
            raise ValueError(msg)
        if bbox is None:
            msg = "bbox=(xmin, xmax, ymin, ymax) is required by a polynomial spatial model"
            raise ValueError(msg)
        bbox = tuple(float(v) for v in bbox)
        if len(bbox) != 4 or not np.all(np.isfinite(bbox)) or not bbox[1] > bbox[0] \
                or not bbox[3] > bbox[2]:
            msg = f"bbox must be (xmin, xmax, ymin, ymax) with xmax > xmin, ymax > ymin, got {bbox}"
            raise ValueError(msg)
        self.spatial_order = int(spatial_order)
        self.bbox = bbox
        self.nodes = None
        return n_spatial_terms(self.spatial_order)

    def _init_bilinear(self, spatial_order, bbox, nodes):
        if spatial_order is not None or bbox is not None:
            msg = "spatial_order and bbox are only used by the polynomial spatial models"
            raise ValueError(msg)
        if nodes is None or len(nodes) != 2:
            msg = "nodes=(nodes_x, nodes_y) is required by spatial_model='bilinear'"
            raise ValueError(msg)
        nodes_x, nodes_y = check_nodes("nodes_x", nodes[0]), check_nodes("nodes_y", nodes[1])
        nodes_x.flags.writeable = False
        nodes_y.flags.writeable = False
        self.spatial_order = None
        self.bbox = (float(nodes_x[0]), float(nodes_x[-1]), float(nodes_y[0]),
                     float(nodes_y[-1]))
        self.nodes = (nodes_x, nodes_y)
        return nodes_x.size * nodes_y.size

    def __repr__(self):
        if self.nodes is None:
            model = f"spatial_model={self.spatial_model!r} spatial_order={self.spatial_order}"
        else:
            model = f"spatial_model='bilinear' nodes={self.nodes[0].size}x{self.nodes[1].size}"
        return (f"<SpatialKernel size={self.kernel_size} n_basis={self.n_basis} {model} "
                f"kernel_sum={self.kernel_sum:.6g}>")

    @property
    def basis(self):
        """Basis images, shape (n_basis, K, K) (read-only)."""
        return self._basis

    @property
    def coefficients(self):
        """Spatial coefficients, shape (n_basis, n_terms) (read-only)."""
        return self._coefficients

    @property
    def kernel_size(self):
        """Side K of the kernel image."""
        return self._basis.shape[1]

    @property
    def n_basis(self):
        """Number of basis images."""
        return self._basis.shape[0]

    @property
    def n_terms(self):
        """Number of spatial terms (nodes, for the bilinear model)."""
        return self._coefficients.shape[1]

    @property
    def term_images(self):
        """Fixed images K_t, one per spatial term (the node kernels of a bilinear model)."""
        return self._term_images

    @property
    def kernel_sum(self):
        """Sum of the kernel (the same at every position)."""
        if self.nodes is None:
            return float(self._term_images[0].sum())
        return float(self._term_images.sum(axis=(1, 2)).mean())

    def scaled(self, factor):
        """The same kernel multiplied by ``factor`` (its sum becomes ``factor`` times as large)."""
        return SpatialKernel(self._basis, self._coefficients * factor,
                             spatial_model=self.spatial_model, spatial_order=self.spatial_order,
                             bbox=None if self.nodes is not None else self.bbox,
                             nodes=self.nodes)

    def normalize_xy(self, x, y):
        """Pixel coordinates mapped to [-1, 1] over :attr:`bbox`."""
        return normalize_coordinates(x, y, self.bbox)

    def spatial_terms(self, x, y):
        """Values of the spatial terms at pixel positions, shape (n_terms, ...)."""
        if self.nodes is not None:
            return bilinear_terms(x, y, *self.nodes)
        xn, yn = self.normalize_xy(x, y)
        return spatial_terms(xn, yn, self.spatial_order, self.spatial_model)

    def coefficients_at(self, x, y):
        """Coefficient of every basis image at pixel positions, shape (n_basis, ...)."""
        terms = self.spatial_terms(x, y)
        return np.tensordot(self._coefficients, terms, axes=(1, 0))

    def evaluate(self, x, y):
        """Kernel image at pixel position ``(x, y)``.

        Parameters
        ----------
        x, y : float
            Pixel position (0-based, pixel centres at integers); finite.

        Returns
        -------
        kernel : ndarray, shape (K, K)

        Raises
        ------
        ValueError
            If ``x`` or ``y`` is not a finite scalar.
        """
        if np.ndim(x) or np.ndim(y):
            msg = f"x and y must be scalars, got shapes {np.shape(x)} and {np.shape(y)}"
            raise ValueError(msg)
        if not (np.isfinite(x) and np.isfinite(y)):
            msg = f"x and y must be finite, got ({x!r}, {y!r})"
            raise ValueError(msg)
        terms = self.spatial_terms(float(x), float(y))
        return np.tensordot(terms, self._term_images, axes=(0, 0))

    def evaluate_many(self, x, y):
        """Kernel images at many positions: shape (n, K, K) for flat ``x`` and ``y`` of length n."""
        x, y = np.broadcast_arrays(np.asarray(x, dtype=float).ravel(),
                                   np.asarray(y, dtype=float).ravel())
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
            msg = "x and y must be finite"
            raise ValueError(msg)
        terms = self.spatial_terms(x, y)  # (n_terms, n)
        return np.tensordot(terms.T, self._term_images, axes=(1, 0))

    def monomial_kernels(self):
        """A polynomial kernel written as monomials of normalized coordinates.

        Returns
        -------
        exponents : ndarray of int, shape (n, 2)
            Powers ``(a, b)`` of ``xn`` and ``yn``.
        images : ndarray, shape (n, K, K)
            Images with ``K(x, y) = sum_n xn**a_n * yn**b_n * images[n]``.

        Raises
        ------
        ValueError
            For the bilinear model (see :meth:`pieces`).
        """
        if self.nodes is not None:
            msg = "a bilinear kernel is a monomial kernel piece by piece: use pieces()"
            raise ValueError(msg)
        matrix = monomial_matrix(self.spatial_order, self.spatial_model)
        images = np.einsum("tm,tjk->mjk", matrix, self._term_images)
        return spatial_exponents(self.spatial_order), images

    def pieces(self, shape):
        """The kernel over an image of ``shape`` as pieces, each one polynomial.

        A polynomial model is one piece over the whole image, in its
        normalized coordinates. A bilinear model has one piece per cell
        between node lines (and beyond the outermost ones), in local
        coordinates ``u, v`` from 0 to 1: ``K = K00 + u (K10 - K00) +
        v (K01 - K00) + u v (K11 - K10 - K01 + K00)``.

        Returns
        -------
        pieces : list of KernelPiece
        """
        ny, nx = shape
        if self.nodes is None:
            exponents, images = self.monomial_kernels()
            xn, yn = self.normalize_xy(np.arange(nx), np.arange(ny))
            return [KernelPiece(0, nx, 0, ny, xn, yn, exponents, images)]
        nodes_x, nodes_y = self.nodes
        n_x = nodes_x.size
        kernels = self._term_images
        exponents = np.array([[0, 0], [1, 0], [0, 1], [1, 1]])
        pieces = []
        for y0, y1, bottom, top in node_intervals(nodes_y, ny):
            yl = _local(np.arange(ny), nodes_y, bottom, top)
            for x0, x1, left, right in node_intervals(nodes_x, nx):
                xl = _local(np.arange(nx), nodes_x, left, right)
                k00 = kernels[bottom * n_x + left]
                k10 = kernels[bottom * n_x + right]
                k01 = kernels[top * n_x + left]
                k11 = kernels[top * n_x + right]
                images = np.stack([k00, k10 - k00, k01 - k00, k11 - k10 - k01 + k00])
                pieces.append(KernelPiece(x0, x1, y0, y1, xl, yl, exponents, images))
        return pieces

    def write(self, path, *, overwrite=False):
        """Write the kernel to a FITS file that :meth:`read` restores exactly.

        The primary HDU holds the basis cube, the ``COEFFS`` extension the
        spatial coefficients, and a bilinear model its node positions in
        ``NODES_X`` and ``NODES_Y``; the header records the format version and
        the spatial model. Every HDU carries ``CHECKSUM``/``DATASUM`` cards.
        """
        self.to_hdulist().writeto(path, overwrite=overwrite, checksum=True)

    def to_hdulist(self):
        """The kernel as a FITS `~astropy.io.fits.HDUList` (see :meth:`write`)."""
        header = fits.Header()
        header["KFORMAT"] = (_FORMAT_NAME, "astropsfmatch spatial kernel")
        header["KFVERS"] = (_FORMAT_VERSION, "format version")
        header["SPMODEL"] = (self.spatial_model, "spatial model of the coefficients")
        if self.nodes is None:
            header["SPORDER"] = (self.spatial_order, "spatial order")
            for key, value in zip(("BBXMIN", "BBXMAX", "BBYMIN", "BBYMAX"), self.bbox,
                                  strict=True):
                header[key] = (value, "normalization box (pixels)")
        header["KSUM"] = (self.kernel_sum, "kernel sum")
        hdus = [fits.PrimaryHDU(self._basis, header=header),
                fits.ImageHDU(self._coefficients, name="COEFFS")]
        if self.nodes is not None:
            hdus += [fits.ImageHDU(np.asarray(self.nodes[0]), name="NODES_X"),
                     fits.ImageHDU(np.asarray(self.nodes[1]), name="NODES_Y")]
        return fits.HDUList(hdus)

    @classmethod
    def read(cls, path):
        """Read a kernel written by :meth:`write` (format versions 1 and 2).

        Raises
        ------
        ValueError
            If the file is not an astropsfmatch kernel, has an unknown format
            version, or misses or has a bad keyword or extension (named in
            the message).
        """
        _check_path(path)
        kernel = error = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                kernel = cls._read_checked(path)
            except (OSError, TypeError, IndexError, ValueError) as exc:
                error = exc
        _raise_on_damage(path, caught)  # a damaged file is refused as such, first
        if isinstance(error, ValueError):
            raise error
        if error is not None:  # truncated or unreadable data
            msg = f"{path}: cannot read as FITS: {error}"
            raise ValueError(msg) from error
        return kernel

    @classmethod
    def _read_checked(cls, path):
        """`read` after the path was checked, inside a warnings record."""
        if isinstance(path, str | os.PathLike):
            # opened here, so that it is closed even when astropy fails half-way
            with open(path, "rb") as handle:
                return cls._read_open(handle, path)
        return cls._read_open(path, path)

    @classmethod
    def _read_open(cls, handle, path):
        """`read` from an open file."""
        with fits.open(handle, checksum=True) as hdul:
            header = hdul[0].header
            if header.get("KFORMAT") != _FORMAT_NAME:
                msg = f"{path} is not an astropsfmatch kernel file (no KFORMAT={_FORMAT_NAME})"
                raise ValueError(msg)
            version = _keyword(header, "KFVERS", path, int)
            if version not in _READABLE_VERSIONS:
                msg = (f"{path} has kernel format version {version}; this astropsfmatch reads "
                       f"versions {', '.join(map(str, _READABLE_VERSIONS))}")
                raise ValueError(msg)
            model = _keyword(header, "SPMODEL", path, str)
            basis = _extension(hdul, 0, path)
            coefficients = _extension(hdul, "COEFFS", path)
            try:
                if model == "bilinear":
                    nodes = (_extension(hdul, "NODES_X", path),
                             _extension(hdul, "NODES_Y", path))
                    return cls(basis, coefficients, spatial_model=model, nodes=nodes)
                bbox = tuple(_keyword(header, key, path, float)
                             for key in ("BBXMIN", "BBXMAX", "BBYMIN", "BBYMAX"))
                return cls(basis, coefficients, spatial_model=model,
                           spatial_order=_keyword(header, "SPORDER", path, int), bbox=bbox)
            except ValueError as exc:
                if str(exc).startswith(str(path)):
                    raise
                msg = f"{path}: {exc}"
                raise ValueError(msg) from exc


def _check_path(path):
    """Refuse what is neither a non-empty path nor a readable file object, naming it."""
    if isinstance(path, str | os.PathLike):
        if not os.fspath(path):
            msg = f"path must name a kernel FITS file, got {path!r}"
            raise ValueError(msg)
        return
    if not callable(getattr(path, "read", None)):
        msg = f"path must be a file path or a readable file object, got {path!r}"
        raise InvalidTypeError(msg)


#: Words of astropy's warnings about a damaged file: refused, never read silently.
_DAMAGE = ("checksum", "datasum", "truncated", "header size is not a multiple",
           "header size is not multiple")


def _raise_on_damage(path, caught):
    """Refuse a file with failed checksums or truncated data; re-issue other warnings."""
    damage = [str(w.message) for w in caught if any(word in str(w.message).lower()
                                                      for word in _DAMAGE)]
    if damage:
        msg = f"{path} is damaged and was not read: {'; '.join(damage)}"
        raise ValueError(msg)
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _local(pixels, nodes, low, high):
    """Local coordinate of pixels between nodes ``low`` and ``high`` (0 if they coincide)."""
    if low == high:
        return np.zeros(pixels.size)
    return (pixels - nodes[low]) / (nodes[high] - nodes[low])


def _keyword(header, key, path, kind):
    """A header value of the given kind, or a ValueError naming the keyword."""
    if key not in header:
        msg = f"{path}: the kernel file has no {key} keyword"
        raise ValueError(msg)
    value = header[key]
    ok = isinstance(value, str) if kind is str else (
        isinstance(value, int | float) and not isinstance(value, bool)
        and (kind is float or float(value).is_integer()))
    if not ok:
        msg = f"{path}: keyword {key} must be {kind.__name__}, got {value!r}"
        raise ValueError(msg)
    return kind(value)


def _extension(hdul, key, path):
    """The data of one extension as float64, or a ValueError naming it."""
    name = "primary HDU" if key == 0 else f"{key} extension"
    try:
        hdu = hdul[key]
    except (KeyError, IndexError):
        hdu = None
    if hdu is not None and not hdu.is_image:
        msg = f"{path}: the {name} of a kernel file must be an image, got a {type(hdu).__name__}"
        raise ValueError(msg)
    data = None if hdu is None else hdu.data
    if data is None:
        msg = f"{path}: the kernel file has no data in its {name}"
        raise ValueError(msg)
    return np.array(data, dtype=np.float64)
