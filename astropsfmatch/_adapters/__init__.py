"""Adapters between the objects users have and the arrays the engine computes on.

PSF inputs (`psf`: photutils models, astropy models, arrays, PSFEx files),
images in and out (`nddata`: CCDData/NDData/arrays, the matched CCDData),
and files on disk (`files`: the one layout of a matched exposure).
"""
