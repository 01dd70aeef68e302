"""Private numba kernels. Every jitted function lives here and has a plain
NumPy twin in ``tests/naive.py``; public code validates inputs first.
"""
