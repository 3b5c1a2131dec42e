"""Orbax checkpoints: train state + grain iterator state + the config, written atomically.

Orbax writes each step into a temporary directory and renames it when complete, so a process
killed mid-save leaves no directory that restores wrong; such leftovers are ignored (and
reported) when the manager opens.
"""
from __future__ import annotations

import json
import os
from typing import Any

import grain
import jax
import ml_collections as mlc
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

ITEMS = ('state', 'data', 'config')


def _warn_unfinished(directory: epath.Path) -> None:
    if not directory.exists():
        return
    for p in directory.iterdir():
        if p.is_dir() and ('.orbax-checkpoint-tmp' in p.name or p.name.endswith('.tmp')):
            logging.warning('Ignoring unfinished checkpoint %s (the process stopped mid-save; '
                            'the previous complete step is used).', p)


def manager(directory: str | os.PathLike, *, keep: int = 2, create: bool = True,
            async_save: bool = True) -> ocp.CheckpointManager:
    directory = epath.Path(directory).absolute()
    _warn_unfinished(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create,
                                           enable_async_checkpointing=async_save)
    handlers = {'state': ocp.StandardCheckpointHandler(),
                'data': grain.checkpoint.CheckpointHandler(),
                'config': ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def save(mngr: ocp.CheckpointManager, step: int, state: Any, data_iter=None, config=None,
         *, force: bool = False) -> bool:
    items = {'state': ocp.args.StandardSave(state)}
    if data_iter is not None:
        items['data'] = grain.checkpoint.CheckpointSave(data_iter)
    if config is not None:
        items['config'] = ocp.args.JsonSave(json.loads(config.to_json_best_effort()))
    return mngr.save(step, args=ocp.args.Composite(**items), force=force)


def restore_state(mngr: ocp.CheckpointManager, abstract_state: Any, data_iter=None,
                  step: int | None = None):
    """Restores into `abstract_state`'s structure/shardings; the iterator is restored in place."""
    step = mngr.latest_step() if step is None else step
    items = {'state': ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
        items['data'] = grain.checkpoint.CheckpointRestore(data_iter)
    out = mngr.restore(step, args=ocp.args.Composite(**items))
    return out['state'], step


def load_config(directory: str | os.PathLike, step: int | None = None) -> mlc.ConfigDict:
    """The config a checkpoint was trained with (checkpoint dir = a training workdir)."""
    directory = epath.Path(directory)
    if not directory.exists():
        raise ValueError(f'checkpoint directory {os.fspath(directory)!r} does not exist; pass the '
                         'workdir of a training run (or checkpoints/shapes).')
    mngr = manager(directory, create=False)
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise ValueError(f'no complete checkpoint in {os.fspath(directory)!r}; train first '
                         '(experiments/train.py --workdir=...) or point at another directory.')
    cfg = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))['config']
    return mlc.ConfigDict(_lists_to_tuples(cfg))


def restore_params(directory: str | os.PathLike, abstract_params: Any, *, ema: bool = True,
                   step: int | None = None) -> tuple[Any, int]:
    """Only the (EMA) params of a saved train state, for sampling: a partial restore that never
    reads the optimizer state. `abstract_params` leaves are ShapeDtypeStructs (with shardings,
    or single-device). Returns (params, step)."""
    directory = epath.Path(directory).absolute()
    mngr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False),
                                 item_handlers={'state': ocp.PyTreeCheckpointHandler()})
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise ValueError(f'no complete checkpoint in {os.fspath(directory)!r}.')
    key = 'ema_params' if ema else 'params'
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    item = {key: abstract_params}
    restore_args = {key: jax.tree.map(lambda a: ocp.ArrayRestoreArgs(
        sharding=getattr(a, 'sharding', None) or dev, dtype=a.dtype), abstract_params)}
    out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True)))
    return out['state'][key], step


def _lists_to_tuples(x):
    if isinstance(x, dict):
        return {k: _lists_to_tuples(v) for k, v in x.items()}
    if isinstance(x, list):
        return tuple(_lists_to_tuples(v) for v in x)
    return x


class _QuietOrbax:
    """logging filter: drop Orbax's INFO chatter (one line per file per save), keep warnings."""

    def filter(self, record) -> bool:
        return record.levelno >= 30 or '/orbax/' not in record.pathname


def quiet_orbax_logs() -> None:
    import logging as pylogging
    pylogging.getLogger('absl').addFilter(_QuietOrbax())
