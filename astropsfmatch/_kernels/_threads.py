"""Limit the threads of numba's parallel loops for one call."""

from contextlib import contextmanager

import numba


@contextmanager
def numba_threads(workers):
    """Run the enclosed numba parallel regions on at most ``workers`` threads.

    numba's thread count is local to the calling thread, so concurrent
    matches (e.g. dask tasks in one process) each keep their own limit.
    ``None`` leaves numba's setting unchanged.
    """
    if workers is None:
        yield
        return
    previous = numba.get_num_threads()
    numba.set_num_threads(max(1, min(int(workers), numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        numba.set_num_threads(previous)
