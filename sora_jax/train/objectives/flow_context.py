"""Rectified flow for a DiT fed precomputed text features (Wan 2.1: a frozen UMT5 encoder).

The model is the DiT alone; the text encoder is frozen and runs once per caption, outside the
train step, so its 5.7B parameters take no optimizer state. Batches hold

  latents       f32  [B, T, H, W, C]   VAE latents, normalised as the DiT expects
  context       bf16 [B, L, text_dim]  text features (UMT5: zero past the prompt's end)
  context_mask  bool [B, L]            optional; None = attend to every position (Wan)

The loss is `objectives/flow.py`'s: x_t = (1 - t) x0 + t eps, target eps - x0; text is dropped
to all-zero features with probability `flow.text_dropout` (Wan's padding of an empty prompt is
close to, not equal to, that: use precomputed empty-prompt features in `context` to match it).

This is the train step `experiments/aot.py --task=train` compiles for Wan sizes, and the one
`train.py` runs for configs/wan21.py:lora_* (a LoRA over a converted Wan folder, trained on a
video folder): `train/wan_frozen.py` builds the batches (latents from the folder's VAE, `context`
from its UMT5, each caption encoded once by `data/text_features.py`).

The model (`build_model`) is `models/dit.py`'s, the one sampling a LoRA run restores into.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sora_jax.diffusion import flow
from sora_jax.models.dit import (
    DiT,
    build_model,  # noqa: F401  (the objective's model: the DiT alone)
)
from sora_jax.train.objectives import flow as flow_objective


def loss_fn(model: DiT, batch, rng: jax.Array, config):
    x0 = batch['latents'].astype(jnp.float32)
    t, noise, x_t, drop = flow_objective.noised(x0, rng, config.flow)
    ctx = jnp.where(drop[:, None, None], jnp.zeros_like(batch['context']), batch['context'])
    v = model(x_t, t, ctx, batch.get('context_mask'))
    loss = flow.flow_loss(v, flow.velocity_target(x0, noise))
    return loss, dict(flow_loss=loss, t_mean=t.mean())


def batch_shapes(config, batch_size: int, latent_shape, text_length: int) -> dict:
    """{key: jax.ShapeDtypeStruct} of one global batch (latent_shape = (T, H, W))."""
    c = int(config.latent_channels)
    ctx_dtype = jnp.dtype(config.model.dtype)
    return {
        'latents': jax.ShapeDtypeStruct((batch_size, *latent_shape, c), jnp.float32),
        'context': jax.ShapeDtypeStruct(
            (batch_size, text_length, int(config.model.text_dim)), ctx_dtype
        ),
    }
