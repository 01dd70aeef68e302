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
        photutils_methods = {"make_kernel"}
        if hasattr(accuracy.photutils_matching(), "make_wiener_kernel"):  # photutils >= 3
            photutils_methods.add("make_wiener_kernel")
        assert photutils_methods <= methods
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
    """Every speed figure on a 256 x 256 image, kernels on tiny inputs (no subprocess probes)."""
    result = bench["speed"].run(size=256, repeat=1, naive_seconds=0.01, max_naive=0.05,
                                kernel_repeat=1, verbose=False, memory=False, psf_loop=False,
                                compile_size=0, solve_repeat=1)
    result["waited"] = {"load": 0.0, "waited": 0.0, "below_limit": True, "max_load": 1.5}
    # what the subprocess probes report, for the tables
    result["memory"] = {"input_bytes": 100, "rss_peak_increase": 150, "rss_reliable": True,
                        "traced_peak": 140, "output_bytes": 144, "match_seconds": 2.0,
                        "rss_peak_increase_ratio": 1.5, "traced_peak_ratio": 1.4,
                        "output_bytes_ratio": 1.44,
                        "diagnostics": {"seconds": 1.0, "rss_peak_increase": 2**20,
                                        "files": 9, "profile": [
                                            {"function": "f", "calls": 1, "own": 0.5,
                                             "cumulative": 0.9}]}}
    result["first_call"] = {"size": 512, "import": 1.0, "first": 4.0, "second": 0.5,
                            "compile": 3.0, "kernels": {"convolution.dilate_box": {
                                "signatures": 1, "seconds": 3.0}}}
    return result


@pytest.fixture(scope="module")
def cluster_raw(bench):
    """What bench_match_many.run_cluster returns (its figures from fake timings)."""
    import bench_match_many

    class Fake:
        durations = [1.0, 1.2, 0.8, 1.0]

    rows = [bench_match_many._figures("serial (no client)", 4, 1, 4.1, Fake(), 1000),
            bench_match_many._figures("2 worker(s) x 1 thread(s)", 4, 2, 2.2, Fake(), 1000,
                                      startup=3.0, memory=[1500, 2500])]
    return {"n_exposures": 4, "size": 256, "exposure_bytes": 1000, "cpus": 2, "rows": rows,
            "load": [0.5, 0.7]}


@pytest.mark.skipif(NO_JIT, reason="timing numba kernels needs numba's compiler")
class TestSpeedHarness:
    def test_end_to_end(self, speed_raw):
        e2e = speed_raw["end_to_end"]
        assert set(e2e["medians"]) == {"fftconvolve", "fftconvolve_threads", "match",
                                       "convolve_data_only", "convolve_full",
                                       "photutils_convolve_fft",
                                       "photutils_convolve_fft_variance"}
        assert all(t > 0 for t in e2e["medians"].values())
        assert e2e["ratios"]["match/fftconvolve"] > 0
        assert {"kernel_solution", "convolution", "quality"} <= set(e2e["stages"])
        assert [s["label"] for s in speed_raw["solve"]] == ["defaults", "reference model"]
        assert [s["model"] for s in speed_raw["solve"]] == ["bilinear", "chebyshev1"]
        assert speed_raw["solve"][1]["n_candidates"] == 9  # 3 x 3 cells of 85 px
        assert speed_raw["solve_profile"]["rows"]

    def test_kernels_agree_with_twins(self, speed_raw):
        rows = [r for r in speed_raw["kernels"] if np.isfinite(r["speedup"])]
        assert len(rows) >= 8
        assert all(r["agree"] for r in rows)
        assert not [r for r in speed_raw["kernels"] if not np.isfinite(r["speedup"])]

    def test_report(self, bench, speed_raw, accuracy_raw, cluster_raw, tmp_path):
        raw = {"environment": bench["run"].environment(), "speed": speed_raw,
               "accuracy": accuracy_raw, "cluster": cluster_raw}
        raw = bench["run"]._to_json(raw)
        written = bench["run"].report(raw, tmp_path)
        for name in ("speed.md", "accuracy.md", "cluster.md", "checks.md", "speed.csv",
                     "accuracy.csv", "kernels.csv", "solve_profile.csv", "diagnostics.csv",
                     "first_call.csv", "cluster.csv", "benchmarks.png"):
            assert (tmp_path / name).stat().st_size > 0
            assert name in written
        text = (tmp_path / "accuracy.md").read_text()
        assert "astropsfmatch (defaults)" in text
        assert "÷ fftconvolve (1 thread)" in (tmp_path / "speed.md").read_text()
        checks = (tmp_path / "checks.md").read_text()
        assert "cluster overhead per exposure" in checks
        # the published tables are for users: no goals in them (checks.md has those)
        for name in written:
            if name.endswith(".csv"):
                text = (tmp_path / name).read_text()
                assert not any(word in text for word in ("goal", "meets", "misses"))


def test_cluster_figures(cluster_raw):
    serial, cluster = cluster_raw["rows"]
    assert serial["throughput"] == pytest.approx(4 / 4.1)
    # 2 slots: 2.2 s * 2 / 4 exposures - 1.0 s mean task = 0.1 s per exposure
    assert cluster["overhead"] == pytest.approx(0.1)
    assert cluster["overhead_fraction"] == pytest.approx(0.1)
    assert cluster["worker_peak_ratio"] == 2.5
    assert "worker_peak_ratio" not in serial


def test_default_output_is_a_new_directory(bench):
    """A run writes to a new directory unless told otherwise: tracked files stay as they are."""
    run = bench["run"]
    output = run.default_output()
    assert output.parent == run.PUBLISHED
    assert output.name.startswith("run-")
    assert not output.exists()
    ignored = (run.PUBLISHED / ".gitignore").read_text().split()
    assert "run-*/" in ignored


def test_memory_probe_fields(bench):
    """The peak-memory probe's JSON (run in this process on a tiny image)."""
    if NO_JIT:
        pytest.skip("the probe warms numba up")
    speed = bench["speed"]
    ccd, _, _ = speed.make_inputs(64)
    assert speed.input_bytes(ccd) == 64 * 64 * (4 + 4 + 1)
    assert speed._status_bytes("VmRSS") > 0
