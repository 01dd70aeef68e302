"""The spatially varying PSF-matching kernel."""

import numpy as np
from astropy.io import fits

from .spatial import (
    SPATIAL_MODELS,
    monomial_matrix,
    n_spatial_terms,
    normalize_coordinates,
    spatial_exponents,
    spatial_terms,
)

# the public names of this module, re-exported by astropsfmatch/__init__.py
__all__ = ["SpatialKernel"]

_FORMAT_NAME = "ASTROPSFMATCH-KERNEL"
_FORMAT_VERSION = 1


class SpatialKernel:
    r"""A convolution kernel that varies smoothly across an image.

    The kernel at pixel ``(x, y)`` is a linear combination of fixed basis
    images whose coefficients are 2-D functions of position:

    .. math::

        K(x, y) = \sum_i \sum_t a_{i,t}\, f_t(x_n, y_n)\, B_i
                = \sum_t f_t(x_n, y_n)\, K_t ,

    with :math:`f_t` Chebyshev (first kind) or plain polynomial terms of the
    coordinates normalized to [-1, 1] over ``bbox``. The first basis image
    sums to one and every other sums to zero, and its coefficient is held
    constant, so the kernel sums to ``coefficients[0, 0]`` everywhere.

    Parameters
    ----------
    basis : array_like, shape (n_basis, K, K)
        Basis images (K odd).
    coefficients : array_like, shape (n_basis, n_terms)
        Spatial coefficients of each basis image.
    spatial_model : {'chebyshev1', 'polynomial'}
        Kind of spatial terms.
    spatial_order : int
        Total degree of the spatial terms.
    bbox : tuple of float
        ``(xmin, xmax, ymin, ymax)``: pixel coordinates mapped to -1 and +1.

    Examples
    --------
    >>> import numpy as np
    >>> from astropsfmatch import SpatialKernel, make_alard_lupton_basis
    >>> basis = make_alard_lupton_basis(7, [1.0], [0])
    >>> kernel = SpatialKernel(basis, [[1.0]], spatial_model='chebyshev1',
    ...                        spatial_order=0, bbox=(0, 99, 0, 99))
    >>> round(float(kernel.evaluate(50, 50).sum()), 6)
    1.0
    """

    def __init__(self, basis, coefficients, *, spatial_model, spatial_order, bbox):
        basis = np.array(basis, dtype=np.float64)
        coefficients = np.array(coefficients, dtype=np.float64)
        if basis.ndim != 3 or basis.shape[1] != basis.shape[2] or basis.shape[1] % 2 == 0:
            msg = f"basis must have shape (n_basis, K, K) with K odd, got {basis.shape}"
            raise ValueError(msg)
        if spatial_model not in SPATIAL_MODELS:
            msg = f"spatial_model must be one of {SPATIAL_MODELS}, got {spatial_model!r}"
            raise ValueError(msg)
        if int(spatial_order) != spatial_order or spatial_order < 0:
            msg = f"spatial_order must be an integer >= 0, got {spatial_order!r}"
            raise ValueError(msg)
        spatial_order = int(spatial_order)
        expected = (basis.shape[0], n_spatial_terms(spatial_order))
        if coefficients.shape != expected:
            msg = (f"coefficients must have shape (n_basis, n_terms) = {expected}, "
                   f"got {coefficients.shape}")
            raise ValueError(msg)
        bbox = tuple(float(v) for v in bbox)
        if len(bbox) != 4 or not bbox[1] > bbox[0] or not bbox[3] > bbox[2]:
            msg = f"bbox must be (xmin, xmax, ymin, ymax) with xmax > xmin, ymax > ymin, got {bbox}"
            raise ValueError(msg)
        self._basis = basis
        self._coefficients = coefficients
        self._basis.flags.writeable = False
        self._coefficients.flags.writeable = False
        self.spatial_model = spatial_model
        self.spatial_order = spatial_order
        self.bbox = bbox
        self._term_images = np.einsum("it,ijk->tjk", coefficients, basis)
        self._term_images.flags.writeable = False

    def __repr__(self):
        return (f"<SpatialKernel size={self.kernel_size} n_basis={self.n_basis} "
                f"spatial_model={self.spatial_model!r} spatial_order={self.spatial_order} "
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
        """Number of spatial terms."""
        return self._coefficients.shape[1]

    @property
    def term_images(self):
        """Fixed images K_t, one per spatial term, shape (n_terms, K, K)."""
        return self._term_images

    @property
    def kernel_sum(self):
        """Sum of the kernel (the same at every position)."""
        return float(self._term_images[0].sum())

    def scaled(self, factor):
        """The same kernel multiplied by ``factor`` (its sum becomes ``factor`` times as large)."""
        return SpatialKernel(self._basis, self._coefficients * factor,
                             spatial_model=self.spatial_model,
                             spatial_order=self.spatial_order, bbox=self.bbox)

    def normalize_xy(self, x, y):
        """Pixel coordinates mapped to [-1, 1] over :attr:`bbox`."""
        return normalize_coordinates(x, y, self.bbox)

    def spatial_terms(self, x, y):
        """Values of the spatial terms at pixel positions, shape (n_terms, ...)."""
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
            Pixel position (0-based, pixel centres at integers).

        Returns
        -------
        kernel : ndarray, shape (K, K)
        """
        if np.ndim(x) or np.ndim(y):
            msg = f"x and y must be scalars, got shapes {np.shape(x)} and {np.shape(y)}"
            raise ValueError(msg)
        terms = self.spatial_terms(float(x), float(y))
        return np.tensordot(terms, self._term_images, axes=(0, 0))

    def monomial_kernels(self):
        """Kernel written as monomials of normalized coordinates.

        Returns
        -------
        exponents : ndarray of int, shape (n, 2)
            Powers ``(a, b)`` of ``xn`` and ``yn``.
        images : ndarray, shape (n, K, K)
            Images with ``K(x, y) = sum_n xn**a_n * yn**b_n * images[n]``.
        """
        matrix = monomial_matrix(self.spatial_order, self.spatial_model)
        images = np.einsum("tm,tjk->mjk", matrix, self._term_images)
        return spatial_exponents(self.spatial_order), images

    def write(self, path, *, overwrite=False):
        """Write the kernel to a FITS file that :meth:`read` restores exactly.

        The primary HDU holds the basis cube, the ``COEFFS`` extension the
        spatial coefficients; the header records the spatial model. Every
        HDU carries ``CHECKSUM``/``DATASUM`` cards.
        """
        self.to_hdulist().writeto(path, overwrite=overwrite, checksum=True)

    def to_hdulist(self):
        """The kernel as a FITS `~astropy.io.fits.HDUList` (see :meth:`write`)."""
        header = fits.Header()
        header["KFORMAT"] = (_FORMAT_NAME, "astropsfmatch spatial kernel")
        header["KFVERS"] = (_FORMAT_VERSION, "format version")
        header["SPMODEL"] = (self.spatial_model, "spatial model of the coefficients")
        header["SPORDER"] = (self.spatial_order, "spatial order")
        for key, value in zip(("BBXMIN", "BBXMAX", "BBYMIN", "BBYMAX"), self.bbox, strict=True):
            header[key] = (value, "normalization box (pixels)")
        header["KSUM"] = (self.kernel_sum, "kernel sum")
        primary = fits.PrimaryHDU(self._basis, header=header)
        coeffs = fits.ImageHDU(self._coefficients, name="COEFFS")
        return fits.HDUList([primary, coeffs])

    @classmethod
    def read(cls, path):
        """Read a kernel written by :meth:`write`."""
        with fits.open(path) as hdul:
            header = hdul[0].header
            if header.get("KFORMAT") != _FORMAT_NAME:
                msg = f"{path} is not an astropsfmatch kernel file (no KFORMAT={_FORMAT_NAME})"
                raise ValueError(msg)
            basis = np.array(hdul[0].data, dtype=np.float64)
            coefficients = np.array(hdul["COEFFS"].data, dtype=np.float64)
            bbox = tuple(header[k] for k in ("BBXMIN", "BBXMAX", "BBYMIN", "BBYMAX"))
            return cls(basis, coefficients, spatial_model=header["SPMODEL"],
                       spatial_order=header["SPORDER"], bbox=bbox)
