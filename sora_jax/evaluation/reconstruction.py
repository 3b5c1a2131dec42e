"""VAE round trips of real videos: fit a clip to the VAE, encode + decode chunked (tiled when
large), score it (PSNR / SSIM on the uint8 frames, i.e. what gets written to disk).

  vae = frozen_vae.load('workdirs/shapes_vae')            # or a WanVAE module
  frames, notes = fit_video(frames, vae.temporal_factor, vae.spatial_factor)
  recon, metrics = reconstruct_video(vae, frames)          # uint8 [T, H, W, 3], {'psnr', 'ssim'}

`experiments/reconstruct.py` is the command line around this.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sora_jax.evaluation.metrics import psnr_per_frame, ssim_per_frame
from sora_jax.io.video import to_float, to_uint8

HELDOUT_SEED = 90_210  # scene stream for held-out VAE evaluation (shapes training uses 2s, 2s+1;
# the world's splits 3s, 3s+1, 3s+2)


def fit_video(
    frames: np.ndarray, temporal_factor: int, spatial_factor: int
) -> tuple[np.ndarray, list[str]]:
    """uint8 [T, H, W, 3] -> ([1 + tf k, H', W', 3], notes): trims trailing frames to the longest
    valid causal length and centre-crops H, W down to multiples of the spatial factor."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f'frames shape {frames.shape} must be [T, H, W, 3].')
    t, h, w, _ = frames.shape
    notes = []
    t2 = 1 + (t - 1) // temporal_factor * temporal_factor
    if t2 != t:
        notes.append(
            f'trimmed {t} -> {t2} frames (the causal VAE codes 1 + {temporal_factor}k frames)'
        )
    h2, w2 = h // spatial_factor * spatial_factor, w // spatial_factor * spatial_factor
    if h2 < spatial_factor or w2 < spatial_factor:
        raise ValueError(
            f'frame size {h}x{w} is smaller than the spatial factor '
            f'{spatial_factor}; resize the video up first.'
        )
    if (h2, w2) != (h, w):
        notes.append(f'centre-cropped {h}x{w} -> {h2}x{w2} (multiples of {spatial_factor})')
    top, left = (h - h2) // 2, (w - w2) // 2
    return frames[:t2, top : top + h2, left : left + w2], notes


def _split(vae) -> tuple[Any, Any, Any]:
    """(graphdef, state, config) of a FrozenVAE or a WanVAE module."""
    if hasattr(vae, 'graphdef') and hasattr(vae, 'state'):
        module = vae.module
        return vae.graphdef, vae.state, module.config
    graphdef, state = nnx.split(vae)
    return graphdef, state, vae.config


def tile_plan(
    config, height: int, width: int, tile: Union[None, bool, int], spatial_factor: int
) -> Optional[tuple[int, int]]:
    """(tile size, stride) in pixels, or None for untiled. tile: None = tile only when the frame
    is larger than `config.tile_sample_min_size`; False = never; True = the config's tile; an int =
    that tile size (stride 3/4 of it, a multiple of the spatial factor)."""
    if tile is False or (tile is None and max(height, width) <= config.tile_sample_min_size):
        return None
    if tile is None or tile is True:
        return config.tile_sample_min_size, config.tile_sample_stride
    size = int(tile)
    if size <= 0 or size % spatial_factor:
        raise ValueError(
            f'tile={tile} must be a positive multiple of the spatial factor {spatial_factor}.'
        )
    stride = max(spatial_factor, size * 3 // 4 // spatial_factor * spatial_factor)
    return size, stride


@functools.partial(jax.jit, static_argnums=(0, 3))
def _round_trip(graphdef, state, video, plan):
    """video [B, T, H, W, 3] in [-1, 1] -> reconstruction (posterior mean, chunked, maybe tiled)."""
    vae = nnx.merge(graphdef, state)
    if plan is None:
        mean, _ = vae.encode_chunked(video)
        return vae.decode_chunked(mean)
    mean, _ = vae.tiled_encode(video, *plan)
    return vae.tiled_decode(mean, *plan)


def reconstruct_video(
    vae, frames_uint8: np.ndarray, tile: Union[None, bool, int] = None, batch_size: int = 8
) -> tuple[np.ndarray, dict]:
    """Round trip of uint8 frames [T, H, W, 3] (or clips [N, T, H, W, 3]) through the VAE.

    The frames must already fit the VAE (`fit_video`); returns (uint8 reconstruction of the same
    shape, metrics) with metrics = {'psnr', 'ssim' (means over all frames of all clips, uint8
    vs uint8), 'psnr_per_clip', 'ssim_per_clip', 'tile'}. Clips go `batch_size` at a time.
    """
    frames = np.asarray(frames_uint8)
    if frames.dtype != np.uint8:
        raise ValueError(f'frames dtype {frames.dtype} must be uint8 (decoded video frames).')
    single = frames.ndim == 4
    clips = frames[None] if single else frames
    if clips.ndim != 5:
        raise ValueError(f'frames shape {frames.shape} must be [T, H, W, 3] or [N, T, H, W, 3].')
    graphdef, state, config = _split(vae)
    module = nnx.merge(graphdef, state)
    module._check_video(clips[:1])  # ValueError with the fix when the size does not fit
    plan = tile_plan(config, clips.shape[2], clips.shape[3], tile, module.spatial_factor)
    recon = []
    for i in range(0, len(clips), batch_size):
        out = _round_trip(graphdef, state, jnp.asarray(to_float(clips[i : i + batch_size])), plan)
        recon.append(to_uint8(jax.device_get(out)))
    recon = np.concatenate(recon)
    p = np.asarray(psnr_per_frame(recon, clips), np.float64)  # [N, T]
    s = np.asarray(ssim_per_frame(recon, clips), np.float64)
    metrics = dict(
        psnr=float(np.mean(p)),
        ssim=float(np.mean(s)),
        psnr_per_clip=p.mean(axis=1).tolist(),
        ssim_per_clip=s.mean(axis=1).tolist(),
        tile=list(plan) if plan else None,
    )
    return (recon[0] if single else recon), metrics


def side_by_side(frames: np.ndarray, recon: np.ndarray, gap: int = 2) -> np.ndarray:
    """[T, H, W, 3] input | reconstruction -> [T, H, 2W + gap, 3] (white gap)."""
    sep = np.full((*frames.shape[:2], gap, 3), 255, np.uint8)
    return np.concatenate([frames, sep, recon], axis=2)


def heldout_shapes(
    num: int,
    num_frames: int = 17,
    height: int = 32,
    width: int = 32,
    max_objects: int = 2,
    seed: int = HELDOUT_SEED,
    backgrounds=None,
    size_scale: float = 1.0,
) -> np.ndarray:
    """uint8 [num, T, H, W, 3] synthetic shapes clips from a scene stream no training split uses
    (`backgrounds`, `size_scale`: as `shapes.generate`; default every kind, 1.0)."""
    from sora_jax.data import shapes

    return np.stack(
        [
            shapes.generate(
                seed,
                i,
                num_frames=num_frames,
                height=height,
                width=width,
                max_objects=max_objects,
                size_scale=size_scale,
                backgrounds=backgrounds or shapes.BACKGROUNDS,
            )['video']
            for i in range(num)
        ]
    )


def heldout_world(
    num: int, num_frames: int = 33, height: int = 64, width: int = 64, seed: int = HELDOUT_SEED
) -> np.ndarray:
    """uint8 [num, T, H, W, 3] physics-world clips (sora_jax/data/world.py) drawn like the
    training split's scenes, from a scene stream no split of the world builder uses; clips
    shorter than a scene (33 frames; single frames for an image VAE) are cut from one at a
    fixed offset per clip, as the builder cuts its short clips."""
    from sora_jax.data import world

    scene_frames = max(num_frames, 33)
    clips = []
    for i in range(num):
        scene = world.sample_scene(seed, i, num_frames=scene_frames, height=height, width=width)
        start = (7 * i) % (scene_frames - num_frames + 1)
        clips.append(world.render(scene)[start : start + num_frames])
    return np.stack(clips)
