"""Text-to-video rectified-flow objective: the Denoiser (byte text encoder + DiT) predicts the
velocity of x_t = (1 - t) x0 + t eps (or, with `flow.prediction='data'`, the clean x0, converted
to a velocity by `flow.to_velocity`). Text is dropped to the empty prompt with probability
`flow.text_dropout` so the model learns the unconditional velocity for classifier-free guidance.

`loss_fn` reads `latents` [B, T, H, W, C] (pre-encoded by a VAE) or, in pixel space, `video`
[B, T, H, W, 3] in [-1, 1]; plus `text_ids` [B, L]. The loop hands the step whichever of
`video`, `latents`, `text_ids` and `context` the batch holds.

The model (`build_model`) is `models/denoiser.py`'s, the one sampling restores into.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sora_jax.diffusion import conditioning, flow
from sora_jax.models.denoiser import (
    Denoiser,
    build_model,  # noqa: F401  (the objective's model: loop.py)
    conditioning_enabled,
)
from sora_jax.models.text import BOS


def null_text(ids: jax.Array) -> jax.Array:
    """The empty prompt in the shape of ids: BOS then padding."""
    return jnp.zeros_like(ids).at[:, 0].set(BOS)


def data_of(batch) -> jax.Array:
    return batch['latents'] if 'latents' in batch else batch['video']


def noised(x0: jax.Array, rng: jax.Array, f):
    """(t [B], noise, x_t, text-drop mask [B]) of one training step, from `config.flow` = f."""
    b = x0.shape[0]
    k_t, k_n, k_drop = jax.random.split(rng, 3)
    t = flow.sample_timesteps(
        k_t, b, method=f.timestep_sampling, mean=f.logit_mean, std=f.logit_std, shift=f.shift
    )
    noise = jax.random.normal(k_n, x0.shape, jnp.float32)
    drop = jax.random.bernoulli(k_drop, f.text_dropout, (b,))
    return t, noise, flow.add_noise(x0, noise, t), drop


def loss_fn(model: Denoiser, batch, rng: jax.Array, config):
    x0 = data_of(batch).astype(jnp.float32)
    ids = batch['text_ids']
    b = x0.shape[0]
    f = config.flow
    t, noise, x_t, drop = noised(x0, rng, f)
    ids = jnp.where(drop[:, None], null_text(ids), ids)
    loss_weight = None
    metrics = {}
    if conditioning_enabled(config):
        # One model for every mode: random frame masks; the clean known latents arrive as extra
        # channels (x_t itself stays on the noising path, as at sampling) and carry no loss.
        mask = conditioning.random_training_mask(
            jax.random.fold_in(rng, 7), b, x0.shape[1], dict(config.conditioning.probs)
        )
        x_in = conditioning.model_input(x_t, mask, x0)
        loss_weight = 1.0 - mask
        metrics['known_frac'] = mask.mean()
    else:
        x_in = x_t
    v = flow.to_velocity(model(x_in, t, ids), x_t, t, f.get('prediction', 'velocity'))
    loss = flow.flow_loss(v, flow.velocity_target(x0, noise), mask=loss_weight)
    return loss, dict(metrics, flow_loss=loss, t_mean=t.mean())
