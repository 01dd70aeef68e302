"""Match an image to a target PSF: `ModelPsfMatcher` and `match_psf`."""

import time

import numpy as np

from .._adapters.nddata import build_matched_ccd, parse_image
from .._adapters.psf import as_psf
from .._engine.candidates import Candidate
from .._engine.convolve import check_convolution_inputs, convolve_checked
from .._engine.grid import CellGrid
from .._engine.solve import solve_spatial_kernel
from .._engine.weights import inverse_variance_weights
from .._logging import log
from .._threads import resolve_workers, thread_scope
from .._validate import check_type, real
from ..config import MatchConfig
from . import policy
from .provenance import MATCH_HISTORY, match_metadata, match_record
from .result import MatchResult

# the public names of this module, re-exported by astropsfmatch/__init__.py
__all__ = ["ModelPsfMatcher", "match_psf"]

_check_kernel_sum = real(gt=0, normal=True)


class _Solved:
    """What `ModelPsfMatcher.solve` found, unpacked as ``(solution, candidates, grid,
    target_stamp, timings)``, with the configuration that was run in ``config``.
    """

    def __init__(self, solution, candidates, grid, target_stamp, timings, config,
                 unit_kernel):
        self.solution = solution
        self.unit_kernel = unit_kernel
        self.candidates = candidates
        self.grid = grid
        self.target_stamp = target_stamp
        self.timings = timings
        self.config = config

    def __iter__(self):
        return iter((self.solution, self.candidates, self.grid, self.target_stamp,
                     self.timings))

    def __getitem__(self, index):
        return tuple(self)[index]

    def __len__(self):
        return 5


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
        check_type("config", config, MatchConfig, "a MatchConfig")
        self.config = config.replace(**options) if options else config

    def __repr__(self):
        return f"ModelPsfMatcher({self.config!r})"

    def solve(self, shape, source_psf, target_psf, *, kernel_sum=1.0, workers=None):
        """Solve the matching kernel for an image shape without convolving anything.

        Returns ``(solution, candidates, grid, target_stamp, timings)`` (the
        configuration that was run is in its ``config`` attribute); used by
        :meth:`match`, and useful to inspect or save a kernel.
        """
        kernel_sum = _check_kernel_sum("kernel_sum", kernel_sum)
        with thread_scope(workers):
            return self._solve(shape, source_psf, target_psf, kernel_sum)

    def _solve(self, shape, source_psf, target_psf, kernel_sum):
        """`solve` inside the caller's thread scope."""
        timings = {}
        t0 = time.perf_counter()
        config = self.config
        source = as_psf(source_psf, name="source_psf", psf_size=config.psf_size)
        target = as_psf(target_psf, name="target_psf", psf_size=config.psf_size)
        grid = CellGrid(shape, config.cell_size, grow=config.grow_cells)
        config = policy.fit_order_to_grid(config, grid, stacklevel=5)
        x, y = grid.positions()
        basis = policy.choose_basis(config, source, target, grid)
        size = policy.stamp_size(source, x, y, basis.size, config)
        sources = source.stamps(x, y, size)
        targets = target.stamps(x, y, size)
        centre = ((shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0)
        target_stamp = target.stamps(np.array([centre[0]]), np.array([centre[1]]), size)[0]
        timings["psf_realization"] = time.perf_counter() - t0
        policy.warn_if_deconvolving(sources, targets, stacklevel=5)
        log.debug(f"{grid.n_candidates} candidates, PSF stamps {size}x{size}, "
                  f"{basis.n_basis} basis functions of {basis.size}x{basis.size}")

        t0 = time.perf_counter()
        # solved for a unit-sum kernel, which the image is convolved with; the
        # kernel sum is applied once, here, to the kernel that is returned
        unit = solve_spatial_kernel(sources, targets, x, y, basis=basis, config=config,
                                    bbox=grid.bbox)
        solution = unit.scaled(kernel_sum)
        timings["kernel_solution"] = time.perf_counter() - t0
        index = [(iy, ix) for iy in range(grid.n_cells[0]) for ix in range(grid.n_cells[1])]
        candidates = [
            Candidate(index=(iy, ix), x=float(x[k]), y=float(y[k]), source=sources[k],
                      target=targets[k] * kernel_sum, fit=solution.fits[k],
                      rejected=bool(solution.rejected[k]), reason=solution.reasons[k],
                      spatial_residual=solution.spatial_residuals[k],
                      spatial_residual_max=float(solution.spatial_residual_max[k]))
            for k, (iy, ix) in enumerate(index)]
        return _Solved(solution, candidates, grid, target_stamp, timings, config, unit.kernel)

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
            Threads for every stage (numba loops, FFTs, convolution tiles);
            default all the CPUs this process may use. Set it when running
            several matches at once on one machine (`match_many` sets it to
            each dask worker's thread count).

        Returns
        -------
        result : MatchResult

        Raises
        ------
        ValueError
            No source PSF, an image smaller than one cell, a kernel too large
            for the PSF stamps, a bad PSF, kernel_sum or workers.
        TypeError
            Unsupported image, uncertainty or PSF type.
        """
        start = time.perf_counter()
        kernel_sum = _check_kernel_sum("kernel_sum", kernel_sum)
        resolve_workers(workers)  # a bad value fails before any work
        parsed = parse_image(image, source_psf)
        with thread_scope(workers) as n_threads:
            solved = self._solve(parsed.data.shape, parsed.psf, target_psf, kernel_sum)
            solution, timings = solved.solution, solved.timings

            t0 = time.perf_counter()
            # the image is convolved with the unit-sum kernel: flux is conserved
            inputs = check_convolution_inputs(parsed.data, solved.unit_kernel,
                                              parsed.variance, parsed.mask, True)
            convolved = convolve_checked(*inputs, n_threads=n_threads)
            timings["convolution"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            weights = inverse_variance_weights(convolved.variance, convolved.mask)
        metadata = match_metadata(solution, solved.candidates, solved.grid,
                                  solved.target_stamp, kernel_sum=kernel_sum,
                                  config=solved.config,
                                  requested_order=self.config.spatial_order)
        matched = build_matched_ccd(parsed, convolved, weights,
                                    target_stamp=solved.target_stamp,
                                    record=match_record(metadata, target_psf),
                                    history=MATCH_HISTORY)
        timings["output"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - start
        metadata["timings"] = timings
        kernel = solution.kernel
        log.debug(f"matched {parsed.data.shape} image in {timings['total']:.2f} s "
                  f"(kernel {kernel.kernel_size}x{kernel.kernel_size}, "
                  f"condition number {metadata['spatial']['condition_number']:.3g})")
        return MatchResult(matched=matched, kernel=kernel, candidates=solved.candidates,
                           metadata=metadata, weights=weights,
                           target_psf=solved.target_stamp, config=solved.config,
                           grid=solved.grid, basis=solution.basis)


def match_psf(image, target_psf, *, source_psf=None, kernel_sum=1.0, config=None, workers=None,
              **options):
    """Match an image to a target PSF in one call.

    Equivalent to ``ModelPsfMatcher(config, **options).match(image,
    target_psf, source_psf=source_psf, kernel_sum=kernel_sum,
    workers=workers)``.

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
    workers : int, optional
        Threads for every stage; default all the CPUs this process may use.
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
                                                    kernel_sum=kernel_sum, workers=workers)
