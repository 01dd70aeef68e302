"""
Make the PSFEx test files of ``tests/test_psfex.py`` from a simulated star field.

The star field has a *known* spatially varying PSF: an elliptical Moffat
profile whose FWHM and ellipticity change smoothly (linearly and
quadratically) across the image, integrated over square pixels. Its
parameters are in ``simulation.json`` beside this script, which the tests read
to re-render the true PSF anywhere with `render_psf` (so no image is stored).

Running this script (``python tests/data/psfex/make_psfex_files.py``) needs
numpy, astropy and the ``source-extractor`` and ``psfex`` executables (the
Debian packages of those names); the tests need neither. It

1. draws the star positions and fluxes from the seed of ``simulation.json``,
   renders the image with Poisson and read noise (in a temporary directory),
2. runs ``source-extractor`` with ``psfex.sex`` and ``psfex.param`` (a
   FITS_LDAC catalogue with VIGNET cut-outs),
3. runs ``psfex`` with ``psfex.psfex`` once per model in `MODELS` and
   writes the ``.psf`` files here, and the program versions and command lines
   into ``simulation.json``.

Importing this module runs nothing: the tests import `render_psf` and
`load_parameters` from it.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PARAMETERS_FILE = HERE / "simulation.json"

#: The simulation. Positions are 0-based pixel coordinates (pixel centres at
#: integers); ``u`` and ``v`` are x and y scaled to [-1, 1] over the image.
SIMULATION = {
    "seed": 20260412,
    "shape": [2048, 2048],
    "profile": "elliptical Moffat, integrated over square pixels",
    "beta": 4.5,
    # coefficients of 1, u, v, u^2, u*v, v^2. The FWHM varies by +-3% (2.91 to
    # 3.09 pixels): PSFEx's degree-2 polynomial of the pixel values represents
    # this to 4.5e-4 of the peak, but a +-10% variation only to 9e-3 of it.
    "fwhm_coeffs": [3.0, 0.05, -0.03, 0.0125, 0.02, -0.01],
    "e1_coeffs": [0.0, 0.05, 0.02, 0.0, 0.0, 0.02],
    "e2_coeffs": [-0.02, 0.0, 0.04, 0.02, 0.0, 0.0],
    # stars on a jittered grid (isolated: at least spacing - 2 * jitter apart)
    "star_spacing": 56,
    "star_jitter": 12,
    "star_margin": 48,
    "flux_range": [1.0e6, 1.0e7],
    "background": 200.0,
    "gain": 2.0,
    "read_noise": 5.0,
    "render_half_size": 20,
    "gauss_legendre_nodes": 5,
}

#: The PSFEx models written: output file name and psfex options (on top of
#: psfex.psfex). PSF_SIZE is chosen so that the model (soft-clipped by PSFEx
#: over the outer FWHM of its radius) reaches 15 detector pixels, where the
#: Moffat profile holds less than 1e-4 of the flux. At PSF_SAMPLING 1 the
#: default basis (PIXEL_AUTO, which is NONE for these stars) is kept; the
#: super-resolved model needs BASIS_TYPE PIXEL, PSFEx's forward fit of the
#: resampled model to the stars: without it PSFEx interpolates the stars onto
#: the finer grid and is no more accurate than at PSF_SAMPLING 1.
MODELS = {
    "moffat_deg2_samp1.psf": {"PSFVAR_DEGREES": "2", "PSF_SAMPLING": "1.0",
                              "PSF_SIZE": "31,31"},
    "moffat_deg2_samp0.5.psf": {"PSFVAR_DEGREES": "2", "PSF_SAMPLING": "0.5",
                                "PSF_SIZE": "61,61", "BASIS_TYPE": "PIXEL"},
    "moffat_deg0_samp1.psf": {"PSFVAR_DEGREES": "0", "PSF_SAMPLING": "1.0",
                              "PSF_SIZE": "31,31"},
}


def load_parameters(path=PARAMETERS_FILE):
    """The simulation parameters written by this script (a dict)."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _quadratic(coeffs, u, v):
    """sum of coeffs times (1, u, v, u^2, u v, v^2)."""
    c = coeffs
    return c[0] + c[1] * u + c[2] * v + c[3] * u * u + c[4] * u * v + c[5] * v * v


def psf_shape(params, x, y):
    """
    FWHM and ellipticity (e1, e2) of the true PSF at 0-based positions.

    Returns three arrays broadcast from ``x`` and ``y``.
    """
    ny, nx = params["shape"]
    u = (np.asarray(x, dtype=float) - (nx - 1) / 2) / ((nx - 1) / 2)
    v = (np.asarray(y, dtype=float) - (ny - 1) / 2) / ((ny - 1) / 2)
    return (_quadratic(params["fwhm_coeffs"], u, v), _quadratic(params["e1_coeffs"], u, v),
            _quadratic(params["e2_coeffs"], u, v))


def render_psf(params, x, y, size, *, dx=0.0, dy=0.0):
    """
    The true pixel-integrated PSF at 0-based positions, on odd square stamps.

    The PSF of position ``(x, y)`` is centred at offset ``(dx, dy)`` from the
    centre pixel of the stamp (0: on that pixel's centre) and integrated over
    each unit pixel by Gauss-Legendre quadrature; the stamps hold the flux
    fraction of each pixel (the full plane holds 1).

    Parameters
    ----------
    params : dict
        The simulation parameters (`load_parameters`).
    x, y : float or array_like
        Image positions whose PSF shape is rendered (broadcast together).
    size : odd int
        Stamp side.
    dx, dy : float or array_like, optional
        Offsets of the PSF centre from the stamp centre, in pixels
        (broadcast with ``x`` and ``y``).

    Returns
    -------
    stamps : `~numpy.ndarray`
        Shape ``(n, size, size)``, float64.
    """
    x, y, dx, dy = (a.ravel() for a in np.broadcast_arrays(
        *(np.asarray(a, dtype=float) for a in (x, y, dx, dy))))
    fwhm, e1, e2 = psf_shape(params, x, y)
    beta = params["beta"]
    alpha = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    # an area-preserving quadratic form: the FWHM is the geometric mean one
    norm = np.sqrt(1.0 - e1**2 - e2**2)
    qxx, qyy, qxy = (1.0 - e1) / norm, (1.0 + e1) / norm, -e2 / norm
    nodes, weights = np.polynomial.legendre.leggauss(params["gauss_legendre_nodes"])
    nodes, weights = nodes / 2.0, weights / 2.0  # over [-1/2, 1/2]
    offsets = np.arange(size, dtype=float) - size // 2
    # sub-pixel sample coordinates along one axis: (size, n_nodes)
    sub = (offsets[:, None] + nodes[None, :]).ravel()
    out = np.empty((x.size, size, size))
    for i in range(x.size):
        px = sub - dx[i]
        py = sub - dy[i]
        rho2 = (qxx[i] * px[None, :] ** 2 + qyy[i] * py[:, None] ** 2
                + 2.0 * qxy[i] * px[None, :] * py[:, None])
        value = (beta - 1.0) / (np.pi * alpha[i] ** 2) * (1.0 + rho2 / alpha[i] ** 2) ** -beta
        k = weights.size
        value = value.reshape(size, k, size, k)
        out[i] = np.einsum("akbl,k,l->ab", value, weights, weights)
    return out


def star_catalogue(params):
    """Positions (0-based) and fluxes of the simulated stars, from the seed."""
    rng = np.random.default_rng(params["seed"])
    ny, nx = params["shape"]
    step, jitter, margin = params["star_spacing"], params["star_jitter"], params["star_margin"]
    gx = np.arange(margin + jitter, nx - margin - jitter, step, dtype=float)
    gy = np.arange(margin + jitter, ny - margin - jitter, step, dtype=float)
    yy, xx = np.meshgrid(gy, gx, indexing="ij")
    x = xx.ravel() + rng.uniform(-jitter, jitter, xx.size)
    y = yy.ravel() + rng.uniform(-jitter, jitter, yy.size)
    lo, hi = np.log(params["flux_range"])
    flux = np.exp(rng.uniform(lo, hi, x.size))
    return x, y, flux, rng


def simulate_image(params):
    """The noisy star field (float32 ADU, background included) and its stars."""
    x, y, flux, rng = star_catalogue(params)
    ny, nx = params["shape"]
    half = params["render_half_size"]
    size = 2 * half + 1
    ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
    stamps = render_psf(params, x, y, size, dx=x - ix, dy=y - iy)
    image = np.full((ny, nx), params["background"])
    for i in range(x.size):
        image[iy[i] - half:iy[i] + half + 1, ix[i] - half:ix[i] + half + 1] += flux[i] * stamps[i]
    gain = params["gain"]
    image = rng.poisson(image * gain) / gain + rng.normal(0.0, params["read_noise"], image.shape)
    return image.astype(np.float32), (x, y, flux)


def _version(program):
    out = subprocess.run([program, "-v"], capture_output=True, text=True, check=True)
    return (out.stdout + out.stderr).strip().splitlines()[0]


def _run(command, cwd):
    print("$", " ".join(command), flush=True)
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"{command[0]} failed with exit code {result.returncode}")
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", metavar="DIR", default=str(HERE),
                        help="where to write the .psf files and simulation.json (default: "
                             "this script's folder, where the tests read them)")
    parser.add_argument("--keep", metavar="DIR", help="keep the image, catalogue and logs in DIR")
    parser.add_argument("--sextractor", default="source-extractor",
                        help="SExtractor executable (default: %(default)s)")
    parser.add_argument("--psfex", default="psfex", help="PSFEx executable (default: %(default)s)")
    args = parser.parse_args(argv)

    from astropy.io import fits

    params = dict(SIMULATION)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="psfex-sim-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        image, (x, y, _) = simulate_image(params)
        header = fits.Header()
        header["GAIN"] = (params["gain"], "e-/ADU")
        fits.writeto(work / "field.fits", image, header, overwrite=True)
        for name in ("psfex.sex", "psfex.param", "psfex.psfex"):
            shutil.copy(HERE / name, work / name)

        sex_cmd = [args.sextractor, "field.fits", "-c", "psfex.sex",
                   "-GAIN", str(params["gain"])]
        _run(sex_cmd, work)
        commands = {"source-extractor": " ".join(sex_cmd)}
        for name, options in MODELS.items():
            catalogue = Path(name).stem + ".cat"
            shutil.copy(work / "field.cat", work / catalogue)
            cmd = [args.psfex, catalogue, "-c", "psfex.psfex"]
            for key, value in options.items():
                cmd += [f"-{key}", value]
            _run(cmd, work)
            shutil.copy(work / (Path(name).stem + ".psf"), output / name)
            commands[name] = " ".join(cmd)
            with fits.open(output / name) as hdul:
                head = hdul["PSF_DATA"].header
                print(f"  {name}: {head['ACCEPTED']}/{head['LOADED']} stars, "
                      f"PSF_SAMP {head['PSF_SAMP']}, CHI2 {head['CHI2']:.3f}, "
                      f"size {(output / name).stat().st_size} bytes")

        params["n_stars"] = int(x.size)
        params["versions"] = {"source-extractor": _version(args.sextractor),
                              "psfex": _version(args.psfex)}
        params["commands"] = commands
        with open(output / PARAMETERS_FILE.name, "w", encoding="utf-8") as handle:
            json.dump(params, handle, indent=2)
            handle.write("\n")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
