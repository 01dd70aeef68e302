"""A callback when numba starts compiling one of the package's kernels.

numba compiles a kernel on its first call in a new environment and caches
the machine code on disk (``cache=True``); later runs load it in
milliseconds. `on_first_compilation` lets the caller say so once, when it
happens, e.g. with one INFO line ("compiling numerical kernels, first run
only"). Loading from the cache compiles nothing and calls nothing.
"""

import numba

__all__ = []  # internal to the package: nothing here is public

#: Kernels of this package are the dispatchers whose functions live in it.
_PACKAGE = "astropsfmatch."


class _Notice(numba.core.event.Listener):
    """Calls ``callback()`` at the start of the first compilation of a package kernel."""

    def __init__(self, callback):
        self.callback = callback
        self.done = False

    def on_start(self, event):
        if self.done:
            return
        dispatcher = (event.data or {}).get("dispatcher")
        module = getattr(getattr(dispatcher, "py_func", None), "__module__", None) or ""
        if not module.startswith(_PACKAGE):
            return
        # two threads compiling at the same instant may both call: harmless for a log line
        self.done = True
        self.callback()

    def on_end(self, event):
        pass


def on_first_compilation(callback):
    """Call ``callback()`` once, when numba starts compiling a kernel of this package.

    Returns the listener (``numba.core.event.unregister('numba:compile',
    listener)`` removes it).
    """
    listener = _Notice(callback)
    numba.core.event.register("numba:compile", listener)
    return listener
