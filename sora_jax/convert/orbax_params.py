"""The Orbax layout of one converted component's params: flat NNX paths ('blocks/attn1/to_q/kernel')
nested into dicts, saved with `ocp.StandardCheckpointer` in the checkpoint dtype.

  save_params(flat, path)            flat {path: np.ndarray} -> Orbax checkpoint at `path`
  restore_params(path)               -> flat {path: np.ndarray} (a whole copy on this host)
  saved_arrays(path)                 -> flat {path: (shape, dtype)} from the metadata only
  restore_sharded(path, targets)     -> flat {path: jax.Array}, each read straight into the
                                        sharding of its `jax.ShapeDtypeStruct` target: every
                                        process reads only the slices its devices hold

`wan.py` writes this layout and `checkpoint.py` reads it; both import it from here (neither
imports the other for it).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np


def unflatten(flat: Mapping[str, Any]) -> dict:
    tree: dict = {}
    for path, arr in flat.items():
        node = tree
        *parents, leaf = path.split('/')
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = arr
    return tree


def flatten(tree: Mapping, prefix: str = '', as_numpy: bool = True) -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        path = f'{prefix}/{k}' if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(v, path, as_numpy))
        else:
            out[path] = np.asarray(v) if as_numpy else v
    return out


def save_params(flat: Mapping[str, np.ndarray], path: str) -> None:
    """Writes the nested params pytree as an Orbax (StandardCheckpointer) checkpoint at `path`."""
    import orbax.checkpoint as ocp

    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.abspath(path), unflatten(flat), force=True)
    ckptr.wait_until_finished()


def restore_params(path: str) -> dict[str, np.ndarray]:
    """Reads a checkpoint written by `save_params` back as a flat dict of numpy arrays."""
    import orbax.checkpoint as ocp

    return flatten(ocp.StandardCheckpointer().restore(os.path.abspath(path)))


def saved_arrays(path: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Flat {path: (shape, dtype)} of a `save_params` checkpoint, read from its metadata."""
    import orbax.checkpoint as ocp

    meta = ocp.StandardCheckpointer().metadata(os.path.abspath(path)).item_metadata
    tree = getattr(meta, 'tree', meta)
    return {
        k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in flatten(tree, as_numpy=False).items()
    }


def restore_sharded(path: str, targets: Mapping[str, Any]) -> dict[str, Any]:
    """Restores a `save_params` checkpoint into `targets` (flat {path: jax.ShapeDtypeStruct with
    a sharding}): each array arrives in its target's sharding and dtype, and each process reads
    only the slices of its own devices. Raises ValueError naming paths or shapes that differ."""
    import orbax.checkpoint as ocp

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
