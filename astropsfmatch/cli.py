"""The ``astropsfmatch`` command: match a FITS image to a target PSF, or run the demo.

::

    astropsfmatch match SCIENCE.fits --target-psf gaussian:fwhm=4.5 -o MATCHED.fits
    astropsfmatch demo --output astropsfmatch-demo

Errors end with one line on stderr, ``astropsfmatch: error: ...``, and exit
code 2 for bad command-line arguments, 3 for a match that does not reach its
target (held-out residual above ``--max-residual``), or 1 for everything else
(missing or unreadable files, an existing output without ``--overwrite``, a
failed match); no output file is written then. ``--debug`` shows the traceback.
`main` returns the exit code instead of exiting, so it can be called from
Python and tests.
"""

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
import tomllib
import traceback
import warnings
from pathlib import Path

import numpy as np

from ._about import __version__
from ._engine.moments import GAUSSIAN_SIGMA_TO_FWHM
from ._logging import log

__all__ = ["main", "parse_psf_spec"]

_PROG = "astropsfmatch"

#: Analytic PSF kinds of ``--target-psf``/``--source-psf`` specs and their parameters.
_SPEC_PARAMETERS = {"gaussian": ("fwhm", "sigma"), "moffat": ("fwhm", "alpha", "beta")}
_MOFFAT_DEFAULT_BETA = 2.5


class CommandError(Exception):
    """A failure reported as one line and exit code ``status``."""

    def __init__(self, message, status=1):
        super().__init__(message)
        self.status = status


def _one_line(text):
    return " ".join(str(text).split())


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line and exit code 2."""

    def error(self, message):
        raise CommandError(f"{message} (see '{self.prog} --help')", status=2)


# --------------------------------------------------------------------------- PSF options


def parse_psf_spec(spec):
    """Build an analytic photutils PSF from a spec such as ``gaussian:fwhm=4.5``.

    Parameters
    ----------
    spec : str
        ``gaussian:fwhm=F`` or ``gaussian:sigma=S`` for a
        `~photutils.psf.CircularGaussianPRF`; ``moffat:fwhm=F,beta=B`` or
        ``moffat:alpha=A,beta=B`` for a `~photutils.psf.MoffatPSF` (``beta``
        defaults to 2.5). Values in pixels.

    Returns
    -------
    model : `~photutils.psf.CircularGaussianPRF` or `~photutils.psf.MoffatPSF`

    Raises
    ------
    ValueError
        An unknown kind or parameter, a missing width, or a value that is
        not a finite number > 0 (``beta`` > 1).

    Examples
    --------
    >>> from astropsfmatch.cli import parse_psf_spec
    >>> parse_psf_spec('gaussian:fwhm=4.5').fwhm.value
    np.float64(4.5)
    >>> model = parse_psf_spec('moffat:fwhm=4.5,beta=2.5')
    >>> round(float(model.alpha.value), 4), float(model.beta.value)
    (3.9805, 2.5)
    """
    from photutils.psf import CircularGaussianPRF, MoffatPSF

    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in _SPEC_PARAMETERS:
        msg = (f"unknown PSF kind {kind!r} in {spec!r}: use "
               f"{' or '.join(_SPEC_PARAMETERS)}, e.g. 'gaussian:fwhm=4.5'")
        raise ValueError(msg)
    allowed = _SPEC_PARAMETERS[kind]
    values = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        name, equals, text = item.partition("=")
        name = name.strip().lower()
        if not equals or name not in allowed:
            msg = f"bad parameter {item!r} in {spec!r}: {kind} takes {', '.join(allowed)}"
            raise ValueError(msg)
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0) or (name == "beta" and value <= 1):
            limit = "> 1" if name == "beta" else "> 0"
            msg = f"{name} must be a finite number {limit} in {spec!r}, got {text.strip()!r}"
            raise ValueError(msg)
        if name in values:
            msg = f"parameter {name!r} given twice in {spec!r}"
            raise ValueError(msg)
        values[name] = value
    widths = [name for name in ("fwhm", "sigma", "alpha") if name in values]
    if len(widths) != 1:
        choices = " or ".join(n for n in ("fwhm", "sigma", "alpha") if n in allowed)
        msg = f"{spec!r} must give exactly one width: {choices}"
        raise ValueError(msg)
    if kind == "gaussian":
        fwhm = values.get("fwhm", values.get("sigma", 0.0) * GAUSSIAN_SIGMA_TO_FWHM)
        return CircularGaussianPRF(fwhm=fwhm)
    from ._workflow.target import MAX_BETA  # noqa: PLC0415 - the CLI imports lazily

    beta = values.get("beta", _MOFFAT_DEFAULT_BETA)
    if not 1.0 < beta <= MAX_BETA:
        msg = (f"{spec!r}: beta must be > 1 and at most {MAX_BETA:g} (beyond, a Moffat is a "
               f"Gaussian to 1e-6: use gaussian:fwhm=...), got {beta!r}")
        raise ValueError(msg)
    alpha = values.get("alpha")
    if alpha is None:
        alpha = values["fwhm"] / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    return MoffatPSF(alpha=alpha, beta=beta)


def _looks_like_spec(text):
    """``kind:...`` with a word of two or more letters (not a Windows drive) before the colon."""
    kind, colon, _ = text.partition(":")
    return bool(colon) and len(kind) > 1 and kind.isalpha()


#: The ``--source-psf`` value that estimates the PSF from the image's own stars.
_FROM_STARS = "stars"


def _psf_argument(text):
    """argparse type of the PSF options: an analytic model for a spec, 'stars', else a Path."""
    if text.strip().lower() == _FROM_STARS and not Path(text).exists():
        return _FROM_STARS
    if _looks_like_spec(text) and not Path(text).exists():
        try:
            return parse_psf_spec(text)
        except ValueError as exc:
            known = text.partition(":")[0].strip().lower() in _SPEC_PARAMETERS
            hint = "" if known else f" (and there is no file {text!r})"
            raise argparse.ArgumentTypeError(f"{exc}{hint}") from None
    if not text.strip():
        msg = "expected a FITS file or a spec such as 'gaussian:fwhm=4.5'"
        raise argparse.ArgumentTypeError(msg)
    return Path(text)


def _read_psf_file(path, option, oversampling=None):
    """A PSF from a file, and what it is: ``(psf, description)``.

    Recognized, in this order: a PSFEx ``.psf`` model (a ``PSF_DATA`` table);
    the ``PSFIMAGE`` extension of a matched (or CCDData) file; a 3-D PSF grid
    that photutils' ``GriddedPSFModel.read`` reads (STDPSF, STPSF/WebbPSF); a
    2-D PSF image, oversampled by ``oversampling`` or by its ``OVERSAMP``
    keyword (STPSF/WebbPSF, photutils ePSFs saved with it), else pixel-sampled.
    """
    from astropy.io import fits

    from ._adapters.psf import as_psf
    from ._adapters.psfex import PSFExPSF

    _require_file(path, option)
    try:
        with fits.open(path) as hdus:
            tables = [hdu for hdu in hdus if isinstance(hdu, fits.BinTableHDU)
                      and "PSF_MASK" in hdu.columns.names]
            if tables:
                model = PSFExPSF.read(hdus, hdu=tables[0].name or 1)
                degree = model.poldeg if model.context else 0
                return model, (f"PSFEx model {path.name} (polynomial degree {degree}, "
                               f"PSF_SAMP {model.psf_samp:g})")
            if "PSFIMAGE" in hdus:
                data, header = hdus["PSFIMAGE"].data, hdus["PSFIMAGE"].header
            else:
                image = next((hdu for hdu in hdus if getattr(hdu, "is_image", False)
                              and hdu.data is not None), None)
                data = None if image is None else image.data
                header = None if image is None else image.header
            data = None if data is None else np.array(data)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CommandError(f"{option} {path}: cannot read as FITS (a PSF file): "
                           f"{_one_line(exc)}") from exc
    if data is None:
        raise CommandError(f"{option} {path}: the file holds no image")
    if data.ndim == 3:
        from photutils.psf import GriddedPSFModel

        try:
            model = GriddedPSFModel.read(path)
        except Exception as exc:  # noqa: BLE001 - any reader failure is reported
            msg = (f"{option} {path}: a 3-D PSF must be a PSF grid readable by photutils "
                   f"GriddedPSFModel.read (STDPSF or WebbPSF format): {_one_line(exc)}")
            raise CommandError(msg) from exc
        return model, (f"PSF grid {path.name} ({len(model.data)} ePSFs, oversampling "
                       f"{_format_pair(model.oversampling)})")
    if oversampling is None and header is not None and "OVERSAMP" in header:
        oversampling = header["OVERSAMP"]
    if oversampling is not None and float(oversampling) != 1:
        from photutils.psf import ImagePSF

        try:
            model = ImagePSF(data.astype(np.float64), oversampling=int(oversampling))
            as_psf(model, name=f"{option} {path}")
        except (TypeError, ValueError) as exc:
            raise CommandError(f"{option} {path}: {_one_line(exc)}") from exc
        return model, (f"{data.shape[0]}x{data.shape[1]} image {path.name}, oversampled "
                       f"{oversampling}x")
    try:
        as_psf(data, name=f"{option} {path}")
    except (TypeError, ValueError) as exc:
        raise CommandError(_one_line(exc)) from exc
    return data.astype(np.float64), f"{data.shape[0]}x{data.shape[1]} image {path.name}"


def _format_pair(value):
    values = np.atleast_1d(value)
    return f"{values[0]:g}" if np.all(values == values[0]) else "x".join(f"{v:g}" for v in values)


def _resolve_psf(value, option, oversampling=None):
    """``(psf, description)`` of a PSF option: a file's PSF or an analytic spec's model."""
    if isinstance(value, Path):
        return _read_psf_file(value, option, oversampling)
    return value, _describe_psf(value)


def _describe_psf(model):
    if isinstance(model, np.ndarray):
        return f"{model.shape[0]}x{model.shape[1]} image"
    names = [n for n in ("fwhm", "alpha", "beta") if n in getattr(model, "param_names", ())]
    params = ", ".join(f"{n}={float(getattr(model, n).value):.4g}" for n in names)
    return f"{type(model).__name__}({params})"


# --------------------------------------------------------------------------- files


def _require_file(path, option):
    path = Path(path)
    if not path.exists():
        raise CommandError(f"{option}: {path}: no such file")
    if not path.is_file():
        raise CommandError(f"{option}: {path}: not a file")
    if not os.access(path, os.R_OK):
        raise CommandError(f"{option}: {path}: permission denied")


def _check_outputs(paths, overwrite):
    """Fail before any work when an output exists (without --overwrite) or cannot be made."""
    seen = set()
    for option, path in paths:
        resolved = Path(path).resolve()
        if resolved in seen:
            raise CommandError(f"{option} {path}: the same file is given as two outputs")
        seen.add(resolved)
        if path.is_dir():
            raise CommandError(f"{option}: {path} is a directory")
        if path.exists() and not path.is_file():
            # a FIFO, a device, a socket: renaming over it would not write a file there
            raise CommandError(f"{option}: {path} exists and is not a regular file")
        if path.exists() and not overwrite:
            raise CommandError(f"{option}: {path} already exists (use --overwrite to replace it)")
        parent = path.parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise CommandError(f"{option}: {path}: cannot write in {parent}")


class _Staging:
    """Write every output into a temporary directory, then move them all into place.

    If anything fails before :meth:`commit`, nothing appears at the final paths.
    """

    def __init__(self, anchor):
        anchor = Path(anchor).resolve()
        while not anchor.exists():
            anchor = anchor.parent
        self._dir = Path(tempfile.mkdtemp(prefix=".astropsfmatch-", dir=anchor))
        self._moves = []

    def path(self, final):
        """Staged path of one output file ``final``."""
        staged = self._dir / f"{len(self._moves)}-{Path(final).name}"
        self._moves.append((staged, Path(final)))
        return staged

    def directory(self, name):
        """An empty staging directory; register its files with :meth:`add`."""
        path = self._dir / name
        path.mkdir()
        return path

    def add(self, staged, final):
        self._moves.append((Path(staged), Path(final)))

    def commit(self):
        for staged, final in self._moves:
            final.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(staged, final)

    def cleanup(self):
        shutil.rmtree(self._dir, ignore_errors=True)


def _write_ccd(ccd, path, weights=None):
    """A matched (or demo) image in the one on-disk layout, atomic and checksummed."""
    from ._adapters.files import write_matched

    write_matched(ccd, path, weights=weights)


def _write_weights(result, path):
    """Inverse-variance weights with the WCS, for reproject_and_coadd(input_weights=...)."""
    from astropy.io import fits

    from ._adapters.files import weights_hdu, write_hdulist

    hdu = weights_hdu(result.weights, result.matched)
    write_hdulist(fits.HDUList([fits.PrimaryHDU(hdu.data, header=hdu.header)]), path)


def _write_psf_grid(model, path):
    """A GriddedPSFModel as a PSF grid file that GriddedPSFModel.read reads (STPSF/WebbPSF)."""
    from astropy.io import fits

    from ._adapters.files import write_hdulist

    header = fits.Header()
    header["OVERSAMP"] = (int(np.atleast_1d(model.oversampling)[0]), "oversampling factor")
    header["NUM_PSFS"] = (len(model.data), "number of ePSFs")
    for k, (x, y) in enumerate(np.asarray(model.grid_xypos)):
        # photutils reads DET_YXn as "(x, y)" in 0-based detector pixels
        header[f"DET_YX{k}"] = (str((float(x), float(y))), "ePSF position (x, y)")
    write_hdulist(fits.HDUList([fits.PrimaryHDU(np.asarray(model.data), header=header)]), path)


def _write_kernel(kernel, path):
    from ._adapters.files import write_hdulist

    write_hdulist(kernel.to_hdulist(), path)


def _diagnostic_paths(directory):
    from .diagnostics import DIAGNOSTIC_FILES

    return [directory / name for name in DIAGNOSTIC_FILES.values()]


def _require_matplotlib(option):
    from ._optional import available

    if not available("matplotlib"):
        raise CommandError(f"{option} needs matplotlib: pip install matplotlib")


# --------------------------------------------------------------------------- options


def _positive_odd(text):
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < 3 or value % 2 == 0:
        raise argparse.ArgumentTypeError(f"must be an odd integer >= 3, got {text!r}")
    return value


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def _cell_size(text):
    parts = text.replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values, default=0) < 32:
        msg = f"must be N or NY,NX with integers >= 32, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return values[0] if len(values) == 1 else tuple(values)


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    # a subnormal number has lost its precision: 1e-320 is not a usable scale
    if not (math.isfinite(value) and value >= sys.float_info.min):
        raise argparse.ArgumentTypeError(
            f"must be a finite number > 0 (and >= {sys.float_info.min:.3g}), got {text!r}")
    return value


def _unit(text):
    import astropy.units as u

    try:
        return u.Unit(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a valid unit: {_one_line(exc)}") from None


def _add_logging_options(parser):
    group = parser.add_argument_group("messages")
    group.add_argument("-v", "--verbose", action="store_true",
                       help="report progress (INFO log messages)")
    group.add_argument("--debug", action="store_true",
                       help="DEBUG log messages, and the traceback of any error")


def _build_parser():
    from .config import MatchConfig

    defaults = MatchConfig()
    cell = defaults.cell_size
    cell = str(cell[0]) if cell[0] == cell[1] else f"{cell[0]},{cell[1]}"
    parser = _Parser(
        prog=_PROG,
        description=("Spatially varying PSF matching of astronomical images: convolve an image "
                     "so that its PSF becomes a target PSF everywhere."),
        epilog="Run 'astropsfmatch COMMAND --help' for the options of a command.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    match = commands.add_parser(
        "match", help="match a FITS image to a target PSF",
        description=("Match SCIENCE (a FITS image, read as CCDData: primary data, UNCERT and "
                     "MASK extensions if present, WCS, BUNIT) to a target PSF, and write the "
                     "matched image with its propagated uncertainty and mask, and the target "
                     "PSF in a PSFIMAGE extension."),
        epilog=("PSF specs: 'gaussian:fwhm=F' (or sigma=S), 'moffat:fwhm=F,beta=B' (or "
                "alpha=A; beta defaults to 2.5), in pixels. Options given on the command line "
                "override those of --config. Example: astropsfmatch match sci.fits "
                "--target-psf gaussian:fwhm=4.5 -o sci_matched.fits"))
    match.add_argument("science", type=Path, metavar="SCIENCE.fits", help="image to match")
    match.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.fits",
                       help="matched image to write")
    match.add_argument("-t", "--target-psf", type=_psf_argument, required=True, metavar="PSF",
                       help=("target PSF: a FITS file (its PSFIMAGE extension, else its first "
                             "image; odd-sized) or a spec such as gaussian:fwhm=4.5"))
    match.add_argument("-s", "--source-psf", type=_psf_argument, metavar="PSF",
                       help=("PSF of SCIENCE if it has no PSFIMAGE extension: a PSFEx .psf "
                             "file, a PSF grid readable by photutils GriddedPSFModel.read "
                             "(STDPSF, STPSF/WebbPSF), a PSF image (oversampled: see "
                             "--psf-oversampling), a spec, or 'stars' to estimate it from the "
                             "image's own stars"))
    match.add_argument("--hdu", type=_hdu_argument, metavar="N|NAME[,VER]",
                       help=("HDU of SCIENCE holding the image (default: the first with a 2-D "
                             "image, tile-compressed ones included), e.g. 1 or SCI,1"))
    match.add_argument("--psf-oversampling", type=_positive_int, metavar="N",
                       help=("oversampling of a --source-psf image file (default: its OVERSAMP "
                             "keyword, else 1)"))
    match.add_argument("--unit", type=_unit, metavar="UNIT",
                       help=("unit of SCIENCE when its header has no BUNIT (default: BUNIT, "
                             "else adu); overrides BUNIT when given"))
    solve = match.add_argument_group("kernel options (MatchConfig fields)")
    solve.add_argument("--kernel-basis", choices=("auto", "alard-lupton", "delta-function"),
                       help=("kernel basis (default auto: chosen from the two PSFs; "
                             "alard-lupton is the reference pipeline's)"))
    solve.add_argument("--kernel-size", type=_positive_odd, metavar="N",
                       help="kernel side in pixels, odd (default: from the PSF widths)")
    solve.add_argument("--spatial-model", choices=("auto", "bilinear", "chebyshev1",
                                                   "polynomial"),
                       help=("how the kernel varies (default auto: bilinear between nodes on "
                             "the PSF model's node lines; chebyshev1 is the reference's)"))
    solve.add_argument("--spatial-order", type=_non_negative_int, metavar="N",
                       help=("order of the polynomial spatial models (default "
                             f"{defaults.spatial_order})"))
    solve.add_argument("--cell-size", type=_cell_size, metavar="N|NY,NX",
                       help=(f"cell size of the polynomial spatial models in pixels, each >= 32 "
                             f"(default {cell})"))
    solve.add_argument("--max-residual", type=_positive_float, metavar="X",
                       help=("largest accepted held-out residual, a fraction of the target peak "
                             f"(default {defaults.max_residual:g}); above it nothing is written "
                             "and the exit status is 3"))
    solve.add_argument("--kernel-sum", type=_positive_float, default=1.0, metavar="X",
                       help="sum of the kernel (default 1; the convolution is normalized by it)")
    solve.add_argument("--config", type=Path, metavar="FILE",
                       help="MatchConfig fields as TOML (.toml) or JSON (.json)")
    out = match.add_argument_group("more output")
    out.add_argument("--weights", type=Path, metavar="WEIGHTS.fits",
                     help="write the inverse-variance weights (needs an uncertainty)")
    out.add_argument("--save-kernel", type=Path, metavar="KERNEL.fits",
                     help="write the spatially varying kernel (SpatialKernel.read reads it)")
    out.add_argument("--diagnostics", type=Path, metavar="DIR",
                     help="write the diagnostic figures (PNG) into DIR (needs matplotlib)")
    out.add_argument("--overwrite", action="store_true", help="replace existing output files")
    _add_logging_options(match)
    match.set_defaults(handler=_run_match, subparser=match)

    demo = commands.add_parser(
        "demo", help="run the demonstration on synthetic data",
        description=("Make a synthetic exposure (stars, noise, variance, bad pixels, a PSF "
                     "varying across the field as a photutils GriddedPSFModel, a TAN WCS), "
                     "match it to a Gaussian slightly broader than its broadest PSF, write "
                     "the input, matched image, weights, kernel and diagnostic figures, and "
                     "print star FWHMs before and after."))
    demo.add_argument("-o", "--output", type=Path, default=Path("astropsfmatch-demo"),
                      metavar="DIR", help="output directory (default ./astropsfmatch-demo)")
    demo.add_argument("--size", type=_demo_size, default=1024, metavar="N",
                      help="image side in pixels, >= 128 (default 1024)")
    demo.add_argument("--seed", type=_non_negative_int, default=0, metavar="S",
                      help="random seed (default 0)")
    demo.add_argument("--no-figures", action="store_true",
                      help="skip the diagnostic figures")
    demo.add_argument("--overwrite", action="store_true", help="replace existing output files")
    _add_logging_options(demo)
    demo.set_defaults(handler=_run_demo, subparser=demo)
    return parser


def _demo_size(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 128:
        raise argparse.ArgumentTypeError(f"must be an integer >= 128, got {text!r}")
    return value


def _read_config(path):
    """MatchConfig from a TOML or JSON file (exit code 1 on any problem)."""
    from .config import MatchConfig

    _require_file(path, "--config")
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise CommandError(f"--config {path}: the file name must end with .toml or .json")
    try:
        if suffix == ".toml":
            with open(path, "rb") as handle:
                options = tomllib.load(handle)
        else:
            with open(path, encoding="utf-8") as handle:
                options = json.load(handle)
    except (OSError, ValueError) as exc:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise CommandError(f"--config {path}: {_one_line(exc)}") from exc
    try:
        return MatchConfig.from_dict(options)
    except (TypeError, ValueError) as exc:
        raise CommandError(f"--config {path}: {_one_line(exc)}") from exc


def _match_config(args, parser):
    from .config import MatchConfig

    config = _read_config(args.config) if args.config is not None else MatchConfig()
    names = ("kernel_basis", "kernel_size", "spatial_model", "spatial_order", "cell_size",
             "max_residual")
    changes = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    try:
        return config.replace(**changes)
    except (TypeError, ValueError) as exc:
        parser.error(_one_line(exc))


# --------------------------------------------------------------------------- match


def _hdu_argument(text):
    """argparse type of ``--hdu``: an index, a name, or ``NAME,VER``."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    name, comma, version = text.partition(",")
    if not name or (comma and not version.strip().isdigit()):
        raise argparse.ArgumentTypeError(f"must be N, NAME or NAME,VER, got {text!r}")
    return (name.strip(), int(version)) if comma else name.strip()


def _image_hdu(path, hdu):
    """The HDU of the science image: ``hdu``, else the first one with 2-D image data.

    Tile-compressed images (an empty primary HDU and a ``COMPRESSED_IMAGE``)
    and multi-extension files then need no option.
    """
    from astropy.io import fits

    with fits.open(path) as hdus:
        if hdu is not None:
            try:
                chosen = hdus[hdu]
            except (KeyError, IndexError) as exc:
                names = ", ".join(f"{i}:{h.name},{h.ver}" for i, h in enumerate(hdus))
                raise CommandError(f"--hdu {hdu}: no such HDU in {path} (it has {names})") \
                    from exc
            if not getattr(chosen, "is_image", False) or chosen.data is None \
                    or chosen.data.ndim != 2:
                raise CommandError(f"--hdu {hdu}: HDU {hdu} of {path} holds no 2-D image")
            return hdus.index_of(hdu)
        for index, candidate in enumerate(hdus):
            if getattr(candidate, "is_image", False) and candidate.header.get("NAXIS") == 2:
                return index
    raise CommandError(f"{path}: the image must be 2-D: no HDU holds a 2-D image")


def _read_science(path, unit, hdu=None):
    from astropy.io.registry import IORegistryError
    from astropy.nddata import CCDData

    _require_file(path, "SCIENCE")
    try:
        index = _image_hdu(path, hdu)
        try:
            ccd = CCDData.read(path, unit=unit, hdu=index)
        except ValueError as exc:
            if unit is not None or "unit" not in str(exc).lower() or "must" not in str(exc):
                raise
            log.info(f"{path} has no BUNIT: reading it in adu (use --unit to choose)")
            ccd = CCDData.read(path, unit="adu", hdu=index)
    except (OSError, ValueError, TypeError, KeyError, IndexError, IORegistryError) as exc:
        raise CommandError(f"cannot read {path} as a FITS image: {_one_line(exc)}") from exc
    if ccd.data is None or ccd.data.ndim != 2:
        shape = None if ccd.data is None else ccd.data.shape
        raise CommandError(f"{path}: the image must be 2-D, got shape {shape}")
    return ccd


def _source_from_stars(ccd, path):
    """The PSF estimated from the image's own stars (``--source-psf stars``)."""
    from ._workflow.stars import estimate_psf

    try:
        estimate = estimate_psf(ccd)
    except ValueError as exc:
        raise CommandError(f"--source-psf stars: {path}: {_one_line(exc)}") from exc
    return estimate.psf, f"estimated from the stars: {estimate.message}"


def _star_check_line(result, ccd, source):
    """One line comparing the stars before and after with the models, or None."""
    try:
        check = result.star_check(ccd)
    except (ValueError, TypeError, RuntimeError) as exc:
        log.debug(f"no star check: {exc}")
        return None
    if check.n_stars == 0:
        return None
    return check.summary()


def _run_match(args, parser):
    from ._engine.solve import KernelSolutionError
    from ._workflow.matcher import ModelPsfMatcher
    from ._workflow.provenance import quality_summary
    from ._workflow.result import MatchQualityWarning

    start = time.perf_counter()
    config = _match_config(args, parser)
    outputs = [("--output", args.output)]
    if args.weights is not None:
        outputs.append(("--weights", args.weights))
    if args.save_kernel is not None:
        outputs.append(("--save-kernel", args.save_kernel))
    if args.diagnostics is not None:
        _require_matplotlib("--diagnostics")
        outputs += [("--diagnostics", p) for p in _diagnostic_paths(args.diagnostics)]
    _check_outputs(outputs, args.overwrite)
    if args.science.resolve() in {p.resolve() for _, p in outputs}:
        raise CommandError(f"--output: {args.output} is the input file")

    if args.target_psf == _FROM_STARS:
        raise CommandError("--target-psf stars: the target PSF must be given (a spec or a file)")
    target, target_text = _resolve_psf(args.target_psf, "--target-psf")
    ccd = _read_science(args.science, args.unit, args.hdu)
    if args.source_psf == _FROM_STARS:
        source, source_text = _source_from_stars(ccd, args.science)
    elif args.source_psf is not None:
        source, source_text = _resolve_psf(args.source_psf, "--source-psf",
                                           args.psf_oversampling)
    elif ccd.psf is not None:
        source = np.asarray(ccd.psf, dtype=np.float64)
        source_text = f"the PSFIMAGE extension of {args.science.name}"
    else:
        raise CommandError(f"{args.science} has no PSF (no PSFIMAGE extension): give its PSF "
                           "with --source-psf (a PSFEx .psf file, a PSF grid or image file, "
                           "a spec, or 'stars' to estimate it from the image)")
    log.info(f"source PSF: {source_text}")
    if args.weights is not None and ccd.uncertainty is None:
        raise CommandError(f"--weights: {args.science} has no uncertainty (UNCERT extension) "
                           "to weight by")
    log.info(f"matching {args.science} ({ccd.shape[1]}x{ccd.shape[0]}, {ccd.unit}) from "
             f"{source_text} to {target_text}")

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", MatchQualityWarning)
            result = ModelPsfMatcher(config).match(ccd, target, source_psf=source,
                                                   kernel_sum=args.kernel_sum)
    except (ValueError, TypeError, KernelSolutionError) as exc:
        raise CommandError(f"cannot match {args.science}: {_one_line(exc)}") from exc
    poor = [w for w in caught if issubclass(w.category, MatchQualityWarning)]
    for other in caught:
        if other not in poor:
            warnings.showwarning(other.message, other.category, other.filename, other.lineno)
    _log_decisions(result)
    if poor:
        raise CommandError(f"{args.science}: {_one_line(poor[0].message)}; nothing was "
                           "written (raise --max-residual to accept it)", status=3)

    staging = _Staging(args.output.parent)
    try:
        _write_ccd(result.matched, staging.path(args.output), weights=result.weights)
        if args.weights is not None:
            _write_weights(result, staging.path(args.weights))
        if args.save_kernel is not None:
            _write_kernel(result.kernel, staging.path(args.save_kernel))
        if args.diagnostics is not None:
            from .diagnostics import save_diagnostics

            for path in save_diagnostics(result, staging.directory("figures"), image=ccd,
                                         progress=_figure_progress(args)):
                staging.add(path, args.diagnostics / path.name)
        staging.commit()
    except OSError as exc:
        raise CommandError(f"cannot write the output: {_one_line(exc)}") from exc
    finally:
        staging.cleanup()

    print(f"{args.science} -> {args.output}: source PSF {source_text}; target "
          f"{target_text}; {_kernel_summary(result)}; "
          f"{quality_summary(result.metadata['quality'])}; "
          f"{time.perf_counter() - start:.1f} s")
    stars = _star_check_line(result, ccd, source)
    if stars is not None:
        print(f"  stars: {stars}")
    if args.diagnostics is not None:
        print(_figures_line(args.diagnostics))
    return 0


#: The matcher's timed stages, as the demo names them.
_STAGES = (("basis_choice", "basis choice"), ("psf_realization", "PSF stamps"),
           ("kernel_solution", "kernel solution"), ("quality", "held-out check"),
           ("convolution", "convolution"), ("output", "output"))


def _condition_text(result):
    """The spatial condition number, with what it means."""
    condition = result.metadata["spatial"]["condition_number"]
    limit = result.config.effective_max_spatial_condition_number
    if condition <= limit:
        meaning = f"up to {limit:.2g} the float64 solve keeps three significant digits"
    else:
        meaning = (f"above {limit:.2g}: the float64 solve may lose digits; the held-out check "
                   "measures the result")
    return f"spatial condition number {condition:.2g} ({meaning})"


def _figures_line(directory):
    """Where the diagnostic figures went, and which to look at first."""
    return (f"  figures: {len(_diagnostic_paths(directory))} PNG files in {directory}/ "
            "(start with heldout.png, where in the field the kernel is worst, and "
            "candidates.png; see the diagnostics page of the docs)")


def _log_decisions(result):
    """Say at INFO level (``-v``) what the match chose and why."""
    meta = result.metadata
    choice = meta["quality"].get("basis_choice", {})
    if "source_fwhm" in choice:
        log.info(f"half-maximum FWHM: source {choice['source_fwhm']:.3g} px, target "
                 f"{choice['target_fwhm']:.3g} px")
    tried = [f"{key.removesuffix(' residual')} {value:.2g}" for key, value in choice.items()
             if key.endswith(" residual")]
    log.info(f"basis: {meta['basis']['kind']}, {meta['basis']['n_basis']} functions of "
             f"{result.kernel.kernel_size}x{result.kernel.kernel_size}"
             + (f" (residual at the centre: {', '.join(tried)})" if tried else ""))
    refinement = meta["timings"].get("refinement") or []
    if len(refinement) > 1:
        levels = ", ".join(f"{n} nodes {residual:.2g}" for _, n, residual in refinement)
        log.info(f"node refinement (held-out residual max): {levels}; kept "
                 f"{meta['spatial']['nodes'][0]}x{meta['spatial']['nodes'][1]} nodes")
    timings = meta["timings"]
    log.info("match stages (s): " + ", ".join(
        f"{label} {timings[key]:.2f}" for key, label in _STAGES if key in timings))


def _kernel_summary(result):
    """The kernel in a few words: basis, size, spatial model and where it was solved."""
    meta = result.metadata
    spatial = meta["spatial"]
    if spatial["model"] == "bilinear":
        ny, nx = spatial["nodes"]
        where = (f"bilinear between {ny}x{nx} nodes" if ny * nx > 1
                 else "one node: the same kernel everywhere")
    else:
        where = (f"{spatial['model']} order {spatial['order']}, "
                 f"{meta['candidates']['used']} of {meta['candidates']['total']} cells used")
    return (f"kernel {result.kernel.kernel_size}x{result.kernel.kernel_size} "
            f"({meta['basis']['n_basis']} {meta['basis']['kind']} basis functions, {where})")


# --------------------------------------------------------------------------- demo


def _run_demo(args, parser):
    from ._adapters.psf import as_psf
    from ._optional import available
    from ._workflow.matcher import ModelPsfMatcher
    from ._workflow.provenance import quality_summary
    from .config import MatchConfig
    from .demo import demo_cell_size, make_demo_data, measure_fwhm

    figures = not args.no_figures
    if figures:
        if not available("matplotlib"):
            figures = False
            print("matplotlib is not installed: skipping the diagnostic figures "
                  "(pip install matplotlib)")
    folder = args.output
    if folder.exists() and not folder.is_dir():
        raise CommandError(f"--output: {folder} exists and is not a directory")
    names = {"science": "science.fits", "psf": "psf.fits", "matched": "matched.fits",
             "weights": "weights.fits", "kernel": "kernel.fits"}
    files = {key: folder / name for key, name in names.items()}
    outputs = [("--output", p) for p in files.values()]
    if figures:
        outputs += [("--output", p) for p in _diagnostic_paths(folder)]
    _check_outputs(outputs, args.overwrite)

    times = {}
    t0 = time.perf_counter()
    demo = make_demo_data(size=args.size, seed=args.seed)
    times["synthetic data"] = time.perf_counter() - t0
    log.info(f"made a {args.size}x{args.size} synthetic exposure with {len(demo.stars)} stars "
             f"in {times['synthetic data']:.2f} s; matching it to "
             f"CircularGaussianPRF(fwhm={float(demo.target_psf.fwhm.value):.2f})")
    cell = demo_cell_size(args.size)
    config = MatchConfig(cell_size=cell)
    t0 = time.perf_counter()
    result = ModelPsfMatcher(config).match(demo.ccd, demo.target_psf, source_psf=demo.psf_model)
    times["match"] = time.perf_counter() - t0
    stages = result.metadata["timings"]
    _log_decisions(result)
    log.info("measuring the probe stars' FWHMs before and after")

    t0 = time.perf_counter()
    x, y = demo.probes
    target_fwhm = float(demo.target_psf.fwhm.value)
    model_fwhm = as_psf(demo.psf_model).fwhm(x, y)
    before = measure_fwhm(demo.ccd.data, x, y, mask=demo.ccd.mask, fwhm=float(model_fwhm.mean()))
    after = measure_fwhm(result.matched.data, x, y, mask=result.matched.mask, fwhm=target_fwhm)
    times["FWHM fits"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    staging = _Staging(folder)
    try:
        _write_ccd(demo.ccd, staging.path(files["science"]))
        _write_psf_grid(demo.psf_model, staging.path(files["psf"]))
        _write_ccd(result.matched, staging.path(files["matched"]), weights=result.weights)
        _write_weights(result, staging.path(files["weights"]))
        _write_kernel(result.kernel, staging.path(files["kernel"]))
        times["write FITS"] = time.perf_counter() - t0
        log.info(f"wrote the FITS files in {times['write FITS']:.2f} s")
        if figures:
            log.info("drawing the diagnostic figures")
            from .diagnostics import save_diagnostics

            t0 = time.perf_counter()
            for path in save_diagnostics(result, staging.directory("figures"), image=demo.ccd,
                                         progress=_figure_progress(args)):
                staging.add(path, folder / path.name)
            times["figures"] = time.perf_counter() - t0
        staging.commit()
    except OSError as exc:
        raise CommandError(f"cannot write the demo output: {_one_line(exc)}") from exc
    finally:
        staging.cleanup()

    meta = result.metadata
    quality = meta["quality"]
    lines = [
        f"astropsfmatch {__version__} demo: {args.size}x{args.size} synthetic exposure, "
        f"{len(demo.stars)} stars, seed {args.seed}",
        "  source PSF: GriddedPSFModel, 3x3 elliptical Gaussian ePSFs that broaden and turn "
        "across the field",
        f"  target PSF: CircularGaussianPRF FWHM {target_fwhm:.2f} px",
        f"  {_kernel_summary(result)}",
        f"  quality: {quality_summary(quality)} "
        f"({'passed' if quality['passed'] else 'NOT passed'}: limit {quality['max_residual']:.2g})",
        "",
        f"  star FWHM (px, circular Gaussian fit) of the {len(x)} bright probe stars",
        "       x       y   before   after",
    ]
    for xk, yk, b, a in zip(x, y, before, after, strict=True):
        lines.append(f"  {xk:6.0f}  {yk:6.0f}   {b:6.2f}  {a:6.2f}")
    finite = np.isfinite(after)
    if finite.any():
        lines.append(f"  before: {np.nanmin(before):.2f} to {np.nanmax(before):.2f} px; after: "
                     f"{np.mean(after[finite]):.2f} ± {np.std(after[finite]):.2f} px (target "
                     f"{target_fwhm:.2f})")
    lines += [
        "",
        f"  kernel sum {result.kernel.kernel_sum:.6f}, {_condition_text(result)}",
        "  time (s): " + ", ".join(
            [f"{name} {value:.2f}" for name, value in times.items() if name != "match"]
            + [f"match {times['match']:.2f} (" + ", ".join(
                f"{label} {stages[key]:.2f}" for key, label in _STAGES if key in stages)
               + ")"]),
        f"  wrote {len(files)} FITS files to {folder}/: "
        + ", ".join(p.name for p in files.values()),
    ]
    if figures:
        lines.append(_figures_line(folder))
    print("\n".join(lines))
    return 0


# --------------------------------------------------------------------------- main


@contextlib.contextmanager
def _messages(level):
    """Set the package log level and show warnings as one line each on stderr."""
    previous = log.level

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{_PROG}: warning: {_one_line(message)} ({category.__name__})", file=sys.stderr)

    log.setLevel(level)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = show
            yield
    finally:
        log.setLevel(previous)


def _figure_progress(args):
    """A line on stderr per figure written (with -v/--debug the INFO log says it)."""
    if getattr(args, "verbose", False) or getattr(args, "debug", False):
        return None

    def report(index, total, path, seconds):
        print(f"{_PROG}: figure {index}/{total}: {path.name} ({seconds:.1f} s)",
              file=sys.stderr, flush=True)

    return report


@contextlib.contextmanager
def _compilation_notice(*, quiet):
    """One line on stderr when the first run compiles the numba kernels.

    With -v/--debug the package's own INFO message says it already.
    """
    if quiet:
        yield
        return
    import numba  # noqa: PLC0415 - the CLI imports lazily

    from ._engine._numba.notice import on_first_compilation  # noqa: PLC0415

    listener = on_first_compilation(lambda: print(
        f"{_PROG}: compiling the numerical kernels (first run after installation only, "
        "a few seconds)", file=sys.stderr, flush=True))
    try:
        yield
    finally:
        numba.core.event.unregister("numba:compile", listener)


def main(argv=None):
    """Run the ``astropsfmatch`` command.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    status : int
        0 on success, 1 on a runtime error, 2 on a command-line error, 3 when the
        match does not reach its target.
    """
    parser = _build_parser()
    args = None
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help and --version
            return int(exc.code or 0)
        if args.command is None:
            parser.error("choose a command: match or demo")
        level = "DEBUG" if args.debug else "INFO" if args.verbose else "WARNING"
        with _messages(level), _compilation_notice(quiet=level != "WARNING"):
            return args.handler(args, args.subparser)
    except CommandError as exc:
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"{_PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print(f"{_PROG}: error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a command never ends with a traceback
        if getattr(args, "debug", False):
            traceback.print_exc()
            hint = ""
        else:
            hint = " (rerun with --debug for the traceback)"
        print(f"{_PROG}: error: {type(exc).__name__}: {_one_line(exc)}{hint}", file=sys.stderr)
        return 1
