"""Speed and memory of astropsfmatch, measured against its peers in the same run.

Image
    ``size`` x ``size`` float32 `~astropy.nddata.CCDData` (sky + Gaussian
    noise + point sources) with a float32 `~astropy.nddata.VarianceUncertainty`
    and a boolean mask (random bad pixels and one bad column). Source PSF: a
    5 x 5 `~photutils.psf.GriddedPSFModel` of 25 x 25 ePSFs whose Gaussian
    FWHM grows from 3.0 px (centre) to 3.6 px (corners) with an ellipticity
    up to 0.1 (``accuracy.field_psf``); target: ``CircularGaussianPRF(fwhm=5)``.

End to end (medians of ``repeat`` interleaved runs after one untimed round;
wall and process CPU time)
    * ``ModelPsfMatcher().match(ccd, target, source_psf=psf)``: the default
      configuration (the basis chosen from the two PSFs, kernels solved at
      nodes on the PSF model's own node lines and interpolated bilinearly),
      on every CPU of the process.
    * ``scipy.signal.fftconvolve(data, kernel, mode='same')`` with one
      constant float32 21 x 21 kernel (float32 output, data only), on one
      thread and on as many threads as the match (``scipy.fft.set_workers``).
    * photutils: ``make_kernel(source, target, window=TukeyWindow(0.5))`` on
      31 x 31 stamps at the field centre, cut to 21 x 21, then
      ``astropy.convolution.convolve_fft(data, kernel, mask=mask)`` (its
      defaults: float64, power-of-two padding); and the same plus
      ``convolve_fft(variance, kernel**2, ...)`` to propagate the variance
      as astropsfmatch does.
    * ``convolve_spatially_varying`` alone with the kernel the match solves:
      data only, and data + variance + mask.

Kernel solution
    ``ModelPsfMatcher.solve`` stage timings (``timings['kernel_solution']``:
    everything after the PSF stamps exist) with the defaults, and with the
    reference pipeline's model (one candidate per 128-pixel cell, 32 x 32 =
    1,024 on 4096 x 4096, a global Chebyshev polynomial of order 2, the
    default basis); and a profile of the default solution: the functions
    with the largest own time.

Numba kernels
    Each jitted function in ``astropsfmatch._engine._numba`` against its twin in
    ``tests/naive.py`` on the same input (the fitting kernels take the
    candidate axis last, the twins first: the input is transposed once,
    outside the timing). The input is the kernel's share of the 4096 x 4096
    match (1,156 candidates, 289 FFT tiles, a 4096-pixel side, one 4096 x
    4096 weight map), enlarged until the twin takes at least
    ``naive_seconds`` and reduced where the twin would take more than
    ``max_naive`` seconds. The twin is run once; numba is warmed up first,
    then the median of ``repeat`` runs is taken.

Peak memory and diagnostics
    In a fresh subprocess: the increase of the peak resident set size
    (VmHWM, reset just before the call through /proc/self/clear_refs) over
    the resident size just before ``match`` (inputs built, numba warmed
    up), and the peak of `tracemalloc` during a second call; both relative
    to the input's bytes (data + variance + mask). The matched outputs
    (data, variance, mask, weights: 1.44x the input) are part of the peak.
    Then ``result.save_diagnostics(dir)``: its wall time, relative to the
    match's in the same process, its peak RSS increase, and a profile.

First call
    In a fresh subprocess with an empty numba cache (``NUMBA_CACHE_DIR``):
    the import, the first and the second match of a 512 x 512 image, and
    the compile time of every jitted function (numba's compile events).
"""

import gc
import importlib
import json
import os
import pkgutil
import subprocess
import sys
import time
import tracemalloc
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.fft
import scipy.signal
from astropy.nddata import CCDData, VarianceUncertainty
from photutils.psf import CircularGaussianPRF

from astropsfmatch import MatchConfig, ModelPsfMatcher, realize_psf
from astropsfmatch._engine.convolve import convolve_spatially_varying

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"

#: The source PSF of the speed benchmark (see ``accuracy.field_psf``).
SPEED_PSF = {"n_grid": 5, "half_size": 12, "oversampling": 1, "fwhm": (3.0, 3.6),
             "ellipticity": 0.1}
TARGET_FWHM = 5.0
KERNEL_SIZE = 21


def _accuracy():
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    return importlib.import_module("accuracy")


def make_inputs(size, *, seed=0):
    """The benchmark image (CCDData), its source PSF model and the target PSF.

    Built in place so that making it does not raise the process's peak memory
    above what the arrays themselves hold.
    """
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((size, size), dtype=np.float32)
    data *= np.float32(10.0)
    data += np.float32(100.0)
    n_stars = max(size * size // 4000, 1)
    ys, xs = rng.integers(0, size, n_stars), rng.integers(0, size, n_stars)
    data[ys, xs] += rng.uniform(1e2, 1e5, n_stars).astype(np.float32)
    variance = np.abs(data)
    variance += np.float32(25.0)
    mask = rng.random((size, size), dtype=np.float32) < 1e-4
    mask[:, size // 3] = True
    ccd = CCDData(data, unit="electron", uncertainty=VarianceUncertainty(variance), mask=mask)
    psf = _accuracy().field_psf((size, size), **SPEED_PSF)
    return ccd, psf, CircularGaussianPRF(fwhm=TARGET_FWHM)


def input_bytes(ccd):
    """Bytes of data + variance + mask."""
    return ccd.data.nbytes + ccd.uncertainty.array.nbytes + ccd.mask.nbytes


def constant_kernels(psf, target, size):
    """(photutils kernel, its square) from the field-centre stamps, and a Gaussian kernel."""
    accuracy = _accuracy()
    psf_matching = accuracy.photutils_matching()
    centre = (size - 1) / 2.0
    source_stamp = realize_psf(psf, centre, centre, 31)
    target_stamp = realize_psf(target, centre, centre, 31)
    make = getattr(psf_matching, "make_kernel", None) or psf_matching.create_matching_kernel
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kernel = accuracy.cut_kernel(make(source_stamp, target_stamp,
                                          window=psf_matching.TukeyWindow(alpha=0.5)))
    return kernel


def median_time(function, repeat):
    """Median and all wall times of ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), times


def warm_up(psf, target, size=512):
    """Load or compile every numba kernel and FFT plan the benchmark uses.

    ``size`` must not exceed the field of ``psf``.
    """
    ccd, _, _ = make_inputs(size, seed=1)
    ModelPsfMatcher().match(ccd, target, source_psf=psf)
    ModelPsfMatcher(cell_size=64).match(ccd, target, source_psf=psf)


def time_end_to_end(ccd, psf, target, *, repeat=3, verbose=True, threads=None):
    """Interleaved runs of match, fftconvolve and photutils + convolve_fft. Returns a dict."""
    from astropy.convolution import convolve_fft

    size = ccd.shape[0]
    threads = threads or len(os.sched_getaffinity(0))
    data, variance, mask = ccd.data, ccd.uncertainty.array, ccd.mask
    kernel = constant_kernels(psf, target, size)
    kernel32 = kernel.astype(np.float32)
    matcher = ModelPsfMatcher()
    stages = []
    solved = matcher.solve(ccd.shape, psf, target).unit_kernel

    def run_match():
        result = matcher.match(ccd, target, source_psf=psf, workers=threads)
        stages.append(result.metadata["timings"])

    def run_convolve_data():
        convolve_spatially_varying(data, solved, workers=threads)

    def run_convolve_full():
        convolve_spatially_varying(data, solved, variance=variance, mask=mask, workers=threads)

    def run_fftconvolve():
        with scipy.fft.set_workers(1):
            scipy.signal.fftconvolve(data, kernel32, mode="same")

    def run_fftconvolve_threads():
        with scipy.fft.set_workers(threads):
            scipy.signal.fftconvolve(data, kernel32, mode="same")

    def run_photutils():
        convolve_fft(data, kernel, mask=mask)

    def run_photutils_variance():
        convolve_fft(data, kernel, mask=mask)
        convolve_fft(variance, kernel**2, mask=mask, normalize_kernel=False)

    functions = {"fftconvolve": run_fftconvolve, "fftconvolve_threads": run_fftconvolve_threads,
                 "match": run_match, "convolve_data_only": run_convolve_data,
                 "convolve_full": run_convolve_full,
                 "photutils_convolve_fft": run_photutils,
                 "photutils_convolve_fft_variance": run_photutils_variance}
    for function in functions.values():  # one untimed round: FFT plans, page faults
        function()
    stages.clear()
    times = {name: [] for name in functions}
    cpu = {name: [] for name in functions}
    load = [os.getloadavg()[0]]
    for k in range(repeat):
        for name, function in functions.items():
            gc.collect()
            wall, process = time.perf_counter(), time.process_time()
            function()
            times[name].append(time.perf_counter() - wall)
            cpu[name].append(time.process_time() - process)
        load.append(os.getloadavg()[0])
        if verbose:
            print(f"  speed: end-to-end run {k + 1}/{repeat}: "
                  + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items()), flush=True)
    medians = {name: float(np.median(t)) for name, t in times.items()}
    cpu_medians = {name: float(np.median(t)) for name, t in cpu.items()}
    # the ratios of each round (same load), then their median
    ratios = {f"{name}/{base}": float(np.median(np.array(times[name]) / np.array(times[base])))
              for name in functions for base in ("fftconvolve", "fftconvolve_threads")}
    stage_medians = {key: float(np.median([s[key] for s in stages])) for key in stages[0]
                     if isinstance(stages[0][key], float)}
    return {"medians": medians, "times": times, "cpu_medians": cpu_medians, "cpu": cpu,
            "ratios": ratios, "stages": stage_medians, "load": load, "threads": threads,
            "shape": list(ccd.shape), "kernel": repr(solved),
            "refinement": stages[-1].get("refinement")}


#: The reference pipeline's model: one candidate per cell, a Chebyshev polynomial of order 2
#: (with the default basis; the defaults solve kernels at nodes, interpolated bilinearly).
REFERENCE = {"spatial_model": "chebyshev1"}


def time_solve(shape, psf, target, *, repeat=5, options=None, label="defaults"):
    """Medians of the solve stages (kernel solution without PSF realization, and the rest)."""
    matcher = ModelPsfMatcher(MatchConfig(**(options or {})))
    records = []
    for _ in range(repeat + 1):  # the first run warms the caches of this configuration
        gc.collect()
        start = time.perf_counter()
        solved = matcher.solve(shape, psf, target)
        solution, candidates, grid, _, timings = solved
        wall = time.perf_counter() - start
        records.append({**{k: v for k, v in timings.items() if isinstance(v, float)},
                        **{f"solve_{k}": v for k, v in solution.info["timings"].items()},
                        "wall": wall, "wall_minus_psf": wall - timings["psf_realization"]})
    records = records[1:]
    medians = {key: float(np.median([r[key] for r in records])) for key in records[0]}
    return {"label": label, "options": dict(options or {}), "n_candidates": len(candidates),
            "n_cells": list(grid.n_cells), "stamp": int(solved.config.stamp_size),
            "n_basis": int(solution.basis.n_basis), "model": solved.config.spatial_model,
            "refinement": timings.get("refinement"), "medians": medians}


def profile_solve(shape, psf, target, *, top=12):
    """The functions with the largest own time in one default ``solve`` (cProfile)."""
    import cProfile

    matcher = ModelPsfMatcher()
    matcher.solve(shape, psf, target)  # warm
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    matcher.solve(shape, psf, target)
    profiler.disable()
    wall = time.perf_counter() - start
    return {"wall": wall, "rows": profile_rows(profiler, top)}


def profile_rows(profiler, top):
    """``[{function, calls, own, cumulative}]`` of the ``top`` functions by own time."""
    import pstats

    stats = pstats.Stats(profiler).stats
    rows = []
    for (path, line, name), (_, calls, own, cumulative, _) in stats.items():
        where = Path(path)
        if "site-packages" in where.parts:
            module = where.parts[where.parts.index("site-packages") + 1]
            label = f"{module}: {name}"
        elif path.startswith("~") or path.startswith("<"):
            label = name
        else:
            parts = where.parts
            module = "/".join(parts[parts.index("astropsfmatch"):]) if "astropsfmatch" in parts \
                else where.name
            label = f"{module}:{line} {name}"
        rows.append({"function": label, "calls": int(calls), "own": float(own),
                     "cumulative": float(cumulative)})
    rows.sort(key=lambda r: -r["own"])
    return rows[:top]


def time_psf_loop(psf, shape):
    """photutils' own per-position evaluation (benchmarks/bench_psf.py) at the default grid."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    from bench_psf import loop_stamps

    from astropsfmatch._adapters.psf import as_psf
    from astropsfmatch._engine.grid import CellGrid

    x, y = CellGrid(shape, (128, 128)).positions()
    start = time.perf_counter()
    reference = loop_stamps(psf, x, y, 31)
    loop = time.perf_counter() - start
    fast, _ = median_time(lambda: as_psf(psf).stamps(x, y, 31), 3)
    stamps = as_psf(psf).stamps(x, y, 31)
    error = float(np.max(np.abs(stamps - reference)) / reference.max())
    return {"n": int(x.size), "loop": loop, "astropsfmatch": fast, "max_difference": error}


# --- numba kernels against their twins ---------------------------------------


@dataclass
class KernelCase:
    """One numba kernel and its NumPy twin on a scalable input.

    ``make(rng, scale)`` returns ``(run_numba, run_naive, agree)``: two
    zero-argument callables doing the same work, and a callable telling,
    after both ran, whether their outputs agree. ``unit`` says what ``scale``
    counts; ``workload`` is the scale of the kernel's work in the 4096 x 4096
    match; the work grows as ``scale ** power``.
    """

    name: str
    module: str
    make: object
    start: int
    unit: str
    workload: int
    power: int = 1
    max_scale: int = 10**9


def _fitting_inputs(rng, n, size=31):
    from astropsfmatch._engine.basis import _alard_lupton_parts

    images, _, x_factors, y_factors = _alard_lupton_parts(KERNEL_SIZE, (0.7, 1.5, 3.0), (4, 2, 2))
    distinct, x_index = np.unique(x_factors, axis=0, return_inverse=True)
    stamps = rng.random((n, size, size))
    return (stamps, np.ascontiguousarray(distinct), np.ascontiguousarray(y_factors),
            np.ascontiguousarray(x_index.ravel(), dtype=np.int64), images)


def _last(array):
    """Candidate axis (first, as the twins take it) moved last, as the fitting kernels take it."""
    return np.ascontiguousarray(np.moveaxis(array, 0, -1))


def _pair(numba_function, naive_function, numba_args, naive_args, compare):
    """Closures running both functions, and ``compare(numba_out, naive_out) -> bool``."""
    out = {}

    def run_numba():
        out["numba"] = numba_function(*numba_args)

    def run_naive():
        out["naive"] = naive_function(*naive_args)

    return run_numba, run_naive, lambda: bool(compare(out["numba"], out["naive"]))


def _close(a, b):
    return np.allclose(a, b, rtol=1e-6, atol=1e-9)


# The fitting kernels take the candidate axis last; the twins take it first.


def _make_separable_rows(rng, n):
    from naive import naive_separable_rows

    from astropsfmatch._engine._numba import fitting

    stamps, distinct, _, _, _ = _fitting_inputs(rng, n)
    size = stamps.shape[1]
    valid = size - distinct.shape[1] + 1

    def run(stamps_last):
        rows = np.zeros((distinct.shape[0], size, valid, n))
        fitting.separable_rows(stamps_last, distinct, rows, 0, distinct.shape[0] * size)
        return rows

    return _pair(run, naive_separable_rows, (_last(stamps),), (stamps, distinct),
                 lambda a, b: _close(a, np.moveaxis(b, 0, -1)))


def _make_separable_columns(rng, n):
    from naive import naive_separable_columns, naive_separable_rows

    from astropsfmatch._engine._numba import fitting

    stamps, distinct, y_factors, x_index, _ = _fitting_inputs(rng, n)
    rows = naive_separable_rows(stamps, distinct)
    valid = rows.shape[-1]

    def run(rows_last):
        out = np.zeros((y_factors.shape[0], valid, valid, n))
        fitting.separable_columns(rows_last, y_factors, x_index, out, 0,
                                  y_factors.shape[0] * valid)
        return out

    return _pair(run, naive_separable_columns, (_last(rows),), (rows, y_factors, x_index),
                 lambda a, b: _close(a, np.moveaxis(b, 0, -1)))


def _make_convolve_valid(rng, n):
    from naive import naive_convolve_valid

    from astropsfmatch._engine._numba import fitting

    stamps, *_, images = _fitting_inputs(rng, n)
    images = np.ascontiguousarray(images)
    return _pair(fitting.convolve_valid, naive_convolve_valid, (_last(stamps), images),
                 (stamps, images), lambda a, b: _close(a, np.moveaxis(b, 0, -1)))


def _make_normal_equations(rng, n):
    from naive import naive_normal_equations

    from astropsfmatch._engine._numba import fitting

    convolved = rng.random((n, 27, 11, 11))
    target = rng.random((n, 11, 11))
    weight = np.ones((n, 11, 11))
    args = (_last(convolved.reshape(n, 27, -1)), _last(target.reshape(n, -1)),
            _last(weight.reshape(n, -1)))
    return _pair(fitting.normal_equations, naive_normal_equations, args,
                 (convolved, target, weight),
                 lambda a, b: _close(np.moveaxis(a[0], -1, 0), b[0]) and _close(a[1].T, b[1]))


def _make_accumulate(rng, n):
    from naive import naive_accumulate_spatial

    from astropsfmatch._engine._numba import fitting
    from astropsfmatch._engine.solve import _spatial_unknowns

    a = rng.random((n, 27, 27))
    matrix = a + a.transpose(0, 2, 1)
    vector = rng.random((n, 27))
    terms = rng.random((n, 6))
    terms[:, 0] = 1.0

    def run(matrix, vector, terms):
        # the same work as the twin: the full system, then the unknowns kept
        return _spatial_unknowns(*fitting.accumulate_spatial(matrix, vector, terms), 27, 6)

    return _pair(run, naive_accumulate_spatial, (_last(matrix), _last(vector), _last(terms)),
                 (matrix, vector, terms),
                 lambda a, b: _close(a[0], b[0]) and _close(a[1], b[1]))


def _tile_shapes():
    # the default model's 4096 x 4096 tiles: one per 128-pixel cell, 150-point FFTs
    # (76 complex frequencies along x), a 21 x 21 kernel
    return 150, 20, 76


def _make_rows(rng, n_tiles):
    from naive import naive_weighted_sum_rows

    from astropsfmatch._engine._numba.convolution import weighted_sum_rows

    fft_y, two_half, n_freq = _tile_shapes()
    rows = fft_y - two_half
    # the variance of a bilinear cell: 9 spectra in 3 groups
    n_planes, group = 9, np.repeat(np.arange(3), 3)
    spectra = rng.random((n_planes, fft_y, 2 * n_freq)).astype(np.float32)
    weights = rng.random((n_planes, rows)).astype(np.float32)
    out_numba = np.empty((3, rows, 2 * n_freq), dtype=np.float32)
    out_naive = np.empty_like(out_numba)
    sliced = spectra[:, two_half:two_half + rows]

    def run_numba():
        for _ in range(n_tiles):
            weighted_sum_rows(spectra, two_half, weights, 0, rows, group, out_numba)

    def run_naive():
        for _ in range(n_tiles):
            naive_weighted_sum_rows(sliced, weights, group, out_naive)

    return run_numba, run_naive, lambda: bool(np.allclose(out_numba, out_naive, rtol=1e-5))


def _make_columns(rng, n_tiles):
    from naive import naive_weighted_sum_columns

    from astropsfmatch._engine._numba.convolution import weighted_sum_columns

    fft_y, two_half, _ = _tile_shapes()
    rows = fft_y - two_half
    fft_x, cols = fft_y, fft_y - two_half
    planes = rng.random((3, rows, fft_x)).astype(np.float32)
    weights = rng.random((3, cols)).astype(np.float32)
    out_numba = np.empty((rows, cols), dtype=np.float32)
    out_naive = np.empty_like(out_numba)
    sliced = planes[:, :, two_half:two_half + cols]

    def run_numba():
        for _ in range(n_tiles):
            weighted_sum_columns(planes, two_half, weights, 0, out_numba, 0, 0, cols)

    def run_naive():
        for _ in range(n_tiles):
            naive_weighted_sum_columns(sliced, weights, out_naive)

    return run_numba, run_naive, lambda: bool(np.allclose(out_numba, out_naive, rtol=1e-5))


def _make_dilate(rng, side):
    from naive import naive_dilate_box

    from astropsfmatch._engine._numba.convolution import dilate_box

    bad = rng.random((side, side)) < 1e-3
    out_numba = np.empty_like(bad)
    out_naive = np.empty_like(bad)
    return (lambda: dilate_box(bad, KERNEL_SIZE // 2, out_numba),
            lambda: naive_dilate_box(bad, KERNEL_SIZE // 2, out_naive),
            lambda: bool(np.array_equal(out_numba, out_naive)))


def _make_inverse_variance(rng, n_images):
    from naive import naive_inverse_variance

    from astropsfmatch._engine._numba.weights import inverse_variance

    variance = rng.random((2048, 2048), dtype=np.float32) + np.float32(0.5)
    variance[::97, ::89] = np.nan
    mask = rng.random((2048, 2048)) < 1e-3
    out = {}

    def run_numba():
        for _ in range(n_images):
            out["numba"] = inverse_variance(variance, mask)

    def run_naive():
        for _ in range(n_images):
            out["naive"] = naive_inverse_variance(variance, mask)

    return run_numba, run_naive, lambda: bool(np.allclose(out["numba"], out["naive"]))


KERNEL_CASES = [
    KernelCase("separable_rows", "fitting", _make_separable_rows, 2,
               "31x31 stamps x 9 AL x profiles (x pass)", workload=1156),
    KernelCase("separable_columns", "fitting", _make_separable_columns, 2,
               "31x31 stamps x 27 AL functions (y pass)", workload=1156),
    KernelCase("convolve_valid", "fitting", _make_convolve_valid, 2,
               "31x31 stamps x 27 dense 21x21 images", workload=1156),
    KernelCase("normal_equations", "fitting", _make_normal_equations, 64,
               "candidates (27 functions, 11x11 pixels)", workload=1156, max_scale=8192),
    KernelCase("accumulate_spatial", "fitting", _make_accumulate, 64,
               "candidates (27 functions, 6 spatial terms)", workload=1156, max_scale=16384),
    KernelCase("weighted_sum_rows", "convolution", _make_rows, 4,
               "150x152 tiles, 9 planes -> 3 groups (float32)", workload=1024),
    KernelCase("weighted_sum_columns", "convolution", _make_columns, 4,
               "130x150 tiles, 3 planes (float32)", workload=1024),
    KernelCase("dilate_box", "convolution", _make_dilate, 48, "px image side (box 21x21)",
               workload=4096, power=2, max_scale=4096),
    KernelCase("inverse_variance", "weights", _make_inverse_variance, 1,
               "2048x2048 float32 images", workload=4, max_scale=64),
]


def numba_kernels():
    """Names ``module.function`` of every numba dispatcher in astropsfmatch._engine._numba."""
    import astropsfmatch._engine._numba as package

    found = []
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"astropsfmatch._engine._numba.{info.name}")
        for name, value in vars(module).items():
            if name.startswith("_") or not hasattr(value, "py_func"):
                continue
            if getattr(value, "__module__", module.__name__) != module.__name__:
                continue
            found.append(f"{info.name}.{name}")
    return sorted(found)


def time_kernels(*, naive_seconds=0.5, max_naive=20.0, repeat=5, cases=None, verbose=True,
                 seed=0):
    """Each numba kernel vs its NumPy twin. Returns a list of dict rows.

    The input is the kernel's share of the 4096 x 4096 match (``workload``)
    or larger, so that the twin takes at least ``naive_seconds``; but smaller
    if the twin would take more than ``max_naive`` seconds there.
    """
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    import numba

    cases = KERNEL_CASES if cases is None else cases
    rows = []
    for case in cases:
        try:
            row = _time_kernel(case, naive_seconds, repeat, seed, max_naive)
        except Exception as exc:  # noqa: BLE001 - a kernel whose API changed: report it
            row = {"kernel": f"{case.module}.{case.name}",
                   "input": f"harness out of date ({type(exc).__name__}: {exc})",
                   "naive": np.nan, "numba": np.nan, "speedup": np.nan, "agree": None}
        row["threads"] = numba.get_num_threads()
        rows.append(row)
        if verbose and np.isfinite(row["speedup"]):
            print(f"  speed: {case.name}: naive {row['naive']:.3f} s, numba "
                  f"{row['numba']:.5f} s ({row['speedup']:.0f}x) on {row['input']}", flush=True)
        elif verbose:
            print(f"  speed: {case.name}: {row['input']}", flush=True)
    covered = {f"{c.module}.{c.name}" for c in cases}
    for name in numba_kernels():
        if name not in covered:
            rows.append({"kernel": name, "input": "no benchmark case in benchmarks/speed.py",
                         "naive": np.nan, "numba": np.nan, "speedup": np.nan, "agree": None,
                         "threads": numba.get_num_threads()})
    return rows


def _time_kernel(case, naive_seconds, repeat, seed, max_naive):
    """One kernel: choose the input size from a cheap run of the twin, then time both."""
    rng = np.random.default_rng(seed)
    scale = case.start
    while True:  # grow until the twin takes long enough to extrapolate from
        run_numba, run_naive, agree = case.make(rng, scale)
        start = time.perf_counter()
        run_naive()
        naive = time.perf_counter() - start
        if naive >= 0.05 or scale >= case.max_scale:
            break
        scale = min(2 * scale, case.max_scale)
    rate = naive / scale**case.power

    def scale_for(seconds):
        return (seconds / rate) ** (1.0 / case.power)

    for _ in range(3):  # re-estimate from the larger run if the twin was still too fast
        wanted = max(case.workload, scale_for(naive_seconds))
        wanted = int(np.ceil(min(wanted, scale_for(max_naive), case.max_scale)))
        if wanted <= scale:
            break
        scale = wanted
        run_numba, run_naive, agree = case.make(rng, scale)
        start = time.perf_counter()
        run_naive()
        naive = time.perf_counter() - start
        rate = naive / scale**case.power
        if naive >= 0.8 * naive_seconds:
            break
    run_numba()  # compile or load the cache
    ok = agree()
    numba_time, _ = median_time(run_numba, repeat)
    return {"kernel": f"{case.module}.{case.name}", "input": f"{scale} {case.unit}",
            "naive": naive, "numba": numba_time, "speedup": naive / numba_time, "agree": ok,
            "workload": scale >= case.workload}


# --- peak memory ----------------------------------------------------------------


def _status_bytes(field):
    """A memory field of /proc/self/status (VmRSS, VmHWM) in bytes."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    msg = f"{field} not in /proc/self/status"
    raise OSError(msg)


def _reset_peak_rss():
    """Reset the peak resident size (VmHWM) of this process; False if not possible.

    ``ru_maxrss`` cannot be reset and, on Linux, survives ``execve``: a child
    of a large parent starts with the parent's peak. Writing 5 to
    /proc/self/clear_refs (Linux >= 4.0) resets VmHWM to the current RSS.
    """
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def _memory_probe(size):
    """Run in a fresh process: peak memory of one match and of its diagnostics (JSON)."""
    import cProfile
    import tempfile

    ccd, psf, target = make_inputs(size)
    warm_up(psf, target)
    matcher = ModelPsfMatcher()
    gc.collect()
    reset = _reset_peak_rss()
    rss_before = _status_bytes("VmRSS")
    peak_before = _status_bytes("VmHWM")
    start = time.perf_counter()
    result = matcher.match(ccd, target, source_psf=psf)
    match_seconds = time.perf_counter() - start
    peak_after = _status_bytes("VmHWM")
    output_bytes = (result.matched.data.nbytes + result.matched.uncertainty.array.nbytes
                    + result.matched.mask.nbytes + result.weights.nbytes)
    out = {"input_bytes": input_bytes(ccd), "rss_before": rss_before,
           "peak_before": peak_before, "peak_after": peak_after,
           "rss_peak_increase": peak_after - rss_before,
           "rss_reliable": bool(reset or peak_after > peak_before),
           "output_bytes": output_bytes, "match_seconds": match_seconds}
    diagnostics = {}
    try:
        import matplotlib

        matplotlib.use("Agg")
        with tempfile.TemporaryDirectory() as directory:
            result.save_diagnostics(Path(directory) / "warm")  # fonts, imports
            gc.collect()
            _reset_peak_rss()
            rss = _status_bytes("VmRSS")
            start = time.perf_counter()
            paths = result.save_diagnostics(Path(directory) / "timed")
            diagnostics["seconds"] = time.perf_counter() - start
            diagnostics["rss_peak_increase"] = _status_bytes("VmHWM") - rss
            diagnostics["files"] = len(paths) if hasattr(paths, "__len__") else None
            profiler = cProfile.Profile()
            profiler.enable()
            result.save_diagnostics(Path(directory) / "profiled")
            profiler.disable()
            diagnostics["profile"] = profile_rows(profiler, 10)
    except Exception as exc:  # noqa: BLE001 - reported, not fatal
        diagnostics["error"] = f"{type(exc).__name__}: {exc}"
    out["diagnostics"] = diagnostics
    del result
    gc.collect()
    tracemalloc.start()
    matcher.match(ccd, target, source_psf=psf)  # the outputs are alive at the peak
    out["traced_peak"] = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(json.dumps(out))


def peak_memory(size):
    """Peak memory of one end-to-end match and of its diagnostics, in a subprocess (dict)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-probe", str(size)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("rss_peak_increase", "traced_peak", "output_bytes"):
        result[f"{key}_ratio"] = result[key] / result["input_bytes"]
    return result


# --- first call: numba compilation -----------------------------------------------


def _compile_probe(size):
    """Run in a fresh process with an empty numba cache: the first call's costs (JSON)."""
    from numba.core import event

    ccd, psf, target = make_inputs(size)
    with event.install_recorder("numba:compile") as recorder:
        start = time.perf_counter()
        ModelPsfMatcher().match(ccd, target, source_psf=psf)
        first = time.perf_counter() - start
    start = time.perf_counter()
    ModelPsfMatcher().match(ccd, target, source_psf=psf)
    second = time.perf_counter() - start
    # the outermost compilations of the package's own dispatchers
    open_events, kernels = {}, {}
    for stamp, item in recorder.buffer:
        dispatcher = item.data["dispatcher"]
        module = getattr(dispatcher.py_func, "__module__", "")
        if not module.startswith("astropsfmatch."):
            continue
        key = (module, dispatcher.py_func.__name__, str(item.data["args"]))
        if item.status.name == "START":
            open_events[key] = stamp
        elif key in open_events:
            name = f"{module.rsplit('.', 1)[-1]}.{dispatcher.py_func.__name__}"
            entry = kernels.setdefault(name, {"signatures": 0, "seconds": 0.0})
            entry["signatures"] += 1
            entry["seconds"] += stamp - open_events.pop(key)
    print(json.dumps({"size": size, "first": first, "second": second, "kernels": kernels}))


_IMPORT = ("import time; start = time.perf_counter(); import astropsfmatch; "
           "print(time.perf_counter() - start)")


def first_call(size=512):
    """The first call's costs with an empty numba cache, measured in subprocesses (dict)."""
    import tempfile

    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        imported = subprocess.run([sys.executable, "-c", _IMPORT], capture_output=True,
                                  text=True, check=True, env=env)
        command = [sys.executable, str(Path(__file__).resolve()), "--compile-probe", str(size)]
        done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["import"] = float(imported.stdout.strip().splitlines()[-1])
    result["compile"] = sum(k["seconds"] for k in result["kernels"].values())
    return result


def run(*, size=4096, repeat=3, naive_seconds=0.5, max_naive=20.0, kernel_repeat=5,
        verbose=True, memory=True, psf_loop=True, compile_size=512, solve_repeat=None):
    """Every speed figure. Returns a dict (see ``run.py`` for the tables made from it)."""
    ccd, psf, target = make_inputs(size)
    if verbose:
        print(f"  speed: image {ccd.shape} float32, input {input_bytes(ccd) / 2**20:.0f} MiB; "
              f"warming up", flush=True)
    warm_up(psf, target, min(size, 512))
    out = {"size": size, "cpus": len(os.sched_getaffinity(0)),
           "load_start": os.getloadavg()}
    out["end_to_end"] = time_end_to_end(ccd, psf, target, repeat=repeat, verbose=verbose)
    shape = ccd.shape
    solve_repeat = solve_repeat or max(repeat, 3)
    # the order-2 polynomial needs three cells along each axis (small test images)
    reference = {**REFERENCE, "cell_size": min(128, min(shape) // 3)}
    out["solve"] = [time_solve(shape, psf, target, repeat=solve_repeat),
                    time_solve(shape, psf, target, repeat=solve_repeat, options=reference,
                               label="reference model")]
    out["solve_profile"] = profile_solve(shape, psf, target)
    if verbose:
        for s in out["solve"]:
            print(f"  speed: solve ({s['label']}), {s['n_candidates']} candidates: kernel "
                  f"solution {s['medians']['kernel_solution']:.3f} s, PSF realization "
                  f"{s['medians']['psf_realization']:.3f} s", flush=True)
    if psf_loop:
        out["psf_loop"] = time_psf_loop(psf, shape)
    out["kernels"] = time_kernels(naive_seconds=naive_seconds, max_naive=max_naive,
                                  repeat=kernel_repeat, verbose=verbose)
    if memory:
        del ccd
        gc.collect()
        out["memory"] = peak_memory(size)
        if verbose:
            print(f"  speed: peak memory {out['memory']['rss_peak_increase_ratio']:.2f} x the "
                  "input; diagnostics "
                  f"{out['memory']['diagnostics'].get('seconds', float('nan')):.2f} s", flush=True)
    if compile_size:
        out["first_call"] = first_call(compile_size)
        if verbose:
            print(f"  speed: first call with an empty numba cache: "
                  f"{out['first_call']['compile']:.1f} s compiling", flush=True)
    out["load_end"] = os.getloadavg()
    return out


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--memory-probe":
        _memory_probe(int(sys.argv[2]))
    elif len(sys.argv) == 3 and sys.argv[1] == "--compile-probe":
        _compile_probe(int(sys.argv[2]))
    else:
        print("run the benchmarks with: python benchmarks/run.py (see benchmarks/README.md)")
