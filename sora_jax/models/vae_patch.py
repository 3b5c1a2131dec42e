"""Parameter-free space/time <-> channel reshapes of the Wan 2.2 (residual) VAE, channels last.

* `patchify` / `unpatchify`: the p x p pixel patches <-> channels around the whole VAE
  (diffusers `patchify` / `unpatchify`), so a 3-channel video runs as 3 p^2 channels at 1/p size.
* `avg_down`: the shortcut of a residual down block (diffusers `AvgDown3D`): fold ft x fs x fs
  neighbours into channels, then average groups of channels down to `out_channels`.
* `dup_up`: the shortcut of a residual up block (diffusers `DupUp3D`): repeat channels, unfold
  them into ft x fs x fs neighbours.

The channel orders are torch's (channel index `c * f + offset`), so converted weights see the
same channels; the parity tests in tests/parity/test_wan22_vae_parity.py pin them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def patchify(x: jax.Array, p: int) -> jax.Array:
    """[B, T, H, W, C] -> [B, T, H/p, W/p, C p^2]; channel c p^2 + pw p + ph (torch's order)."""
    if p == 1:
        return x
    b, t, h, w, c = x.shape
    if h % p or w % p:
        raise ValueError(f'patchify: frame size {h}x{w} is not divisible by patch_size={p}.')
    x = x.reshape(b, t, h // p, p, w // p, p, c)  # b t h' ph w' pw c
    x = x.transpose(0, 1, 2, 4, 6, 5, 3)  # b t h' w' c pw ph
    return x.reshape(b, t, h // p, w // p, c * p * p)


def unpatchify(x: jax.Array, p: int) -> jax.Array:
    """Inverse of `patchify`: [B, T, h, w, C p^2] -> [B, T, h p, w p, C]."""
    if p == 1:
        return x
    b, t, h, w, cp = x.shape
    c = cp // (p * p)
    x = x.reshape(b, t, h, w, c, p, p)  # b t h w c pw ph
    x = x.transpose(0, 1, 2, 6, 3, 5, 4)  # b t h ph w pw c
    return x.reshape(b, t, h * p, w * p, c)


def avg_down(x: jax.Array, out_channels: int, ft: int, fs: int) -> jax.Array:
    """[B, T, H, W, C] -> [B, ceil(T/ft), H/fs, W/fs, out_channels].

    T is zero-padded at the front to a multiple of ft (a lone first frame is averaged with a
    zero frame, as diffusers does in both its first chunk and a whole 1 + 2k video); the
    C ft fs^2 folded channels are averaged in consecutive groups of C ft fs^2 / out_channels.
    """
    b, t, h, w, c = x.shape
    pad = (-t) % ft
    if pad:
        x = jnp.pad(x, ((0, 0), (pad, 0), (0, 0), (0, 0), (0, 0)))
        t += pad
    f = ft * fs * fs
    if (c * f) % out_channels:
        raise ValueError(
            f'avg_down: {c} channels x factor {f} is not divisible by out_channels={out_channels}.'
        )
    x = x.reshape(b, t // ft, ft, h // fs, fs, w // fs, fs, c)
    x = x.transpose(0, 1, 3, 5, 7, 2, 4, 6)  # b t' h' w' c ft fs fs
    x = x.reshape(b, t // ft, h // fs, w // fs, out_channels, c * f // out_channels)
    return jnp.mean(x, axis=-1)


def dup_up(x: jax.Array, out_channels: int, ft: int, fs: int, first: bool) -> jax.Array:
    """[B, T, H, W, C] -> [B, T ft - (ft - 1 if first), H fs, W fs, out_channels].

    Each channel is repeated out_channels ft fs^2 / C times, then the channels unfold into
    ft x fs x fs neighbours. `first` (the chunk holding frame 0) drops the first ft - 1 frames,
    so frame 0 stays one frame, as the causal upsamplers do.
    """
    b, t, h, w, c = x.shape
    f = ft * fs * fs
    if (out_channels * f) % c:
        raise ValueError(
            f'dup_up: out_channels={out_channels} x factor {f} is not divisible by '
            f'the {c} input channels.'
        )
    x = jnp.repeat(x, out_channels * f // c, axis=-1)
    x = x.reshape(b, t, h, w, out_channels, ft, fs, fs)  # b t h w c ft fs(h) fs(w)
    x = x.transpose(0, 1, 5, 2, 6, 3, 7, 4)  # b t ft h fs w fs c
    x = x.reshape(b, t * ft, h * fs, w * fs, out_channels)
    return x[:, ft - 1 :] if first else x
