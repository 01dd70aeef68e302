"""Matching accuracy of astropsfmatch and its peers on PSF pairs, at equal kernel support.

Every method gets the same unit-flux PSF stamps and must return one
``KERNEL_SIZE`` x ``KERNEL_SIZE`` (21 x 21) kernel; the metric is computed the
same way for all of them.

Stamps
    ``realize_psf(model, x, y, STAMP_SIZE)``: the model sampled at integer
    offsets around its centre on an 85 x 85 stamp, divided by its sum (85 is
    the largest stamp astropsfmatch itself fits, ``4 * 21 + 1``).

Metric
    ``residual = source ⊛ K - target`` on the complete-convolution region
    (``scipy.signal.fftconvolve(source, K, mode='valid')``: the central
    65 x 65 pixels), divided by the peak of the target stamp; the table gives
    its maximum absolute value and its RMS over that region.

astropsfmatch
    ``ModelPsfMatcher(config).solve(shape, source_model, target_model)``;
    the kernel is the spatial kernel ``solution.kernel.evaluate(x, y)`` at
    the position, i.e. the kernel the image convolution applies there. For a
    constant source PSF the image is one 128 x 128 cell (one candidate,
    ``spatial_order=0``): with identical candidates the spatial fit of any
    order returns this same kernel. For the varying PSF the image is
    ``field`` x ``field`` pixels with the default spatial model (kernels at
    nodes on the PSF model's node lines, interpolated bilinearly), and the
    kernel is evaluated at a grid of positions that includes points between
    nodes and beyond the outermost ones.

photutils
    ``make_kernel(source_stamp, target_stamp, window=W, regularization=r)``
    for every window photutils offers (none, Hanning, Tukey, CosineBell,
    SplitCosineBell, TopHat) over a grid of window parameters and of ``r``,
    and ``make_wiener_kernel(..., regularization=r, penalty=p)`` for
    ``p`` in (None, 'laplacian', 'biharmonic') over a grid of ``r``.

pypher
    ``pypher.homogenization_kernel(target_stamp, source_stamp, reg_fact=r)``
    over a grid of ``r`` (skipped with a note if pypher is not installed).

Equal support
    The peers' kernels are computed on the full 85 x 85 stamps (their usual
    use: same-shape PSF images), then cut to the central 21 x 21 pixels and
    renormalized to unit sum. astropsfmatch solves a 21 x 21 kernel directly.

Best of a scan
    For each peer family the parameters with the smallest maximum residual
    are reported (at the field centre for constant PSFs, over the field for
    the varying one). This selection uses the true target, which a user
    does not have: it flatters the peers. astropsfmatch is run with its
    defaults and, in separate rows, two alternative configurations
    (``ASTROPSFMATCH_CONFIGS``): a richer Alard-Lupton basis fitted on larger
    stamps, and the delta-function basis without regularization.

Varying PSF
    The peers build one kernel from the PSFs at the field centre (a constant
    kernel is all they can make) and it is applied at every position.
"""

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.signal
from astropy.nddata import NDData
from photutils.psf import (
    AiryDiskPSF,
    CircularGaussianPSF,
    GaussianPSF,
    GriddedPSFModel,
    MoffatPSF,
)

from astropsfmatch import MatchConfig, ModelPsfMatcher, realize_psf

KERNEL_SIZE = 21
STAMP_SIZE = 4 * KERNEL_SIZE + 1

#: astropsfmatch configurations compared: label -> MatchConfig options
#: (on top of kernel_size=KERNEL_SIZE). The first one is the default.
ASTROPSFMATCH_CONFIGS = {
    "astropsfmatch (defaults)": {},
    "astropsfmatch (richer AL basis)": {"alard_degrees": (6, 4, 4), "psf_size": 61},
    "astropsfmatch (delta-function basis)": {
        "kernel_basis": "delta-function", "use_regularization": False, "psf_size": 61},
}

_REGULARIZATIONS = (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 5e-2)
_WIENER_REGULARIZATIONS = tuple(10.0 ** np.arange(-10, 0))
_PYPHER_REGULARIZATIONS = tuple(10.0 ** np.arange(-10, 0))
_FRACTIONS = (0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 1.0)
_SPLIT = ((0.1, 0.1), (0.1, 0.3), (0.1, 0.5), (0.1, 0.7), (0.3, 0.1), (0.3, 0.3), (0.3, 0.5),
          (0.3, 0.7), (0.5, 0.1), (0.5, 0.3), (0.5, 0.5), (0.7, 0.1), (0.7, 0.3), (0.9, 0.1))


#: The spatially varying source PSFs (see `field_psf`): 2x oversampled 81 x 81 ePSFs.
MILD_VARIATION = {"n_grid": 5, "half_size": 20, "oversampling": 2, "fwhm": (3.0, 3.6),
                  "ellipticity": 0.1}
STRONG_VARIATION = {"n_grid": 5, "half_size": 20, "oversampling": 2, "fwhm": (2.8, 4.0),
                    "ellipticity": 0.15}


def moffat_alpha(fwhm, beta):
    """Moffat core width ``alpha`` giving ``fwhm`` for power ``beta``."""
    return fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))


def airy_radius(fwhm):
    """AiryDiskPSF ``radius`` (first dark ring) giving ``fwhm`` (FWHM = 0.8437 radius)."""
    return fwhm / 0.8436659602162363


def field_psf(shape, *, n_grid=5, half_size=12, oversampling=1, fwhm=(2.8, 4.0),
              ellipticity=0.15):
    """A GriddedPSFModel whose Gaussian PSF broadens and elongates towards the corners.

    At a grid node with normalized coordinates ``u, v`` in [-1, 1] and
    ``r2 = (u**2 + v**2) / 2`` in [0, 1]: FWHM ``fwhm[0] + (fwhm[1] -
    fwhm[0]) * r2`` (geometric mean of the axes), ellipticity
    ``ellipticity * r2``, major axis pointing radially (as field
    aberrations do). ePSF data: ``2 * half_size * oversampling + 1`` samples
    on a side, so the natural stamp is ``2 * half_size + 1`` pixels.
    """
    ny, nx = shape
    xs = np.linspace(0.0, nx - 1.0, n_grid)
    ys = np.linspace(0.0, ny - 1.0, n_grid)
    n_data = 2 * half_size * oversampling + 1
    centre = (n_data - 1) / 2.0
    yy, xx = np.mgrid[:n_data, :n_data].astype(float)
    data, xypos = [], []
    for y in ys:
        for x in xs:
            u, v = 2.0 * x / (nx - 1) - 1.0, 2.0 * y / (ny - 1) - 1.0
            r2 = (u * u + v * v) / 2.0
            width = fwhm[0] + (fwhm[1] - fwhm[0]) * r2
            e = ellipticity * r2
            major, minor = width / np.sqrt(1.0 - e), width * np.sqrt(1.0 - e)
            theta = np.degrees(np.arctan2(v, u)) if r2 > 0 else 0.0
            model = GaussianPSF(x_0=centre, y_0=centre, x_fwhm=major * oversampling,
                                y_fwhm=minor * oversampling, theta=theta)
            epsf = model(xx, yy)
            data.append(epsf / epsf.sum() * oversampling**2)
            xypos.append((x, y))
    meta = {"grid_xypos": xypos, "oversampling": oversampling}
    return GriddedPSFModel(NDData(np.array(data), meta=meta))


def comatic_psf(size=STAMP_SIZE):
    """A comatic PSF: three Gaussians of growing width offset along one direction (array)."""
    half = size // 2
    y, x = np.mgrid[-half:half + 1, -half:half + 1].astype(float)
    psf = np.zeros((size, size))
    for weight, sigma, shift in ((0.6, 1.2, 0.0), (0.3, 1.6, 1.2), (0.1, 2.2, 2.6)):
        dx, dy = shift * np.cos(np.radians(30.0)), shift * np.sin(np.radians(30.0))
        g = np.exp(-0.5 * ((x - dx) ** 2 + (y - dy) ** 2) / sigma**2)
        psf += weight * g / g.sum()
    return psf / psf.sum()


@dataclass
class Pair:
    """A source PSF and the target it is matched to."""

    name: str
    source: object
    target: object
    varying: bool = False
    note: str = ""


def psf_pairs(field=2048, *, quick=False):
    """The benchmark's PSF pairs (the varying one on a ``field`` x ``field`` image)."""
    del quick
    pairs = [
        Pair("Gaussian -> Gaussian", CircularGaussianPSF(fwhm=3.0),
             CircularGaussianPSF(fwhm=5.0), note="FWHM 3.0 -> 5.0"),
        Pair("Moffat -> Gaussian", MoffatPSF(alpha=moffat_alpha(3.0, 3.0), beta=3.0),
             CircularGaussianPSF(fwhm=5.0), note="Moffat FWHM 3.0, beta 3 -> Gaussian FWHM 5.0"),
        Pair("Airy -> Moffat", AiryDiskPSF(radius=airy_radius(2.5)),
             MoffatPSF(alpha=moffat_alpha(5.0, 2.5), beta=2.5),
             note="Airy FWHM 2.5 -> Moffat FWHM 5.0, beta 2.5"),
        Pair("elliptical -> round", GaussianPSF(x_fwhm=3.6, y_fwhm=2.4, theta=30.0),
             CircularGaussianPSF(fwhm=5.0), note="Gaussian 3.6 x 2.4 at 30 deg -> FWHM 5.0"),
        Pair("comatic -> round", comatic_psf(), CircularGaussianPSF(fwhm=6.0),
             note="3 offset Gaussians (array) -> FWHM 6.0"),
        Pair("GriddedPSFModel, mild variation -> constant",
             field_psf((field, field), **MILD_VARIATION), CircularGaussianPSF(fwhm=5.0),
             varying=True, note=f"5x5 ePSF grid over {field}x{field}: FWHM 3.0 -> 3.6, "
                                "ellipticity 0 -> 0.1 (centre -> corners) -> FWHM 5.0"),
        Pair("GriddedPSFModel, strong variation -> constant",
             field_psf((field, field), **STRONG_VARIATION), CircularGaussianPSF(fwhm=5.0),
             varying=True, note=f"5x5 ePSF grid over {field}x{field}: FWHM 2.8 -> 4.0, "
                                "ellipticity 0 -> 0.15 (centre -> corners) -> FWHM 5.0"),
    ]
    return pairs


def cut_kernel(kernel, size=KERNEL_SIZE):
    """The central ``size`` x ``size`` pixels of an odd kernel, renormalized to unit sum."""
    centre, half = kernel.shape[0] // 2, size // 2
    out = np.array(kernel[centre - half:centre + half + 1, centre - half:centre + half + 1],
                   dtype=np.float64)
    return out / out.sum()


def residual_stats(source, target, kernel):
    """(max, RMS) of |source ⊛ kernel - target| / target peak on the complete region."""
    half = kernel.shape[0] // 2
    model = scipy.signal.fftconvolve(source, kernel, mode="valid")
    residual = (model - target[half:-half, half:-half]) / target.max()
    return float(np.abs(residual).max()), float(np.sqrt(np.mean(residual**2)))


def photutils_matching():
    """photutils' PSF-matching module: ``photutils.psf_matching`` (3.0 and later) or
    ``photutils.psf.matching`` (2.x)."""
    try:
        from photutils import psf_matching
    except ImportError:
        from photutils.psf import matching as psf_matching
    return psf_matching


def _photutils_methods(quick=False):
    """(family, parameters, function(source, target) -> kernel) for every photutils variant."""
    psf_matching = photutils_matching()

    make = getattr(psf_matching, "make_kernel", None)
    new_api = make is not None
    if make is None:  # photutils < 3.0
        make = psf_matching.create_matching_kernel
    windows = [("no window", None, "")]
    windows.append(("HanningWindow", psf_matching.HanningWindow(), ""))
    fractions = _FRACTIONS[1::2] if quick else _FRACTIONS
    for alpha in fractions:
        windows.append(("TukeyWindow", psf_matching.TukeyWindow(alpha=alpha), f"alpha={alpha}"))
    for alpha in fractions:
        windows.append(("CosineBellWindow", psf_matching.CosineBellWindow(alpha=alpha),
                        f"alpha={alpha}"))
    for alpha, beta in (_SPLIT[::3] if quick else _SPLIT):
        windows.append(("SplitCosineBellWindow",
                        psf_matching.SplitCosineBellWindow(alpha=alpha, beta=beta),
                        f"alpha={alpha}, beta={beta}"))
    for beta in fractions:
        windows.append(("TopHatWindow", psf_matching.TopHatWindow(beta=beta), f"beta={beta}"))
    regularizations = _REGULARIZATIONS[1::2] if quick else _REGULARIZATIONS
    methods = []
    for family, window, text in windows:
        for reg in regularizations:
            if not new_api and reg == 0.0:
                continue

            def function(s, t, window=window, reg=reg):
                if new_api:
                    return make(s, t, window=window, regularization=reg)
                return make(s, t, window=window)

            params = ", ".join(p for p in (text, f"regularization={reg:g}" if new_api else "")
                               if p)
            methods.append((f"make_kernel, {family}", params, function))
            if not new_api:
                break
    wiener = getattr(psf_matching, "make_wiener_kernel", None)
    if wiener is not None:
        regs = _WIENER_REGULARIZATIONS[::2] if quick else _WIENER_REGULARIZATIONS
        for penalty in (None, "laplacian", "biharmonic"):
            for reg in regs:
                methods.append((
                    "make_wiener_kernel", f"penalty={penalty}, regularization={reg:.0e}",
                    lambda s, t, reg=reg, penalty=penalty: wiener(
                        s, t, regularization=reg, penalty=penalty)))
    return methods


def _pypher_methods(quick=False):
    try:
        from pypher.pypher import homogenization_kernel
    except ImportError:
        return None
    regs = _PYPHER_REGULARIZATIONS[::2] if quick else _PYPHER_REGULARIZATIONS
    return [("pypher", f"reg_fact={reg:.0e}",
             lambda s, t, reg=reg: homogenization_kernel(t, s, reg_fact=reg)[0].real)
            for reg in regs]


def peer_methods(quick=False):
    """All peer variants and a note on the ones that are missing."""
    methods = _photutils_methods(quick)
    notes = []
    pypher = _pypher_methods(quick)
    if pypher is None:
        notes.append("pypher is not installed (pip install pypher): its rows are skipped.")
    else:
        methods += pypher
    return methods, notes


@dataclass
class Result:
    """One method's kernel on one pair."""

    pair: str
    method: str
    family: str
    params: str
    centre_max: float
    centre_rms: float
    field_max: float = np.nan
    field_rms: float = np.nan
    seconds: float = np.nan
    extra: dict = field(default_factory=dict)

    @property
    def key(self):
        """Selection key: the field maximum for a varying PSF, else the centre maximum."""
        return self.field_max if np.isfinite(self.field_max) else self.centre_max


def _positions(pair, field, n_positions):
    """Evaluation positions (x, y) and the index of the field centre."""
    if not pair.varying:
        return np.array([[64.0, 64.0]]), 0
    half = KERNEL_SIZE // 2
    axis = np.linspace(half, field - 1 - half, n_positions)
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    positions = np.column_stack([xx.ravel(), yy.ravel()])
    centre = int(np.argmin(np.hypot(*(positions - (field - 1) / 2.0).T)))
    return positions, centre


def _summarize(stats, centre):
    stats = np.asarray(stats)
    maxima, rms = stats[:, 0], stats[:, 1]
    if len(stats) == 1:
        return maxima[0], rms[0], np.nan, np.nan
    return maxima[centre], rms[centre], maxima.max(), float(np.sqrt(np.mean(rms**2)))


def run_pair(pair, *, field=2048, n_positions=7, quick=False, methods=None):
    """Every method on one pair: a list of Result (every peer variant, not only the best)."""
    if methods is None:
        methods, _ = peer_methods(quick)
    positions, centre = _positions(pair, field, n_positions)
    sources = [realize_psf(pair.source, x, y, STAMP_SIZE) for x, y in positions]
    targets = [realize_psf(pair.target, x, y, STAMP_SIZE) for x, y in positions]
    shape = (field, field) if pair.varying else (128, 128)
    results = []
    for label, options in ASTROPSFMATCH_CONFIGS.items():
        options = dict(options)
        options.setdefault("kernel_size", KERNEL_SIZE)
        if not pair.varying:
            options.update(cell_size=128, spatial_order=0)
        matcher = ModelPsfMatcher(MatchConfig(**options))
        start = time.perf_counter()
        solution, candidates, *_ = matcher.solve(shape, pair.source, pair.target)
        seconds = time.perf_counter() - start
        stats = [residual_stats(s, t, solution.kernel.evaluate(x, y))
                 for s, t, (x, y) in zip(sources, targets, positions, strict=True)]
        results.append(Result(pair.name, label, label, "", *_summarize(stats, centre),
                              seconds=seconds,
                              extra={"stamp": candidates[0].source.shape[0],
                                     "candidates": len(candidates)}))
    source_c, target_c = sources[centre], targets[centre]
    for family, params, function in methods:
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with np.errstate(all="ignore"):
                    kernel = cut_kernel(function(source_c, target_c))
        except (ValueError, ZeroDivisionError, FloatingPointError):
            continue
        seconds = time.perf_counter() - start
        if not np.all(np.isfinite(kernel)):
            continue
        stats = [residual_stats(s, t, kernel) for s, t in zip(sources, targets, strict=True)]
        results.append(Result(pair.name, family.split(",")[0], family, params,
                              *_summarize(stats, centre), seconds=seconds))
    return results


def best_by_family(results):
    """The best Result of each (pair, family): smallest maximum residual."""
    best = {}
    for result in results:
        key = (result.pair, result.family)
        if key not in best or result.key < best[key].key:
            best[key] = result
    return list(best.values())


def best_by_method(results):
    """The best Result of each (pair, method): astropsfmatch configs, make_kernel (any window),
    make_wiener_kernel, pypher."""
    best = {}
    for result in results:
        key = (result.pair, result.method)
        if key not in best or result.key < best[key].key:
            best[key] = result
    return list(best.values())


def run(*, field=2048, n_positions=7, quick=False, pairs=None, verbose=True):
    """Run every pair. Returns ``(results, notes)``: all Results and notes on skipped peers."""
    methods, notes = peer_methods(quick)
    if pairs is None:
        pairs = psf_pairs(field, quick=quick)
    results = []
    for pair in pairs:
        start = time.perf_counter()
        pair_results = run_pair(pair, field=field, n_positions=n_positions, quick=quick,
                                methods=methods)
        results += pair_results
        if verbose:
            print(f"  accuracy: {pair.name}: {len(pair_results)} kernels in "
                  f"{time.perf_counter() - start:.1f} s", flush=True)
    return results, notes
