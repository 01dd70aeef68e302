"""Make the figure of the PSF-matched coadd (docs/coadd.rst): coadd_psf.png.

Four noise-free exposures of one star field, each with its own spatially
varying PSF (a 4x oversampled GriddedPSFModel), a sub-pixel offset and a
position angle of 0, 15, 30 or 90 degrees, are co-added on a north-up grid two
ways: matched in their own frames with `match_many` and reprojected by
`coadd` (bilinear interpolation), and with `coadd_psf_matched`. The stars of
each coadd are fitted with an elliptical Gaussian PRF (astropy's TRF fitter)
and their FWHM and shape are drawn where they are::

    python docs/_static/coadd/coadd_psf_figure.py

It prints the measured ranges that docs/coadd.rst quotes. The PNG file is
committed; the documentation build does not run this.
"""

import warnings
from pathlib import Path

import numpy as np
from astropy.modeling.fitting import TRFLSQFitter
from astropy.nddata import CCDData, NDData, StdDevUncertainty
from astropy.wcs import WCS
from photutils.psf import CircularGaussianPRF, GaussianPRF, GriddedPSFModel

HERE = Path(__file__).resolve().parent
DPI = 72
#: Star markers with an outline, so that values near zero (white) show.
EDGES = {"edgecolors": "0.3", "linewidths": 0.6}
N = 256
ANGLES = [0.0, 15.0, 30.0, 90.0]
SHIFTS = [(0.37, -0.21), (-0.44, 0.29), (0.13, 0.46), (0.31, -0.38)]
FWHM_LAWS = [
    lambda u, v: 2.5 + 0.4 * u,
    lambda u, v: 2.9 - 0.3 * v,
    lambda u, v: 2.7 + 0.15 * (abs(2 * u - 1) + abs(2 * v - 1)),
    lambda u, v: 2.75 + 0.15 * (u + v),
]


def make_wcs(angle=0.0, dx=0.0, dy=0.0):
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [(N + 1) / 2 + dx, (N + 1) / 2 + dy]
    c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    wcs.wcs.cd = 2.0**-14 * np.array([[-c, s], [s, c]])
    return wcs


def make_psf(law, oversampling=4, half=12):
    nodes = np.linspace(0, N - 1, 3)
    d = (np.arange(2 * half * oversampling + 1) - half * oversampling) / oversampling
    yy, xx = np.meshgrid(d, d, indexing="ij")
    xypos = [(x, y) for y in nodes for x in nodes]
    data = [CircularGaussianPRF(fwhm=law(x / (N - 1), y / (N - 1)))(xx, yy) for x, y in xypos]
    return GriddedPSFModel(NDData(np.array(data), meta={"grid_xypos": xypos,
                                                        "oversampling": oversampling}))


def make_exposures(stars):
    sky = make_wcs().pixel_to_world(stars[:, 0], stars[:, 1])
    images, psfs = [], []
    for law, angle, (dx, dy) in zip(FWHM_LAWS, ANGLES, SHIFTS, strict=True):
        wcs, psf = make_wcs(angle, dx, dy), make_psf(law)
        data = np.zeros((N, N))
        for x, y in zip(*wcs.world_to_pixel(sky), strict=True):
            star = psf.copy()
            star.x_0, star.y_0, star.flux = x, y, 1e4
            iy, ix = round(y), round(x)
            yy, xx = np.mgrid[iy - 12:iy + 13, ix - 12:ix + 13]
            data[iy - 12:iy + 13, ix - 12:ix + 13] += star(xx, yy)
        images.append(CCDData(data, unit="electron", wcs=wcs,
                              uncertainty=StdDevUncertainty(np.ones((N, N)))))
        psfs.append(psf)
    return images, psfs


def star_grid():
    rng = np.random.default_rng(3)
    c = (N - 1) / 2
    grid = np.arange(c - 100, c + 101, 20)
    return np.array([(x + rng.uniform(-0.5, 0.5), y + rng.uniform(-0.5, 0.5))
                     for y in grid for x in grid if (x - c) ** 2 + (y - c) ** 2 < 92**2])


def shapes(data, stars, guess):
    """Elliptical Gaussian PRF fits: major and minor FWHM, angle of the major axis (deg)."""
    fitter = TRFLSQFitter()
    out = []
    for x, y in stars:
        iy, ix = round(y), round(x)
        yy, xx = np.mgrid[iy - 7:iy + 8, ix - 7:ix + 8]
        cut = data[iy - 7:iy + 8, ix - 7:ix + 8]
        model = GaussianPRF(flux=cut.sum(), x_0=x, y_0=y, x_fwhm=1.05 * guess,
                            y_fwhm=0.95 * guess, theta=20.0)
        for name in ("x_fwhm", "y_fwhm", "theta"):
            getattr(model, name).fixed = False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = fitter(model, xx, yy, cut, maxiter=500)
        a, b, theta = fit.x_fwhm.value, fit.y_fwhm.value, fit.theta.value
        if b > a:
            a, b, theta = b, a, theta + 90.0
        out.append((a, b, (theta + 90.0) % 180.0 - 90.0))
    return np.array(out)


def main():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from astropsfmatch import coadd, coadd_psf_matched, common_target_psf, match_many

    stars = star_grid()
    images, psfs = make_exposures(stars)
    target = common_target_psf(psfs, shapes=(N, N))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        many = match_many(images, target.psf, source_psfs=psfs, progress=False)
        reprojected = coadd(many, make_wcs(), (N, N))
    matched = coadd_psf_matched(images, target.psf, make_wcs(), (N, N), source_psfs=psfs)
    elliptical_target = GaussianPRF(x_fwhm=target.fwhm / 0.8, y_fwhm=target.fwhm, theta=30.0)
    elliptical = coadd_psf_matched(images, elliptical_target, make_wcs(), (N, N),
                                   source_psfs=psfs)

    rows = []
    for label, stack in [("match_many + coadd (reproject, bilinear)", reprojected),
                         ("coadd_psf_matched", matched)]:
        s = shapes(np.nan_to_num(stack.data), stars, target.fwhm)
        fwhm = np.sqrt(s[:, 0] * s[:, 1])
        rows.append((label, 100 * (fwhm / target.fwhm - 1), 1 - s[:, 1] / s[:, 0]))
        print(f"{label}: FWHM / target - 1 in [{rows[-1][1].min():.3f}, "
              f"{rows[-1][1].max():.3f}] %, ellipticity <= {rows[-1][2].max():.4f}"
              + (f", PSFCRES {stack.meta['PSFCRES']:.2g}" if "PSFCRES" in stack.meta else ""))
    s = shapes(np.nan_to_num(elliptical.data), stars, target.fwhm)
    ratio, angle = s[:, 1] / s[:, 0], s[:, 2]
    print(f"elliptical target (b/a 0.8 at 30 deg): b/a in [{ratio.min():.4f}, "
          f"{ratio.max():.4f}], angle in [{angle.min():.3f}, {angle.max():.3f}] deg, "
          f"PSFCRES {elliptical.meta['PSFCRES']:.2g}")

    fig, axes = plt.subplots(3, 2, figsize=(9.5, 12), layout="constrained")
    fwhm_range = max(np.abs(rows[0][1]).max(), 0.5)
    e_max = max(rows[0][2].max(), 0.01)
    for (label, dfwhm, e), (left, right) in zip(rows, axes[:2], strict=True):
        im = left.scatter(stars[:, 0], stars[:, 1], c=dfwhm, cmap="RdBu_r", s=70,
                          vmin=-fwhm_range, vmax=fwhm_range, **EDGES)
        fig.colorbar(im, ax=left, label="FWHM / target FWHM - 1 (%)")
        left.set_title(f"{label}\nFWHM: {dfwhm.min():+.3f} to {dfwhm.max():+.3f} %",
                       fontsize="medium")
        im = right.scatter(stars[:, 0], stars[:, 1], c=e, cmap="viridis", s=70, vmin=0,
                           vmax=e_max, **EDGES)
        fig.colorbar(im, ax=right, label="ellipticity 1 - b/a")
        right.set_title(f"{label}\nellipticity <= {e.max():.4f}", fontsize="medium")
    left, right = axes[2]
    im = left.scatter(stars[:, 0], stars[:, 1], c=100 * (ratio / 0.8 - 1), cmap="RdBu_r",
                      s=70, vmin=-1, vmax=1, **EDGES)
    fig.colorbar(im, ax=left, label="(b/a) / 0.8 - 1 (%)")
    left.set_title("coadd_psf_matched, target b/a = 0.8 at 30 deg\n"
                   f"b/a: {ratio.min():.4f} to {ratio.max():.4f}", fontsize="medium")
    im = right.scatter(stars[:, 0], stars[:, 1], c=angle - 30.0, cmap="RdBu_r", s=70,
                       vmin=-1, vmax=1, **EDGES)
    fig.colorbar(im, ax=right, label="major-axis angle - 30 (deg)")
    right.set_title("coadd_psf_matched, target b/a = 0.8 at 30 deg\n"
                    f"angle: {angle.min():.3f} to {angle.max():.3f} deg", fontsize="medium")
    for ax in axes.ravel():
        ax.set_xlim(0, N - 1)
        ax.set_ylim(0, N - 1)
        ax.set_aspect("equal")
        ax.set_xlabel("x (coadd pixels)")
        ax.set_ylabel("y (coadd pixels)")
    path = HERE / "coadd_psf.png"
    fig.savefig(path, dpi=DPI)
    print(f"wrote {path} ({path.stat().st_size // 1024} kB)")


if __name__ == "__main__":
    main()
