"""The choices a match makes from its inputs: spatial order, basis, PSF stamp size.

Each function takes the configuration and what is known of the two PSFs and
returns the configuration as it will be run, or a size; the matcher calls
them in order. Warnings name what was changed and why.
"""

import warnings

import numpy as np
from astropy.utils.exceptions import AstropyUserWarning

from .._engine.basis import alard_lupton_sigmas, build_basis
from .._engine.grid import psf_stamp_size
from .._engine.moments import GAUSSIAN_SIGMA_TO_FWHM, deconvolution_depth, half_max_fwhm
from .._engine.quality import heldout_positions
from .._engine.solve import KernelSolutionError, LinearStamps, solve_node_kernels
from .._logging import log

__all__ = []  # internal to the package: nothing here is public

#: Largest PSF stamp used in the fit, in kernel sizes (plus one pixel).
MAX_STAMP_PER_KERNEL = 4

#: Second-moment deficit (px²) of the target below which no deconvolution is reported.
_DECONVOLUTION_TOLERANCE = 0.05

#: Kernel size of an explicit Alard-Lupton basis without a size (the reference's).
_REFERENCE_KERNEL_SIZE = 21

#: A finer node grid is kept only if it lowers the held-out residual below this
#: fraction of the coarser one's (bilinear errors fall as the square of the spacing,
#: so a real gain is a factor ~4 per halving).
REFINE_IMPROVEMENT = 0.75

#: ... and no finer level is tried once a halving gained less than this factor: with
#: a residual ``floor + c h**2`` the next halving would then gain less than 25%.
REFINE_PREDICTED = 0.5

#: ... and none once the held-out residual is below this fraction of ``max_residual``.
REFINE_GOOD_ENOUGH = 0.01

#: Held-out positions on which the refinement levels are compared (the first ones
#: of the verdict's held-out set).
REFINE_POSITIONS = 256

#: Node subdivisions tried by the automatic refinement.
_FACTORS = (1, 2, 4, 8, 16, 32)

#: The held-out stamps of one match hold at most this many pixels (memory bound).
_HELDOUT_PIXELS = 8_000_000

#: Largest stamps of the held-out verdict.
_MAX_QUALITY_STAMP = 511

#: Fewest held-out positions, and how many per fitted position.
_MIN_HELDOUT = 64
_HELDOUT_PER_FIT = 4

#: Image extent beyond a GriddedPSFModel's grid (in grid spacings) that is reported.
_GRID_COVERAGE_TOLERANCE = 0.5


def fit_order_to_grid(config, grid, *, stacklevel=4):
    """The configuration with the spatial order lowered when the grid cannot determine it.

    A 2-D polynomial of order p needs at least p + 1 distinct candidate
    positions along each axis; with fewer, the spatial normal matrix is
    singular and the kernel between candidates is arbitrary.
    """
    possible = min(grid.n_cells) - 1
    if config.spatial_order <= possible:
        return config
    msg = (f"spatial_order {config.spatial_order} needs at least {config.spatial_order + 1} "
           f"cells along each axis but the grid has {grid.n_cells} cells of "
           f"{grid.cell_size} pixels; using spatial_order {possible} (use a smaller cell_size "
           "to keep the order)")
    warnings.warn(msg, AstropyUserWarning, stacklevel=stacklevel)
    return config.replace(spatial_order=possible)


def choose_basis(config, source, target, grid, *, shape=None):
    """The kernel basis of a resolved configuration (`~astropsfmatch._engine.basis.build_basis`).

    With ``scale_by_fwhm`` the widths are those of the two PSFs at the image
    centre, measured at half maximum (second moments overestimate winged
    PSFs: a Moffat of FWHM 3 has a moment FWHM of 5.8).
    """
    if config.kernel_basis == "alard-lupton" and config.scale_by_fwhm:
        source_fwhm, target_fwhm = centre_widths(source, target,
                                                 grid.shape if shape is None else shape)
        return build_basis(config, source_fwhm=source_fwhm, target_fwhm=target_fwhm)
    if config.kernel_size is None:  # an explicit basis with an automatic size
        source_fwhm, target_fwhm = centre_widths(source, target,
                                                 grid.shape if shape is None else shape)
        size = (delta_kernel_size(source_fwhm, target_fwhm)
                if config.kernel_basis == "delta-function" else _REFERENCE_KERNEL_SIZE)
        return build_basis(config.replace(kernel_size=size))
    return build_basis(config)


def stamp_size(source, x, y, kernel_size, config, *, auto=False):
    """Side of the PSF stamps: the source PSF's natural size, padded and capped.

    Heavy-winged analytic PSFs (Airy, low-beta Moffat) hold 99.9% of their
    flux only on stamps of hundreds of pixels; the fit needs far less, so
    stamps are capped at ``MAX_STAMP_PER_KERNEL * kernel_size + 1``. With
    the 'auto' basis (``auto=True``) the stamps are `auto_stamp_size`; with an
    explicit basis they follow the reference's padding options.
    """
    native = source.native_size(x, y)
    if config.stamp_size is not None:
        return psf_stamp_size(config.stamp_size, kernel_size, auto_pad_psf=False)
    if auto:
        return auto_stamp_size(kernel_size, native)
    largest = MAX_STAMP_PER_KERNEL * kernel_size + 1
    if native > largest:
        log.debug(f"source PSF stamps of {native} px capped at {largest} px")
        native = largest
    return psf_stamp_size(native, kernel_size, auto_pad_psf=config.auto_pad_psf,
                          auto_pad_psf_to=config.auto_pad_psf_to, pad_psf_by=config.pad_psf_by)


#: Most stamps whose widths `warn_if_deconvolving` compares.
_DECONVOLUTION_CHECKS = 64


def warn_if_deconvolving(sources, targets, *, stacklevel=4):
    """Warn when the target PSF is narrower than the source PSF somewhere.

    Matching to a narrower PSF is a deconvolution: the kernel oscillates and
    the noise is amplified. Widths are compared through second moments of the
    realized stamps, along every direction (elliptical PSFs included); a
    tolerance of 0.05 px² absorbs pixelization. At most
    `_DECONVOLUTION_CHECKS` stamps spread over the grid are measured (the PSF
    models vary smoothly between them; adaptive moments cost ~10 ms a stamp).
    """
    n = len(sources)
    if n > _DECONVOLUTION_CHECKS:
        pick = np.unique(np.linspace(0, n - 1, _DECONVOLUTION_CHECKS).round().astype(int))
        sources, targets = sources[pick], targets[pick]
    depth = deconvolution_depth(sources, targets)
    bad = depth > _DECONVOLUTION_TOLERANCE
    if bad.any():
        checked = f"{len(bad)}" if len(bad) == n else f"{len(bad)} checked (of {n})"
        msg = (f"target_psf is narrower than the source PSF at {int(bad.sum())} of "
               f"{checked} cells (second-moment variance smaller by up to "
               f"{depth.max():.3g} px² along some direction): matching there is a "
               "deconvolution, which amplifies noise and leaves residuals; use a broader "
               "target, e.g. from common_target_psf")
        warnings.warn(msg, AstropyUserWarning, stacklevel=stacklevel)


# --------------------------------------------------------------------------- the 'auto' basis

#: The delta-function basis is tried for constant PSFs up to this kernel size
#: (961 unknowns: one solve per strength of the adaptive regularization).
MAX_DELTA_KERNEL_SIZE = 31

#: A varying PSF tries the delta-function basis when the Alard-Lupton one leaves more
#: than this fraction of ``max_residual`` at the image centre ...
_DELTA_TRIGGER = 0.1

#: ... and takes it when it is this much closer to the target (one kernel per node of
#: 441 functions instead of 27 costs time).
_DELTA_GAIN = 2.0

#: The delta-function basis on a varying PSF is solved at nodes no closer than this many
#: kernel sizes (a node costs one solve of K**2 unknowns).
_DELTA_NODE_SPACING = 2

#: Smallest automatic kernel size of the delta-function basis.
_MIN_DELTA_KERNEL_SIZE = 11


def auto_stamp_size(kernel_size, native):
    """Stamps of the 'auto' basis: a fit region twice the kernel's side, at least.

    ``3 K - 2`` pixels leave ``2 K - 1`` complete-convolution pixels on a side
    (41 x 41 for K = 21, where the reference's 31-pixel stamps leave 11 x 11),
    or the PSF's own extent when larger, up to ``MAX_STAMP_PER_KERNEL K + 1``.
    """
    size = max(3 * kernel_size - 2, min(native, MAX_STAMP_PER_KERNEL * kernel_size + 1))
    return size + 1 - size % 2


def centre_widths(source, target, shape):
    """Half-maximum FWHMs (pixels) of the source PSF at the image centre and of the target."""
    cx = np.array([(shape[1] - 1) / 2.0])
    cy = np.array([(shape[0] - 1) / 2.0])
    size = max(source.native_size(cx, cy), target.native_size(cx, cy), 31)
    size = min(size, 255) | 1
    return (float(half_max_fwhm(source.stamps(cx, cy, size))[0]),
            float(half_max_fwhm(target.stamps(cx, cy, size))[0]))


def identical_psfs(source, target, shape):
    """True when the source and target PSFs are the same everywhere (to 1e-12 of the peak)."""
    if not (source.constant and target.constant) and source.model is not target.model:
        return False
    cx = np.array([(shape[1] - 1) / 2.0])
    cy = np.array([(shape[0] - 1) / 2.0])
    size = min(max(source.native_size(cx, cy), target.native_size(cx, cy)), 255) | 1
    a, b = source.stamps(cx, cy, size), target.stamps(cx, cy, size)
    return bool(np.abs(a - b).max() <= 1e-12 * np.abs(a).max())


def delta_kernel_size(source_fwhm, target_fwhm):
    """Automatic kernel size of the delta-function basis, from the two widths."""
    sigma = np.sqrt(max(target_fwhm**2 - source_fwhm**2, 0.0)) / GAUSSIAN_SIGMA_TO_FWHM
    half = int(np.ceil(max(5.0 * sigma, 1.5 * target_fwhm)))
    return max(2 * half + 1, _MIN_DELTA_KERNEL_SIZE)


def _alard_lupton_config(config, source_fwhm, target_fwhm):
    """The resolved configuration of the FWHM-scaled Alard-Lupton basis (reference rule)."""
    params = alard_lupton_sigmas(
        source_fwhm, target_fwhm, sigmas=config.alard_sigmas, degrees=config.alard_degrees,
        min_sigma=config.alard_min_sigma, min_sigma_deconv=config.alard_min_sigma_deconv,
        gauss_beta=config.alard_gauss_beta, fwhm_scaling=config.kernel_size_fwhm_scaling,
        kernel_size_min=config.kernel_size_min, kernel_size_max=config.kernel_size_max)
    size = params.kernel_size if config.kernel_size is None else config.kernel_size
    return config.replace(kernel_basis="alard-lupton", scale_by_fwhm=False, kernel_size=size,
                          alard_sigmas=params.sigmas, alard_degrees=params.degrees)


def _delta_config(config, size):
    return config.replace(kernel_basis="delta-function", kernel_size=size,
                          use_regularization=True, regularization_type="ridge",
                          lambda_type="adaptive", regularization_border_penalty=0.0,
                          use_pca_for_spatial_kernel=False)


def centre_fit(config, source, target, shape):
    """A one-node fit of ``config``'s basis at the image centre.

    Returns ``(basis, sources, targets, solution)``; its largest residual is
    ``solution.spatial_residual_max[0]``. For a constant PSF this is the
    final kernel, which the matcher reuses.
    """
    basis = build_basis(config)
    cx = np.array([(shape[1] - 1) / 2.0])
    cy = np.array([(shape[0] - 1) / 2.0])
    size = auto_stamp_size(basis.size, source.native_size(cx, cy))
    sources, targets = source.stamps(cx, cy, size), target.stamps(cx, cy, size)
    solution = solve_node_kernels(sources, targets, basis=basis, config=config,
                                  nodes=(cx, cy))
    return basis, sources, targets, solution


def resolve_basis(config, source, target, shape):
    """The configuration that will be run, with the basis of ``kernel_basis='auto'`` chosen.

    Returns ``(config, choice)``: ``choice`` says what was compared. The
    explicit bases keep the reference meaning of every option and are
    returned unchanged.

    'auto': the widths are measured at half maximum (not by second moments,
    which overestimate winged PSFs: a Moffat of FWHM 3 has a moment FWHM of
    5.8). The FWHM-scaled Alard-Lupton basis (the reference's rule, with a
    kernel size that follows the widths) serves spatially varying PSFs. For
    a constant PSF, whose single kernel is cheap to solve, the delta-function
    basis with the adaptive ridge (noise) regularization is fitted too, at
    the image centre, and kept when it matches the target more closely: it
    follows any shape (Airy, comatic, Kolmogorov), where Gaussians times
    polynomials cannot.
    """
    if config.kernel_basis != "auto":
        return config, {}
    source_fwhm, target_fwhm = centre_widths(source, target, shape)
    choice = {"source_fwhm": source_fwhm, "target_fwhm": target_fwhm}
    if identical_psfs(source, target, shape):
        # nothing to match: the identity kernel, exactly (a fit would blur it slightly)
        choice["chosen"] = "identity"
        return config.replace(kernel_basis="delta-function", kernel_size=3,
                              use_regularization=False, use_pca_for_spatial_kernel=False), choice
    al_config = _alard_lupton_config(config, source_fwhm, target_fwhm)
    size = config.kernel_size or delta_kernel_size(source_fwhm, target_fwhm)
    if size > MAX_DELTA_KERNEL_SIZE or size > min(shape) // 3:
        choice["chosen"] = "alard-lupton"
        return al_config, choice
    fits = {"alard-lupton": (al_config, centre_fit(al_config, source, target, shape))}
    choice["alard-lupton residual"] = float(fits["alard-lupton"][1][3].spatial_residual_max[0])
    if not source.constant and choice["alard-lupton residual"] <= (
            _DELTA_TRIGGER * config.max_residual):
        # a varying PSF that Gaussians times polynomials follow: they are far cheaper at
        # many nodes than one function per kernel pixel
        choice["chosen"] = "alard-lupton"
        return al_config, choice
    delta_config = _delta_config(config, size)
    fits["delta-function"] = (delta_config, centre_fit(delta_config, source, target, shape))
    choice["delta-function residual"] = float(
        fits["delta-function"][1][3].spatial_residual_max[0])
    better = 1.0 if source.constant else _DELTA_GAIN
    chosen = ("delta-function" if choice["delta-function residual"]
              < choice["alard-lupton residual"] / better else "alard-lupton")
    choice["chosen"] = chosen
    chosen_config, fit = fits[chosen]
    if source.constant:
        choice["fit"] = fit  # the constant PSF's kernel: the matcher reuses it
    elif chosen == "delta-function":
        # every node takes the strength the centre chose: one solve per node
        relative = fit[3].info["relative_lambda"]
        chosen_config = chosen_config.replace(lambda_type="relative",
                                              lambda_scaling=max(relative, 1e-10))
    return chosen_config, choice


# --------------------------------------------------------------------------- spatial model


def spatial_model(config):
    """The spatial model a configuration runs: 'auto' is 'bilinear'."""
    return "bilinear" if config.spatial_model == "auto" else config.spatial_model


def node_spacing_floor(config, kernel_size):
    """Smallest node spacing of the automatic refinement (pixels).

    Half a kernel (16 pixels at least) for the Alard-Lupton basis; two kernel
    sizes (32 at least) for the delta-function basis, whose node solves are
    ~100 times dearer.
    """
    if config.node_spacing_min is not None:
        return float(config.node_spacing_min)
    if config.kernel_basis == "delta-function":
        return float(max(_DELTA_NODE_SPACING * kernel_size, 32))
    return float(max(kernel_size // 2, 16))


def subdivide(lines, factor):
    """Node lines with every interval between ``lines`` split into ``factor`` equal parts."""
    if lines.size == 1 or factor == 1:
        return np.asarray(lines, dtype=float)
    parts = [np.linspace(a, b, factor + 1)[:-1] for a, b in zip(lines[:-1], lines[1:],
                                                                 strict=True)]
    return np.concatenate([*parts, lines[-1:]])


def node_factors(config, n_levels):
    """The subdivision factors of the levels `node_levels` returns."""
    if config.node_subdivision is not None:
        return [config.node_subdivision]
    return list(_FACTORS[:n_levels])


def node_levels(source, shape, kernel_size, config):
    """Node lines ``(xs, ys)`` of each refinement level, coarsest first.

    A constant PSF has one node, at the image centre. A varying PSF starts
    from its own node lines (`PSFAdapter.node_lines`): a `GriddedPSFModel`'s
    grid, else three lines per axis; each level doubles the subdivision
    while the spacing stays above `node_spacing_floor`, or uses
    ``node_subdivision`` alone when it is given.
    """
    base = source.node_lines(shape)
    if base is None:
        return [(np.array([(shape[1] - 1) / 2.0]), np.array([(shape[0] - 1) / 2.0]))]
    if config.node_subdivision is not None:
        return [tuple(subdivide(lines, config.node_subdivision) for lines in base)]
    floor = node_spacing_floor(config, kernel_size)
    levels = []
    for factor in _FACTORS:
        nodes = tuple(subdivide(lines, factor) for lines in base)
        spacing = min(np.diff(n).min() if n.size > 1 else np.inf for n in nodes)
        if levels and spacing < floor:
            break
        levels.append(nodes)
    return levels


def quality_stamp_size(source, target, shape, kernel_size, fit_size):
    """Stamps of the held-out verdict: a complete-convolution region that holds the target.

    At least twice the kernel's side and four target FWHMs across, whatever the
    fit used: the reference's small stamps (an 11 x 11 region for a 21-pixel
    kernel) would hide a kernel too small for the target's wings.
    """
    _, target_fwhm = centre_widths(source, target, shape)
    valid = max(2 * kernel_size - 1, int(np.ceil(4.0 * target_fwhm)) | 1)
    size = max(fit_size, kernel_size + valid - 1)
    return min(size + 1 - size % 2, _MAX_QUALITY_STAMP)


def heldout_xy(shape, size, config, n_fit):
    """Held-out positions: at least ``4 n_fit`` (64 at least), at most
    ``config.heldout_positions`` and what the memory bound on their stamps allows.
    """
    count = max(_MIN_HELDOUT, _HELDOUT_PER_FIT * n_fit)
    count = min(count, config.heldout_positions, max(_HELDOUT_PIXELS // (size * size), 16))
    return heldout_positions(shape, count)


def linear_stamps(source, target, size, basis, config):
    """`LinearStamps` of the source templates and the constant target, or None.

    None when the source PSF does not decompose into templates, the target
    varies, or the adaptive regularization needs every stamp's convolutions.
    """
    if not target.constant or (config.lambda_type == "adaptive"
                               and basis.kind == "delta-function"
                               and config.use_regularization):
        return None
    components = source.linear_components(size)
    if components is None:
        return None
    templates, weights = components
    centre = target.stamps(np.zeros(1), np.zeros(1), size)[0]
    return LinearStamps(templates, weights, centre, basis=basis, config=config)


#: Largest kernel of the delta-function basis (one unknown per pixel: 3,721 at most).
MAX_DELTA_FUNCTION_SIZE = 61

#: Largest memory (bytes) the kernel fit may plan to use before it is refused.
MAX_FIT_BYTES = 8 * 2**30


def check_shape(shape, config):
    """Refuse, before any work, what cannot fit: a kernel larger than the image, a
    delta-function basis too large to solve, or a fit too large for the memory.
    """
    for name in ("grow_cells", "pad_psf_by"):
        value = getattr(config, name)
        if value > max(shape):
            msg = (f"{name}={value} is larger than the image of shape {tuple(shape)}: "
                   f"at most {max(shape)} (a margin beyond the image holds nothing)")
            raise ValueError(msg)
    size = config.kernel_size
    if size is not None and (shape[0] < size or shape[1] < size):
        msg = (f"the image of shape {tuple(shape)} is smaller than the kernel "
               f"(kernel_size={size}): use a smaller kernel_size")
        raise ValueError(msg)
    if config.kernel_basis == "delta-function" and size is not None \
            and size > MAX_DELTA_FUNCTION_SIZE:
        msg = (f"kernel_size={size} with the delta-function basis has {size**2} unknowns per "
               f"kernel; at most {MAX_DELTA_FUNCTION_SIZE} (the Alard-Lupton basis holds "
               "large kernels with few functions: kernel_basis='alard-lupton')")
        raise ValueError(msg)
    if size is not None and spatial_model(config) != "bilinear":
        grid_cells = (max(shape[0] // config.cell_size[0], 1)
                      * max(shape[1] // config.cell_size[1], 1))
        n_basis = size**2 if config.kernel_basis == "delta-function" else 64
        stamp = MAX_STAMP_PER_KERNEL * size + 1
        valid = stamp - size + 1
        planned = 8 * grid_cells * (n_basis * valid**2 + 2 * stamp**2 + n_basis**2)
        if planned > MAX_FIT_BYTES:
            msg = (f"the kernel fit would need ~{planned / 2**30:.1f} GiB (kernel_size={size}, "
                   f"{grid_cells} cells of {config.cell_size}); use a smaller kernel_size, "
                   "larger cell_size, or spatial_model='bilinear'")
            raise ValueError(msg)


def warn_if_outside_grid(source, shape, *, stacklevel=4):
    """Warn when the image extends well beyond a GriddedPSFModel's grid (extrapolated PSF)."""
    coverage = getattr(source, "coverage", None)
    if coverage is None or source.constant:
        return
    beyond, spacing = coverage(shape), source.grid_spacing()
    far = [b for b, d in zip(beyond, spacing, strict=True)
           if b > _GRID_COVERAGE_TOLERANCE * min(d, max(shape))]
    if far:
        msg = (f"source_psf: the image extends up to {max(beyond):.0f} px beyond the ePSF "
               "grid of the GriddedPSFModel, where photutils holds the edge ePSFs constant "
               "(an extrapolation): the match there is only as good as that assumption")
        warnings.warn(msg, AstropyUserWarning, stacklevel=stacklevel)


#: A kernel whose absolute sum exceeds its sum by more than this factor cancels: the
#: convolution would amplify the round-off of every pixel by as much.
MAX_KERNEL_CANCELLATION = 1e6


def check_cancellation(kernel, shape):
    """Refuse a solved kernel that cancels, at the image's centre and corners.

    A PSF much broader than the target (a deconvolution that cannot be
    reached, e.g. a flat top-hat matched to a narrow Gaussian) gives
    coefficients of 1e10 and more that nearly cancel: the kernel's sum is then
    a round-off residue and the matched image is noise, even where the
    quality verdict still passes its stamps.
    """
    ny, nx = shape
    for x, y in ((nx / 2.0, ny / 2.0), (0.0, 0.0), (nx - 1.0, 0.0), (0.0, ny - 1.0),
                 (nx - 1.0, ny - 1.0)):
        image = kernel.evaluate(x, y)
        total = abs(float(image.sum()))
        magnitude = float(np.abs(image).sum())
        if not total * MAX_KERNEL_CANCELLATION >= magnitude:
            ratio = "inf" if total == 0 else f"{magnitude / total:.2g}"
            msg = (f"the solved kernel at (x, y) = ({x:g}, {y:g}) cancels: the sum of its "
                   f"absolute values is {ratio} times its sum (at most "
                   f"{MAX_KERNEL_CANCELLATION:g}), so its output would be round-off; the "
                   "source_psf is probably much broader than the target_psf, which cannot "
                   "be reached by a convolution")
            raise KernelSolutionError(msg)
