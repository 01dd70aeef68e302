"""Benchmark of the exact spatially varying convolution (astropsfmatch._engine.convolve).

Times ``convolve_spatially_varying`` on a large float32 image with variance and
mask against one ``scipy.signal.fftconvolve(data, kernel, mode='same')`` with a
constant kernel of the same size, in the same run, and prints the ratio, the
CPU time and the peak memory. ``--designs`` also times two alternative designs
(data and variance only, no mask) to justify the one the package uses:

``whole``
    one FFT of the whole image, then one full inverse FFT per monomial image
    (6 for the data, 15 for the variance), weights applied by broadcasting.
``tiled-plain``
    the package's tiles, but one 2-D inverse FFT per monomial instead of the
    package's split (inverse along y per monomial, then along x per power of x).

Example::

    python benchmarks/bench_convolve.py --size 4096 --repeat 3 --designs whole tiled-plain
"""

import argparse
import os
import resource
import time
import tracemalloc

import numpy as np
import scipy.fft
import scipy.signal

from astropsfmatch._engine import convolve as convolve_module
from astropsfmatch._engine.basis import make_alard_lupton_basis
from astropsfmatch._engine.convolve import convolve_spatially_varying
from astropsfmatch._engine.kernel import SpatialKernel
from astropsfmatch._engine.spatial import n_spatial_terms

#: the monomial form of the squared kernel, as the package computes it
squared_monomials = convolve_module._squared_monomials


def tiling(size, half, fft_length=256):
    """FFT length, output step and output starts of overlap-save tiles along one axis."""
    valid = size - 2 * half
    target = max(fft_length, 4 * (2 * half + 1))
    n_tiles = -(-valid // max(target - 2 * half, 1))
    step = -(-valid // n_tiles)
    length = scipy.fft.next_fast_len(step + 2 * half, real=True)
    step = length - 2 * half
    return length, step, list(range(half, size - half, step))


def make_inputs(size, kernel_size, order, seed=1):
    """A float32 star field with variance and a sparse mask, and a varying kernel."""
    rng = np.random.default_rng(seed)
    basis = make_alard_lupton_basis(kernel_size, (0.7, 1.5, 3.0), (4, 2, 2))
    coefficients = 0.05 * rng.normal(size=(len(basis), n_spatial_terms(order)))
    coefficients[0] = 0.0
    coefficients[0, 0] = 1.0
    cell = 128
    kernel = SpatialKernel(basis, coefficients, spatial_model="chebyshev1",
                           spatial_order=order, bbox=(-cell, size + cell, -cell, size + cell))
    data = rng.normal(100.0, 10.0, size=(size, size)).astype(np.float32)
    n_stars = size * size // 4000
    ys, xs = rng.integers(0, size, n_stars), rng.integers(0, size, n_stars)
    data[ys, xs] += rng.uniform(1e2, 1e5, n_stars).astype(np.float32)
    variance = np.abs(data) + np.float32(25.0)
    mask = rng.random((size, size)) < 1e-4
    return data, variance, mask, kernel


def timed(function, repeat):
    """Best wall time, its CPU time (all threads) and the last result."""
    best = (np.inf, np.inf)
    result = None
    for _ in range(repeat):
        result = None
        wall, cpu = time.perf_counter(), time.process_time()
        result = function()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if wall < best[0]:
            best = (wall, cpu)
    return best[0], best[1], result


def peak_memory(function):
    """Peak bytes traced by tracemalloc during ``function()`` (NumPy arrays are traced)."""
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _monomial_weights(kernel, exponents, shape):
    xn, yn = kernel.normalize_xy(np.arange(shape[1]), np.arange(shape[0]))
    return [(yn**b).astype(np.float32)[:, None] * (xn**a).astype(np.float32)[None, :]
            for a, b in exponents]


def design_whole(data, variance, kernel, workers):
    """One FFT of the whole image, one full inverse FFT per monomial image."""
    exponents, images = kernel.monomial_kernels()
    images = images / kernel.kernel_sum
    exponents2, images2 = squared_monomials(exponents, images)
    half = kernel.kernel_size // 2
    shape = [scipy.fft.next_fast_len(n + 2 * half, real=True) for n in data.shape]
    out = []
    for plane, exps, kernels in ((data, exponents, images), (variance, exponents2, images2)):
        spectrum = scipy.fft.rfft2(plane, s=shape, workers=workers)
        total = np.zeros(data.shape, dtype=np.float32)
        xn, yn = kernel.normalize_xy(np.arange(data.shape[1]), np.arange(data.shape[0]))
        for (a, b), image in zip(exps, kernels, strict=True):
            kspec = scipy.fft.rfft2(image.astype(np.float32), s=shape, workers=workers)
            conv = scipy.fft.irfft2(spectrum * kspec, s=shape, workers=workers)
            conv = conv[half:half + data.shape[0], half:half + data.shape[1]]
            total += (yn**b).astype(np.float32)[:, None] * conv * (
                xn**a).astype(np.float32)[None, :]
        out.append(total)
    return out


def design_tiled_plain(data, variance, kernel, workers):
    """The package's tiling, one 2-D inverse FFT per monomial (no y/x split)."""
    exponents, images = kernel.monomial_kernels()
    images = images / kernel.kernel_sum
    exponents2, images2 = squared_monomials(exponents, images)
    half, size = kernel.kernel_size // 2, kernel.kernel_size
    ly, step_y, starts_y = tiling(data.shape[0], half)
    lx, step_x, starts_x = tiling(data.shape[1], half)
    xn, yn = kernel.normalize_xy(np.arange(data.shape[1]), np.arange(data.shape[0]))
    out = []
    for plane, exps, kernels in ((data, exponents, images), (variance, exponents2, images2)):
        padded = np.zeros((len(kernels), ly, lx))
        padded[:, :size, :size] = kernels
        kspec = scipy.fft.rfft2(padded).astype(np.complex64)
        xpow = np.array([xn**a for a, _ in exps], dtype=np.float32)
        ypow = np.array([yn**b for _, b in exps], dtype=np.float32)
        total = np.full(data.shape, np.nan, dtype=np.float32)
        buffer = np.zeros((ly, lx), dtype=np.float32)
        for y0 in starts_y:
            for x0 in starts_x:
                r0, c0 = y0 - half, x0 - half
                r1, c1 = min(r0 + ly, data.shape[0]), min(c0 + lx, data.shape[1])
                buffer[...] = 0.0
                buffer[:r1 - r0, :c1 - c0] = plane[r0:r1, c0:c1]
                conv = scipy.fft.irfft2(scipy.fft.rfft2(buffer, workers=workers) * kspec,
                                        s=(ly, lx), workers=workers)
                rows = min(step_y, data.shape[0] - half - y0)
                cols = min(step_x, data.shape[1] - half - x0)
                conv = conv[:, 2 * half:2 * half + rows, 2 * half:2 * half + cols]
                weights = (ypow[:, y0:y0 + rows, None] * xpow[:, None, x0:x0 + cols])
                total[y0:y0 + rows, x0:x0 + cols] = np.einsum("nyx,nyx->yx", weights, conv)
        out.append(total)
    return out


def main(argv=None):
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096, help="image side (default 4096)")
    parser.add_argument("--kernel-size", type=int, default=21, help="kernel side (default 21)")
    parser.add_argument("--order", type=int, default=2, help="spatial order (default 2)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions, best kept")
    parser.add_argument("--workers", type=int, default=None,
                        help="threads for the package (default: all CPUs)")
    parser.add_argument("--fft-lengths", type=int, nargs="*", default=[],
                        help="also time these tile FFT lengths (private _FFT_LENGTH)")
    parser.add_argument("--designs", nargs="*", default=[], choices=["whole", "tiled-plain"],
                        help="alternative designs to time (data and variance, no mask)")
    args = parser.parse_args(argv)
    workers = args.workers or len(os.sched_getaffinity(0))

    data, variance, mask, kernel = make_inputs(args.size, args.kernel_size, args.order)
    constant = kernel.evaluate(args.size / 2, args.size / 2).astype(np.float32)
    print(f"image {data.shape} float32 with variance and mask; kernel {args.kernel_size}^2, "
          f"spatial order {args.order}; {workers} worker(s); "
          f"{len(os.sched_getaffinity(0))} CPU(s), load average {os.getloadavg()[0]:.2f}")

    # warm up (numba compilation / cache load, FFT plans)
    convolve_spatially_varying(data[:300, :300], kernel, variance=variance[:300, :300],
                               mask=mask[:300, :300], workers=workers)

    def run_package():
        return convolve_spatially_varying(data, kernel, variance=variance, mask=mask,
                                          workers=workers)

    def run_fftconvolve():
        return scipy.signal.fftconvolve(data, constant, mode="same")

    f_wall, f_cpu, _ = timed(run_fftconvolve, args.repeat)
    p_wall, p_cpu, result = timed(run_package, args.repeat)
    f_wall2, _, _ = timed(run_fftconvolve, args.repeat)
    f_wall = min(f_wall, f_wall2)
    print(f"scipy.signal.fftconvolve (constant kernel): {f_wall:7.3f} s wall, "
          f"{f_cpu:6.3f} s CPU")
    print(f"convolve_spatially_varying (data+var+mask): {p_wall:7.3f} s wall, "
          f"{p_cpu:6.3f} s CPU   ratio {p_wall / f_wall:5.2f} x fftconvolve "
          f"(CPU ratio {p_cpu / f_cpu:4.2f})")
    data_only, _, _ = timed(lambda: convolve_spatially_varying(data, kernel, workers=workers),
                            args.repeat)
    print(f"convolve_spatially_varying (data only):     {data_only:7.3f} s wall   "
          f"ratio {data_only / f_wall:5.2f}")
    del result

    input_bytes = data.nbytes + variance.nbytes + mask.nbytes
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak = peak_memory(run_package)
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"peak traced memory of one call: {peak / 2**20:7.1f} MiB = "
          f"{peak / data.nbytes:4.2f} x data bytes = {peak / input_bytes:4.2f} x input bytes "
          f"(outputs {(2 * data.nbytes + mask.nbytes) / 2**20:.0f} MiB included); "
          f"max RSS {rss_after / 2**20:.0f} MiB (before: {rss_before / 2**20:.0f} MiB)")

    # accuracy of the float32 path (single-precision FFTs) against float64 (exact to 1e-15)
    cut = np.s_[:1024, :1024]
    single = convolve_spatially_varying(data[cut], kernel, variance=variance[cut],
                                        mask=mask[cut], workers=workers)
    double = convolve_spatially_varying(data[cut].astype(np.float64), kernel,
                                        variance=variance[cut].astype(np.float64),
                                        mask=mask[cut], workers=workers)
    valid = ~double.mask
    for name in ("data", "variance"):
        a, b = getattr(single, name)[valid], getattr(double, name)[valid]
        error = np.abs(a - b)
        relative = error / np.abs(b)
        print(f"float32 vs float64 {name:8s}: max |error| = {error.max() / np.abs(b).max():.1e}"
              f" of the max; per-pixel relative error median {np.median(relative):.1e}, "
              f"max {relative.max():.1e}")

    default_length = convolve_module._FFT_LENGTH
    for length in args.fft_lengths:
        convolve_module._FFT_LENGTH = length
        wall, cpu, _ = timed(run_package, args.repeat)
        fft = tiling(args.size, args.kernel_size // 2, length)[0]
        print(f"  tile FFT length {length:5d} ({fft}): "
              f"{wall:7.3f} s wall, {cpu:6.3f} s CPU, ratio {wall / f_wall:5.2f}")
    convolve_module._FFT_LENGTH = default_length

    reference = None
    for name in args.designs:
        function = {"whole": design_whole, "tiled-plain": design_tiled_plain}[name]
        wall, cpu, out = timed(lambda f=function: f(data, variance, kernel, workers),
                               args.repeat)
        if reference is None:
            reference = convolve_spatially_varying(data, kernel, variance=variance,
                                                   workers=workers)
        valid = ~reference.mask
        error = np.max(np.abs(out[0][valid] - reference.data[valid])) / np.max(
            np.abs(reference.data[valid]))
        print(f"  design {name:12s}: {wall:7.3f} s wall, {cpu:6.3f} s CPU, ratio "
              f"{wall / f_wall:5.2f} (data+var only); max difference {error:.1e} of max")


if __name__ == "__main__":
    main()
