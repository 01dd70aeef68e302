"""Smoke test of the benchmark harness (benchmarks/) with tiny sizes.

The benchmarks are not tests: this only checks that the harness runs end to
end and writes its tables and plot, so that ``python benchmarks/run.py`` does
not break unnoticed. It is skipped when the benchmarks directory is not next
to the tests (an installed package without the repository) and, part by
part, when a peer it needs is missing.
"""

import importlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
NO_JIT = os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0")

pytestmark = pytest.mark.skipif(not (BENCHMARKS / "run.py").exists(),
                                reason="benchmarks/ is not next to tests/")


@pytest.fixture(scope="module")
def bench():
    """The harness modules (accuracy, speed, run), imported from benchmarks/."""
    pytest.importorskip("photutils.psf_matching")
    pytest.importorskip("matplotlib")
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return {name: importlib.import_module(name) for name in ("accuracy", "speed", "run")}


@pytest.fixture(scope="module")
def accuracy_raw(bench):
    """Accuracy results on a constant pair and, with numba, the mild varying one.

    The delta-function configuration (441 basis functions) runs on the constant
    pair only, and only with numba: its fit takes long in pure Python.
    """
    accuracy = bench["accuracy"]
    field = 512
    pairs = {p.name: p for p in accuracy.psf_pairs(field)}
    configs = accuracy.ASTROPSFMATCH_CONFIGS
    default_only = {"astropsfmatch (defaults)": {}}
    try:
        accuracy.ASTROPSFMATCH_CONFIGS = default_only if NO_JIT else configs
        results, notes = accuracy.run(field=field, n_positions=3, quick=True, verbose=False,
                                      pairs=[pairs["Gaussian -> Gaussian"]])
        if not NO_JIT:
            accuracy.ASTROPSFMATCH_CONFIGS = default_only
            results += accuracy.run(
                field=field, n_positions=3, quick=True, verbose=False,
                pairs=[pairs["GriddedPSFModel, mild variation -> constant"]])[0]
    finally:
        accuracy.ASTROPSFMATCH_CONFIGS = configs
    return {"results": [vars(r) for r in results], "notes": notes, "field": field,
            "n_positions": 3}


class TestAccuracyHarness:
    def test_cut_kernel(self, bench):
        kernel = np.zeros((31, 31))
        kernel[15, 15] = 2.0
        kernel[0, 0] = 5.0  # outside the central 21 x 21: dropped
        cut = bench["accuracy"].cut_kernel(kernel)
        assert cut.shape == (21, 21)
        assert cut[10, 10] == 1.0
        assert cut.sum() == pytest.approx(1.0)

    def test_residual_stats_exact_and_offset(self, bench):
        accuracy = bench["accuracy"]
        source = np.zeros((41, 41))
        source[20, 20] = 1.0
        target = accuracy.realize_psf(accuracy.CircularGaussianPSF(fwhm=3.0), 0, 0, 41)
        kernel = accuracy.cut_kernel(target)
        assert accuracy.residual_stats(source, target, kernel) == pytest.approx((0.0, 0.0),
                                                                               abs=1e-15)
        worst, rms = accuracy.residual_stats(source, target, np.roll(kernel, 1, axis=1))
        assert worst > rms > 0

    def test_results(self, bench, accuracy_raw):
        accuracy = bench["accuracy"]
        results = [accuracy.Result(**r) for r in accuracy_raw["results"]]
        methods = {r.method for r in results if r.pair == "Gaussian -> Gaussian"}
        expected = ["astropsfmatch (defaults)"] if NO_JIT else accuracy.ASTROPSFMATCH_CONFIGS
        assert set(expected) <= methods
        assert {"make_kernel", "make_wiener_kernel"} <= methods
        default = next(r for r in results if r.pair == "Gaussian -> Gaussian"
                       and r.method == "astropsfmatch (defaults)")
        assert default.centre_max < 1e-3
        best = accuracy.best_by_method(results)
        assert len(best) == len({(r.pair, r.method) for r in results})
        varying = [r for r in results if "varying" in r.pair]
        assert all(np.isfinite(r.field_max) and r.field_max >= r.centre_max for r in varying)

    def test_pypher_rows(self, bench, accuracy_raw):
        pytest.importorskip("pypher")
        assert any(r["method"] == "pypher" for r in accuracy_raw["results"])


@pytest.fixture(scope="module")
def speed_raw(bench):
    """Every speed figure on a 512 x 512 image, kernels on tiny inputs (no memory probe)."""
    result = bench["speed"].run(size=512, repeat=1, naive_seconds=0.01, max_naive=0.05,
                                kernel_repeat=1, verbose=False, memory=False)
    result["waited"] = {"load": 0.0, "waited": 0.0, "below_limit": True, "max_load": 1.5}
    return result


@pytest.mark.skipif(NO_JIT, reason="timing numba kernels needs numba's compiler")
class TestSpeedHarness:
    def test_end_to_end(self, speed_raw):
        medians = speed_raw["end_to_end"]["medians"]
        assert set(medians) == {"fftconvolve", "match", "convolve_data_only",
                                "photutils_convolve_fft", "photutils_convolve_fft_variance"}
        assert all(t > 0 for t in medians.values())
        assert [s["n_candidates"] for s in speed_raw["solve"]] == [36, 16]

    def test_kernels_agree_with_twins(self, speed_raw):
        rows = [r for r in speed_raw["kernels"] if np.isfinite(r["speedup"])]
        assert len(rows) >= 8
        assert all(r["agree"] for r in rows)

    def test_report(self, bench, speed_raw, accuracy_raw, tmp_path):
        raw = {"environment": bench["run"].environment(), "speed": speed_raw,
               "accuracy": accuracy_raw}
        raw = bench["run"]._to_json(raw)
        bench["run"].report(raw, tmp_path, copy_to_docs=False)
        for name in ("speed.md", "accuracy.md", "speed.csv", "accuracy.csv", "kernels.csv",
                     "benchmarks.png"):
            assert (tmp_path / name).stat().st_size > 0
        text = (tmp_path / "accuracy.md").read_text()
        assert "astropsfmatch (defaults)" in text
        assert "÷ fftconvolve" in (tmp_path / "speed.md").read_text()


def test_memory_probe_fields(bench):
    """The peak-memory probe's JSON (run in this process on a tiny image)."""
    if NO_JIT:
        pytest.skip("the probe warms numba up")
    speed = bench["speed"]
    ccd, _, _ = speed.make_inputs(64)
    assert speed.input_bytes(ccd) == 64 * 64 * (4 + 4 + 1)
    assert speed._status_bytes("VmRSS") > 0
