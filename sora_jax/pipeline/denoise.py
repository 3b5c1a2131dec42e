"""The jitted denoising loop: classifier-free (and skip-layer) guidance over one or two DiT
experts, known frames re-imposed or pasted, any sampler of `diffusion/samplers.py`."""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sora_jax.diffusion import conditioning as cond_lib
from sora_jax.diffusion import flow, samplers
from sora_jax.pipeline.options import DenoisePlan


class DiTInputs(NamedTuple):
    """What the DiT sees besides (x_t, t), row for row (a pytree the jitted sampler takes)."""

    mask: jax.Array  # [B, T'] frame mask, 1 = known latent frame
    known: jax.Array  # [B, T', h, w, C] clean latents of the known frames
    context: jax.Array  # [R, L, D] text: B conditional rows, then B unconditional (, more)
    context_mask: jax.Array | None  # [R, L] (None: every position attends)
    image_latents: jax.Array | None = None  # Wan I2V [B, T', h, w, tf + C] (image_condition.py)
    image_tokens: jax.Array | None = None  # Wan I2V CLIP [B, S, D]
    skip: jax.Array | None = None  # [R, depth] bool: blocks turned into the identity per row

    def conditional(self, b: int) -> 'DiTInputs':
        """The B conditional rows alone (outside the guidance interval)."""
        return self._replace(
            context=self.context[:b],
            context_mask=None if self.context_mask is None else self.context_mask[:b],
            skip=None,
        )

    def guided(self, b: int, skip_layers: tuple[int, ...], depth: int) -> 'DiTInputs':
        """The rows of one guided step: conditional, unconditional, and with skip-layer guidance
        the conditional rows again through the weakened model (`skip_layers` off)."""
        rows = 3 if skip_layers else 2
        tile = lambda a: None if a is None else jnp.concatenate([a] * rows, 0)
        context, context_mask, skip = self.context, self.context_mask, None
        if rows == 3:
            context = jnp.concatenate([context, context[:b]], 0)
            context_mask = (
                None
                if context_mask is None
                else jnp.concatenate([context_mask, context_mask[:b]], 0)
            )
            weak = np.zeros((3 * b, depth), bool)
            weak[2 * b :, list(skip_layers)] = True
            skip = jnp.asarray(weak)
        return DiTInputs(
            tile(self.mask),
            tile(self.known),
            context,
            context_mask,
            tile(self.image_latents),
            tile(self.image_tokens),
            skip,
        )


def denoise(
    params,
    params_2,
    noise: jax.Array,
    inputs: DiTInputs,
    *,
    graphdef,
    plan: DenoisePlan,
    tick: Callable | None = None,
) -> jax.Array:
    """noise [B, T', h, w, C] (v2v: the noised input at plan.t_start) -> latents, same shape.
    `params_2`: the second expert's (None with one). Jit it with `graphdef` and `plan` static;
    `tick(t)` (a host callback) runs once per step when plan.progress."""
    family = plan.family
    b = noise.shape[0]
    rows = inputs.guided(b, plan.skip_layers if plan.skip_guidance_scale > 0 else (), family.depth)
    cond_rows = inputs.conditional(b)

    def guided_by(dit, scale):  # the CFG (+ skip-layer) velocity of one DiT
        def velocity(x, t, inp: DiTInputs):
            x_in, t_in = family.dit_input(x, t, inp, plan.expand_timesteps)
            kw = {} if inp.image_tokens is None else {'image': inp.image_tokens}
            out = dit(x_in, t_in, inp.context, inp.context_mask, skip=inp.skip, **kw)
            return flow.to_velocity(out, x, t, family.prediction)

        def model_fn(x, t):  # x: [2B or 3B, ...] cond rows, uncond rows (, weakened cond rows)
            if plan.progress and tick is not None:
                jax.debug.callback(tick, t[0])
            return velocity(x, t, rows)

        return samplers.cfg_velocity(
            model_fn,
            scale,
            plan.guidance_interval,
            cond_fn=lambda x, t: velocity(x, t, cond_rows),
            skip_scale=plan.skip_guidance_scale,
            skip_interval=plan.skip_guidance_interval,
        )

    guided = guided_by(nnx.merge(graphdef, params), plan.guidance_scale)
    if params_2 is not None:
        low = guided_by(nnx.merge(graphdef, params_2), plan.guidance_scale_2)
        guided = samplers.two_experts(
            guided, low, family.boundary_ratio, plan.timestep_quantization
        )
    # Known latents (if any) are re-imposed along their noising path after every step.
    callback = None
    if plan.replace_known:
        callback = cond_lib.replace_callback(inputs.mask, inputs.known, noise)
    lat = samplers.sample(
        guided,
        noise,
        method=plan.sampler,
        num_steps=plan.num_steps,
        shift=plan.shift,
        t_start=plan.t_start,
        step_callback=callback,
        timestep_quantization=plan.timestep_quantization,
    )
    if plan.expand_timesteps:  # TI2V: the known frames pasted into the result
        lat = cond_lib.apply_known(lat, inputs.mask, inputs.known)
    return lat
