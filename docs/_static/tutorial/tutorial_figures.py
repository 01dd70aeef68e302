"""Make the figures of the tutorial (docs/tutorial.rst): inputs.png and results.png.

Runs the tutorial's own code blocks, in order, in a temporary directory, then
draws the figures from what they made, so that the pictures show exactly what
the page's code does::

    python docs/_static/tutorial/tutorial_figures.py

The PNG files are committed; the documentation build does not run this.
"""

import os
import re
import tempfile
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAGE = HERE.parents[1] / "tutorial.rst"
DPI = 80


def page_code(path):
    """The ``.. code-block:: python`` blocks of an rst page, joined in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if re.match(r"^\.\. code-block:: python\s*$", lines[i]):
            i += 1
            body = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith(" ")):
                body.append(lines[i])
                i += 1
            blocks.append(textwrap.dedent("\n".join(body)))
        else:
            i += 1
    return "\n\n".join(blocks)


def main():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from astropy.nddata import CCDData
    from photutils.psf import fit_fwhm

    here = os.getcwd()
    with tempfile.TemporaryDirectory() as work:
        os.chdir(work)
        try:
            namespace = {"__name__": "__main__"}
            exec(compile(page_code(PAGE), str(PAGE), "exec"), namespace)
            exposures = [CCDData.read(name) for name in namespace["names"]]
            stack = namespace["stack"]
        finally:
            os.chdir(here)
    psf, stars, target = namespace["psf"], namespace["stars"], namespace["target"]
    inner, size = namespace["inner"], namespace["SIZE"]

    # inputs.png: the first exposure and its ePSF grid
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), layout="constrained",
                             gridspec_kw={"width_ratios": [1, 1]})
    axes[0].imshow(exposures[0].data, origin="lower", cmap="gray_r", vmin=-10, vmax=400)
    axes[0].set_title("exposure_1.fits")
    axes[0].set_xlabel("x (pixels)")
    axes[0].set_ylabel("y (pixels)")
    half = psf.data.shape[1] // 2
    for epsf, (x, y) in zip(psf.data, psf.grid_xypos, strict=True):
        # each ePSF drawn at its position, enlarged
        scale = size / 3.6 / psf.data.shape[1]
        extent = [x - half * scale, x + half * scale, y - half * scale, y + half * scale]
        axes[1].imshow(epsf, origin="lower", cmap="viridis", extent=extent,
                       vmin=0, vmax=psf.data.max())
    axes[1].set_xlim(-size * 0.15, size * 1.15)
    axes[1].set_ylim(-size * 0.15, size * 1.15)
    axes[1].set_title("exposure_1_psf.fits: 9 ePSFs at their positions")
    axes[1].set_xlabel("x (pixels)")
    fig.savefig(HERE / "inputs.png", dpi=DPI)
    plt.close(fig)

    # results.png: star FWHM against x before and after; the coadd
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), layout="constrained")
    shifts = [(0, 0), (6, -4), (-5, 7)]
    for k, (image, (dx, dy)) in enumerate(zip(exposures, shifts, strict=True), start=1):
        xy = [(x + dx, y + dy) for x, y in inner]
        fwhm = fit_fwhm(image.data, xypos=xy, fit_shape=9, fwhm=3.0)
        axes[0].plot([x for x, _ in inner], fwhm, ".", label=f"exposure {k}")
    fwhm = fit_fwhm(stack.data, mask=stack.mask, xypos=inner, fit_shape=11, fwhm=target.fwhm)
    axes[0].plot([x for x, _ in inner], fwhm, "ko", label="coadd (matched)")
    axes[0].axhline(target.fwhm, color="k", ls="--", label=f"target {target.fwhm:.2f} px")
    axes[0].set_xlabel("x (pixels)")
    axes[0].set_ylabel("fitted FWHM (pixels)")
    axes[0].legend(fontsize="small", ncols=2)
    axes[1].imshow(stack.data, origin="lower", cmap="gray_r", vmin=-5, vmax=250)
    axes[1].set_title("coadd.fits (3 matched exposures)")
    axes[1].set_xlabel("x (pixels)")
    fig.savefig(HERE / "results.png", dpi=DPI)
    plt.close(fig)
    print("stars in the figure:", len(stars))
    for name in ("inputs.png", "results.png"):
        path = HERE / name
        print(f"wrote {path} ({path.stat().st_size // 1024} kB)")


if __name__ == "__main__":
    main()
