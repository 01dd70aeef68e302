"""astropsfmatch: spatially varying PSF matching of astronomical images.

Brings a ``CCDData``/``NDData`` image to a common target PSF with a spatially
varying Alard-Lupton convolution kernel solved from the two PSF models.
"""

try:
    from ._version import version as __version__
except ImportError:  # pragma: no cover - only in a source tree without a build
    __version__ = "0.0.0.dev"

from ._logging import log  # noqa: F401
from .basis import (  # noqa: F401
    AlardLuptonParameters,
    alard_lupton_sigmas,
    make_alard_lupton_basis,
    make_delta_function_basis,
)
from .cells import Candidate, CandidateFit, CellGrid  # noqa: F401
from .coaddition import coadd  # noqa: F401
from .config import MatchConfig  # noqa: F401
from .convolve import ConvolvedImage, convolve_spatially_varying  # noqa: F401
from .kernel import SpatialKernel  # noqa: F401
from .matcher import MatchResult, ModelPsfMatcher, match_psf  # noqa: F401
from .nddata import inverse_variance_weights  # noqa: F401
from .parallel import ManyResult, match_many  # noqa: F401
from .psf import realize_psf  # noqa: F401
from .solve import KernelSolutionError  # noqa: F401
from .target import CommonTarget, common_target_psf  # noqa: F401

__all__ = [
    "AlardLuptonParameters",
    "Candidate",
    "CandidateFit",
    "CellGrid",
    "CommonTarget",
    "ConvolvedImage",
    "KernelSolutionError",
    "ManyResult",
    "MatchConfig",
    "MatchResult",
    "ModelPsfMatcher",
    "SpatialKernel",
    "alard_lupton_sigmas",
    "coadd",
    "common_target_psf",
    "convolve_spatially_varying",
    "make_alard_lupton_basis",
    "make_delta_function_basis",
    "inverse_variance_weights",
    "match_many",
    "match_psf",
    "realize_psf",
]
