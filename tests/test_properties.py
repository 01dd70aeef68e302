"""Bad input never gives a silent wrong answer (issue 15): property-based tests.

Every public entry point -- `match_psf`, `MatchConfig`, `SpatialKernel.read`,
`common_target_psf`, `coadd` and the command line's `main` -- is given valid,
repairable and bad values of every kind (wrong types, NaN/inf, negative, zero,
huge, subnormal, empty, wrong shapes, big-endian and non-contiguous arrays,
string masks, ragged lists, uncertainties in other units, negative variances,
degenerate PSFs, ...). Each call must end in one of two ways:

* a result that is consistent: for `match_psf`, NaN exactly where the mask is
  set, the mask covering the edges and the kernel footprint of every bad
  pixel (and nothing else), finite data and a finite variance >= 0 elsewhere,
  and the flux of unmasked regions conserved; for `coadd`, the weighted mean
  and its variance; for the command line, status 0 and a valid file;
* or a documented refusal: `ValueError`, `TypeError`,
  `astropy.units.UnitsError` or `KernelSolutionError` (FileNotFoundError
  where a missing file is the problem), raised by astropsfmatch's own code
  (the last frame of the traceback is in the package, not in numpy, scipy,
  numba or astropy), whose message names the parameter; for the command
  line, status 1, 2 or 3 with one ``error:`` line on stderr, no traceback and
  no output file.

Warnings may only be `~astropy.utils.exceptions.AstropyUserWarning`
subclasses (the package's documented warnings); a NumPy ``RuntimeWarning``
escaping the package is a failure. No input is ever modified.

Tests named ``test_reported_*`` hold the minimal examples of the bugs this
fuzzing found (issue 15), each fixed; their comments say what used to happen.

Hypothesis profiles
-------------------
``ci`` (the default): fixed examples (``derandomize=True``), a few per test,
no deadline, no shrinking (a failure prints its example as generated), no
example database; the module runs in well under two minutes on two cores.
``dev``: 25 times more examples, random each run, with shrinking and the
example database::

    HYPOTHESIS_PROFILE=dev python -m pytest tests/test_properties.py
"""

import contextlib
import copy
import io
import math
import os
import tempfile
import threading
import traceback
import warnings
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.modeling import Model
from astropy.nddata import (
    CCDData,
    InverseVariance,
    NDData,
    StdDevUncertainty,
    UnknownUncertainty,
    VarianceUncertainty,
)
from astropy.utils.exceptions import AstropyDeprecationWarning, AstropyUserWarning
from astropy.utils.masked import Masked
from astropy.wcs import WCS
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from photutils.psf import CircularGaussianPRF, GaussianPRF, GriddedPSFModel
from scipy.ndimage import binary_dilation

import astropsfmatch
from astropsfmatch import (
    KernelSolutionError,
    MatchConfig,
    MatchQualityWarning,
    SpatialKernel,
    coadd,
    common_target_psf,
    make_alard_lupton_basis,
    match_psf,
    realize_psf,
)
from astropsfmatch.cli import main, parse_psf_spec

# --------------------------------------------------------------------------- profiles

settings.register_profile(
    "ci", derandomize=True, max_examples=10, deadline=None, database=None,
    phases=(Phase.explicit, Phase.generate), print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much])
settings.register_profile(
    "dev", max_examples=250, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
if PROFILE not in ("ci", "dev"):  # a profile registered elsewhere
    PROFILE = "ci"


def examples(n):
    """Settings of one test: the module's profile with ``n`` examples (25 n with 'dev')."""
    return settings(settings.get_profile(PROFILE),
                    max_examples=n if PROFILE == "ci" else 25 * n)


# --------------------------------------------------------------------------- helpers

PACKAGE_DIR = str(Path(astropsfmatch.__file__).resolve().parent)

#: The exceptions the package documents for bad input.
DOCUMENTED = (ValueError, TypeError, u.UnitsError, KernelSolutionError)

SOURCE = realize_psf(CircularGaussianPRF(fwhm=2.5), 0.0, 0.0, size=15)
TARGET = realize_psf(CircularGaussianPRF(fwhm=4.0), 0.0, 0.0, size=15)


def call(function):
    """Run ``function()`` with every warning recorded: ``(result, exception, warnings)``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return function(), None, list(caught)
        except Exception as exc:  # noqa: BLE001 - judged by the caller
            return None, exc, list(caught)


def where(exc):
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"


def in_package(exc):
    """True when the last frame of the traceback is astropsfmatch's code."""
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and str(Path(frames[-1].filename).resolve()).startswith(PACKAGE_DIR)


def assert_refusal(exc, *names, kinds=DOCUMENTED):
    """``exc`` is a documented exception raised by the package, naming one of ``names``."""
    assert exc is not None, "expected a refusal, got a result"
    assert isinstance(exc, kinds), \
        f"undocumented {type(exc).__name__} at {where(exc)}: {exc}"
    assert in_package(exc), f"{type(exc).__name__} raised outside astropsfmatch at " \
                            f"{where(exc)}: {exc}"
    assert any(name in str(exc) for name in names), \
        f"the message does not name {' or '.join(names)}: {type(exc).__name__}: {exc}"


def assert_package_warnings(caught):
    """Only AstropyUserWarning subclasses: no NumPy RuntimeWarning or ComplexWarning."""
    foreign = [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught
               if not issubclass(w.category, AstropyUserWarning)]
    assert not foreign, "warnings other than AstropyUserWarning: " + "; ".join(foreign)


def result_or_refusal(function, *names, kinds=DOCUMENTED):
    """``function()``'s result (warnings checked), or None after a checked refusal."""
    result, exc, caught = call(function)
    assert_package_warnings(caught)
    if exc is not None:
        assert_refusal(exc, *names, kinds=kinds)
        return None
    return result


def snapshot(*objects):
    """Deep copies, to check later that nothing was modified."""
    return copy.deepcopy(objects)


def assert_same(before, after):
    for old, new in zip(before, after, strict=True):
        if isinstance(old, np.ma.MaskedArray):
            assert_same((old.data, np.ma.getmaskarray(old)), (new.data, np.ma.getmaskarray(new)))
        elif isinstance(old, Masked):
            assert_same((np.asarray(old.unmasked), np.asarray(old.mask)),
                        (np.asarray(new.unmasked), np.asarray(new.mask)))
        elif isinstance(old, u.Quantity):
            assert old.unit == new.unit
            assert_same((old.value,), (new.value,))
        elif isinstance(old, np.ndarray):
            assert new.dtype == old.dtype and new.shape == old.shape
            assert np.array_equal(old, new, equal_nan=True), "an input array was modified"
        elif isinstance(old, NDData):
            assert_same((old.data, old.mask, None if old.uncertainty is None
                         else old.uncertainty.array), (new.data, new.mask, None
                                                       if new.uncertainty is None
                                                       else new.uncertainty.array))
        elif isinstance(old, list) and old and isinstance(old[0], list) and old[0] \
                and isinstance(old[0][0], (int, float)):  # an image or PSF as nested lists
            assert np.array_equal(np.array(old), np.array(new), equal_nan=True), \
                "an input list was modified"
        elif isinstance(old, (list, tuple)):
            assert_same(old, new)
        elif isinstance(old, Model):
            assert type(old) is type(new) and np.array_equal(old.parameters, new.parameters)
        else:
            assert old == new or (old is None and new is None)


def frame(shape, half):
    """True within ``half`` pixels of the edges."""
    edge = np.zeros(shape, dtype=bool)
    if half:
        edge[:half] = edge[-half:] = True
        edge[:, :half] = edge[:, -half:] = True
    return edge


def footprint(bad, half):
    if not bad.any() or half == 0:
        return bad.copy()
    return binary_dilation(bad, structure=np.ones((2 * half + 1, 2 * half + 1), dtype=bool))


def assert_consistent_match(result, bad, *, level=None, star=None, tolerance=0.0,
                            variance=None):
    """The matched CCDData of ``result`` is consistent with an input whose bad pixels
    (masked or non-finite in data or variance) are ``bad``.

    ``level``: the constant value of the input (with a ``star = (y, x, flux)``
    on it): unmasked pixels away from the star keep it, and the star's flux is
    conserved when its neighbourhood is unmasked. ``variance``: the constant
    input variance (in the data unit squared), propagated with the kernel.
    """
    ccd = result.matched
    data = np.asarray(ccd.data)
    mask = np.asarray(ccd.mask, dtype=bool)
    half = result.kernel.kernel_size // 2
    expected_mask = frame(bad.shape, half) | footprint(bad, half)
    assert data.shape == mask.shape == bad.shape
    lost = int(np.count_nonzero(mask & ~expected_mask))
    missed = int(np.count_nonzero(~mask & expected_mask))
    assert missed == 0, f"{missed} pixels at the edges or near bad pixels are not masked"
    assert lost == 0, f"{lost} good pixels are masked (of {int((~expected_mask).sum())})"
    assert np.all(np.isnan(data[mask])), "masked pixels must be NaN"
    assert np.all(np.isfinite(data[~mask])), \
        f"{int(np.count_nonzero(~np.isfinite(data[~mask])))} unmasked pixels are not finite"
    if ccd.uncertainty is not None:
        values = np.asarray(ccd.uncertainty.array, dtype=np.float64)
        if isinstance(ccd.uncertainty, InverseVariance):
            assert np.all(values[mask] == 0), "masked inverse variances must be 0"
            assert np.all(np.isfinite(values[~mask]) & (values[~mask] >= 0))
            with np.errstate(divide="ignore"):
                var = 1.0 / values
        else:
            assert np.all(np.isnan(values[mask])), "masked uncertainties must be NaN"
            assert np.all(np.isfinite(values[~mask])), "unmasked uncertainties must be finite"
            assert np.all(values[~mask] >= 0), "uncertainties must be >= 0"
            var = values**2 if isinstance(ccd.uncertainty, StdDevUncertainty) else values
        if variance is not None and (~mask).any():
            kernel = result.kernel
            unit = kernel.evaluate(bad.shape[1] // 2, bad.shape[0] // 2) / kernel.kernel_sum
            expected = variance * float(np.sum(unit**2))
            np.testing.assert_allclose(var[~mask], expected, rtol=1e-3,
                                       err_msg="propagated variance")
    if level is None:
        return
    away = ~mask
    box = None
    if star is not None:
        y, x, flux = star
        reach = 2 * half + 2
        box = np.s_[max(y - reach, 0):y + reach + 1, max(x - reach, 0):x + reach + 1]
        away[box] = False
    if away.any():
        error = float(np.max(np.abs(data[away] - level)))
        assert error <= tolerance, f"a constant {level!r} became {level!r} +- {error:.3g}"
    if box is not None and not mask[box].any():
        total = float(np.sum(data[box].astype(np.float64) - level))
        limit = tolerance * data[box].size
        assert abs(total - flux) <= limit, f"star flux {flux!r} became {total!r}"


def dtype_tolerance(dtype, *scales):
    """Per-pixel round-off allowed for values of ``scales`` in ``dtype``."""
    scale = max(abs(s) for s in scales)
    if np.dtype(dtype) == np.float32 or np.dtype(dtype) == np.float16:
        return max(2e-5 * scale, 1e-30)
    return max(1e-9 * scale, 1e-290)


def make_wcs(crpix=(12.0, 10.0)):
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.cdelt = [-1e-4, 1e-4]
    wcs.wcs.crpix = list(crpix)
    return wcs


def magnitudes(low, high):
    """Positive floats spread log-uniformly over ``[10**low, 10**high]``."""
    return st.floats(low, high).map(lambda e: float(10.0**e))


# =========================================================================== match_psf

LAYOUTS = ("C", "F", "strided", "readonly", "bigendian")
CONTAINERS = ("array", "masked_array", "Masked", "CCDData", "NDData", "Quantity", "list")
UNCERTAINTY_KINDS = (None, StdDevUncertainty, VarianceUncertainty, InverseVariance)


def laid_out(array, layout):
    """``array`` with the same values in another memory layout."""
    if layout == "F":
        return np.asfortranarray(array)
    if layout == "strided":
        big = np.zeros((2 * array.shape[0], 2 * array.shape[1]), dtype=array.dtype)
        big[::2, ::2] = array
        return big[::2, ::2]
    if layout == "readonly":
        out = array.copy()
        out.flags.writeable = False
        return out
    if layout == "bigendian" and array.dtype.kind in "iuf" and array.dtype.itemsize > 1:
        return array.astype(array.dtype.newbyteorder(">"))
    return array


@st.composite
def match_cases(draw):
    """A constant image with a star, some bad pixels, in any container and layout."""
    ny, nx = draw(st.integers(64, 160)), draw(st.integers(64, 160))
    dtype = np.dtype(draw(st.sampled_from(["float64", "float32", "int32", "int16"])))
    if dtype.kind == "f":
        top = 300 if dtype == np.float64 else 30
        level = draw(st.one_of(st.just(0.0), st.just(5e-324),
                               magnitudes(-top, top).map(lambda v: -v),
                               magnitudes(-top, top)))
        flux = draw(st.one_of(st.just(0.0), magnitudes(-top, top)))
    else:
        level = float(draw(st.integers(-1000, 1000)))
        flux = float(draw(st.integers(0, 20000)))
    star = (ny // 2, nx // 2)
    values = np.full((ny, nx), level)
    values[star] += flux
    with np.errstate(all="ignore"):
        data = values.astype(dtype)
    level_eff = float(data[0, 0])
    flux_eff = float(np.float64(data[star]) - level_eff)

    container = draw(st.sampled_from(CONTAINERS))
    kind = draw(st.sampled_from(UNCERTAINTY_KINDS)) if container in ("CCDData", "NDData") \
        else None
    # bad pixels, kept away from the star: non-finite data, masked pixels, bad variances
    positions = st.tuples(st.integers(0, ny - 1), st.integers(0, nx - 1)).filter(
        lambda p: abs(p[0] - star[0]) > 24 or abs(p[1] - star[1]) > 24)
    nonfinite = draw(st.lists(positions, max_size=4)) if dtype.kind == "f" else []
    masked = draw(st.lists(positions, max_size=4)) \
        if container in ("masked_array", "Masked", "CCDData", "NDData") else []
    bad = np.zeros((ny, nx), dtype=bool)
    for k, p in enumerate(nonfinite):
        data[p] = (np.nan, np.inf, -np.inf)[k % 3]
        bad[p] = True
    mask = None
    if masked or container in ("masked_array", "Masked"):
        mask = np.zeros((ny, nx), dtype=bool)
        for p in masked:
            mask[p] = True
        bad |= mask
        mask = mask.astype(draw(st.sampled_from([bool, np.uint8, np.float64, ">i4"])))
    uncertainty, variance = None, None
    if kind is not None:
        sigma = draw(magnitudes(-150, 150))
        scale = draw(st.sampled_from([1.0, 1e3, 1e-3]))  # uncertainty in Jy, mJy or kJy
        unit = {1.0: None, 1e3: "mJy", 1e-3: "kJy"}[scale]
        base = {StdDevUncertainty: sigma * scale, VarianceUncertainty: (sigma * scale)**2,
                InverseVariance: (sigma * scale)**-2}[kind]
        array = np.full((ny, nx), base)
        for k, p in enumerate(draw(st.lists(positions, max_size=3))):
            array[p] = (np.nan, np.inf)[k % 2] if kind is not InverseVariance else 0.0
            bad[p] = True
        array = laid_out(array.astype(draw(st.sampled_from(["float64", "float32"]))
                                      if sigma * scale < 1e15 and sigma * scale > 1e-15
                                      else np.float64), draw(st.sampled_from(LAYOUTS)))
        power = {StdDevUncertainty: 1, VarianceUncertainty: 2, InverseVariance: -2}[kind]
        uncertainty = kind(array, unit=None if unit is None else u.Unit(unit)**power)
        variance = sigma**2
    data = laid_out(data, draw(st.sampled_from(LAYOUTS)))
    if mask is not None:
        mask = laid_out(mask, draw(st.sampled_from(LAYOUTS)))

    if container == "array":
        image = data
    elif container == "masked_array":
        image = np.ma.MaskedArray(data, mask=mask)
    elif container == "Masked":
        image = Masked(data, mask=np.asarray(mask, dtype=bool))
    elif container == "Quantity":
        image = data * u.Jy if dtype.kind == "f" else data
    elif container == "list":
        image = data.tolist()
    elif container == "CCDData":
        image = CCDData(data, unit="Jy", mask=mask, uncertainty=uncertainty)
    else:
        image = NDData(data, unit="Jy", mask=mask, uncertainty=uncertainty)
    options = {
        "kernel_size": draw(st.sampled_from([3, 5, 7, 9])),
        "kernel_basis": draw(st.sampled_from(["auto", "alard-lupton", "delta-function"])),
        "kernel_sum": draw(st.one_of(st.just(1.0), magnitudes(-300, 300))),
        "workers": draw(st.sampled_from([None, 1, 2])),
    }
    tolerance = dtype_tolerance(dtype, level_eff, flux_eff)
    return image, bad, options, level_eff, (star[0], star[1], flux_eff), tolerance, variance


@examples(12)
@given(case=match_cases())
def test_match_psf_result_is_consistent(case):
    image, bad, options, level, star, tolerance, variance = case
    psfs = (SOURCE.copy(), TARGET.copy())
    before = snapshot(image, *psfs)
    result, exc, caught = call(lambda: match_psf(image, psfs[1], source_psf=psfs[0], **options))
    assert exc is None, f"{type(exc).__name__} at {where(exc)}: {exc}"
    assert_package_warnings(caught)
    assert_consistent_match(result, bad, level=level, star=star, tolerance=tolerance,
                            variance=variance)
    assert_same(before, snapshot(image, *psfs))


#: (parameter, value, kind): kind 'type' must raise a TypeError (an InvalidTypeError,
#: also a ValueError, for an option), 'value' a ValueError.
BAD_ARGUMENTS = [
    ("kernel_sum", 0.0, "value"), ("kernel_sum", -1.0, "value"), ("kernel_sum", math.nan, "value"),
    ("kernel_sum", math.inf, "value"), ("kernel_sum", 5e-324, "value"),
    ("kernel_sum", "1", "type"), ("kernel_sum", None, "type"), ("kernel_sum", True, "type"),
    ("kernel_sum", [1.0], "type"), ("kernel_sum", 1j, "type"),
    ("workers", 0, "value"), ("workers", -1, "value"), ("workers", 1.5, "type"),
    ("workers", "2", "type"), ("workers", True, "type"), ("workers", math.nan, "type"),
    ("kernel_size", 1, "value"), ("kernel_size", 4, "value"), ("kernel_size", -7, "value"),
    ("kernel_size", 7.0, "type"), ("kernel_size", "7", "type"), ("kernel_size", True, "type"),
    ("kernel_size", 65, "value"),  # larger than the 64 x 64 image
    ("cell_size", 31, "value"), ("cell_size", (64, 64, 64), "value"),
    ("spatial_order", -1, "value"), ("spatial_order", 1.5, "type"),
    ("max_residual", 0.0, "value"), ("max_residual", math.nan, "value"),
    ("kernel_basis", "gauss", "value"), ("kernel_basis", None, "type"),
    ("spatial_model", "spline", "value"), ("alard_sigmas", [], "value"),
    ("alard_sigmas", [math.nan], "value"), ("alard_degrees", [-1, 2, 2], "value"),
    ("lambda_scaling", 0.0, "value"), ("heldout_positions", 0, "value"),
    ("node_subdivision", 0, "value"), ("psf_size", 4, "value"), ("stamp_size", 2, "value"),
    ("auto_pad_psf_to", 3.0, "value"), ("pad_psf_by", 3, "value"),
    ("regularization_type", "l1", "value"), ("forward_regularization_orders", [4], "value"),
    ("central_regularization_stencil", 7, "value"), ("scale_by_fwhm", "yes", "type"),
    ("config", "kernel_size=7", "type"), ("config", {"kernel_size": 7}, "type"),
    ("frobnicate", 1, "value"),  # an unknown option
]


@pytest.mark.parametrize(("name", "value", "kind"), BAD_ARGUMENTS,
                         ids=[f"{n}={v!r}" for n, v, _ in BAD_ARGUMENTS])
def test_match_psf_refuses_bad_arguments(name, value, kind):
    options = {"kernel_size": 7, name: value}
    result, exc, caught = call(lambda: match_psf(np.zeros((64, 64)), TARGET, source_psf=SOURCE,
                                                 **options))
    assert_package_warnings(caught)
    assert_refusal(exc, name)
    if kind == "type":
        assert isinstance(exc, TypeError), f"a value of the wrong type must raise a " \
                                           f"TypeError, got {type(exc).__name__}: {exc}"
    else:
        assert isinstance(exc, ValueError)


@examples(30)
@given(value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(),
                       st.text(max_size=3), st.none(), st.booleans(),
                       st.lists(st.floats(), max_size=2)),
       name=st.sampled_from(["kernel_sum", "kernel_size", "spatial_order", "max_residual",
                             "cell_size", "lambda_scaling", "alard_min_sigma", "workers"]))
def test_match_psf_scalar_fuzz(name, value):
    # Any value: a consistent result or a refusal naming the parameter, and fast
    # (an image of 64 x 64 with a 7 x 7 kernel unless the kernel is the value).
    options = {"kernel_size": 7, "kernel_basis": "alard-lupton", name: value}
    if name == "workers" and isinstance(value, int) and value > 4:
        return  # thread counts: see test_reported_workers_start_at_most_the_threads_needed
    if name == "spatial_order" and isinstance(value, int) and value > 2:
        return  # a valid order; lowered with a warning, tested elsewhere
    image = np.full((64, 64), 2.0)
    result = result_or_refusal(lambda: match_psf(image, TARGET, source_psf=SOURCE, **options),
                               name)
    if result is not None:
        assert_consistent_match(result, np.zeros((64, 64), dtype=bool), level=2.0,
                                tolerance=1e-9)


BAD_IMAGES = {
    "None": None, "str": "image.fits", "int": 3, "dict": {"data": np.zeros((64, 64))},
    "1-D": np.zeros(64), "3-D": np.zeros((2, 64, 64)), "0-D": np.array(1.0),
    "empty": np.zeros((0, 0)), "no columns": np.zeros((64, 0)),
    "complex": np.zeros((64, 64), dtype=complex), "bool": np.zeros((64, 64), dtype=bool),
    "object": np.zeros((64, 64), dtype=object), "strings": np.full((64, 64), "1.0"),
    "datetime": np.zeros((64, 64), dtype="datetime64[s]"),
    "ragged": [[1.0, 2.0], [3.0]], "ragged rows": [[0.0] * 64] * 63 + [[0.0] * 63],
    "NDData 1-D": NDData(np.zeros(64)), "NDData complex": NDData(np.zeros((64, 64), complex)),
}


@pytest.mark.parametrize("label", list(BAD_IMAGES))
def test_match_psf_refuses_bad_images(label):
    image = BAD_IMAGES[label]
    result, exc, caught = call(lambda: match_psf(image, TARGET, source_psf=SOURCE,
                                                 kernel_size=7))
    assert_package_warnings(caught)
    assert_refusal(exc, "image")


@examples(40)
@given(image=hnp.arrays(dtype=hnp.scalar_dtypes(),
                        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0,
                                               max_side=6)))
def test_match_psf_refuses_any_small_array(image):
    # every array smaller than the kernel, of any dtype and dimension
    result, exc, caught = call(lambda: match_psf(image, TARGET, source_psf=SOURCE,
                                                 kernel_size=7))
    assert_package_warnings(caught)
    assert_refusal(exc, "image", "kernel_size")


def _psf(values):
    return np.asarray(values, dtype=float)


BAD_PSFS = {
    "None": None, "str": "gaussian", "1-D": SOURCE[7], "3-D": SOURCE[np.newaxis],
    "empty": np.zeros((0, 0)), "even": SOURCE[:14, :14], "even columns": SOURCE[:, :14],
    "NaN": np.where(SOURCE > 0.05, np.nan, SOURCE), "inf": np.where(SOURCE > 0.05, np.inf, SOURCE),
    "zeros": np.zeros((15, 15)), "negative": -SOURCE, "sum ~0": SOURCE - SOURCE.mean(),
    "cancelling": np.pad(_psf([[1.0, -1.0 + 1e-16]]), ((1, 1), (1, 0))),
    "subnormal": SOURCE * 5e-324, "complex": SOURCE.astype(complex),
    "ragged": [[1.0, 2.0, 1.0], [3.0]], "strings": np.full((15, 15), "0.1"),
    "object": SOURCE.astype(object),
}


@pytest.mark.parametrize("which", ["source_psf", "target_psf"])
@pytest.mark.parametrize("label", list(BAD_PSFS))
def test_match_psf_refuses_bad_psfs(which, label):
    psfs = {"source_psf": SOURCE, "target_psf": TARGET, which: BAD_PSFS[label]}
    if label == "None" and which == "source_psf":
        names = ("source_psf", "image.psf")
    else:
        names = (which,)
    result, exc, caught = call(lambda: match_psf(np.zeros((64, 64)), psfs["target_psf"],
                                                 source_psf=psfs["source_psf"], kernel_size=7))
    assert_package_warnings(caught)
    assert_refusal(exc, *names)


@pytest.mark.parametrize("peak", [1e308, 1e-300], ids=["overflowing sum", "tiny"])
def test_psf_arrays_of_extreme_scale_are_the_same_psf(peak):
    # a PSF is normalized: values whose sum overflows float64 (or tiny ones) describe
    # the same PSF, and give the same match (to the round-off of scaling the arrays)
    image = np.random.default_rng(3).normal(size=(64, 64))
    reference = match_psf(image, TARGET, source_psf=SOURCE, kernel_size=7)
    scaled = SOURCE / SOURCE.max() * peak
    for source, target in ((scaled, TARGET), (SOURCE, TARGET / TARGET.max() * peak)):
        result = result_or_refusal(lambda s=source, t=target: match_psf(
            image, t, source_psf=s, kernel_size=7), "source_psf", "target_psf")
        assert result is not None
        np.testing.assert_allclose(result.matched.data, reference.matched.data, rtol=0,
                                   atol=1e-9, equal_nan=True)


@examples(15)
@given(psf=st.tuples(hnp.arrays(dtype=np.float64,
                                shape=st.tuples(st.sampled_from([1, 3, 5, 7, 9]),
                                                st.sampled_from([1, 3, 5, 7, 9])),
                                elements=st.floats(-1.0, 1.0, width=16)),
                     st.sampled_from([np.float64, np.float32, ">f8", np.int16]),
                     st.sampled_from([1.0, 100.0, 1e-300, 1e300])).map(
           lambda t: (t[0] * 100).astype(np.int16) if t[1] == np.int16 else
           (t[0] * t[2]).astype(t[1] if t[1] != np.float32 or t[2] <= 100 else np.float64)),
       which=st.sampled_from(["source_psf", "target_psf"]))
def test_match_psf_any_psf_array(psf, which):
    # a consistent result for any PSF array it accepts: a constant image stays constant
    psfs = {"source_psf": SOURCE, "target_psf": TARGET, which: psf}
    before = snapshot(psf)
    result = result_or_refusal(lambda: match_psf(np.full((64, 64), 3.0), psfs["target_psf"],
                                                 source_psf=psfs["source_psf"], kernel_size=7,
                                                 kernel_basis="alard-lupton"), which)
    if result is not None:
        assert_consistent_match(result, np.zeros((64, 64), dtype=bool), level=3.0,
                                tolerance=1e-6)
    assert_same(before, snapshot(psf))


BAD_MASKS = {
    "strings": np.full((64, 64), "False"), "complex": np.zeros((64, 64), dtype=complex),
    "object": np.zeros((64, 64), dtype=object), "wrong shape": np.zeros((64, 63), dtype=bool),
    "scalar": np.array(False), "ragged": [[False], [True, False]],
}


@pytest.mark.parametrize("label", list(BAD_MASKS))
def test_match_psf_refuses_bad_masks(label):
    image = NDData(np.zeros((64, 64)), mask=BAD_MASKS[label])
    result, exc, caught = call(lambda: match_psf(image, TARGET, source_psf=SOURCE,
                                                 kernel_size=7))
    assert_package_warnings(caught)
    assert_refusal(exc, "mask")


BAD_UNCERTAINTIES = {
    "negative std": StdDevUncertainty(-np.ones((64, 64))),
    "negative variance": VarianceUncertainty(np.full((64, 64), -1e-300)),
    "negative inverse variance": InverseVariance(-np.ones((64, 64))),
    "one negative": VarianceUncertainty(np.where(np.eye(64, dtype=bool), -1.0, 1.0)),
    "wrong shape": StdDevUncertainty(np.ones((64, 63))),
    "strings": StdDevUncertainty(np.full((64, 64), "1")),
    "complex": VarianceUncertainty(np.ones((64, 64), dtype=complex)),
    "unknown kind": UnknownUncertainty(np.ones((64, 64))),
}


@pytest.mark.parametrize("label", list(BAD_UNCERTAINTIES))
def test_match_psf_refuses_bad_uncertainties(label):
    image = NDData(np.zeros((64, 64)), uncertainty=BAD_UNCERTAINTIES[label])
    result, exc, caught = call(lambda: match_psf(image, TARGET, source_psf=SOURCE,
                                                 kernel_size=7))
    assert_package_warnings(caught)
    assert_refusal(exc, "uncertainty")


@examples(10)
@given(sigma=st.one_of(magnitudes(-320, 308), st.just(0.0)),
       kind=st.sampled_from([StdDevUncertainty, VarianceUncertainty, InverseVariance]),
       dtype=st.sampled_from([np.float64, np.float32]))
def test_match_psf_uncertainty_of_any_size(sigma, kind, dtype):
    # any finite uncertainty: propagated (variance >= 0 and finite, nothing over-masked)
    # or refused naming the uncertainty
    with np.errstate(all="ignore"):
        sigma = np.float64(sigma)
        values = float({StdDevUncertainty: sigma, VarianceUncertainty: sigma**2,
                        InverseVariance: sigma**-2 if sigma else np.inf}[kind])
    if not math.isfinite(values):
        return
    image = NDData(np.full((64, 64), 1.0, dtype=dtype),
                   uncertainty=kind(np.full((64, 64), values)))
    bad = np.zeros((64, 64), dtype=bool)
    if kind is InverseVariance and values == 0:
        bad[:] = True
    result = result_or_refusal(lambda: match_psf(image, TARGET, source_psf=SOURCE,
                                                 kernel_size=7), "uncertainty")
    if result is not None:
        assert_consistent_match(result, bad, level=1.0, tolerance=1e-5)


def test_uncertainties_in_other_units_are_converted():
    data = np.random.default_rng(1).normal(size=(64, 64))
    in_jy = CCDData(data, unit="Jy", uncertainty=StdDevUncertainty(np.full((64, 64), 0.5)))
    in_mjy = CCDData(data, unit="Jy",
                     uncertainty=StdDevUncertainty(np.full((64, 64), 500.0), unit="mJy"))
    as_variance = NDData(data, unit="Jy",
                         uncertainty=VarianceUncertainty(np.full((64, 64), 2.5e5), unit="mJy2"))
    results = [match_psf(image, TARGET, source_psf=SOURCE, kernel_size=7)
               for image in (in_jy, in_mjy, as_variance)]
    reference = results[0].matched.uncertainty.array
    for result in results[1:]:
        array = result.matched.uncertainty.array
        if isinstance(result.matched.uncertainty, VarianceUncertainty):
            array = np.sqrt(array)
        np.testing.assert_allclose(array, reference, rtol=1e-12, equal_nan=True)


@pytest.mark.parametrize("basis", ["auto", "alard-lupton", "delta-function"])
def test_identical_source_and_target(basis):
    # the kernel turns the PSF into itself (exactly: a delta function, with 'auto')
    image = np.random.default_rng(2).normal(size=(80, 96))
    result = match_psf(image, SOURCE, source_psf=SOURCE, kernel_size=7, kernel_basis=basis)
    assert_consistent_match(result, np.zeros(image.shape, dtype=bool))
    quality = result.metadata["quality"]
    assert quality["passed"] and quality["heldout_residual_max"] <= quality["max_residual"]
    mask = result.matched.mask
    if basis == "auto":
        np.testing.assert_allclose(result.matched.data[~mask], image[~mask], atol=1e-9)
    flat = match_psf(np.full((80, 96), 7.0), SOURCE, source_psf=SOURCE, kernel_size=7,
                     kernel_basis=basis)
    assert_consistent_match(flat, np.zeros(image.shape, dtype=bool), level=7.0, tolerance=1e-9)


def test_kernel_as_large_as_the_image():
    image = np.full((32, 32), 5.0)
    result = match_psf(image, TARGET, source_psf=SOURCE, kernel_size=31,
                       kernel_basis="alard-lupton")
    assert_consistent_match(result, np.zeros((32, 32), dtype=bool), level=5.0, tolerance=1e-9)
    with pytest.raises(ValueError, match="kernel_size"):
        match_psf(image, TARGET, source_psf=SOURCE, kernel_size=33)


def test_narrower_target_warns_of_a_deconvolution():
    image = np.full((64, 64), 1.0)
    with pytest.warns(AstropyUserWarning, match="narrower than the source PSF"):
        result = match_psf(image, SOURCE, source_psf=TARGET, kernel_size=9,
                           kernel_basis="alard-lupton", max_residual=1.0)
    assert_consistent_match(result, np.zeros((64, 64), dtype=bool), level=1.0, tolerance=1e-9)


def test_float32_outlier_warns():
    image = np.random.default_rng(3).normal(size=(64, 64)).astype(np.float32)
    image[10, 10] = 1e12
    with pytest.warns(AstropyUserWarning, match="float32"):
        match_psf(image, TARGET, source_psf=SOURCE, kernel_size=7)


def test_small_grid_lowers_the_spatial_order_with_a_warning():
    with pytest.warns(AstropyUserWarning, match="spatial_order"):
        result = match_psf(np.zeros((96, 96)), TARGET, source_psf=SOURCE, kernel_size=7,
                           spatial_model="chebyshev1", spatial_order=4, cell_size=48)
    assert result.config.spatial_order < 4


def test_psf_grid_not_covering_the_image_warns():
    data = np.stack([realize_psf(CircularGaussianPRF(fwhm=f), 0, 0, size=15)
                     for f in (2.4, 2.5, 2.6, 2.7)])
    grid = GriddedPSFModel(NDData(data, meta={"grid_xypos": [(10, 10), (20, 10), (10, 20),
                                                             (20, 20)], "oversampling": 1}))
    with pytest.warns(AstropyUserWarning, match="beyond the ePSF grid"):
        match_psf(np.zeros((48, 48)), TARGET, source_psf=grid, kernel_size=7)


def test_unreached_target_warns_match_quality():
    with pytest.warns(MatchQualityWarning, match="max_residual"):
        result = match_psf(np.full((64, 64), 1.0), TARGET, source_psf=SOURCE, kernel_size=3)
    assert not result.metadata["quality"]["passed"]
    assert_consistent_match(result, np.zeros((64, 64), dtype=bool), level=1.0, tolerance=1e-9)


def test_off_centre_psf_array_warns():
    with pytest.warns(AstropyUserWarning, match="centre") as caught:
        result = match_psf(np.full((64, 64), 1.0), TARGET, source_psf=np.roll(SOURCE, 4, axis=1),
                           kernel_size=7, max_residual=10.0)
    assert all(issubclass(w.category, AstropyUserWarning) for w in caught)
    assert_consistent_match(result, np.zeros((64, 64), dtype=bool), level=1.0, tolerance=1e-9)


# --------------------------------------------------------------------------- reported bugs


@pytest.mark.parametrize(("dtype", "value"), [(np.float64, 1e306), (np.float32, 1e36)])
def test_reported_huge_finite_pixels_give_finite_output(dtype, value):
    # finite pixel values above ~finfo.max / 2**16 overflow in the FFTs: every unmasked
    # output pixel is NaN, silently (and the command line writes that file)
    image = np.full((64, 64), value, dtype=dtype)
    result = result_or_refusal(lambda: match_psf(image, TARGET, source_psf=SOURCE,
                                                 kernel_size=7), "image")
    if result is not None:
        assert_consistent_match(result, np.zeros((64, 64), dtype=bool), level=float(value),
                                tolerance=1e-5 * value)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_reported_huge_standard_deviations(dtype):
    # std 1e160: its variance overflows float64 -- float64 data: a NumPy RuntimeWarning
    # and every pixel masked; float32 data: OverflowError from _float32_safe
    image = NDData(np.ones((64, 64), dtype=dtype),
                   uncertainty=StdDevUncertainty(np.full((64, 64), 1e160)))
    result = result_or_refusal(lambda: match_psf(image, TARGET, source_psf=SOURCE,
                                                 kernel_size=7), "uncertainty")
    if result is not None:
        assert_consistent_match(result, np.zeros((64, 64), dtype=bool), level=1.0,
                                tolerance=1e-5)


def test_reported_subnormal_inverse_variance():
    # InverseVariance 5e-324: 1 / 5e-324 overflows with a NumPy RuntimeWarning; every
    # pixel is masked
    image = NDData(np.ones((64, 64)), uncertainty=InverseVariance(np.full((64, 64), 5e-324)))
    result = result_or_refusal(lambda: match_psf(image, TARGET, source_psf=SOURCE,
                                                 kernel_size=7), "uncertainty")
    if result is not None:
        assert_consistent_match(result, np.zeros((64, 64), dtype=bool), level=1.0,
                                tolerance=1e-9)


def test_reported_off_centre_delta_target_warns_from_numpy():
    # a delta-function target two pixels off centre (shape (1, 5)), Alard-Lupton basis:
    # the quality verdict's adaptive moments weight every pixel by ~0 and divide 0 by 0
    # (RuntimeWarning at moments.adaptive_moments, "mx = ... / total")
    target = np.array([[0.0, 0.0, 0.0, 0.0, 1.0]])
    result = result_or_refusal(lambda: match_psf(np.full((64, 64), 1.0), target,
                                                 source_psf=SOURCE, kernel_size=7,
                                                 kernel_basis="alard-lupton"), "target_psf")
    if result is not None:
        assert_consistent_match(result, np.zeros((64, 64), dtype=bool), level=1.0,
                                tolerance=1e-9)


@pytest.mark.parametrize(("source", "options"), [
    (np.ones((15, 15)), {"kernel_size": 7, "kernel_basis": "alard-lupton"}),
    (np.ones((255, 255)), {"kernel_size": 7}),
    (np.ones((63, 63)), {"kernel_size": 7}),
], ids=["flat-15-alard-lupton", "flat-255-auto", "flat-63-auto"])
def test_reported_flat_source_psf(source, options):
    # a flat (constant) source PSF: the kernel sum is -6.4e17 or -4.6e18 instead of 1 and
    # a constant image of 1 comes out between -1.7 and -0.5 (only a MatchQualityWarning);
    # with 'auto' and 63 x 63: "normalize=True needs a finite non-zero kernel sum, got 0.0;
    # use normalize=False", a parameter match_psf does not have
    result = result_or_refusal(lambda: match_psf(np.ones((64, 64)), TARGET, source_psf=source,
                                                 **options), "source_psf")
    if result is not None:
        assert_consistent_match(result, np.zeros((64, 64), dtype=bool), level=1.0,
                                tolerance=1e-6)


def test_reported_automatic_kernel_larger_than_the_image():
    # kernel_size=None with a broad target: the solve runs, then the convolution refuses
    # "data of shape (24, 24) is smaller than the 27 x 27 kernel" (no parameter named)
    result, exc, caught = call(lambda: match_psf(np.zeros((24, 24)),
                                                 CircularGaussianPRF(fwhm=6.0),
                                                 source_psf=SOURCE))
    assert_package_warnings(caught)
    assert_refusal(exc, "image", "kernel_size")


def test_reported_workers_start_at_most_the_threads_needed(monkeypatch):
    # workers=10**6 submits one loop per worker and the pool grows towards 10**6 threads
    # (RuntimeError: can't start new thread after ~150 s); a 300 x 300 image has a few
    # tiles: more threads than tiles (or than CPUs) do nothing
    started = []
    original = threading.Thread.start

    def start(self):
        started.append(self)
        return original(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    image = np.zeros((300, 300))
    match_psf(image, TARGET, source_psf=SOURCE, kernel_size=7, workers=2000)
    limit = max(os.cpu_count() or 1, 16)
    assert len(started) <= limit, f"{len(started)} threads started for a 300 x 300 image"


@pytest.mark.parametrize("options", [
    {"grow_cells": 10**40, "spatial_model": "chebyshev1", "cell_size": 32},
    {"pad_psf_by": 10**40, "kernel_basis": "alard-lupton", "auto_pad_psf": False},
    {"alard_min_sigma": 1e300, "kernel_basis": "alard-lupton", "scale_by_fwhm": True},
    {"kernel_size_fwhm_scaling": 1e300, "kernel_basis": "alard-lupton", "scale_by_fwhm": True},
    {"alard_gauss_beta": 1e300, "kernel_basis": "alard-lupton", "scale_by_fwhm": True},
], ids=["grow_cells", "pad_psf_by", "alard_min_sigma", "kernel_size_fwhm_scaling",
        "alard_gauss_beta"])
def test_reported_huge_option_values(options):
    # accepted by MatchConfig, then NumPy's "Maximum allowed size exceeded" (no option
    # named) or an OverflowError; grow_cells=1000 with cell_size=32 is killed for memory
    name = next(iter(options))
    options = {"kernel_size": 7, **options} if "scale_by_fwhm" not in options else options
    result, exc, caught = call(lambda: match_psf(np.zeros((96, 96)), TARGET, source_psf=SOURCE,
                                                 **options))
    assert_package_warnings(caught)
    if exc is not None:
        assert_refusal(exc, name)


# =========================================================================== MatchConfig


def config_fields():
    import dataclasses

    return [f.name for f in dataclasses.fields(MatchConfig)]


ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([5e-324, -5e-324, 1e300, -1e300, 0, -1, 10**40]), st.text(max_size=4),
    st.lists(st.one_of(st.integers(-3, 5), st.floats(allow_nan=True)), max_size=4),
    st.tuples(st.integers(-3, 200), st.integers(-3, 200)),
    st.sampled_from([np.float64(math.nan), np.int64(3), np.array([1.0, 2.0]), {1, 2},
                     {"a": 1}, b"x", 1j, object()]))


@examples(200)
@given(name=st.sampled_from(config_fields()), value=ANY_VALUE)
def test_match_config_accepts_or_refuses_naming_the_option(name, value):
    before = list(value) if isinstance(value, list) else None
    result, exc, caught = call(lambda: MatchConfig(**{name: value}))
    assert all(issubclass(w.category, Warning) for w in caught)
    if exc is not None:
        assert_refusal(exc, name, kinds=(ValueError,))  # every bad option is a ValueError
        if isinstance(exc, TypeError):
            assert isinstance(exc, ValueError)
        return
    stored = getattr(result, name)
    # what is stored is plain and round-trips
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyDeprecationWarning)  # alard_degree_deconv
        assert MatchConfig.from_dict(result.to_dict()) == result
    if isinstance(stored, float):
        assert math.isfinite(stored)
    assert before is None or before == value, "the option's list was modified"


@examples(30)
@given(options=st.one_of(st.none(), st.integers(), st.text(max_size=3),
                         st.lists(st.integers(), max_size=2),
                         st.dictionaries(st.text(max_size=6), ANY_VALUE, max_size=2)))
def test_match_config_from_dict(options):
    result, exc, caught = call(lambda: MatchConfig.from_dict(options))
    if exc is not None:
        assert_refusal(exc, "option", *(options if isinstance(options, dict) else ()),
                       kinds=(ValueError,))


# =========================================================================== SpatialKernel.read


@st.composite
def kernels(draw):
    size = draw(st.sampled_from([3, 5, 7]))
    sigmas = draw(st.lists(st.floats(0.6, 2.5), min_size=1, max_size=2, unique=True).filter(
        lambda s: len(s) < 2 or abs(s[0] - s[1]) > 0.2))
    degrees = [draw(st.integers(0, 1)) for _ in sigmas]
    basis = make_alard_lupton_basis(size, sigmas, degrees)
    model = draw(st.sampled_from(["chebyshev1", "polynomial", "bilinear"]))
    values = st.floats(-10, 10, allow_subnormal=False)
    if model == "bilinear":
        nx, ny = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        nodes = (np.cumsum(draw(st.lists(st.floats(1, 50), min_size=nx, max_size=nx))),
                 np.cumsum(draw(st.lists(st.floats(1, 50), min_size=ny, max_size=ny))))
        coefficients = np.array([[draw(values) for _ in range(nx * ny)]
                                 for _ in range(len(basis))])
        coefficients[0] = draw(st.floats(0.1, 10))  # the node kernels share one sum
        return SpatialKernel(basis, coefficients, spatial_model="bilinear", nodes=nodes)
    order = draw(st.integers(0, 2))
    terms = (order + 1) * (order + 2) // 2
    coefficients = np.array([[draw(values) for _ in range(terms)] for _ in range(len(basis))])
    return SpatialKernel(basis, coefficients, spatial_model=model, spatial_order=order,
                         bbox=(0.0, draw(st.floats(10, 1e4)), 0.0, draw(st.floats(10, 1e4))))


def same_kernel(a, b):
    return (a.spatial_model == b.spatial_model and a.spatial_order == b.spatial_order
            and np.array_equal(a.basis, b.basis) and np.array_equal(a.coefficients,
                                                                    b.coefficients)
            and a.bbox == b.bbox)


def read_or_refusal(path):
    return result_or_refusal(lambda: SpatialKernel.read(path), str(path),
                             kinds=(ValueError, FileNotFoundError))


@examples(15)
@given(kernel=kernels())
def test_kernel_file_round_trip(kernel):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.fits"
        kernel.write(path)
        assert same_kernel(SpatialKernel.read(path), kernel)
        assert same_kernel(SpatialKernel.read(str(path)), kernel)


KEYWORDS = ("KFORMAT", "KFVERS", "SPMODEL", "SPORDER", "BBXMIN", "BBXMAX", "BBYMIN", "BBYMAX")
GARBLED = st.one_of(st.just("delete"), st.text(st.characters(min_codepoint=32, max_codepoint=126),
                                               max_size=8), st.booleans(),
                    st.floats(-1e300, 1e300).filter(lambda v: not float(v).is_integer()),
                    st.sampled_from([-1, 0, 3, 10**6, -(10**6)]))


@examples(25)
@given(kernel=kernels(), keyword=st.sampled_from(KEYWORDS), value=GARBLED)
def test_kernel_file_with_garbled_keywords(kernel, keyword, value):
    # a keyword removed or set to a value of the wrong type or kind: refused naming the
    # file, or (a keyword the model does not use, a bbox value still valid) read back
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.fits"
        hdul = kernel.to_hdulist()
        header = hdul[0].header
        if keyword not in header:
            return
        if value == "delete":
            del header[keyword]
        else:
            header[keyword] = value
        hdul.writeto(path)
        data = path.read_bytes()
        result = read_or_refusal(path)
        assert path.read_bytes() == data
        if result is None:
            return
        if keyword.startswith("BB"):  # a different, valid box: a different kernel
            assert result.bbox != kernel.bbox or same_kernel(result, kernel)
        else:
            assert same_kernel(result, kernel)


@examples(20)
@given(kernel=kernels(),
       edit=st.sampled_from(["NaN coefficient", "inf basis", "empty coefficients",
                             "no COEFFS", "no basis", "even basis", "3-D coefficients",
                             "one coefficient less", "nodes reversed",
                             "no nodes", "nodes NaN", "version 3", "version 0",
                             "not a kernel"]))
def test_kernel_file_with_bad_contents(kernel, edit):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.fits"
        hdul = fits.HDUList([hdu.copy() for hdu in kernel.to_hdulist()])
        for hdu in hdul:
            if hdu.data is not None:
                hdu.data = np.array(hdu.data)  # writeable copies
        bilinear = "NODES_X" in hdul
        if edit == "NaN coefficient":
            hdul["COEFFS"].data.flat[0] = np.nan
        elif edit == "inf basis":
            hdul[0].data.flat[-1] = np.inf
        elif edit == "empty coefficients":
            hdul["COEFFS"].data = np.zeros((0,))
        elif edit == "no COEFFS":
            del hdul["COEFFS"]
        elif edit == "no basis":
            hdul[0].data = None
        elif edit == "even basis":
            hdul[0].data = np.ascontiguousarray(hdul[0].data[:, 1:, 1:])
        elif edit == "3-D coefficients":
            hdul["COEFFS"].data = hdul["COEFFS"].data[np.newaxis, np.newaxis]
        elif edit == "one coefficient less":
            hdul["COEFFS"].data = np.ascontiguousarray(hdul["COEFFS"].data[:, :-1])
        elif edit == "no nodes":
            if not bilinear:
                return
            del hdul["NODES_X"]
        elif edit == "nodes reversed":
            if not bilinear or hdul["NODES_X"].data.size < 2:
                return
            hdul["NODES_X"].data = hdul["NODES_X"].data[::-1].copy()
        elif edit == "nodes NaN":
            if not bilinear:
                return
            hdul["NODES_Y"].data = hdul["NODES_Y"].data * np.nan
        elif edit.startswith("version"):
            hdul[0].header["KFVERS"] = int(edit.split()[1])
        else:
            hdul[0].header["KFORMAT"] = "SOMETHING-ELSE"
        hdul.writeto(path)
        assert read_or_refusal(path) is None, f"{edit}: read without complaint"


@pytest.mark.parametrize("where_", ["missing", "directory", "text", "empty", "plain FITS"])
def test_kernel_read_refuses_what_is_not_a_kernel(tmp_path, where_):
    path = {"missing": tmp_path / "nope.fits", "directory": tmp_path,
            "text": tmp_path / "text.fits", "empty": tmp_path / "empty.fits",
            "plain FITS": tmp_path / "plain.fits"}[where_]
    (tmp_path / "text.fits").write_text("SIMPLE = no, just text")
    (tmp_path / "empty.fits").write_bytes(b"")
    fits.PrimaryHDU(np.zeros((3, 3))).writeto(tmp_path / "plain.fits")
    assert read_or_refusal(path) is None


@pytest.mark.parametrize("path", [None, "", 3, object()], ids=["None", "empty", "int", "object"])
def test_reported_kernel_read_of_a_bad_path(path):
    # None and '' end in astropy's "Empty filename" (hdulist.py); 3 and object() in
    # "File-like object does not have a 'write' method, required for mode 'ostream'"
    result, exc, caught = call(lambda: SpatialKernel.read(path))
    assert_package_warnings(caught)
    assert_refusal(exc, "path", repr(path))
    assert "'write' method" not in str(exc), f"misleading message: {exc}"


@examples(25)
@given(kernel=kernels(), cut=st.floats(0.0, 1.0, exclude_max=True))
def test_reported_truncated_kernel_file(kernel, cut):
    # truncated inside the data: TypeError "buffer is too small for requested array"
    # from numpy (astropy's readarray), after astropy's "File may have been truncated"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.fits"
        kernel.write(path)
        data = path.read_bytes()
        path.write_bytes(data[:int(cut * len(data))])
        result = read_or_refusal(path)
        assert result is None or same_kernel(result, kernel), "a truncated file read wrong"


@pytest.mark.parametrize("hdu", [0, 1], ids=["basis", "COEFFS"])
def test_reported_corrupted_kernel_data_is_read_silently(tmp_path, hdu):
    # the file carries CHECKSUM/DATASUM cards but read() does not verify them: one
    # flipped bit in the data gives a kernel whose sum is 1.00006 instead of 1, silently
    basis = make_alard_lupton_basis(7, [1.0, 2.0], [1, 0])
    coefficients = np.zeros((len(basis), 3))
    coefficients[0] = [1.0, 0.1, 0.2]
    kernel = SpatialKernel(basis, coefficients, spatial_model="chebyshev1", spatial_order=1,
                           bbox=(0, 99, 0, 99))
    path = tmp_path / "kernel.fits"
    kernel.write(path)
    with fits.open(path) as hdul:
        offset = hdul.fileinfo(hdu)["datLoc"]
    data = bytearray(path.read_bytes())
    data[offset + 3] ^= 0x40
    path.write_bytes(bytes(data))
    result = read_or_refusal(path)
    assert result is None or same_kernel(result, kernel), "a corrupted file was read silently"


@pytest.mark.parametrize("extension", ["COEFFS", "NODES_X"])
def test_reported_kernel_file_with_a_table_extension(tmp_path, extension):
    # a table where an image is expected: "could not convert string to float:
    # np.bytes_(b'x')" (COEFFS: without the file or the extension named)
    basis = make_alard_lupton_basis(5, [1.0], [0])
    kernel = SpatialKernel(basis, [[1.0, 1.0]], spatial_model="bilinear",
                           nodes=([0.0, 99.0], [50.0]))
    hdul = kernel.to_hdulist()
    hdul[extension] = fits.BinTableHDU.from_columns(
        [fits.Column(name="a", format="4A", array=np.array(["x"]))], name=extension)
    path = tmp_path / "kernel.fits"
    hdul.writeto(path)
    result, exc, caught = call(lambda: SpatialKernel.read(path))
    assert_package_warnings(caught)
    assert_refusal(exc, str(path), kinds=(ValueError,))
    assert extension in str(exc), f"the message does not name {extension}: {exc}"


# =========================================================================== common_target_psf


@st.composite
def exposure_psfs(draw):
    psfs = []
    for _ in range(draw(st.integers(1, 3))):
        x_fwhm, y_fwhm = draw(st.floats(1.2, 6.0)), draw(st.floats(1.2, 6.0))
        kind = draw(st.sampled_from(["model", "array", "list", "bigendian", "fortran"]))
        model = GaussianPRF(x_fwhm=x_fwhm, y_fwhm=y_fwhm, theta=draw(st.floats(0, 180)))
        if kind == "model":
            psfs.append(model)
            continue
        array = realize_psf(model, 0.0, 0.0, size=draw(st.sampled_from([21, 25, 31, 41])))
        array = array * draw(magnitudes(-300, 300))
        psfs.append({"array": array, "list": array.tolist(),
                     "bigendian": array.astype(">f8"),
                     "fortran": np.asfortranarray(array)}[kind])
    return psfs


@examples(10)
@given(psfs=exposure_psfs(), margin=st.floats(1.0, 10.0),
       profile=st.sampled_from(["gaussian", "moffat", "Gaussian", "MOFFAT"]),
       beta=st.floats(1.5, 10.0))
def test_common_target_is_broader_than_every_input(psfs, margin, profile, beta):
    before = snapshot(psfs)
    result, exc, caught = call(lambda: common_target_psf(psfs, margin=margin, profile=profile,
                                                         beta=beta))
    assert exc is None, f"{type(exc).__name__} at {where(exc)}: {exc}"
    assert_package_warnings(caught)
    assert math.isfinite(result.fwhm) and result.fwhm > 0
    assert np.all(np.isfinite(result.major_fwhm)) and np.all(np.isfinite(result.fwhm_range))
    assert result.fwhm >= margin * result.major_fwhm.max() * (1 - 1e-9)
    assert result.required_fwhm == pytest.approx(result.major_fwhm.max())
    assert_same(before, snapshot(psfs))


BAD_TARGET_ARGUMENTS = [
    ("psfs", None), ("psfs", []), ("psfs", "psf.fits"), ("psfs", SOURCE),
    ("psfs", CircularGaussianPRF(fwhm=2.0)), ("psfs", (p for p in [SOURCE])),
    ("psfs", [None]), ("psfs", ["psf.fits"]), ("psfs", [SOURCE[:14, :14]]),
    ("psfs", [np.full((15, 15), np.nan)]), ("psfs", [SOURCE - SOURCE.mean()]),
    ("psfs", [[[1.0, 2.0], [3.0]]]), ("psfs", [NDData(np.zeros((9, 9)))]),
    ("margin", 0.5), ("margin", math.nan), ("margin", math.inf), ("margin", 11.0),
    ("margin", 5e-324), ("margin", "1.1"), ("margin", None), ("margin", True),
    ("beta", 1.0), ("beta", math.nan), ("beta", "2"), ("profile", "airy"), ("profile", None),
    ("profile", 1), ("n_samples", 1), ("n_samples", 2.0), ("n_samples", True),
    ("shapes", (0, 0)), ("shapes", (-1, 64)), ("shapes", (64,)), ("shapes", "64x64"),
    ("shapes", [(64, 64), (64, 64)]), ("shapes", [(0, 64)]), ("shapes", (64.0, 64.0)),
]


@pytest.mark.parametrize(("name", "value"), BAD_TARGET_ARGUMENTS,
                         ids=[f"{n}={str(v)[:20]!r}" for n, v in BAD_TARGET_ARGUMENTS])
def test_common_target_refuses_bad_arguments(name, value):
    arguments = {"psfs": [CircularGaussianPRF(fwhm=3.0)], "profile": "moffat",
                 "shapes": (64, 64), name: value}
    result, exc, caught = call(lambda: common_target_psf(**arguments))
    assert_package_warnings(caught)
    assert_refusal(exc, name)


@pytest.mark.parametrize(("name", "value"), [("n_samples", 10**6), ("n_samples", 10**40),
                                             ("beta", 1e300)])
def test_reported_common_target_huge_values(name, value):
    # n_samples=10**6: MemoryError in numpy (a 10**6 x 10**6 meshgrid); 10**40: numpy's
    # "Maximum allowed size exceeded"; beta=1e300: "target has a non-positive sum ..."
    # (beta is not named)
    arguments = {"psfs": [CircularGaussianPRF(fwhm=3.0)], "profile": "moffat",
                 "shapes": (64, 64), name: value}
    result, exc, caught = call(lambda: common_target_psf(**arguments))
    assert_package_warnings(caught)
    if exc is not None:
        assert_refusal(exc, name)


# =========================================================================== coadd


@st.composite
def coadd_inputs(draw):
    ny, nx = draw(st.integers(12, 40)), draw(st.integers(12, 40))
    wcs = make_wcs((nx / 2, ny / 2))
    images, invalid = [], []
    for _ in range(draw(st.integers(1, 3))):
        value = draw(st.floats(-1e6, 1e6))
        sigma = draw(magnitudes(-100, 100))
        dtype = draw(st.sampled_from(["float64", "float32", ">f8"]))
        with np.errstate(under="ignore"):
            data = np.full((ny, nx), value, dtype=dtype)
        value = float(data[0, 0])  # as the dtype holds it
        bad = np.zeros((ny, nx), dtype=bool)
        for y, x in draw(st.lists(st.tuples(st.integers(0, ny - 1), st.integers(0, nx - 1)),
                                  max_size=3)):
            data[y, x] = np.nan
            bad[y, x] = True
        mask = np.zeros((ny, nx), dtype=bool)
        for y, x in draw(st.lists(st.tuples(st.integers(0, ny - 1), st.integers(0, nx - 1)),
                                  max_size=3)):
            mask[y, x] = True
        bad |= mask
        kind = draw(st.sampled_from([StdDevUncertainty, VarianceUncertainty, InverseVariance]))
        array = {StdDevUncertainty: sigma, VarianceUncertainty: sigma**2,
                 InverseVariance: sigma**-2}[kind]
        images.append(CCDData(data, unit="electron", wcs=wcs.deepcopy(), mask=mask,
                              uncertainty=kind(np.full((ny, nx), array))))
        invalid.append((bad, value, sigma**2))
    combine = draw(st.sampled_from(["mean", "sum"]))
    weights = draw(st.sampled_from([None, "uniform", "inverse-variance"]))
    return images, invalid, wcs, (ny, nx), combine, weights


@examples(10)
@given(case=coadd_inputs())
def test_coadd_is_the_weighted_mean(case):
    pytest.importorskip("reproject")
    images, invalid, wcs, shape, combine, weights = case
    before = snapshot(images)
    result, exc, caught = call(lambda: coadd(images, wcs, shape, combine=combine,
                                             weights=weights))
    assert exc is None, f"{type(exc).__name__} at {where(exc)}: {exc}"
    assert_package_warnings(caught)
    data, mask = np.asarray(result.data), np.asarray(result.mask)
    variance = None
    if result.uncertainty is not None:
        variance = np.asarray(result.uncertainty.array, dtype=float)
        if isinstance(result.uncertainty, StdDevUncertainty):
            variance = variance**2
        elif isinstance(result.uncertainty, InverseVariance):
            with np.errstate(divide="ignore"):
                variance = 1 / variance
    assert np.all(np.isnan(data[mask])) and np.all(np.isfinite(data[~mask]))
    if variance is not None:
        assert np.all(np.isfinite(variance[~mask])) and np.all(variance[~mask] >= 0)
    every_bad = np.logical_and.reduce([bad for bad, _, _ in invalid])
    assert np.all(mask[every_bad]), "pixels without valid input must be masked"
    # away from every bad pixel (interpolation spreads them by a pixel)
    near = np.logical_or.reduce([binary_dilation(bad, np.ones((5, 5), dtype=bool))
                                 for bad, _, _ in invalid])
    clean = ~near
    if not clean.any():
        return
    values = np.array([v for _, v, _ in invalid])
    variances = np.array([s for _, _, s in invalid])
    inverse = weights == "inverse-variance" or (weights is None and combine == "mean")
    w = 1 / variances if inverse else np.ones(len(values))
    if combine == "mean":
        expected = np.sum(w * values) / np.sum(w)
        expected_var = 1 / np.sum(w) if inverse else np.sum(variances) / len(values)**2
        atol = 1e-6 * np.sum(np.abs(w * values)) / np.sum(w)
    else:
        expected = np.sum(w * values)
        expected_var = np.sum(w) if inverse else np.sum(variances)
        atol = 1e-6 * np.sum(np.abs(w * values))
    np.testing.assert_allclose(data[clean], expected, rtol=1e-6, atol=atol)
    if variance is not None:
        np.testing.assert_allclose(variance[clean], expected_var, rtol=1e-5)
    assert_same(before, snapshot(images))


def _coadd_arguments():
    wcs = make_wcs()
    good = CCDData(np.ones((20, 24)), unit="adu", wcs=wcs,
                   uncertainty=StdDevUncertainty(np.ones((20, 24))))
    return wcs, good


def _bad_coadd_cases():
    wcs, good = _coadd_arguments()
    no_wcs = CCDData(np.ones((20, 24)), unit="adu")
    cube = NDData(np.ones((2, 20, 24)), wcs=WCS(naxis=3))
    other_unit = CCDData(np.ones((20, 24)), unit="m", wcs=wcs)
    negative = CCDData(np.ones((20, 24)), unit="adu", wcs=wcs,
                       uncertainty=VarianceUncertainty(-np.ones((20, 24))))
    return [
        ("matched", {"matched": None}), ("matched", {"matched": []}),
        ("matched", {"matched": good}), ("matched", {"matched": "a.fits"}),
        ("matched", {"matched": [None]}), ("matched", {"matched": [no_wcs]}),
        ("matched", {"matched": [cube]}), ("matched", {"matched": [good, other_unit]}),
        ("matched", {"matched": [negative]}),
        ("output_wcs", {"output_wcs": None}), ("output_wcs", {"output_wcs": "wcs"}),
        ("output_wcs", {"output_wcs": WCS(naxis=1)}),
        ("shape_out", {"shape_out": None}), ("shape_out", {"shape_out": (0, 0)}),
        ("shape_out", {"shape_out": (-1, 20)}), ("shape_out", {"shape_out": (20,)}),
        ("shape_out", {"shape_out": (20.0, 24.0)}), ("shape_out", {"shape_out": "20"}),
        ("combine", {"combine": "median"}), ("combine", {"combine": None}),
        ("weights", {"weights": "foo"}), ("weights", {"weights": [np.ones((20, 24))] * 2}),
        ("weights", {"weights": [np.ones((19, 24))]}),
        ("weights", {"weights": [-np.ones((20, 24))]}),
        ("weights", {"weights": [np.full((20, 24), np.nan)]}), ("weights", {"weights": 3}),
        ("reproject_function", {"reproject_function": "interp"}),
        ("combine_function", {"combine_function": "sum"}),
        ("psf", {"psf": np.ones((4, 4))}), ("psf", {"psf": "gaussian"}),
        ("psf", {"psf": np.full((5, 5), np.nan)}),
    ]


@pytest.mark.parametrize("case", range(len(_bad_coadd_cases())),
                         ids=[f"{n}-{k}" for k, (n, _) in enumerate(_bad_coadd_cases())])
def test_coadd_refuses_bad_arguments(case):
    pytest.importorskip("reproject")
    wcs, good = _coadd_arguments()
    name, changes = _bad_coadd_cases()[case]
    arguments = {"matched": [good], "output_wcs": wcs, "shape_out": (20, 24), **changes}
    result, exc, caught = call(lambda: coadd(**arguments))
    assert_package_warnings(caught)
    assert_refusal(exc, name, "matched[")


def test_coadd_missing_file():
    pytest.importorskip("reproject")
    wcs, _ = _coadd_arguments()
    result, exc, caught = call(lambda: coadd(["/nonexistent/matched.fits"], wcs, (20, 24)))
    assert isinstance(exc, (FileNotFoundError, ValueError)) and "matched.fits" in str(exc)


def _reported_coadd_cases():
    wcs, good = _coadd_arguments()
    return {
        # NDData with a string mask: silently all masked (match_psf refuses the same mask)
        "string mask": {"matched": [NDData(np.ones((20, 24)), wcs=wcs,
                                           mask=np.full((20, 24), "False"))]},
        # complex data: NumPy ComplexWarning, imaginary part dropped (match_psf refuses)
        "complex data": {"matched": [NDData(np.ones((20, 24), dtype=complex), wcs=wcs)]},
        # weight arrays of 1e300: RuntimeWarning overflow, unmasked variance inf
        "weights 1e300": {"weights": [np.full((20, 24), 1e300)]},
        # weight arrays of 5e-324: unmasked variance inf
        "weights 5e-324": {"weights": [np.full((20, 24), 5e-324)]},
        # an input psf of zeros: RuntimeWarning, the coadd's psf is NaN
        "psf zeros": {"matched": [CCDData(np.ones((20, 24)), unit="adu", wcs=wcs,
                                          psf=np.zeros((5, 5)))]},
        # an input psf of NaN: the coadd's psf is NaN, silently
        "psf NaN": {"matched": [CCDData(np.ones((20, 24)), unit="adu", wcs=wcs,
                                        psf=np.full((5, 5), np.nan))]},
        # an even input psf beside an odd one: numpy's "could not broadcast input array
        # from shape (4,4) into shape (5,5)" (grid.resize_stamp), no parameter named
        "psf even": {"matched": [CCDData(np.ones((20, 24)), unit="adu", wcs=wcs,
                                         psf=np.ones((4, 4))),
                                 CCDData(np.ones((20, 24)), unit="adu", wcs=wcs,
                                         psf=np.ones((5, 5)))]},
        # read_kwargs='x': "dictionary update sequence element #0 ..." (not named)
        "read_kwargs": {"read_kwargs": "x"},
    }


@pytest.mark.parametrize("label", list(_reported_coadd_cases()))
def test_reported_coadd_bad_inputs(label):
    pytest.importorskip("reproject")
    wcs, good = _coadd_arguments()
    arguments = {"matched": [good], "output_wcs": wcs, "shape_out": (20, 24),
                 **_reported_coadd_cases()[label]}
    result = result_or_refusal(lambda: coadd(**arguments), "matched", "weights", "psf",
                               "read_kwargs")
    if result is None:
        return
    data, mask = np.asarray(result.data), np.asarray(result.mask)
    assert not mask.all(), "every pixel masked, silently"
    assert np.all(np.isfinite(data[~mask]))
    if result.uncertainty is not None:
        assert np.all(np.isfinite(result.uncertainty.array[~mask]))
    if result.psf is not None:
        assert np.all(np.isfinite(result.psf)), "the coadd's psf is not finite"


# =========================================================================== command line


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    """Input files of the command line (never modified), in a directory of their own."""
    folder = tmp_path_factory.mktemp("cli-inputs")
    image = np.random.default_rng(4).normal(size=(64, 64))
    files = {"science": folder / "science.fits", "uncertain": folder / "uncertain.fits",
             "nan": folder / "nan.fits", "cube": folder / "cube.fits",
             "text": folder / "text.fits", "small": folder / "small.fits",
             "psf": folder / "psf.fits", "even_psf": folder / "even_psf.fits",
             "nan_psf": folder / "nan_psf.fits", "zero_psf": folder / "zero_psf.fits",
             "config": folder / "config.toml", "bad_config": folder / "bad.toml",
             "json_config": folder / "config.json", "huge": folder / "huge.fits"}
    CCDData(image, unit="adu").write(files["science"])
    CCDData(image, unit="adu", uncertainty=StdDevUncertainty(np.ones((64, 64)))).write(
        files["uncertain"])
    with_nan = image.copy()
    with_nan[20:23, 30] = np.nan
    CCDData(with_nan, unit="adu").write(files["nan"])
    fits.PrimaryHDU(np.ones((2, 64, 64))).writeto(files["cube"])
    files["text"].write_text("not FITS")
    fits.PrimaryHDU(np.ones((5, 5))).writeto(files["small"])
    fits.PrimaryHDU(SOURCE).writeto(files["psf"])
    fits.PrimaryHDU(SOURCE[:14, :14]).writeto(files["even_psf"])
    fits.PrimaryHDU(np.full((15, 15), np.nan)).writeto(files["nan_psf"])
    fits.PrimaryHDU(np.zeros((15, 15))).writeto(files["zero_psf"])
    files["config"].write_text("kernel_size = 7\nkernel_basis = 'alard-lupton'\n")
    files["bad_config"].write_text("kernel_size = 20\n")
    files["json_config"].write_text('{"max_residual": NaN}')
    fits.PrimaryHDU(np.full((64, 64), 1e306)).writeto(files["huge"])
    files["digests"] = {k: v.read_bytes() for k, v in files.items() if isinstance(v, Path)}
    return files


def run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            warnings.catch_warnings():
        warnings.simplefilter("error")  # the command must handle its own warnings
        status = main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


#: Warning classes that must not reach the command line's stderr (not the package's).
FOREIGN_WARNINGS = tuple(f"({name})" for name in (
    "RuntimeWarning", "ComplexWarning", "UserWarning", "DeprecationWarning", "FutureWarning",
    "ResourceWarning", "NumbaWarning", "NumbaPerformanceWarning"))


def assert_cli_outcome(status, err, outputs):
    lines = err.strip().splitlines()
    assert status in (0, 1, 2, 3), f"status {status}: {err}"
    assert "Traceback" not in err
    foreign = [line for line in lines if line.startswith("astropsfmatch: warning:")
               and line.endswith(FOREIGN_WARNINGS)]
    assert not foreign, f"warnings from numpy or Python itself: {foreign}"
    if status == 0:
        assert not [line for line in lines if ": error:" in line], err
        return
    errors = [line for line in lines if line.startswith("astropsfmatch: error:")]
    others = [line for line in lines if not line.startswith(("astropsfmatch: error:",
                                                             "astropsfmatch: warning:"))]
    assert len(errors) == 1 and not others, f"expected one error line, got: {err!r}"
    assert "rerun with --debug" not in errors[0], f"an unexpected exception: {errors[0]}"
    assert not any(p.exists() for p in outputs), "an output was written after an error"


SCIENCE = ["science", "uncertain", "nan", "cube", "text", "small", "missing"]
TARGETS = ["gaussian:fwhm=4", "moffat:fwhm=4.5,beta=3", "gaussian:sigma=1.8",
           "gaussian:fwhm=0", "gaussian:fwhm=-2", "gaussian:fwhm=nan", "gaussian:fwhm=1e300",
           "moffat:fwhm=4,beta=1", "gaussian:", "airy:fwhm=3", "", "stars", "psf",
           "even_psf", "nan_psf", "zero_psf", "missing", "text"]
SOURCES = [None, "psf", "gaussian:fwhm=2.5", "even_psf", "nan_psf", "zero_psf", "missing",
           "stars", "gaussian:fwhm=1e300"]
OPTIONS = {
    "--kernel-size": ["7", "5", "2", "abc", "7.0", "65", "-7"],
    "--max-residual": ["1", "0", "nan", "inf", "5e-324", "1e300"],
    "--kernel-sum": ["2", "0", "nan", "1e300"],
    "--cell-size": ["32", "31", "a"], "--spatial-order": ["1", "-1"],
    "--kernel-basis": ["alard-lupton", "foo"], "--hdu": ["0", "5", "FOO", "SCI,x"],
    "--unit": ["electron", "not_a_unit"], "--psf-oversampling": ["0", "2"],
    "--config": ["config", "bad_config", "json_config", "missing"],
}


@st.composite
def command_lines(draw):
    science = draw(st.sampled_from(SCIENCE))
    target = draw(st.sampled_from(TARGETS))
    source = draw(st.sampled_from(SOURCES))
    options = draw(st.lists(st.sampled_from(sorted(OPTIONS)), max_size=3, unique=True))
    chosen = [(name, draw(st.sampled_from(OPTIONS[name]))) for name in options]
    if "--kernel-size" not in options and "--config" not in options:
        chosen.append(("--kernel-size", "7"))  # keep every match small and fast
    return science, target, source, chosen, draw(st.booleans())


@examples(15)
@given(line=command_lines())
def test_command_line_ends_cleanly(cli_files, line):
    science, target, source, chosen, more_outputs = line

    def resolve(value):
        if value in cli_files and isinstance(cli_files[value], Path):
            return cli_files[value]
        if value == "missing":
            return cli_files["science"].parent / "missing.fits"
        return value

    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "out" / "matched.fits"
        argv = ["match", resolve(science), "-t", resolve(target), "-o", output]
        outputs = [output]
        if source is not None:
            argv += ["-s", resolve(source)]
        for name, value in chosen:
            argv += [name, resolve(value)]
        if more_outputs:
            outputs += [Path(tmp) / "kernel.fits", Path(tmp) / "weights.fits"]
            argv += ["--save-kernel", outputs[1], "--weights", outputs[2]]
        status, out, err = run_cli(argv)
        assert_cli_outcome(status, err, outputs)
        if status == 0:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", AstropyUserWarning)  # FITS header fixes
                matched = CCDData.read(output)
            mask = np.asarray(matched.mask, dtype=bool)
            assert np.all(np.isnan(matched.data[mask]))
            assert np.all(np.isfinite(matched.data[~mask])), "unmasked output not finite"
            if more_outputs:
                SpatialKernel.read(outputs[1])
    for key, content in cli_files["digests"].items():
        assert cli_files[key].read_bytes() == content, f"{key} was modified"


@pytest.mark.parametrize("argv", [
    [], ["frobnicate"], ["match"], ["match", "x.fits"], ["match", "--kernel-size"],
    ["demo", "--size", "10"], ["demo", "--seed", "-1"], ["match", "-o"],
], ids=lambda a: " ".join(a) or "(nothing)")
def test_command_line_usage_errors(argv):
    status, out, err = run_cli(argv)
    assert status == 2
    assert_cli_outcome(status, err, [])


def test_command_line_existing_output(cli_files, tmp_path):
    output = tmp_path / "exists.fits"
    output.write_bytes(b"keep me")
    status, out, err = run_cli(["match", cli_files["science"], "-s", cli_files["psf"], "-t",
                                "gaussian:fwhm=4", "-o", output, "--kernel-size", "7"])
    assert status == 1 and "already exists" in err and "--overwrite" in err
    assert output.read_bytes() == b"keep me"
    assert_cli_outcome(status, err, [])


@pytest.mark.parametrize("spec", ["moffat:fwhm=4,beta=1e300", "moffat:fwhm=1e-300,beta=1e300"])
def test_reported_moffat_spec_with_huge_beta(spec, tmp_path, cli_files):
    # parse_psf_spec: 2 ** (1 / beta) - 1 == 0 -> ZeroDivisionError, which the command
    # reports through its catch-all ("ZeroDivisionError: float division by zero (rerun
    # with --debug for the traceback)")
    result, exc, caught = call(lambda: parse_psf_spec(spec))
    if exc is not None:
        assert_refusal(exc, "beta", kinds=(ValueError,))
    status, out, err = run_cli(["match", cli_files["science"], "-s", cli_files["psf"], "-t",
                                spec, "-o", tmp_path / "o.fits", "--kernel-size", "7"])
    assert_cli_outcome(status, err, [tmp_path / "o.fits"])


def test_reported_command_line_writes_nan_for_huge_pixels(cli_files, tmp_path):
    # the FFT overflow of test_reported_huge_finite_pixels_give_finite_output, on the
    # command line: status 0 and a file whose unmasked pixels are all NaN
    output = tmp_path / "o.fits"
    status, out, err = run_cli(["match", cli_files["huge"], "-s", cli_files["psf"], "-t",
                                "gaussian:fwhm=4", "-o", output, "--kernel-size", "7"])
    assert_cli_outcome(status, err, [output])
    if status == 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyUserWarning)
            matched = CCDData.read(output)
        assert np.all(np.isfinite(matched.data[~np.asarray(matched.mask, dtype=bool)]))
