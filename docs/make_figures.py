"""Make the PNG figures of the documentation (docs/_static/diagnostics/).

Run from anywhere, after changing the diagnostics or the demo::

    python docs/make_figures.py

The figures are those of ``astropsfmatch demo`` (1024 x 1024, seed 0), plus a
kernel mosaic of differences from the centre. The documentation build only
includes the committed PNG files: it runs nothing and needs no network.
"""

from pathlib import Path

FOLDER = Path(__file__).resolve().parent / "_static" / "diagnostics"
DPI = 72


def main():
    from astropsfmatch import ModelPsfMatcher
    from astropsfmatch.demo import demo_cell_size, make_demo_data

    demo = make_demo_data(size=1024, seed=0)
    matcher = ModelPsfMatcher(cell_size=demo_cell_size(1024))
    result = matcher.match(demo.ccd, demo.target_psf, source_psf=demo.psf_model)
    FOLDER.mkdir(parents=True, exist_ok=True)
    paths = result.save_diagnostics(FOLDER, demo.ccd, overwrite=True, dpi=DPI)
    extra = FOLDER / "kernel_mosaic_difference.png"
    result.plot_kernel_mosaic(difference=True).savefig(extra, dpi=DPI)
    for path in [*paths, extra]:
        print(f"wrote {path} ({path.stat().st_size // 1024} kB)")


if __name__ == "__main__":
    main()
