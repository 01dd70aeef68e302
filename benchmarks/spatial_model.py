"""Held-out accuracy of the spatial models on the benchmark's 2048 x 2048 fields.

For the "mild" and "strong" GriddedPSFModel fields (5 x 5 ePSF grid: FWHM
3.0 -> 3.6 and 2.8 -> 4.0 px, ellipticity 0 -> 0.1 and 0 -> 0.15 from the
centre to the corners), matched to a round Gaussian of FWHM 5 px, each
spatial model is solved with ``ModelPsfMatcher(config).solve`` and measured
at 1024 quasi-random positions of a Halton sequence with a different seed
from the matcher's own held-out check: positions that neither the fit nor
the choice of node level saw. Metric: max |source ⊛ K(x, y) - target| /
target peak on the complete-convolution region of 61-pixel stamps.

Run: ``python benchmarks/spatial_model.py [--field N] [--positions N]``;
writes ``benchmarks/results/spatial_model.md`` (or prints with --print).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from photutils.psf import CircularGaussianPSF

from astropsfmatch import MatchConfig, ModelPsfMatcher
from astropsfmatch._adapters.psf import as_psf
from astropsfmatch._engine.quality import heldout_positions, heldout_residuals

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from psf_models import field_psf  # noqa: E402

FIELDS = {"mild": {"fwhm": (3.0, 3.6), "ellipticity": 0.1},
          "strong": {"fwhm": (2.8, 4.0), "ellipticity": 0.15}}
TARGET = CircularGaussianPSF(fwhm=5.0)
STAMP = 61
SEED = 7  # not the matcher's (0): positions its refinement never saw

POLYNOMIAL = {"kernel_basis": "alard-lupton", "kernel_size": 21, "spatial_model": "chebyshev1",
              "cell_size": 128}
MODELS = [
    ("Chebyshev order 2, 128-px cells (reference)", {**POLYNOMIAL, "spatial_order": 2}),
    ("Chebyshev order 4, 128-px cells", {**POLYNOMIAL, "spatial_order": 4}),
    ("bilinear, PSF model's nodes (x1)", {"spatial_model": "bilinear", "node_subdivision": 1}),
    ("bilinear, nodes subdivided x2", {"spatial_model": "bilinear", "node_subdivision": 2}),
    ("bilinear, nodes subdivided x4", {"spatial_model": "bilinear", "node_subdivision": 4}),
    ("bilinear, nodes subdivided x8", {"spatial_model": "bilinear", "node_subdivision": 8}),
    ("defaults (auto)", {}),
]


def measure(psf, shape, options, n_positions):
    config = MatchConfig(**options)
    t0 = time.perf_counter()
    solved = ModelPsfMatcher(config).solve(shape, psf, TARGET)
    elapsed = time.perf_counter() - t0
    kernel = solved.unit_kernel
    x, y = heldout_positions(shape, n_positions, seed=SEED)
    source, target = as_psf(psf), as_psf(TARGET)
    worst = []
    for chunk in np.array_split(np.arange(len(x)), max(len(x) // 128, 1)):
        residuals = heldout_residuals(kernel, x[chunk], y[chunk],
                                      source.stamps(x[chunk], y[chunk], STAMP),
                                      target.stamps(x[chunk], y[chunk], STAMP))[0]
        worst.append(np.abs(residuals).max(axis=(1, 2)))
    worst = np.concatenate(worst)
    spatial = solved.solution.kernel
    where = (f"{spatial.nodes[1].size}x{spatial.nodes[0].size} nodes" if spatial.nodes is not None
             else f"{solved.grid.n_cells[0]}x{solved.grid.n_cells[1]} cells")
    return {"max": float(worst.max()), "median": float(np.median(worst)), "where": where,
            "basis": f"{spatial.n_basis} {solved.config.kernel_basis}, K={spatial.kernel_size}",
            "seconds": elapsed}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--field", type=int, default=2048)
    parser.add_argument("--positions", type=int, default=1024)
    parser.add_argument("--print", action="store_true", dest="only_print")
    args = parser.parse_args(argv)
    shape = (args.field, args.field)
    rows = ["| spatial model | field | basis | fitted at | max held-out | median | solve (s) |",
            "|---|---|---|---|---|---|---|"]
    for name, field in FIELDS.items():
        psf = field_psf(shape, **field)
        for label, options in MODELS:
            r = measure(psf, shape, options, args.positions)
            rows.append(f"| {label} | {name} | {r['basis']} | {r['where']} | {r['max']:.2g} | "
                        f"{r['median']:.2g} | {r['seconds']:.2f} |")
            print(rows[-1], flush=True)
    text = "\n".join([f"# Spatial models on {args.field}x{args.field} fields, "
                      f"{args.positions} held-out positions (seed {SEED})", ""] + rows) + "\n"
    if not args.only_print:
        out = Path(__file__).resolve().parent / "results" / "spatial_model.md"
        out.write_text(text)


if __name__ == "__main__":
    main()
