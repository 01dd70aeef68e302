"""Thread control: one meaning of ``workers`` and one scope per operation.

Every public function that computes (`match_psf`, `ModelPsfMatcher.match`,
`convolve_spatially_varying`, ...) takes ``workers``:

* ``None``: every CPU this process may run on (its CPU affinity), further
  limited by ``NUMBA_NUM_THREADS`` for the numba loops;
* an integer ``n >= 1``: at most ``n`` threads.

The operation enters `thread_scope` once, around all of its stages: inside,
numba's parallel loops run on at most that many threads, scipy's FFTs use
that many workers, and the tiled convolution runs that many tiles at once
(serial numba kernels run on that many parts of their work: `run_in_parts`).
numba's thread count and scipy's FFT workers are both local to the calling
thread, so concurrent operations in different threads (a dask worker, a
thread pool) each keep their own limit.
"""

import numbers
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numba
import scipy.fft

from ._validate import InvalidTypeError

__all__ = []  # private module


def available_cpus():
    """Number of CPUs this process may run on (at least 1)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def resolve_workers(workers):
    """The number of threads ``workers`` means: None -> `available_cpus`, else ``workers``.

    Raises
    ------
    TypeError
        If ``workers`` is neither None nor an integer.
    ValueError
        If ``workers`` is an integer < 1.
    """
    if workers is None:
        return available_cpus()
    msg = f"workers must be None or an integer >= 1, got {workers!r}"
    if isinstance(workers, bool) or not isinstance(workers, numbers.Integral):
        raise InvalidTypeError(msg)
    if workers < 1:
        raise ValueError(msg)
    return int(workers)


@contextmanager
def thread_scope(workers):
    """Limit numba loops and scipy FFTs of the calling thread; yield the thread count.

    Parameters
    ----------
    workers : int or None
        See the module docstring.

    Yields
    ------
    n_threads : int
        The resolved number of threads, for code that starts threads itself.
    """
    n_threads = resolve_workers(workers)
    previous = numba.get_num_threads()
    numba.set_num_threads(max(1, min(n_threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        with scipy.fft.set_workers(n_threads):
            yield n_threads
    finally:
        numba.set_num_threads(previous)


def run_in_parts(function, total, *args):
    """Call ``function(*args, start, stop)`` on ``range(total)`` cut in contiguous parts.

    One part per numba thread of the calling thread's scope (`thread_scope`),
    each in its own thread: for serial numba kernels that release the GIL and
    write disjoint parts of their outputs, so that the result is the same for
    any number of threads.
    """
    n_parts = max(1, min(numba.get_num_threads(), total))
    if n_parts == 1:
        function(*args, 0, total)
        return
    bounds = [round(k * total / n_parts) for k in range(n_parts + 1)]
    with ThreadPoolExecutor(max_workers=n_parts) as executor:
        futures = [executor.submit(function, *args, start, stop)
                   for start, stop in zip(bounds[:-1], bounds[1:], strict=True)]
        for future in futures:
            future.result()
