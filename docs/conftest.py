"""Keep pytest away from the Sphinx configuration and build products.

The .rst files of this directory are run as doctests (``--doctest-rst``).
"""

collect_ignore = ["conf.py"]
collect_ignore_glob = ["_build/*", "api/*"]
