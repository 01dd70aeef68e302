"""Make the PNG figures of the documentation (docs/_static/diagnostics/).

Run from anywhere, after changing the diagnostics or the demo::

    python docs/make_figures.py

The figures are those of ``astropsfmatch demo`` (1024 x 1024, seed 0). The documentation build only
includes the committed PNG files: it runs nothing and needs no network. The
tutorial's figures are made by ``docs/_static/tutorial/tutorial_figures.py``.
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
    for path in paths:
        print(f"wrote {path} ({path.stat().st_size // 1024} kB)")


if __name__ == "__main__":
    main()
