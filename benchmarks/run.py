"""Run the astropsfmatch benchmarks and write the result tables and plot.

Usage::

    python benchmarks/run.py                      # full run (about 8 minutes)
    python benchmarks/run.py --quick              # small sizes, under a minute
    python benchmarks/run.py --output DIR         # default: benchmarks/results
    python benchmarks/run.py --only accuracy      # or: --only speed

Writes to the output directory ``speed.md`` and ``accuracy.md`` (Markdown
tables), the same tables as CSV (used by ``docs/performance.rst``),
``results.json`` (raw figures) and ``benchmarks.png``; with the default
output directory the plot is also copied to ``docs/_static/performance/``.

Timings on a shared machine are noisy: before the speed part the script waits
(up to ``--max-wait`` seconds) for the 1-minute load average to fall below
``--max-load``, and records the load before and after. Every ratio is taken
between timings of the same run. See ``benchmarks/README.md``.
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

DEFAULT_OUTPUT = HERE / "results"
DOCS_STATIC = HERE.parent / "docs" / "_static" / "performance"
PACKAGES = ("astropsfmatch", "numpy", "scipy", "astropy", "photutils", "numba", "pypher")

#: Issue targets, checked in the tables.
MATCH_TARGET, MATCH_GOAL = 4.0, 2.0
SOLVE_TARGET = 0.5
NUMBA_TARGET = 30.0
MEMORY_TARGET = 6.0


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
    med, stages = e2e["medians"], e2e["stages"]
    cpu = e2e.get("cpu_medians", {})
    base = med["fftconvolve"]
    n = len(e2e["times"]["match"])
    size = result["size"]
    ratio = med["match"] / base
    verdict = ("meets the ≤ 4× target" + (" and the 2× goal" if ratio <= MATCH_GOAL else "")
               if ratio <= MATCH_TARGET else "**misses the ≤ 4× target**")

    def row(label, key, note=""):
        cpu_cells = ((_fmt(cpu[key]), _fmt(cpu[key] / cpu["fftconvolve"], ".2f"))
                     if key in cpu else ("–", "–"))
        return (label, _fmt(med[key]), _fmt(med[key] / base, ".2f"), *cpu_cells, note)

    def stage(label, key):
        return (label, _fmt(stages[key]), _fmt(stages[key] / base, ".2f"), "", "", "")

    def versus(key):
        if med["match"] < med[key]:
            return f"astropsfmatch is {med[key] / med['match']:.2f}× faster"
        return f"**astropsfmatch is {med['match'] / med[key]:.2f}× slower**"

    end_to_end = [
        row("`scipy.signal.fftconvolve(data, K, mode='same')`, one constant 21×21 float32 "
            "kernel, data only (single-threaded)", "fftconvolve", "reference"),
        row("astropsfmatch `ModelPsfMatcher().match` (data + variance + mask, spatially "
            "varying kernel; 2 threads)", "match", verdict),
        stage("↳ PSF realization", "psf_realization"),
        stage("↳ kernel solution", "kernel_solution"),
        stage("↳ convolution (data, variance, mask)", "convolution"),
        stage("↳ output CCDData and weights", "output"),
    ]
    if "convolve_data_only" in med:
        end_to_end.append(row("astropsfmatch `convolve_spatially_varying(data, kernel)` alone "
                              "(data only, no variance or mask)", "convolve_data_only"))
    end_to_end += [
        row("photutils `make_kernel` (TukeyWindow) + `astropy.convolution.convolve_fft(data, "
            "K, mask=mask)`, data only", "photutils_convolve_fft",
            versus("photutils_convolve_fft")),
        row("photutils `make_kernel` + `convolve_fft` of data and of variance (K²)",
            "photutils_convolve_fft_variance", versus("photutils_convolve_fft_variance")),
    ]
    tables = [(f"End to end, {size}×{size} float32 image (median of {n} interleaved runs)",
               ["operation", "wall time [s]", "÷ fftconvolve", "CPU time [s]",
                "CPU ÷ fftconvolve", "note"], end_to_end, "speed")]

    solve_rows = []
    for s in result["solve"]:
        m = s["medians"]
        grid = f"{s['n_cells'][0]}×{s['n_cells'][1]} (grow_cells={s['grow_cells']})"
        solve_rows.append((
            grid, s["n_candidates"], f"{s['stamp']}×{s['stamp']}", s["n_basis"],
            _fmt(m["kernel_solution"]),
            "meets" if m["kernel_solution"] <= SOLVE_TARGET else "**misses**",
            f"{_fmt(m['solve_normal_equations'])} / {_fmt(m['solve_candidate_fits'])} / "
            f"{_fmt(m['solve_spatial_solve'])}",
            _fmt(m["psf_realization"]), _fmt(m["wall"])))
    tables.append((
        "Kernel solution alone (`ModelPsfMatcher.solve`, spatial order 2; medians)",
        ["candidate grid", "candidates", "stamps", "basis functions",
         "kernel solution [s]", "≤ 0.5 s target", "normal equations / candidate fits / "
         "spatial solve [s]", "PSF realization [s]", "solve() wall [s]"],
        solve_rows, "solve"))

    if "psf_loop" in result:
        p = result["psf_loop"]
        tables.append((
            "PSF realization: GriddedPSFModel stamps at every candidate",
            ["stamps", "photutils `GriddedPSFModel.evaluate` loop [s]",
             "astropsfmatch `_PSF.stamps` [s]", "speed-up", "max difference / peak"],
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
            f"{k['speedup']:.0f}×" if k["speedup"] >= NUMBA_TARGET
            else f"**{k['speedup']:.1f}×**", "yes" if k["agree"] else "**NO**",
            k["threads"]))
    tables.append((
        "Numba kernels vs their NumPy twins in tests/naive.py (same input; twin run once, "
        "numba median; bold: below the 30× target)",
        ["kernel", "input", "twin [s]", "numba [s]", "speed-up", "outputs agree",
         "numba threads"], kernel_rows, "kernels"))

    if "memory" in result:
        mem = result["memory"]
        mib = 2.0**20
        tables.append((
            "Peak memory of one end-to-end match (fresh subprocess)",
            ["input (data + variance + mask)", "peak RSS increase", "÷ input",
             "tracemalloc peak", "÷ input", "≤ 6× target", "of which the outputs"],
            [(f"{mem['input_bytes'] / mib:.0f} MiB",
              f"{mem['rss_peak_increase'] / mib:.0f} MiB"
              + ("" if mem["rss_reliable"] else " (peak could not be reset: upper bound)"),
              f"{mem['rss_peak_increase_ratio']:.2f}",
              f"{mem['traced_peak'] / mib:.0f} MiB", f"{mem['traced_peak_ratio']:.2f}",
              "meets" if max(mem["rss_peak_increase_ratio"], mem["traced_peak_ratio"])
              <= MEMORY_TARGET else "**misses**",
              f"{mem['output_bytes'] / mib:.0f} MiB ({mem['output_bytes_ratio']:.2f}×)")],
            "memory"))
    return tables


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
        bars = [("fftconvolve\n(constant K,\ndata only)", med["fftconvolve"], "0.6"),
                ("astropsfmatch\nmatch", med["match"], "C0")]
        if "convolve_data_only" in med:
            bars.append(("astropsfmatch\nconvolution,\ndata only", med["convolve_data_only"],
                         "C9"))
        bars += [("photutils +\nconvolve_fft", med["photutils_convolve_fft"], "C3"),
                 ("photutils +\nconvolve_fft\n(+ variance)",
                  med["photutils_convolve_fft_variance"], "C3")]
        labels, values, colours = zip(*bars, strict=True)
        ax.bar(range(len(bars)), values, color=colours)
        bottom = 0.0
        for key, colour in (("psf_realization", "C2"), ("kernel_solution", "C1"),
                            ("convolution", "C4")):
            ax.bar(1, stages[key], bottom=bottom, color=colour, width=0.45,
                   label=f"match: {key.replace('_', ' ')}")
            bottom += stages[key]
        for i, value in enumerate(values):
            ax.text(i, value, f"{value:.2f} s\n{value / values[0]:.2f}×", ha="center",
                    va="bottom", fontsize=8)
        ax.set_xticks(range(len(bars)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_ylabel("wall time [s] (median)")
        size = speed_result["size"]
        load = speed_result["load_start"][0]
        ax.set_title(f"{size}×{size} float32 image with variance and mask "
                     f"({speed_result['cpus']} CPUs, load {load:.2f})", fontsize=10)
        ax.set_ylim(0, max(values) * 1.2)
        ax.legend(fontsize=7, loc="upper left")
        ax = fig.add_subplot(grid[row, 1])
        kernels = [k for k in speed_result["kernels"] if np.isfinite(k["speedup"])]
        ax.barh(range(len(kernels)), [k["speedup"] for k in kernels],
                color=["C0" if k["speedup"] >= NUMBA_TARGET else "C3" for k in kernels])
        ax.axvline(NUMBA_TARGET, color="k", ls="--", lw=1, label="30× target")
        ax.set_xscale("log")
        ax.set_yticks(range(len(kernels)))
        ax.set_yticklabels([k["kernel"] for k in kernels], fontsize=8)
        ax.set_xlabel("speed-up over the NumPy twin in tests/naive.py")
        ax.set_title("Numba kernels", fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
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


def report(raw, output, *, copy_to_docs=True):
    """Write the Markdown and CSV tables and the plot from the raw results."""
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
        for _, header, rows, name in tables:
            write_csv(output / f"{name}.csv", header, rows)
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
        for _, header, rows, name in tables:
            write_csv(output / f"{name}.csv", header, rows)
    plot = output / "benchmarks.png"
    make_plot(plot, speed_result, accuracy_results, pairs)
    if copy_to_docs and output.resolve() == DEFAULT_OUTPUT.resolve() and plot.exists():
        DOCS_STATIC.mkdir(parents=True, exist_ok=True)
        shutil.copy(plot, DOCS_STATIC / "benchmarks.png")


def main(argv=None):
    """Run the benchmarks (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and fewer repeats (a minute or two)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help="directory for the tables and the plot [benchmarks/results]")
    parser.add_argument("--only", choices=["speed", "accuracy"], default=None,
                        help="run one part; the other is kept from OUTPUT/results.json")
    parser.add_argument("--report-only", action="store_true",
                        help="only rebuild the tables and the plot from OUTPUT/results.json")
    parser.add_argument("--size", type=int, default=None, help="image side [4096; quick 1024]")
    parser.add_argument("--repeat", type=int, default=None, help="timing repeats [5; quick 1]")
    parser.add_argument("--field", type=int, default=None,
                        help="side of the varying-PSF field (accuracy) [2048; quick 1024]")
    parser.add_argument("--max-load", type=float, default=1.5,
                        help="wait for the 1-minute load average to fall below this [1.5]")
    parser.add_argument("--max-wait", type=float, default=None,
                        help="longest wait for a low load, seconds [900; quick 0]")
    parser.add_argument("--no-docs", action="store_true",
                        help="do not copy the plot to docs/_static/performance/")
    args = parser.parse_args(argv)
    quick = args.quick
    size = args.size or (1024 if quick else 4096)
    repeat = args.repeat or (1 if quick else 5)
    field = args.field or (1024 if quick else 2048)
    n_positions = 5 if quick else 7
    max_wait = args.max_wait if args.max_wait is not None else (0.0 if quick else 900.0)
    output = args.output
    output.mkdir(parents=True, exist_ok=True)
    saved = output / "results.json"

    if args.report_only:
        report(json.loads(saved.read_text()), output, copy_to_docs=not args.no_docs)
        print(f"rebuilt the tables and the plot in {output}")
        return

    raw = {}
    if args.only is not None and saved.exists():
        raw = json.loads(saved.read_text())
    raw["environment"] = environment()
    raw["quick"] = quick
    print(f"astropsfmatch benchmarks -> {output} ({'quick' if quick else 'full'} run); "
          f"{raw['environment']['cpus']} CPU(s), load {os.getloadavg()[0]:.2f}", flush=True)

    if args.only in (None, "accuracy"):
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

    if args.only in (None, "speed"):
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

    raw = json.loads(saved.read_text())
    report(raw, output, copy_to_docs=not args.no_docs)
    for name in ("accuracy.md", "speed.md"):
        if (output / name).exists():
            print((output / name).read_text(), flush=True)
    print(f"wrote {output}", flush=True)


if __name__ == "__main__":
    main()
