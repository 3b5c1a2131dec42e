"""Embedding the watermark: every frame carries the same 54 channel bits (`watermark_layout`).

The change is a luma change made along (R, G, B) ~ (0.299, 0.587, 0.114), the luma weights: per
unit of RGB squared error that moves the luma further than an equal change to R, G and B, so more
of the PSNR budget reaches the channel. Each frame is re-measured PASSES times: its projections
are read from the uint8 result (after rounding, clipping and the box resize back to the frame
size) and moved the rest of the way to their lattice points.

The budget is an RMS change of MAX_RMS = 2.5 per pixel and channel over the video, so PSNR >=
40.16 dB against the unmarked video. It is counted on the frames as written (rounded, clipped to
[0, 255]): a darkening of black pixels that clipping cancels costs nothing, so dark clips spend
their budget where it shows in the luma. It is a budget per video, not per frame: frames whose
projections already sit near their lattice need less, and what they leave goes to the frames
that need more, under one common per-frame cap of at most FRAME_OVER x MAX_RMS (no frame below
38.2 dB; `frame_cap`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from sora_jax.safety import watermark_layout as lay
from sora_jax.safety.watermark_code import codeword

MAX_RMS = 2.5  # budget: RMS change per pixel and channel over a video, as written
FRAME_OVER = 1.25  # a frame may take up to this x MAX_RMS (>= 38.2 dB)
_FRAME_TOP = MAX_RMS * FRAME_OVER  # ... that is, this RMS
# The change's direction in (R, G, B) per unit of luma: along the luma weights, the most luma per
# unit of RGB squared error.
_COLOR = np.array([0.299, 0.587, 0.114]) / (0.299**2 + 0.587**2 + 0.114**2)
PASSES = 3  # re-measurements of each frame as written


def quantize(p: np.ndarray, bits01: np.ndarray) -> np.ndarray:
    """Nearest point of bit b's lattice STEP * Z + dither + b * STEP / 2 (dither modulation)."""
    off = lay.dither() + bits01 * lay.STEP / 2
    return np.round((p - off) / lay.STEP) * lay.STEP + off


def embed(frames, model_id: int, user_key: int = 0) -> np.ndarray:
    """uint8 [T, H, W, 3] (or [B, T, H, W, 3]) -> the same frames carrying the mark."""
    frames = np.asarray(frames)
    if frames.ndim == 5:
        return np.stack([embed(v, model_id, user_key) for v in frames])
    frames = lay.check_video(frames)
    bits01 = (codeword(model_id, user_key) > 0).astype(np.float64)
    first = [_embed_frame(f, bits01, _FRAME_TOP) for f in frames]
    cap = frame_cap(np.array([m.rms for m in first]))
    out = np.empty_like(frames)
    for i, m in enumerate(first):
        # A frame whose change never passed the cap is what embedding under the cap gives.
        out[i] = (
            m.frame
            if m.peak <= cap or cap >= _FRAME_TOP
            else _embed_frame(frames[i], bits01, cap).frame
        )
    return out


def frame_cap(need: np.ndarray) -> float:
    """The common cap c on each frame's RMS change (RGB, as written) such that the video's mean
    square change, mean(min(need, c)^2), is the budget MAX_RMS^2 (c at most FRAME_OVER x
    MAX_RMS), where need [T] is the RMS each frame's change took under that ceiling."""
    if np.mean(need**2) <= MAX_RMS**2:
        return _FRAME_TOP
    n = np.sort(need)
    total = len(n) * MAX_RMS**2
    below = 0.0  # sum of squares of the frames kept under c
    for k in range(len(n)):
        c = np.sqrt((total - below) / (len(n) - k))
        if c <= n[k]:
            return float(min(c, _FRAME_TOP))
        below += n[k] ** 2
    return _FRAME_TOP


class _Marked(NamedTuple):
    frame: np.ndarray  # uint8 [H, W, 3], as written
    rms: float  # RMS of its change over pixels and channels
    peak: float  # the largest RMS any pass reached before capping


def _embed_frame(frame: np.ndarray, bits01: np.ndarray, cap: float) -> _Marked:
    """One frame, marked with its change's RMS at most `cap` (as written: after rounding and
    clipping to [0, 255]). PASSES passes re-measure the result and move the projections the rest
    of the way; the change is scaled back until it is under the cap."""
    _, owner, signs = lay.layout()
    h, w, _ = frame.shape
    base = frame.astype(np.float64)

    def written(res):
        """The frame as written with the luma change res, and the RMS of its change."""
        cur = np.clip(np.round(base + res[..., None] * _COLOR), 0, 255)
        return cur, float(np.sqrt(np.mean((cur - base) ** 2)))

    res = np.zeros((h, w))
    cur, rms, peak = base, 0.0, 0.0  # (no change: the frame itself)
    for _ in range(PASSES):
        proj = lay.projections(lay.analysis(lay.canon(lay.luma(cur))))
        move = quantize(proj, bits01) - proj  # [N_BITS], |move| <= STEP / 2
        if np.abs(move).max() < 0.05 * lay.STEP:
            break
        res += lay.uncanon(lay.synthesis(signs * move[owner]), h, w)
        cur, rms = written(res)
        peak = max(peak, rms)
        for _ in range(8):  # clipped pixels do not shrink with res: scale until under
            if rms <= cap * 1.001:
                break
            res *= cap / rms
            cur, rms = written(res)
    return _Marked(cur.astype(np.uint8), rms, peak)
