"""Windows of a long clip judged one by one: the clip judge (`world_judge.judge_clip`) on frames
[start, start + window), and how far the window drifted from a reference window (the first):
sharpness, the objects' colours, the background. Issue-32-style minute-long evaluations call it
window by window; a bouncing object between two bounces is a diagonal run, so a window with no
bounce still reads `bouncing`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from scipy import ndimage

from sora_jax.evaluation import world_judge


@dataclasses.dataclass(frozen=True)
class WindowStats:
    sharpness: float  # mean |Laplacian| of the frames (0..255 units)
    object_rgb: dict  # colour name -> mean core RGB [3] of its blobs (not merged with another)
    background_rgb: np.ndarray  # [3] mean background colour


@dataclasses.dataclass(frozen=True)
class WindowVerdict:
    start: int
    stop: int
    verdict: world_judge.ClipVerdict
    stats: WindowStats
    sharpness_ratio: float  # this window's sharpness / the reference's
    color_drift: float  # mean |object colour - reference| over colours both hold (0..255)
    background_drift: float  # |background colour - reference| (0..255)

    @property
    def ok(self) -> bool:
        """Colour, shape and motion as prompted, nothing vanishing or duplicated."""
        v = self.verdict
        return v.binding and v.stability and v.permanence is not False


def window_stats(frames) -> WindowStats:
    f = world_judge.check_frames(frames)
    bg = world_judge.estimate_background(f)
    lap = np.abs(ndimage.laplace(f.mean(-1), mode='nearest')[:, 1:-1, 1:-1]).mean()
    rgbs: dict[str, list] = {}
    for blobs in world_judge.find_blobs(f, bg, world_judge.occluder_mask(bg)):
        for b in blobs:
            if not b.touch:  # a part of two objects' merged blob: its core mixes their colours
                rgbs.setdefault(b.color, []).append(b.rgb)
    return WindowStats(
        float(lap), {k: np.mean(v, 0) for k, v in rgbs.items()}, bg.reshape(-1, 3).mean(0)
    )


def judge_window(
    frames, prompt: Any, start: int, window: int, reference: WindowStats | None = None
) -> WindowVerdict:
    """Judges frames [start, start + window) of a long clip uint8 [T, H, W, 3] against the
    prompt: colour and shape kept, motion as prompted, no vanishing or duplication (the clip
    judge on the window), and drift against `reference` (`window_stats` of the first window;
    None: this window is the reference)."""
    frames = np.asarray(frames)
    if not 0 <= start or start + window > len(frames):
        raise ValueError(
            f'window [{start}, {start + window}) is outside the {len(frames)} frames; '
            'pick start and window inside the clip.'
        )
    clip = frames[start : start + window]
    stats = window_stats(clip)
    ref = reference or stats
    common = [c for c in stats.object_rgb if c in ref.object_rgb]
    drift = (
        float(np.mean([np.abs(stats.object_rgb[c] - ref.object_rgb[c]).mean() for c in common]))
        if common
        else float('nan')
    )
    return WindowVerdict(
        start,
        start + window,
        world_judge.judge_clip(clip, prompt),
        stats,
        stats.sharpness / max(ref.sharpness, 1e-6),
        drift,
        float(np.abs(stats.background_rgb - ref.background_rgb).mean()),
    )
