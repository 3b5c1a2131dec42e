"""What a watermark has to survive: the transforms experiments/watermark_eval.py and the tests
apply to marked videos, and natural-looking test clips (pans and zooms over an image PyWavelets
ships), so no downloaded data is needed.

Every transform maps uint8 [T, H, W, 3] -> uint8 [T', H', W', 3]; re-encodes go through the
same ffmpeg (imageio-ffmpeg's H.264, yuv420p) that io/video.py writes with.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
from PIL import Image


def reencode(frames: np.ndarray, crf: int, fps: float = 8.0) -> np.ndarray:
    """H.264 round trip at `crf` (23: ffmpeg's default; 28: a typical re-upload)."""
    import mediapy

    from sora_jax.io import video as video_io

    video_io._configure_ffmpeg()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, 'clip.mp4')
        mediapy.write_video(path, _even(frames), fps=fps, crf=crf)
        return video_io.read_video(path)


def _even(frames: np.ndarray) -> np.ndarray:
    """H.264 (yuv420p) needs even sizes: drop a last odd row / column."""
    t, h, w, _ = frames.shape
    return frames[:, : h - h % 2, : w - w % 2]


def resize(frames: np.ndarray, factor: float) -> np.ndarray:
    """Bicubic resize of every frame by `factor` (0.5: half, 2: double)."""
    t, h, w, _ = frames.shape
    size = (max(2, int(round(w * factor))), max(2, int(round(h * factor))))
    return np.stack([np.asarray(Image.fromarray(f).resize(size, Image.BICUBIC)) for f in frames])


def crop(frames: np.ndarray, fraction: float = 0.1, where: str = 'center') -> np.ndarray:
    """Cuts `fraction` of the height and of the width away: 'center' (half on each side) or
    'corner' (all from the bottom and the right)."""
    t, h, w, _ = frames.shape
    ch, cw = int(round(h * fraction)), int(round(w * fraction))
    if where == 'center':
        return frames[:, ch // 2 : h - (ch - ch // 2), cw // 2 : w - (cw - cw // 2)]
    if where == 'corner':
        return frames[:, : h - ch, : w - cw]
    raise ValueError(f"where={where!r} must be 'center' or 'corner'.")


def middle_half(frames: np.ndarray) -> np.ndarray:
    """The middle half of the frames (a clip cut out of a longer video)."""
    t = frames.shape[0]
    a = t // 4
    return frames[a : a + max(1, t // 2)]


def combination(frames: np.ndarray) -> np.ndarray:
    """Crop 10% (centre), resize to half, keep the middle half of the frames, H.264 at CRF 28."""
    return reencode(middle_half(resize(crop(frames, 0.1), 0.5)), crf=28)


TRANSFORMS = {
    'none': lambda v: v,
    'h264_crf23': lambda v: reencode(v, 23),
    'h264_crf28': lambda v: reencode(v, 28),
    'resize_half': lambda v: resize(v, 0.5),
    'resize_double': lambda v: resize(v, 2.0),
    'crop_10pct_center': lambda v: crop(v, 0.1, 'center'),
    'crop_10pct_corner': lambda v: crop(v, 0.1, 'corner'),
    'middle_half_frames': middle_half,
    'combination': combination,
}


def natural_image() -> np.ndarray:
    """A 512x512 colour photograph built from PyWavelets' bundled test images (the 'ascent',
    'camera' and 'aero' greyscale photos as R, G and B): natural textures, edges and flat areas."""
    import pywt.data

    chans = [pywt.data.ascent(), pywt.data.camera(), pywt.data.aero()]
    chans = [
        np.asarray(Image.fromarray(np.asarray(c, np.float32)).resize((512, 512), Image.BILINEAR))
        for c in chans
    ]
    img = np.stack(chans, -1)
    img = (img - img.min()) / (img.max() - img.min()) * 255
    return img.astype(np.uint8)


def natural_clip(index: int, num_frames: int = 16, size: int = 128) -> np.ndarray:
    """A camera move over `natural_image()`: a pan (random direction and speed) or a zoom, at a
    random place; uint8 [num_frames, size, size, 3]. `index` seeds the move."""
    rng = np.random.default_rng(index)
    img = Image.fromarray(natural_image())
    W = img.size[0]
    win0 = rng.uniform(160, 320)  # window side in source pixels
    cx, cy = rng.uniform(win0 / 2 + 40, W - win0 / 2 - 40, 2)
    zoom = index % 3 == 2
    vx, vy = rng.uniform(-3, 3, 2) * (0 if zoom else 1)
    rate = rng.uniform(-0.02, 0.02) if zoom else 0.0
    frames = []
    for t in range(num_frames):
        win = min(win0 * (1 + rate) ** t, W - 1.0)
        x0 = float(np.clip(cx + vx * t - win / 2, 0, W - win))
        y0 = float(np.clip(cy + vy * t - win / 2, 0, W - win))
        box = (x0, y0, x0 + win, y0 + win)
        frames.append(np.asarray(img.resize((size, size), Image.BILINEAR, box=box)))
    return np.stack(frames)
