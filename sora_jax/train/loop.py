"""The training loop, readable top to bottom: config -> mesh -> data -> state -> jit -> steps.

`train_and_evaluate(config, workdir)` trains whatever `config.objective` names
(`train/objectives/<name>.py`: `build_model`, `loss_fn`), resuming from the newest complete
checkpoint in `workdir` (train state, RNG and the grain iterator position: a resumed run
repeats an uninterrupted one bitwise on CPU).

Faults:
  * SIGTERM, or Orbax's preemption sync point (`CheckpointManager.reached_preemption`): the
    current step finishes, a checkpoint is written and the function returns
    (`metrics['preempted'] == 1`); re-running the same command resumes.
  * A process killed mid-save leaves only an `*.orbax-checkpoint-tmp*` directory, which is
    ignored with a warning (the previous complete step is restored) and cleaned up.
  * A non-finite loss or gradient skips the update; `train.max_nonfinite` in a row raise
    FloatingPointError. A state with a non-finite value is never checkpointed. The counters
    (like the loss) are read from the devices only every `train.log_every` steps, at
    checkpoints and at the end, so the loop never waits for step n before dispatching step
    n + 1: the skip warning and the error come at the next such point (a device-side running
    max of the streak keeps the limit exact, only the report is up to log_every steps late).

Test hooks (fault injection; all off by default, read with `.get` so configs need not
define them): `train.log_example_ids` (write `workdir/example_ids.jsonl`: step, example ids,
loss), `train.debug_sleep_per_step` (seconds, to let a test signal a run mid-way),
`train.debug_nan_from_step` (feed NaN inputs from this 1-based step on),
`train.debug_save_delay_s` (stall each checkpoint commit, to let a test kill a save).

A workdir belongs to one run at a time: `<workdir>/.sora_jax.lock` (`io/lock.py`; host, pid,
start time) is held by process 0 while the run lasts; a second run refuses with the owner's
name, and a lock left by a dead process on this host is taken over with a warning.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath
from flax import nnx
from tqdm import tqdm

from sora_jax.io import checkpoint as ckpt_io
from sora_jax.io import lock as lock_lib
from sora_jax.models import lora as lora_lib
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.safety import record as data_record
from sora_jax.train import checkpoint as ckpt
from sora_jax.train import lora as lora_train
from sora_jax.train import perf as perf_lib
from sora_jax.train import previews as previews_lib
from sora_jax.train import sources as sources_lib
from sora_jax.train import state as state_lib
from sora_jax.train import step as step_lib
from sora_jax.train import tracking
from sora_jax.train.validate import check_init_from, validate_config


def objective_module(config):
    try:
        return importlib.import_module(f'sora_jax.train.objectives.{config.objective}')
    except ModuleNotFoundError as e:
        raise ValueError(
            f'config.objective={config.objective!r} has no module '
            f'sora_jax/train/objectives/{config.objective}.py.'
        ) from e


def _init_fn(config, objective, tx):
    ema = state_lib.ema_mode(config) != 'off'

    def init_fn(k):
        k_model, k_state = jax.random.split(k)
        model = objective.build_model(config, nnx.Rngs(k_model))
        if lora_lib.enabled(config):  # adapters train; the base is frozen (train/lora.py)
            adapters, base = lora_train.split(model, config)
            return state_lib.create(adapters, tx, k_state, frozen=base, ema=ema)
        return state_lib.create(nnx.state(model, nnx.Param), tx, k_state, ema=ema)

    return init_fn


def abstract_state(config, mesh, rules, objective):
    """(graphdef, abstract train state, its shardings, tx, schedule), nothing allocated: what
    `init_state` creates, and what `experiments/aot.py` compiles the train step over."""
    tx, schedule = state_lib.make_optimizer(config)
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: objective.build_model(config, nnx.Rngs(0))))
    abstract = jax.eval_shape(_init_fn(config, objective, tx), jax.random.key(config.seed))
    shardings = state_lib.place(mesh_lib.state_shardings(abstract, mesh, rules), config)
    return graphdef, abstract, shardings, tx, schedule


def init_state(config, mesh, rules, objective):
    """Model + train state created inside jit, directly into their shardings."""
    graphdef, _, shardings, tx, schedule = abstract_state(config, mesh, rules, objective)
    with jax.set_mesh(mesh):
        state = jax.jit(_init_fn(config, objective, tx), out_shardings=shardings)(
            jax.random.key(config.seed)
        )
    return graphdef, state, shardings, tx, schedule


def warm_start(state, source: str, *, ema: bool = True, adapt=None):
    """A fresh train state whose params and EMA start from the EMA params (`ema=False`: the raw
    params) of another run's newest checkpoint (a training workdir or an exported bundle; dtypes
    are cast, shardings kept). Parameters the source lacks (modules this model adds) keep their
    initialisation; a shape mismatch is an error. Step, optimizer and data position start from
    zero: this is fine-tuning, not resume. `adapt(params) -> params` (the objective's
    `adapt_warm_start`) edits the loaded params, e.g. inflating an image VAE to video."""
    directory = ckpt_io.checkpoint_dir(source)
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state.params
    )
    try:
        loaded, step = ckpt_io.restore_params(directory, abstract, ema=ema, missing_ok=True)
    except ValueError as e:  # shape mismatch, or no checkpoint
        raise ValueError(
            f'train.init_from={source!r}: cannot load its params into this model '
            f'({e}); the model config must match the source run.'
        ) from e
    fresh = jax.tree_util.tree_leaves_with_path(state.params)
    new = [
        jax.tree_util.keystr(p)
        for (p, _), v in zip(fresh, jax.tree.leaves(loaded, is_leaf=lambda x: x is None))
        if v is None
    ]
    params = jax.tree.map(
        lambda v, f: f if v is None else v, loaded, state.params, is_leaf=lambda x: x is None
    )
    if adapt is not None:
        params = adapt(params)
    logging.info(
        'Warm start: params and EMA from the %s params of step %d of %s%s',
        'EMA' if ema else 'raw',
        step,
        source,
        f'; {len(new)} new parameters keep their init: {new}' if new else '',
    )
    ema = None if state.ema_params is None else jax.tree.map(jnp.copy, params)
    return state.replace(params=params, ema_params=ema)


def to_global(batch: dict[str, np.ndarray], mesh, rules) -> dict[str, jax.Array]:
    """Host-local batch -> global arrays sharded over the batch mesh axes."""
    out = {}
    for k, v in batch.items():
        sh = mesh_lib.batch_sharding(mesh, v.ndim, rules)
        out[k] = jax.make_array_from_process_local_data(sh, np.asarray(v))
    return out


class _Preemption:
    """SIGTERM -> finish the step, checkpoint, exit cleanly (installed before the first compile,
    so a SIGTERM during start-up also ends cleanly instead of killing the process)."""

    def __init__(self, install: bool = True):
        self.requested = False
        self._install = install
        self._old = None

    def __enter__(self):
        if not self._install:
            return self
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
    """Trains to config.train.num_steps (or until preempted). Returns the last metrics plus
    'step', 'nonfinite_total', 'preempted' (0/1) and 'data_skipped' (files the dataset build
    skipped; 0 for synthetic data)."""
    validate_config(config)
    ckpt.quiet_orbax_logs()
    objective = objective_module(config)
    # Our SIGTERM handler only in single-process runs: multi-host runs use JAX's preemption
    # service (it owns SIGTERM) through Orbax's sync point, so all hosts stop at one step.
    # One run per workdir: process 0 holds `<workdir>/.sora_jax.lock` (io/lock.py) until the
    # function returns; a second run on the same workdir refuses, naming the owner.
    with (
        lock_lib.workdir(os.fspath(workdir), enabled=jax.process_index() == 0),
        _Preemption(install=jax.process_count() == 1) as pre,
    ):
        return _train(config, workdir, objective, pre)


def _train(config, workdir: str, objective, pre: '_Preemption') -> dict[str, Any]:
    t = config.train
    check_init_from(config, workdir)
    lora_train.inherit_latent_stats(config)
    mesh = mesh_lib.make_mesh(config.mesh.shape)
    rules = mesh_lib.rules_dict(config.mesh.rules)
    root = epath.Path(workdir)  # any etils.epath path (gs://...)
    root.mkdir(parents=True, exist_ok=True)
    n_proc = jax.process_count()
    if t.batch_size % n_proc:
        raise ValueError(
            f'train.batch_size={t.batch_size} is not divisible by the '
            f'{n_proc} processes; use a multiple of {n_proc}.'
        )
    sources = sources_lib.make_sources(config)
    data_record.write_for_run(workdir, data_record.for_config(config, sources))
    skipped = sources_lib.skipped_files(sources)
    if any(skipped.values()):
        logging.warning(
            'data: %d files skipped at build time %s: %s',
            _count(skipped),
            {k: len(v) for k, v in skipped.items()},
            {k: v for k, v in skipped.items() if v},
        )
    ds = sources_lib.make_data(
        config, 'train', batch_size=t.batch_size // n_proc, shuffle=True, sources=sources
    )
    data_iter = iter(ds)

    graphdef, state, shardings, tx, schedule = init_state(config, mesh, rules, objective)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info(
        'model: %s trainable parameters%s; mesh %s',
        f'{n_params:,}',
        ''
        if state.frozen is None
        else f' (LoRA; {sum(x.size for x in jax.tree.leaves(state.frozen)):,} frozen)',
        dict(mesh.shape),
    )
    use_lora, save_config = state.frozen is not None, config

    mngr = ckpt.manager(
        root / 'checkpoints',
        keep=t.keep_checkpoints,
        cleanup_tmp=True,
        save_delay_s=float(t.get('debug_save_delay_s', 0.0)),
    )
    if mngr.latest_step() is not None:
        abstract = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
            state.replace(frozen=None),
        )  # LoRA checkpoints hold no base
        restored, step0 = ckpt.restore_state(mngr, abstract, data_iter)
        state = restored.replace(frozen=state.frozen)
        logging.info('Resumed from step %d in %s', step0, workdir)
    elif t.get('init_from', '') and not use_lora:
        adapt = getattr(objective, 'adapt_warm_start', None)
        state = warm_start(
            state,
            t.init_from,
            ema=bool(t.get('init_from_ema', True)),
            adapt=None if adapt is None else (lambda p: adapt(p, config)),
        )
    if use_lora:  # the base, loaded afresh on every start and checked against the checkpoint
        state, sha = lora_train.load_base(
            state,
            config,
            lora_train.saved_sha256(workdir) if mngr.latest_step() is not None else '',
        )
        save_config = lora_train.with_pointer(config, sha)
    start = int(state.step)
    ids_log = (
        _ExampleIdLog(root / 'example_ids.jsonl', start)
        if t.get('log_example_ids', False) and jax.process_index() == 0
        else None
    )
    nan_from = int(t.get('debug_nan_from_step', 0) or 0)
    sleep_s = float(t.get('debug_sleep_per_step', 0.0) or 0.0)

    step_fn = step_lib.make_train_step(graphdef, objective.loss_fn, tx, config, schedule)
    batch_keys = None
    preempted = False
    tracker = tracking.Tracker(workdir, config, enabled=jax.process_index() == 0, start_step=start)
    if start == 0:
        tracker.write_config(config)
    previews = previews_lib.Previews(config)
    profile = _Profile(t.get('profile_steps', ()), os.fspath(root / 'profile'))
    with jax.set_mesh(mesh), mesh_lib.use_rules(rules):
        train_step = step_lib.jit_train_step(step_fn, shardings)
        is_finite = jax.jit(_state_finite)
        watch = _NonfiniteWatch(state, start, t.max_nonfinite, workdir)
        meter = perf_lib.Throughput(
            config,
            n_params,
            lowered_flops=lambda: (
                train_step.lower(state, global_batch).cost_analysis().get('flops', math.nan)
            ),
        )
        metrics: dict[str, Any] = {}
        t0, last_logged = time.time(), start
        with tqdm(
            total=t.num_steps, initial=start, desc='train', disable=jax.process_index() != 0
        ) as bar:
            for step in range(start, t.num_steps):
                if pre.requested and step == start:  # signalled during start-up: nothing new
                    preempted = True
                    break
                batch = next(data_iter)
                if batch_keys is None:
                    batch_keys = [
                        k for k in ('video', 'latents', 'text_ids', 'context') if k in batch
                    ]
                inputs = {k: batch[k] for k in batch_keys}
                if nan_from and step + 1 >= nan_from:  # fault injection (test hook)
                    inputs = {
                        k: np.full_like(v, np.nan) if v.dtype.kind == 'f' else v
                        for k, v in inputs.items()
                    }
                global_batch = to_global(inputs, mesh, rules)
                profile.before(step + 1)
                with jax.profiler.StepTraceAnnotation('train', step_num=step + 1):
                    state, m = train_step(state, global_batch)
                profile.after(step + 1, state)
                watch.update(state)  # dispatched, not waited for: no host sync here
                bar.update(1)
                done = step + 1
                if ids_log is not None:  # test hook: reads the loss, a host sync every step
                    ids_log.write(done, batch['id'], float(m['loss']))
                if sleep_s:
                    time.sleep(sleep_s)
                # Every host calls the sync point every step (it is collective in multi-host).
                preempted = mngr.reached_preemption(done) or pre.requested
                checkpoint_now = done % t.checkpoint_every == 0 or done == t.num_steps or preempted
                if done % t.log_every == 0 or checkpoint_now:
                    watch.check(state, done, mngr)  # the host reads the counters only here
                if done % t.log_every == 0 or done == t.num_steps or preempted:
                    metrics = {k: float(v) for k, v in jax.device_get(m).items()}
                    elapsed = time.time() - t0
                    metrics['steps_per_sec'] = (done - last_logged) / max(elapsed, 1e-9)
                    metrics['skipped_total'] = float(watch.total)
                    metrics.update(
                        meter.perf(
                            perf_lib.batch_shape(inputs, n_proc), done - last_logged, elapsed
                        )
                    )
                    metrics.update(perf_lib.memory_in_use())
                    t0, last_logged = time.time(), done
                    bar.set_postfix(loss=f'{metrics["loss"]:.4f}')
                    _log(tracker, done, metrics)
                if t.eval_every and done % t.eval_every == 0:
                    _log(
                        tracker,
                        done,
                        evaluate(
                            config,
                            graphdef,
                            objective,
                            state_lib.on_device(state.eval_params),
                            mesh,
                            rules,
                            frozen=state.frozen,
                        ),
                    )
                    _previews(
                        tracker,
                        previews,
                        done,
                        state_lib.on_device(state.eval_params)
                        if state.frozen is None
                        else nnx.merge_state(state_lib.on_device(state.eval_params), state.frozen),
                        config,
                    )
                    t0 = time.time()  # evaluation time is not training time
                if checkpoint_now:
                    if not bool(is_finite(state)):
                        mngr.wait_until_finished()
                        raise FloatingPointError(
                            f'the train state at step {done} holds a non-finite value; not '
                            f'checkpointing it. The last checkpoint in {workdir} is kept.'
                        )
                    ckpt.save(mngr, done, state.replace(frozen=None), data_iter, save_config)
                if preempted:
                    break
        mngr.wait_until_finished()
        profile.stop()
        tracker.close()
    step = int(state.step)
    if preempted:
        where = (
            f'checkpoint at step {step} saved in {workdir}'
            if mngr.latest_step() == step
            else f'no step was taken since step {start}; nothing new to save'
        )
        logging.warning('Preempted: %s.', where)
        print(
            f'Preempted at step {step}: {where}. Resume by re-running the same command '
            f'(same --config and --workdir={workdir}); it continues from the newest '
            f'checkpoint.',
            flush=True,
        )
    if any(skipped.values()):
        logging.warning(
            'data summary: %d files skipped %s; see the warnings above for their paths.',
            _count(skipped),
            {k: len(v) for k, v in skipped.items()},
        )
    metrics['step'] = step
    metrics['nonfinite_total'] = int(state.nonfinite_total)
    metrics['preempted'] = int(preempted)
    metrics['data_skipped'] = _count(skipped)
    return metrics


def _count(skipped: dict[str, list]) -> int:
    return sum(len(v) for v in skipped.values())


def _state_finite(state) -> jax.Array:
    """True when params, EMA params and optimizer state hold no NaN/Inf (leaves kept in pinned
    host memory are copied to the device one by one: TPUs compute on device memory only)."""
    leaves = [
        jnp.all(jnp.isfinite(jax.device_put(x, jax.memory.Space.Device)))
        for x in jax.tree.leaves((state.params, state.ema_params, state.opt_state))
        if jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


class _NonfiniteWatch:
    """Skipped-update counters for the step loop, read from the devices only at `check` (log
    points, checkpoints, the end), so dispatching step n + 1 never waits for step n. `update`
    (every step, asynchronous) keeps the longest streak on the device, so `max_nonfinite` in a
    row raise at the next check even if a finite step ended the streak in between."""

    def __init__(self, state, step: int, max_nonfinite: int, workdir: str):
        self._max = jax.jit(jnp.maximum)
        # a fresh buffer: the state (and its counters) is donated to the next step
        self._peak = self._max(state.nonfinite_streak, state.nonfinite_streak)
        self._total, self._checked = int(state.nonfinite_total), step
        self.total = self._total  # skipped updates so far, as of the last check
        self._limit, self._workdir = max_nonfinite, workdir

    def update(self, state) -> None:
        self._peak = self._max(self._peak, state.nonfinite_streak)

    def check(self, state, done: int, mngr) -> None:
        """Warns about updates skipped since the last check; FloatingPointError at the limit."""
        streak, peak, total = (
            int(v)
            for v in jax.device_get((state.nonfinite_streak, self._peak, state.nonfinite_total))
        )
        if total > self._total and done - self._checked == 1:
            logging.warning(
                'step %d: non-finite loss or gradient; update skipped (%d in a row, %d in all).',
                done,
                streak,
                total,
            )
        elif total > self._total:
            logging.warning(
                'steps %d-%d: %d non-finite losses or gradients; updates skipped '
                '(%d in a row at step %d, at most %d in a row since step %d, %d in all).',
                self._checked + 1,
                done,
                total - self._total,
                streak,
                done,
                peak,
                self._checked,
                total,
            )
        self._total, self._checked = total, done
        self.total = total
        self._peak = self._max(state.nonfinite_streak, state.nonfinite_streak)  # the next span
        if peak >= self._limit:
            mngr.wait_until_finished()
            where = (
                f'at step {done}'
                if streak >= self._limit
                else f'by step {done} (counters are read every train.log_every steps)'
            )
            raise FloatingPointError(
                f'{streak if streak >= self._limit else peak} non-finite steps in a '
                f'row {where} (train.max_nonfinite={self._limit}); lower train.learning_rate or '
                f'check the data. The last checkpoint in {self._workdir} holds finite params.'
            )


class _ExampleIdLog:
    """`example_ids.jsonl`: one {"step", "ids", "loss"} line per step (process 0's shard). On
    resume, lines after the restored step (steps a killed run took but never checkpointed) are
    dropped, so the file is the data order of the run that the checkpoints hold."""

    def __init__(self, path, start: int):
        path = epath.Path(path)
        kept = []
        if path.exists() and start > 0:
            kept = [
                line + '\n'
                for line in path.read_text().splitlines()
                if line.strip() and json.loads(line)['step'] <= start
            ]
        path.write_text(''.join(kept))
        self._path = path

    def write(self, step: int, ids: np.ndarray, loss: float) -> None:
        with self._path.open('a') as f:
            f.write(
                json.dumps({'step': step, 'ids': [int(i) for i in np.asarray(ids)], 'loss': loss})
                + '\n'
            )


def evaluate(
    config, graphdef, objective, params, mesh, rules, num_batches: int | None = None, frozen=None
):
    """Mean held-out loss of the given params (LoRA: adapters over the `frozen` base) over the
    validation split (fixed RNG); {} when the dataset has no validation split (e.g. a video
    folder with data.validation_fraction=0)."""
    sources = sources_lib.make_sources(config)
    if 'validation' not in sources:
        logging.info('no validation split (splits: %s); skipping evaluation.', sorted(sources))
        return {}
    bs = min(config.train.batch_size, len(sources['validation']))
    bs -= bs % max(1, math.prod(mesh.shape[a] for a in ('data', 'fsdp')))
    if bs <= 0:
        return {}
    ds = sources_lib.make_data(
        config, 'validation', batch_size=bs, shuffle=False, num_epochs=1, sources=sources
    )
    eval_fn = jax.jit(step_lib.make_eval_step(graphdef, objective.loss_fn, config))
    totals: dict[str, float] = {}
    n = 0
    for i, batch in enumerate(ds):
        if num_batches is not None and i >= num_batches:
            break
        keys = [k for k in ('video', 'latents', 'text_ids', 'context') if k in batch]
        m = eval_fn(
            params,
            to_global({k: batch[k] for k in keys}, mesh, rules),
            jax.random.key(1234 + i),
            frozen,
        )
        for k, v in jax.device_get(m).items():
            totals[k] = totals.get(k, 0.0) + float(v)
        n += 1
    return {f'eval/{k}': v / max(n, 1) for k, v in totals.items()}


def _log(tracker: tracking.Tracker, step: int, metrics: dict[str, float]) -> None:
    if not metrics:
        return
    logging.info('step %d: %s', step, ', '.join(f'{k}={v:.4g}' for k, v in metrics.items()))
    tracker.scalars(step, metrics)


def _previews(tracker, previews, step: int, params, config) -> None:
    """Fixed-prompt videos (GIF summaries) and, for shapes prompts, the judge's scores."""
    if not previews.enabled or jax.process_count() > 1:  # sampling is single-process
        return
    videos, prompts, scores = previews(params)
    tracker.videos(
        step,
        videos,
        fps=int(config.sample.get('fps', 8)),
        scale=int(config.sample.get('display_scale', 1)),
        captions=prompts,
    )
    _log(tracker, step, scores)


class _Profile:
    """A jax.profiler trace of the 1-based steps first..last (train.profile_steps=(first, last))
    into `logdir` (TensorBoard's profile plugin / xprof read logdir/plugins/profile/*/
    *.xplane.pb); () or (0, 0): off."""

    def __init__(self, steps, logdir: str):
        steps = tuple(steps or ())
        if steps and len(steps) != 2:
            raise ValueError(
                f'train.profile_steps={steps!r} must be (first, last) 1-based '
                'steps, e.g. (5, 7), or () for no trace.'
            )
        self.first, self.last = (int(steps[0]), int(steps[1])) if steps else (0, 0)
        if self.first > self.last:
            raise ValueError(f'train.profile_steps={steps!r}: first > last; e.g. (5, 7).')
        self.logdir, self.active = logdir, False

    def before(self, step: int) -> None:
        if self.first and step == self.first:
            jax.profiler.start_trace(self.logdir)
            self.active = True

    def after(self, step: int, state) -> None:
        if self.active and step >= self.last:
            jax.block_until_ready(state)
            self.stop()

    def stop(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
            logging.info('profile of steps %d-%d written to %s', self.first, self.last, self.logdir)
