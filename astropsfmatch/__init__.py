"""astropsfmatch: spatially varying PSF matching of astronomical images.

Brings a ``CCDData``/``NDData`` image to a common target PSF with a spatially
varying Alard-Lupton convolution kernel solved from the two PSF models.

Everything public is imported from here; ``__all__`` below is the one list
of the public API (``docs/api.rst`` documents exactly this set). Users also
import four public modules: `astropsfmatch.config` (`MatchConfig`),
`astropsfmatch.diagnostics` (figures), `astropsfmatch.demo` (synthetic data)
and `astropsfmatch.cli` (the command line). Everything else is private and
laid out by layer, each importing only the layers below it::

    cli, demo, diagnostics                 public modules (the command, data, figures)
    _workflow/   matcher, result, policy,  what users run: one match, its result and
                 provenance, target, many, record, a common target, many exposures,
                 coadd, stars              their coaddition, PSFs from the image's stars
    _adapters/   psf, psfex, nddata, files PSF inputs (and PSFEx files), images in and out,
                                           files on disk
    _engine/     basis, grid, candidates,  the array engine: no astropy.nddata, no
                 spatial, kernel, solve,   photutils, no workflow
                 convolve, weights, moments
    _engine/_numba/                        the numba kernels
    config, _validate, _threads,           shared by all: options, checks, thread
    _optional, _logging, _about            control, optional imports, logger, version

``docs/developer.rst`` says where each kind of change goes.
"""

from ._about import __version__  # noqa: F401 - the version, not in __all__
from ._adapters.psf import realize_psf
from ._adapters.psfex import PSFExPSF
from ._engine.basis import (
    AlardLuptonParameters,
    alard_lupton_sigmas,
    make_alard_lupton_basis,
    make_delta_function_basis,
)
from ._engine.candidates import Candidate, CandidateFit
from ._engine.convolve import ConvolvedImage, convolve_spatially_varying
from ._engine.grid import CellGrid
from ._engine.kernel import SpatialKernel
from ._engine.solve import KernelSolutionError
from ._engine.weights import inverse_variance_weights
from ._logging import log  # noqa: F401 - the package logger, astropy.astropsfmatch
from ._workflow.coadd import coadd, coadd_psf_matched
from ._workflow.many import ManyResult, match_many
from ._workflow.matcher import ModelPsfMatcher, match_psf
from ._workflow.result import MatchQualityWarning, MatchResult
from ._workflow.stars import (
    STAR_FLAGS,
    PSFEstimate,
    StarCheck,
    estimate_psf,
    find_stars,
    star_check,
)
from ._workflow.target import CommonTarget, common_target_psf
from .config import MatchConfig

__all__ = [
    "STAR_FLAGS",
    "AlardLuptonParameters",
    "Candidate",
    "CandidateFit",
    "CellGrid",
    "CommonTarget",
    "ConvolvedImage",
    "KernelSolutionError",
    "ManyResult",
    "MatchConfig",
    "MatchQualityWarning",
    "MatchResult",
    "ModelPsfMatcher",
    "PSFEstimate",
    "PSFExPSF",
    "SpatialKernel",
    "StarCheck",
    "alard_lupton_sigmas",
    "coadd",
    "coadd_psf_matched",
    "common_target_psf",
    "convolve_spatially_varying",
    "estimate_psf",
    "find_stars",
    "inverse_variance_weights",
    "make_alard_lupton_basis",
    "make_delta_function_basis",
    "match_many",
    "match_psf",
    "realize_psf",
    "star_check",
]
