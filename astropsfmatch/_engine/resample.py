"""Resampling with interpolation kernels of known response: images and PSF stamps.

An image is resampled at arbitrary input-pixel coordinates ``(x, y)`` (one
pair per output pixel) by a separable interpolation kernel ``k``: the value
at ``(x, y)`` is ``sum_ij w_i(x) w_j(y) data[j, i]`` over the ``2a x 2a``
input pixels nearest to it, with ``w_i(x) = k(x - i)`` normalized to unit sum
along each axis (so a constant image stays constant and flux per unit area is
kept). The kernel has a finite footprint: an output pixel is *invalid* when
any input pixel with a non-zero weight is invalid (or outside the input), and
invalid input pixels are never read, so nothing spreads beyond the footprint.

The same functions resample PSF stamps, so that a PSF goes through exactly
the arithmetic that the image does: `fourier_shift` moves a stamp by a
fraction of a pixel (the band-limited interpolant of its samples) and
`sinc_affine` evaluates that interpolant at affine-transformed offsets.
"""

import numpy as np
import scipy.fft

__all__ = []  # internal to the package: nothing here is public

#: The interpolation kernels: name -> (half-width a in pixels, Kaiser beta or None, kind):
#: sincs windowed by a Kaiser window (beta 6.5 and 5.5) or by a Lanczos window, Keys cubic
#: convolution (a = -0.5) and bilinear interpolation.
KERNELS = {
    "kaiser5": (5, 6.5, "kaiser"),
    "kaiser4": (4, 5.5, "kaiser"),
    "lanczos5": (5, None, "lanczos"),
    "lanczos4": (4, None, "lanczos"),
    "lanczos3": (3, None, "lanczos"),
    "cubic": (2, None, "keys"),
    "linear": (1, None, "linear"),
}

#: A tap whose weight is below this (after normalization) is outside the footprint.
FOOTPRINT_EPSILON = 1e-9

#: Kernel table resolution (samples per pixel) and the tables, built when first used.
_TABLE_STEPS = 16384
_TABLES = {}

#: Output pixels resampled at once (bounds the temporary arrays).
_CHUNK = 1 << 13


def half_width(name):
    """Half-width ``a`` of a kernel: it reads ``2a`` input pixels along each axis."""
    return KERNELS[name][0]


def kernel_values(name, t):
    """The (unnormalized) kernel ``k(t)`` at offsets ``t`` in pixels."""
    a, beta, kind = KERNELS[name]
    t = np.asarray(t, dtype=np.float64)
    inside = np.abs(t) < a
    if kind == "linear":
        values = 1.0 - np.abs(t)
    elif kind == "keys":
        s = np.abs(t)
        values = np.where(s <= 1.0, 1.5 * s**3 - 2.5 * s**2 + 1.0,
                          -0.5 * s**3 + 2.5 * s**2 - 4.0 * s + 2.0)
    elif kind == "lanczos":
        values = np.sinc(t) * np.sinc(t / a)
    else:
        root = np.sqrt(np.clip(1.0 - (t / a) ** 2, 0.0, None))
        values = np.sinc(t) * np.i0(beta * root) / np.i0(beta)
    return np.where(inside, values, 0.0)


def _table(name):
    """The kernel tabulated every 1/`_TABLE_STEPS` pixel over [0, a] (cached)."""
    if name not in _TABLES:
        a = half_width(name)
        _TABLES[name] = kernel_values(name, np.linspace(0.0, a, a * _TABLE_STEPS + 1))
    return _TABLES[name]


def tap_weights(coordinate, name):
    """First input index and normalized weights ``(..., 2a)`` of each coordinate.

    The kernel is interpolated linearly in a fine table (every 1/16384 pixel,
    an error below 1e-8); images and PSF stamps use the same weights.
    """
    a = half_width(name)
    coordinate = np.asarray(coordinate, dtype=np.float64)
    first = np.floor(coordinate).astype(np.int64) - (a - 1)
    offsets = coordinate[..., np.newaxis] - (first[..., np.newaxis] + np.arange(2 * a))
    values = _table(name)
    position = np.minimum(np.abs(offsets), a) * _TABLE_STEPS
    index = np.minimum(position.astype(np.int64), values.size - 2)
    fraction = position - index
    weights = values[index] * (1.0 - fraction) + values[index + 1] * fraction
    weights /= weights.sum(axis=-1, keepdims=True)
    return first, weights


def _taps(xs, ys, name, pad, width, height):
    """Flat indices (n, 2a, 2a) into a padded image, weights (n, 2a) along x and y, the
    coordinates whose taps leave the padded image (``far``) and the finite ones.
    """
    a = half_width(name)
    finite = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = np.where(finite, xs, 0.0), np.where(finite, ys, 0.0)
    first_x, wx = tap_weights(xs, name)
    first_y, wy = tap_weights(ys, name)
    first_x += pad
    first_y += pad
    far = ~finite | (first_x < 0) | (first_x + 2 * a > width) | (first_y < 0) | (
        first_y + 2 * a > height)
    index = np.where(far, pad * width + pad, first_y * width + first_x)
    offsets = (np.arange(2 * a) * width)[:, np.newaxis] + np.arange(2 * a)[np.newaxis, :]
    return index[:, np.newaxis, np.newaxis] + offsets, wx, wy, far, finite


class StampResampler:
    """One resampling of small images (PSF stamps) at fixed coordinates, applied many times.

    The taps and weights are computed once; pixels outside the image are zero.

    Parameters
    ----------
    shape : (ny, nx)
        Shape of the images.
    x, y : ndarray
        Input-pixel coordinates of the output pixels (any shape).
    name : str
        A kernel of `KERNELS`.
    """

    def __init__(self, shape, x, y, name):
        a = half_width(name)
        self.pad = a + 1
        self.shape = tuple(shape)
        self.width = shape[1] + 2 * self.pad
        self.height = shape[0] + 2 * self.pad
        x = np.asarray(x, dtype=np.float64)
        self.out_shape = x.shape
        self.index, wx, wy, far, _ = _taps(x.ravel(), np.asarray(y, dtype=np.float64).ravel(),
                                           name, self.pad, self.width, self.height)
        self.row_w, self.col_w = wy[:, np.newaxis, :], wx[:, :, np.newaxis]
        self.far = far

    def __call__(self, image):
        """The resampled image, of the coordinates' shape."""
        padded = np.pad(np.asarray(image, dtype=np.float64), self.pad).ravel()
        values = (self.row_w @ padded.take(self.index) @ self.col_w)[:, 0, 0]
        values[self.far] = 0.0
        return values.reshape(self.out_shape)


def resample(arrays, invalid, x, y, name, *, outside_invalid=True):
    """Resample images at input-pixel coordinates with an interpolation kernel.

    Parameters
    ----------
    arrays : sequence of 2-D ndarray
        Images of one shape, finite where ``invalid`` is False (the values of
        invalid pixels are never used).
    invalid : 2-D ndarray of bool or None
        Invalid input pixels (None: all valid).
    x, y : ndarray
        Input-pixel coordinates (pixel centres at integers) of each output
        pixel; any shape, the same for both. Non-finite coordinates give
        invalid output pixels.
    name : str
        A kernel of `KERNELS`.
    outside_invalid : bool, optional
        Whether input pixels outside the arrays are invalid (images) or zero
        (PSF stamps that end in zeros).

    Returns
    -------
    values : list of ndarray
        One resampled array per input, of the shape of ``x`` (0 where invalid).
    bad : ndarray of bool
        True where an invalid or outside input pixel has a non-zero weight.
    """
    a = half_width(name)
    ny, nx = np.shape(arrays[0])
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    shape = x.shape
    pad = a + 1
    width, height = nx + 2 * pad, ny + 2 * pad
    inside = (slice(pad, pad + ny), slice(pad, pad + nx))
    flags = np.full((height, width), 1.0 if outside_invalid else 0.0)
    flags[inside] = 0.0 if invalid is None else np.asarray(invalid, dtype=np.float64)
    columns = []
    for array in arrays:
        column = np.zeros((height, width))
        column[inside] = array
        if invalid is not None:
            column[inside][np.asarray(invalid, dtype=bool)] = 0.0
        columns.append(column.ravel())
    flags = flags.ravel()
    x_flat, y_flat = x.ravel(), y.ravel()
    out = [np.zeros(x_flat.size) for _ in columns]
    bad = np.zeros(x_flat.size, dtype=bool)
    for start in range(0, x_flat.size, _CHUNK):
        part = slice(start, start + _CHUNK)
        index, wx, wy, far, finite = _taps(x_flat[part], y_flat[part], name, pad, width,
                                           height)
        row_w, col_w = wy[:, np.newaxis, :], wx[:, :, np.newaxis]
        touched = (np.abs(wy) > FOOTPRINT_EPSILON)[:, np.newaxis, :] @ flags.take(index) @ (
            np.abs(wx) > FOOTPRINT_EPSILON)[:, :, np.newaxis].astype(np.float64)
        bad_part = (touched[:, 0, 0] > 0) | (far if outside_invalid else ~finite)
        for column, values in zip(columns, out, strict=True):
            result = (row_w @ column.take(index) @ col_w)[:, 0, 0]
            result[bad_part | far] = 0.0
            values[part] = result
        bad[part] = bad_part
    return [values.reshape(shape) for values in out], bad.reshape(shape)


def fourier_shift(stamps, dx, dy, *, pad=8):
    """Stamps moved by ``(dx, dy)`` pixels: their band-limited interpolant, resampled.

    Parameters
    ----------
    stamps : ndarray, (n, S, S) or (S, S)
        Stamps that end in (near) zeros.
    dx, dy : float or ndarray of shape (n,)
        The shifts: the output at pixel ``p`` is the input interpolant at
        ``p - (dx, dy)``.
    pad : int, optional
        Zeros added on each side before the FFT (kept in the output).

    Returns
    -------
    shifted : ndarray, (n, S + 2 pad, S + 2 pad) (or 2-D)
    """
    stamps = np.asarray(stamps, dtype=np.float64)
    single = stamps.ndim == 2
    if single:
        stamps = stamps[np.newaxis]
    n = stamps.shape[0]
    padded = np.pad(stamps, ((0, 0), (pad, pad), (pad, pad)))
    m = padded.shape[-1]
    freq = scipy.fft.fftfreq(m)
    dx = np.broadcast_to(np.asarray(dx, dtype=np.float64), (n,))
    dy = np.broadcast_to(np.asarray(dy, dtype=np.float64), (n,))
    phase = np.exp(-2j * np.pi * (dy[:, None, None] * freq[None, :, None]
                                  + dx[:, None, None] * freq[None, None, :]))
    if m % 2 == 0:  # the Nyquist term of a real signal: keep it real
        phase[:, m // 2, :] = phase[:, m // 2, :].real
        phase[:, :, m // 2] = phase[:, :, m // 2].real
    spectrum = scipy.fft.fft2(padded, axes=(1, 2))
    shifted = scipy.fft.ifft2(spectrum * phase, axes=(1, 2)).real
    return shifted[0] if single else shifted


def sinc_affine(stamp, matrix, size):
    """The band-limited interpolant of ``stamp`` at offsets ``matrix @ r``.

    Parameters
    ----------
    stamp : ndarray (S, S)
        A centred stamp (odd size) that ends in near zeros.
    matrix : ndarray (2, 2)
        Maps the offsets ``r = (rx, ry)`` of the output stamp to offsets in
        ``stamp``, in (x, y) order.
    size : odd int
        Side of the output stamp, centred like the input.

    Returns
    -------
    out : ndarray (size, size)
        ``sum_d stamp[d] sinc(u_x - d_x) sinc(u_y - d_y)`` with ``u = matrix @ r``.
    """
    stamp = np.asarray(stamp, dtype=np.float64)
    half_in = stamp.shape[0] // 2
    d = np.arange(stamp.shape[0]) - half_in
    r = np.arange(size) - size // 2
    ry, rx = np.meshgrid(r, r, indexing="ij")
    ux = matrix[0, 0] * rx + matrix[0, 1] * ry
    uy = matrix[1, 0] * rx + matrix[1, 1] * ry
    sx = np.sinc(ux.ravel()[:, None] - d[None, :])  # (P, S)
    sy = np.sinc(uy.ravel()[:, None] - d[None, :])
    # out[p] = sum_j sy[p, j] sum_i sx[p, i] stamp[j, i]
    inner = sx @ stamp.T  # (P, S): [p, j]
    return np.einsum("pj,pj->p", sy, inner).reshape(size, size)
