"""The house stays standing: layers import only downwards, one public API, one thread scope."""

import ast
import re
import threading
from pathlib import Path

import numpy as np
import pytest
from astropy.utils.exceptions import AstropyUserWarning
from photutils.psf import CircularGaussianPRF
from psf_models import varying_gaussian_grid

import astropsfmatch
from astropsfmatch import match_psf

PACKAGE = Path(astropsfmatch.__file__).parent
DOCS = Path(__file__).parent.parent / "docs"


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path):
    """Absolute names of every module imported by a file (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    package = module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                prefix = ".".join(base)
                module = f"{prefix}.{node.module}" if node.module else prefix
            else:
                module = node.module
            names.add(module)
            # `from . import x` imports the module x
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def files_of(subpackage):
    return sorted((PACKAGE / subpackage).rglob("*.py"))


def forbidden(path, prefixes):
    return sorted(name for name in imports_of(path)
                  if any(name == p or name.startswith(p + ".") for p in prefixes))


ABOVE_ENGINE = ["astropy.nddata", "photutils", "astropsfmatch._adapters",
                "astropsfmatch._workflow", "astropsfmatch.diagnostics", "astropsfmatch.cli",
                "astropsfmatch.demo", "matplotlib", "reproject", "distributed", "dask"]


class TestLayers:
    @pytest.mark.parametrize("path", files_of("_engine"), ids=lambda p: p.name)
    def test_engine_imports_nothing_above_it(self, path):
        assert forbidden(path, ABOVE_ENGINE) == []

    @pytest.mark.parametrize("path", files_of("_engine/_numba"), ids=lambda p: p.name)
    def test_numba_kernels_import_only_numba_numpy_and_their_options(self, path):
        allowed = {"numba", "numpy", "astropsfmatch._engine._numba.options"}
        assert imports_of(path) - allowed <= {"astropsfmatch._engine._numba.options.JIT_OPTIONS",
                                              "astropsfmatch._engine._numba.options."
                                              "PARALLEL_JIT_OPTIONS"}

    @pytest.mark.parametrize("path", files_of("_adapters"), ids=lambda p: p.name)
    def test_adapters_do_not_import_the_workflow(self, path):
        assert forbidden(path, ["astropsfmatch._workflow", "astropsfmatch.cli",
                                "astropsfmatch.diagnostics"]) == []

    @pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.name)
    def test_nothing_imports_the_command_line(self, path):
        if path.name in ("cli.py", "__main__.py"):
            return
        assert forbidden(path, ["astropsfmatch.cli"]) == []

    @pytest.mark.parametrize("path", [p for p in PACKAGE.rglob("*.py")
                                      if p.name != "__init__.py" or p.parent != PACKAGE],
                             ids=lambda p: str(p.relative_to(PACKAGE)))
    def test_no_module_imports_the_package_face(self, path):
        # the face (astropsfmatch/__init__.py) only re-exports: importing it from inside
        # would be an arrow back up
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module is None and node.level:
                depth = len(path.relative_to(PACKAGE).parts) - 1
                assert node.level <= depth, f"{path.name} imports the package __init__"

    def test_private_names_do_not_cross_modules(self):
        offenders = []
        for path in PACKAGE.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and (
                        node.module.startswith("astropsfmatch") or node.level):
                    offenders += [f"{path.name}: {alias.name}" for alias in node.names
                                  if alias.name.startswith("_")
                                  and not alias.name.startswith("__")]
        assert offenders == []


class TestPublicApi:
    def test_module_alls_are_exactly_the_package_all(self):
        # every private module (and config) lists in __all__ only its public names,
        # which the package re-exports: the union is the package's __all__
        names = []
        for path in PACKAGE.rglob("*.py"):
            name = module_name(path)
            parts = name.split(".")
            if name != "astropsfmatch.config" and (
                    len(parts) < 2 or not any(p.startswith("_") for p in parts[1:])):
                continue  # the package face and the public modules but config
            if parts[-1] in ("_version",):
                continue
            module = __import__(name, fromlist=["__all__"])
            names += list(getattr(module, "__all__", []))
        assert sorted(names) == sorted(astropsfmatch.__all__)
        assert len(set(names)) == len(names)

    def test_every_public_name_is_documented_in_api_rst(self):
        text = (DOCS / "api.rst").read_text()
        listed = set(re.findall(r"^\s*- `~?astropsfmatch\.(\w+)`", text, re.M))
        assert listed == set(astropsfmatch.__all__)

    @pytest.mark.parametrize("name", astropsfmatch.__all__)
    def test_every_public_name_has_a_docstring(self, name):
        assert getattr(astropsfmatch, name).__doc__

    def test_public_modules(self):

        public = {p.stem for p in PACKAGE.glob("*.py") if not p.stem.startswith("_")}
        assert public == {"cli", "config", "demo", "diagnostics"}
        assert all(p.name.startswith("_") for p in PACKAGE.iterdir()
                   if p.is_dir() and (p / "__init__.py").exists())


class TestEffectiveConfig:
    def test_result_config_is_what_was_run(self):
        with pytest.warns(AstropyUserWarning, match="using spatial_order 1"):
            result = match_psf(np.zeros((128, 128)), CircularGaussianPRF(fwhm=5.0),
                               source_psf=CircularGaussianPRF(fwhm=3.0), cell_size=64,
                               spatial_model="chebyshev1")
        assert result.config.spatial_order == result.kernel.spatial_order == 1
        assert result.config.cell_size == (64, 64)
        # the basis and size the 'auto' defaults chose are the ones reported
        assert result.config.kernel_basis == result.metadata["basis"]["kind"]
        assert result.config.kernel_size == result.kernel.kernel_size

    def test_rerunning_the_reported_config_gives_the_same_kernel(self):
        source, target = CircularGaussianPRF(fwhm=3.0), CircularGaussianPRF(fwhm=5.0)
        first = match_psf(np.zeros((128, 128)), target, source_psf=source)
        again = match_psf(np.zeros((128, 128)), target, source_psf=source, config=first.config)
        np.testing.assert_allclose(again.kernel.evaluate(64, 64), first.kernel.evaluate(64, 64),
                                   rtol=1e-10, atol=1e-14)


class TestThreads:
    def test_concurrent_single_thread_matches_equal_serial_ones(self):
        shape = (192, 192)
        psfs = [varying_gaussian_grid(shape, sigma_range=(1.4 + 0.1 * k, 2.0 + 0.1 * k))
                for k in range(4)]
        rng = np.random.default_rng(11)
        images = [rng.normal(size=shape) for _ in psfs]
        target = CircularGaussianPRF(fwhm=6.0)

        def run(k):
            return match_psf(images[k], target, source_psf=psfs[k], cell_size=64, workers=1)

        serial = [run(k) for k in range(len(psfs))]
        parallel = [None] * len(psfs)
        errors = []

        def worker(k):
            try:
                parallel[k] = run(k)
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(psfs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        for a, b in zip(serial, parallel, strict=True):
            np.testing.assert_array_equal(a.matched.data, b.matched.data)
            np.testing.assert_array_equal(a.kernel.coefficients, b.kernel.coefficients)

    def test_workers_is_checked_before_any_work(self):
        with pytest.raises(ValueError, match="workers must be None or an integer >= 1, got 0"):
            match_psf(np.zeros((64, 64)), CircularGaussianPRF(fwhm=5.0),
                      source_psf=CircularGaussianPRF(fwhm=3.0), cell_size=32, workers=0)
