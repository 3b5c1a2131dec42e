"""Device mesh from config, logical axis rules, and shardings for params / batches / activations.

This is the only module that names mesh axes. Models annotate parameters with logical names
(see `models/layers.py`) and activations via `constrain(x, ('act_batch', 'act_length', ...))`;
the rules below (overridable from the config as `mesh.rules`) map them to mesh axes.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ('data', 'fsdp', 'tensor', 'sequence')

# logical name -> mesh axis / tuple of mesh axes / None (replicated)
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    # parameters
    ('embed', 'fsdp'),
    ('embed_out', None),
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('mod', 'tensor'),
    ('kv', None),
    ('vocab', 'tensor'),
    ('norm', None),
    ('layers', None),
    ('patch', None),
    ('conv_in', None),
    ('conv_out', 'tensor'),
    # activations
    ('act_batch', ('data', 'fsdp')),
    ('act_length', 'sequence'),
    ('act_embed', None),
    ('act_heads', 'tensor'),
    ('act_kv_length', None),
)

_ACTIVE_RULES: list[dict[str, Any]] = []


def make_mesh(shape: Sequence[int], axes: Sequence[str] = AXES, devices=None) -> Mesh:
    """Mesh with Auto axes (logical-rules code needs Auto, not Explicit, axes).

    `shape` entries of -1 take the remaining devices (at most one).
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = list(shape)
    if len(shape) != len(axes):
        raise ValueError(f'mesh.shape {tuple(shape)} must have one entry per axis {tuple(axes)}.')
    if shape.count(-1) > 1:
        raise ValueError(f'mesh.shape {tuple(shape)} has more than one -1; fix all but one axis.')
    if -1 in shape:
        rest = math.prod(s for s in shape if s != -1)
        if len(devices) % rest:
            raise ValueError(
                f'mesh.shape {tuple(shape)}: {len(devices)} devices are not divisible '
                f'by {rest}; change mesh.shape.'
            )
        shape[shape.index(-1)] = len(devices) // rest
    if math.prod(shape) != len(devices):
        raise ValueError(
            f'mesh.shape {tuple(shape)} multiplies to {math.prod(shape)} but there are '
            f'{len(devices)} devices; make the product equal the device count '
            f'(or use -1 for one axis).'
        )
    arr = np.asarray(devices).reshape(shape)
    return Mesh(arr, tuple(axes), axis_types=(AxisType.Auto,) * len(axes))


def rules_dict(rules=None) -> dict[str, Any]:
    out = dict(DEFAULT_RULES)
    if rules:
        out.update({k: (tuple(v) if isinstance(v, list) else v) for k, v in dict(rules).items()})
    return out


def logical_to_spec(axes: Sequence[str | None], rules: dict[str, Any] | None = None) -> P:
    """Map logical axis names to a PartitionSpec; unknown names are an error."""
    rules = rules_dict() if rules is None else rules
    out = []
    used: set[str] = set()
    for a in axes:
        if a is None:
            out.append(None)
            continue
        if a not in rules:
            raise ValueError(f'logical axis {a!r} has no rule; add it to mesh.rules in the config.')
        m = rules[a]
        ms = (m,) if isinstance(m, str) else tuple(m or ())
        ms = tuple(x for x in ms if x not in used)  # a mesh axis may shard one dim only
        used.update(ms)
        out.append(None if not ms else ms[0] if len(ms) == 1 else ms)
    return P(*out)


def state_shardings(state, mesh: Mesh, rules: dict[str, Any] | None = None):
    """NamedSharding for every leaf of an nnx State (abstract or concrete) from its logical axes.

    Dimensions that the mesh axes do not divide are replicated instead.
    """
    rules = rules_dict() if rules is None else rules

    def one(v):
        names = v.get_metadata().get('out_sharding') if isinstance(v, nnx.Variable) else None
        shape = v.shape if hasattr(v, 'shape') else ()
        if not names:
            spec = P()
        else:
            spec = _fit(logical_to_spec(names, rules), shape, mesh)
        return (
            v.replace(NamedSharding(mesh, spec))
            if isinstance(v, nnx.Variable)
            else NamedSharding(mesh, spec)
        )

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def _fit(spec: P, shape, mesh: Mesh) -> P:
    out = []
    for i, s in enumerate(tuple(spec) + (None,) * (len(shape) - len(spec))):
        if s is None:
            out.append(None)
            continue
        names = (s,) if isinstance(s, str) else tuple(s)
        size = math.prod(mesh.shape[n] for n in names)
        out.append(s if shape[i] % size == 0 else None)
    return P(*out)


def batch_sharding(mesh: Mesh, ndim: int, rules=None) -> NamedSharding:
    """Batch arrays: leading dim over the batch mesh axes, the rest replicated."""
    spec = logical_to_spec(
        ('act_batch',), rules_dict(rules) if not isinstance(rules, dict) else rules
    )
    return NamedSharding(mesh, P(*(tuple(spec) + (None,) * (ndim - 1))))


class use_rules:
    """Context in which `constrain` maps logical activation axes with these rules."""

    def __init__(self, rules=None):
        self.rules = rules_dict(rules) if not isinstance(rules, dict) else rules

    def __enter__(self):
        _ACTIVE_RULES.append(self.rules)
        return self.rules

    def __exit__(self, *exc):
        _ACTIVE_RULES.pop()


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """with_sharding_constraint by logical names; a no-op without a mesh in scope."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return x
    rules = _ACTIVE_RULES[-1] if _ACTIVE_RULES else rules_dict()
    spec = _fit(logical_to_spec(axes, rules), x.shape, mesh)
    return jax.lax.with_sharding_constraint(x, spec)
