"""PSF models measured on an image's own stars, and checks of a PSF match
against the stars.

Users often have an image and no PSF model. `find_stars` selects the stars a
PSF can be measured on (isolated, unsaturated, well-fitted point sources) and
measures their widths; `estimate_psf` stacks them into a photutils PSF model
(an oversampled ePSF, constant or on a grid of image positions) and checks
that the model is as wide as the stars; `star_check` compares the star widths
of an image and of its PSF-matched version, and those of a PSF model with the
stars.

Widths are measured the same way everywhere: on the background-subtracted
image, the local background of each star (the sigma-clipped median of an
annulus from 2.5 FWHMs) is subtracted, then a circular pixel-integrated
Gaussian (the `~photutils.psf.CircularGaussianPRF` that
`photutils.psf.fit_fwhm` fits, with free flux, position and FWHM) is fitted
by unweighted least squares to a square box of
``max(7, 2 * round(1.5 * fwhm) + 1)`` pixels around the star. The fit is
vectorized over the stars and finds the FWHM `~photutils.psf.fit_fwhm` finds
on the same pixels; the local background makes it robust to an imperfect
background map (crowded fields). A PSF model is measured by rendering it,
noise-free, at the stars' positions on the same pixel boxes and measuring the
rendered stars in the same way.

The modules, each importing only those above it in this list::

    image      the inputs: images as native float64 with their bad pixels,
               star tables, option checks
    robust     robust statistics: sigma-clipped level and noise, outliers
               from a trend over the image, outliers per bin
    measure    the width measurement: pixel boxes, local background,
               circular Gaussian PRF fits of stars and of rendered PSF models
    detect     background map and noise, detection, saturation plateau, the
               first guess of the FWHM
    find       find_stars and STAR_FLAGS: detection, selection, measurement
    epsf       the ePSF grid: nodes, their interpolation weights, regions,
               the evaluation of node ePSFs at the stars
    stack      the iterated residual stack of the stars into node ePSFs
    estimate   estimate_psf and PSFEstimate: the photutils model and its check
    check      star_check and StarCheck: widths before and after a match

This subpackage depends on numpy, scipy, astropy and photutils only (and
the package logger).
"""

# The six public names, re-exported here for `astropsfmatch/__init__.py`. They are
# listed in the ``__all__`` of the modules that define them: the union of the
# private modules' ``__all__`` must be the package's ``__all__`` with no name twice,
# so this ``__init__`` has none of its own.
from .check import StarCheck, star_check  # noqa: F401 - re-exported
from .estimate import PSFEstimate, estimate_psf  # noqa: F401 - re-exported
from .find import STAR_FLAGS, find_stars  # noqa: F401 - re-exported
