"""Private numba kernels: the only jitted code of the package.

Each kernel is small, typed by its callers and compiled with the options of
`options` (``cache=True``, no fastmath flag that assumes no NaN). Every
jitted function has a plain NumPy twin in ``tests/naive.py``, and the tests
assert that they agree. The public functions that call them validate the
inputs first (dtype, byte order, contiguity).
"""
