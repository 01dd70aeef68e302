"""
PSFEx PSF models (``.psf`` files) as photutils-compatible astropy models.

PSFEx writes its spatially varying PSF model as a FITS binary table
``PSF_DATA`` with one cell ``PSF_MASK`` holding ``n_basis`` images on the
PSF grid. The PSF at detector position ``(X_IMAGE, Y_IMAGE)`` -- SExtractor's
1-based pixel coordinates -- is the sum of the basis images weighted by the
monomials of ``dx = (X_IMAGE - POLZERO1) / POLSCAL1`` and
``dy = (Y_IMAGE - POLZERO2) / POLSCAL2`` up to total degree ``POLDEG1``, in
PSFEx's order (powers of ``dx`` fastest): ``1, dx, dx**2, ..., dy, dx*dy, ...,
dy**2, ...``. The grid has a pitch of ``PSF_SAMP`` detector pixels and the PSF
centre on its pixel ``n // 2`` along each axis; PSFEx maps it onto detector
pixels by Lanczos-3 interpolation (its ``vignet_resample``), which
`PSFExPSF` reproduces.
"""

import numbers
import os

import numpy as np
from astropy.io import fits
from astropy.modeling import Fittable2DModel, Parameter

__all__ = ["PSFExPSF"]

#: Half-width of the Lanczos kernel PSFEx resamples with (INTERPFAC in PSFEx).
_LANCZOS_ORDER = 3

#: Taps of a Lanczos-3 interpolation: the kernel vanishes beyond 3 PSF pixels.
_N_TAPS = 2 * _LANCZOS_ORDER

#: SExtractor measurements of the source position in 1-based pixel
#: coordinates (x name, y name). PSFEx files made with any of them are one and
#: the same polynomial of the detector position; X_IMAGE is PSFEx's default.
_POSITION_CONTEXTS = (
    ("X_IMAGE", "Y_IMAGE"),
    ("XWIN_IMAGE", "YWIN_IMAGE"),
    ("X_IMAGE_DBL", "Y_IMAGE_DBL"),
    ("XPSF_IMAGE", "YPSF_IMAGE"),
    ("XMODEL_IMAGE", "YMODEL_IMAGE"),
    ("XPEAK_IMAGE", "YPEAK_IMAGE"),
)
_X_CONTEXTS = tuple(pair[0] for pair in _POSITION_CONTEXTS)
_Y_CONTEXTS = tuple(pair[1] for pair in _POSITION_CONTEXTS)

#: Smallest PSF grid side: the Lanczos-3 interpolation needs a few samples.
_MIN_GRID_SIZE = 3


class _PSFExGrid:
    """
    The immutable data of a PSFEx model, shared by all copies of the model.

    astropy copies models with `copy.deepcopy` (photutils copies the PSF model
    for every source it fits); the basis images, the cached resampling
    templates and the file header never change, so deep copies share them
    instead of duplicating them.
    """

    def __init__(self, basis, psf_samp):
        self.basis = basis  # (n_basis, ny, nx) read-only float64
        self.psf_samp = psf_samp
        # the PSF_DATA header of a model read from a file (deep-copying it
        # would cost photutils more than copying the rest of the model)
        self.header = None
        ny, nx = basis.shape[1:]
        # PSFEx puts the PSF centre on pixel w / 2 (integer division) of the
        # grid along each axis, odd or even (vignet_resample, psf_clip)
        self.centre = (ny // 2, nx // 2)
        self._templates = {}

    def __deepcopy__(self, memo):
        return self

    def __copy__(self):
        return self

    def __setstate__(self, state):
        # unpickled arrays come back writeable: keep the copies read-only too
        self.__dict__.update(state)
        self.basis.flags.writeable = False
        for templates in self._templates.values():
            templates.flags.writeable = False

    def templates(self, size):
        """Each basis image resampled onto a centred ``size`` x ``size`` stamp."""
        if size not in self._templates:
            ny, nx = self.basis.shape[1:]
            offsets = np.arange(size, dtype=np.float64) - size // 2
            wy = _resampling_matrix(self.centre[0] + offsets / self.psf_samp, ny)
            wx = _resampling_matrix(self.centre[1] + offsets / self.psf_samp, nx)
            templates = np.einsum("sy,kyx,tx->kst", wy, self.basis, wx, optimize=True)
            templates.flags.writeable = False
            self._templates[size] = templates
        return self._templates[size]


class PSFExPSF(Fittable2DModel):
    """
    A PSFEx spatially varying PSF model, usable like photutils' ``ImagePSF``.

    The model evaluates to ``flux`` times the PSF *of detector position*
    ``(x_0, y_0)``, centred there: PSFEx's polynomial of the position gives
    the PSF on its grid, and PSFEx's Lanczos-3 resampling maps the grid onto
    detector pixel offsets ``(x - x_0, y - y_0)``. The PSF is normalized to
    unit sum over the detector pixels of a stamp centred on a pixel (so
    ``flux`` is the total flux, as for photutils PSF models). It works in
    `photutils.psf.PSFPhotometry`, which fits ``flux``, ``x_0`` and ``y_0``.

    Read a PSFEx file with `PSFExPSF.read`; the constructor takes the
    contents of one.

    Parameters
    ----------
    basis : array_like
        The basis images ``PSF_MASK`` on the PSF grid: shape
        ``(n_basis, ny, nx)``, or ``(1, n_basis, ny, nx)`` as astropy reads
        the table cell, or ``(ny, nx)`` for a constant PSF; finite real
        values, ``ny, nx >= 3``. ``n_basis`` must be
        ``(poldeg + 1) * (poldeg + 2) / 2`` (1 for a constant PSF). Copied:
        later changes of the input do not reach the model.
    polzero, polscal : sequence of 2 float or `None`
        PSFEx's ``POLZERO1/2`` and ``POLSCAL1/2``: the polynomial variables
        are ``(X_IMAGE - polzero[0]) / polscal[0]`` and
        ``(Y_IMAGE - polzero[1]) / polscal[1]``, in 1-based pixel
        coordinates. Required unless ``context`` is empty (then `None`).
        ``polscal`` must not be zero.
    poldeg : int or `None`
        PSFEx's ``POLDEG1``: the total degree of the polynomial, >= 0.
        Required unless ``context`` is empty (then `None` or 0).
    psf_samp : float
        PSFEx's ``PSF_SAMP``: the pitch of the PSF grid in detector pixels
        (0.5: two PSF pixels per detector pixel); positive.
    context : tuple of 2 str or ()
        PSFEx's ``POLNAME1/2``: the names of the polynomial variables. They
        must be a SExtractor position in pixel coordinates, x then y:
        ``('X_IMAGE', 'Y_IMAGE')`` (PSFEx's default), or the
        ``XWIN_IMAGE``, ``X_IMAGE_DBL``, ``XPSF_IMAGE``, ``XMODEL_IMAGE`` or
        ``XPEAK_IMAGE`` pair. ``()`` is a constant PSF (PSFEx's
        ``POLNAXIS = 0``).
    fwhm : float or `None`, optional
        PSFEx's ``PSF_FWHM`` estimate in detector pixels, kept as the
        ``fwhm`` attribute (`None`: unknown).
    flux : float, optional
        The total flux of the source.
    x_0, y_0 : float, optional
        The position of the PSF centre in 0-based pixel coordinates (pixel
        centres at integers, as photutils and numpy index them). It also
        selects the PSF shape: that of detector position ``(x_0, y_0)``.
    **kwargs
        Further keyword arguments of `astropy.modeling.Model` (``fixed``,
        ``bounds``, ``name``, ...). Model sets are not supported.

    Attributes
    ----------
    basis : `~numpy.ndarray`
        The basis images, float64 of shape ``(n_basis, ny, nx)``, read-only
        (shared by copies of the model).
    polzero, polscal : tuple of float
        As given (empty for a constant PSF).
    poldeg : int
        The polynomial degree (0 for a constant PSF).
    psf_samp : float
        The PSF grid pitch in detector pixels.
    context : tuple of str
        The names of the polynomial variables.
    fwhm : float or `None`
        PSFEx's FWHM estimate in detector pixels, if known. PSFEx computes
        it as twice the median ``FLUX_RADIUS`` of its stars, so it is the
        half-light diameter rather than the profile's FWHM.
    header : `~astropy.io.fits.Header` or `None`
        The ``PSF_DATA`` header, for models made by `read` (shared by copies
        of the model, read-only).

    See Also
    --------
    photutils.psf.ImagePSF, photutils.psf.GriddedPSFModel

    Notes
    -----
    *Coordinates.* PSFEx fits its polynomial in SExtractor's 1-based
    coordinates (the first pixel's centre is 1.0), while this model, like
    photutils, uses 0-based ones: the polynomial is evaluated at
    ``(x_0 + 1, y_0 + 1)``.

    *Resampling.* Detector offset ``d`` from the PSF centre is PSF grid
    coordinate ``n // 2 + d / psf_samp`` along each axis. As PSFEx's
    ``vignet_resample`` does when it maps its model onto a star, the grid is
    interpolated separably by the Lanczos-3 kernel
    ``sinc(t) sinc(t / 3)`` (``|t| < 3``), with the weights of each output
    sample normalized to unit sum over the taps that lie on the grid, and
    samples outside the grid are zero. Unlike ``vignet_resample``, which
    drops a sample landing exactly on the first grid row or column when the
    output extends beyond the grid (the first row/column of the PSF grid
    then never appears in its stamps), such samples are kept; PSFEx
    soft-clips its model to zero near the grid edge, so they are negligible.
    The resampled PSF is then divided by its sum over the stamp (`stamps`)
    or, in `evaluate`, by the sum of the stamp centred on a pixel of the
    natural size (`natural_size`): PSFEx itself fits a flux to it.

    *Validity.* The polynomial was fitted over the positions of PSFEx's
    stars (``|dx|, |dy| <= 0.5`` for PSFEx's own ``POLZERO``/``POLSCAL``);
    farther out it extrapolates.

    Examples
    --------
    A degree-1 model whose core widens towards large x (in a real case, read
    a file with `PSFExPSF.read`):

    >>> import numpy as np
    >>> from astropsfmatch._adapters.psfex import PSFExPSF
    >>> yy, xx = np.mgrid[-12:13, -12:13]
    >>> core = np.exp(-(xx**2 + yy**2) / (2 * 1.5**2))
    >>> basis = np.stack([core, 0.05 * (xx**2 + yy**2) * core, np.zeros_like(core)])
    >>> psf = PSFExPSF(basis, polzero=(1024.5, 1024.5), polscal=(2048.0, 2048.0),
    ...                poldeg=1, psf_samp=1.0)
    >>> psf.natural_size
    25
    >>> stamps = psf.stamps([10.0, 2000.0], [500.0, 500.0], 15)
    >>> stamps.shape
    (2, 15, 15)
    >>> stamps.sum(axis=(1, 2))
    array([1., 1.])
    >>> bool(stamps[0, 7, 7] > stamps[1, 7, 7])  # wider at large x
    True

    As a photutils model, centred on detector position (x_0, y_0):

    >>> psf.x_0, psf.y_0, psf.flux = 2000.0, 500.0, 100.0
    >>> yy, xx = np.mgrid[493:508, 1993:2008]
    >>> image = psf(xx, yy)
    >>> bool(np.allclose(image, 100.0 * stamps[1]))
    True
    """

    flux = Parameter(default=1, description="Total flux of the source")
    x_0 = Parameter(default=0, description="x position of the PSF centre (0-based pixels)")
    y_0 = Parameter(default=0, description="y position of the PSF centre (0-based pixels)")

    def __init__(self, basis, *, polzero=None, polscal=None, poldeg=None, psf_samp,
                 context=("X_IMAGE", "Y_IMAGE"), fwhm=None, flux=flux.default,
                 x_0=x_0.default, y_0=y_0.default, **kwargs):
        context = _check_context(context)
        if context:
            polzero = _check_pair(polzero, "polzero")
            polscal = _check_pair(polscal, "polscal", nonzero=True)
            poldeg = _check_degree(poldeg)
        else:
            for name, value in (("polzero", polzero), ("polscal", polscal)):
                if value is not None and np.size(value) != 0:
                    msg = (f"{name} must be None for a constant PSF (context=()), "
                           f"got {value!r}")
                    raise ValueError(msg)
            if poldeg is not None and _check_degree(poldeg) != 0:
                msg = f"poldeg must be 0 or None for a constant PSF (context=()), got {poldeg!r}"
                raise ValueError(msg)
            polzero, polscal, poldeg = (), (), 0
        n_terms = (poldeg + 1) * (poldeg + 2) // 2 if context else 1
        basis = _check_basis(basis, n_terms, poldeg, context)
        psf_samp = _check_positive(psf_samp, "psf_samp")
        if fwhm is not None:
            fwhm = _check_positive(fwhm, "fwhm")
        if kwargs.get("n_models", 1) != 1:
            msg = f"PSFExPSF does not support model sets, got n_models={kwargs['n_models']!r}"
            raise ValueError(msg)

        self._grid = _PSFExGrid(basis, psf_samp)
        self.polzero = polzero
        self.polscal = polscal
        self.poldeg = poldeg
        self.context = context
        self.fwhm = fwhm
        super().__init__(flux, x_0, y_0, **kwargs)

    # ------------------------------------------------------------------ I/O

    @classmethod
    def read(cls, source, *, hdu="PSF_DATA", **kwargs):
        """
        Read a PSFEx ``.psf`` file.

        Parameters
        ----------
        source : str, path-like, `~astropy.io.fits.HDUList` or `~astropy.io.fits.BinTableHDU`
            The file (gzip-compressed ``.psf.gz`` files too), an open
            HDU list, or the ``PSF_DATA`` table HDU itself (then ``hdu`` is
            not used). An HDU list given is left open.
        hdu : str or int, optional
            The name or index of the PSF table HDU. PSFEx writes one
            ``PSF_DATA`` HDU per extension of a multi-extension catalogue;
            give an index to read another than the first.
        **kwargs
            Passed to the constructor (``flux``, ``x_0``, ``y_0``, ``fixed``,
            ``bounds``, ``name``, ...).

        Returns
        -------
        psf : `PSFExPSF`
            The model, with the table header as its ``header`` attribute.

        Raises
        ------
        TypeError
            If ``source`` is none of the accepted types.
        ValueError
            If the HDU is missing or not a binary table with a ``PSF_MASK``
            column; if a required keyword is missing; if ``POLNAXIS`` is
            neither 0 nor 2, a context variable is not a SExtractor pixel
            position (x then y), the two variables are in different
            polynomial groups or there is more than one group; if
            ``PSF_SAMP`` is not positive (PSFEx accepted no star); or if the
            shape of ``PSF_MASK`` disagrees with ``PSFAXIS1..3`` and the
            polynomial degree.

        Examples
        --------
        >>> from astropy.io import fits
        >>> import numpy as np
        >>> from astropsfmatch._adapters.psfex import PSFExPSF
        >>> yy, xx = np.mgrid[-12:13, -12:13]
        >>> mask = np.exp(-(xx**2 + yy**2) / 4.5)[np.newaxis, np.newaxis].astype(np.float32)
        >>> table = fits.BinTableHDU.from_columns(
        ...     [fits.Column(name="PSF_MASK", format="625E", dim="(25, 25, 1)",
        ...                  array=mask)], name="PSF_DATA")
        >>> table.header.update({"POLNAXIS": 0, "POLNGRP": 0, "PSF_FWHM": 3.5,
        ...                      "PSF_SAMP": 1.0, "PSFNAXIS": 3, "PSFAXIS1": 25,
        ...                      "PSFAXIS2": 25, "PSFAXIS3": 1})
        >>> psf = PSFExPSF.read(fits.HDUList([fits.PrimaryHDU(), table]))
        >>> psf.poldeg, psf.context, psf.fwhm, psf.natural_size
        (0, (), 3.5, 25)
        """
        if isinstance(source, fits.BinTableHDU):
            return cls._from_hdu(source, repr(source.name), **kwargs)
        if isinstance(source, fits.HDUList):
            return cls._from_hdulist(source, hdu, "the HDU list", **kwargs)
        if isinstance(source, (str, os.PathLike)):
            with fits.open(source) as hdulist:
                return cls._from_hdulist(hdulist, hdu, os.fspath(source), **kwargs)
        msg = (
            "source must be a file name, a path, an astropy HDUList or a BinTableHDU, "
            f"got an object of type {type(source).__name__}"
        )
        raise TypeError(msg)

    @classmethod
    def _from_hdulist(cls, hdulist, hdu, where, **kwargs):
        try:
            table = hdulist[hdu]
        except (KeyError, IndexError) as exc:
            names = ", ".join(repr(h.name) for h in hdulist)
            msg = f"{where} has no HDU {hdu!r} (a PSFEx file has PSF_DATA); its HDUs: {names}"
            raise ValueError(msg) from exc
        if not isinstance(table, fits.BinTableHDU):
            msg = (f"HDU {hdu!r} of {where} must be a binary table (PSFEx's PSF_DATA), "
                   f"got {type(table).__name__}")
            raise ValueError(msg)
        return cls._from_hdu(table, f"HDU {hdu!r} of {where}", **kwargs)

    @classmethod
    def _from_hdu(cls, table, where, **kwargs):
        header = table.header

        def keyword(name, kind):
            if name not in header:
                msg = f"{where} has no {name} keyword: not a PSFEx PSF file"
                raise ValueError(msg)
            value = header[name]
            ok = isinstance(value, str) if kind is str else (
                isinstance(value, numbers.Real) and not isinstance(value, bool))
            if kind is int and ok:
                ok = float(value).is_integer()
            if not ok:
                msg = f"{where}: keyword {name} must be {kind.__name__}, got {value!r}"
                raise ValueError(msg)
            return kind(value.strip() if kind is str else value)

        polnaxis = keyword("POLNAXIS", int)
        if polnaxis not in (0, 2):
            msg = (
                f"{where}: POLNAXIS = {polnaxis} context variables; only PSF models that vary "
                "with the detector position (POLNAXIS = 2, X_IMAGE and Y_IMAGE) or constant "
                "ones (POLNAXIS = 0) are supported"
            )
            raise ValueError(msg)
        if polnaxis == 2:
            context = (keyword("POLNAME1", str), keyword("POLNAME2", str))
            _check_context(context, where=f"{where}: POLNAME1/POLNAME2")
            ngroup = keyword("POLNGRP", int)
            groups = (keyword("POLGRP1", int), keyword("POLGRP2", int))
            if ngroup != 1 or groups != (1, 1):
                msg = (
                    f"{where}: POLNGRP = {ngroup} with POLGRP1 = {groups[0]} and POLGRP2 = "
                    f"{groups[1]}; only one polynomial group holding both {context[0]} and "
                    f"{context[1]} (POLNGRP = 1, POLGRP1 = POLGRP2 = 1) is supported"
                )
                raise ValueError(msg)
            polzero = (keyword("POLZERO1", float), keyword("POLZERO2", float))
            polscal = (keyword("POLSCAL1", float), keyword("POLSCAL2", float))
            poldeg = keyword("POLDEG1", int)
        else:
            context, polzero, polscal, poldeg = (), None, None, None

        psf_samp = keyword("PSF_SAMP", float)
        if not psf_samp > 0:
            accepted = header.get("ACCEPTED", "unknown")
            msg = (f"{where}: PSF_SAMP = {psf_samp!r} must be positive (PSFEx writes 0 "
                   f"when it accepted no star; ACCEPTED = {accepted})")
            raise ValueError(msg)
        fwhm = header.get("PSF_FWHM")
        fwhm = float(fwhm) if isinstance(fwhm, numbers.Real) and fwhm > 0 else None

        psfnaxis = keyword("PSFNAXIS", int)
        if psfnaxis not in (2, 3):
            msg = f"{where}: PSFNAXIS = {psfnaxis} must be 2 or 3 (PSF images, basis axis)"
            raise ValueError(msg)
        axes = tuple(keyword(f"PSFAXIS{i}", int) for i in range(1, psfnaxis + 1))
        if "PSF_MASK" not in table.columns.names:
            msg = (f"{where} has no PSF_MASK column (columns: {table.columns.names}): "
                   "not a PSFEx PSF file")
            raise ValueError(msg)
        mask = np.asarray(table.data["PSF_MASK"])
        if mask.shape[0] != 1:
            msg = f"{where}: PSF_DATA must have one row, got {mask.shape[0]}"
            raise ValueError(msg)
        mask = mask[0]
        expected = axes[::-1]  # FITS axis order (x fastest) reversed into numpy's
        if mask.shape != expected:
            msg = (f"{where}: PSF_MASK has shape {mask.shape}, but PSFAXIS1..{psfnaxis} = "
                   f"{axes} give {expected}")
            raise ValueError(msg)
        if psfnaxis == 2:
            mask = mask[np.newaxis]
        psf = cls(mask, polzero=polzero, polscal=polscal, poldeg=poldeg, psf_samp=psf_samp,
                  context=context, fwhm=fwhm, **kwargs)
        psf._grid.header = header.copy()
        return psf

    # --------------------------------------------------------------- access

    @property
    def basis(self):
        """The basis images, float64 ``(n_basis, ny, nx)``, read-only."""
        return self._grid.basis

    @property
    def header(self):
        """The ``PSF_DATA`` header of a model read from a file, else `None`.

        Shared by the copies of the model: treat it as read-only.
        """
        return self._grid.header

    @property
    def psf_samp(self):
        """The PSF grid pitch in detector pixels."""
        return self._grid.psf_samp

    @property
    def natural_size(self):
        """
        The odd number of detector pixels that the PSF grid spans.

        A stamp of this size centred on a pixel holds every detector pixel
        whose centre falls on the grid (between its first and last sample).
        """
        ny, nx = self.basis.shape[1:]
        cy, cx = self._grid.centre
        reach = max(cy, ny - 1 - cy, cx, nx - 1 - cx) * self.psf_samp
        return 2 * int(np.floor(reach + 1e-9)) + 1

    def __repr__(self):
        kwargs = {"shape": self.basis.shape, "poldeg": self.poldeg,
                  "psf_samp": self.psf_samp, "context": self.context}
        return self._format_repr(kwargs=kwargs)

    def __str__(self):
        keywords = [
            ("PSF grid (n_basis, ny, nx)", self.basis.shape),
            ("Polynomial degree", self.poldeg),
            ("Context", ", ".join(self.context) or "none (constant PSF)"),
            ("PSF_SAMP (detector pixels)", self.psf_samp),
        ]
        return self._format_str(keywords=keywords)

    # ------------------------------------------------------------ the PSF

    def _monomials(self, x, y):
        """PSFEx's monomials (n, n_basis) at flat 0-based positions."""
        n = x.size
        if not self.context:
            return np.ones((n, 1))
        # PSFEx's context is SExtractor's 1-based position
        u = (x + 1.0 - self.polzero[0]) / self.polscal[0]
        v = (y + 1.0 - self.polzero[1]) / self.polscal[1]
        d = self.poldeg
        powers = np.arange(d + 1)
        upow = u[:, np.newaxis] ** powers  # (n, d + 1)
        vpow = v[:, np.newaxis] ** powers
        # powers of u fastest: 1, u, ..., u^d, v, u v, ..., u^(d-1) v, v^2, ...
        columns = [upow[:, i] * vpow[:, j] for j in range(d + 1) for i in range(d + 1 - j)]
        return np.stack(columns, axis=1)

    def psf_image(self, x, y):
        """
        The PSF on the PSF grid at detector positions (the polynomial alone).

        Parameters
        ----------
        x, y : float or array_like
            Detector positions in 0-based pixel coordinates (broadcast
            together).

        Returns
        -------
        image : `~numpy.ndarray`
            Float64 of shape ``shape + (ny, nx)``, where ``shape`` is the
            broadcast shape of ``x`` and ``y`` (so ``(ny, nx)`` for scalars),
            in PSFEx's units (no resampling, no normalization).

        Raises
        ------
        TypeError, ValueError
            If ``x`` or ``y`` is not real or not finite, or if they do not
            broadcast.

        Examples
        --------
        >>> import numpy as np
        >>> from astropsfmatch._adapters.psfex import PSFExPSF
        >>> basis = np.ones((3, 5, 5)) * np.array([1.0, 0.5, 0.0])[:, None, None]
        >>> psf = PSFExPSF(basis, polzero=(101.0, 101.0), polscal=(200.0, 200.0),
        ...                poldeg=1, psf_samp=1.0)
        >>> psf.psf_image(200.0, 0.0)[0, 0]  # 1 + 0.5 * (201 - 101) / 200
        np.float64(1.25)
        >>> psf.psf_image([0.0, 200.0], [0.0, 0.0]).shape
        (2, 5, 5)
        """
        xf, yf, shape = _check_positions(x, y)
        weights = self._monomials(xf, yf)
        images = np.tensordot(weights, self.basis, axes=(1, 0))
        return images.reshape(shape + self.basis.shape[1:])

    def stamps(self, x, y, size=None):
        """
        Unit-sum detector-pixel stamps of the PSF at many positions at once.

        Each stamp holds the PSF of its position centred on the centre pixel
        of the stamp, resampled to detector pixels by PSFEx's Lanczos-3
        interpolation and divided by its sum. The polynomial is linear in the
        basis images, so each basis image is resampled once per stamp size
        and the stamps are the monomial weights times those templates.

        Parameters
        ----------
        x, y : float or array_like
            Detector positions in 0-based pixel coordinates (broadcast
            together, then flattened).
        size : odd int or `None`, optional
            The side of the square stamps; `None` is `natural_size`. Larger
            stamps are zero beyond the PSF grid; smaller ones clip it before
            the normalization.

        Returns
        -------
        stamps : `~numpy.ndarray`
            Float64 of shape ``(n, size, size)``, each summing to one.

        Raises
        ------
        TypeError, ValueError
            If ``size`` is not an odd positive integer; if ``x`` or ``y`` is
            not real or finite or they do not broadcast; or if the PSF at a
            position has a non-positive or non-finite sum over the stamp
            (the polynomial extrapolated far from the PSFEx stars).

        Examples
        --------
        >>> import numpy as np
        >>> from astropsfmatch._adapters.psfex import PSFExPSF
        >>> yy, xx = np.mgrid[-6:7, -6:7]
        >>> psf = PSFExPSF(np.exp(-(xx**2 + yy**2) / 8.0), context=(), psf_samp=0.5)
        >>> psf.natural_size  # 13 grid pixels of 0.5 detector pixels
        7
        >>> psf.stamps(np.arange(4.0), 0.0, 9).shape
        (4, 9, 9)
        """
        size = self.natural_size if size is None else _check_size(size)
        xf, yf, _ = _check_positions(x, y)
        weights = self._monomials(xf, yf)
        templates = self._grid.templates(size)
        # the templates are finite (the basis is): a stamp is finite if its
        # weights are, and its sum is the weights times the template sums
        sums = weights @ templates.sum(axis=(1, 2))
        bad = ~(np.isfinite(sums) & (sums > 0)) | ~np.all(np.isfinite(weights), axis=1)
        if np.any(bad):
            i = int(np.flatnonzero(bad)[0])
            msg = (
                f"the PSFEx PSF at (x, y) = ({float(xf[i])!r}, {float(yf[i])!r}) has a "
                f"non-positive or non-finite sum ({float(sums[i])!r}) over a {size}x{size} stamp; "
                f"{int(bad.sum())} of {bad.size} positions are affected (is the polynomial "
                "extrapolated far from the PSFEx stars?)"
            )
            raise ValueError(msg)
        # one pass over the output: scale the weights, not the stamps
        stamps = (weights / sums[:, np.newaxis]) @ templates.reshape(len(self.basis), size * size)
        return stamps.reshape(xf.size, size, size)

    def stamp_components(self, size):
        """The stamps as weights times fixed templates (the polynomial is linear).

        Returns ``(templates, weights)``: the basis images resampled onto
        ``size`` x ``size`` stamps, shape (n_basis, size, size), and a function
        ``weights(x, y) -> (n, n_basis)`` (the monomials divided by the stamp
        sum) with ``stamps(x, y, size) == weights(x, y) @ templates``.
        """
        size = _check_size(size)
        templates = self._grid.templates(size)
        sums = templates.sum(axis=(1, 2))

        def weights(x, y):
            xf, yf, _ = _check_positions(x, y)
            monomials = self._monomials(xf, yf)
            return monomials / (monomials @ sums)[:, np.newaxis]

        return templates, weights

    # ----------------------------------------------------- astropy model

    @property
    def bounding_box(self):
        """
        The region the PSF grid covers around ``(x_0, y_0)``, in pixels.

        Half a PSF pixel beyond the outermost grid samples, as photutils'
        ``ImagePSF`` has it.
        """
        ny, nx = self.basis.shape[1:]
        cy, cx = self._grid.centre
        s = self.psf_samp
        return ((self.y_0 - (cy + 0.5) * s, self.y_0 + (ny - 1 - cy + 0.5) * s),
                (self.x_0 - (cx + 0.5) * s, self.x_0 + (nx - 1 - cx + 0.5) * s))

    def evaluate(self, x, y, flux, x_0, y_0):
        """
        ``flux`` times the PSF of position ``(x_0, y_0)``, centred there.

        Parameters
        ----------
        x, y : float or array_like
            Where to evaluate, in 0-based pixel coordinates.
        flux : float
            The total flux.
        x_0, y_0 : float
            The PSF centre (and the detector position whose PSF it is).

        Returns
        -------
        values : `~numpy.ndarray`
            The model at ``(x, y)``: zero off the PSF grid.

        Raises
        ------
        ValueError
            If the PSF of ``(x_0, y_0)`` has a non-positive or non-finite
            sum (see `stamps`).
        """
        flux, x_0, y_0 = (_scalar_parameter(p, name) for p, name in
                          ((flux, "flux"), (x_0, "x_0"), (y_0, "y_0")))
        x, y = np.broadcast_arrays(np.asarray(x, dtype=np.float64),
                                   np.asarray(y, dtype=np.float64))
        centre = np.array([x_0]), np.array([y_0])
        weights = self._monomials(*centre)[0]
        # the normalization of the centred natural-size stamp, so that
        # evaluate at integer offsets reproduces `stamps` exactly
        size = self.natural_size
        total = float(weights @ self._grid.templates(size).sum(axis=(1, 2)))
        if not (np.isfinite(total) and total > 0):
            msg = (
                f"the PSFEx PSF at (x_0, y_0) = ({x_0!r}, {y_0!r}) has a non-positive or "
                f"non-finite sum ({total!r}) over a {size}x{size} stamp (is the polynomial "
                "extrapolated far from the PSFEx stars?)"
            )
            raise ValueError(msg)
        image = np.tensordot(weights, self.basis, axes=(0, 0))
        ny, nx = image.shape
        cy, cx = self._grid.centre
        s = self.psf_samp
        ty, wy = _lanczos_taps(cy + (y.ravel() - y_0) / s, ny)
        tx, wx = _lanczos_taps(cx + (x.ravel() - x_0) / s, nx)
        samples = image[ty[:, :, np.newaxis], tx[:, np.newaxis, :]]  # (m, taps, taps)
        values = np.einsum("mj,mji,mi->m", wy, samples, wx)
        return (flux / total * values).reshape(x.shape)


# ---------------------------------------------------------------- helpers


def _lanczos3(t):
    """The Lanczos-3 kernel sinc(t) sinc(t / 3), zero for |t| >= 3."""
    return np.where(np.abs(t) < _LANCZOS_ORDER, np.sinc(t) * np.sinc(t / _LANCZOS_ORDER), 0.0)


def _lanczos_taps(coords, n):
    """
    PSFEx's Lanczos-3 interpolation weights at PSF grid coordinates.

    Returns the tap indices and weights, both ``(m, 6)``: the taps are grid
    samples ``floor(c) - 2 .. floor(c) + 3``; taps off the grid get no weight
    and the others are normalized to unit sum, as ``vignet_resample`` does
    (it keeps them unnormalized if their sum is not positive). Coordinates
    off the grid, ``c < 0`` or ``c > n - 1``, get zero weights: PSFEx leaves
    those output samples at zero.
    """
    coords = np.asarray(coords, dtype=np.float64).ravel()
    valid = (coords >= 0) & (coords <= n - 1)
    # far-off coordinates only need harmless tap indices
    safe = np.where(valid, coords, 0.0)
    taps = np.floor(safe).astype(np.intp)[:, np.newaxis] - (_LANCZOS_ORDER - 1) + np.arange(_N_TAPS)
    weights = _lanczos3(taps - safe[:, np.newaxis])
    weights[(taps < 0) | (taps > n - 1)] = 0.0
    total = weights.sum(axis=1, keepdims=True)
    weights = np.divide(weights, total, out=weights, where=total > 0)
    weights[~valid] = 0.0
    return np.clip(taps, 0, n - 1), weights


def _resampling_matrix(coords, n):
    """Dense (len(coords), n) matrix of the Lanczos-3 interpolation at ``coords``."""
    taps, weights = _lanczos_taps(coords, n)
    matrix = np.zeros((taps.shape[0], n))
    rows = np.repeat(np.arange(taps.shape[0]), taps.shape[1])
    # clipped taps repeat an index with zero weight: accumulate, do not assign
    np.add.at(matrix, (rows, taps.ravel()), weights.ravel())
    return matrix


def _check_context(context, where="context"):
    """Validate the names of the polynomial variables; return a tuple."""
    if isinstance(context, str) or not isinstance(context, (tuple, list)):
        msg = f"{where} must be a tuple of two names or (), got {context!r}"
        raise TypeError(msg)
    context = tuple(context)
    if not all(isinstance(name, str) for name in context):
        msg = f"{where} must hold names (str), got {context!r}"
        raise TypeError(msg)
    context = tuple(name.strip().upper() for name in context)
    if len(context) not in (0, 2):
        msg = (f"{where} must name two variables (x, y) or none (a constant PSF), "
               f"got {len(context)}: {context!r}")
        raise ValueError(msg)
    if context:
        allowed = ", ".join(f"{a}/{b}" for a, b in _POSITION_CONTEXTS)
        for name, axis, names in ((context[0], "x", _X_CONTEXTS), (context[1], "y", _Y_CONTEXTS)):
            if name not in names:
                msg = (
                    f"{where}: the PSF varies with context variable {name!r}, which is not "
                    f"a SExtractor {axis} pixel position; only PSF models that vary with the "
                    f"detector position are supported, with (x, y) variables one of {allowed}"
                )
                raise ValueError(msg)
    return context


def _check_real(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.number)):
        msg = f"{name} must be a real number, got {value!r}"
        raise TypeError(msg)
    value = float(value)
    if not np.isfinite(value):
        msg = f"{name} must be finite, got {value!r}"
        raise ValueError(msg)
    return value


def _check_positive(value, name):
    value = _check_real(value, name)
    if not value > 0:
        msg = f"{name} must be positive, got {value!r}"
        raise ValueError(msg)
    return value


def _check_pair(value, name, *, nonzero=False):
    if value is None:
        msg = f"{name} is required for a PSF that varies with position (2 numbers: x, y)"
        raise ValueError(msg)
    if isinstance(value, str) or np.ndim(value) != 1 or len(value) != 2:
        msg = f"{name} must be a sequence of 2 real numbers (x, y), got {value!r}"
        raise TypeError(msg) if np.ndim(value) == 0 else ValueError(msg)
    pair = tuple(_check_real(v, f"{name}[{i}]") for i, v in enumerate(value))
    if nonzero and 0.0 in pair:
        msg = f"{name} must not be zero (it divides the position), got {value!r}"
        raise ValueError(msg)
    return pair


def _check_degree(value):
    if value is None:
        msg = "poldeg is required for a PSF that varies with position (an integer >= 0)"
        raise ValueError(msg)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)):
        msg = f"poldeg must be an integer >= 0, got {value!r}"
        raise TypeError(msg)
    if value < 0:
        msg = f"poldeg must be an integer >= 0, got {value!r}"
        raise ValueError(msg)
    return int(value)


def _check_basis(basis, n_terms, poldeg, context):
    try:
        data = np.asarray(basis)
    except (TypeError, ValueError) as exc:  # ragged nested sequences
        msg = f"basis must be an array of real numbers, got {type(basis).__name__}: {exc}"
        raise TypeError(msg) from exc
    if data.dtype.kind not in "biuf":
        msg = f"basis must be an array of real numbers, got dtype {data.dtype}"
        raise TypeError(msg)
    original_shape = data.shape
    if data.ndim == 4 and data.shape[0] == 1:  # one PSF_MASK table cell
        data = data[0]
    elif data.ndim == 2:
        data = data[np.newaxis]
    if data.ndim != 3:
        msg = (f"basis must have shape (n_basis, ny, nx), (1, n_basis, ny, nx) or (ny, nx), "
               f"got {original_shape}")
        raise ValueError(msg)
    if data.shape[0] != n_terms:
        what = (f"a degree-{poldeg} polynomial of {' and '.join(context)} has "
                f"{n_terms} terms" if context else "a constant PSF has 1 basis image")
        msg = f"basis has {data.shape[0]} basis images (shape {original_shape}), but {what}"
        raise ValueError(msg)
    if min(data.shape[1:]) < _MIN_GRID_SIZE:
        msg = (f"basis images must be at least {_MIN_GRID_SIZE}x{_MIN_GRID_SIZE} PSF pixels, "
               f"got {data.shape[1:]}")
        raise ValueError(msg)
    data = data.astype(np.float64)  # a private copy in native byte order
    if not np.all(np.isfinite(data)):
        nbad = int(np.count_nonzero(~np.isfinite(data)))
        msg = f"basis must contain only finite values, got {nbad} non-finite of {data.size}"
        raise ValueError(msg)
    data.flags.writeable = False
    return data


def _check_size(size):
    if isinstance(size, (bool, np.bool_)) or not isinstance(size, (numbers.Integral, np.integer)):
        msg = f"size must be an odd integer >= 1, got {size!r}"
        raise TypeError(msg)
    if size < 1 or size % 2 == 0:
        msg = f"size must be an odd integer >= 1, got {size!r}"
        raise ValueError(msg)
    return int(size)


def _check_positions(x, y):
    """Broadcast positions; return flat float64 x, y and the broadcast shape."""
    try:
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        msg = f"x and y must be real numbers or arrays of them: {exc}"
        raise TypeError(msg) from exc
    try:
        x, y = np.broadcast_arrays(x, y)
    except ValueError as exc:
        msg = f"x and y must have broadcastable shapes, got {x.shape} and {y.shape}"
        raise ValueError(msg) from exc
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        msg = "x and y must be finite, got non-finite positions"
        raise ValueError(msg)
    return x.ravel(), y.ravel(), x.shape


def _scalar_parameter(value, name):
    """One parameter value from what astropy passes to evaluate."""
    array = np.asarray(value, dtype=np.float64)
    if array.size != 1:
        msg = f"PSFExPSF evaluates one model at a time; {name} has {array.size} values"
        raise ValueError(msg)
    return float(array.reshape(()))
