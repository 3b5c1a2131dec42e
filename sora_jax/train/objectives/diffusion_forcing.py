"""Diffusion forcing (Chen et al. 2024; SkyReels-V2, CausVid): rectified flow with an independent
noise level per chunk of latent frames, for a block-causal DiT (`model.causal_chunk > 0`).

Each chunk c of `model.causal_chunk` latent frames gets its own t_c (drawn as `flow.py`'s t is,
from `config.flow`): x_t = (1 - t_c) x0 + t_c eps frame by frame, and the DiT sees t_c on every
token of the chunk (the per-token timesteps Wan 2.2 TI2V uses). Its output is a velocity or,
with `flow.prediction='data'`, x0, converted frame by frame at its chunk's t_c. A causal model
trained so denoises a chunk given past chunks at any noise level, clean ones included: what
the chunked rollout (`pipeline/rollout.py`) asks of it, with the past clean in the key/value
cache.

Selected with `config.objective = 'diffusion_forcing'`; batches, text dropout and the model
(`models/denoiser.py`'s Denoiser, as `flow.py`) are flow's. `loss_fn` reads `latents`
[B, T, H, W, C] (or `video` in pixel space) and `text_ids` [B, L]; T must be whole chunks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from einops import repeat

from sora_jax.diffusion import flow
from sora_jax.models.denoiser import (
    Denoiser,
    build_model,  # noqa: F401  (the objective's model: loop.py)
)
from sora_jax.train.objectives.flow import data_of, null_text


def chunk_times(rng: jax.Array, batch: int, num_chunks: int, f) -> jax.Array:
    """Independent training times per chunk: [batch, num_chunks] in (0, 1), from config.flow."""
    t = flow.sample_timesteps(
        rng,
        batch * num_chunks,
        method=f.timestep_sampling,
        mean=f.logit_mean,
        std=f.logit_std,
        shift=f.shift,
    )
    return t.reshape(batch, num_chunks)


def token_times(t_chunk: jax.Array, chunk: int, grid: tuple[int, int, int]) -> jax.Array:
    """[B, num_chunks] -> per-token times [B, N] in the DiT's (t, h, w) token order; `chunk` is
    the token frames per chunk, grid the token grid (T', H', W')."""
    return repeat(t_chunk, 'b c -> b (c f n)', f=chunk, n=grid[1] * grid[2])


def loss_fn(model: Denoiser, batch, rng: jax.Array, config):
    x0 = data_of(batch).astype(jnp.float32)
    ids = batch['text_ids']
    b, frames = x0.shape[:2]
    cfg = model.dit.cfg
    if not cfg.causal_chunk or frames % cfg.causal_chunk:
        raise ValueError(
            f'diffusion forcing needs model.causal_chunk > 0 dividing the {frames} latent '
            f'frames; got model.causal_chunk={cfg.causal_chunk}.'
        )
    n_chunks = frames // cfg.causal_chunk
    k_t, k_n, k_drop = jax.random.split(rng, 3)
    t_chunk = chunk_times(k_t, b, n_chunks, config.flow)  # [B, C]
    t_frame = repeat(t_chunk, 'b c -> b (c f) 1 1 1', f=cfg.causal_chunk)
    noise = jax.random.normal(k_n, x0.shape, jnp.float32)
    x_t = (1.0 - t_frame) * x0 + t_frame * noise
    drop = jax.random.bernoulli(k_drop, config.flow.text_dropout, (b,))
    ids = jnp.where(drop[:, None], null_text(ids), ids)
    grid = model.dit.check_input(x0.shape)
    t_tok = token_times(t_chunk, cfg.causal_chunk // cfg.patch_size[0], grid)
    v = flow.to_velocity(
        model(x_t, t_tok, ids), x_t, t_frame, config.flow.get('prediction', 'velocity')
    )
    loss = flow.flow_loss(v, flow.velocity_target(x0, noise))
    spread = (t_chunk.max(1) - t_chunk.min(1)).mean()  # how far apart one clip's chunks are
    return loss, dict(flow_loss=loss, t_mean=t_chunk.mean(), t_chunk_spread=spread)
