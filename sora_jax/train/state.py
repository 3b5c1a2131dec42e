"""Train state as a pure pytree: params, optimizer state, EMA params, step, RNG, fault counters."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: updates applied (+ skipped non-finite steps)
    params: Any  # nnx.State of trainable parameters (float32 master weights)
    opt_state: Any
    ema_params: Any
    rng: jax.Array  # base key; per-step keys are folded from (rng, step)
    nonfinite_streak: jax.Array  # consecutive skipped steps (non-finite loss or gradient)
    nonfinite_total: jax.Array  # all skipped steps
    frozen: Any = None  # LoRA: the frozen base params (no gradient, no optimizer
    # state, never checkpointed; train/lora.py); None otherwise


def create(params, tx: optax.GradientTransformation, rng: jax.Array, frozen=None) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        ema_params=jax.tree.map(jnp.copy, params),
        rng=rng,
        nonfinite_streak=jnp.zeros((), jnp.int32),
        nonfinite_total=jnp.zeros((), jnp.int32),
        frozen=frozen,
    )


def make_optimizer(cfg) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with linear warmup + cosine decay and global-norm clipping (config.train.*)."""
    t = cfg.train
    warmup = min(int(t.warmup_steps), max(int(t.num_steps) - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=float(t.learning_rate),
        warmup_steps=warmup,
        decay_steps=max(int(t.num_steps), warmup + 1),
        end_value=float(t.learning_rate) * t.min_lr_ratio,
    )
    return optax.chain(
        optax.clip_by_global_norm(float(t.grad_clip)),
        optax.adamw(schedule, b1=float(t.b1), b2=float(t.b2), weight_decay=float(t.weight_decay)),
    ), schedule
