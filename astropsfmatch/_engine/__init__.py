"""The array engine: everything that computes, on plain NumPy arrays.

Kernel bases (`basis`), the cell grid (`grid`), spatial terms (`spatial`),
the spatially varying kernel (`kernel`), the kernel solution (`solve`), the
exact convolution (`convolve`), inverse-variance weights (`weights`), PSF
moments (`moments`) and the numba kernels (`_numba`). It imports nothing from
``astropy.nddata``, photutils, the input/output adapters or the workflow:
those sit above it and hand it arrays.
"""
