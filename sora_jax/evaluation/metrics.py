"""Reconstruction metrics for videos: PSNR and SSIM, computed per frame and averaged.

Inputs are `[..., H, W, C]` arrays (e.g. `[B, T, H, W, 3]` or `[T, H, W, 3]`): uint8 in
[0, 255] or floats in [-1, 1] (the VAE's range). Both are mapped to [0, 1] first, so the peak
value is 1. Every leading axis counts as "frames": the result is the mean over all frames.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def to_unit_range(x: jax.Array) -> jax.Array:
    """uint8 [0, 255] or float [-1, 1] -> float32 [0, 1]."""
    x = jnp.asarray(x)
    if x.dtype == jnp.uint8:
        return x.astype(jnp.float32) / 255.0
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f'metrics take uint8 or float arrays in [-1, 1], got dtype {x.dtype}; '
            'convert the video first.'
        )
    return (x.astype(jnp.float32) + 1.0) / 2.0


def _check(a: jax.Array, b: jax.Array) -> None:
    if a.shape != b.shape or a.ndim < 3:
        raise ValueError(f'shapes {a.shape} and {b.shape} must be equal [..., H, W, C] arrays.')


def psnr_per_frame(a: jax.Array, b: jax.Array) -> jax.Array:
    """PSNR in dB of each frame, shape a.shape[:-3]; identical frames give +inf."""
    _check(a, b)
    a, b = to_unit_range(a), to_unit_range(b)
    mse = jnp.mean(jnp.square(a - b), axis=(-3, -2, -1))
    return -10.0 * jnp.log10(mse)  # peak 1.0; log10(0) = -inf -> +inf


def psnr(a: jax.Array, b: jax.Array) -> jax.Array:
    """Mean over frames of the per-frame PSNR (dB); +inf when every frame is identical."""
    return jnp.mean(psnr_per_frame(a, b))


def _gaussian_window(size: int, sigma: float) -> jax.Array:
    x = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2.0
    g = jnp.exp(-0.5 * jnp.square(x / sigma))
    return g / jnp.sum(g)


def _filter(x: jax.Array, g: jax.Array) -> jax.Array:
    """Separable 'valid' Gaussian filter over H, W of x: [N, H, W, C]."""
    k = g.shape[0]
    x = jnp.moveaxis(x, -1, 1)  # [N, C, H, W]
    n, c, h, w = x.shape
    x = x.reshape(n * c, 1, h, w)
    dn = ('NCHW', 'OIHW', 'NCHW')
    x = jax.lax.conv_general_dilated(
        x, g.reshape(1, 1, k, 1), (1, 1), 'VALID', dimension_numbers=dn
    )
    x = jax.lax.conv_general_dilated(
        x, g.reshape(1, 1, 1, k), (1, 1), 'VALID', dimension_numbers=dn
    )
    return jnp.moveaxis(x.reshape(n, c, *x.shape[2:]), 1, -1)


def ssim_per_frame(
    a: jax.Array,
    b: jax.Array,
    *,
    filter_size: int = 11,
    filter_sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> jax.Array:
    """SSIM of each frame (Wang et al. 2004; Gaussian 11x11, sigma 1.5, 'valid' windows, mean over
    channels, as tf.image.ssim), shape a.shape[:-3]. Frames smaller than the window use a window
    of min(H, W)."""
    _check(a, b)
    lead = a.shape[:-3]
    h, w, c = a.shape[-3:]
    a = to_unit_range(a).reshape(-1, h, w, c)
    b = to_unit_range(b).reshape(-1, h, w, c)
    g = _gaussian_window(min(filter_size, h, w), filter_sigma)
    c1, c2 = k1**2, k2**2
    # (Co)variances from frame-centred values: same maths, far less float32 cancellation.
    ma = jnp.mean(a, axis=(1, 2, 3), keepdims=True)
    mb = jnp.mean(b, axis=(1, 2, 3), keepdims=True)
    a, b = a - ma, b - mb
    mu_a, mu_b = _filter(a, g), _filter(b, g)
    var_a = _filter(a * a, g) - mu_a**2
    var_b = _filter(b * b, g) - mu_b**2
    cov = _filter(a * b, g) - mu_a * mu_b
    mu_a, mu_b = mu_a + ma, mu_b + mb
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return jnp.mean(num / den, axis=(-3, -2, -1)).reshape(lead)


def ssim(a: jax.Array, b: jax.Array, **kwargs) -> jax.Array:
    """Mean over frames of the per-frame SSIM; 1.0 for identical videos."""
    return jnp.mean(ssim_per_frame(a, b, **kwargs))
