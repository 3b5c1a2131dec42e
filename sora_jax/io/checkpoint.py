"""Reading checkpoints, the one module that does: the config and (EMA) params of a training run
or exported bundle (sampling, evaluation, warm starts, LoRA bases), the flat per-component layout
of a converted Wan folder (read whole, or each array straight into its sharding), and the check
that restored weights are finite. Writing a training run (the manager: train state + grain
iterator state + config) is `train/checkpoint.py`'s; building models from a converted Wan folder
is `convert/checkpoint.py`'s.

Orbax writes each step into a temporary directory (`<step>.orbax-checkpoint-tmp-<time>`) and
renames it when complete, so a process killed mid-save (even by SIGKILL) leaves no directory
that restores wrong: `latest_step()` never sees a temporary directory. Such leftovers are
reported with a warning when a config is read or a training manager opens (`warn_unfinished`).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Mapping

import grain
import jax
import ml_collections as mlc
import numpy as np
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
    # Closed on every path: a manager left open at exit (after a read error) has Orbax's
    # background threads print tracebacks after the CLI's one-line error.
    with contextlib.closing(_reader(directory)) as mngr:
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
    with contextlib.closing(_reader(directory)) as mngr:
        if step is None:
            step = mngr.latest_step()
            if step is None:
                raise ValueError(f'no complete checkpoint in {os.fspath(directory)!r}.')
        elif step not in (saved_steps := mngr.all_steps()):
            raise ValueError(
                f'{os.fspath(directory)!r} has no checkpoint at step {step}; it holds '
                f'steps {sorted(saved_steps)}. Pass one of them (or no step: the newest).'
            )
        key = 'ema_params' if ema and _holds(mngr, step, 'ema_params') else 'params'
        saved = _saved_leaves(mngr, step, key, directory)  # a run with train.ema='off': its params
        want = _flat(abstract_params)
        missing = [k for k in want if k not in saved]
        bad = [
            f'{".".join(k)}: saved {saved[k][1] if k in saved else None} vs model {want[k].shape}'
            for k in want
            if k in saved and saved[k][1] != tuple(want[k].shape)
        ]
        if not missing_ok:
            bad += [
                f'{".".join(k)}: saved {saved[k][1]} vs model None' for k in saved if k not in want
            ]
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
        out = _restore_part(mngr, step, key, item, args)
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


def restore_tree(directory: str | os.PathLike, key: str, step: int) -> dict | None:
    """The whole `key` tree of checkpoint `step` as saved (nested dicts of single-device
    arrays in their saved dtypes), e.g. an int8 bundle's `ema_scales`; None if the step holds
    no such tree."""
    directory = epath.Path(directory).absolute()
    with contextlib.closing(_reader(directory)) as mngr:
        if not _holds(mngr, step, key):
            return None
        meta = mngr.item_metadata(step)['state']
        meta = getattr(meta, 'tree', meta)
        dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        item = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), meta[key])
        args = jax.tree.map(lambda m: ocp.ArrayRestoreArgs(sharding=dev, dtype=m.dtype), meta[key])
        return _restore_part(mngr, step, key, item, args)


def _restore_part(mngr, step: int, key: str, item, args):
    """The `key` tree of a saved train state, only the leaves `item` holds (partial restore)."""
    return mngr.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                item={key: item}, restore_args={key: args}, partial_restore=True
            )
        ),
    )['state'][key]


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


def _holds(mngr, step: int, key: str) -> bool:
    meta = mngr.item_metadata(step)['state']
    meta = getattr(meta, 'tree', meta)
    return meta.get(key) is not None


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


def check_finite(tree, where: str) -> None:
    """Raises a ValueError naming `where` (the checkpoint) and the first parameter holding a NaN
    or inf; sampling from such weights gives black videos. One device reduction per array."""
    flat = [(k, x) for k, x in _flat(tree).items() if x is not None]
    floats = [(k, x) for k, x in flat if jax.numpy.issubdtype(x.dtype, jax.numpy.inexact)]
    if not floats:
        return
    arrays = [x for _, x in floats]
    if all(_on_host(x) for x in arrays):  # read in place: no program to compile for each tree
        ok = [bool(np.isfinite(np.asarray(x)).all()) for x in arrays]
    else:
        ok = jax.device_get(_all_finite(arrays))
    bad = [k for (k, _), good in zip(floats, ok) if not good]
    if bad:
        raise ValueError(
            f'{where}: parameter {"/".join(bad[0])} holds NaN or inf ({len(bad)} arrays in all); '
            're-export the checkpoint or restore a good copy.'
        )


def _on_host(x) -> bool:
    return isinstance(x, np.ndarray) or all(d.platform == 'cpu' for d in x.devices())


@jax.jit
def _all_finite(arrays):
    return [jax.numpy.isfinite(x).all() for x in arrays]


# ----------------------------------------------------------------------------- converted components
# One component of a converted Wan folder (`convert/checkpoint.py`): flat NNX paths
# ('blocks/attn1/to_q/kernel') nested into dicts, saved with `ocp.StandardCheckpointer` in the
# checkpoint dtype. `convert/wan.py` writes it with `save_flat`.


def unflatten(flat: Mapping[str, Any]) -> dict:
    """{'a/b/c': x} -> {'a': {'b': {'c': x}}}."""
    tree: dict = {}
    for path, arr in flat.items():
        node = tree
        *parents, leaf = path.split('/')
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = arr
    return tree


def flatten(tree: Mapping, prefix: str = '', as_numpy: bool = True) -> dict[str, Any]:
    """Nested dicts -> {'a/b/c': leaf} (numpy arrays unless `as_numpy=False`)."""
    out = {}
    for k, v in tree.items():
        path = f'{prefix}/{k}' if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(v, path, as_numpy))
        else:
            out[path] = np.asarray(v) if as_numpy else v
    return out


def save_flat(flat: Mapping[str, np.ndarray], path: str) -> None:
    """Writes the nested params pytree as an Orbax (StandardCheckpointer) checkpoint at `path`."""
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.abspath(path), unflatten(flat), force=True)
    ckptr.wait_until_finished()


def restore_flat(path: str) -> dict[str, np.ndarray]:
    """Reads a checkpoint written by `save_flat` back as a flat dict of numpy arrays."""
    return flatten(ocp.StandardCheckpointer().restore(os.path.abspath(path)))


def saved_arrays(path: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Flat {path: (shape, dtype)} of a `save_flat` checkpoint, read from its metadata."""
    meta = ocp.StandardCheckpointer().metadata(os.path.abspath(path)).item_metadata
    tree = getattr(meta, 'tree', meta)
    return {
        k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in flatten(tree, as_numpy=False).items()
    }


def restore_sharded(path: str, targets: Mapping[str, Any]) -> dict[str, Any]:
    """Restores a `save_flat` checkpoint into `targets` (flat {path: jax.ShapeDtypeStruct with
    a sharding}): each array arrives in its target's sharding and dtype, and each process reads
    only the slices of its own devices. Raises ValueError naming paths or shapes that differ."""
    saved = saved_arrays(path)
    missing = sorted(set(targets) - set(saved))
    extra = sorted(set(saved) - set(targets))
    bad = [
        f'{k}: saved {saved[k][0]} vs model {tuple(targets[k].shape)}'
        for k in sorted(set(saved) & set(targets))
        if saved[k][0] != tuple(targets[k].shape)
    ]
    if missing or extra or bad:
        raise ValueError(
            f'{path!r} does not match the model: missing {missing[:8]}, unexpected '
            f'{extra[:8]}, shapes {bad[:8]}; convert the folder again with the '
            'current code, or check the component config.'
        )
    restored = ocp.StandardCheckpointer().restore(os.path.abspath(path), unflatten(targets))
    return flatten(restored, as_numpy=False)
