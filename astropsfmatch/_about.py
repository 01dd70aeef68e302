"""The package version, from the ``_version.py`` that the build writes."""

try:
    from ._version import version as __version__
except ImportError:  # pragma: no cover - only in a source tree without a build
    __version__ = "0.0.0.dev"

__all__ = []  # `__version__` is re-exported by the package
