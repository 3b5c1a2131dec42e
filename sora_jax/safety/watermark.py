"""Invisible video watermark: 32 payload bits (16-bit model id, 16-bit user key) in every frame.

    marked = embed(frames, model_id=0x1234, user_key=7)    # uint8 [T, H, W, 3] -> same
    det = detect(read_video('out.mp4'))                     # Detection(found, model_id, ...)

The mark lives in the low frequencies of each frame's luma, where resizing and compression keep
it, survives crops of up to 12.5% a side, re-encodes and cut-out clips, and costs at most an RMS
change of 2.5 grey levels per pixel and channel over the video (PSNR >= 40.16 dB). One idea per
file:

  watermark_code.py     the payload, the key's affine code (22 check bits) and its list decoder
  watermark_layout.py   where the bits live: canonical 64x64 luma grid, Haar LL, DCT band, lattice
  watermark_embed.py    the change along the luma weights, under an RMS budget per video
  watermark_detect.py   the crop search and the list decoder over its best hypotheses

This module is the public interface. Robustness, false-positive rate and timings, with the
commands that measure them (experiments/watermark_eval.py), are on docs/safety.md.
"""

from __future__ import annotations

import numpy as np

from sora_jax.safety.watermark_code import (
    LIST,
    LIST_FLIPS,
    N_BITS,
    N_CHECK,
    N_PAYLOAD,
    model_id_from,
    payload_bits,
)
from sora_jax.safety.watermark_detect import Detection, detect, detect_file
from sora_jax.safety.watermark_embed import FRAME_OVER, MAX_RMS, embed
from sora_jax.safety.watermark_layout import STEP

__all__ = [
    'FRAME_OVER',
    'LIST',
    'LIST_FLIPS',
    'MAX_RMS',
    'N_BITS',
    'N_CHECK',
    'N_PAYLOAD',
    'STEP',
    'Detection',
    'detect',
    'detect_file',
    'embed',
    'model_id_from',
    'payload_bits',
    'psnr',
]


def psnr(a, b) -> float:
    """PSNR (dB) between two uint8 videos."""
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float('inf') if mse == 0 else float(10 * np.log10(255.0**2 / mse))
