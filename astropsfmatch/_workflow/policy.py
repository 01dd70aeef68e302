"""The choices a match makes from its inputs: spatial order, basis, PSF stamp size.

Each function takes the configuration and what is known of the two PSFs and
returns the configuration as it will be run, or a size; the matcher calls
them in order. Warnings name what was changed and why.
"""

import warnings

import numpy as np
from astropy.utils.exceptions import AstropyUserWarning

from .._engine.basis import build_basis
from .._engine.grid import psf_stamp_size
from .._engine.moments import deconvolution_depth
from .._logging import log

__all__ = []  # internal to the package: nothing here is public

#: Largest PSF stamp used in the fit, in kernel sizes (plus one pixel).
MAX_STAMP_PER_KERNEL = 4

#: Second-moment deficit (px²) of the target below which no deconvolution is reported.
_DECONVOLUTION_TOLERANCE = 0.05


def fit_order_to_grid(config, grid, *, stacklevel=4):
    """The configuration with the spatial order lowered when the grid cannot determine it.

    A 2-D polynomial of order p needs at least p + 1 distinct candidate
    positions along each axis; with fewer, the spatial normal matrix is
    singular and the kernel between candidates is arbitrary.
    """
    possible = min(grid.n_cells) - 1
    if config.spatial_order <= possible:
        return config
    msg = (f"spatial_order {config.spatial_order} needs at least {config.spatial_order + 1} "
           f"cells along each axis but the grid has {grid.n_cells} cells of "
           f"{grid.cell_size} pixels; using spatial_order {possible} (use a smaller cell_size "
           "to keep the order)")
    warnings.warn(msg, AstropyUserWarning, stacklevel=stacklevel)
    return config.replace(spatial_order=possible)


def choose_basis(config, source, target, grid):
    """The kernel basis of a match (`~astropsfmatch._engine.basis.build_basis`).

    With ``scale_by_fwhm`` the widths come from the two PSFs at the image
    centre.
    """
    if config.kernel_basis == "alard-lupton" and config.scale_by_fwhm:
        cx = np.array([(grid.shape[1] - 1) / 2.0])
        cy = np.array([(grid.shape[0] - 1) / 2.0])
        return build_basis(config, source_fwhm=float(source.fwhm(cx, cy)[0]),
                           target_fwhm=float(target.fwhm(cx, cy)[0]))
    return build_basis(config)


def stamp_size(source, x, y, kernel_size, config):
    """Side of the PSF stamps: the source PSF's natural size, padded and capped.

    Heavy-winged analytic PSFs (Airy, low-beta Moffat) hold 99.9% of their
    flux only on stamps of hundreds of pixels; the fit needs far less, so
    stamps are capped at ``MAX_STAMP_PER_KERNEL * kernel_size + 1``.
    """
    native = source.native_size(x, y)
    largest = MAX_STAMP_PER_KERNEL * kernel_size + 1
    if native > largest:
        log.debug(f"source PSF stamps of {native} px capped at {largest} px")
        native = largest
    return psf_stamp_size(native, kernel_size, auto_pad_psf=config.auto_pad_psf,
                          auto_pad_psf_to=config.auto_pad_psf_to, pad_psf_by=config.pad_psf_by)


def warn_if_deconvolving(sources, targets, *, stacklevel=4):
    """Warn when the target PSF is narrower than the source PSF somewhere.

    Matching to a narrower PSF is a deconvolution: the kernel oscillates and
    the noise is amplified. Widths are compared through second moments of the
    realized stamps, along every direction (elliptical PSFs included); a
    tolerance of 0.05 px² absorbs pixelization.
    """
    depth = deconvolution_depth(sources, targets)
    bad = depth > _DECONVOLUTION_TOLERANCE
    if bad.any():
        msg = (f"target_psf is narrower than the source PSF at {int(bad.sum())} of "
               f"{len(bad)} cells (second-moment variance smaller by up to "
               f"{depth.max():.3g} px² along some direction): matching there is a "
               "deconvolution, which amplifies noise and leaves residuals; use a broader "
               "target, e.g. from common_target_psf")
        warnings.warn(msg, AstropyUserWarning, stacklevel=stacklevel)
