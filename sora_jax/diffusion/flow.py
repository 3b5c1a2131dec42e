"""Rectified flow: noising, velocity targets, timestep sampling, resolution shift, loss.

Conventions (fixed; the trainer, the samplers and the pipeline rely on them):

* time ``t`` in [0, 1]; ``t = 0`` is data, ``t = 1`` is noise;
* noising ``x_t = (1 - t) * x0 + t * eps``; velocity target ``v = eps - x0``;
* a velocity function is ``velocity_fn(x_t: [B, ...], t: [B]) -> v: [B, ...]``;
* sampling integrates ``dx/dt = v`` from ``t = 1`` down to ``t = 0``.

Per-example times ``t: [B]`` broadcast over the trailing axes of ``x: [B, ...]``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

TIMESTEP_METHODS = ('logit_normal', 'uniform')


def _bcast(t: jax.Array, x: jax.Array) -> jax.Array:
    """t: [B] (or scalar) -> [B, 1, ..., 1] broadcastable against x: [B, ...]. A t already of
    x's rank (per frame, e.g. [B, T, 1, 1, 1] in diffusion forcing) broadcasts as it is."""
    t = jnp.asarray(t, dtype=x.dtype)
    if t.ndim == 0:
        return t
    if t.ndim == x.ndim and t.shape[0] == x.shape[0]:
        jnp.broadcast_shapes(t.shape, x.shape)  # raises on a shape that does not broadcast
        return t
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(
            f't must be a scalar, [B] or of rank {x.ndim} with B = {x.shape[0]}, got shape '
            f'{t.shape}; pass one time per example (or per frame, broadcastable).'
        )
    return t.reshape(t.shape + (1,) * (x.ndim - 1))


def add_noise(x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """x_t = (1 - t) * x0 + t * noise. x0, noise: [B, ...]; t: [B] or scalar."""
    tb = _bcast(t, x0)
    return (1.0 - tb) * x0 + tb * noise


def velocity_target(x0: jax.Array, noise: jax.Array) -> jax.Array:
    """v = d x_t / dt = noise - x0 (independent of t)."""
    return noise - x0


def x0_from_velocity(x_t: jax.Array, v: jax.Array, t: jax.Array) -> jax.Array:
    """Data prediction from a velocity: x0 = x_t - t * v."""
    return x_t - _bcast(t, x_t) * v


def noise_from_velocity(x_t: jax.Array, v: jax.Array, t: jax.Array) -> jax.Array:
    """Noise prediction from a velocity: eps = x_t + (1 - t) * v."""
    return x_t + (1.0 - _bcast(t, x_t)) * v


PREDICTIONS = ('velocity', 'data')


def to_velocity(
    out: jax.Array,
    x_t: jax.Array,
    t: jax.Array,
    prediction: str = 'velocity',
    *,
    t_min: float = 0.05,
) -> jax.Array:
    """The velocity implied by a network output.

    prediction='velocity': the network predicts v itself (Wan, SD3).
    prediction='data': it predicts x0 and v = (x_t - x0) / max(t, t_min) (JiT, "Back to Basics",
      Li & He 2025). Pixel-space models with large patches need it: a token narrower than its
      patch cannot carry the noise a velocity must reproduce near t = 0, but clean data lies on a
      low-dimensional manifold. Trained with the velocity loss, i.e. an x0 loss weighted by 1/t^2.
    """
    if prediction == 'velocity':
        return out
    if prediction == 'data':
        tb = jnp.maximum(_bcast(t, x_t), t_min)
        return (x_t - out.astype(x_t.dtype)) / tb
    raise ValueError(f'unknown prediction {prediction!r}; use one of {PREDICTIONS}.')


def shift_time(t, shift: float):
    """SD3 / Wan timestep shift t' = shift * t / (1 + (shift - 1) * t).

    shift > 1 moves times towards noise (t' >= t), shift = 1 is the identity; 0 and 1 are fixed
    points and the map is strictly increasing for shift > 0. Works on floats, numpy and jax arrays.
    """
    if shift <= 0:
        raise ValueError(f'shift must be > 0, got {shift}; use 1.0 for no shift.')
    return shift * t / (1.0 + (shift - 1.0) * t)


def unshift_time(t, shift: float):
    """Inverse of `shift_time`: t = t' / (shift - (shift - 1) * t')."""
    if shift <= 0:
        raise ValueError(f'shift must be > 0, got {shift}; use 1.0 for no shift.')
    return t / (shift - (shift - 1.0) * t)


def shift_for_tokens(
    num_tokens: int,
    num_latent_frames: int,
    base_shift: float = 1.0,
    *,
    base_spatial_tokens: int = 256,
    base_latent_frames: int = 1,
    min_shift: float = 1.0,
    max_shift: float | None = None,
) -> float:
    """Resolution- and duration-dependent timestep shift (SD3 / Open-Sora 2.0 style).

    With ``S = num_tokens / num_latent_frames`` DiT tokens per latent frame (after patchify)::

        shift = base_shift * sqrt(S / base_spatial_tokens) * sqrt(num_latent_frames / base_latent_frames)
              = base_shift * sqrt(num_tokens / (base_spatial_tokens * base_latent_frames))

    clipped to ``[min_shift, max_shift]``. SD3 argues that m times more tokens carry the same signal
    at sqrt(m) times the noise std, so the shift that keeps the per-token SNR schedule equal grows with
    sqrt of the spatial token count; Open-Sora 2.0 additionally multiplies by sqrt(latent frames).
    ``base_shift`` is the shift used at the base size (``base_spatial_tokens`` per frame,
    ``base_latent_frames`` frames). Non-decreasing in ``num_tokens`` for a fixed frame count.
    """
    if num_tokens <= 0 or num_latent_frames <= 0:
        raise ValueError(
            f'num_tokens ({num_tokens}) and num_latent_frames ({num_latent_frames}) '
            'must be positive; pass the DiT token count of one example.'
        )
    if num_tokens % num_latent_frames:
        raise ValueError(
            f'num_tokens {num_tokens} is not a multiple of num_latent_frames '
            f'{num_latent_frames}; pass T * (H / p) * (W / p).'
        )
    if base_shift <= 0 or base_spatial_tokens <= 0 or base_latent_frames <= 0:
        raise ValueError(
            f'base_shift ({base_shift}), base_spatial_tokens ({base_spatial_tokens}) and '
            f'base_latent_frames ({base_latent_frames}) must be positive.'
        )
    spatial = num_tokens / num_latent_frames
    shift = (
        base_shift
        * math.sqrt(spatial / base_spatial_tokens)
        * math.sqrt(num_latent_frames / base_latent_frames)
    )
    shift = max(shift, min_shift)
    if max_shift is not None:
        shift = min(shift, max_shift)
    return float(shift)


def sample_timesteps(
    rng: jax.Array,
    batch: int,
    *,
    method: str = 'logit_normal',
    mean: float = 0.0,
    std: float = 1.0,
    shift: float = 1.0,
) -> jax.Array:
    """Training times t: [batch] float32 in (0, 1).

    'logit_normal': t = sigmoid(mean + std * n), n ~ N(0, 1) (SD3; median sigmoid(mean)).
    'uniform': t ~ U(0, 1). Either is then passed through `shift_time(t, shift)`.
    """
    if method == 'logit_normal':
        if std <= 0:
            raise ValueError(f'std must be > 0 for logit_normal, got {std}.')
        t = jax.nn.sigmoid(mean + std * jax.random.normal(rng, (batch,), jnp.float32))
    elif method == 'uniform':
        t = jax.random.uniform(rng, (batch,), jnp.float32)
    else:
        raise ValueError(f'unknown timestep method {method!r}; use one of {TIMESTEP_METHODS}.')
    return shift_time(t, shift) if shift != 1.0 else t


def flow_loss(
    v_pred: jax.Array,
    v_target: jax.Array,
    mask: jax.Array | None = None,
    *,
    reduction: str = 'mean',
) -> jax.Array:
    """Mean squared velocity error, optionally weighted.

    mask: None, or weights aligned with the *leading* axes of v_pred and broadcast over the rest
    (missing trailing axes are added): [B] per-example weights, [B, T] frame mask with 0 on
    conditioned latent frames (pass ``1 - cond_mask``), or a full [B, T, H, W, C] weight. The loss is sum(w * (v_pred - v_target)^2)
    / sum(w) over the broadcast weights, i.e. the mean over the included elements.
    reduction: 'mean' -> scalar; 'per_example' -> [B] (each example normalised by its own weight).
    """
    if v_pred.shape != v_target.shape:
        raise ValueError(f'v_pred {v_pred.shape} and v_target {v_target.shape} must match.')
    if reduction not in ('mean', 'per_example'):
        raise ValueError(f"unknown reduction {reduction!r}; use 'mean' or 'per_example'.")
    sq = jnp.square(v_pred.astype(jnp.float32) - v_target.astype(jnp.float32))
    if mask is None:
        w = jnp.ones_like(sq)
    else:
        mask = jnp.asarray(mask, jnp.float32)
        if mask.ndim > sq.ndim:
            raise ValueError(f'mask {mask.shape} has more axes than v_pred {sq.shape}.')
        mask = mask.reshape(mask.shape + (1,) * (sq.ndim - mask.ndim))
        w = jnp.broadcast_to(mask, sq.shape)
    axes = tuple(range(sq.ndim)) if reduction == 'mean' else tuple(range(1, sq.ndim))
    return jnp.sum(w * sq, axis=axes) / jnp.maximum(jnp.sum(w, axis=axes), 1e-8)
