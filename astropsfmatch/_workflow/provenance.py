"""What a match or a coadd records about itself: `MatchResult.metadata` and FITS keywords.

One builder for both operations, in the spirit of ccdproc's metadata
logging: `match_metadata` assembles the dictionary of a match,
`match_record` and `coadd_record` the FITS-safe keywords (``{KEY: (value,
comment)}``, short keys, no arrays) that go into the output's ``meta``.
**A new field of the metadata or a new header keyword goes here.**
"""

import numpy as np

from .._about import __version__
from .._adapters.psf import held_psf

__all__ = []  # internal to the package: nothing here is public

#: The HISTORY card added to a matched image's FITS header.
MATCH_HISTORY = "PSF-matched by astropsfmatch to the target PSF in PSFMTPSF"

#: The HISTORY card of a coadd.
COADD_HISTORY = ("Co-added by astropsfmatch.coadd with reproject_and_coadd; the variance "
                 "ignores the noise correlation of the matching kernel")


def summary(values):
    """Mean, median, standard deviation and maximum of a list of numbers (NaN if empty)."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return {"mean": np.nan, "median": np.nan, "std": np.nan, "max": np.nan}
    return {"mean": float(values.mean()), "median": float(np.median(values)),
            "std": float(values.std()), "max": float(values.max())}


#: Entries of the held-out verdict with one value per position: in `MatchResult.heldout`,
#: not in ``metadata['quality']``.
PER_POSITION = ("positions", "residual_max_per_position")


def heldout_table(quality):
    """The held-out positions and the largest residual at each, as a `~astropy.table.Table`."""
    from astropy.table import Table

    x, y = quality["positions"]
    table = Table({"x": x, "y": y, "residual_max": quality["residual_max_per_position"]})
    table["x"].description = "held-out x (pixels, 0-based)"
    table["y"].description = "held-out y (pixels, 0-based)"
    table["residual_max"].description = "max |source * K(x, y) - target| / target peak"
    return table


def match_metadata(solution, candidates, grid, target_stamp, *, kernel_sum, config,
                   requested_order, quality):
    """The ``metadata`` dictionary of a `MatchResult` (timings are added by the matcher)."""
    used = [c for c in candidates if not c.rejected]
    kernel = solution.kernel
    spatial = {"model": kernel.spatial_model,
               "order": kernel.spatial_order,
               "requested_order": requested_order,
               "n_terms": kernel.n_terms,
               "n_unknowns": solution.info["n_unknowns"],
               "condition_number": solution.info["spatial_condition_number"],
               "solver": solution.info["solver"]}
    if kernel.nodes is not None:
        spatial["nodes"] = (kernel.nodes[1].size, kernel.nodes[0].size)
        spatial["node_subdivision"] = config.node_subdivision
    verdict = {key: value for key, value in quality.items() if key not in PER_POSITION}
    verdict["max_residual"] = config.max_residual
    verdict["passed"] = bool(verdict["heldout_residual_max"] <= config.max_residual)
    return {
        "version": __version__,
        "basis": solution.basis.describe(),
        "spatial": spatial,
        "quality": verdict,
        "kernel_sum": float(kernel_sum),
        "psf_stamp_size": int(target_stamp.shape[0]),
        "grid": {"n_cells": grid.n_cells, "cell_size": grid.cell_size},
        "candidates": {"total": len(candidates), "used": len(used),
                       "rejected": len(candidates) - len(used)},
        "candidate_residuals": summary([c.fit.residual_max for c in used]),
        "spatial_residuals": summary([c.spatial_residual_max for c in used]),
        "regularization_lambda": solution.info["regularization_lambda"],
        "solver_timings": solution.info["timings"],
    }


def describe_psf(psf):
    """A short description of a PSF for a header: its class and FWHM if it has one."""
    psf = held_psf(psf)
    described = type(psf).__name__
    fwhm = getattr(psf, "fwhm", None)
    if fwhm is not None and np.ndim(getattr(fwhm, "value", fwhm)) == 0:
        described += f" fwhm={float(getattr(fwhm, 'value', fwhm)):.4g}"
    return described[:60]


def match_record(metadata, target_psf):
    """FITS-safe keywords recording a match."""
    basis = metadata["basis"]
    return {
        "PSFMATCH": (True, "PSF-matched by astropsfmatch"),
        "PSFMVERS": (str(metadata["version"]), "astropsfmatch version"),
        "PSFMTPSF": (describe_psf(target_psf), "target PSF"),
        "PSFMKSZ": (basis["kernel_size"], "matching kernel size (pixels)"),
        "PSFMBAS": (basis["kind"], "kernel basis"),
        "PSFMNBAS": (basis["n_basis"], "number of basis functions"),
        "PSFMSPM": (metadata["spatial"]["model"], "spatial model"),
        "PSFMSPO": (-1 if metadata["spatial"]["order"] is None else metadata["spatial"]["order"],
                    "spatial order (-1: bilinear nodes)"),
        "PSFMKSUM": (metadata["kernel_sum"], "kernel sum (convolution normalized by it)"),
        "PSFMCOND": (float(metadata["spatial"]["condition_number"]),
                     "spatial condition number"),
        "PSFMNCND": (metadata["candidates"]["used"], "kernel candidates used"),
        "PSFMRMAX": (metadata["spatial_residuals"]["max"],
                     "max candidate residual / target peak"),
        "PSFMQHMX": (metadata["quality"]["heldout_residual_max"],
                     "max held-out residual / target peak"),
        "PSFMQHRM": (metadata["quality"]["heldout_residual_rms"],
                     "rms held-out residual / target peak"),
        "PSFMQFWD": (metadata["quality"]["fwhm_deviation_max"],
                     "max |FWHM(matched) / FWHM(target) - 1|"),
        "PSFMQELL": (metadata["quality"]["ellipticity_max"], "max ellipticity of matched PSF"),
        "PSFMQNG": (metadata["quality"]["noise_gain"], "noise gain sqrt(sum K^2), max"),
        "PSFMQOK": (metadata["quality"]["passed"], "held-out residual <= max_residual"),
        "PSFMVERR": (metadata.get("variance_error", 0.0),
                     "variance over-estimate bound (0: exact)"),
    }


def coadd_record(*, n_inputs, combine, weights, reproject_name, target):
    """FITS-safe keywords recording a coadd."""
    record = {
        "COADD": (True, "co-added by astropsfmatch.coadd"),
        "PSFMVERS": (str(__version__), "astropsfmatch version"),
        "NCOMBINE": (n_inputs, "number of co-added images"),
        "COMBINE": (combine, "combination of the images"),
        "CWEIGHTS": (weights, "weights of the images"),
        "REPROJ": (reproject_name[:60], "reprojection"),
    }
    if target is not None:
        record["PSFMTPSF"] = (target, "target PSF of the matched images")
    return record


def quality_summary(quality):
    """One line saying how good a match is, for logs and the command line."""
    return (f"held-out residual max {quality['heldout_residual_max']:.2g} "
            f"(rms {quality['heldout_residual_rms']:.2g}) of the target peak at "
            f"{quality['n_heldout']} positions, FWHM within "
            f"{100 * quality['fwhm_deviation_max']:.2g}% of the target, ellipticity "
            f"<= {quality['ellipticity_max']:.2g}, noise gain {quality['noise_gain']:.3g} "
            f"(a Gaussian kernel: {quality['noise_gain_gaussian']:.3g})")


def quality_warning(quality, config, requested=None):
    """The message of a `MatchQualityWarning`, or None when the match passed.

    ``config`` is what was run, ``requested`` what the user asked for (their
    'auto' options say which remedies are already in use).
    """
    requested = config if requested is None else requested
    worst = quality["heldout_residual_max"]
    if worst <= config.max_residual:
        return None
    remedies = []
    choice = quality.get("basis_choice", {})
    source_fwhm, target_fwhm = choice.get("source_fwhm"), choice.get("target_fwhm")
    if source_fwhm is not None and target_fwhm is not None and target_fwhm <= source_fwhm:
        remedies.append("a broader target (e.g. common_target_psf)")
    if requested.kernel_basis != "auto":
        remedies.append("kernel_basis='auto' (the basis and size from the PSFs)")
        if requested.kernel_basis == "alard-lupton" and not requested.scale_by_fwhm:
            remedies.append("scale_by_fwhm=True")
    elif config.kernel_basis == "alard-lupton":
        remedies.append("kernel_basis='delta-function' (any shape)")
    if requested.kernel_size is not None:
        remedies.append("kernel_size=None (a size that follows the PSF widths) or larger")
    else:
        remedies.append("a larger kernel_size")
    if config.spatial_model in ("chebyshev1", "polynomial"):
        remedies.append("spatial_model='bilinear'")
    elif requested.node_subdivision is not None or requested.node_spacing_min is not None:
        remedies.append("node_subdivision=None and node_spacing_min=None")
    x, y = quality["worst_position"]
    return (f"the match does not reach its target: held-out residual {worst:.3g} of the "
            f"target peak (worst at x={x:.0f}, y={y:.0f}) exceeds max_residual "
            f"{config.max_residual:g}; try " + ", ".join(remedies))
