"""One sampling call's options, resolved and checked (`TextToVideo.check_inputs`), and the
static part of its denoising run (`DenoisePlan`, the jitted sampler's cache key)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from sora_jax.pipeline.family import ModelFamily
from sora_jax.pipeline.step_cache import StepCache


@dataclasses.dataclass(frozen=True)
class SampleOptions:
    """Every option of one call, defaults from config.sample filled in."""

    prompts: tuple[str, ...]
    negative_prompts: tuple[str, ...]  # one per prompt
    mode: str  # conditioning.MODES
    num_frames: int  # pixel frames sampled (mode='t2i': `TextToVideo.image_frames`)
    height: int
    width: int
    latent_size: tuple[int, int, int]  # (T', h, w) of the latents
    num_inference_steps: int
    guidance_scale: float
    guidance_scale_2: float  # the second expert's (== guidance_scale with one expert)
    sampler: str  # samplers.METHODS
    shift: float
    seed: int
    strength: float  # v2v: the noise level sampling starts from
    guidance_interval: tuple[float, float]
    skip_guidance_scale: float  # 0: off
    skip_layers: tuple[int, ...]  # () when off
    skip_guidance_interval: tuple[float, float]
    timestep_quantization: int | None  # config.sample.timestep_quantization (Wan: 1000)
    output_type: str  # 'np' | 'latent'
    progress: bool
    moderation: bool
    watermark: bool
    cache: StepCache = StepCache()  # step cache (pipeline/step_cache.py); kind 'none': off
    # the sampling times t_0 = 1 > ... > t_N = 0 when not the sampler's own schedule of
    # (num_inference_steps, shift): a distilled LoRA's (`pipeline/distill.py`) or the call's
    sigmas: tuple[float, ...] | None = None
    # every block's cross-attention keys/values of the text (and I2V image tokens) computed once
    # per call and reused at every step (config.sample.text_kv_cache); False recomputes them
    text_kv_cache: bool = True

    @property
    def batch(self) -> int:
        return len(self.prompts)


@dataclasses.dataclass(frozen=True)
class DenoisePlan:
    """What the traced denoising loop depends on besides its arrays: a static, hashable argument
    of the jitted sampler (a new value compiles a new program)."""

    family: ModelFamily
    sampler: str
    num_steps: int
    shift: float
    guidance_scale: float
    guidance_scale_2: float
    guidance_interval: tuple[float, float]
    t_start: float  # 1: from pure noise; v2v: strength
    timestep_quantization: int | None
    replace_known: bool  # re-impose known latents along their noising path after every step
    expand_timesteps: bool  # TI2V with known frames: per-token timesteps, known frames pasted
    skip_guidance_scale: float
    skip_layers: tuple[int, ...]
    skip_guidance_interval: tuple[float, float]
    # progress: a host callback ticks the bar each step; JAX never writes a program with host
    # callbacks to the persistent compilation cache, so progress=False compiles a cacheable one.
    progress: bool
    cache: StepCache = StepCache()  # step cache (pipeline/step_cache.py); kind 'none': off
    sigmas: tuple[float, ...] | None = None  # the schedule, t_0 ... t_N = 0 (None: make_sigmas)
    text_kv_cache: bool = True  # cross-attention K/V once per call (`DiT.text_kv`), not per step


def skip_guidance(s, depth: int, scale, layers, interval):
    """(scale, layer indices, interval) of skip-layer guidance, checked, defaults from
    config.sample `s`; scale 0 is off (no layers). `depth`: the DiT's blocks."""
    scale = float(s.get('skip_guidance_scale', 0.0) if scale is None else scale)
    layers = tuple(s.get('skip_layers', ()) if layers is None else layers)
    interval = s.get('skip_guidance_interval', (0.0, 1.0)) if interval is None else interval
    interval = tuple(map(float, interval))
    if scale < 0 or not math.isfinite(scale):
        raise ValueError(f'skip_guidance_scale={scale} must be >= 0 and finite (0: off).')
    if len(interval) != 2 or not 0.0 <= interval[0] <= interval[1] <= 1.0:
        raise ValueError(
            f'skip_guidance_interval={interval} must be (t_lo, t_hi) with 0 <= t_lo <= t_hi <= 1.'
        )
    if scale > 0:
        if not layers:
            raise ValueError(
                'skip_guidance_scale > 0 needs skip_layers (DiT block indices, '
                f'0..{depth - 1}), e.g. (2,).'
            )
        bad = [i for i in layers if not isinstance(i, (int, np.integer)) or not 0 <= i < depth]
        if bad:
            raise ValueError(f'skip_layers={layers}: {bad} are not block indices 0..{depth - 1}.')
    return scale, tuple(int(i) for i in layers) if scale > 0 else (), interval
