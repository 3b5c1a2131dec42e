"""The jitted denoising loop: classifier-free (and skip-layer) guidance over one or two DiT
experts, known frames re-imposed or pasted, any sampler of `diffusion/samplers.py`, and an
optional step cache (`step_cache.py`) whose state rides through the sampler's scan."""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sora_jax.diffusion import conditioning as cond_lib
from sora_jax.diffusion import flow, samplers
from sora_jax.pipeline import step_cache
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
) -> tuple[jax.Array, dict | None]:
    """noise [B, T', h, w, C] (v2v: the noised input at plan.t_start) -> (latents, same shape;
    the step cache's final carry, None without one: `step_cache.stats` reads it).
    `params_2`: the second expert's (None with one). Jit it with `graphdef` and `plan` static;
    `tick(t)` (a host callback) runs once per model evaluation when plan.progress."""
    family = plan.family
    b = noise.shape[0]
    rows = inputs.guided(b, plan.skip_layers if plan.skip_guidance_scale > 0 else (), family.depth)
    cond_rows = inputs.conditional(b)

    def guided_by(dit, scale):  # the CFG (+ skip-layer) velocity of one DiT
        # plan.text_kv_cache: this DiT's cross-attention keys/values of every row, computed here
        # once (outside the step loop) and read by every step; the conditional rows come first.
        kv_rows = kv_cond = None
        if plan.text_kv_cache:
            kv_rows = dit.text_kv(rows.context, rows.image_tokens)  # [depth, 2B or 3B, ...]
            kv_cond = jax.tree.map(lambda a: a[:, :b], kv_rows)  # [depth, B, ...]

        def velocity(x, t, inp: DiTInputs, text_kv=None):
            x_in, t_in = family.dit_input(x, t, inp, plan.expand_timesteps)
            kw = {} if inp.image_tokens is None else {'image': inp.image_tokens}
            out = dit(
                x_in, t_in, inp.context, inp.context_mask, skip=inp.skip, text_kv=text_kv, **kw
            )
            return flow.to_velocity(out, x, t, family.prediction)

        def model_fn(x, t):  # x: [2B or 3B, ...] cond rows, uncond rows (, weakened cond rows)
            if plan.progress and tick is not None:
                jax.debug.callback(tick, t[0])
            return velocity(x, t, rows, kv_rows)

        if scale == 1.0 and plan.skip_guidance_scale == 0.0:  # v_c exactly: one DiT pass

            def cond_only(x, t):  # x: [B, ...], the conditional rows alone (no unconditional)
                if plan.progress and tick is not None:
                    jax.debug.callback(tick, t[0])
                return velocity(x, t, cond_rows, kv_cond)

            return cond_only

        return samplers.cfg_velocity(
            model_fn,
            scale,
            plan.guidance_interval,
            cond_fn=lambda x, t: velocity(x, t, cond_rows, kv_cond),
            skip_scale=plan.skip_guidance_scale,
            skip_interval=plan.skip_guidance_interval,
        )

    if plan.cache.on:
        return _denoise_cached(params, params_2, noise, inputs, rows, graphdef, plan, tick)
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
        sigmas=plan.sigmas,
        t_start=plan.t_start,
        step_callback=callback,
        timestep_quantization=plan.timestep_quantization,
    )
    if plan.expand_timesteps:  # TI2V: the known frames pasted into the result
        lat = cond_lib.apply_known(lat, inputs.mask, inputs.known)
    return lat, None


def _denoise_cached(params, params_2, noise, inputs, rows, graphdef, plan, tick):
    """`denoise` with plan.cache: CFG's two branches (rows [2B]) through `step_cache.evaluate`,
    each with its own cache state carried by the sampler (fresh at the expert switch); guidance
    1 everywhere runs the conditional rows alone (one branch)."""
    family, cache, b = plan.family, plan.cache, noise.shape[0]
    if plan.guidance_scale == 1.0 and (params_2 is None or plan.guidance_scale_2 == 1.0):
        rows = inputs.conditional(b)
    groups = rows.context.shape[0] // b

    def guided_by(dit, scale):
        text_kv = dit.text_kv(rows.context, rows.image_tokens) if plan.text_kv_cache else None

        def model_fn(x, t, carry):  # x: [G * B, ...] cond rows (, then uncond rows)
            if plan.progress and tick is not None:
                jax.debug.callback(tick, t[0])
            x_in, t_in = family.dit_input(x, t, rows, plan.expand_timesteps)
            out, carry = step_cache.evaluate(dit, cache, x_in, t_in, rows, text_kv, carry, groups)
            return flow.to_velocity(out, x, t, family.prediction), carry

        if groups == 1:
            return lambda x, t, carry: model_fn(x, t, carry)
        return step_cache.guided(model_fn, scale, plan.guidance_interval)

    dit = nnx.merge(graphdef, params)
    guided = guided_by(dit, plan.guidance_scale)
    if params_2 is not None:
        low = guided_by(nnx.merge(graphdef, params_2), plan.guidance_scale_2)
        guided = step_cache.two_experts(
            guided, low, family.boundary_ratio, plan.timestep_quantization
        )
    evals = samplers.num_evaluations(plan.sampler, plan.num_steps)
    carry = step_cache.init_state(cache, dit.cfg, groups, noise.shape, evals)
    callback = None
    if plan.replace_known:
        callback = cond_lib.replace_callback(inputs.mask, inputs.known, noise)
    lat, carry = samplers.sample(
        guided,
        noise,
        method=plan.sampler,
        num_steps=plan.num_steps,
        shift=plan.shift,
        t_start=plan.t_start,
        step_callback=callback,
        sigmas=plan.sigmas,
        timestep_quantization=plan.timestep_quantization,
        velocity_carry=carry,
    )
    if plan.expand_timesteps:
        lat = cond_lib.apply_known(lat, inputs.mask, inputs.known)
    return lat, carry
