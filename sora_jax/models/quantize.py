"""Weight-only quantized DiT weights for sampling (int8 or fp8 e4m3), through qwix.

At load time every linear kernel of the block stack (`DiT.blocks`: attention q/k/v/out, the I2V
image key/value projections and the FFN; 98-99% of a Wan DiT's weights) is replaced by a
`qwix.QArray`: the int8 / float8 values plus one scale per output channel per block (absmax
calibration, `qwix.quantize`). The block stack is scanned, so the kernels are [depth, in, out] and
the scales [depth, 1, out]. Inside the jitted forward each block's kernels are dequantized
(`qwix.dequantize`) just before the block runs (`DiT._run_blocks`), so only one block's weights
are ever held in full precision; norms, biases, modulation tables, LoRA adapters kept apart and
the embedders / head outside the stack stay as loaded.

    params = quantize.quantize_params(params, 'int8')  # an nnx.State of DiT params
    quantize.weight_bytes(params)                      # bytes as stored (qvalues + scales)

A bundle stores them so (`export.py --dtype=int8`): `split` gives the int8 qvalues in the
kernels' places and the scales as a tree of their own; `join` rebuilds the QArrays at load.

`quantize_params` is a jitted tree map, so sharded params stay sharded (the qvalues take the
kernel's sharding); `abstract_params` gives the quantized shapes and shardings of abstract params
for ahead-of-time compiles (`aot/compile.py`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import qwix
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

QTYPES = {'int8': jnp.int8, 'fp8': jnp.float8_e4m3fn}


def check(quantize: str | None) -> str | None:
    """`quantize` ('int8', 'fp8', or None / '' / 'none' for full precision) checked; a
    ValueError naming the choices otherwise (before anything loads)."""
    if quantize in (None, '', 'none'):
        return None
    if quantize not in QTYPES:
        raise ValueError(
            f'quantize={quantize!r} is not one of {sorted(QTYPES)} (or none for full precision).'
        )
    return quantize


def _quantized_path(path) -> bool:
    """A block-stack linear kernel: .../blocks/.../kernel (not a LoRA adapter, norm or bias)."""
    keys = _keys(path)
    return 'blocks' in keys and keys[-1] == 'kernel'


def _is_kernel(path, x) -> bool:
    return _quantized_path(path) and getattr(x, 'ndim', 0) == 3


def _quantize_one(kernel: jax.Array, qtype) -> qwix.QArray:
    """kernel [depth, in, out] -> QArray, one scale per (block, output channel) in the
    kernel's dtype (the dtype dequantization returns)."""
    return qwix.quantize(kernel, qtype, channelwise_axes=(0, 2), scale_dtype=kernel.dtype)


def quantize_params(params, quantize: str | None):
    """DiT params (an nnx.State, concrete) with every block-stack linear kernel quantized to
    `quantize` ('int8' | 'fp8'); None returns them unchanged."""
    quantize = check(quantize)
    if quantize is None:
        return params
    qtype = QTYPES[quantize]
    one = jax.jit(lambda k: _quantize_one(k, qtype))
    return jax.tree_util.tree_map_with_path(
        lambda path, x: one(x) if _is_kernel(path, x) else x, params, is_leaf=is_quantized
    )


def abstract_params(params, quantize: str | None):
    """Abstract params (ShapeDtypeStructs with shardings) -> the same, quantized: each kernel's
    QArray with its qvalues sharded like the kernel and its scales [depth, 1, out] like the
    kernel with the input axis replicated."""
    quantize = check(quantize)
    if quantize is None:
        return params
    qtype = QTYPES[quantize]

    def one(path, a):
        if not _is_kernel(path, a):
            return a
        q = jax.eval_shape(lambda k: _quantize_one(k, qtype), a)
        sharding = a.sharding
        scale_sharding = sharding
        if isinstance(sharding, NamedSharding):
            spec = tuple(sharding.spec) + (None,) * (3 - len(sharding.spec))
            scale_sharding = NamedSharding(sharding.mesh, P(spec[0], None, spec[2]))
        return q.replace(
            qvalue=jax.ShapeDtypeStruct(q.qvalue.shape, q.qvalue.dtype, sharding=sharding),
            scale=jax.ShapeDtypeStruct(q.scale.shape, q.scale.dtype, sharding=scale_sharding),
        )

    return jax.tree_util.tree_map_with_path(one, params)


def is_quantized(x) -> bool:
    return isinstance(x, qwix.QArray)


def holds_quantized(tree) -> bool:
    return any(is_quantized(x) for x in jax.tree.leaves(tree, is_leaf=is_quantized))


def qtype_name(tree) -> str:
    """'int8' or 'fp8': the qtype of the (first) QArray in `tree`."""
    q = next(x for x in jax.tree.leaves(tree, is_leaf=is_quantized) if is_quantized(x))
    return next(name for name, t in QTYPES.items() if jnp.dtype(q.qtype) == jnp.dtype(t))


def dequantize(tree):
    """Every QArray in `tree` (e.g. one block's state inside the scan) back to a dense array of
    its scale's dtype; a tree without QArrays is returned as is."""
    if not holds_quantized(tree):
        return tree
    return jax.tree.map(
        lambda x: qwix.dequantize(x) if is_quantized(x) else x, tree, is_leaf=is_quantized
    )


def split(params):
    """Quantized params -> (the same tree with each QArray's qvalues in its place, {'path/to':
    scale} nested by path parts): two plain array trees a checkpoint can hold."""
    scales: dict = {}

    def one(path, x):
        if not is_quantized(x):
            return x
        node = scales
        keys = _keys(path)
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = x.scale
        return x.qvalue

    return jax.tree_util.tree_map_with_path(one, params, is_leaf=is_quantized), scales


def join(params, scales, quantize: str):
    """`split`'s two trees (qvalues restored in any dtype: they are cast back exactly) -> params
    with a QArray at each kernel `scales` names; a kernel named but missing is a ValueError."""
    qtype = QTYPES[check(quantize)]
    seen = []

    def one(path, x):
        node = scales
        for k in _keys(path):
            if not isinstance(node, dict) or k not in node:
                return x
            node = node[k]
        if isinstance(node, dict):
            return x
        seen.append(path)
        return qwix.QArray(qvalue=jnp.asarray(x).astype(qtype), scale=node, qtype=qtype)

    out = jax.tree_util.tree_map_with_path(one, params)
    want = len(jax.tree.leaves(scales))
    if len(seen) != want:
        raise ValueError(
            f'{want} quantization scales but {len(seen)} matching kernels: the bundle does not '
            'belong to this model; re-export it.'
        )
    return out


def _keys(path) -> list[str]:
    """A tree path's names, without the trailing `value` of an nnx.Variable's own node."""
    keys = [str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path]
    return keys[:-1] if keys and keys[-1] == 'value' else keys


def weight_bytes(params) -> int:
    """Bytes the params take as stored (QArrays: their qvalues + scales); works on concrete or
    abstract (ShapeDtypeStruct) trees."""
    return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(params))
