"""Reading Orbax checkpoints of training runs (and exported bundles): the config a run was
trained with and its (EMA) params, for sampling, evaluation and warm starts. Writing them (the
training manager, train state + grain iterator state) is `train/checkpoint.py`'s.

Orbax writes each step into a temporary directory (`<step>.orbax-checkpoint-tmp-<time>`) and
renames it when complete, so a process killed mid-save (even by SIGKILL) leaves no directory
that restores wrong: `latest_step()` never sees a temporary directory. Such leftovers are
reported with a warning when a config is read or a training manager opens (`warn_unfinished`).
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import ml_collections as mlc
import orbax.checkpoint as ocp
from absl import logging
from etils import epath


def unfinished(directory: str | os.PathLike) -> list[epath.Path]:
    """Leftovers of saves that never committed (the process stopped mid-save)."""
    directory = epath.Path(directory)
    if not directory.exists():
        return []
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_dir() and ('.orbax-checkpoint-tmp' in p.name or p.name.endswith('.tmp'))
    )


def warn_unfinished(directory: epath.Path) -> None:
    for p in unfinished(directory):
        logging.warning(
            'Ignoring unfinished checkpoint %s (the process stopped mid-save; '
            'the previous complete step is used).',
            p,
        )


def _reader(directory: epath.Path) -> ocp.CheckpointManager:
    """A read-only manager; every saved item has a handler: no "could not restore" warnings."""
    return ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(create=False),
        item_handlers={
            'state': ocp.PyTreeCheckpointHandler(),
            'data': grain.checkpoint.CheckpointHandler(),
            'config': ocp.JsonCheckpointHandler(),
        },
    )


def load_config(directory: str | os.PathLike, step: int | None = None) -> mlc.ConfigDict:
    """The config a checkpoint was trained with (checkpoint dir = a training workdir)."""
    directory = epath.Path(directory)
    if not directory.exists():
        raise ValueError(
            f'checkpoint directory {os.fspath(directory)!r} does not exist; pass the '
            'workdir of a training run (or checkpoints/shapes).'
        )
    directory = directory.absolute()
    warn_unfinished(directory)
    mngr = _reader(directory)
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise ValueError(
            f'no complete checkpoint in {os.fspath(directory)!r}; train first '
            '(experiments/train.py --workdir=...) or point at another directory.'
        )
    cfg = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))['config']
    return mlc.ConfigDict(_lists_to_tuples(cfg))


def checkpoint_dir(path: str | os.PathLike) -> str:
    """The Orbax directory of a training workdir or exported bundle (`path/checkpoints`), or
    `path` itself when it already is one."""
    sub = epath.Path(path) / 'checkpoints'
    return os.fspath(sub) if sub.is_dir() else os.fspath(path)


def restore_params(
    directory: str | os.PathLike,
    abstract_params: Any,
    *,
    ema: bool = True,
    step: int | None = None,
    missing_ok: bool = False,
) -> tuple[Any, int]:
    """Only the (EMA) params of a saved train state, for sampling: a partial restore that never
    reads the optimizer state. `abstract_params` leaves are ShapeDtypeStructs (with shardings,
    or single-device). Returns (params, step).

    Shapes are compared first; any difference is a ValueError naming the parameters. With
    `missing_ok` (fine-tuning a model that adds modules), parameters the checkpoint lacks come
    back as None and parameters only the checkpoint has are ignored."""
    directory = epath.Path(directory).absolute()
    mngr = _reader(directory)
    if step is None:
        step = mngr.latest_step()
        if step is None:
            raise ValueError(f'no complete checkpoint in {os.fspath(directory)!r}.')
    elif step not in (saved_steps := mngr.all_steps()):
        raise ValueError(
            f'{os.fspath(directory)!r} has no checkpoint at step {step}; it holds '
            f'steps {sorted(saved_steps)}. Pass one of them (or no step: the newest).'
        )
    key = 'ema_params' if ema else 'params'
    saved = _saved_leaves(mngr, step, key, directory)
    want = _flat(abstract_params)
    missing = [k for k in want if k not in saved]
    bad = [
        f'{".".join(k)}: saved {saved[k][1] if k in saved else None} vs model {want[k].shape}'
        for k in want
        if k in saved and saved[k][1] != tuple(want[k].shape)
    ]
    if not missing_ok:
        bad += [f'{".".join(k)}: saved {saved[k][1]} vs model None' for k in saved if k not in want]
        bad += [f'{".".join(k)}: saved None vs model {want[k].shape}' for k in missing]
    if bad:
        more = f' (+{len(bad) - 5} more)' if len(bad) > 5 else ''
        raise ValueError(
            f'{os.fspath(directory)!r} step {step}: {len(bad)} parameters differ '
            f'from the model: {"; ".join(sorted(bad)[:5])}{more}.'
        )
    dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])  # addressable on every host
    item, args = {}, {}
    for k, a in want.items():  # nested dicts in the saved layout, only what both trees hold
        if k not in saved:
            continue
        path = saved[k][0]
        node_i, node_a = item, args
        for part in path[:-1]:
            node_i, node_a = node_i.setdefault(part, {}), node_a.setdefault(part, {})
        node_i[path[-1]] = a
        node_a[path[-1]] = ocp.ArrayRestoreArgs(
            sharding=getattr(a, 'sharding', None) or dev, dtype=a.dtype
        )
    out = mngr.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                item={key: item}, restore_args={key: args}, partial_restore=True
            )
        ),
    )['state'][key]
    values = {}
    for k in want:
        if k in saved:
            node = out
            for part in saved[k][0]:
                node = node[part]
            values[k] = node
    leaves = [values.get(k) for k in want]
    treedef = jax.tree_util.tree_structure(abstract_params)
    return jax.tree_util.tree_unflatten(treedef, leaves), step


def _name(entry) -> str:
    """DictKey / SequenceKey / GetAttrKey -> str ('0' and 0 alike)."""
    for attr in ('key', 'idx', 'name'):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _flat(tree) -> dict:
    """{path tuple (without a trailing 'value' of Variable leaves): leaf}, in tree order."""
    out = {}
    for p, x in jax.tree_util.tree_leaves_with_path(tree):
        parts = tuple(_name(e) for e in p)
        out[parts[:-1] if parts[-1] == 'value' else parts] = x
    return out


def _saved_leaves(mngr, step: int, key: str, directory) -> dict:
    """{normalised path: (saved path, shape)} of the `key` tree, from metadata alone."""
    meta = mngr.item_metadata(step)['state']
    meta = getattr(meta, 'tree', meta)
    if key not in meta:
        raise ValueError(f'{os.fspath(directory)!r} step {step} holds no {key!r}.')
    out = {}
    for p, x in jax.tree_util.tree_leaves_with_path(meta[key]):
        parts = tuple(_name(e) for e in p)
        norm = parts[:-1] if parts[-1] == 'value' else parts
        out[norm] = (parts, tuple(getattr(x, 'shape', ())))
    return out


def _lists_to_tuples(x):
    if isinstance(x, dict):
        return {k: _lists_to_tuples(v) for k, v in x.items()}
    if isinstance(x, list):
        return tuple(_lists_to_tuples(v) for v in x)
    return x
