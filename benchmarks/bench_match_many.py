"""Throughput of match_many: serially, and on dask LocalClusters of 1 and 2 workers.

Makes ``--n-exposures`` float32 star fields of ``--size`` x ``--size`` pixels,
each with its own spatially varying PSF (a 3x3 ``GriddedPSFModel`` of Gaussians
whose FWHM varies over the field), writes them to FITS in a temporary
directory, then runs ``match_many`` on the list of paths with ``output_dir``
(the production pattern: each exposure is read, matched and written where it
runs; only paths come back) in each mode:

``serial``
    no client: one exposure after the other in this process.
``N worker(s) x T thread(s)``
    a ``LocalCluster(n_workers=N, threads_per_worker=T, processes=True)``.

Before timing, every worker matches a small image once (imports, numba cache
loads), so the table shows the steady-state throughput; the cluster start-up
and warm-up times are printed separately. The speed-up is relative to the
serial run. Timings on a shared machine are noisy: use ``--repeat`` and read
the best.

Example::

    python benchmarks/bench_match_many.py --n-exposures 8 --size 2048 --workers 1 2
"""

import argparse
import os
import tempfile
import time

import numpy as np
from astropy.nddata import CCDData, NDData, StdDevUncertainty
from astropy.wcs import WCS
from photutils.psf import CircularGaussianPRF, GriddedPSFModel

from astropsfmatch import MatchConfig
from astropsfmatch._workflow.many import match_many
from astropsfmatch._workflow.target import common_target_psf

HALF = 12  # stars drawn on 25 x 25 cutouts


def gridded_psf(size, fwhm_corners):
    """3x3 GriddedPSFModel over the field, FWHM bilinear between the four corner values."""
    nodes = np.linspace(0, size - 1, 3)
    d = np.arange(-HALF, HALF + 1)
    yy, xx = np.meshgrid(d, d, indexing="ij")
    (f00, f01), (f10, f11) = fwhm_corners
    data, xypos = [], []
    for y in nodes:
        for x in nodes:
            u, v = x / (size - 1), y / (size - 1)
            fwhm = (f00 * (1 - u) + f01 * u) * (1 - v) + (f10 * (1 - u) + f11 * u) * v
            data.append(CircularGaussianPRF(fwhm=fwhm)(xx, yy))
            xypos.append((x, y))
    return GriddedPSFModel(NDData(np.array(data), meta={"grid_xypos": xypos,
                                                         "oversampling": 1}))


def make_exposure(index, size, directory):
    """A float32 star field with its PSF; written to FITS. Returns (path, psf)."""
    rng = np.random.default_rng(index)
    corners = rng.uniform(2.2, 3.6, (2, 2))
    psf = gridded_psf(size, corners)
    data = rng.normal(100.0, 5.0, (size, size))
    step = 64
    for y in range(step, size - step, step):
        for x in range(step, size - step, step):
            model = psf.copy()
            model.x_0, model.y_0, model.flux = x, y, rng.uniform(1e3, 1e5)
            yy, xx = np.mgrid[y - HALF:y + HALF + 1, x - HALF:x + HALF + 1]
            data[y - HALF:y + HALF + 1, x - HALF:x + HALF + 1] += model(xx, yy)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.cdelt = [-2.0**-14, 2.0**-14]
    wcs.wcs.crpix = [size / 2 + index, size / 2 - index]
    ccd = CCDData(data.astype(np.float32), unit="electron", wcs=wcs,
                  uncertainty=StdDevUncertainty(np.full((size, size), 5.0, np.float32)))
    path = os.path.join(directory, f"exposure_{index:02d}.fits")
    ccd.write(path, overwrite=True)
    return path, psf


def warm_up(client, target, config):
    """Match a small image once on every worker (imports, numba cache loads)."""
    from photutils.psf import CircularGaussianPRF as Prf

    def job():
        from astropsfmatch import match_psf
        match_psf(np.zeros((512, 512)), target, source_psf=Prf(fwhm=2.5), config=config)

    client.run(job)


def run(paths, psfs, target, config, output_dir, repeat, client=None):
    best, last = np.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        last = match_many(paths, target, source_psfs=psfs, config=config, client=client,
                          output_dir=output_dir, overwrite=True, progress=False)
        best = min(best, time.perf_counter() - start)
    if last.errors:
        raise RuntimeError(f"failures: {last.errors}")
    return best, last


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-exposures", type=int, default=8)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2],
                        help="numbers of single-threaded workers to try")
    parser.add_argument("--threads", type=int, nargs="*", default=[],
                        help="also try one worker with this many threads")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    from distributed import Client, LocalCluster

    config = MatchConfig()
    with tempfile.TemporaryDirectory() as directory:
        t0 = time.perf_counter()
        made = [make_exposure(i, args.size, directory) for i in range(args.n_exposures)]
        paths, psfs = [p for p, _ in made], [q for _, q in made]
        target = common_target_psf(psfs, shapes=(args.size, args.size)).psf
        print(f"{args.n_exposures} exposures of {args.size}x{args.size} float32 made in "
              f"{time.perf_counter() - t0:.1f} s; target {target.fwhm.value:.3f} px; "
              f"{os.cpu_count()} CPU(s), load average "
              f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")
        output_dir = os.path.join(directory, "out")

        rows = []
        # serial, after one warm-up match in this process
        warm_up_local = match_many(paths[:1], target, source_psfs=psfs[:1], config=config,
                                   output_dir=output_dir, overwrite=True, progress=False)
        assert not warm_up_local.errors, warm_up_local.errors
        elapsed, result = run(paths, psfs, target, config, output_dir, args.repeat)
        rows.append(("serial", elapsed, np.median(result.durations), 0.0))
        setups = [(n, 1) for n in args.workers] + [(1, t) for t in args.threads]
        for n_workers, threads in setups:
            t0 = time.perf_counter()
            with LocalCluster(n_workers=n_workers, threads_per_worker=threads, processes=True,
                              dashboard_address=":0") as cluster, Client(cluster) as client:
                warm_up(client, target, config)
                startup = time.perf_counter() - t0
                elapsed, result = run(paths, psfs, target, config, output_dir, args.repeat,
                                      client=client)
            label = f"{n_workers} worker(s) x {threads} thread(s)"
            rows.append((label, elapsed, np.median(result.durations), startup))

    serial = rows[0][1]
    print()
    print(f"{'mode':<28} {'wall (s)':>9} {'exp/min':>8} {'s/exp (task)':>13} {'speed-up':>9} "
          f"{'start-up (s)':>13}")
    for label, elapsed, per_task, startup in rows:
        print(f"{label:<28} {elapsed:9.2f} {60 * args.n_exposures / elapsed:8.1f} "
              f"{per_task:13.2f} {serial / elapsed:9.2f} {startup:13.1f}")
    print("\ns/exp (task): median time of one exposure where it ran (read, match, write).")


if __name__ == "__main__":
    main()
