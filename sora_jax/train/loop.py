"""The training loop, readable top to bottom: config -> mesh -> data -> state -> jit -> steps.

`train_and_evaluate(config, workdir)` trains whatever `config.objective` names
(`train/objectives/<name>.py`: `build_model`, `loss_fn`), resuming from the newest complete
checkpoint in `workdir`. On SIGTERM it finishes the current step, saves and returns.
"""
from __future__ import annotations

import importlib
import math
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from tqdm import tqdm

from sora_jax.data import pipeline as data_pipeline
from sora_jax.models.text import ByteTokenizer
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.train import checkpoint as ckpt
from sora_jax.train import state as state_lib
from sora_jax.train import step as step_lib
from sora_jax.train.validate import validate_config


def objective_module(config):
    try:
        return importlib.import_module(f'sora_jax.train.objectives.{config.objective}')
    except ModuleNotFoundError as e:
        raise ValueError(f'config.objective={config.objective!r} has no module '
                         f'sora_jax/train/objectives/{config.objective}.py.') from e


def make_sources(config) -> dict[str, Any]:
    """{split: random-access source} for config.data; VAE latents when config.autoencoder is set
    (encoded once into a cache, normalised by config.latent_mean/std)."""
    sources = _pixel_sources(config)
    if config.get('autoencoder', 'none') in ('none', '', None):
        return sources
    from sora_jax.data import latents as latents_lib
    from sora_jax.train import frozen_vae
    vae = frozen_vae.load(config.autoencoder)
    out = latents_lib.cache_dir(config.data.data_dir, config.data.to_dict(), config.autoencoder,
                                vae.step)
    latents_lib.encode_dataset(sources, vae.encode, out, batch_size=8)
    if not len(config.latent_mean):
        stats = latents_lib.load_stats(out)
        config.latent_mean, config.latent_std = tuple(stats['mean']), tuple(stats['std'])
        logging.info('latent stats: mean %s std %s', np.round(stats['mean'], 3),
                     np.round(stats['std'], 3))
    return {s: latents_lib.open_split(out, s, config.latent_mean, config.latent_std)
            for s in sources}


def _pixel_sources(config) -> dict[str, Any]:
    d = config.data
    if d.name == 'shapes':
        from sora_jax.data.builders.shapes import ShapesConfig, build_shapes
        sc = ShapesConfig(num_train=d.num_train, num_validation=d.num_validation,
                          num_frames=d.num_frames, height=d.height, width=d.width,
                          sizes=tuple(tuple(s) for s in d.sizes), holdout=tuple(d.holdout),
                          max_objects=d.max_objects, seed=config.seed)
        return build_shapes(d.data_dir, sc)
    if d.name == 'folder':
        return {s: data_pipeline.open_source(d.data_dir, s) for s in ('train', 'validation')}
    raise ValueError(f"config.data.name={d.name!r} is not 'shapes' or 'folder'.")


def make_data(config, split: str, *, batch_size: int, shuffle: bool, num_epochs=None):
    sources = make_sources(config)
    if split not in sources:
        raise ValueError(f'the dataset has no {split!r} split (splits: {sorted(sources)}).')
    tok = ByteTokenizer(config.text.max_length) if 'text' in config else ByteTokenizer()
    return data_pipeline.make_dataset(
        sources[split], batch_size=batch_size, seed=config.seed, tokenize=tok.encode_one,
        shuffle=shuffle, num_epochs=num_epochs, spanish_prob=config.data.spanish_prob,
        worker_count=config.data.worker_count if split == 'train' else 0)


def init_state(config, mesh, rules, objective):
    """Model + train state created inside jit, directly into their shardings."""
    tx, schedule = state_lib.make_optimizer(config)
    key = jax.random.key(config.seed)

    def init_fn(k):
        k_model, k_state = jax.random.split(k)
        model = objective.build_model(config, nnx.Rngs(k_model))
        return state_lib.create(nnx.state(model, nnx.Param), tx, k_state)

    graphdef = nnx.graphdef(nnx.eval_shape(lambda: objective.build_model(config, nnx.Rngs(0))))
    abstract = jax.eval_shape(init_fn, key)
    shardings = mesh_lib.state_shardings(abstract, mesh, rules)
    with jax.set_mesh(mesh):
        state = jax.jit(init_fn, out_shardings=shardings)(key)
    return graphdef, state, shardings, tx, schedule


def to_global(batch: dict[str, np.ndarray], mesh, rules) -> dict[str, jax.Array]:
    """Host-local batch -> global arrays sharded over the batch mesh axes."""
    out = {}
    for k, v in batch.items():
        sh = mesh_lib.batch_sharding(mesh, v.ndim, rules)
        out[k] = jax.make_array_from_process_local_data(sh, np.asarray(v))
    return out


class _Preemption:
    """SIGTERM -> finish the step, checkpoint, exit cleanly."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def _handle(self, signum, frame):
        logging.warning('SIGTERM received: finishing this step, then checkpointing.')
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
    """Trains to config.train.num_steps (or until preempted). Returns the last metrics."""
    validate_config(config)
    ckpt.quiet_orbax_logs()
    objective = objective_module(config)
    t = config.train
    mesh = mesh_lib.make_mesh(config.mesh.shape)
    rules = mesh_lib.rules_dict(config.mesh.rules)
    os.makedirs(workdir, exist_ok=True)
    n_proc = jax.process_count()
    if t.batch_size % n_proc:
        raise ValueError(f'train.batch_size={t.batch_size} is not divisible by the '
                         f'{n_proc} processes; use a multiple of {n_proc}.')
    ds = make_data(config, 'train', batch_size=t.batch_size // n_proc, shuffle=True)
    data_iter = iter(ds)

    graphdef, state, shardings, tx, schedule = init_state(config, mesh, rules, objective)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info('model: %s parameters; mesh %s', f'{n_params:,}', dict(mesh.shape))

    mngr = ckpt.manager(os.path.join(workdir, 'checkpoints'), keep=t.keep_checkpoints)
    if mngr.latest_step() is not None:
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                                state)
        state, step0 = ckpt.restore_state(mngr, abstract, data_iter)
        logging.info('Resumed from step %d in %s', step0, workdir)

    step_fn = step_lib.make_train_step(graphdef, objective.loss_fn, tx, config, schedule)
    batch_keys = None
    with jax.set_mesh(mesh), mesh_lib.use_rules(rules):
        train_step = jax.jit(step_fn, out_shardings=(shardings, None), donate_argnums=0)
        writer = _writer(workdir)
        start = int(state.step)
        metrics: dict[str, Any] = {}
        t0 = time.time()
        with _Preemption() as pre, tqdm(total=t.num_steps, initial=start, desc='train',
                                        disable=jax.process_index() != 0) as bar:
            for step in range(start, t.num_steps):
                batch = next(data_iter)
                if batch_keys is None:
                    batch_keys = [k for k in ('video', 'latents', 'text_ids') if k in batch]
                state, m = train_step(state, to_global({k: batch[k] for k in batch_keys},
                                                       mesh, rules))
                streak = int(state.nonfinite_streak)
                bar.update(1)
                done = step + 1
                if streak:
                    logging.warning('step %d: non-finite loss or gradient; update skipped '
                                    '(%d in a row, %d in all).', done, streak,
                                    int(state.nonfinite_total))
                if streak >= t.max_nonfinite:
                    mngr.wait_until_finished()
                    raise FloatingPointError(
                        f'{streak} non-finite steps in a row at step {done} (train.max_nonfinite='
                        f'{t.max_nonfinite}); lower train.learning_rate or check the data. The '
                        f'last checkpoint in {workdir} holds finite params.')
                if done % t.log_every == 0 or done == t.num_steps:
                    metrics = {k: float(v) for k, v in jax.device_get(m).items()}
                    metrics['steps_per_sec'] = t.log_every / max(time.time() - t0, 1e-9)
                    t0 = time.time()
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}")
                    _log(writer, done, metrics)
                if t.eval_every and done % t.eval_every == 0:
                    _log(writer, done, evaluate(config, graphdef, objective, state.ema_params,
                                                mesh, rules))
                if done % t.checkpoint_every == 0 or done == t.num_steps or pre.requested:
                    ckpt.save(mngr, done, state, data_iter, config)
                if pre.requested:
                    mngr.wait_until_finished()
                    logging.warning('Preempted: checkpoint at step %d saved in %s. Resume with the '
                                    'same command (it continues from the newest checkpoint).',
                                    done, workdir)
                    print(f'Preempted at step {done}; checkpoint saved. Re-run the same command '
                          f'to resume.', flush=True)
                    break
        mngr.wait_until_finished()
        if writer is not None:
            writer.close()
    metrics['step'] = int(state.step)
    metrics['nonfinite_total'] = int(state.nonfinite_total)
    return metrics


def evaluate(config, graphdef, objective, params, mesh, rules, num_batches: int | None = None):
    """Mean held-out loss of the given params over the validation split (fixed RNG)."""
    bs = min(config.train.batch_size, config.data.num_validation)
    bs -= bs % max(1, math.prod(mesh.shape[a] for a in ('data', 'fsdp')))
    if bs <= 0:
        return {}
    ds = make_data(config, 'validation', batch_size=bs, shuffle=False, num_epochs=1)
    eval_fn = jax.jit(step_lib.make_eval_step(graphdef, objective.loss_fn, config))
    totals: dict[str, float] = {}
    n = 0
    for i, batch in enumerate(ds):
        if num_batches is not None and i >= num_batches:
            break
        keys = [k for k in ('video', 'latents', 'text_ids') if k in batch]
        m = eval_fn(params, to_global({k: batch[k] for k in keys}, mesh, rules),
                    jax.random.key(1234 + i))
        for k, v in jax.device_get(m).items():
            totals[k] = totals.get(k, 0.0) + float(v)
        n += 1
    return {f'eval/{k}': v / max(n, 1) for k, v in totals.items()}


def _writer(workdir):
    if jax.process_index() != 0:
        return None
    from tensorboardX import SummaryWriter
    return SummaryWriter(os.path.join(workdir, 'tb'))


def _log(writer, step, metrics):
    if not metrics:
        return
    logging.info('step %d: %s', step, ', '.join(f'{k}={v:.4g}' for k, v in metrics.items()))
    if writer is not None:
        for k, v in metrics.items():
            writer.add_scalar(k, v, step)
        writer.flush()
