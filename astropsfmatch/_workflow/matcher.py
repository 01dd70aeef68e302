"""Match an image to a target PSF: `ModelPsfMatcher` and `match_psf`."""

import dataclasses
import time
import warnings

import numpy as np

from .._adapters.nddata import (
    build_matched_ccd,
    parse_image,
    scaled_variance,
    unscaled,
    warn_if_dynamic_range,
)
from .._adapters.psf import as_psf
from .._engine._numba.notice import on_first_compilation
from .._engine.candidates import Candidate
from .._engine.convolve import check_convolution_inputs, convolve_checked
from .._engine.grid import CellGrid, NodeGrid
from .._engine.quality import heldout_residuals, linear_quality, linear_residual_max, quality
from .._engine.solve import (
    solve_linear_node_kernels,
    solve_node_kernels,
    solve_spatial_kernel,
    with_linear_node_fits,
)
from .._engine.weights import inverse_variance_weights
from .._logging import log
from .._threads import resolve_workers, thread_scope
from .._validate import check_type, real, shape2d
from ..config import MatchConfig
from . import policy
from .provenance import (
    MATCH_HISTORY,
    heldout_table,
    match_metadata,
    match_record,
    quality_summary,
    quality_warning,
)
from .result import MatchQualityWarning, MatchResult

# the public names of this module, re-exported by astropsfmatch/__init__.py
__all__ = ["ModelPsfMatcher", "match_psf"]

_check_kernel_sum = real(gt=0, normal=True)


class _Solved:
    """What `ModelPsfMatcher.solve` found, unpacked as ``(solution, candidates, grid,
    target_stamp, timings)``, with the configuration that was run in ``config``.
    """

    def __init__(self, solution, candidates, grid, target_stamp, timings, config,
                 unit_kernel, quality):
        self.solution = solution
        self.unit_kernel = unit_kernel
        self.quality = quality
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


# the first run after installation compiles the numba kernels (seconds): say so, once
on_first_compilation(lambda: log.info(
    "compiling the numerical kernels (first run after installation only: they are cached "
    "on disk for later runs)"))


class ModelPsfMatcher:
    """Match images to a target PSF with a spatially varying kernel.

    The kernel is solved from the two PSF models alone (no stars needed):
    the source PSF and the target PSF are realized as stamps where the
    kernel is fitted (nodes on the PSF model's own node lines, or one
    candidate per cell for the reference's polynomial model), the kernel
    that turns one into the other is fitted there (with a basis chosen from
    the two PSFs by default), its quality is measured at held-out positions
    where it was not fitted, and the image is convolved exactly with it.

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
    >>> result.metadata['candidates']   # a constant PSF: one kernel, at one node
    {'total': 1, 'used': 1, 'rejected': 0}
    >>> result.metadata['quality']['passed']
    True
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
        shape = shape2d("shape", shape)
        with thread_scope(workers):
            return self._solve(shape, source_psf, target_psf, kernel_sum)

    def _solve(self, shape, source_psf, target_psf, kernel_sum):
        """`solve` inside the caller's thread scope."""
        timings = {}
        t0 = time.perf_counter()
        source = as_psf(source_psf, name="source_psf", psf_size=self.config.psf_size)
        target = as_psf(target_psf, name="target_psf", psf_size=self.config.psf_size)
        policy.check_shape(shape, self.config)
        policy.warn_if_outside_grid(source, shape, stacklevel=5)
        config, choice = policy.resolve_basis(self.config, source, target, shape)
        if self.config.kernel_size is None:  # the size chosen from the PSF widths must fit too
            policy.check_shape(shape, config)
        prefit = choice.pop("fit", None)
        auto = self.config.kernel_basis == "auto"
        timings["basis_choice"] = time.perf_counter() - t0
        if policy.spatial_model(config) == "bilinear":
            config = config.replace(spatial_model="bilinear")
            fit = self._solve_nodes(shape, source, target, config, auto, timings, prefit)
        else:
            fit = self._solve_cells(shape, source, target, config, auto, timings)
        config, grid, sources, targets, unit, verdict = fit
        policy.check_cancellation(unit.kernel, shape)
        verdict["basis_choice"] = choice

        size = sources.shape[-1]
        centre = ((shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0)
        target_stamp = target.stamps(np.array([centre[0]]), np.array([centre[1]]), size)[0]
        # the kernel sum is applied once, here, to the kernel that is returned
        solution = unit.scaled(kernel_sum)
        x, y = grid.positions()
        index = [(iy, ix) for iy in range(grid.n_cells[0]) for ix in range(grid.n_cells[1])]
        if kernel_sum != 1.0:  # the candidates' targets carry the kernel sum (one array)
            targets = targets * kernel_sum
        candidates = [
            Candidate(index=(iy, ix), x=float(x[k]), y=float(y[k]), source=sources[k],
                      target=targets[k], fit=solution.fits[k],
                      rejected=bool(solution.rejected[k]), reason=solution.reasons[k],
                      spatial_residual=solution.spatial_residuals[k],
                      spatial_residual_max=float(solution.spatial_residual_max[k]))
            for k, (iy, ix) in enumerate(index)]
        return _Solved(solution, candidates, grid, target_stamp, timings, config, unit.kernel,
                       verdict)

    def _solve_cells(self, shape, source, target, config, auto, timings):
        """The reference's model: one candidate per cell and a global polynomial."""
        t0 = time.perf_counter()
        grid = CellGrid(shape, config.cell_size, grow=config.grow_cells)
        config = policy.fit_order_to_grid(config, grid, stacklevel=6)
        x, y = grid.positions()
        basis = policy.choose_basis(config, source, target, grid)
        size = policy.stamp_size(source, x, y, basis.size, config, auto=auto)
        sources = source.stamps(x, y, size)
        targets = target.stamps(x, y, size)
        timings["psf_realization"] = time.perf_counter() - t0
        policy.warn_if_deconvolving(sources, targets, stacklevel=6)
        t0 = time.perf_counter()
        unit = solve_spatial_kernel(sources, targets, x, y, basis=basis, config=config,
                                    bbox=grid.bbox)
        timings["kernel_solution"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        size_q = policy.quality_stamp_size(source, target, shape, basis.size, size)
        x_h, y_h = policy.heldout_xy(shape, size_q, config, len(x))
        verdict = quality(unit.kernel, x_h, y_h, source.stamps(x_h, y_h, size_q),
                          target.stamps(x_h, y_h, size_q))
        timings["quality"] = time.perf_counter() - t0
        return config.replace(stamp_size=size), grid, sources, targets, unit, verdict

    def _solve_nodes(self, shape, source, target, config, auto, timings, prefit=None):
        """Kernels at nodes along the PSF model's own node lines, interpolated bilinearly.

        The node lines are subdivided level by level (`policy.node_levels`)
        until the residual at held-out positions stops improving; stamps that
        are convex combinations of templates (`LinearStamps`) are fitted
        without convolving each of them.
        """
        t0 = time.perf_counter()
        basis = policy.choose_basis(config, source, target, None, shape=shape)
        levels = policy.node_levels(source, shape, basis.size, config)
        factors = policy.node_factors(config, len(levels))
        x_c, y_c = levels[0][0][[0]], levels[0][1][[0]]
        size = policy.stamp_size(source, x_c, y_c, basis.size, config, auto=auto)
        finest = levels[-1][0].size * levels[-1][1].size
        # the verdict (and the comparison of the levels) looks at a region that holds
        # the target, which may be larger than the fit's
        size_q = policy.quality_stamp_size(source, target, shape, basis.size, size)
        x_h, y_h = policy.heldout_xy(shape, size_q, config, finest)
        linear = policy.linear_stamps(source, target, size, basis, config)
        linear_q = linear if size_q == size or linear is None else policy.linear_stamps(
            source, target, size_q, basis, config)
        timings["psf_realization"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        tried, best = [], None
        for factor, (nodes_x, nodes_y) in zip(factors, levels, strict=True):
            grid = NodeGrid(shape, nodes_x, nodes_y)
            x, y = grid.positions()
            if prefit is not None and len(levels) == 1 and source.constant:
                # the constant PSF's one node was solved when the basis was chosen
                _, sources, targets, unit = prefit
            elif linear is not None:
                # the node fits (models, residuals) are computed for the chosen level only
                unit = solve_linear_node_kernels(linear, x, y, nodes=(nodes_x, nodes_y),
                                                 fits=len(levels) == 1)
                sources, targets = None, None
            else:
                sources, targets = source.stamps(x, y, size), target.stamps(x, y, size)
                unit = solve_node_kernels(sources, targets, basis=basis, config=config,
                                          nodes=(nodes_x, nodes_y))
            residual = np.nan
            if len(levels) > 1:
                # the levels are compared on the first held-out positions
                n_compare = min(len(x_h), policy.REFINE_POSITIONS)
                x_r, y_r = x_h[:n_compare], y_h[:n_compare]
                residual = (linear_residual_max(unit.kernel, x_r, y_r, linear_q)
                            if linear_q is not None else float(np.abs(heldout_residuals(
                                unit.kernel, x_r, y_r, source.stamps(x_r, y_r, size_q),
                                target.stamps(x_r, y_r, size_q))[0]).max()))
            tried.append((factor, grid.n_candidates, residual))
            level = (residual, factor, grid, sources, targets, unit)
            if best is not None and not residual < policy.REFINE_IMPROVEMENT * best[0]:
                break  # the coarser level is as good: fewer nodes, fewer kernel pieces
            previous, best = best, level
            if previous is not None and residual > policy.REFINE_PREDICTED * previous[0]:
                break  # the next level would gain less than REFINE_IMPROVEMENT
            if residual <= policy.REFINE_GOOD_ENOUGH * config.max_residual:
                break  # far below what is asked: finer nodes cost time for nothing visible
        _, factor, grid, sources, targets, unit = best
        x, y = grid.positions()
        if not unit.fits:  # the chosen level's node fits (its kernels are solved already)
            unit = with_linear_node_fits(linear, x, y, unit)
        timings["kernel_solution"] = time.perf_counter() - t0
        timings["refinement"] = tried
        if sources is None:
            sources = source.stamps(x, y, size)
            # a constant target is one stamp for every node (read-only: no copies)
            targets = (np.broadcast_to(target.stamps(x[:1], y[:1], size), sources.shape)
                       if target.constant else target.stamps(x, y, size))
        policy.warn_if_deconvolving(sources, targets, stacklevel=6)

        t0 = time.perf_counter()
        if linear_q is not None:
            verdict = linear_quality(unit.kernel, x_h, y_h, linear_q)
        else:
            verdict = quality(unit.kernel, x_h, y_h, source.stamps(x_h, y_h, size_q),
                              target.stamps(x_h, y_h, size_q))
        timings["quality"] = time.perf_counter() - t0
        return (config.replace(node_subdivision=factor, stamp_size=size), grid, sources,
                targets, unit, verdict)

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
            dtype = np.float32 if parsed.data.dtype == np.float32 else np.float64
            variance, scale = scaled_variance(parsed.variance, dtype)
            inputs = check_convolution_inputs(parsed.data, solved.unit_kernel, variance,
                                              parsed.mask, True)
            warn_if_dynamic_range(inputs[0], inputs[3], inputs[5], stacklevel=3)
            convolved = convolve_checked(*inputs, n_threads=n_threads,
                                         variance_tolerance=solved.config.variance_tolerance)
            if scale != 1.0:
                convolved = dataclasses.replace(
                    convolved, variance=unscaled(convolved.variance, scale, dtype))
            timings["convolution"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            weights = inverse_variance_weights(convolved.variance, convolved.mask)
        metadata = match_metadata(solution, solved.candidates, solved.grid,
                                  solved.target_stamp, kernel_sum=kernel_sum,
                                  config=solved.config,
                                  requested_order=self.config.spatial_order,
                                  quality=solved.quality)
        metadata["variance_error"] = float(convolved.variance_error)
        matched = build_matched_ccd(parsed, convolved, weights,
                                    target_stamp=solved.target_stamp,
                                    record=match_record(metadata, target_psf),
                                    history=MATCH_HISTORY)
        timings["output"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - start
        metadata["timings"] = timings
        kernel = solution.kernel
        warning = quality_warning(solved.quality, solved.config, self.config)
        if warning is not None:
            warnings.warn(warning, MatchQualityWarning, stacklevel=2)
        log.debug(f"match quality: {quality_summary(metadata['quality'])}")
        log.debug(f"matched {parsed.data.shape} image in {timings['total']:.2f} s "
                  f"(kernel {kernel.kernel_size}x{kernel.kernel_size}, "
                  f"condition number {metadata['spatial']['condition_number']:.3g})")
        return MatchResult(matched=matched, kernel=kernel, candidates=solved.candidates,
                           metadata=metadata, weights=weights,
                           target_psf=solved.target_stamp, config=solved.config,
                           grid=solved.grid, basis=solution.basis, source_psf=parsed.psf,
                           heldout=heldout_table(solved.quality))


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
