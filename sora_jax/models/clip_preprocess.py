"""CLIP image preprocessing (transformers `CLIPImageProcessor`, PIL path) in numpy.

What Wan's `image_processor/preprocessor_config.json` asks for, in this order: resize so the
short side is `shortest_edge` (bicubic, the long side `int(short * long / short_in)`), center
crop to `crop_size` (top/left = (in - crop) // 2), rescale by 1/255, normalise by the OpenAI
CLIP mean / std. The resize is Pillow's `Image.resize(..., BICUBIC)` on the 8-bit image, as
in transformers (Pillow is a core dependency), so the pixels equal CLIPImageProcessor's bit for
bit; crop, rescale and normalisation are numpy in transformers' dtypes (float64 rescale, then
float32).
Images are channels-last uint8 [B, H, W, 3] in, float32 [B, crop_h, crop_w, 3] out.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_BICUBIC = 3  # PIL.Image.Resampling.BICUBIC


@dataclasses.dataclass(frozen=True)
class CLIPImageConfig:
    """The fields of a `preprocessor_config.json` this port implements; defaults: Wan's."""

    shortest_edge: int = 224
    crop_height: int = 224
    crop_width: int = 224
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD

    @classmethod
    def from_hf(cls, hf: dict[str, Any] | str) -> 'CLIPImageConfig':
        """From `preprocessor_config.json` (dict, file or the `image_processor/` folder)."""
        if isinstance(hf, (str, os.PathLike)):
            path = os.path.join(hf, 'preprocessor_config.json') if os.path.isdir(hf) else hf
            with open(path) as f:
                hf = json.load(f)
        size, crop = hf.get('size', {'shortest_edge': 224}), hf.get('crop_size', 224)
        if isinstance(crop, int):
            crop = {'height': crop, 'width': crop}
        if isinstance(size, int):
            size = {'shortest_edge': size}
        if hf.get('do_resize', True) and set(size) != {'shortest_edge'}:
            raise ValueError(
                f'image processor size={size}: only {{"shortest_edge": N}} (CLIP, '
                'Wan) is supported.'
            )
        if hf.get('do_resize', True) and hf.get('resample', _BICUBIC) != _BICUBIC:
            raise ValueError(
                f'image processor resample={hf["resample"]}: only bicubic (3) is supported.'
            )
        if hf.get('do_pad'):
            raise ValueError('image processor do_pad=True is not supported (CLIP does not pad).')
        return cls(
            shortest_edge=int(size.get('shortest_edge', 224)),
            crop_height=int(crop['height']),
            crop_width=int(crop['width']),
            do_resize=bool(hf.get('do_resize', True)),
            do_center_crop=bool(hf.get('do_center_crop', True)),
            do_rescale=bool(hf.get('do_rescale', True)),
            rescale_factor=float(hf.get('rescale_factor', 1 / 255)),
            do_normalize=bool(hf.get('do_normalize', True)),
            image_mean=tuple(hf.get('image_mean', OPENAI_CLIP_MEAN)),
            image_std=tuple(hf.get('image_std', OPENAI_CLIP_STD)),
        )


def resize_bicubic(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [B, H, W, C] -> uint8 [B, height, width, C] with Pillow's bicubic resize, the one
    CLIPImageProcessor calls (its fixed-point arithmetic and, since Pillow 13, its choice of
    which pass runs first decide single levels; only Pillow itself matches every version)."""
    from PIL import Image

    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f'images must be uint8 [B, H, W, C], got {images.dtype} {images.shape}.')
    return np.stack(
        [np.asarray(Image.fromarray(im).resize((width, height), Image.BICUBIC)) for im in images]
    )


def resize_shape(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """(H, W) with the short side at `shortest_edge` (transformers' rule, long side truncated)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shortest_edge * long / short)
    return (new_long, shortest_edge) if width <= height else (shortest_edge, new_long)


def preprocess(images: np.ndarray, cfg: CLIPImageConfig = CLIPImageConfig()) -> np.ndarray:
    """uint8 [B, H, W, 3] (or [H, W, 3]) -> CLIP pixels float32 [B, crop_h, crop_w, 3]."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f'images must be uint8 [B, H, W, 3] (RGB), got {images.dtype} {images.shape}.'
        )
    x = images
    if cfg.do_resize:
        x = resize_bicubic(x, *resize_shape(x.shape[1], x.shape[2], cfg.shortest_edge))
    if cfg.do_center_crop:
        h, w = x.shape[1:3]
        if h < cfg.crop_height or w < cfg.crop_width:
            raise ValueError(
                f'image of {h}x{w} is smaller than the crop {cfg.crop_height}x'
                f'{cfg.crop_width}; resize it up first.'
            )
        top, left = (h - cfg.crop_height) // 2, (w - cfg.crop_width) // 2
        x = x[:, top : top + cfg.crop_height, left : left + cfg.crop_width]
    x = (x.astype(np.float64) * cfg.rescale_factor if cfg.do_rescale else x).astype(np.float32)
    if cfg.do_normalize:
        x = (x - np.asarray(cfg.image_mean, np.float32)) / np.asarray(cfg.image_std, np.float32)
    return x.astype(np.float32)
