"""Files on disk: the one layout of a matched exposure, and atomic, checksummed writes.

A matched exposure is one FITS file, written by `write_matched` for the
command line and for `~astropsfmatch.match_many` alike, and read back by
`read_matched` (and so by `~astropsfmatch.coadd`):

==========  =========================================================
HDU         content
==========  =========================================================
primary     the matched data, its header (the input's, with the
            ``PSFM*`` record, the WCS and ``BUNIT``)
``MASK``    the propagated mask (uint8, 1 = bad), if any
``UNCERT``  the propagated uncertainty, of the input's kind, if any
``PSFIMAGE`` the target PSF stamp (the image's new PSF)
``WEIGHTS`` the inverse-variance weights (0 where masked), if the
            input had an uncertainty
==========  =========================================================

This is `~astropy.nddata.CCDData`'s own layout plus ``WEIGHTS``, so
``CCDData.read(path)`` reads it without extra arguments. The kernel goes in
a file of its own (`~astropsfmatch.SpatialKernel.write`). Every file is
written under a temporary name and renamed into place (never a partial file
at the final path), with fresh ``CHECKSUM``/``DATASUM`` cards.

**A new array output of a match goes here** (an extension in
`matched_hdulist`, read back in `read_matched`).
"""

import os
import uuid

import numpy as np
from astropy.io import fits
from astropy.nddata import CCDData

__all__ = []  # internal to the package: nothing here is public

#: Name of the extension holding the inverse-variance weights.
WEIGHTS_EXTENSION = "WEIGHTS"

#: Keywords of the input that describe its own bytes and must not be copied.
_STALE_KEYWORDS = ("CHECKSUM", "DATASUM")


def atomic_write(path, writer):
    """Call ``writer(temporary_path)``, then rename it to ``path``.

    If anything fails, the temporary file is removed and nothing appears at
    ``path``; an existing file at ``path`` is replaced only on success.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    partial = os.path.join(directory,
                           f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.part")
    try:
        writer(partial)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def write_hdulist(hdul, path):
    """Write an HDU list atomically, with fresh checksums on every HDU."""
    for hdu in hdul:
        for key in _STALE_KEYWORDS:
            hdu.header.remove(key, ignore_missing=True, remove_all=True)
    atomic_write(path, lambda partial: hdul.writeto(partial, checksum=True))


def weights_hdu(weights, ccd):
    """The ``WEIGHTS`` image HDU: weights with the WCS and the unit ``1 / unit**2``."""
    header = fits.Header()
    if ccd.wcs is not None:
        header.update(ccd.wcs.to_header())
    header["EXTNAME"] = (WEIGHTS_EXTENSION, "inverse-variance weights, 0 where masked")
    if ccd.unit is not None:
        weight_unit = ccd.unit**-2
        try:
            text = weight_unit.to_string("fits")
        except ValueError:  # a unit FITS does not know (e.g. electron)
            text = weight_unit.to_string()
        header["BUNIT"] = (text, "1 / variance")
    header["PSFMATCH"] = (True, "weights of a PSF-matched image (astropsfmatch)")
    return fits.ImageHDU(np.asarray(weights), header=header, name=WEIGHTS_EXTENSION)


def matched_hdulist(ccd, weights=None):
    """The HDU list of a matched exposure (see the module docstring)."""
    hdul = ccd.to_hdu(hdu_mask="MASK", hdu_uncertainty="UNCERT", hdu_psf="PSFIMAGE")
    if "BUNIT" not in hdul[0].header:
        # astropy writes no BUNIT for a dimensionless unit, and CCDData.read then
        # refuses the file: an empty BUNIT reads back as dimensionless
        hdul[0].header["BUNIT"] = ("", "dimensionless")
    if weights is not None:
        hdul.append(weights_hdu(weights, ccd))
    return hdul


def write_matched(ccd, path, *, weights=None):
    """Write a matched exposure (and its weights) to ``path``, atomically.

    Parameters
    ----------
    ccd : `~astropy.nddata.CCDData`
        The matched image.
    path : str or path-like
        The FITS file to write (replaced if it exists: the caller checks
        ``overwrite`` before any work is done).
    weights : ndarray, optional
        The inverse-variance weights, written as the ``WEIGHTS`` extension.
    """
    write_hdulist(matched_hdulist(ccd, weights), path)


def read_matched(path, **read_kwargs):
    """Read a matched exposure: ``(CCDData, weights or None)``.

    ``read_kwargs`` go to `CCDData.read <astropy.nddata.CCDData.read>`. The
    weights are those of the ``WEIGHTS`` extension, if the file has one.
    """
    ccd = CCDData.read(path, **read_kwargs)
    weights = None
    with fits.open(path) as hdul:
        if WEIGHTS_EXTENSION in hdul:
            weights = np.array(hdul[WEIGHTS_EXTENSION].data, dtype=np.float64)
    return ccd, weights
