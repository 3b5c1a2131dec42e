"""Wan 2.1 image-to-video conditioning: the extra DiT input channels of an I2V model.

diffusers `WanImageToVideoPipeline.prepare_latents` (expand_timesteps off): the VAE encodes the
video [image, zeros...] (num_frames pixel frames, the known frames in place) into normalised
latents [B, T', h, w, C]; a pixel mask (1 = known frame) is regrouped into latent frames, the
first frame repeated `temporal_factor` times (the causal VAE's first latent frame stands for
one pixel frame), giving `temporal_factor` mask channels per latent frame. The DiT then sees,
at every step, concat([x_t, mask, latents], channels): C + tf + C channels (36 for Wan 2.1).
Unlike the frame-mask modes of `conditioning.py`, nothing is re-imposed after a step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def mask_channels(
    num_frames: int, temporal_factor: int = 4, last_frame: bool = False
) -> np.ndarray:
    """float32 [T', temporal_factor]: which pixel frames of each latent frame are known (the
    first, and with `last_frame` (FLF2V) the last)."""
    tf = temporal_factor
    if num_frames < 1 or (num_frames - 1) % tf:
        raise ValueError(f'num_frames={num_frames} is not 1 + {tf}k (causal VAE).')
    known = np.zeros(num_frames, np.float32)
    known[0] = 1.0
    if last_frame:
        if num_frames < 2:
            raise ValueError('a first-and-last-frame condition needs num_frames >= 2.')
        known[-1] = 1.0
    known = np.concatenate([np.repeat(known[:1], tf), known[1:]])  # [tf * T']
    return known.reshape(-1, tf)


def condition_channels(
    latents: jax.Array, num_frames: int, temporal_factor: int = 4, last_frame: bool = False
) -> jax.Array:
    """latents [B, T', h, w, C] (of [image, zeros..(, last)]) -> [B, T', h, w, tf + C] =
    concat([mask, latents]), what follows x_t in the I2V DiT's input channels."""
    m = jnp.asarray(mask_channels(num_frames, temporal_factor, last_frame), latents.dtype)
    if m.shape[0] != latents.shape[1]:
        raise ValueError(
            f'{num_frames} frames make {m.shape[0]} latent frames; the latents '
            f'have {latents.shape[1]}.'
        )
    m = jnp.broadcast_to(m[None, :, None, None, :], (*latents.shape[:4], temporal_factor))
    return jnp.concatenate([m, latents], axis=-1)


def first_frame_video(
    image, batch: int, num_frames: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """The I2V inputs of `image` ([H, W, 3] or [B, H, W, 3], uint8, or floats in [-1, 1]):
    (uint8 images [B, H, W, 3] for CLIP, the video [B, num_frames, H, W, 3] in [-1, 1] that is the
    image followed by zeros, for the VAE)."""
    img = np.asarray(image)
    img = np.broadcast_to(img[None], (batch, *img.shape)) if img.ndim == 3 else img
    if img.ndim != 4 or img.shape[0] != batch or img.shape[1:] != (height, width, 3):
        raise ValueError(
            f'image has shape {img.shape}; expected [{height}, {width}, 3] or '
            f'[{batch}, {height}, {width}, 3] (resize it to height x width).'
        )
    if img.dtype != np.uint8:  # [-1, 1] floats -> the 8-bit image CLIP's processor takes
        img = np.clip(np.round((img.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    pixels = np.zeros((batch, num_frames, height, width, 3), np.float32)
    pixels[:, 0] = img.astype(np.float32) / 127.5 - 1.0
    return img, pixels
