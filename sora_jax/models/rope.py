"""3D rotary position embeddings for (t, h, w) token grids of any size (Wan 2.1 layout).

The head dimension D splits into a time part and two equal spatial parts:
h = w = 2 * (D // 6), t = D - h - w (44/42/42 for D = 128). Rotation acts on adjacent
(interleaved) channel pairs. Frequencies are computed for the grid at hand, so any
duration / resolution / aspect ratio works without a max sequence length.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """(t_dim, h_dim, w_dim) channel split of one head."""
    if head_dim % 2:
        raise ValueError(
            f'RoPE needs an even head_dim, got {head_dim}; choose an even width/heads.'
        )
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def _axis_angles(positions: jax.Array, dim: int, theta: float) -> jax.Array:
    """positions: [N] -> angles [N, dim // 2]."""
    inv = 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32)[: dim // 2] / dim))
    return positions.astype(jnp.float32)[:, None] * inv[None]


def rope_angles(
    grid: tuple[int, int, int],
    head_dim: int,
    theta: float = 10000.0,
    offset: tuple[int, int, int] = (0, 0, 0),
) -> jax.Array:
    """Rotation angles for every token of a (T, H, W) grid in (t, h, w) order: [N, head_dim // 2]."""
    f, h, w = grid
    dims = rope_split(head_dim)
    tt, hh, ww = jnp.meshgrid(
        jnp.arange(f) + offset[0],
        jnp.arange(h) + offset[1],
        jnp.arange(w) + offset[2],
        indexing='ij',
    )
    parts = [_axis_angles(p.reshape(-1), d, theta) for p, d in zip((tt, hh, ww), dims)]
    return jnp.concatenate(parts, axis=-1)


def rope_angles_1d(length: int, head_dim: int, theta: float = 10000.0) -> jax.Array:
    """Rotation angles of a plain sequence (positions 0..length-1): [length, head_dim // 2]."""
    if head_dim % 2:
        raise ValueError(
            f'RoPE needs an even head_dim, got {head_dim}; choose an even width/heads.'
        )
    return _axis_angles(jnp.arange(length), head_dim, theta)


def apply_rope(x: jax.Array, angles: jax.Array) -> jax.Array:
    """Rotate adjacent channel pairs. x: [B, N, heads, D]; angles: [N, D // 2]."""
    xf = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
    x1, x2 = xf[..., 0], xf[..., 1]
    cos = jnp.cos(angles)[None, :, None, :]
    sin = jnp.sin(angles)[None, :, None, :]
    out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)
