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

import math

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


def fit_area(image_hw, max_area: int, mod: int) -> tuple[int, int]:
    """(height, width) with the image's aspect ratio, about `max_area` pixels, each a multiple of
    `mod` (VAE factor x patch): the size diffusers' Wan I2V example computes for a photo."""
    ih, iw = (int(n) for n in image_hw)
    if ih < 1 or iw < 1:
        raise ValueError(f'image has size {ih}x{iw}; it needs pixels.')
    aspect = ih / iw
    h = round(math.sqrt(max_area * aspect)) // mod * mod
    w = round(math.sqrt(max_area / aspect)) // mod * mod
    return max(mod, h), max(mod, w)


def _images(image, name: str, batch: int) -> np.ndarray:
    """One user image ([H, W, 3] or [B, H, W, 3], uint8 or floats in [-1, 1]) -> uint8
    [B, H, W, 3] at its own size."""
    img = np.asarray(image)
    img = np.broadcast_to(img[None], (batch, *img.shape)) if img.ndim == 3 else img
    if img.ndim != 4 or img.shape[0] != batch or img.shape[-1] != 3 or min(img.shape[1:3]) < 1:
        raise ValueError(
            f'{name} has shape {img.shape}; expected an RGB image [H, W, 3] or [{batch}, H, W, 3] '
            '(any H x W: it is resized to height x width).'
        )
    if img.dtype != np.uint8:  # [-1, 1] floats -> the 8-bit image CLIP's processor takes
        img = np.clip(np.round((img.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return img


def resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [B, H, W, 3] -> float32 [B, height, width, 3] in [-1, 1]: Pillow's Lanczos resize,
    as diffusers' VideoProcessor.preprocess prepares a PIL image for the VAE (no crop: another
    aspect ratio is stretched, as there)."""
    from PIL import Image

    if img.shape[1:3] != (height, width):
        img = np.stack(
            [np.asarray(Image.fromarray(x).resize((width, height), Image.LANCZOS)) for x in img]
        )
    return img.astype(np.float32) / 127.5 - 1.0


def condition_video(
    image, batch: int, num_frames: int, height: int, width: int, last_image=None
) -> tuple[list[np.ndarray], np.ndarray]:
    """The I2V (FLF2V with `last_image`) inputs, as `WanImageToVideoPipeline` makes them:
    ([uint8 images [B, H_i, W_i, 3] for CLIP, as given: the first (, the last)], the video
    [B, num_frames, height, width, 3] in [-1, 1] for the VAE: the image resized, zeros (, the
    last image resized as the last frame)). Images are [H, W, 3] or [B, H, W, 3], uint8 or
    floats in [-1, 1], any size."""
    imgs = [_images(image, 'image', batch)]
    if last_image is not None:
        if num_frames < 2:
            raise ValueError('a first-and-last-frame clip needs num_frames >= 2.')
        imgs.append(_images(last_image, 'last_image', batch))
    pixels = np.zeros((batch, num_frames, height, width, 3), np.float32)
    pixels[:, 0] = resize(imgs[0], height, width)
    if last_image is not None:
        pixels[:, -1] = resize(imgs[1], height, width)
    return imgs, pixels
