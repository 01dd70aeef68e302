"""Checks of user input, shared by every module: one place, one rule.

The rule for the exception type:

* `ValueError`: a value of an accepted type that is not allowed (out of
  range, even where odd is needed, non-finite, an unknown name, an array of
  the wrong shape, options that disagree);
* `InvalidTypeError`, a subclass of *both* `TypeError` and `ValueError`: an
  option or array of the wrong type (a string or float where an integer is
  needed, a complex array); ``except ValueError`` therefore catches every
  bad option value, and ``except TypeError`` every wrong type;
* `TypeError`: an *object* of a class the parameter never accepts (an image
  that is not NDData or an array, a PSF that is not a model or an array, a
  configuration that is not a `MatchConfig`, a WCS, a client, ...):
  :func:`check_type`.

Every message names the parameter, the value and what is allowed:
``kernel_size must be an odd integer >= 3, got 20``.

Each checker factory (:func:`integer`, :func:`real`, :func:`choice`, ...)
returns a function ``check(name, value)`` that returns the normalized value
(a plain ``int``, ``float``, ``tuple``) or raises; its ``allowed`` attribute
is the phrase used in messages. `MatchConfig` declares its fields with them,
and functions call them directly: ``integer(1)("n_samples", n_samples)``.
"""

import math
from collections.abc import Sequence, Set

import numpy as np

__all__ = []  # private module: see the functions below

#: The smallest positive normal float64. Scale-like options (a kernel sum, a
#: PSF sum) must be at least this: a subnormal number has lost its precision.
TINY = float(np.finfo(np.float64).tiny)


class InvalidTypeError(TypeError, ValueError):
    """An option or array of the wrong type: both a `TypeError` and a `ValueError`."""


def fail(name, value, allowed, *, wrong_type=False):
    """Raise ``ValueError('{name} must be {allowed}, got {value!r}')``.

    With ``wrong_type`` the error is an `InvalidTypeError` (also a TypeError).
    """
    msg = f"{name} must be {allowed}, got {value!r}"
    if wrong_type:
        raise InvalidTypeError(msg)
    raise ValueError(msg)


def is_int(value):
    """True for a Python or NumPy integer that is not a bool."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def is_real(value):
    """True for a finite real scalar (int or float, Python or NumPy) that is not a bool."""
    if not isinstance(value, int | float | np.integer | np.floating) or isinstance(
        value, bool | np.bool_
    ):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def is_vector(value):
    """True for a list, tuple or other non-string sequence, or a 1-D array."""
    if isinstance(value, np.ndarray):
        return value.ndim == 1
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def _as_items(name, value, allowed, *, allow_sets=False):
    """The items of a non-empty 1-D sequence (list, tuple, 1-D array)."""
    is_set = allow_sets and isinstance(value, Set)
    if not (is_vector(value) or is_set):
        fail(name, value, allowed, wrong_type=True)
    if len(value) == 0:
        fail(name, value, allowed)
    return list(value)


def check_bool(name, value):
    """``value`` as a bool; it must be True or False (NumPy bools too)."""
    if not isinstance(value, bool | np.bool_):
        fail(name, value, "True or False", wrong_type=True)
    return bool(value)


check_bool.allowed = "True or False"


def choice(*options):
    """Checker of one value among ``options`` (strings or integers, compared by kind)."""
    allowed = "one of " + ", ".join(repr(option) for option in options)

    def check(name, value):
        for option in options:
            # Compare kinds as well as values: True == 1 and 5.0 == 5 must not pass.
            if isinstance(option, str):
                if isinstance(value, str) and value == option:
                    return option
            elif is_int(value) and value == option:
                return option
        kinds = (str,) if all(isinstance(o, str) for o in options) else (str, int, np.integer)
        fail(name, value, allowed, wrong_type=not isinstance(value, kinds))

    check.allowed = allowed
    return check


def integer(minimum, *, maximum=None, odd=False, even=False):
    """Checker of an integer ``>= minimum`` (and ``<= maximum``), optionally odd or even."""
    parity = "an odd " if odd else "an even " if even else "an "
    allowed = f"{parity}integer >= {minimum}"
    if maximum is not None:
        allowed = f"{parity}integer in [{minimum}, {maximum}]"

    def check(name, value):
        if not is_int(value):
            fail(name, value, allowed, wrong_type=True)
        if (
            value < minimum
            or (maximum is not None and value > maximum)
            or (odd and value % 2 != 1)
            or (even and value % 2 != 0)
        ):
            fail(name, value, allowed)
        return int(value)

    check.allowed = allowed
    return check


def real(*, gt=None, ge=None, le=None, lt=None, normal=False):
    """Checker of a finite real number within the given bounds.

    ``normal=True`` also refuses subnormal numbers (below `TINY` in
    magnitude, but not zero): scales and sums must keep full precision.
    """
    bounds = []
    if gt is not None:
        bounds.append(f"> {gt}")
    if ge is not None:
        bounds.append(f">= {ge}")
    if lt is not None:
        bounds.append(f"< {lt}")
    if le is not None:
        bounds.append(f"<= {le}")
    allowed = "a finite number " + " and ".join(bounds) if bounds else "a finite number"
    if ge is not None and le is not None and gt is None and lt is None:
        allowed = f"a number in [{ge}, {le}]"
    if normal:
        allowed += f" (and not subnormal: |value| >= {TINY:.4g} or 0)"

    def check(name, value):
        if not is_real(value):
            numeric = isinstance(value, int | float | np.integer | np.floating) and not \
                isinstance(value, bool | np.bool_)
            fail(name, value, allowed, wrong_type=not numeric)
        if (
            (gt is not None and not value > gt)
            or (ge is not None and not value >= ge)
            or (lt is not None and not value < lt)
            or (le is not None and not value <= le)
            or (normal and value != 0 and abs(value) < TINY)
        ):
            fail(name, value, allowed)
        return float(value)

    check.allowed = allowed
    return check


def optional(checker):
    """Checker of None or a value that ``checker`` accepts."""
    allowed = f"None or {checker.allowed}"

    def check(name, value):
        if value is None:
            return None
        try:
            return checker(name, value)
        except InvalidTypeError:
            wrong_type = True
        except ValueError:
            wrong_type = False
        fail(name, value, allowed, wrong_type=wrong_type)

    check.allowed = allowed
    return check


def real_tuple(*, gt, distinct=False, ge_each=None):
    """Checker of a non-empty sequence of finite numbers ``> gt``, returned as a tuple."""
    allowed = f"a non-empty sequence of finite numbers > {gt}"
    if ge_each is not None:
        allowed = f"a non-empty sequence of finite numbers >= {ge_each}"
    if distinct:
        allowed += ", all different"

    def check(name, value):
        items = _as_items(name, value, allowed)
        lower_ok = (lambda item: item >= ge_each) if ge_each is not None else (
            lambda item: item > gt)
        if not all(is_real(item) and lower_ok(item) for item in items):
            fail(name, value, allowed)
        if distinct and len(set(float(item) for item in items)) != len(items):
            fail(name, value, allowed)
        return tuple(float(item) for item in items)

    check.allowed = allowed
    return check


def integer_tuple(minimum):
    """Checker of a non-empty sequence of integers ``>= minimum``, returned as a tuple."""
    allowed = f"a non-empty sequence of integers >= {minimum}"

    def check(name, value):
        items = _as_items(name, value, allowed)
        if not all(is_int(item) and item >= minimum for item in items):
            fail(name, value, allowed)
        return tuple(int(item) for item in items)

    check.allowed = allowed
    return check


def subset(*options):
    """Checker of a non-empty set of distinct integers from ``options``, returned sorted."""
    allowed = "a non-empty set of distinct integers from {" + ", ".join(map(str, options)) + "}"

    def check(name, value):
        items = _as_items(name, value, allowed, allow_sets=True)
        if not all(is_int(item) and item in options for item in items):
            fail(name, value, allowed)
        if len(set(items)) != len(items):
            fail(name, value, allowed)
        return tuple(sorted(int(item) for item in items))

    check.allowed = allowed
    return check


def shape2d(name, value):
    """An image shape: a pair ``(ny, nx)`` of positive integers, returned as a tuple."""
    allowed = "a pair (ny, nx) of integers >= 1"
    if not is_vector(value):
        fail(name, value, allowed, wrong_type=True)
    if len(value) != 2 or not all(is_int(item) and item >= 1 for item in value):
        fail(name, value, allowed)
    return (int(value[0]), int(value[1]))


shape2d.allowed = "a pair (ny, nx) of integers >= 1"


def check_type(name, value, classes, description):
    """Raise `TypeError` unless ``value`` is an instance of ``classes``.

    ``description`` is what is allowed, e.g. ``'a MatchConfig'``.
    """
    if not isinstance(value, classes):
        msg = f"{name} must be {description}, got {type(value).__name__}"
        raise TypeError(msg)
    return value


def real_dtype(name, array):
    """Raise `InvalidTypeError` unless ``array`` holds real numbers (bool, integers or floats)."""
    if array.dtype.kind not in "biuf":
        msg = f"{name} must hold real numbers, got dtype {array.dtype}"
        raise InvalidTypeError(msg)
    return array


def sequence_of(name, value, description, *, item="item", not_items=(), allow_empty=False):
    """The items of a sequence argument, as a list.

    Raises `TypeError` when ``value`` is not a sequence or is itself one of
    the ``not_items`` classes (a single image where a list of them is
    needed), and `ValueError` when it is empty (unless ``allow_empty``).
    ``description`` says what the items are, e.g. ``'CCDData/NDData images
    or FITS paths'``: the message is ``'{name} must be a sequence of
    {description}'``; a ``description`` starting with ``'None or '`` or
    ``'a sequence'`` is used as it is. ``item`` names one item (``'image'``).
    """
    if isinstance(value, (str, bytes, *not_items)) or not hasattr(value, "__len__") \
            or not hasattr(value, "__iter__"):
        allowed = description if description.startswith(("None or ", "a sequence")) \
            else f"a sequence of {description}"
        msg = f"{name} must be {allowed}, got {type(value).__name__}"
        raise TypeError(msg)
    items = list(value)
    if not items and not allow_empty:
        msg = f"{name} must contain at least one {item}, got an empty sequence"
        raise ValueError(msg)
    return items


def same_shape(name, array, shape, *, of="the data"):
    """``array`` as an ndarray, which must have ``shape`` (ValueError naming both)."""
    array = np.asarray(array)
    if array.shape != tuple(shape):
        msg = f"{name} must have the shape of {of} {tuple(shape)}, got {array.shape}"
        raise ValueError(msg)
    return array
