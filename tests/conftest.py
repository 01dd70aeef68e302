"""Shared pytest configuration and fixtures of the astropsfmatch test suite.

The suite runs against the *installed* package (tox changes into a temporary
directory first); ``tests/`` has no ``__init__.py`` and pytest puts it on
``sys.path``, so test modules import the reference twins with ``from naive import ...``.
"""

import os

import numpy as np
import pytest

# Figures are drawn off-screen, whatever the machine has (also in subprocesses,
# e.g. tests of the command line).
os.environ.setdefault("MPLBACKEND", "Agg")
try:
    import matplotlib
except ImportError:  # pragma: no cover - matplotlib is an optional dependency
    pass
else:
    matplotlib.use("Agg")

try:
    from pytest_astropy_header.display import PYTEST_HEADER_MODULES, TESTED_VERSIONS
except ImportError:  # pragma: no cover - the header plugin is optional
    PYTEST_HEADER_MODULES = TESTED_VERSIONS = None


def pytest_configure(config):
    """Show the versions of the packages that matter in the pytest header; start the
    package logger at WARNING.

    The package says once, at INFO level, when a first run compiles its numba
    kernels; with a fresh numba cache (a new CI environment) that line would land
    in whichever doctest or test that compares printed output runs first. This
    hook runs once per process for the whole run (the package's and the docs'
    doctests included); tests that check messages set their own level.
    """
    from astropsfmatch import log

    log.setLevel("WARNING")
    if PYTEST_HEADER_MODULES is None:
        return
    config.option.astropy_header = True
    PYTEST_HEADER_MODULES.clear()
    for name in (
        "numpy",
        "scipy",
        "astropy",
        "photutils",
        "numba",
        "reproject",
        "matplotlib",
        "dask",
    ):
        PYTEST_HEADER_MODULES[name] = name
    from astropsfmatch import __version__

    TESTED_VERSIONS["astropsfmatch"] = __version__


@pytest.fixture
def rng():
    """A freshly seeded random generator (never NumPy's global state)."""
    return np.random.default_rng(20260101)


@pytest.fixture
def quick_figures(monkeypatch):
    """Tiny stand-ins for the figures: their content is tested in test_diagnostics."""
    figure = pytest.importorskip("matplotlib.figure")
    from astropsfmatch import diagnostics

    for name in [n for n in diagnostics.__all__ if n.startswith("plot_")]:
        monkeypatch.setattr(diagnostics, name, lambda *a, **k: figure.Figure(figsize=(1, 1)))


@pytest.fixture(autouse=True)
def _no_compilation_notice(monkeypatch):
    """No "compiling" line from the command line in-process (tests/test_cli.py checks it
    in a subprocess with a fresh numba cache)."""
    import contextlib

    from astropsfmatch import cli

    monkeypatch.setattr(cli, "_compilation_notice", lambda **kwargs: contextlib.nullcontext())
