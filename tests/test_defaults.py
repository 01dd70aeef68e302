"""The defaults reach the target for any PSF pair, and say when they do not (issue 12).

The peers (photutils' Fourier-ratio kernels with every window and
regularization, its Wiener kernel, pypher) build one constant kernel from the
same unit-flux stamps; every kernel is cut to the same 21 x 21 support and
judged the same way: the largest ``|source ⊛ K - target|`` over the target
peak on the complete-convolution region of 85-pixel stamps. The peers' best
variant is chosen with the true target, which flatters them.
"""

import warnings

import numpy as np
import pytest
import scipy.signal
from photutils.psf import (
    AiryDiskPSF,
    CircularGaussianPRF,
    CircularGaussianPSF,
    GaussianPSF,
    MoffatPSF,
)

from astropsfmatch import MatchConfig, MatchQualityWarning, ModelPsfMatcher, match_psf, realize_psf
from astropsfmatch._engine.moments import GAUSSIAN_SIGMA_TO_FWHM
from astropsfmatch.cli import main

galsim = pytest.importorskip("galsim")

KERNEL_SIZE = 21
STAMP = 4 * KERNEL_SIZE + 1


def moffat(fwhm, beta):
    return MoffatPSF(alpha=fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0)), beta=beta)


def comatic(size=STAMP):
    half = size // 2
    y, x = np.mgrid[-half:half + 1, -half:half + 1].astype(float)
    psf = np.zeros((size, size))
    for weight, sigma, shift in ((0.6, 1.2, 0.0), (0.3, 1.6, 1.2), (0.1, 2.2, 2.6)):
        dx, dy = shift * np.cos(np.radians(30.0)), shift * np.sin(np.radians(30.0))
        g = np.exp(-0.5 * ((x - dx) ** 2 + (y - dy) ** 2) / sigma**2)
        psf += weight * g / g.sum()
    return psf / psf.sum()


def kolmogorov_optics(size=STAMP):
    """Atmosphere (Kolmogorov) convolved with optics (defocus, coma, astigmatism)."""
    # 0.5" seeing with a 0.1" diffraction limit and 0.25-wave aberrations, on 0.25" pixels:
    # FWHM 3.3 pixels, elongated and asymmetric
    atmosphere = galsim.Kolmogorov(fwhm=0.5)
    optics = galsim.OpticalPSF(lam_over_diam=0.1, defocus=0.25, coma1=0.2, astig2=0.15,
                               obscuration=0.3)
    image = galsim.Convolve(atmosphere, optics).drawImage(nx=size, ny=size, scale=0.25).array
    return image / image.sum()


def roman(size=STAMP):
    """The Roman Space Telescope's H158 PSF on its own (undersampled) pixels."""
    import galsim.roman

    bandpass = galsim.roman.getBandpasses()["H158"]
    psf = galsim.roman.getPSF(1, "H158", n_waves=5, wavelength=bandpass.effective_wavelength)
    image = psf.drawImage(nx=size, ny=size, scale=galsim.roman.pixel_scale).array
    return image / image.sum()


SOURCES = {
    "Gaussian": lambda: CircularGaussianPSF(fwhm=3.0),
    "Moffat": lambda: moffat(3.0, 3.0),
    "Airy": lambda: AiryDiskPSF(radius=2.5 / 0.8436659602162363),
    "elliptical": lambda: GaussianPSF(x_fwhm=3.6, y_fwhm=2.4, theta=30.0),
    "comatic": comatic,
    "Kolmogorov+optics": kolmogorov_optics,
    "Roman H158": roman,
}

#: The target FWHM of each source: broader than the source in every direction.
TARGET_FWHM = {"Gaussian": 5.0, "Moffat": 5.0, "Airy": 5.0, "elliptical": 5.0, "comatic": 6.0,
               "Kolmogorov+optics": 5.0, "Roman H158": 3.5}

PAIRS = [(source, kind) for source in SOURCES for kind in ("Gaussian", "Moffat")]


def target_model(source, kind):
    fwhm = TARGET_FWHM[source]
    return CircularGaussianPSF(fwhm=fwhm) if kind == "Gaussian" else moffat(fwhm, 2.5)


def residual_max(source, target, kernel):
    half = kernel.shape[0] // 2
    model = scipy.signal.fftconvolve(source, kernel, mode="valid")
    return float(np.abs(model - target[half:-half, half:-half]).max() / target.max())


def cut(kernel, size=KERNEL_SIZE):
    centre, half = kernel.shape[0] // 2, size // 2
    out = np.array(kernel[centre - half:centre + half + 1, centre - half:centre + half + 1],
                   dtype=float)
    return out / out.sum()


def peer_kernels():
    """Every variant of the peers: (name, function(source, target) -> kernel)."""
    try:
        from photutils import psf_matching
    except ImportError:  # photutils 2.x
        from photutils.psf import matching as psf_matching

    windows = [None, psf_matching.HanningWindow()]
    for alpha in (0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 1.0):
        windows += [psf_matching.TukeyWindow(alpha=alpha), psf_matching.CosineBellWindow(alpha),
                    psf_matching.TopHatWindow(beta=alpha)]
    for alpha, beta in ((0.1, 0.3), (0.3, 0.3), (0.5, 0.3), (0.1, 0.5), (0.3, 0.5), (0.5, 0.5)):
        windows.append(psf_matching.SplitCosineBellWindow(alpha=alpha, beta=beta))
    variants = []
    make = getattr(psf_matching, "make_kernel", None)
    if make is None:  # photutils < 3
        make = psf_matching.create_matching_kernel
        variants += [("photutils", lambda s, t, w=w: make(s, t, window=w)) for w in windows]
    else:
        for w in windows:
            for reg in (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 5e-2):
                variants.append(("photutils", lambda s, t, w=w, r=reg: make(
                    s, t, window=w, regularization=r)))
    wiener = getattr(psf_matching, "make_wiener_kernel", None)
    if wiener is not None:
        for penalty in (None, "laplacian", "biharmonic"):
            for reg in 10.0 ** np.arange(-10, 0):
                variants.append(("photutils wiener", lambda s, t, p=penalty, r=reg: wiener(
                    s, t, regularization=r, penalty=p)))
    from pypher.pypher import homogenization_kernel

    for reg in 10.0 ** np.arange(-10, 0):
        variants.append(("pypher", lambda s, t, r=reg: homogenization_kernel(
            t, s, reg_fact=r)[0].real))
    return variants


def best_peer(source, target):
    best = np.inf
    for _, function in peer_kernels():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with np.errstate(all="ignore"):
                    kernel = cut(function(source, target))
        except (ValueError, ZeroDivisionError, FloatingPointError):
            continue
        if np.all(np.isfinite(kernel)):
            best = min(best, residual_max(source, target, kernel))
    return best


@pytest.fixture(scope="module")
def comparison():
    """Residuals of the defaults (at 21 x 21 support) and of the best peer, per pair."""
    pytest.importorskip("pypher")
    rows = {}
    for source_name, kind in PAIRS:
        source_psf = SOURCES[source_name]()
        target_psf = target_model(source_name, kind)
        with warnings.catch_warnings():
            # the comatic PSF's centroid is off its centre pixel by design
            warnings.filterwarnings("ignore", message=".*centroid by")
            source = realize_psf(source_psf, 0.0, 0.0, STAMP)
            target = realize_psf(target_psf, 0.0, 0.0, STAMP)
            solution = ModelPsfMatcher(MatchConfig(kernel_size=KERNEL_SIZE)).solve(
                (128, 128), source_psf, target_psf)
        ours = residual_max(source, target, solution.solution.kernel.evaluate(64.0, 64.0))
        rows[(source_name, kind)] = (ours, best_peer(source, target), solution.config)
    return rows


class TestBeatsThePeers:
    @pytest.mark.parametrize(("source", "kind"), PAIRS, ids=[f"{s}->{k}" for s, k in PAIRS])
    def test_no_peer_does_better(self, comparison, source, kind):
        ours, peer, config = comparison[(source, kind)]
        assert ours <= peer, (source, kind, ours, peer, config.kernel_basis)

    def test_median_gain(self, comparison):
        ratios = [peer / ours for ours, peer, _ in comparison.values()]
        # the goal is 10x; measured: see the closing note of issue 12
        assert np.median(ratios) >= 5.0, sorted(ratios)


class TestLargeFwhmJumps:
    @pytest.mark.parametrize(("source_fwhm", "target_fwhm"), [(3.5, 12.0), (3.0, 15.0)])
    def test_reaches_the_target_and_smooths_the_noise(self, source_fwhm, target_fwhm):
        rng = np.random.default_rng(3)
        noise = rng.normal(size=(320, 320))
        result = match_psf(noise, CircularGaussianPRF(fwhm=target_fwhm),
                           source_psf=CircularGaussianPRF(fwhm=source_fwhm))
        quality = result.metadata["quality"]
        assert quality["heldout_residual_max"] <= 1e-3
        assert result.kernel.kernel_size > 35  # the size follows the widths
        # the noise falls at least 0.9x as much as with a Gaussian kernel of the
        # width that takes one FWHM to the other
        sigma = np.sqrt(target_fwhm**2 - source_fwhm**2) / GAUSSIAN_SIGMA_TO_FWHM
        gaussian_gain = 1.0 / (2.0 * np.sqrt(np.pi) * sigma)
        out = result.matched.data[~result.matched.mask]
        assert out.std() <= gaussian_gain / 0.9

    def test_reference_kernel_size_cannot_hold_it(self):
        # the reference's largest kernel (35 pixels) leaves ~8e-3 even FWHM-scaled
        result = match_psf(np.zeros((256, 256)), CircularGaussianPRF(fwhm=15.0),
                           source_psf=CircularGaussianPRF(fwhm=3.0), kernel_basis="alard-lupton",
                           scale_by_fwhm=True, kernel_size_max=35)
        assert result.kernel.kernel_size == 35
        assert result.metadata["quality"]["heldout_residual_max"] > 1e-3


class TestQualityGate:
    def test_a_forced_small_kernel_warns(self):
        with pytest.warns(MatchQualityWarning, match=r"held-out residual .* exceeds max_residual "
                                                     r"0\.01; try .*kernel_size"):
            result = match_psf(np.zeros((256, 256)), CircularGaussianPRF(fwhm=60.0),
                               source_psf=CircularGaussianPRF(fwhm=3.0), kernel_size=21)
        assert not result.metadata["quality"]["passed"]
        assert result.matched.meta["PSFMQOK"] is False

    def test_command_line_exits_3_and_writes_nothing(self, tmp_path, capsys):
        from astropy.nddata import CCDData

        science = tmp_path / "s.fits"
        CCDData(np.zeros((256, 256)), unit="adu").write(science)
        output = tmp_path / "out.fits"
        status = main(["match", str(science), "-s", "gaussian:fwhm=3", "-t", "gaussian:fwhm=60",
                       "-o", str(output), "--kernel-size", "21"])
        err = capsys.readouterr().err
        assert status == 3
        assert "does not reach its target" in err and "nothing was written" in err
        assert not output.exists()
        # raising --max-residual accepts it
        status = main(["match", str(science), "-s", "gaussian:fwhm=3", "-t", "gaussian:fwhm=60",
                       "-o", str(output), "--kernel-size", "21", "--max-residual", "100"])
        assert status == 0 and output.exists()

    def test_the_verdict_is_in_the_header(self):
        result = match_psf(np.zeros((128, 128)), CircularGaussianPRF(fwhm=5.0),
                           source_psf=CircularGaussianPRF(fwhm=3.0))
        meta = result.matched.meta
        quality = result.metadata["quality"]
        assert meta["PSFMQHMX"] == quality["heldout_residual_max"] < 1e-6
        assert meta["PSFMQOK"] is True
        assert quality["n_heldout"] >= 4 * len(result.candidates)
        assert set(quality) >= {"heldout_residual_max", "heldout_residual_rms",
                                "fwhm_deviation_max", "ellipticity_max", "noise_gain",
                                "noise_gain_gaussian"}


class TestReferenceRules:
    """The reference pipeline's current rules, with its own numbers."""

    def test_pca_count_includes_the_mean(self):
        from psf_models import REFERENCE_CONFIG, varying_gaussian_grid

        config = REFERENCE_CONFIG.replace(use_pca_for_spatial_kernel=True,
                                          num_principal_components=3, cell_size=128)
        solution = ModelPsfMatcher(config).solve((512, 512), varying_gaussian_grid((512, 512)),
                                                 CircularGaussianPRF(fwhm=6.0))[0]
        assert solution.basis.n_basis == 3  # the mean and two components

    def test_forward_difference_orders_are_1_to_3(self):
        assert MatchConfig(forward_regularization_orders=(1, 2, 3)).forward_regularization_orders \
            == (1, 2, 3)
        with pytest.raises(ValueError, match="from {1, 2, 3}"):
            MatchConfig(forward_regularization_orders=(0,))

    def test_grown_grid_origin(self):
        # 300 x 200 image, 128-pixel cells grown by one cell: candidates at
        # cell * i + cell // 2 - cell, the leftover at the far end
        from astropsfmatch import CellGrid

        grid = CellGrid((200, 300), (128, 128), grow=1)
        np.testing.assert_array_equal(grid.centres_x, [-64, 64, 192, 320])
        np.testing.assert_array_equal(grid.centres_y, [-64, 64, 192])

    def test_off_centre_array_warns(self):
        from astropy.utils.exceptions import AstropyUserWarning

        psf = np.zeros((15, 15))
        psf[8, 9] = 1.0
        with pytest.warns(AstropyUserWarning, match="its peak by"):
            match_psf(np.zeros((128, 128)), CircularGaussianPRF(fwhm=5.0), source_psf=psf)
