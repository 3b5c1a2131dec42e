"""Pure train / eval step functions. They take and return plain pytrees; `loop.py` jits them.

The objective (a module in `train/objectives/`) provides `loss_fn(model, batch, rng, config)
-> (loss, metrics)`. A step with a non-finite loss or gradient applies no update (params,
optimizer state and EMA are kept) and is counted; the loop stops after too many in a row.

With train.ema='host' / train.optimizer_memory='host' (`state.py`) the EMA / optimizer state
arrive in pinned host memory: the step copies them to the device for the update and back
(XLA overlaps the copies with other work; each crosses the host link twice a step). With
train.ema='off' there is no EMA to update.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from sora_jax.train import state as state_lib
from sora_jax.train.state import TrainState


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def merge(graphdef, params, frozen=None):
    """The model from its trainable params (and, with LoRA, the frozen base params)."""
    return nnx.merge(graphdef, params) if frozen is None else nnx.merge(graphdef, params, frozen)


def make_train_step(
    graphdef,
    loss_fn: Callable,
    tx: optax.GradientTransformation,
    config,
    schedule: Callable | None = None,
):
    """(state, batch) -> (state, metrics). Batch leaves have a leading global-batch axis."""
    accum = int(config.train.grad_accum_steps)
    ema_decay = float(config.train.ema_decay)
    ema_host = state_lib.ema_mode(config) == 'host'
    opt_host = state_lib.optimizer_memory(config) == 'host'
    to_device = lambda tree: jax.device_put(tree, jax.memory.Space.Device)
    to_host = lambda tree: jax.device_put(tree, jax.memory.Space.Host)

    def grads_of(params, batch, rng, frozen=None):
        def f(p):  # gradients of the trainable params only (LoRA: the adapters)
            model = merge(graphdef, p, frozen)
            return loss_fn(model, batch, rng, config)

        (loss, metrics), grads = jax.value_and_grad(f, has_aux=True)(params)
        return loss, metrics, grads

    def step(state: TrainState, batch: dict[str, Any]):
        rng = jax.random.fold_in(state.rng, state.step)
        if accum == 1:
            loss, metrics, grads = grads_of(state.params, batch, rng, state.frozen)
        else:
            micro = jax.tree.map(
                lambda x: x.reshape(accum, x.shape[0] // accum, *x.shape[1:]), batch
            )

            def body(carry, i_mb):
                i, mb = i_mb
                l, m, g = grads_of(state.params, mb, jax.random.fold_in(rng, i), state.frozen)
                gsum, lsum, msum = carry
                return (
                    jax.tree.map(jnp.add, gsum, g),
                    lsum + l,
                    jax.tree.map(jnp.add, msum, m),
                ), None

            zeros_g = jax.tree.map(jnp.zeros_like, state.params)
            _, m_shape = jax.eval_shape(
                lambda: grads_of(
                    state.params, jax.tree.map(lambda x: x[0], micro), rng, state.frozen
                )[:2]
            )
            zeros_m = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), m_shape)
            (gsum, lsum, msum), _ = jax.lax.scan(
                body, (zeros_g, jnp.zeros(()), zeros_m), (jnp.arange(accum), micro)
            )
            grads = jax.tree.map(lambda g: g / accum, gsum)
            loss = lsum / accum
            metrics = jax.tree.map(lambda m: m / accum, msum)

        finite = jnp.isfinite(loss) & _all_finite(grads)
        opt_state = to_device(state.opt_state) if opt_host else state.opt_state
        updates, new_opt = tx.update(grads, opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        new_opt = keep(new_opt, opt_state)
        new_ema = None
        if state.ema_params is not None:
            ema = to_device(state.ema_params) if ema_host else state.ema_params
            new_ema = jax.tree.map(
                lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, new_params
            )
            new_ema = keep(new_ema, ema)
            new_ema = to_host(new_ema) if ema_host else new_ema
        state = state.replace(
            step=state.step + 1,
            params=keep(new_params, state.params),
            opt_state=to_host(new_opt) if opt_host else new_opt,
            ema_params=new_ema,
            nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1),
            nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32),
        )
        metrics = dict(
            metrics,
            loss=loss,
            grad_norm=optax.global_norm(grads),
            skipped=(~finite).astype(jnp.float32),
        )
        if schedule is not None:
            metrics['lr'] = schedule(state.step - 1)
        return state, metrics

    return step


def jit_train_step(step_fn, shardings):
    """The train step as `train/loop.py` runs it and `experiments/aot.py` compiles it: the state
    keeps its shardings and is donated (updated in place)."""
    return jax.jit(step_fn, out_shardings=(shardings, None), donate_argnums=0)


def make_eval_step(graphdef, loss_fn: Callable, config):
    """(params, batch, rng, frozen=None) -> metrics, on the EMA (or raw) params (LoRA: the
    adapters, with the frozen base params)."""

    def step(params, batch, rng, frozen=None):
        model = merge(graphdef, params, frozen)
        loss, metrics = loss_fn(model, batch, rng, config)
        return dict(metrics, loss=loss)

    return step
