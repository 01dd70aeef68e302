"""Numba compiler options, defined once for every kernel.

fastmath allows reassociation and contraction (so reductions vectorize) but
not ``nnan``/``ninf``: masked pixels may be NaN and must stay NaN.
"""

FASTMATH_FLAGS = {"nsz", "arcp", "contract", "reassoc", "afn"}

JIT_OPTIONS = {"cache": True, "nogil": True, "fastmath": FASTMATH_FLAGS}

PARALLEL_JIT_OPTIONS = {**JIT_OPTIONS, "parallel": True}
