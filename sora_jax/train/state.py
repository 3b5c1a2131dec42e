"""Train state as a pure pytree: params, optimizer state, EMA params, step, RNG, fault counters.

Memory options (config.train.*, all read with defaults so a config need not name them; the
defaults keep every byte and every value as they are without them). Bytes per parameter of the
default state: 4 (float32 master weights) + 8 (AdamW mu, nu) + 4 (EMA) = 16.
  mu_dtype            'bfloat16': AdamW's first moment in bf16 (optax `mu_dtype`), -2 bytes
  nu_dtype            'bfloat16': the second moment too, -2 bytes. With b2 = 0.999 an update of
                      nu changes it by ~0.1%, under bf16's half-ulp (0.2%): small steps round
                      away and nu lags behind the gradient scale (docs/tpu_memory.md)
  ema                 'device' (default) | 'host': the EMA lives in pinned host memory and
                      crosses the host link twice a step (`step.py`) | 'off': no EMA
                      (ema_params None; evaluation, previews and samplers use the raw params)
  optimizer_memory    'device' (default) | 'host': mu and nu live in pinned host memory between
                      steps and cross the host link twice a step
  param_dtype         (model.param_dtype in a run, train.param_dtype in configs/wan21.py's AOT
                      compiles) 'bfloat16' master weights, -2 bytes: an update below a weight's
                      half-ulp (2^-9 relative) is rounded away, so a fine-tuning learning rate
                      of 1e-5 changes few weights: a trade, named explicitly in the config
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

EMA_MODES = ('device', 'host', 'off')
MEMORIES = ('device', 'host')
MOMENT_DTYPES = ('', 'float32', 'bfloat16')  # '': as the params (optax's default)
MEMORY_DEFAULTS = dict(mu_dtype='', nu_dtype='', ema='device', optimizer_memory='device')


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: updates applied (+ skipped non-finite steps)
    params: Any  # nnx.State of trainable parameters (float32 master weights)
    opt_state: Any
    ema_params: Any  # None with train.ema='off'
    rng: jax.Array  # base key; per-step keys are folded from (rng, step)
    nonfinite_streak: jax.Array  # consecutive skipped steps (non-finite loss or gradient)
    nonfinite_total: jax.Array  # all skipped steps
    frozen: Any = None  # LoRA: the frozen base params (no gradient, no optimizer
    # state, never checkpointed; train/lora.py); None otherwise

    @property
    def eval_params(self):
        """The params evaluation, previews and export use: the EMA, or the raw params when the
        run keeps no EMA (train.ema='off')."""
        return self.params if self.ema_params is None else self.ema_params


def ema_mode(cfg) -> str:
    return str(cfg.train.get('ema', MEMORY_DEFAULTS['ema']))


def optimizer_memory(cfg) -> str:
    return str(cfg.train.get('optimizer_memory', MEMORY_DEFAULTS['optimizer_memory']))


def create(
    params, tx: optax.GradientTransformation, rng: jax.Array, frozen=None, ema: bool = True
) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        ema_params=jax.tree.map(jnp.copy, params) if ema else None,
        rng=rng,
        nonfinite_streak=jnp.zeros((), jnp.int32),
        nonfinite_total=jnp.zeros((), jnp.int32),
        frozen=frozen,
    )


def place(shardings: TrainState, cfg) -> TrainState:
    """The train state's shardings with the memory kinds config.train asks for: EMA and / or
    optimizer state in pinned host memory (`ema='host'`, `optimizer_memory='host'`). The
    step function (`step.py`) moves them to the device and back around the update."""
    host = lambda tree: jax.tree.map(lambda s: s.with_memory_kind('pinned_host'), tree)
    if ema_mode(cfg) == 'host' and shardings.ema_params is not None:
        shardings = shardings.replace(ema_params=host(shardings.ema_params))
    if optimizer_memory(cfg) == 'host':
        shardings = shardings.replace(opt_state=host(shardings.opt_state))
    return shardings


def on_device(tree):
    """The tree with its leaves in device memory: leaves kept in pinned host memory (train.ema /
    train.optimizer_memory 'host') are copied, same sharding; the others are returned as they
    are. For computations outside the train step (evaluation, previews): TPUs compute on device
    memory only."""
    host = lambda x: getattr(getattr(x, 'sharding', None), 'memory_kind', None) == 'pinned_host'
    return jax.tree.map(
        lambda x: jax.device_put(x, x.sharding.with_memory_kind('device')) if host(x) else x, tree
    )


def _adam_nu_dtype(b1: float, b2: float, mu_dtype, nu_dtype) -> optax.GradientTransformation:
    """optax.scale_by_adam with the second moment stored in `nu_dtype` (optax casts nu back to
    the stored dtype after each update; the update itself is computed in float32)."""
    inner = optax.scale_by_adam(b1=b1, b2=b2, mu_dtype=mu_dtype)

    def init(params):
        s = inner.init(params)
        return s._replace(nu=optax.tree.cast(s.nu, nu_dtype))

    return optax.GradientTransformation(init, inner.update)


def make_optimizer(cfg) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with linear warmup + cosine decay and global-norm clipping (config.train.*); the
    moments in train.mu_dtype / train.nu_dtype when set (module docstring)."""
    t = cfg.train
    warmup = min(int(t.warmup_steps), max(int(t.num_steps) - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=float(t.learning_rate),
        warmup_steps=warmup,
        decay_steps=max(int(t.num_steps), warmup + 1),
        end_value=float(t.learning_rate) * t.min_lr_ratio,
    )
    mu_dtype = t.get('mu_dtype', '') or None
    nu_dtype = t.get('nu_dtype', '') or None
    b1, b2, wd = float(t.b1), float(t.b2), float(t.weight_decay)
    if nu_dtype is None:
        adam = optax.adamw(schedule, b1=b1, b2=b2, weight_decay=wd, mu_dtype=mu_dtype)
    else:  # optax.adamw's chain with the low-precision second moment
        adam = optax.chain(
            _adam_nu_dtype(b1, b2, mu_dtype, jnp.dtype(nu_dtype)),
            optax.add_decayed_weights(wd),
            optax.scale_by_learning_rate(schedule),
        )
    return optax.chain(optax.clip_by_global_norm(float(t.grad_clip)), adam), schedule
