"""The workflow: what a user runs, built from the engine and the adapters.

Matching one image (`matcher`, its result in `result`, the choices it makes
from the two PSFs in `policy`, its record in `provenance`), a common target
for many exposures (`target`), many exposures locally or on a cluster
(`many`), and their coaddition (`coadd`).
"""
