"""`star_check`: star widths before and after a PSF match, and of the source PSF
model (`StarCheck`).
"""

import math
from dataclasses import dataclass

import numpy as np

from .detect import estimate_background, guess_fwhm
from .find import find_candidates
from .image import check_psf_model, positive, prepare, star_positions
from .measure import gaussian_fits, model_fwhm
from .robust import robust_stats

# the public names of this module, re-exported by astropsfmatch/__init__.py
__all__ = ["StarCheck", "star_check"]


@dataclass(frozen=True, eq=False)
class StarCheck:
    """Star widths before and after a PSF match, and of the source PSF model.

    Attributes
    ----------
    x, y : `~numpy.ndarray`
        Positions of the stars (fitted in the input image).
    fwhm_before, fwhm_after : `~numpy.ndarray`
        FWHM of each star in the input and the matched image (circular
        Gaussian PRF fits, see the docstring of ``astropsfmatch._workflow.stars``);
        NaN where a fit failed or its box holds a masked or non-finite pixel
        (such as the NaN edges of a matched image).
    source_model_fwhm : `~numpy.ndarray` or None
        FWHM of the source PSF model rendered at each star and fitted in
        the same way, or None when no model was given.
    target_fwhm : float or None
        The FWHM the match aimed at.
    """

    x: np.ndarray
    y: np.ndarray
    fwhm_before: np.ndarray
    fwhm_after: np.ndarray
    source_model_fwhm: np.ndarray | None
    target_fwhm: float | None

    @property
    def valid(self):
        """Stars measured in both images."""
        return np.isfinite(self.fwhm_before) & np.isfinite(self.fwhm_after)

    @property
    def n_stars(self):
        """Number of stars measured in both images."""
        return int(np.count_nonzero(self.valid))

    @property
    def median_before(self):
        """Median FWHM in the input image of the stars measured in both (NaN if none)."""
        return float(np.median(self.fwhm_before[self.valid])) if self.n_stars else math.nan

    @property
    def median_after(self):
        """Median FWHM in the matched image of the stars measured in both (NaN if none)."""
        return float(np.median(self.fwhm_after[self.valid])) if self.n_stars else math.nan

    @property
    def after_deviation(self):
        """``median_after / target_fwhm - 1`` (NaN without a target)."""
        if self.target_fwhm is None:
            return math.nan
        return self.median_after / self.target_fwhm - 1.0

    @property
    def model_deviation(self):
        """Median of ``source_model_fwhm / fwhm_before``, minus one: how much
        narrower (negative) or wider than the stars the source PSF model is
        (NaN without a model).
        """
        if self.source_model_fwhm is None:
            return math.nan
        both = np.isfinite(self.source_model_fwhm) & np.isfinite(self.fwhm_before)
        if not both.any():
            return math.nan
        return float(np.median(self.source_model_fwhm[both] / self.fwhm_before[both]) - 1.0)

    def summary(self):
        """One line: the numbers of this check."""
        text = (f"{self.n_stars} stars: FWHM {self.median_before:.2f} px before, "
                f"{self.median_after:.2f} px after matching")
        if self.target_fwhm is not None:
            text += f" (target {self.target_fwhm:.2f} px, {self.after_deviation:+.1%})"
        if self.source_model_fwhm is not None:
            both = np.isfinite(self.source_model_fwhm)
            model = float(np.median(self.source_model_fwhm[both])) if both.any() else math.nan
            text += f"; source PSF model {model:.2f} px ({self.model_deviation:+.1%} vs the stars)"
        return text

    def __repr__(self):
        return f"<StarCheck: {self.summary()}>"


def star_check(image, matched, *, source_psf=None, target_fwhm=None, stars=None, mask=None):
    """Measure stars before and after a PSF match, and the source PSF model.

    The stars (from `find_stars` on ``image`` unless given) are fitted with a
    circular Gaussian PRF in both images (each background-subtracted as in
    `find_stars`): in ``image`` with the box of their median FWHM, in
    ``matched`` with the box of ``target_fwhm`` (or of the median FWHM
    measured there). The source PSF model, when given, is rendered at each
    star's position on the star's box and fitted in the same way, which is
    what shows a wrong model: stars of 3.4 pixels and a model of 2.8 pixels
    give a ``model_deviation`` of -18%.

    Parameters
    ----------
    image : 2-D array, `~astropy.nddata.NDData` or masked array
        The input image of the match.
    matched : 2-D array, `~astropy.nddata.NDData` or masked array
        The matched image, of the same shape. Masked and non-finite pixels
        (NaN edges) are ignored: stars whose box holds one get NaN.
    source_psf : photutils PSF model, optional
        The PSF model of ``image`` (`~photutils.psf.ImagePSF`,
        `~photutils.psf.GriddedPSFModel`, `~photutils.psf.CircularGaussianPRF`,
        ... with ``flux``, ``x_0`` and ``y_0`` parameters); not modified.
    target_fwhm : float, optional
        FWHM (pixels) the match aimed at.
    stars : `~astropy.table.Table`, optional
        Stars with ``x`` and ``y`` columns; by default `find_stars` on
        ``image``.
    mask : 2-D bool array, optional
        Bad pixels of both images.

    Returns
    -------
    check : `StarCheck`

    Raises
    ------
    ValueError
        If the images differ in shape, if no star is found or given, or for
        invalid inputs.
    TypeError
        If ``source_psf`` is not a PSF model or an input has the wrong type.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.ndimage import gaussian_filter
    >>> from photutils.psf import CircularGaussianPRF
    >>> from astropsfmatch._workflow.stars import star_check
    >>> yy, xx = np.mgrid[:150, :150]
    >>> image = np.random.default_rng(2).normal(100.0, 3.0, xx.shape)
    >>> for x0 in range(20, 150, 30):
    ...     for y0 in range(20, 150, 30):
    ...         image += CircularGaussianPRF(flux=3e4, x_0=x0 + 0.1, y_0=y0 + 0.2,
    ...                                      fwhm=3.0)(xx, yy)
    >>> matched = gaussian_filter(image, 4.0 / 2.3548)   # FWHM 3 -> 5 px
    >>> check = star_check(image, matched, target_fwhm=5.0,
    ...                    source_psf=CircularGaussianPRF(fwhm=2.5))
    >>> print(check.summary())
    25 stars: FWHM 3.00 px before, 5.00 px after matching (target 5.00 px, ...0.0%);
    source PSF model 2.50 px (-16.7% vs the stars)
    """
    prep = prepare(image, mask, "image")
    prep_matched = prepare(matched, mask, "matched")
    if prep.data.shape != prep_matched.data.shape:
        msg = f"matched must have the shape of image {prep.data.shape}, " \
              f"got {prep_matched.data.shape}"
        raise ValueError(msg)
    target_fwhm = positive("target_fwhm", target_fwhm)
    if source_psf is not None:
        check_psf_model("source_psf", source_psf)
    if stars is None:
        table, context = find_candidates(prep, fwhm=None, threshold=5.0, isolation=None,
                                         saturation=None, max_stars=500, min_snr=20.0)
        table = table[np.asarray(table["flags"]) == 0]
        if len(table) == 0:
            msg = "star_check found no star in image (find_stars with its defaults); " \
                  "pass stars= to choose them"
            raise ValueError(msg)
        x0, y0 = np.asarray(table["x"], float), np.asarray(table["y"], float)
        guess = context["fwhm"]
        sub = context["sub"]
    else:
        x0, y0 = star_positions(stars)
        if x0.size == 0:
            msg = "stars is empty: star_check needs at least one star"
            raise ValueError(msg)
        guess = None
        if "fwhm" in getattr(stars, "colnames", ()):
            values = np.asarray(stars["fwhm"], dtype=np.float64)
            values = values[np.isfinite(values) & (values > 0)]
            guess = float(np.median(values)) if values.size else None
        if guess is None:
            median, std = robust_stats(prep.data[~prep.bad])
            guess = guess_fwhm(prep.data - median, prep.bad, std, None, prep.data) or 3.0
        background, _, _ = estimate_background(prep.data, prep.bad, guess)
        sub = prep.data - background
        sub[prep.bad] = 0.0
    before = gaussian_fits(sub, prep.bad, x0, y0, guess)
    if np.isfinite(before["fwhm"]).any():
        # measure with the box of the stars' own median FWHM
        guess = float(np.nanmedian(before["fwhm"]))
        before = gaussian_fits(sub, prep.bad, x0, y0, guess)
    x_fit = np.where(before["ok"], before["x"], x0)
    y_fit = np.where(before["ok"], before["y"], y0)

    after_guess = target_fwhm
    background_m, _, _ = estimate_background(prep_matched.data, prep_matched.bad,
                                             after_guess if after_guess is not None else guess)
    sub_m = prep_matched.data - background_m
    sub_m[prep_matched.bad] = 0.0
    if after_guess is None:
        first = gaussian_fits(sub_m, prep_matched.bad, x0, y0, guess)
        after_guess = float(np.nanmedian(first["fwhm"])) if np.isfinite(first["fwhm"]).any() \
            else guess
    after = gaussian_fits(sub_m, prep_matched.bad, x0, y0, after_guess)
    model = None
    if source_psf is not None:
        model = model_fwhm(source_psf, x_fit, y_fit, guess, x0, y0)
    return StarCheck(x=x_fit, y=y_fit, fwhm_before=before["fwhm"], fwhm_after=after["fwhm"],
                     source_model_fwhm=model, target_fwhm=target_fwhm)
