"""Optional dependencies: imported where they are needed, with one clear error.

astropsfmatch needs numpy, scipy, astropy, photutils and numba. The figures
need matplotlib, co-addition reproject, the cluster scale-out dask
``distributed``, the progress bar tqdm: all in the ``all`` extra
(``pip install "astropsfmatch[all]"``). `require` imports one of them or
raises an `ImportError` that says what needs it and how to install it.
"""

import importlib

__all__ = []  # private module

#: The pip requirement that provides each optional module.
_PIP_NAMES = {
    "matplotlib": "matplotlib",
    "reproject": "reproject",
    "distributed": "dask[distributed]",
    "tqdm": "tqdm",
}


def require(module, needed_by):
    """Import and return ``module``, or raise ImportError saying what needs it.

    Parameters
    ----------
    module : str
        Module to import, e.g. ``'matplotlib.figure'``.
    needed_by : str
        What needs it, with its verb, e.g. ``'the diagnostic figures need'``
        or ``'coadd needs'``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        pip_name = _PIP_NAMES.get(top, top)
        if not pip_name.isidentifier():
            pip_name = f"'{pip_name}'"
        msg = f"{needed_by} {top}: pip install {pip_name}"
        raise ImportError(msg) from exc


def available(module):
    """True if ``module`` can be imported."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
