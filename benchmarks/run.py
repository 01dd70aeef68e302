"""Run the astropsfmatch benchmarks and write the result tables and plot.

Usage::

    python benchmarks/run.py                      # full run (about 15 minutes)
    python benchmarks/run.py --quick              # small sizes, a few minutes
    python benchmarks/run.py --output DIR         # default: benchmarks/results/run-<time>
    python benchmarks/run.py --only speed cluster # or any of: accuracy speed cluster
    python benchmarks/run.py --update-docs        # also refresh the published tables

Writes to the output directory ``speed.md``, ``accuracy.md`` and ``cluster.md``
(Markdown tables), the same tables as CSV, ``checks.md`` (each figure against
the project's goals), ``results.json`` (raw figures) and ``benchmarks.png``.
Nothing tracked is overwritten unless ``--update-docs`` is given: then the
tables, ``results.json`` and the plot are also copied to ``benchmarks/results/``
(the tables ``docs/performance.rst`` includes) and the plot to
``docs/_static/performance/``.

Timings on a shared machine are noisy: before the timed parts the script waits
(up to ``--max-wait`` seconds) for the 1-minute load average to fall below
``--max-load``, and records the load before and after. Every ratio is taken
between timings of the same run (the median of the per-round ratios). See
``benchmarks/README.md``.
"""

import argparse
import csv
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import accuracy  # noqa: E402
import speed  # noqa: E402

PUBLISHED = HERE / "results"
DOCS_STATIC = HERE.parent / "docs" / "_static" / "performance"
PACKAGES = ("astropsfmatch", "numpy", "scipy", "astropy", "photutils", "numba", "pypher",
            "matplotlib", "dask", "distributed")
PARTS = ("accuracy", "speed", "cluster")

#: The project's goals, checked in checks.md (not in the published tables).
GOALS = {
    "match / fftconvolve (1 thread)": 2.0,
    "match / fftconvolve (same threads)": 3.0,
    "data-only convolution / fftconvolve (same threads)": 1.0,
    "kernel solution [s]": 0.1,
    "kernel solution, one level of nodes [s]": 0.1,
    "peak memory increase / input": 2.5,
    "diagnostics / match": 1.0,
    "diagnostics peak memory increase [GB]": 0.5,
    "first-call compilation [s]": 5.0,
    "cluster overhead per exposure [s]": 0.1,
    "cluster overhead / exposure time": 0.05,
    "worker peak memory / exposure": 3.0,
}
NUMBA_TARGET = 30.0


def default_output():
    """A new directory for this run: benchmarks/results/run-<date>-<time>."""
    return PUBLISHED / datetime.datetime.now().strftime("run-%Y%m%d-%H%M%S")


def environment():
    """Versions, CPUs and date (dict)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "python": platform.python_version(), "machine": platform.machine(),
            "cpus": len(os.sched_getaffinity(0)), "versions": versions, "git": _git()}


def _git():
    """Commit of the repository, marked ``+modified`` if astropsfmatch/ has local changes."""
    try:
        commit = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        changed = subprocess.run(["git", "-C", str(HERE.parent), "status", "--porcelain",
                                  "astropsfmatch"], capture_output=True, text=True,
                                 check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+modified" if changed else "")


def wait_for_load(max_load, max_wait, interval=30.0):
    """Wait until the 1-minute load average is below ``max_load`` (at most ``max_wait`` s)."""
    start = time.monotonic()
    while True:
        load = os.getloadavg()[0]
        waited = time.monotonic() - start
        if load < max_load or waited >= max_wait:
            return {"load": load, "waited": waited, "below_limit": load < max_load}
        print(f"  load {load:.2f} >= {max_load}: waiting ({waited:.0f} of {max_wait:.0f} s)",
              flush=True)
        time.sleep(min(interval, max_wait - waited))


# --- tables ---------------------------------------------------------------------


def _fmt(value, spec=".3f"):
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    return format(value, spec)


def markdown_table(header, rows):
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _rst_cell(cell):
    """A Markdown table cell as reStructuredText: ``code``, no bold markers."""
    return str(cell).replace("**", "").replace("`", "``")


def write_csv(path, header, rows):
    """The table as CSV with reStructuredText inline markup (for ``csv-table``)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([_rst_cell(c) for c in header])
        writer.writerows([[_rst_cell(c) for c in row] for row in rows])


def speed_tables(result):
    """(title, header, rows, csv name) of every speed table."""
    e2e = result["end_to_end"]
    med, stages, ratios = e2e["medians"], e2e["stages"], e2e.get("ratios", {})
    cpu = e2e.get("cpu_medians", {})
    threads = e2e.get("threads", result.get("cpus", 1))
    n = len(e2e["times"]["match"])
    size = result["size"]

    def ratio(key, base):
        value = ratios.get(f"{key}/{base}")
        return value if value is not None else med[key] / med[base]

    def row(label, key):
        return (label, _fmt(med[key]), _fmt(ratio(key, "fftconvolve"), ".2f"),
                _fmt(ratio(key, "fftconvolve_threads"), ".2f") if "fftconvolve_threads" in med
                else "–", _fmt(cpu.get(key)))

    def stage(label, key):
        if key not in stages:
            return None
        return (label, _fmt(stages[key]), _fmt(stages[key] / med["fftconvolve"], ".2f"),
                _fmt(stages[key] / med["fftconvolve_threads"], ".2f")
                if "fftconvolve_threads" in med else "–", "")

    end_to_end = [
        row("`scipy.signal.fftconvolve(data, K, mode='same')`: one constant 21×21 float32 "
            "kernel, data only, 1 thread", "fftconvolve")]
    if "fftconvolve_threads" in med:
        end_to_end.append(row(f"the same `fftconvolve` on {threads} threads",
                              "fftconvolve_threads"))
    end_to_end += [
        row(f"astropsfmatch `match_psf` / `ModelPsfMatcher().match`, default configuration: "
            f"data + variance + mask, spatially varying kernel ({threads} threads)", "match"),
        stage("↳ basis choice", "basis_choice"),
        stage("↳ PSF realization", "psf_realization"),
        stage("↳ kernel solution", "kernel_solution"),
        stage("↳ quality at held-out positions", "quality"),
        stage("↳ convolution (data, variance, mask)", "convolution"),
        stage("↳ output CCDData and weights", "output"),
    ]
    for key, label in (("convolve_full", "`convolve_spatially_varying` alone: data + variance "
                                         "+ mask"),
                       ("convolve_data_only", "`convolve_spatially_varying` alone: data "
                                              "only")):
        if key in med:
            end_to_end.append(row(label, key))
    end_to_end += [
        row("photutils `make_kernel` (TukeyWindow) + `astropy.convolution.convolve_fft(data, "
            "K, mask=mask)`, one constant kernel, data only", "photutils_convolve_fft"),
        row("photutils `make_kernel` + `convolve_fft` of data and of variance (K²)",
            "photutils_convolve_fft_variance"),
    ]
    end_to_end = [r for r in end_to_end if r is not None]
    tables = [(f"End to end, {size}×{size} float32 image (median of {n} interleaved rounds)",
               ["operation", "wall time [s]", "÷ fftconvolve (1 thread)",
                f"÷ fftconvolve ({threads} threads)", "CPU time [s]"], end_to_end, "speed")]

    solve_rows = []
    for s in result["solve"]:
        m = s["medians"]
        model = ("nodes on the PSF model's node lines, bilinear" if s["model"] == "bilinear"
                 else "one candidate per cell, Chebyshev order 2")
        inner = " / ".join(_fmt(m.get(f"solve_{k}")) for k in
                           ("normal_equations", "node_solve", "candidate_fits", "spatial_solve")
                           if f"solve_{k}" in m)
        solve_rows.append((
            f"{s['label']}: {model}", f"{s['n_cells'][0]}×{s['n_cells'][1]}",
            f"{s['stamp']}×{s['stamp']}", s["n_basis"], _fmt(m["kernel_solution"]), inner,
            _fmt(m.get("quality")), _fmt(m["psf_realization"]), _fmt(m["wall"])))
    tables.append((
        f"Kernel solution alone (`ModelPsfMatcher.solve` on {size}×{size}; medians)",
        ["model", "nodes or candidates", "stamps", "basis functions", "kernel solution [s]",
         "of which: normal equations / solve [s]", "quality check [s]",
         "PSF realization [s]", "solve() wall [s]"], solve_rows, "solve"))

    if "solve_profile" in result:
        prof = result["solve_profile"]
        tables.append((
            f"Where the default kernel solution spends its time (one `solve`, "
            f"{_fmt(prof['wall'], '.2f')} s under the profiler; largest own times)",
            ["function", "calls", "own time [s]", "cumulative [s]"],
            [(f"`{r['function']}`", r["calls"], _fmt(r["own"]), _fmt(r["cumulative"]))
             for r in prof["rows"]], "solve_profile"))

    if "psf_loop" in result:
        p = result["psf_loop"]
        tables.append((
            "PSF realization: GriddedPSFModel stamps at 1,024 positions",
            ["stamps", "photutils `GriddedPSFModel.evaluate` loop [s]",
             "astropsfmatch [s]", "speed-up", "max difference / peak"],
            [(f"{p['n']} of 31×31", _fmt(p["loop"]), _fmt(p["astropsfmatch"], ".4f"),
              f"{p['loop'] / p['astropsfmatch']:.0f}×", _fmt(p["max_difference"], ".1e"))],
            "psf"))

    kernel_rows = []
    for k in result["kernels"]:
        if not np.isfinite(k["speedup"]):
            kernel_rows.append((f"`{k['kernel']}`", k["input"], "–", "–", "–", "–", "–"))
            continue
        kernel_rows.append((
            f"`{k['kernel']}`", k["input"], _fmt(k["naive"]), _fmt(k["numba"], ".4f"),
            f"{k['speedup']:.0f}×" if k["speedup"] >= 10 else f"{k['speedup']:.1f}×",
            "yes" if k["agree"] else "**NO**", k["threads"]))
    tables.append((
        "Numba kernels vs their NumPy twins in tests/naive.py (same input; twin run once, "
        "numba median)",
        ["kernel", "input", "twin [s]", "numba [s]", "speed-up", "outputs agree",
         "numba threads"], kernel_rows, "kernels"))

    if "memory" in result:
        mem = result["memory"]
        mib = 2.0**20
        tables.append((
            "Peak memory of one end-to-end match (fresh process)",
            ["input (data + variance + mask)", "peak RSS increase", "÷ input",
             "tracemalloc peak", "÷ input", "of which the outputs"],
            [(f"{mem['input_bytes'] / mib:.0f} MiB",
              f"{mem['rss_peak_increase'] / mib:.0f} MiB"
              + ("" if mem["rss_reliable"] else " (peak could not be reset: upper bound)"),
              f"{mem['rss_peak_increase_ratio']:.2f}",
              f"{mem['traced_peak'] / mib:.0f} MiB", f"{mem['traced_peak_ratio']:.2f}",
              f"{mem['output_bytes'] / mib:.0f} MiB ({mem['output_bytes_ratio']:.2f}×)")],
            "memory"))
        diag = mem.get("diagnostics", {})
        if "seconds" in diag:
            tables.append((
                "Diagnostic figures of the same match (`result.save_diagnostics(dir)`)",
                ["figures", "wall time [s]", "÷ the match", "peak RSS increase"],
                [(diag.get("files", "–"), _fmt(diag["seconds"], ".2f"),
                  _fmt(diag["seconds"] / mem["match_seconds"], ".2f"),
                  f"{diag['rss_peak_increase'] / mib:.0f} MiB")], "diagnostics"))
            tables.append((
                "Where the diagnostics spend their time (largest own times)",
                ["function", "calls", "own time [s]", "cumulative [s]"],
                [(f"`{r['function']}`", r["calls"], _fmt(r["own"]), _fmt(r["cumulative"]))
                 for r in diag["profile"]], "diagnostics_profile"))

    if "first_call" in result:
        first = result["first_call"]
        rows = [(f"`{name}`", k["signatures"], _fmt(k["seconds"], ".2f"))
                for name, k in sorted(first["kernels"].items(), key=lambda kv: -kv[1]["seconds"])]
        rows.append(("**all numba compilation**", sum(k["signatures"] for k in
                                                     first["kernels"].values()),
                     _fmt(first["compile"], ".2f")))
        tables.append((
            f"First call in a new environment (empty numba cache): import "
            f"{first['import']:.1f} s, first {first['size']}×{first['size']} match "
            f"{first['first']:.1f} s, second {first['second']:.2f} s",
            ["jitted function", "signatures compiled", "compile time [s]"], rows,
            "first_call"))
    return tables


def cluster_tables(result):
    """(title, header, rows, csv name) of the match_many table."""
    mib = 2.0**20
    rows = []
    for r in result["rows"]:
        rows.append((r["mode"], _fmt(r["elapsed"], ".2f"), _fmt(r["throughput"], ".3f"),
                     _fmt(r["task_median"], ".2f"), _fmt(r["overhead"], ".3f"),
                     f"{100 * r['overhead_fraction']:.1f} %",
                     f"{r['worker_peak_increase'] / mib:.0f} MiB "
                     f"({r['worker_peak_ratio']:.2f}×)" if "worker_peak_ratio" in r else "–",
                     _fmt(r["startup"], ".1f") if r["startup"] else "–"))
    return [(f"`match_many` on {result['n_exposures']} exposures of {result['size']}×"
             f"{result['size']} float32 pixels, FITS in and out (`output_dir`)",
             ["mode", "wall time [s]", "exposures / s", "one exposure (task) [s]",
              "overhead per exposure [s]", "overhead ÷ task", "worker peak memory increase "
              "(÷ one exposure)", "start-up and warm-up [s]"], rows, "cluster")]


def goal_checks(raw):
    """``[(goal, limit, measured, met)]`` for checks.md."""
    out = []

    def add(name, value, lower_is_better=True):
        limit = GOALS[name]
        if value is None or not np.isfinite(value):
            out.append((name, limit, None, None))
        else:
            out.append((name, limit, float(value), bool(value <= limit)
                        if lower_is_better else bool(value >= limit)))

    sp = raw.get("speed")
    if sp is not None:
        e2e = sp["end_to_end"]
        ratios, med = e2e.get("ratios", {}), e2e["medians"]
        add("match / fftconvolve (1 thread)", ratios.get("match/fftconvolve"))
        add("match / fftconvolve (same threads)", ratios.get("match/fftconvolve_threads"))
        add("data-only convolution / fftconvolve (same threads)",
            ratios.get("convolve_data_only/fftconvolve_threads"))
        default = next((s for s in sp["solve"] if s["label"] == "defaults"), sp["solve"][0])
        add("kernel solution [s]", default["medians"]["kernel_solution"])
        # the chosen level alone (the default also tries coarser and finer node levels)
        add("kernel solution, one level of nodes [s]", default["medians"].get("solve_total"))
        if "memory" in sp:
            mem = sp["memory"]
            add("peak memory increase / input", max(mem["rss_peak_increase_ratio"],
                                                    mem["traced_peak_ratio"]))
            diag = mem.get("diagnostics", {})
            if "seconds" in diag:
                add("diagnostics / match", diag["seconds"] / mem["match_seconds"])
                add("diagnostics peak memory increase [GB]", diag["rss_peak_increase"] / 1e9)
        if "first_call" in sp:
            add("first-call compilation [s]", sp["first_call"]["compile"])
        del med
    cl = raw.get("cluster")
    if cl is not None:
        clusters = [r for r in cl["rows"] if "worker_peak_ratio" in r]
        if clusters:
            add("cluster overhead per exposure [s]", max(r["overhead"] for r in clusters))
            add("cluster overhead / exposure time", max(r["overhead_fraction"]
                                                        for r in clusters))
            add("worker peak memory / exposure", max(r["worker_peak_ratio"] for r in clusters))
    return out


def write_checks(path, raw):
    """checks.md: every measured figure against the project's goals (for developers)."""
    rows = [(name, f"≤ {limit:g}", _fmt(value), "–" if met is None else
             ("met" if met else "**not met**")) for name, limit, value, met in goal_checks(raw)]
    path.write_text("# Goals\n\n" + _env_line(raw["environment"]) + "\n\n"
                    + markdown_table(["figure", "goal", "measured", ""], rows) + "\n")


def _method_order(method):
    order = list(accuracy.ASTROPSFMATCH_CONFIGS) + ["make_kernel", "make_wiener_kernel",
                                                     "pypher"]
    return order.index(method) if method in order else len(order)


def _losses(rows, pair):
    """(column, astropsfmatch result, best peer result) where the given astropsfmatch
    results lose to the best peer: max |res| at the centre, and over the field."""
    ours = [r for r in rows if r.method.startswith("astropsfmatch")]
    peers = [r for r in rows if not r.method.startswith("astropsfmatch")]
    losses = []
    if not ours or not peers:
        return losses
    columns = [("centre", "centre_max")] + ([("field", "field_max")] if pair.varying else [])
    for column, attribute in columns:
        mine = min(ours, key=lambda r: getattr(r, attribute))
        peer = min(peers, key=lambda r: getattr(r, attribute))
        if getattr(peer, attribute) < getattr(mine, attribute):
            losses.append((column, mine, peer, attribute))
    return losses


def accuracy_tables(results, pairs):
    """(title, header, rows, csv name) of the accuracy tables, and the losses.

    The losses are ``{"defaults": [...], "any configuration": [...]}``, each a
    list of ``(pair, column, astropsfmatch Result, best peer Result, attribute)``.
    """
    best = accuracy.best_by_method(results)
    default = next(iter(accuracy.ASTROPSFMATCH_CONFIGS))
    summary = []
    losses = {"defaults": [], "any configuration": []}
    for pair in pairs:
        rows = sorted((r for r in best if r.pair == pair.name),
                      key=lambda r: _method_order(r.method))
        winner = min(rows, key=lambda r: r.key)
        mine = [r for r in rows if r.method == default]
        peers = [r for r in rows if not r.method.startswith("astropsfmatch")]
        losses["defaults"] += [(pair.name, *loss) for loss in _losses(mine + peers, pair)]
        losses["any configuration"] += [(pair.name, *loss) for loss in _losses(rows, pair)]
        for r in rows:
            mark = " ◀ best" if r is winner else ""
            summary.append((
                pair.name, r.method + mark, _fmt(r.centre_max, ".2e"), _fmt(r.centre_rms, ".2e"),
                _fmt(r.field_max, ".2e"), _fmt(r.field_rms, ".2e"),
                r.params or ("stamps {stamp}, {candidates} candidate(s)".format(**r.extra)
                             if r.extra else "")))
    header = ["PSF pair", "method", "max abs (centre)", "RMS (centre)", "max abs (field)",
              "RMS (field)", "best parameters / fit"]
    windows = []
    for pair in pairs:
        rows = [r for r in accuracy.best_by_family(results)
                if r.pair == pair.name and r.family.startswith("make_kernel")]
        for r in sorted(rows, key=lambda r: r.key):
            windows.append((pair.name, r.family.replace("make_kernel, ", ""), r.params,
                            _fmt(r.centre_max, ".2e"), _fmt(r.field_max, ".2e")))
    pair_rows = [(p.name, p.note) for p in pairs]
    tables = [
        ("PSF pairs", ["PSF pair", "source -> target"], pair_rows, "accuracy_pairs"),
        ("Residual of source ⊛ K − target, relative to the target peak, at equal 21×21 "
         "support (◀: smallest max abs, over the field for varying PSFs)", header, summary,
         "accuracy"),
        ("photutils make_kernel: best parameters of each window", [
            "PSF pair", "window", "best parameters", "max abs (centre)", "max abs (field)"],
         windows, "accuracy_windows"),
    ]
    return tables, losses


def _loss_text(losses):
    lines = []
    for kind, items in losses.items():
        lines.append(f"Rows where astropsfmatch ({kind}) loses to the best peer:")
        lines += [f"- {pair}, max abs at the {column}: {mine.method} "
                  f"{getattr(mine, attribute):.2e} vs {peer.method} "
                  f"{getattr(peer, attribute):.2e} ({peer.params})"
                  for pair, column, mine, peer, attribute in items] or ["- none"]
        lines.append("")
    return "\n".join(lines).strip()


def write_tables(path, title, tables, preamble=""):
    text = [f"# {title}", ""]
    if preamble:
        text += [preamble, ""]
    for heading, header, rows, _ in tables:
        text += [f"## {heading}", "", markdown_table(header, rows), ""]
    path.write_text("\n".join(text))


# --- plot -----------------------------------------------------------------------


def make_plot(path, speed_result=None, accuracy_results=None, pairs=None):
    """Accuracy bars (log) on top; speed bars and numba speed-ups below; one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if speed_result is None and accuracy_results is None:
        return
    rows = int(accuracy_results is not None) + int(speed_result is not None)
    fig = plt.figure(figsize=(12.5, 5.2 * rows))
    grid = fig.add_gridspec(rows, 2, width_ratios=[1.3, 1.0])
    row = 0
    if accuracy_results is not None:
        ax = fig.add_subplot(grid[row, :])
        row += 1
        best = accuracy.best_by_method(accuracy_results)
        methods = sorted({r.method for r in best}, key=_method_order)
        width = 0.8 / len(methods)
        for m, method in enumerate(methods):
            values = []
            for pair in pairs:
                match = next((r for r in best if r.pair == pair.name and r.method == method),
                             None)
                values.append(match.key if match is not None else np.nan)
            ax.bar(np.arange(len(pairs)) + (m - (len(methods) - 1) / 2) * width, values, width,
                   label=method, color=f"C{m}",
                   hatch="" if method.startswith("astropsfmatch") else "//",
                   edgecolor="white" if method.startswith("astropsfmatch") else "0.3",
                   linewidth=0.3)
        ax.set_yscale("log")
        ax.set_xticks(np.arange(len(pairs)))
        ax.set_xticklabels([p.name.replace(" -> ", "\n→ ").replace(", ", ",\n")
                            + ("\n(max over the field)" if p.varying else "") for p in pairs],
                           fontsize=8)
        ax.set_ylabel("max |source ⊛ K − target| / target peak")
        ax.set_title("Matching accuracy at equal 21×21 kernel support (lower is better; "
                     "peers: best of a parameter scan)")
        ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.2),
                  frameon=False)
        ax.grid(axis="y", alpha=0.3)
    if speed_result is not None:
        ax = fig.add_subplot(grid[row, 0])
        med = speed_result["end_to_end"]["medians"]
        stages = speed_result["end_to_end"]["stages"]
        threads = speed_result["end_to_end"].get("threads", speed_result["cpus"])
        bars = [("fftconvolve\n(constant K,\ndata only,\n1 thread)", med["fftconvolve"], "0.6")]
        if "fftconvolve_threads" in med:
            bars.append((f"fftconvolve\n({threads} threads)", med["fftconvolve_threads"], "0.75"))
        bars.append(("astropsfmatch\nmatch", med["match"], "C0"))
        if "convolve_data_only" in med:
            bars.append(("astropsfmatch\nconvolution,\ndata only", med["convolve_data_only"],
                         "C9"))
        bars += [("photutils +\nconvolve_fft", med["photutils_convolve_fft"], "C3"),
                 ("photutils +\nconvolve_fft\n(+ variance)",
                  med["photutils_convolve_fft_variance"], "C3")]
        labels, values, colours = zip(*bars, strict=True)
        ax.bar(range(len(bars)), values, color=colours)
        match_bar = labels.index("astropsfmatch\nmatch")
        bottom = 0.0
        for key, colour in (("psf_realization", "C2"), ("kernel_solution", "C1"),
                            ("quality", "C5"), ("convolution", "C4"), ("output", "C8")):
            if key in stages:
                ax.bar(match_bar, stages[key], bottom=bottom, color=colour, width=0.45,
                       label=f"match: {key.replace('_', ' ')}")
                bottom += stages[key]
        for i, value in enumerate(values):
            ax.text(i, value, f"{value:.2f} s\n{value / values[0]:.2f}×", ha="center",
                    va="bottom", fontsize=8)
        ax.set_xticks(range(len(bars)))
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_ylabel("wall time [s] (median)")
        size = speed_result["size"]
        load = speed_result["load_start"][0]
        ax.set_title(f"{size}×{size} float32 image with variance and mask "
                     f"({speed_result['cpus']} CPUs, load {load:.2f})", fontsize=10)
        ax.set_ylim(0, max(values) * 1.25)
        ax.legend(fontsize=7, loc="upper left")
        ax = fig.add_subplot(grid[row, 1])
        kernels = [k for k in speed_result["kernels"] if np.isfinite(k["speedup"])]
        ax.barh(range(len(kernels)), [k["speedup"] for k in kernels], color="C0")
        ax.set_xscale("log")
        ax.set_yticks(range(len(kernels)))
        ax.set_yticklabels([k["kernel"] for k in kernels], fontsize=8)
        ax.set_xlabel("speed-up over the NumPy twin in tests/naive.py")
        ax.set_title("Numba kernels", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- main -----------------------------------------------------------------------


def _to_json(value):
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    return value


def _results_from_json(raw):
    """Accuracy Result objects and PSF pairs back from ``results.json``."""
    results = [accuracy.Result(**{k: (np.nan if v is None else v) for k, v in r.items()})
               for r in raw["accuracy"]["results"]]
    names = {r.pair for r in results}
    pairs = [p for p in accuracy.psf_pairs(raw["accuracy"]["field"]) if p.name in names]
    return results, pairs


def _env_line(env):
    return (f"Run {env['date']} on {env['cpus']} CPU(s) ({env['machine']}), Python "
            f"{env['python']}; " + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
            + f"; git {env.get('git', 'unknown')}.")


def report(raw, output, *, update_docs=False):
    """Write the Markdown and CSV tables, checks.md and the plot from the raw results."""
    written = []
    accuracy_results = pairs = None
    if "accuracy" in raw:
        part = raw["accuracy"]
        env_line = _env_line(part.get("environment", raw["environment"]))
        accuracy_results, pairs = _results_from_json(raw)
        tables, losses = accuracy_tables(accuracy_results, pairs)
        configs = "; ".join(f"{label}: `MatchConfig(" + ", ".join(
            f"{k}={v!r}" for k, v in {"kernel_size": 21, **options}.items()) + ")`"
            for label, options in accuracy.ASTROPSFMATCH_CONFIGS.items())
        preamble = "\n\n".join([
            env_line,
            "Metric: max and RMS of abs(source ⊛ K − target) / target peak on the complete-"
            "convolution region (65×65) of 85×85 unit-sum stamps; for the varying PSFs at "
            f"the field centre and over a {part['n_positions']}×{part['n_positions']} grid of "
            "positions spanning the field. Every kernel is 21×21: the peers' kernels are "
            "computed on the 85×85 stamps, cut to the central 21×21 and renormalized to unit "
            "sum. Peers: best of a parameter scan, chosen with the true target (see "
            "benchmarks/accuracy.py). Constant PSFs: astropsfmatch solves one 128×128 cell "
            "(spatial order 0); varying PSFs: a field of "
            f"{part['field']}×{part['field']} pixels, 128-pixel cells, spatial order 2.",
            "astropsfmatch configurations: " + configs + " (psf_size applies to analytic "
            "models only).",
            *part["notes"], _loss_text(losses)])
        write_tables(output / "accuracy.md", "Matching accuracy", tables, preamble)
        written.append("accuracy.md")
        for _, header, rows, name in tables:
            write_csv(output / f"{name}.csv", header, rows)
            written.append(f"{name}.csv")
    speed_result = raw.get("speed")
    if speed_result is not None:
        env_line = _env_line(speed_result.get("environment", raw["environment"]))
        tables = speed_tables(speed_result)
        waited = speed_result["waited"]
        load = (f"1-minute load average: {speed_result['load_start'][0]:.2f} at the start "
                f"(after waiting {waited['waited']:.0f} s for < {waited['max_load']}), "
                f"{speed_result['load_end'][0]:.2f} at the end; before and after each "
                "end-to-end round: "
                + ", ".join(f"{x:.2f}" for x in speed_result["end_to_end"]["load"]))
        write_tables(output / "speed.md", "Speed and memory", tables, env_line + "\n\n" + load)
        written.append("speed.md")
        for _, header, rows, name in tables:
            write_csv(output / f"{name}.csv", header, rows)
            written.append(f"{name}.csv")
    cluster_result = raw.get("cluster")
    if cluster_result is not None:
        env_line = _env_line(cluster_result.get("environment", raw["environment"]))
        tables = cluster_tables(cluster_result)
        load = f"1-minute load average before the part: {cluster_result['load'][0]:.2f}, " \
               f"after: {cluster_result['load'][1]:.2f}."
        write_tables(output / "cluster.md", "Scale-out with match_many", tables,
                     env_line + "\n\n" + load)
        written.append("cluster.md")
        for _, header, rows, name in tables:
            write_csv(output / f"{name}.csv", header, rows)
            written.append(f"{name}.csv")
    write_checks(output / "checks.md", raw)
    written += ["checks.md", "results.json"]
    plot = output / "benchmarks.png"
    make_plot(plot, speed_result, accuracy_results, pairs)
    if plot.exists():
        written.append("benchmarks.png")
    if update_docs:
        PUBLISHED.mkdir(parents=True, exist_ok=True)
        if output.resolve() != PUBLISHED.resolve():
            for name in written:
                if (output / name).exists():
                    shutil.copy(output / name, PUBLISHED / name)
        if plot.exists():
            DOCS_STATIC.mkdir(parents=True, exist_ok=True)
            shutil.copy(plot, DOCS_STATIC / "benchmarks.png")
    return written


def main(argv=None):
    """Run the benchmarks (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and fewer repeats (a few minutes)")
    parser.add_argument("--output", type=Path, default=None,
                        help="directory for the tables and the plot "
                             "[a new benchmarks/results/run-<date>-<time>]")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=None,
                        help="run these parts; the others are kept from OUTPUT/results.json")
    parser.add_argument("--report-only", action="store_true",
                        help="only rebuild the tables and the plot from OUTPUT/results.json")
    parser.add_argument("--update-docs", action="store_true",
                        help="also copy the tables, results.json and the plot to "
                             "benchmarks/results/ and docs/_static/performance/")
    parser.add_argument("--size", type=int, default=None, help="image side [4096; quick 1024]")
    parser.add_argument("--repeat", type=int, default=None, help="timing repeats [5; quick 1]")
    parser.add_argument("--field", type=int, default=None,
                        help="side of the varying-PSF field (accuracy) [2048; quick 1024]")
    parser.add_argument("--exposures", type=int, default=None,
                        help="exposures of the cluster part [8; quick 4]")
    parser.add_argument("--exposure-size", type=int, default=None,
                        help="side of the cluster part's exposures [2048; quick 1024]")
    parser.add_argument("--max-load", type=float, default=1.5,
                        help="wait for the 1-minute load average to fall below this [1.5]")
    parser.add_argument("--max-wait", type=float, default=None,
                        help="longest wait for a low load, seconds [900; quick 0]")
    args = parser.parse_args(argv)
    quick = args.quick
    size = args.size or (1024 if quick else 4096)
    repeat = args.repeat or (1 if quick else 5)
    field = args.field or (1024 if quick else 2048)
    n_positions = 5 if quick else 7
    max_wait = args.max_wait if args.max_wait is not None else (0.0 if quick else 900.0)
    output = args.output if args.output is not None else (
        PUBLISHED if args.report_only else default_output())
    output.mkdir(parents=True, exist_ok=True)
    saved = output / "results.json"

    if args.report_only:
        report(json.loads(saved.read_text()), output, update_docs=args.update_docs)
        print(f"rebuilt the tables and the plot in {output}")
        return

    raw = {}
    if args.only is not None and saved.exists():
        raw = json.loads(saved.read_text())
    raw["environment"] = environment()
    raw["quick"] = quick
    parts = args.only or PARTS
    print(f"astropsfmatch benchmarks -> {output} ({'quick' if quick else 'full'} run: "
          f"{', '.join(parts)}); {raw['environment']['cpus']} CPU(s), load "
          f"{os.getloadavg()[0]:.2f}", flush=True)

    if "accuracy" in parts:
        start = time.perf_counter()
        pairs = accuracy.psf_pairs(field, quick=quick)
        results, notes = accuracy.run(field=field, n_positions=n_positions, quick=quick,
                                      pairs=pairs)
        # the best variant of every family is all the tables need (each family's full
        # parameter scan is ~300 rows per pair)
        raw["accuracy"] = {"results": [vars(r) for r in accuracy.best_by_family(results)],
                           "n_variants": len(results), "notes": notes,
                           "field": field, "n_positions": n_positions,
                           "environment": raw["environment"],
                           "seconds": time.perf_counter() - start}
        saved.write_text(json.dumps(_to_json(raw), indent=1))

    if "speed" in parts:
        waited = wait_for_load(args.max_load, max_wait)
        waited["max_load"] = args.max_load
        start = time.perf_counter()
        result = speed.run(size=size, repeat=repeat, naive_seconds=0.5 if quick else 2.0,
                           max_naive=1.0 if quick else 20.0, kernel_repeat=3 if quick else 7)
        result["waited"] = waited
        result["environment"] = raw["environment"]
        result["seconds"] = time.perf_counter() - start
        raw["speed"] = result
        saved.write_text(json.dumps(_to_json(raw), indent=1))

    if "cluster" in parts:
        from bench_match_many import run_cluster

        wait_for_load(args.max_load, max_wait)
        load = os.getloadavg()[0]
        start = time.perf_counter()
        result = run_cluster(n_exposures=args.exposures or (4 if quick else 8),
                             size=args.exposure_size or (1024 if quick else 2048))
        result["load"] = [load, os.getloadavg()[0]]
        result["environment"] = raw["environment"]
        result["seconds"] = time.perf_counter() - start
        raw["cluster"] = result
        saved.write_text(json.dumps(_to_json(raw), indent=1))

    raw = json.loads(saved.read_text())
    report(raw, output, update_docs=args.update_docs)
    for name in ("accuracy.md", "speed.md", "cluster.md", "checks.md"):
        if (output / name).exists():
            print((output / name).read_text(), flush=True)
    print(f"wrote {output}" + (" and updated benchmarks/results/ and docs/_static/"
                                if args.update_docs else ""), flush=True)


if __name__ == "__main__":
    main()
