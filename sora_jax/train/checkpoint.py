"""Orbax checkpoints of a training run: train state + grain iterator state + the config, written
atomically. Reading a run's config and params (sampling, evaluation, warm starts) is
`io/checkpoint.py`'s.

Orbax writes each step into a temporary directory (`<step>.orbax-checkpoint-tmp-<time>`) and
renames it when complete, so a process killed mid-save (even by SIGKILL) leaves no directory
that restores wrong: `latest_step()` never sees a temporary directory. Such leftovers are
reported with a warning when a manager opens, and removed by the training manager
(`cleanup_tmp=True`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import weakref
from typing import Any

import grain
import orbax.checkpoint as ocp
from etils import epath

from sora_jax.io import checkpoint as ckpt_io

ITEMS = ('state', 'data', 'config')


class _DelayedJsonHandler(ocp.JsonCheckpointHandler):
    """Fault-injection test hook (`train.debug_save_delay_s`): the config item's write waits, so
    every save stays uncommitted (a `*.orbax-checkpoint-tmp*` directory) for that long and a
    test can kill the process mid-save. Orbax finds a handler through the args classes
    registered for its exact type, so the hook has its own (`_DelayedJsonSave` /
    `_DelayedJsonRestore`, the same fields and on-disk JSON as JsonSave / JsonRestore)."""

    def __init__(self, delay_s: float):
        super().__init__()
        self._delay_s = delay_s

    async def _save_fn(self, x, directory):
        await asyncio.sleep(self._delay_s)
        await super()._save_fn(x, directory)


@ocp.args.register_with_handler(_DelayedJsonHandler, for_save=True)
@dataclasses.dataclass
class _DelayedJsonSave(ocp.args.JsonSave):
    pass


@ocp.args.register_with_handler(_DelayedJsonHandler, for_restore=True)
@dataclasses.dataclass
class _DelayedJsonRestore(ocp.args.JsonRestore):
    pass


_DELAYED: weakref.WeakSet = weakref.WeakSet()  # managers whose config item is delayed


def manager(
    directory: str | os.PathLike,
    *,
    keep: int = 2,
    create: bool = True,
    async_save: bool = True,
    cleanup_tmp: bool = False,
    save_delay_s: float = 0.0,
) -> ocp.CheckpointManager:
    """Orbax manager with items state/data/config. `cleanup_tmp` removes unfinished saves (after
    warning about them); `save_delay_s` > 0 is a test hook (see `_DelayedJsonHandler`)."""
    directory = epath.Path(directory).absolute()
    ckpt_io.warn_unfinished(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=create,
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=cleanup_tmp and create,
    )
    handlers = {
        'state': ocp.StandardCheckpointHandler(),
        'data': grain.checkpoint.CheckpointHandler(),
        'config': (
            _DelayedJsonHandler(save_delay_s) if save_delay_s > 0 else ocp.JsonCheckpointHandler()
        ),
    }
    mngr = ocp.CheckpointManager(directory, options=options, item_handlers=handlers)
    if save_delay_s > 0:
        _DELAYED.add(mngr)
    return mngr


def save(
    mngr: ocp.CheckpointManager,
    step: int,
    state: Any,
    data_iter=None,
    config=None,
    *,
    force: bool = False,
) -> bool:
    items = {'state': ocp.args.StandardSave(state)}
    if data_iter is not None:
        items['data'] = grain.checkpoint.CheckpointSave(data_iter)
    if config is not None:
        save_args = _DelayedJsonSave if mngr in _DELAYED else ocp.args.JsonSave
        items['config'] = save_args(json.loads(config.to_json_best_effort()))
    return mngr.save(step, args=ocp.args.Composite(**items), force=force)


def restore_state(
    mngr: ocp.CheckpointManager, abstract_state: Any, data_iter=None, step: int | None = None
):
    """Restores into `abstract_state`'s structure/shardings; the iterator is restored in place."""
    step = mngr.latest_step() if step is None else step
    items = {'state': ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
        items['data'] = grain.checkpoint.CheckpointRestore(data_iter)
    out = mngr.restore(step, args=ocp.args.Composite(**items))
    return out['state'], step


class _QuietOrbax:
    """logging filter: drop Orbax's INFO chatter (one line per file per save), keep warnings."""

    def filter(self, record) -> bool:
        return record.levelno >= 30 or '/orbax/' not in record.pathname


def quiet_orbax_logs() -> None:
    import logging as pylogging

    pylogging.getLogger('absl').addFilter(_QuietOrbax())
