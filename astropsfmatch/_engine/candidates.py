"""Kernel candidates: one per cell, with its PSF stamps and its own kernel fit."""

from dataclasses import dataclass, field

import numpy as np

# the public names of this module, re-exported by astropsfmatch/__init__.py
__all__ = ["Candidate", "CandidateFit"]


@dataclass
class CandidateFit:
    """A per-candidate kernel solution and its residual statistics.

    Residuals are ``model - target`` on the complete-convolution region,
    relative to the target peak.
    """

    coefficients: np.ndarray
    kernel: np.ndarray
    kernel_sum: float
    model: np.ndarray
    residual: np.ndarray
    residual_mean: float
    residual_std: float
    residual_max: float
    condition_number: float


@dataclass
class Candidate:
    """One kernel candidate: a cell centre with the source and target stamps.

    Attributes
    ----------
    index : tuple of int
        Cell index ``(iy, ix)``.
    x, y : float
        Position in image pixels.
    source, target : ndarray
        Unit-flux PSF stamps (the target scaled by the kernel sum).
    fit : CandidateFit or None
        Per-candidate solution, after solving.
    rejected : bool
        True when the candidate was left out of the spatial fit.
    reason : str
        Why it was rejected.
    spatial_residual : ndarray or None
        ``(source ⊛ K(x, y) - target) / peak`` on the complete-convolution
        region, with the spatial kernel ``K(x, y)`` at the candidate: what
        the matched image gets there.
    spatial_residual_max : float
        Max of ``abs(spatial_residual)``.
    """

    index: tuple
    x: float
    y: float
    source: np.ndarray
    target: np.ndarray
    fit: CandidateFit = None
    rejected: bool = False
    reason: str = ""
    spatial_residual: np.ndarray = None
    spatial_residual_max: float = field(default=np.nan)
