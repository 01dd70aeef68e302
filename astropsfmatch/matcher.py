"""Match an image to a target PSF: ModelPsfMatcher, MatchResult and match_psf."""

import numbers
import time
import warnings
from dataclasses import dataclass

import numpy as np
from astropy.utils.exceptions import AstropyUserWarning

from . import __version__
from ._kernels._threads import numba_threads
from ._logging import log
from .basis import alard_lupton_sigmas
from .cells import Candidate, CellGrid, psf_stamp_size
from .config import MatchConfig
from .convolve import _check_workers, convolve_spatially_varying
from .nddata import build_matched_ccd, inverse_variance_weights, parse_image
from .psf import _as_psf
from .solve import KernelBasis, solve_spatial_kernel

__all__ = ["MatchResult", "ModelPsfMatcher", "match_psf"]

#: Largest PSF stamp used in the fit, in kernel sizes (plus one pixel).
_MAX_STAMP_PER_KERNEL = 4

#: Second-moment deficit (px²) of the target below which no deconvolution is reported.
_DECONVOLUTION_TOLERANCE = 0.05


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
        One per cell: position, source and target stamps, per-candidate fit.
    metadata : dict
        Basis, spatial solution and condition number, kernel sum, candidate
        counts, residual statistics and timings of each stage.
    weights : ndarray or None
        Inverse-variance weights (0 where masked), for
        ``reproject_and_coadd(..., input_weights=...)``; None without an
        input uncertainty.
    target_psf : ndarray
        The unit-flux target PSF stamp at the image centre.
    config : MatchConfig
        The configuration used.
    grid : CellGrid
        The cell grid of the candidates.
    """

    matched: object
    kernel: object
    candidates: list
    metadata: dict
    weights: np.ndarray = None
    target_psf: np.ndarray = None
    config: MatchConfig = None
    grid: CellGrid = None

    def __repr__(self):
        shape = self.matched.shape
        return (f"<MatchResult shape={shape} candidates={len(self.candidates)} "
                f"kernel_size={self.kernel.kernel_size} "
                f"condition_number={self.metadata['spatial']['condition_number']:.3g}>")

    def plot_candidates(self, **kwargs):
        """Figure of the candidates: see `astropsfmatch.diagnostics.plot_candidates`."""
        from . import diagnostics

        return diagnostics.plot_candidates(self, **kwargs)

    def plot_basis(self, **kwargs):
        """Figure of the kernel basis: see `astropsfmatch.diagnostics.plot_basis`."""
        from . import diagnostics

        return diagnostics.plot_basis(self, **kwargs)

    def plot_kernel_mosaic(self, **kwargs):
        """Kernel mosaic figure: see `astropsfmatch.diagnostics.plot_kernel_mosaic`."""
        from . import diagnostics

        return diagnostics.plot_kernel_mosaic(self, **kwargs)

    def plot_spatial_coefficients(self, **kwargs):
        """Coefficient maps: see `astropsfmatch.diagnostics.plot_spatial_coefficients`."""
        from . import diagnostics

        return diagnostics.plot_spatial_coefficients(self, **kwargs)

    def plot_cells(self, image=None, **kwargs):
        """The cells over an image: see `astropsfmatch.diagnostics.plot_cells`."""
        from . import diagnostics

        return diagnostics.plot_cells(self, image, **kwargs)

    def save_diagnostics(self, directory, image=None, **kwargs):
        """Write all diagnostic PNGs: see `astropsfmatch.diagnostics.save_diagnostics`."""
        from . import diagnostics

        return diagnostics.save_diagnostics(self, directory, image, **kwargs)


def _check_kernel_sum(kernel_sum):
    if isinstance(kernel_sum, bool) or not isinstance(kernel_sum, numbers.Real) \
            or not np.isfinite(kernel_sum) or kernel_sum <= 0:
        msg = f"kernel_sum must be a finite number > 0, got {kernel_sum!r}"
        raise ValueError(msg)
    return float(kernel_sum)


def _summary(values):
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return {"mean": np.nan, "median": np.nan, "std": np.nan, "max": np.nan}
    return {"mean": float(values.mean()), "median": float(np.median(values)),
            "std": float(values.std()), "max": float(values.max())}


def _covariances(stamps):
    """Second-moment matrices (n, 2, 2) of stamps (n, S, S) about their centroids, in px²."""
    size = stamps.shape[-1]
    d = np.arange(size, dtype=float) - size // 2
    total = stamps.sum(axis=(1, 2))
    px = stamps.sum(axis=1)  # profile along x
    py = stamps.sum(axis=2)
    mx, my = px @ d / total, py @ d / total
    mxx = px @ d**2 / total - mx**2
    myy = py @ d**2 / total - my**2
    mxy = np.einsum("nyx,y,x->n", stamps, d, d) / total - mx * my
    return np.stack([np.stack([mxx, mxy], -1), np.stack([mxy, myy], -1)], -2)


def _deconvolution_depth(sources, targets):
    """Per candidate, how much narrower (px², >= 0) the target is than the source
    along its narrowest direction: the smallest eigenvalue of the difference of
    their second-moment matrices, sign flipped; 0 where the target is broader
    in every direction, as a convolution needs.
    """
    difference = _covariances(targets) - _covariances(sources)
    return np.maximum(-np.linalg.eigvalsh(difference)[:, 0], 0.0)


def _warn_if_deconvolving(sources, targets):
    """Warn when the target PSF is narrower than the source PSF somewhere.

    Matching to a narrower PSF is a deconvolution: the kernel oscillates and
    the noise is amplified. Widths are compared through second moments of the
    realized stamps, along every direction (elliptical PSFs included); a
    tolerance of 0.05 px² absorbs pixelization.
    """
    depth = _deconvolution_depth(sources, targets)
    bad = depth > _DECONVOLUTION_TOLERANCE
    if bad.any():
        msg = (f"target_psf is narrower than the source PSF at {int(bad.sum())} of "
               f"{len(bad)} cells (second-moment variance smaller by up to "
               f"{depth.max():.3g} px² along some direction): matching there is a "
               "deconvolution, which amplifies noise and leaves residuals; use a broader "
               "target, e.g. from common_target_psf")
        warnings.warn(msg, AstropyUserWarning, stacklevel=4)


def _fit_order_to_grid(config, grid):
    """Lower the spatial order when the grid has too few cells to determine it.

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
    warnings.warn(msg, AstropyUserWarning, stacklevel=4)
    return config.replace(spatial_order=possible)


class ModelPsfMatcher:
    """Match images to a target PSF with a spatially varying kernel.

    The kernel is solved from the two PSF models alone (no stars needed):
    at the centre of each cell the source PSF and the target PSF are
    realized as stamps, the Alard-Lupton kernel that turns one into the
    other is fitted with coefficients that vary smoothly over the image,
    and the image is convolved exactly with that kernel.

    Parameters
    ----------
    config : MatchConfig, optional
        Options; defaults are those of the reference pipeline.
    **options
        Overrides of single ``config`` fields.

    Examples
    --------
    >>> import numpy as np
    >>> from astropy.nddata import CCDData
    >>> from photutils.psf import CircularGaussianPRF
    >>> from astropsfmatch import ModelPsfMatcher
    >>> rng = np.random.default_rng(0)
    >>> ccd = CCDData(rng.normal(size=(256, 256)), unit='adu')
    >>> matcher = ModelPsfMatcher(cell_size=64)
    >>> result = matcher.match(ccd, CircularGaussianPRF(fwhm=5.0),
    ...                        source_psf=CircularGaussianPRF(fwhm=3.0))
    >>> result.matched.shape, round(result.kernel.kernel_sum, 6)
    ((256, 256), 1.0)
    >>> result.metadata['candidates']
    {'total': 16, 'used': 16, 'rejected': 0}
    """

    def __init__(self, config=None, **options):
        if config is None:
            config = MatchConfig()
        elif not isinstance(config, MatchConfig):
            msg = f"config must be a MatchConfig, got {type(config).__name__}"
            raise TypeError(msg)
        self.config = config.replace(**options) if options else config

    def __repr__(self):
        return f"ModelPsfMatcher({self.config!r})"

    def _basis(self, source, target, grid):
        config = self.config
        if config.kernel_basis == "delta-function":
            return KernelBasis.delta_function(config.kernel_size)
        if config.scale_by_fwhm:
            cx = np.array([(grid.shape[1] - 1) / 2.0])
            cy = np.array([(grid.shape[0] - 1) / 2.0])
            params = alard_lupton_sigmas(
                float(source.fwhm(cx, cy)[0]), float(target.fwhm(cx, cy)[0]),
                sigmas=config.alard_sigmas, degrees=config.alard_degrees,
                min_sigma=config.alard_min_sigma, min_sigma_deconv=config.alard_min_sigma_deconv,
                degree_deconv=config.alard_degree_deconv, gauss_beta=config.alard_gauss_beta,
                fwhm_scaling=config.kernel_size_fwhm_scaling,
                kernel_size_min=config.kernel_size_min, kernel_size_max=config.kernel_size_max,
                kernel_size=config.kernel_size)
            return KernelBasis.alard_lupton(params.kernel_size, params.sigmas, params.degrees,
                                            mode=params.mode)
        return KernelBasis.alard_lupton(config.kernel_size, config.alard_sigmas,
                                        config.alard_degrees, mode="config")

    def solve(self, shape, source_psf, target_psf, *, kernel_sum=1.0, workers=None):
        """Solve the matching kernel for an image shape without convolving anything.

        Returns ``(solution, candidates, grid, target_stamp, timings)``; used
        by :meth:`match`, and useful to inspect or save a kernel.
        """
        config = self.config
        kernel_sum = _check_kernel_sum(kernel_sum)
        if workers is not None:
            workers = _check_workers(workers)
        timings = {}
        t0 = time.perf_counter()
        source = _as_psf(source_psf, name="source_psf", psf_size=config.psf_size)
        target = _as_psf(target_psf, name="target_psf", psf_size=config.psf_size)
        grid = CellGrid(shape, config.cell_size, grow=config.grow_cells)
        config = _fit_order_to_grid(config, grid)
        x, y = grid.positions()
        basis = self._basis(source, target, grid)
        native = source.native_size(x, y)
        # heavy-winged analytic PSFs (Airy, low-beta Moffat) hold 99.9% of their
        # flux only on stamps of hundreds of pixels; the fit needs far less
        largest = _MAX_STAMP_PER_KERNEL * basis.size + 1
        if native > largest:
            log.debug(f"source PSF stamps of {native} px capped at {largest} px")
            native = largest
        size = psf_stamp_size(native, basis.size,
                              auto_pad_psf=config.auto_pad_psf,
                              auto_pad_psf_to=config.auto_pad_psf_to,
                              pad_psf_by=config.pad_psf_by)
        sources = source.stamps(x, y, size)
        targets = target.stamps(x, y, size) * kernel_sum
        centre = ((shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0)
        target_stamp = target.stamps(np.array([centre[0]]), np.array([centre[1]]), size)[0]
        timings["psf_realization"] = time.perf_counter() - t0
        _warn_if_deconvolving(sources, targets)
        log.debug(f"{grid.n_candidates} candidates, PSF stamps {size}x{size}, "
                  f"{basis.n_basis} basis functions of {basis.size}x{basis.size}")

        t0 = time.perf_counter()
        with numba_threads(workers):
            solution = solve_spatial_kernel(sources, targets, x, y, basis=basis, config=config,
                                            bbox=grid.bbox, kernel_sum=kernel_sum)
        timings["kernel_solution"] = time.perf_counter() - t0
        index = [(iy, ix) for iy in range(grid.n_cells[0]) for ix in range(grid.n_cells[1])]
        candidates = []
        for k, (iy, ix) in enumerate(index):
            candidates.append(Candidate(
                index=(iy, ix), x=float(x[k]), y=float(y[k]), source=sources[k],
                target=targets[k], fit=solution.fits[k], rejected=bool(solution.rejected[k]),
                reason=solution.reasons[k],
                spatial_residual_max=float(solution.spatial_residual_max[k])))
        return solution, candidates, grid, target_stamp, timings

    def match(self, image, target_psf, *, source_psf=None, kernel_sum=1.0, workers=None):
        """Convolve ``image`` so that its PSF becomes ``target_psf`` everywhere.

        Parameters
        ----------
        image : `~astropy.nddata.CCDData`, `~astropy.nddata.NDData` or 2-D array
            Image to match. Its uncertainty (std, variance or inverse
            variance) and mask are propagated.
        target_psf : photutils PSF model, astropy 2-D model, or 2-D array
            The PSF to match to (usually a constant, broader Gaussian or
            Moffat).
        source_psf : same kinds, optional
            The image's PSF; default ``image.psf``. Required for arrays.
        kernel_sum : float, optional
            Sum of the solved kernel (the reference task's factor). The
            image convolution is normalized by it, so fluxes are conserved.
        workers : int, optional
            Threads to use (numba loops and FFTs); default all the CPUs.
            Set it when running several matches at once on one machine
            (`match_many` sets it to each dask worker's thread count).

        Returns
        -------
        result : MatchResult

        Raises
        ------
        ValueError
            No source PSF, an image smaller than one cell, a kernel too large
            for the PSF stamps, a bad PSF or kernel_sum.
        TypeError
            Unsupported image, uncertainty or PSF type.
        """
        start = time.perf_counter()
        parsed = parse_image(image, source_psf)
        solution, candidates, grid, target_stamp, timings = self.solve(
            parsed.data.shape, parsed.psf, target_psf, kernel_sum=kernel_sum, workers=workers)

        t0 = time.perf_counter()
        with numba_threads(workers):
            convolved = convolve_spatially_varying(parsed.data, solution.kernel,
                                                   variance=parsed.variance, mask=parsed.mask,
                                                   workers=workers)
        timings["convolution"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        metadata = self._metadata(solution, candidates, grid, target_stamp, kernel_sum)
        record = self._record(metadata, target_psf)
        matched = build_matched_ccd(parsed, convolved.data, convolved.variance, convolved.mask,
                                    target_stamp=target_stamp, record=record)
        with numba_threads(workers):
            weights = inverse_variance_weights(convolved.variance, convolved.mask)
        timings["output"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - start
        metadata["timings"] = timings
        log.debug(f"matched {parsed.data.shape} image in {timings['total']:.2f} s "
                 f"(kernel {solution.kernel.kernel_size}x{solution.kernel.kernel_size}, "
                 f"condition number {metadata['spatial']['condition_number']:.3g})")
        return MatchResult(matched=matched, kernel=solution.kernel, candidates=candidates,
                           metadata=metadata, weights=weights, target_psf=target_stamp,
                           config=self.config, grid=grid)

    def _metadata(self, solution, candidates, grid, target_stamp, kernel_sum):
        basis = solution.basis
        used = [c for c in candidates if not c.rejected]
        params = basis.parameters
        basis_meta = {"kind": basis.kind, "n_basis": basis.n_basis, "kernel_size": basis.size}
        if basis.kind == "alard-lupton":
            basis_meta.update({"n_gauss": len(params["sigmas"]), "sigmas": params["sigmas"],
                               "degrees": params["degrees"], "mode": params["mode"]})
        elif basis.kind == "pca":
            basis_meta.update({"from": params["from"], "n_components": params["n_components"]})
        return {
            "version": __version__,
            "basis": basis_meta,
            "spatial": {"model": solution.kernel.spatial_model,
                        "order": solution.kernel.spatial_order,
                        "requested_order": self.config.spatial_order,
                        "n_terms": solution.kernel.n_terms,
                        "n_unknowns": solution.info["n_unknowns"],
                        "condition_number": solution.info["spatial_condition_number"],
                        "solver": solution.info["solver"]},
            "kernel_sum": float(kernel_sum),
            "psf_stamp_size": int(target_stamp.shape[0]),
            "grid": {"n_cells": grid.n_cells, "cell_size": grid.cell_size},
            "candidates": {"total": len(candidates), "used": len(used),
                           "rejected": len(candidates) - len(used)},
            "candidate_residuals": _summary([c.fit.residual_max for c in used]),
            "spatial_residuals": _summary([c.spatial_residual_max for c in used]),
            "regularization_lambda": solution.info["regularization_lambda"],
            "solver_timings": solution.info["timings"],
        }

    def _record(self, metadata, target_psf):
        """FITS-safe keywords recording the operation."""
        basis = metadata["basis"]
        described = type(target_psf).__name__
        fwhm = getattr(target_psf, "fwhm", None)
        if fwhm is not None and np.ndim(getattr(fwhm, "value", fwhm)) == 0:
            described += f" fwhm={float(getattr(fwhm, 'value', fwhm)):.4g}"
        return {
            "PSFMATCH": (True, "PSF-matched by astropsfmatch"),
            "PSFMVERS": (str(metadata["version"]), "astropsfmatch version"),
            "PSFMTPSF": (described[:60], "target PSF"),
            "PSFMKSZ": (basis["kernel_size"], "matching kernel size (pixels)"),
            "PSFMBAS": (basis["kind"], "kernel basis"),
            "PSFMNBAS": (basis["n_basis"], "number of basis functions"),
            "PSFMSPM": (metadata["spatial"]["model"], "spatial model"),
            "PSFMSPO": (metadata["spatial"]["order"], "spatial order"),
            "PSFMKSUM": (metadata["kernel_sum"], "kernel sum (convolution normalized by it)"),
            "PSFMCOND": (float(metadata["spatial"]["condition_number"]),
                         "spatial condition number"),
            "PSFMNCND": (metadata["candidates"]["used"], "kernel candidates used"),
            "PSFMRMAX": (metadata["spatial_residuals"]["max"],
                         "max candidate residual / target peak"),
        }


def match_psf(image, target_psf, *, source_psf=None, kernel_sum=1.0, config=None, **options):
    """Match an image to a target PSF in one call.

    Equivalent to ``ModelPsfMatcher(config, **options).match(image,
    target_psf, source_psf=source_psf, kernel_sum=kernel_sum)``.

    Parameters
    ----------
    image : `~astropy.nddata.CCDData`, `~astropy.nddata.NDData` or 2-D array
        Image to match.
    target_psf : photutils PSF model, astropy 2-D model, or 2-D array
        The PSF to match to.
    source_psf : optional
        The image's PSF; default ``image.psf``.
    kernel_sum : float, optional
        Sum of the kernel (the image convolution is normalized by it).
    config : MatchConfig, optional
        Base configuration.
    **options
        `MatchConfig` fields, e.g. ``kernel_size=21, spatial_order=2``.

    Returns
    -------
    result : MatchResult

    Examples
    --------
    >>> import numpy as np
    >>> from photutils.psf import CircularGaussianPRF
    >>> from astropsfmatch import match_psf
    >>> image = np.zeros((256, 256))
    >>> image[128, 128] = 100.0
    >>> result = match_psf(image, CircularGaussianPRF(fwhm=5.0),
    ...                    source_psf=CircularGaussianPRF(fwhm=3.0), cell_size=64)
    >>> round(float(np.nansum(result.matched.data)), 3)
    100.0
    """
    return ModelPsfMatcher(config, **options).match(image, target_psf, source_psf=source_psf,
                                                    kernel_sum=kernel_sum)
