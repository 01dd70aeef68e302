"""Configuration of the PSF matching: `MatchConfig`, a validated dataclass."""

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

from astropy.utils.exceptions import AstropyDeprecationWarning

from ._validate import (
    check_bool,
    choice,
    fail,
    integer,
    integer_tuple,
    is_int,
    is_vector,
    optional,
    real,
    real_tuple,
    subset,
)

__all__ = ["MatchConfig"]


def _cell_size(name, value):
    allowed = "an integer >= 32 or a pair (ny, nx) of integers >= 32"
    if is_int(value):
        items = [value, value]
    elif is_vector(value):
        items = list(value)
    else:
        fail(name, value, allowed, wrong_type=True)
    if len(items) != 2 or not all(is_int(item) and item >= 32 for item in items):
        fail(name, value, allowed)
    return (int(items[0]), int(items[1]))


def _option(default, check):
    return field(default=default, metadata={"check": check})


#: The kernel bases a match can use (``_engine/basis.py`` builds each of them).
KERNEL_BASES = ("alard-lupton", "delta-function")

#: The spatial models of the kernel (``_engine/spatial.py`` holds their functions).
SPATIAL_MODELS = ("bilinear", "chebyshev1", "polynomial")

#: The largest condition number at which a double-precision solve keeps three
#: significant digits: what ``max_condition_number=None`` (and the spatial one) mean.
PRECISION_CONDITION_NUMBER = 1.0 / (1e3 * 2.220446049250313e-16)

#: The reference pipeline's limits, tuned for its fits to noisy science images in counts.
REFERENCE_MAX_CONDITION_NUMBER = {"alard-lupton": 5e7, "delta-function": 5e6}


@dataclass(frozen=True, kw_only=True)
class MatchConfig:
    """Options of the PSF matching, with the reference defaults.

    A frozen, keyword-only dataclass. Every value is checked when the object is
    created: an invalid value raises `ValueError` naming the option, the value
    and what is allowed. Sequences are stored as tuples and an integer
    ``cell_size`` as a square ``(n, n)``. Use `replace` to derive a changed
    (and again validated) configuration, and `to_dict` / `from_dict` to store it
    (metadata, JSON or YAML configuration files).

    Parameters
    ----------
    kernel_basis : {'auto', 'alard-lupton', 'delta-function'}, optional
        Kernel basis. Default ``'auto'``: chosen from the two PSFs (see
        :ref:`the algorithm page <defaults>`): the delta-function basis with a
        ridge (noise) regularization for a constant PSF when it reaches the
        target closer than the FWHM-scaled Alard-Lupton basis, which is used
        otherwise and for spatially varying PSFs. ``'alard-lupton'``:
        Gaussians times polynomials (Alard & Lupton 1998), with the reference
        meaning of every ``alard_*`` option and of ``scale_by_fwhm``.
        ``'delta-function'``: one basis image per kernel pixel, which needs
        regularization (``use_regularization``). The result's ``config``
        holds the basis that was chosen.
    kernel_size : int or None, optional
        Side of the square kernel in pixels, odd and >= 3, or None (default)
        to derive it from the PSF widths. Ignored when ``scale_by_fwhm`` is
        True with the Alard-Lupton basis (the reference rule sets it).
    scale_by_fwhm : bool, optional
        Derive the Alard-Lupton sigmas and the kernel size from the source and
        target PSF widths. Default False (model matching uses the fixed basis).
    kernel_size_fwhm_scaling : float, optional
        With ``scale_by_fwhm``, the kernel size is this factor (> 0) times the
        largest basis sigma. Default 6.0.
    kernel_size_min : int, optional
        Smallest FWHM-scaled kernel size, odd >= 3. Default 21.
    kernel_size_max : int or None, optional
        Largest FWHM-scaled kernel size, odd >= ``kernel_size_min``, or None
        (default) to let it follow the widths. The reference's 35 cannot
        hold the kernel of a large FWHM jump (3 -> 15 pixels needs 75 pixels:
        8e-3 of the peak with 35, 4e-7 with a size that follows the widths).
    alard_sigmas : sequence of float, optional
        Widths (pixels) of the Alard-Lupton Gaussians, all different and
        >= 0.25 (a narrower Gaussian sampled on pixels is a delta function,
        whose polynomial multiples vanish). Default ``(0.7, 1.5, 3.0)``.
    alard_degrees : sequence of int, optional
        Polynomial degree (>= 0) multiplying each Gaussian, one per sigma.
        Default ``(4, 2, 2)``, i.e. 15 + 6 + 6 = 27 basis functions.
    alard_min_sigma : float, optional
        With ``scale_by_fwhm``, smallest sigma (> 0) of the convolution basis.
        Default 0.7.
    alard_min_sigma_deconv : float, optional
        With ``scale_by_fwhm``, smallest sigma (> 0) when the target is
        narrower than the source (deconvolution). Default 0.4.
    alard_degree_deconv : int or None, optional
        Deprecated and unused, as in the reference pipeline since 2025: the
        deconvolution basis uses ``alard_degrees`` like the convolution one.
        Default None; another value warns (`AstropyDeprecationWarning`).
    alard_gauss_beta : float, optional
        Ratio (> 1) between successive sigmas of the FWHM-scaled basis.
        Default 2.0.
    spatial_model : {'auto', 'bilinear', 'chebyshev1', 'polynomial'}, optional
        How the kernel varies over the image. ``'bilinear'``: kernels solved
        at nodes, interpolated bilinearly between them; for a
        `~photutils.psf.GriddedPSFModel` the nodes lie on the model's own node
        lines, subdivided (``node_subdivision``) until the residual at
        held-out positions stops improving; a constant PSF has one node.
        ``'chebyshev1'`` or ``'polynomial'``: the reference's global
        polynomial in coordinates normalized to [-1, 1] (Chebyshev of the
        first kind or monomials) of total order ``spatial_order``, fitted to
        one candidate per cell. Default ``'auto'``: ``'bilinear'``.
    spatial_order : int, optional
        Total order (>= 0) of the polynomial spatial models; order 2 gives 6
        terms. Default 2.
    node_subdivision : int or None, optional
        With ``'bilinear'``: intervals (>= 1) each interval between the PSF
        model's node lines is split into; None (default) doubles it from 1
        until the held-out residual improves by less than 25% (then the
        coarser level is kept) or is predicted to (a halving gained less
        than 2x), falls below ``max_residual / 100``, or the node spacing
        would fall below ``node_spacing_min``.
    node_spacing_min : float or None, optional
        Smallest node spacing (pixels, > 0) of the automatic subdivision;
        None (default): half the kernel size, at least 16 pixels.
    cell_size : int or (int, int), optional
        Cell size ``(ny, nx)`` of the polynomial spatial models in pixels like
        an array shape, each >= 32; an integer means a square cell. One kernel
        candidate per cell. Default ``(128, 128)``.
    grow_cells : int, optional
        Cells (>= 0) added on every side of the image before the grid is
        laid. Default 0. The reference pipeline grows by one cell, which
        places candidates outside the image; PSF models that hold the edge
        PSF constant there (``GriddedPSFModel``) then bend the spatial fit
        inside the image (measured: max residual 4.9e-3 of the peak with 1,
        3.6e-4 with 0, for a width varying 20% across a 1024-pixel field).
        Set 1 to reproduce the reference grid.
    auto_pad_psf : bool, optional
        Pad the PSF stamps to at least ``auto_pad_psf_to`` times the kernel size.
        Default True.
    auto_pad_psf_to : float, optional
        Stamp size as a multiple of the kernel size with ``auto_pad_psf``, in
        [1, 2]. Default 1.4 (31-pixel stamps for a 21-pixel kernel).
    pad_psf_by : int, optional
        Pixels (even, >= 0) added to the stamp size when ``auto_pad_psf`` is
        False. Default 0.
    psf_size : int or None, optional
        Stamp size (odd, >= 3) at which analytic PSF models are realized;
        None lets the model decide. Default None.
    stamp_size : int or None, optional
        Side (odd, >= 3) of the PSF stamps the kernel is fitted on. None
        (default): with the ``'auto'`` basis at least ``3 * kernel_size - 2``
        pixels, so that the fit constrains a region twice the kernel's side
        (the reference's ``auto_pad_psf_to=1.4`` leaves an 11 x 11 region for
        a 21-pixel kernel); with an explicit basis the reference's padding
        options (``auto_pad_psf``, ``auto_pad_psf_to``, ``pad_psf_by``).
    use_pca_for_spatial_kernel : bool, optional
        Fit the spatial kernel on principal components of the per-candidate
        kernels. Default False.
    num_principal_components : int, optional
        Number (>= 1) of basis kernels kept from the principal component
        analysis, the mean kernel included when ``subtract_mean_for_pca``
        (as in the reference: 5 means the mean and 4 components). Default 5.
    subtract_mean_for_pca : bool, optional
        Subtract the mean kernel before the principal component analysis.
        Default True.
    use_regularization : bool, optional
        Regularize the fit; used by the delta-function basis only. Default True.
    regularization_type : {'central-difference', 'forward-difference', 'ridge'}, optional
        Regularization operator. Default ``'central-difference'``. ``'ridge'``
        penalizes the sum of the squared kernel pixels, i.e. the noise the
        kernel adds (what the ``'auto'`` basis uses).
    central_regularization_stencil : {5, 9}, optional
        Points of the central-difference Laplacian stencil. Default 9.
    forward_regularization_orders : sequence of int, optional
        Non-empty set of forward-difference orders from {1, 2, 3} (the
        reference's), stored sorted. Default ``(1, 2)``.
    regularization_border_penalty : float, optional
        Extra penalty (>= 0) on kernel pixels at the border. Default 3.0.
    lambda_type : {'absolute', 'relative', 'adaptive'}, optional
        ``'absolute'``: the regularization strength is ``lambda_value``;
        ``'relative'``: ``lambda_scaling * tr(M) / tr(H)``; ``'adaptive'``:
        the largest relative strength from 1e-10 to 1e-5 whose residual is
        within 25% of the smallest (least noise for the same match). Default
        ``'relative'``: PSF stamps have unit flux, so a fixed strength (the
        reference default is absolute 0.2, tuned for image pixels) would
        dominate the fit; the relative one scales with the data.
    lambda_value : float, optional
        Absolute regularization strength (>= 0). Default 0.2.
    lambda_scaling : float, optional
        Relative regularization strength (> 0). Default 1e-4.
    check_condition_number : bool, optional
        Reject candidates whose normal matrix has a condition number above
        ``max_condition_number``, and fail when the spatial one exceeds
        ``max_spatial_condition_number``. Default False.
    max_condition_number : float or None, optional
        Largest accepted per-candidate (per-node) condition number (> 0).
        None (default) means the largest at which the double-precision solve
        keeps three significant digits, ``1 / (1e3 eps)`` = 4.5e12 (see
        `effective_max_condition_number`): the normal matrices of PSF stamps
        are ill-conditioned by nature (an Alard-Lupton basis convolved with a
        PSF has nearly degenerate functions: 1e8 to 1e12 here), and what
        matters is whether the solution keeps its digits; the held-out
        verdict measures the rest. The reference pipeline's 5e7
        (Alard-Lupton) and 5e6 (delta functions), tuned for its fits to
        science images, are reachable by setting them.
    condition_number_type : {'eigenvalue', 'svd'}, optional
        How condition numbers are computed. Default ``'eigenvalue'``.
    max_spatial_condition_number : float or None, optional
        Largest condition number (> 0) of the spatial normal matrix (of the
        polynomial models; the bilinear model has one system per node, checked
        with ``max_condition_number``); with ``check_condition_number`` a
        larger one raises `~astropsfmatch.KernelSolutionError`. None
        (default): 4.5e12, as for ``max_condition_number`` (the reference's
        value is 1e10).
    constant_variance_weighting : bool, optional
        Weight all stamp pixels equally in the fit (PSF stamps carry no
        variance). Default True.
    max_residual : float, optional
        Largest accepted residual ``|source ⊛ K - target|`` at held-out
        positions, as a fraction (> 0) of the target peak. A match above it
        emits `~astropsfmatch.MatchQualityWarning` (the command line exits
        with status 3 and writes nothing). Default 1e-2.
    heldout_positions : int, optional
        At most this many (>= 1) held-out positions, where the kernel was not
        fitted, at which the quality is measured (at least 4 per fitted
        position are used up to this cap). Default 1024.
    variance_tolerance : float, optional
        Largest relative error (>= 0) of the propagated variance, where the
        input variance is uniform under the kernel, with the bilinear spatial
        model: cells of the node grid where the interpolated squared kernel
        is that accurate use it (as cheap as the data; it over-estimates the
        variance, never under-), the others the exact square. Default 1e-4;
        0 propagates the variance exactly everywhere. See
        `~astropsfmatch.convolve_spatially_varying`.

    Raises
    ------
    ValueError
        If an option has a value of the wrong type or outside its allowed range,
        or if options disagree (``alard_sigmas`` and ``alard_degrees`` of
        different lengths, ``kernel_size_min > kernel_size_max``).

    Examples
    --------
    >>> from astropsfmatch import MatchConfig
    >>> MatchConfig().kernel_basis, MatchConfig().kernel_size, MatchConfig().spatial_model
    ('auto', None, 'auto')
    >>> config = MatchConfig(kernel_size=25, cell_size=200)
    >>> config.kernel_size, config.cell_size
    (25, (200, 200))
    >>> config.alard_sigmas, config.alard_degrees
    ((0.7, 1.5, 3.0), (4, 2, 2))
    >>> f"{config.effective_max_condition_number:.3g}"   # three digits kept in the solve
    '4.5e+12'
    >>> config.replace(spatial_order=1).spatial_order
    1
    >>> MatchConfig.from_dict(config.to_dict()) == config
    True
    >>> MatchConfig(kernel_size=20)
    Traceback (most recent call last):
        ...
    ValueError: kernel_size must be None or an odd integer >= 3, got 20
    """

    kernel_basis: str = _option("auto", choice("auto", *KERNEL_BASES))
    kernel_size: int | None = _option(None, optional(integer(3, odd=True)))
    scale_by_fwhm: bool = _option(False, check_bool)
    kernel_size_fwhm_scaling: float = _option(6.0, real(gt=0))
    kernel_size_min: int = _option(21, integer(3, odd=True))
    kernel_size_max: int | None = _option(None, optional(integer(3, odd=True)))
    alard_sigmas: tuple[float, ...] = _option((0.7, 1.5, 3.0),
                                              real_tuple(gt=0, ge_each=0.25, distinct=True))
    alard_degrees: tuple[int, ...] = _option((4, 2, 2), integer_tuple(0))
    alard_min_sigma: float = _option(0.7, real(gt=0))
    alard_min_sigma_deconv: float = _option(0.4, real(gt=0))
    alard_degree_deconv: int | None = _option(None, optional(integer(0)))
    alard_gauss_beta: float = _option(2.0, real(gt=1))
    spatial_model: str = _option("auto", choice("auto", *SPATIAL_MODELS))
    spatial_order: int = _option(2, integer(0))
    node_subdivision: int | None = _option(None, optional(integer(1)))
    node_spacing_min: float | None = _option(None, optional(real(gt=0)))
    cell_size: tuple[int, int] = _option((128, 128), _cell_size)
    grow_cells: int = _option(0, integer(0))
    auto_pad_psf: bool = _option(True, check_bool)
    auto_pad_psf_to: float = _option(1.4, real(ge=1, le=2))
    pad_psf_by: int = _option(0, integer(0, even=True))
    psf_size: int | None = _option(None, optional(integer(3, odd=True)))
    stamp_size: int | None = _option(None, optional(integer(3, odd=True)))
    use_pca_for_spatial_kernel: bool = _option(False, check_bool)
    num_principal_components: int = _option(5, integer(1))
    subtract_mean_for_pca: bool = _option(True, check_bool)
    use_regularization: bool = _option(True, check_bool)
    regularization_type: str = _option(
        "central-difference", choice("central-difference", "forward-difference", "ridge")
    )
    central_regularization_stencil: int = _option(9, choice(5, 9))
    forward_regularization_orders: tuple[int, ...] = _option((1, 2), subset(1, 2, 3))
    regularization_border_penalty: float = _option(3.0, real(ge=0))
    lambda_type: str = _option("relative", choice("absolute", "relative", "adaptive"))
    lambda_value: float = _option(0.2, real(ge=0))
    lambda_scaling: float = _option(1e-4, real(gt=0))
    check_condition_number: bool = _option(False, check_bool)
    max_condition_number: float | None = _option(None, optional(real(gt=0)))
    condition_number_type: str = _option("eigenvalue", choice("eigenvalue", "svd"))
    max_spatial_condition_number: float | None = _option(None, optional(real(gt=0)))
    constant_variance_weighting: bool = _option(True, check_bool)
    max_residual: float = _option(1e-2, real(gt=0))
    heldout_positions: int = _option(1024, integer(1))
    variance_tolerance: float = _option(1e-4, real(ge=0))

    def __post_init__(self):
        # The one place where options are validated and normalized.
        for option in dataclasses.fields(self):
            value = option.metadata["check"](option.name, getattr(self, option.name))
            object.__setattr__(self, option.name, value)

        if len(self.alard_sigmas) != len(self.alard_degrees):
            msg = (
                "alard_sigmas and alard_degrees must have the same length, got "
                f"alard_sigmas={self.alard_sigmas!r} ({len(self.alard_sigmas)} values) and "
                f"alard_degrees={self.alard_degrees!r} ({len(self.alard_degrees)} values)"
            )
            raise ValueError(msg)
        if self.alard_degree_deconv is not None:
            warnings.warn("alard_degree_deconv is deprecated and has no effect: the "
                          "deconvolution basis uses alard_degrees, as in the reference "
                          "pipeline", AstropyDeprecationWarning, stacklevel=3)
        if self.kernel_size_max is not None and self.kernel_size_min > self.kernel_size_max:
            msg = (
                "kernel_size_min must be <= kernel_size_max, got "
                f"kernel_size_min={self.kernel_size_min} and "
                f"kernel_size_max={self.kernel_size_max}"
            )
            raise ValueError(msg)

    @property
    def effective_max_condition_number(self):
        """float: ``max_condition_number``, or 4.5e12 (three digits kept) if None."""
        if self.max_condition_number is not None:
            return self.max_condition_number
        return PRECISION_CONDITION_NUMBER

    @property
    def effective_max_spatial_condition_number(self):
        """float: ``max_spatial_condition_number``, or 4.5e12 (three digits kept) if None."""
        if self.max_spatial_condition_number is not None:
            return self.max_spatial_condition_number
        return PRECISION_CONDITION_NUMBER

    def to_dict(self):
        """Return the options as a plain, JSON-serializable dictionary.

        Tuples become lists; the keys are the field names in definition order.

        Returns
        -------
        dict
            One entry per option.

        Examples
        --------
        >>> from astropsfmatch import MatchConfig
        >>> options = MatchConfig().to_dict()
        >>> options["kernel_size"], options["cell_size"]
        (None, [128, 128])
        """
        return {
            option.name: _to_plain(getattr(self, option.name))
            for option in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls, options):
        """Create a configuration from a dictionary such as `to_dict` returns.

        Missing options take their defaults.

        Parameters
        ----------
        options : dict
            Option names and values.

        Returns
        -------
        MatchConfig
            The validated configuration.

        Raises
        ------
        ValueError
            If ``options`` is not a mapping, has an unknown key, or has an
            invalid value.

        Examples
        --------
        >>> from astropsfmatch import MatchConfig
        >>> MatchConfig.from_dict({"cell_size": [64, 96]}).cell_size
        (64, 96)
        """
        if not isinstance(options, Mapping):
            msg = f"options must be a mapping of option names to values, got {options!r}"
            raise ValueError(msg)
        _check_names(options)
        return cls(**options)

    def replace(self, **changes):
        """Return a new configuration with some options changed (and validated).

        Parameters
        ----------
        **changes
            Option names and their new values.

        Returns
        -------
        MatchConfig
            The new configuration; this one is unchanged.

        Raises
        ------
        ValueError
            If an option name is unknown or a new value is invalid.

        Examples
        --------
        >>> from astropsfmatch import MatchConfig
        >>> MatchConfig().replace(max_condition_number=5e7).effective_max_condition_number
        50000000.0
        """
        _check_names(changes)
        return dataclasses.replace(self, **changes)


def _check_names(options):
    names = [option.name for option in dataclasses.fields(MatchConfig)]
    unknown = [key for key in options if key not in names]
    if unknown:
        msg = (
            f"unknown MatchConfig option(s) {', '.join(map(repr, unknown))}; "
            f"allowed options are {', '.join(names)}"
        )
        raise ValueError(msg)


def _to_plain(value):
    if isinstance(value, tuple):
        return [_to_plain(item) for item in value]
    return value
