"""Context-parallel attention for long token sequences, over the mesh axis of `act_length`.

Activations of a long video are sharded along tokens (logical `act_length` -> mesh 'sequence').
Plain attention under automatic sharding then gathers all keys/values on every device. The two
explicit schemes below (inside `jax.shard_map`) keep memory per device at N / S tokens:

  'ulysses'  DeepSpeed-Ulysses: an all-to-all turns [B, N/S, H, D] (tokens sharded) into
             [B, N, H/S, D] (heads sharded), any local kernel attends over the full sequence
             (`models/attention_kernels.attend`), a second all-to-all turns it back.
             Needs the local head count divisible by S. Two all-to-alls of q/k/v/o per call.
  'ring'     Ring attention: each device keeps its query chunk and passes its key/value chunk
             around the ring (`ppermute`) S times, merging blocks with an online softmax.
             Works for any head count; S-1 key/value hops per call.

Both equal plain attention up to float rounding (tests/parallel/test_context.py). Without a
mesh in scope, or with a sequence axis of size 1, they are plain attention.

    out = context_parallel_attention(q, k, v, mask, method='ulysses', impl='xla')
q: [B, Nq, H, D], k/v: [B, Nk, H, D], mask: [B, Nk] (True = attend) or None; Nq, Nk divisible
by the sequence axis size.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from sora_jax.models import attention_kernels as kernels
from sora_jax.parallel import mesh as mesh_lib

METHODS = ('none', 'ulysses', 'ring')
_QKV_AXES = ('act_batch', 'act_length', 'act_heads', None)


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(
            f'context_parallel={method!r} is not one of {METHODS}; set '
            'model.context_parallel to one.'
        )
    return method


def sequence_axis(rules=None) -> tuple[str | None, int]:
    """(mesh axis that shards tokens, its size) for the mesh in scope; (None, 1) without one."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return None, 1
    rules = (
        rules
        if rules is not None
        else (mesh_lib._ACTIVE_RULES[-1] if mesh_lib._ACTIVE_RULES else mesh_lib.rules_dict())
    )
    spec = mesh_lib.logical_to_spec(('act_length',), rules)
    axis = spec[0] if len(spec) else None
    if axis is None:
        return None, 1
    if not isinstance(axis, str):
        raise ValueError(
            f'act_length maps to several mesh axes {axis}; context parallelism '
            'needs exactly one (set mesh.rules act_length to one axis).'
        )
    return axis, mesh.shape[axis]


def context_parallel_attention(
    q, k, v, mask=None, *, method: str = 'ulysses', impl: str = 'auto', chunk_size: int = 512
):
    """Attention with tokens sharded over the sequence mesh axis; see the module docstring."""

    check_method(method)
    plain = functools.partial(kernels.attend, impl=impl, chunk_size=chunk_size)
    axis, s = sequence_axis()
    if method == 'none' or s == 1:
        return plain(q, k, v, mask)
    mesh = jax.sharding.get_abstract_mesh()
    b, nq, h, d = q.shape
    nk = k.shape[1]
    for name, n in (('queries', nq), ('keys', nk)):
        if n % s:
            raise ValueError(
                f'context_parallel={method!r}: {n} {name} are not divisible by the '
                f"'{axis}' mesh axis of size {s}; pick a clip size whose token count "
                f'is a multiple of {s}, or set model.context_parallel=none.'
            )
    rules = mesh_lib._ACTIVE_RULES[-1] if mesh_lib._ACTIVE_RULES else mesh_lib.rules_dict()
    spec = mesh_lib._fit(mesh_lib.logical_to_spec(_QKV_AXES, rules), q.shape, mesh)
    spec_k = mesh_lib._fit(spec, k.shape, mesh)
    if spec[1] != axis or spec_k[1] != axis:
        raise ValueError(
            f'context parallelism needs tokens on the {axis!r} axis, got q spec '
            f'{spec} and k spec {spec_k}; check mesh.rules for act_length.'
        )
    if method == 'ulysses':
        head_shards = math.prod(mesh.shape[a] for a in _names(spec[2]))
        if (h // head_shards) % s:
            raise ValueError(
                f"context_parallel='ulysses': {h // head_shards} heads per device are "
                f"not divisible by the '{axis}' axis size {s}; use "
                'model.context_parallel=ring or a head count divisible by it.'
            )
        body = functools.partial(_ulysses, axis=axis, attend=plain)
    else:
        body = functools.partial(_ring, axis=axis, size=s)
    if mask is None:
        fn = jax.shard_map(
            lambda q_, k_, v_: body(q_, k_, v_, None),
            in_specs=(spec, spec_k, spec_k),
            out_specs=spec,
            check_vma=False,
        )
        return fn(q, k, v)
    fn = jax.shard_map(
        body, in_specs=(spec, spec_k, spec_k, P(spec[0], axis)), out_specs=spec, check_vma=False
    )
    return fn(q, k, v, mask.astype(bool))


def _names(entry) -> tuple[str, ...]:
    return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def _ulysses(q, k, v, mask, *, axis, attend):
    """Local q/k/v: [b, n/S, h, D] -> all-to-all -> [b, n, h/S, D] -> attend -> back."""
    to_heads = lambda x: jax.lax.all_to_all(x, axis, split_axis=2, concat_axis=1, tiled=True)
    if mask is not None:
        mask = jax.lax.all_gather(mask, axis, axis=1, tiled=True)  # [b, n] (booleans: cheap)
    out = attend(to_heads(q), to_heads(k), to_heads(v), mask)
    return jax.lax.all_to_all(out, axis, split_axis=1, concat_axis=2, tiled=True)


def _ring(q, k, v, mask, *, axis, size):
    """Local q: [b, nq, h, D]; k/v: [b, nk, h, D] chunks hop around the ring S times."""
    b, nq, h, d = q.shape
    qs = q.astype(jnp.float32) * (1.0 / math.sqrt(d))
    perm = [(i, (i + 1) % size) for i in range(size)]
    acc = jnp.zeros((b, h, nq, d), jnp.float32)
    m = jnp.full((b, h, nq), -jnp.inf, jnp.float32)
    l = jnp.zeros((b, h, nq), jnp.float32)
    for step in range(size):
        acc, m, l = kernels.online_softmax_step((acc, m, l), qs, k, v, mask)
        if step + 1 < size:
            k, v = (jax.lax.ppermute(x, axis, perm) for x in (k, v))
            mask = None if mask is None else jax.lax.ppermute(mask, axis, perm)
    out = acc / jnp.maximum(l, 1e-30)[..., None]
    return out.transpose(0, 2, 1, 3).astype(q.dtype)
