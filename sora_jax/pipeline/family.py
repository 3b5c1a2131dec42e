"""What differs between model families, fixed once when the weights load.

A `ModelFamily` says how the DiT takes its inputs and how many experts it has:

  shapes (from_checkpoint)        known frames as extra DiT input channels when the model was
                                  trained with `conditioning.enabled` (`frame_masks`), and
                                  re-imposed along the noising path after every step
  Wan 2.1 T2V (from_wan)          the DiT takes x_t alone
  Wan 2.1 I2V (`image_channels`)  [x_t, tf mask channels, image latents] at every step
                                  (`diffusion/image_condition.py`), CLIP image tokens when the
                                  DiT has them; mode='i2v' only, nothing re-imposed
  Wan 2.2 A14B (`boundary_ratio`) two experts: the first while t >= boundary_ratio, the second
                                  (with guidance_scale_2) after
  Wan 2.2 TI2V (`expand_timesteps`) known frames enter the DiT clean, their tokens at t = 0

The family is a frozen, hashable dataclass: it rides in the jitted sampler's static
`DenoisePlan`. A new family (or a sampling feature such as a step cache or a chunked rollout) is a
new field here and a branch in the stage that needs it, not a keyword threaded through the call.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp

from sora_jax.diffusion import conditioning as cond_lib


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    patch: tuple[int, int, int]  # the DiT's (t, h, w) patch
    latent_channels: int  # C of the latents the DiT denoises
    depth: int  # DiT blocks (skip-layer guidance indexes them)
    prediction: str = 'velocity'  # what the DiT outputs (flow.to_velocity)
    frame_masks: bool = False  # DiT input [x_t, known * mask, mask] (config.conditioning.enabled)
    image_channels: bool = False  # Wan 2.1 I2V: input [x_t, tf mask channels, image latents]
    expand_timesteps: bool = False  # Wan 2.2 TI2V: per-token timesteps, known frames clean
    boundary_ratio: float | None = None  # Wan 2.2 A14B: expert switch at t = boundary_ratio
    image_pos_len: int = 0  # Wan 2.1 FLF2V: image tokens of [first, last] (0: one image)

    @property
    def two_experts(self) -> bool:
        return self.boundary_ratio is not None

    @classmethod
    def of_config(cls, config, **kw) -> 'ModelFamily':
        """The family a config describes (the shapes family unless `kw` says more)."""
        return cls(
            patch=tuple(int(p) for p in config.model.patch_size),
            latent_channels=int(config.get('latent_channels', config.model.get('out_channels', 3))),
            depth=int(config.model.depth),
            prediction=str(config.get('flow', {}).get('prediction', 'velocity')),
            frame_masks=bool(config.get('conditioning', {}).get('enabled', False)),
            **kw,
        )

    @classmethod
    def of_wan(cls, config, dit_cfg, settings: dict, two_experts: bool, path) -> 'ModelFamily':
        """A converted Wan folder's family: I2V when its DiT input is wider than its output;
        `expand_timesteps` and `boundary_ratio` from config.sample (if set) or the folder's
        model_index.json `settings`."""
        expand = config.sample.get('expand_timesteps', None)
        expand = bool(settings.get('expand_timesteps', False) if expand is None else expand)
        boundary = None
        if two_experts:
            boundary = config.sample.get('boundary_ratio', None)
            boundary = settings.get('boundary_ratio') if boundary is None else boundary
            if boundary is None or not 0.0 < float(boundary) < 1.0:
                raise ValueError(
                    f'{os.fspath(path)!r} has transformer_2/ but boundary_ratio={boundary!r}; '
                    'set sample.boundary_ratio in (0, 1) (0.875 for Wan 2.2 T2V-A14B, 0.9 for '
                    'I2V-A14B).'
                )
            boundary = float(boundary)
        return cls.of_config(
            config,
            image_channels=dit_cfg.in_channels != dit_cfg.out_channels,
            image_pos_len=int(getattr(dit_cfg, 'image_pos_len', 0) or 0),
            expand_timesteps=expand,
            boundary_ratio=boundary,
        )

    def dit_input(self, x: jax.Array, t: jax.Array, inputs, expand: bool):
        """(DiT input [B, T, h, w, C_in], timesteps [B] or per token [B, N]) for x_t [B, T, h,
        w, C] at t [B]; `inputs` a `denoise.DiTInputs`, `expand` this run's per-token
        timesteps (TI2V with known frames)."""
        x_in, t_in = x, t
        if expand:
            x_in = cond_lib.apply_known(x, inputs.mask, inputs.known)
            t_in = cond_lib.token_timesteps(t, inputs.mask, x.shape, self.patch)
        elif self.frame_masks:
            x_in = cond_lib.model_input(x, inputs.mask, inputs.known)
        if inputs.image_latents is not None:  # [x_t, mask channels, image latents]
            x_in = jnp.concatenate([x, inputs.image_latents.astype(x.dtype)], axis=-1)
        return x_in, t_in
