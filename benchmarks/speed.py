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
    * ``ModelPsfMatcher().match(ccd, target, source_psf=psf)``: defaults
      (21 x 21 kernel, spatial order 2, 128 px cells: 32 x 32 candidates).
    * ``scipy.signal.fftconvolve(data, kernel, mode='same')`` with one
      constant float32 21 x 21 kernel (float32 output, data only).
    * photutils: ``make_kernel(source, target, window=TukeyWindow(0.5))`` on
      31 x 31 stamps at the field centre, cut to 21 x 21, then
      ``astropy.convolution.convolve_fft(data, kernel, mask=mask)`` (its
      defaults: float64, power-of-two padding); and the same plus
      ``convolve_fft(variance, kernel**2, ...)`` to propagate the variance
      as astropsfmatch does.
    * ``convolve_spatially_varying(data, kernel)`` alone: the exact spatially
      varying convolution of the data, without variance and mask.

Kernel solution alone
    ``ModelPsfMatcher.solve``: ``timings['kernel_solution']`` (everything
    after the PSF stamps exist: basis convolutions, normal equations,
    per-candidate and spatial solutions) and ``timings['psf_realization']``,
    with ``grow_cells=1`` (the reference's grid: 34 x 34 = 1,156 candidates on
    4096 x 4096) and with the default grid (32 x 32 = 1,024).

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

Peak memory
    In a fresh subprocess: the increase of the peak resident set size
    (VmHWM, reset just before the call through /proc/self/clear_refs) over
    the resident size just before ``match`` (inputs built, numba warmed
    up), and the peak of `tracemalloc` during a second call; both relative
    to the input's bytes (data + variance + mask). The matched outputs
    (data, variance, mask, weights: 1.44x the input) are part of the peak.
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
    from photutils import psf_matching

    accuracy = _accuracy()
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


def warm_up(psf, target):
    """Load or compile every numba kernel and FFT plan the benchmark uses."""
    ccd, _, _ = make_inputs(512, seed=1)
    ModelPsfMatcher().match(ccd, target, source_psf=psf)
    ModelPsfMatcher(cell_size=64).match(ccd, target, source_psf=psf)


def time_end_to_end(ccd, psf, target, *, repeat=3, verbose=True):
    """Interleaved runs of match, fftconvolve and photutils + convolve_fft. Returns a dict."""
    from astropy.convolution import convolve_fft

    size = ccd.shape[0]
    data, variance, mask = ccd.data, ccd.uncertainty.array, ccd.mask
    kernel = constant_kernels(psf, target, size)
    kernel32 = kernel.astype(np.float32)
    matcher = ModelPsfMatcher(MatchConfig(kernel_size=KERNEL_SIZE, spatial_order=2))
    stages = []
    solved = matcher.solve(ccd.shape, psf, target)[0].kernel

    def run_match():
        result = matcher.match(ccd, target, source_psf=psf)
        stages.append(result.metadata["timings"])

    def run_convolve_data():
        convolve_spatially_varying(data, solved)

    def run_fftconvolve():
        scipy.signal.fftconvolve(data, kernel32, mode="same")

    def run_photutils():
        convolve_fft(data, kernel, mask=mask)

    def run_photutils_variance():
        convolve_fft(data, kernel, mask=mask)
        convolve_fft(variance, kernel**2, mask=mask, normalize_kernel=False)

    functions = {"fftconvolve": run_fftconvolve, "match": run_match,
                 "convolve_data_only": run_convolve_data,
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
    stage_medians = {key: float(np.median([s[key] for s in stages])) for key in stages[0]}
    return {"medians": medians, "times": times, "cpu_medians": cpu_medians, "cpu": cpu,
            "stages": stage_medians, "load": load, "shape": list(ccd.shape)}


#: The reference pipeline's model: 21-pixel Alard-Lupton basis, one candidate per cell,
#: Chebyshev polynomial of order 2 (the defaults choose the basis and a bilinear node model).
REFERENCE = {"kernel_basis": "alard-lupton", "kernel_size": 21, "spatial_model": "chebyshev1"}


def time_solve(shape, psf, target, *, grow_cells, repeat=5, options=REFERENCE):
    """Medians of the solve stages (kernel solution without PSF realization, and the rest)."""
    matcher = ModelPsfMatcher(MatchConfig(grow_cells=grow_cells, **options))
    records = []
    for _ in range(repeat + 1):  # the first run warms the caches of this configuration
        gc.collect()
        start = time.perf_counter()
        solution, candidates, grid, _, timings = matcher.solve(shape, psf, target)
        wall = time.perf_counter() - start
        records.append({**{k: v for k, v in timings.items() if isinstance(v, float)},
                        **{f"solve_{k}": v for k, v in solution.info["timings"].items()},
                        "wall": wall, "wall_minus_psf": wall - timings["psf_realization"]})
    records = records[1:]
    medians = {key: float(np.median([r[key] for r in records])) for key in records[0]}
    return {"grow_cells": grow_cells, "n_candidates": len(candidates),
            "n_cells": list(grid.n_cells), "stamp": int(candidates[0].source.shape[0]),
            "n_basis": int(solution.basis.n_basis), "medians": medians}


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


def _make_separable(rng, n):
    from naive import naive_separable_convolve_valid

    from astropsfmatch._engine._numba import fitting

    stamps, distinct, y_factors, x_index, _ = _fitting_inputs(rng, n)
    return _pair(fitting.separable_convolve_valid, naive_separable_convolve_valid,
                 (_last(stamps), distinct, y_factors, x_index),
                 (stamps, distinct, y_factors, x_index),
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
    # the package's 4096 x 4096 tiles: 250-pixel FFTs along y, 256 along x (real: 129 complex)
    return 250, 20, 129


def _make_rows(rng, n_tiles):
    from naive import naive_weighted_sum_rows

    from astropsfmatch._engine._numba.convolution import weighted_sum_rows

    fft_y, two_half, n_freq = _tile_shapes()
    rows = fft_y - two_half
    n_planes, exponents_x = 15, np.array([0, 1, 0, 2, 1, 0, 3, 2, 1, 0, 4, 3, 2, 1, 0])
    spectra = rng.random((n_planes, fft_y, 2 * n_freq)).astype(np.float32)
    weights = rng.random((n_planes, rows)).astype(np.float32)
    group = exponents_x.astype(np.int64)
    out_numba = np.empty((5, rows, 2 * n_freq), dtype=np.float32)
    out_naive = np.empty_like(out_numba)
    sliced = spectra[:, two_half:two_half + rows]

    def run_numba():
        for _ in range(n_tiles):
            weighted_sum_rows(spectra, two_half, weights, group, out_numba)

    def run_naive():
        for _ in range(n_tiles):
            naive_weighted_sum_rows(sliced, weights, group, out_naive)

    return run_numba, run_naive, lambda: bool(np.allclose(out_numba, out_naive, rtol=1e-5))


def _make_columns(rng, n_tiles):
    from naive import naive_weighted_sum_columns

    from astropsfmatch._engine._numba.convolution import weighted_sum_columns

    fft_y, two_half, _ = _tile_shapes()
    rows = fft_y - two_half
    fft_x, cols = 256, 256 - two_half
    planes = rng.random((5, rows, fft_x)).astype(np.float32)
    weights = rng.random((5, cols)).astype(np.float32)
    out_numba = np.empty((rows, cols), dtype=np.float32)
    out_naive = np.empty_like(out_numba)
    sliced = planes[:, :, two_half:two_half + cols]

    def run_numba():
        for _ in range(n_tiles):
            weighted_sum_columns(planes, two_half, weights, out_numba, 0, 0, cols)

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
    KernelCase("separable_convolve_valid", "fitting", _make_separable, 2,
               "31x31 stamps x 27 AL functions", workload=1156),
    KernelCase("convolve_valid", "fitting", _make_convolve_valid, 2,
               "31x31 stamps x 27 dense 21x21 images", workload=1156),
    KernelCase("normal_equations", "fitting", _make_normal_equations, 64,
               "candidates (27 functions, 11x11 pixels)", workload=1156, max_scale=8192),
    KernelCase("accumulate_spatial", "fitting", _make_accumulate, 64,
               "candidates (27 functions, 6 spatial terms)", workload=1156, max_scale=16384),
    KernelCase("weighted_sum_rows", "convolution", _make_rows, 4,
               "250x258 tiles, 15 planes -> 5 groups (float32)", workload=289),
    KernelCase("weighted_sum_columns", "convolution", _make_columns, 4,
               "230x256 tiles, 5 planes (float32)", workload=289),
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
    """Run in a fresh process: peak memory of one match (printed as JSON)."""
    ccd, psf, target = make_inputs(size)
    warm_up(psf, target)
    matcher = ModelPsfMatcher()
    gc.collect()
    reset = _reset_peak_rss()
    rss_before = _status_bytes("VmRSS")
    peak_before = _status_bytes("VmHWM")
    result = matcher.match(ccd, target, source_psf=psf)
    peak_after = _status_bytes("VmHWM")
    output_bytes = (result.matched.data.nbytes + result.matched.uncertainty.array.nbytes
                    + result.matched.mask.nbytes + result.weights.nbytes)
    del result
    gc.collect()
    tracemalloc.start()
    matcher.match(ccd, target, source_psf=psf)  # the outputs are alive at the peak
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(json.dumps({"input_bytes": input_bytes(ccd), "rss_before": rss_before,
                      "peak_before": peak_before, "peak_after": peak_after,
                      "rss_peak_increase": peak_after - rss_before,
                      "rss_reliable": bool(reset or peak_after > peak_before),
                      "traced_peak": traced, "output_bytes": output_bytes}))


def peak_memory(size):
    """Peak memory of one end-to-end match, measured in a subprocess (dict)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-probe", str(size)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("rss_peak_increase", "traced_peak", "output_bytes"):
        result[f"{key}_ratio"] = result[key] / result["input_bytes"]
    return result


def run(*, size=4096, repeat=3, naive_seconds=0.5, max_naive=20.0, kernel_repeat=5,
        verbose=True, memory=True, psf_loop=True):
    """Every speed figure. Returns a dict (see ``run.py`` for the tables made from it)."""
    ccd, psf, target = make_inputs(size)
    if verbose:
        print(f"  speed: image {ccd.shape} float32, input {input_bytes(ccd) / 2**20:.0f} MiB; "
              f"warming up", flush=True)
    warm_up(psf, target)
    out = {"size": size, "cpus": len(os.sched_getaffinity(0)),
           "load_start": os.getloadavg()}
    out["end_to_end"] = time_end_to_end(ccd, psf, target, repeat=repeat, verbose=verbose)
    shape = ccd.shape
    out["solve"] = [time_solve(shape, psf, target, grow_cells=g, repeat=max(repeat, 3))
                    for g in (1, 0)]
    if verbose:
        for s in out["solve"]:
            print(f"  speed: solve, {s['n_candidates']} candidates: kernel solution "
                  f"{s['medians']['kernel_solution']:.3f} s, PSF realization "
                  f"{s['medians']['psf_realization']:.3f} s", flush=True)
    if psf_loop:
        out["psf_loop"] = time_psf_loop(psf, shape)
    out["kernels"] = time_kernels(naive_seconds=naive_seconds, max_naive=max_naive,
                                  repeat=kernel_repeat, verbose=verbose)
    if memory:
        del ccd
        gc.collect()
        out["memory"] = peak_memory(size)
    out["load_end"] = os.getloadavg()
    return out


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--memory-probe":
        _memory_probe(int(sys.argv[2]))
    else:
        print("run the benchmarks with: python benchmarks/run.py (see benchmarks/README.md)")
