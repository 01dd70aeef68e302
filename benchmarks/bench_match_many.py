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
and warm-up times are reported separately. For each mode:

* throughput: exposures per second of the whole call;
* task time: the median time of one exposure where it ran (read, match,
  write), as ``match_many`` measures it (``ManyResult.durations``);
* overhead per exposure: what the call costs beyond the tasks themselves,
  ``elapsed * slots / n - mean(task time)`` with ``slots`` worker threads:
  scheduling, sending the task (paths, PSF models, configuration) and
  collecting its result (two paths), and the idle slots at the end;
* worker peak memory: the increase of each worker process's peak resident
  size (reset after the warm-up) during the run, relative to one exposure's
  arrays in memory (data and uncertainty).

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


def _reset_peak():
    """In a worker: reset its peak resident size (VmHWM); return its resident size."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass
    return _status("VmRSS")


def _status(field):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return -1


def _peak():
    return _status("VmHWM")


def _figures(label, n_exposures, slots, elapsed, result, exposure_bytes, startup=0.0,
             memory=None):
    durations = np.asarray(result.durations, dtype=float)
    row = {"mode": label, "slots": slots, "elapsed": elapsed,
           "throughput": n_exposures / elapsed, "task_median": float(np.median(durations)),
           "task_mean": float(durations.mean()),
           "overhead": elapsed * slots / n_exposures - float(durations.mean()),
           "startup": startup}
    row["overhead_fraction"] = row["overhead"] / row["task_mean"]
    if memory is not None:
        row["worker_peak_increase"] = max(memory)
        row["worker_peak_ratio"] = max(memory) / exposure_bytes
    return row


def run_cluster(*, n_exposures=8, size=2048, workers=(1, 2), threads=(), repeat=1,
                verbose=True):
    """Every figure of this benchmark (dict): serial, then each LocalCluster."""
    from distributed import Client, LocalCluster

    config = MatchConfig()
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        t0 = time.perf_counter()
        made = [make_exposure(i, size, directory) for i in range(n_exposures)]
        paths, psfs = [p for p, _ in made], [q for _, q in made]
        target = common_target_psf(psfs, shapes=(size, size)).psf
        exposure_bytes = size * size * (4 + 4)  # float32 data and uncertainty
        if verbose:
            print(f"  cluster: {n_exposures} exposures of {size}x{size} float32 made in "
                  f"{time.perf_counter() - t0:.1f} s; target {target.fwhm.value:.3f} px",
                  flush=True)
        output_dir = os.path.join(directory, "out")
        # serial, after one warm-up match in this process
        warm = match_many(paths[:1], target, source_psfs=psfs[:1], config=config,
                          output_dir=output_dir, overwrite=True, progress=False)
        if warm.errors:
            raise RuntimeError(f"failures: {warm.errors}")
        elapsed, result = run(paths, psfs, target, config, output_dir, repeat)
        rows.append(_figures("serial (no client)", n_exposures, 1, elapsed, result,
                             exposure_bytes))
        for n_workers, n_threads in [(n, 1) for n in workers] + [(1, t) for t in threads]:
            t0 = time.perf_counter()
            with LocalCluster(n_workers=n_workers, threads_per_worker=n_threads,
                              processes=True, dashboard_address=":0") as cluster, \
                    Client(cluster) as client:
                warm_up(client, target, config)
                startup = time.perf_counter() - t0
                before = client.run(_reset_peak)
                elapsed, result = run(paths, psfs, target, config, output_dir, repeat,
                                      client=client)
                after = client.run(_peak)
            memory = [after[w] - before[w] for w in before]
            label = f"{n_workers} worker(s) x {n_threads} thread(s)"
            rows.append(_figures(label, n_exposures, n_workers * n_threads, elapsed, result,
                                 exposure_bytes, startup, memory))
            if verbose:
                print(f"  cluster: {label}: {elapsed:.2f} s, overhead "
                      f"{rows[-1]['overhead']:.3f} s per exposure", flush=True)
    return {"n_exposures": n_exposures, "size": size, "exposure_bytes": exposure_bytes,
            "cpus": len(os.sched_getaffinity(0)), "rows": rows}


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
    print(f"{os.cpu_count()} CPU(s), load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    out = run_cluster(n_exposures=args.n_exposures, size=args.size, workers=args.workers,
                      threads=args.threads, repeat=args.repeat)
    print()
    print(f"{'mode':<28} {'wall (s)':>9} {'exp/s':>7} {'s/exp (task)':>13} "
          f"{'overhead (s)':>13} {'worker peak':>12} {'start-up (s)':>13}")
    for row in out["rows"]:
        peak = (f"{row['worker_peak_ratio']:.2f}x" if "worker_peak_ratio" in row else "-")
        print(f"{row['mode']:<28} {row['elapsed']:9.2f} {row['throughput']:7.2f} "
              f"{row['task_median']:13.2f} {row['overhead']:13.3f} {peak:>12} "
              f"{row['startup']:13.1f}")
    print("\ns/exp (task): median time of one exposure where it ran (read, match, write); "
          "worker peak: peak RSS increase / one exposure's arrays.")


if __name__ == "__main__":
    main()
