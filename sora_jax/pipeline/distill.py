"""Few-step sampling schedules of step-distilled Wan LoRAs (`TextToVideo(..., distill_preset=)`,
`experiments/sample.py --distill_preset=NAME`).

A step-distilled model (LightX2V's `Wan2.1-T2V-14B-StepDistill-CfgDistill-Lightx2v`, its
`Wan2.1-Distill-Loras`) was trained to denoise at a few fixed timesteps, with classifier-free
guidance distilled in: it is sampled at exactly those times, guidance 1 (one DiT pass per step,
no unconditional one), with Euler steps. LightX2V's `WanStepDistillScheduler` (its
`configs/distill/wan21/wan_t2v_distill_lora_4step_cfg.json`: `denoising_step_list` [1000, 750,
500, 250], `sample_shift` 5, `enable_cfg` false) takes the listed timesteps k of a 1000-step grid
as sigma = k / 1000, shifts them (`shift_time`: s sigma / (1 + (s - 1) sigma)) and hands the DiT
the float timestep 1000 sigma; each step is x <- x + (sigma_next - sigma) v, the last to 0.
That is diffusers' `FlowMatchEulerDiscreteScheduler(shift=5).set_timesteps(sigmas=[1, .75,
.5, .25])`, the parity reference (tests/parity/test_distill_lora_parity.py).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sora_jax.diffusion.flow import shift_time


@dataclasses.dataclass(frozen=True)
class DistillPreset:
    """The sampling settings a distilled LoRA was trained for."""

    name: str
    denoising_step_list: tuple[int, ...]  # timesteps of a num_train_timesteps grid, descending
    shift: float
    guidance_scale: float = 1.0  # guidance distilled in: the conditional pass alone
    sampler: str = 'euler'
    num_train_timesteps: int = 1000

    @property
    def num_steps(self) -> int:
        return len(self.denoising_step_list)

    def sigmas(self) -> tuple[float, ...]:
        """t_0 > ... > t_{N-1} > t_N = 0: the listed timesteps over num_train_timesteps,
        shifted."""
        k = np.asarray(self.denoising_step_list, np.float64) / self.num_train_timesteps
        return tuple(float(t) for t in shift_time(k, self.shift)) + (0.0,)


PRESETS = {
    'lightx2v_4step': DistillPreset('lightx2v_4step', (1000, 750, 500, 250), shift=5.0),
}


def get(name: str) -> DistillPreset:
    if name not in PRESETS:
        raise ValueError(f'distill_preset={name!r} is not one of {sorted(PRESETS)}.')
    return PRESETS[name]


def check_sigmas(sigmas) -> tuple[float, ...]:
    """A sampling schedule given by a call: floats t_0 ... t_N descending strictly from <= 1 to
    exactly 0 (N >= 1 steps); anything else is a ValueError naming it."""
    s = np.asarray(sigmas, np.float64)
    ok = s.ndim == 1 and s.shape[0] >= 2 and np.all(np.isfinite(s))
    if not ok or np.any(np.diff(s) >= 0) or s[0] > 1.0 or s[-1] != 0.0:
        raise ValueError(
            f'sigmas={list(np.ravel(s))} must descend strictly from <= 1 to 0 (t_0 ... t_N, N '
            '>= 1 steps), e.g. (1.0, 0.9375, 0.8333, 0.625, 0.0).'
        )
    return tuple(float(x) for x in s)
