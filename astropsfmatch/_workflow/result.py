"""The result of a PSF match: `MatchResult`."""

from dataclasses import dataclass

import numpy as np
from astropy.utils.exceptions import AstropyUserWarning

from .._engine.basis import KernelBasis
from .._engine.grid import CellGrid
from .._engine.moments import half_max_fwhm
from ..config import MatchConfig

# the public names of this module, re-exported by astropsfmatch/__init__.py
__all__ = ["MatchQualityWarning", "MatchResult"]


class MatchQualityWarning(AstropyUserWarning):
    """A match did not reach its target: the held-out residual is above ``max_residual``.

    The result is returned (and can be inspected), but the matched image's
    PSF is not the target to the accuracy asked for; the command line exits
    with status 3 and writes nothing.
    """


@dataclass
class MatchResult:
    """Everything a PSF match produced.

    Attributes
    ----------
    matched : `~astropy.nddata.CCDData`
        The PSF-matched image: same shape, unit and WCS as the input;
        uncertainty of the input's kind (variance propagated through the
        kernel, so the noise is now correlated between neighbouring pixels);
        mask grown by the kernel footprint; masked and edge pixels NaN;
        ``psf`` the target stamp; the operation recorded in ``meta``.
    kernel : SpatialKernel
        The spatially varying matching kernel.
    candidates : list of Candidate
        One per cell: position, source and target stamps, per-candidate fit,
        and the residual of the spatial kernel there.
    metadata : dict
        Basis, spatial solution and condition number, kernel sum, candidate
        counts, residual statistics, timings of each stage, and ``quality``:
        the verdict at held-out positions, where the kernel was not fitted
        (``heldout_residual_max``, ``heldout_residual_rms``,
        ``fwhm_deviation_max``, ``ellipticity_max``, ``noise_gain``,
        ``noise_gain_gaussian``, ``passed``; see the user guide).
    weights : ndarray or None
        Inverse-variance weights (0 where masked), for
        ``reproject_and_coadd(..., input_weights=...)``; None without an
        input uncertainty.
    target_psf : ndarray
        The unit-flux target PSF stamp at the image centre.
    config : MatchConfig
        The configuration that was run: the matcher's, with any option the
        match had to change (e.g. a ``spatial_order`` lowered for a small
        grid) as it was used.
    grid : CellGrid
        The cell grid of the candidates.
    basis : KernelBasis
        The basis of the kernel, with a label per function.
    source_psf : object
        The source PSF the match used (the model or array it was given).
    heldout : `~astropy.table.Table`
        The held-out positions of the verdict (``x``, ``y``, 0-based pixels)
        and the largest ``|source ⊛ K(x, y) - target| / peak`` at each
        (``residual_max``): where in the field the kernel is worst (see
        `~astropsfmatch.diagnostics.plot_heldout`).
    """

    matched: object
    kernel: object
    candidates: list
    metadata: dict
    weights: np.ndarray = None
    target_psf: np.ndarray = None
    config: MatchConfig = None
    grid: CellGrid = None
    basis: KernelBasis = None
    source_psf: object = None
    heldout: object = None

    def __repr__(self):
        shape = self.matched.shape
        return (f"<MatchResult shape={shape} candidates={len(self.candidates)} "
                f"kernel_size={self.kernel.kernel_size} "
                f"condition_number={self.metadata['spatial']['condition_number']:.3g}>")

    def star_check(self, image, **kwargs):
        """Measure the stars of the input ``image`` and of the matched image.

        The stars' FWHMs (Gaussian fits of isolated, unsaturated stars) before
        and after, against the source PSF model (measured the same way, on
        stars rendered with it) and the target: this is what catches a wrong
        PSF model, which the held-out verdict (model against model) cannot.

        Parameters
        ----------
        image : `~astropy.nddata.CCDData`, `~astropy.nddata.NDData` or 2-D array
            The input of the match.
        **kwargs
            Passed to `~astropsfmatch.star_check` (``stars=``, ``mask=``).

        Returns
        -------
        check : `~astropsfmatch.StarCheck`
        """
        from .stars import star_check

        source = self.source_psf
        if isinstance(source, np.ndarray) or not hasattr(source, "evaluate"):
            source = None  # star_check measures photutils models; arrays are skipped
        kwargs.setdefault("target_fwhm", self.target_fwhm())
        return star_check(image, self.matched, source_psf=source, **kwargs)

    def target_fwhm(self):
        """FWHM (pixels) of the target stamp, from a circular Gaussian fit as stars are measured."""
        from photutils.psf import fit_fwhm

        stamp = np.asarray(self.target_psf, dtype=np.float64)
        centre = stamp.shape[0] // 2
        width = float(half_max_fwhm(stamp[np.newaxis])[0])
        box = min(stamp.shape[0], 2 * int(np.ceil(1.5 * width)) + 1)
        return float(fit_fwhm(stamp, xypos=[(centre, centre)], fit_shape=max(box, 5))[0])

    def plot_candidates(self, **kwargs):
        """Figure of the candidates: see `astropsfmatch.diagnostics.plot_candidates`."""
        from ..diagnostics import plot_candidates

        return plot_candidates(self, **kwargs)

    def plot_basis(self, **kwargs):
        """Figure of the kernel basis: see `astropsfmatch.diagnostics.plot_basis`."""
        from ..diagnostics import plot_basis

        return plot_basis(self, **kwargs)

    def plot_kernel_mosaic(self, **kwargs):
        """Kernel mosaic figure: see `astropsfmatch.diagnostics.plot_kernel_mosaic`."""
        from ..diagnostics import plot_kernel_mosaic

        return plot_kernel_mosaic(self, **kwargs)

    def plot_spatial_coefficients(self, **kwargs):
        """Coefficient maps: see `astropsfmatch.diagnostics.plot_spatial_coefficients`."""
        from ..diagnostics import plot_spatial_coefficients

        return plot_spatial_coefficients(self, **kwargs)

    def plot_heldout(self, **kwargs):
        """Held-out residual map: see `astropsfmatch.diagnostics.plot_heldout`."""
        from ..diagnostics import plot_heldout

        return plot_heldout(self, **kwargs)

    def plot_kernel_moments(self, **kwargs):
        """Kernel moment maps: see `astropsfmatch.diagnostics.plot_kernel_moments`."""
        from ..diagnostics import plot_kernel_moments

        return plot_kernel_moments(self, **kwargs)

    def plot_cells(self, image=None, **kwargs):
        """The cells over an image: see `astropsfmatch.diagnostics.plot_cells`."""
        from ..diagnostics import plot_cells

        return plot_cells(self, image, **kwargs)

    def save_diagnostics(self, directory, image=None, **kwargs):
        """Write all diagnostic PNGs: see `astropsfmatch.diagnostics.save_diagnostics`."""
        from ..diagnostics import save_diagnostics

        return save_diagnostics(self, directory, image, **kwargs)
