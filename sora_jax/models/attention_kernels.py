"""Local attention kernels and the choice among them; `models/attention.py` dispatches to them.

q: [B, Nq, H, D], k/v: [B, Nk, H, D], mask: [B, Nk] (True = attend) or None -> [B, Nq, H, D]
in q's dtype. Kernels:
  'xla'     plain XLA ops (any backend; materialises the [Nq, Nk] scores), with its own gradient
            (the saved probabilities and FlashAttention's rowsum(dO * O) in place of autodiff
            through the softmax's max, exp, sum and divide: on XLA:CPU the autodiff form ran
            its softmax-backward fusion at 24 GFLOP/s, `experiments/benchmark.py dit --profile`)
  'cudnn'   jax.nn.dot_product_attention(implementation='cudnn') - fused flash attention, GPU
  'chunked' queries in chunks with an online softmax over key chunks (the [Nq, Nk] scores never
            materialise in the forward pass; its gradient keeps one chunk pair per step)
  'splash'  Pallas splash attention (TPU): flash forward and backward kernels; sequences are
            padded to the block size and the padding masked with segment ids
  'auto'    cudnn on GPU, splash on TPU, xla elsewhere

The platform is the *compile target*: the platform of the mesh in scope (`jax.set_mesh`, e.g. a
TPU topology compiled ahead of time on a CPU host by `experiments/aot.py`), else
`jax.default_backend()`.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from sora_jax.parallel import mesh as mesh_lib

IMPLS = ('auto', 'xla', 'cudnn', 'chunked', 'splash')
SPLASH_BLOCK = 512  # splash q / kv tile (tokens); short sequences use one padded tile
_QKV_AXES = ('act_batch', 'act_length', 'act_heads', None)
_KV_AXES = ('act_batch', 'act_kv_length', 'act_heads', None)


def target_platform() -> str:
    """'tpu' / 'gpu' / 'cpu' of the mesh in scope (what is being compiled for), else the default
    backend."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh is None or mesh.empty else getattr(mesh, 'abstract_device', None)
    platform = getattr(device, 'platform', None)
    return platform or jax.default_backend()


def resolve_impl(impl: str, platform: str | None = None) -> str:
    if impl not in IMPLS:
        raise ValueError(
            f'attention impl {impl!r} is not one of {IMPLS}; set model.attention to one.'
        )
    if impl != 'auto':
        return impl
    platform = target_platform() if platform is None else platform
    return {'gpu': 'cudnn', 'tpu': 'splash'}.get(platform, 'xla')


def attend(q, k, v, mask=None, *, impl: str = 'auto', chunk_size: int = 512):
    """One attention call with the chosen kernel (no context parallelism)."""
    impl = resolve_impl(impl)
    if impl == 'chunked':
        if not _inside_shard_map():  # gather keys / values over tokens once, not per key chunk
            k, v = (mesh_lib.constrain(x, _KV_AXES) for x in (k, v))
        return chunked_attention(q, k, v, mask, chunk_size=chunk_size)
    if impl == 'splash':
        return splash_attention(q, k, v, mask)
    bias_mask = None if mask is None else mask[:, None, None, :]
    if impl == 'cudnn':
        if q.dtype not in (jnp.bfloat16, jnp.float16):
            # cuDNN flash attention runs in half precision only.
            out = jax.nn.dot_product_attention(
                q.astype(jnp.bfloat16),
                k.astype(jnp.bfloat16),
                v.astype(jnp.bfloat16),
                mask=bias_mask,
                implementation='cudnn',
            )
            return out.astype(q.dtype)
        return jax.nn.dot_product_attention(q, k, v, mask=bias_mask, implementation='cudnn')
    return xla_attention(q, k, v, mask)


def xla_attention(q, k, v, mask=None):
    """Softmax attention in XLA ops; q: [B, Nq, H, D], k / v: [B, Nk, H, D], mask: [B, Nk].

    The same numbers as `jax.nn.dot_product_attention(implementation='xla')` (scores and softmax
    in float32, masked keys at a large negative logit, so a row with no valid key averages all
    values), with a hand-written gradient."""
    valid = jnp.ones(k.shape[:2], bool) if mask is None else mask.astype(bool)
    return _xla_attention(q, k, v, valid)


def _xla_probs(q, k, valid):
    """Softmax probabilities p: [B, H, Nq, Nk] float32."""
    s = jnp.einsum('bqhd,bkhd->bhqk', q, k, preferred_element_type=jnp.float32)
    s = s * (1.0 / math.sqrt(q.shape[-1]))
    s = jnp.where(valid[:, None, None, :], s, -0.7 * jnp.finfo(jnp.float32).max)
    return jax.nn.softmax(s, axis=-1)


@jax.custom_vjp
def _xla_attention(q, k, v, valid):
    return _xla_attention_fwd(q, k, v, valid)[0]


def _xla_attention_fwd(q, k, v, valid):
    p = _xla_probs(q, k, valid)
    o = jnp.einsum('bhqk,bkhd->bqhd', p.astype(v.dtype), v).astype(q.dtype)
    return o, (q, k, v, valid, p, o)


def _xla_attention_bwd(res, g):
    """dS = P * (dP - rowsum(dO * O)): the softmax gradient without re-reducing P * dP."""
    q, k, v, valid, p, o = res
    scale = 1.0 / math.sqrt(q.shape[-1])
    dv = jnp.einsum('bhqk,bqhd->bkhd', p.astype(g.dtype), g, preferred_element_type=jnp.float32)
    dp = jnp.einsum('bqhd,bkhd->bhqk', g, v, preferred_element_type=jnp.float32)
    delta = jnp.einsum('bqhd,bqhd->bhq', g.astype(jnp.float32), o.astype(jnp.float32))
    ds = p * (dp - delta[..., None]) * scale
    ds = jnp.where(valid[:, None, None, :], ds, 0.0).astype(q.dtype)  # masked logits: constant
    dq = jnp.einsum('bhqk,bkhd->bqhd', ds, k, preferred_element_type=jnp.float32)
    dk = jnp.einsum('bhqk,bqhd->bkhd', ds, q, preferred_element_type=jnp.float32)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_xla_attention.defvjp(_xla_attention_fwd, _xla_attention_bwd)


def chunked_attention(q, k, v, mask=None, *, chunk_size: int = 512):
    """Online-softmax attention over key chunks, scanned over query chunks, with a flash-style
    backward pass (custom VJP: only the output and the per-row log-sum-exp are kept; the
    backward recomputes each [chunk, chunk] block of scores).

    Peak memory is O(chunk_size^2 * heads) instead of O(Nq * Nk * heads), in training too.
    """
    b, nq, nk = q.shape[0], q.shape[1], k.shape[1]
    valid = jnp.ones((b, nk), bool) if mask is None else mask.astype(bool)
    return _chunked(q, k, v, valid, min(chunk_size, nq), min(chunk_size, nk))


def _chunks(x, c):
    """[B, N, ...] -> [N_padded / c, B, c, ...] (zero padding)."""
    pad = (-x.shape[1]) % c
    x = jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2))
    return x.reshape(x.shape[0], -1, c, *x.shape[2:]).swapaxes(0, 1)


def _unchunk(x, n):
    """[n_chunks, B, c, ...] -> [B, n, ...]."""
    return x.swapaxes(0, 1).reshape(x.shape[1], -1, *x.shape[3:])[:, :n]


def _chunked_fwd_impl(q, k, v, valid, cq, ck):
    """(out [B, Nq, H, D] in q's dtype, lse [B, H, Nq] float32)."""
    b, nq, h, d = q.shape
    scale = 1.0 / math.sqrt(d)
    kc, vc, mc = _chunks(k, ck), _chunks(v, ck), _chunks(valid, ck)

    def one_query_chunk(qi):
        qi = qi.astype(jnp.float32) * scale

        def body(carry, kvm):
            ki, vi, mi = kvm
            return online_softmax_step(carry, qi, ki, vi, mi), None

        init = (
            jnp.zeros((b, h, cq, d), jnp.float32),
            jnp.full((b, h, cq), -jnp.inf),
            jnp.zeros((b, h, cq), jnp.float32),
        )
        (acc, m, l), _ = jax.lax.scan(body, init, (kc, vc, mc))
        out = acc / jnp.maximum(l, 1e-30)[..., None]
        lse = jnp.where(l > 0, m + jnp.log(jnp.maximum(l, 1e-30)), -jnp.inf)
        return out.transpose(0, 2, 1, 3), lse  # [B, cq, H, D], [B, H, cq]

    out, lse = jax.lax.map(one_query_chunk, _chunks(q, cq))
    out = _unchunk(out, nq).astype(q.dtype)
    lse = _unchunk(lse.transpose(0, 1, 3, 2), nq).transpose(0, 2, 1)  # [B, H, Nq]
    return out, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _chunked(q, k, v, valid, cq, ck):
    return _chunked_fwd_impl(q, k, v, valid, cq, ck)[0]


def _chunked_fwd(q, k, v, valid, cq, ck):
    out, lse = _chunked_fwd_impl(q, k, v, valid, cq, ck)
    return out, (q, k, v, valid, out, lse)


def _chunked_bwd(cq, ck, res, g):
    q, k, v, valid, out, lse = res
    b, nq, h, d = q.shape
    nk = k.shape[1]
    scale = 1.0 / math.sqrt(d)
    do = g.astype(jnp.float32)
    delta = jnp.einsum('bqhd,bqhd->bhq', do, out.astype(jnp.float32))  # [B, H, Nq]
    lse_safe = jnp.where(jnp.isfinite(lse), lse, 0.0)
    kc, vc, mc = _chunks(k, ck), _chunks(v, ck), _chunks(valid, ck)
    rows = lambda x: _chunks(x.transpose(0, 2, 1), cq).transpose(0, 1, 3, 2)  # [n, B, H, cq]
    nkc = kc.shape[0]

    def one_query_chunk(carry, xs):
        dk, dv = carry  # [n_k, B, ck, H, D] float32
        qi, doi, lse_i, delta_i = xs
        qi = qi.astype(jnp.float32)

        def body(dq, kvm):
            kj, vj, mj = kvm
            kj, vj = kj.astype(jnp.float32), vj.astype(jnp.float32)
            s = jnp.einsum('bqhd,bkhd->bhqk', qi * scale, kj)
            p = jnp.where(mj[:, None, None, :], jnp.exp(s - lse_i[..., None]), 0.0)
            dp = jnp.einsum('bqhd,bkhd->bhqk', doi, vj)
            ds = p * (dp - delta_i[..., None])
            dq = dq + jnp.einsum('bhqk,bkhd->bqhd', ds, kj) * scale
            dk_j = jnp.einsum('bhqk,bqhd->bkhd', ds, qi) * scale
            dv_j = jnp.einsum('bhqk,bqhd->bkhd', p, doi)
            return dq, (dk_j, dv_j)

        dq, (dk_i, dv_i) = jax.lax.scan(body, jnp.zeros(qi.shape, jnp.float32), (kc, vc, mc))
        return (dk + dk_i, dv + dv_i), dq

    zeros = jnp.zeros((nkc, b, ck, h, d), jnp.float32)
    (dk, dv), dq = jax.lax.scan(
        one_query_chunk,
        (zeros, zeros),
        (_chunks(q, cq), _chunks(do, cq), rows(lse_safe), rows(delta)),
    )
    return (
        _unchunk(dq, nq).astype(q.dtype),
        _unchunk(dk, nk).astype(k.dtype),
        _unchunk(dv, nk).astype(v.dtype),
        None,
    )


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


def online_softmax_step(carry, q, k, v, mask=None):
    """One key block of flash-style attention: fold softmax(q k^T) v over k/v into the running
    (acc [B, H, Nq, D], row max m [B, H, Nq], row sum l [B, H, Nq]). q is pre-scaled float32;
    mask [B, Nk] (True = attend). Fully masked rows stay at l = 0 (no NaN)."""
    acc, m, l = carry
    s = jnp.einsum('bqhd,bkhd->bhqk', q, k.astype(jnp.float32))
    if mask is not None:
        s = jnp.where(mask[:, None, None, :], s, -jnp.inf)
    m_new = jnp.maximum(m, s.max(-1))
    m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
    p = jnp.exp(s - m_safe[..., None])
    corr = jnp.exp(jnp.where(jnp.isfinite(m), m - m_safe, -jnp.inf))
    l = l * corr + p.sum(-1)
    acc = acc * corr[..., None] + jnp.einsum('bhqk,bkhd->bhqd', p, v.astype(jnp.float32))
    return acc, m_new, l


def _inside_shard_map() -> bool:
    mesh = jax.sharding.get_abstract_mesh()
    return (
        mesh is not None and not mesh.empty and any(t == AxisType.Manual for t in mesh.axis_types)
    )


def splash_attention(q, k, v, mask=None, *, interpret: bool = False):
    """Pallas splash attention. A Pallas kernel cannot be partitioned by XLA, so under a mesh it
    runs inside `jax.shard_map`: batch and heads split as the activation rules say (queries may
    stay split over tokens; keys and values are gathered). Inside a shard_map already (context
    parallelism) it runs on the local arrays. `interpret=True` runs the kernel in the Pallas
    interpreter (any backend; tests)."""
    if not interpret and target_platform() != 'tpu':
        raise ValueError(
            "attention impl 'splash' needs a TPU (or a TPU mesh compiled ahead of "
            "time); use 'auto', 'xla' or 'chunked'."
        )
    local = functools.partial(_splash_local, interpret=interpret)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or _inside_shard_map() or math.prod(mesh.shape.values()) == 1:
        return local(q, k, v, mask)
    rules = mesh_lib._ACTIVE_RULES[-1] if mesh_lib._ACTIVE_RULES else mesh_lib.rules_dict()
    spec_q = mesh_lib._fit(mesh_lib.logical_to_spec(_QKV_AXES, rules), q.shape, mesh)
    spec_kv = mesh_lib._fit(P(spec_q[0], None, spec_q[2], None), k.shape, mesh)
    if mask is None:
        fn = jax.shard_map(
            lambda a, b, c: local(a, b, c, None),
            in_specs=(spec_q, spec_kv, spec_kv),
            out_specs=spec_q,
            check_vma=False,
        )
        return fn(q, k, v)
    fn = jax.shard_map(
        local,
        in_specs=(spec_q, spec_kv, spec_kv, P(spec_q[0], None)),
        out_specs=spec_q,
        check_vma=False,
    )
    return fn(q, k, v, mask.astype(bool))


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def splash_block(n: int) -> int:
    """Tile for a sequence of n tokens: SPLASH_BLOCK, or n rounded up to 128 when shorter."""
    return min(SPLASH_BLOCK, _round_up(n, 128))


def _splash_local(q, k, v, mask, *, interpret: bool = False):
    """Splash on local arrays: q [b, nq, h, d], k/v [b, nk, h, d], mask [b, nk] or None."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    b, nq, h, d = q.shape
    nk = k.shape[1]
    bq, bk = splash_block(nq), splash_block(nk)
    nq_p, nk_p = _round_up(nq, bq), _round_up(nk, bk)
    # Separate dq and dkv backward kernels: the fused one keeps a dq partial per key block
    # ([Nk / block, H, Nq, D]: 20 GiB per clip for Wan 14B at 480p).
    blocks = sk.BlockSizes(
        block_q=bq,
        block_kv=bk,
        block_kv_compute=bk,
        block_q_dkv=bq,
        block_kv_dkv=bk,
        block_kv_dkv_compute=bk,
        block_q_dq=bq,
        block_kv_dq=bk,
        use_fused_bwd_kernel=False,
    )
    kernel = sk.make_splash_mha(
        sm.MultiHeadMask([sm.FullMask((nq_p, nk_p))] * h),
        block_sizes=blocks,
        head_shards=1,
        q_seq_shards=1,
        interpret=interpret,
    )
    # [b, n, h, d] -> [b, h, n_padded, d]; q pre-scaled (splash applies no 1/sqrt(d))
    pad = lambda x, n: jnp.pad(x, ((0, 0), (0, n - x.shape[1]), (0, 0), (0, 0))).transpose(
        0, 2, 1, 3
    )
    qs = pad(q * jnp.asarray(1.0 / math.sqrt(d), q.dtype), nq_p)
    ks, vs = pad(k, nk_p), pad(v, nk_p)
    valid = jnp.ones((b, nk), bool) if mask is None else mask.astype(bool)
    if nq_p == nq and nk_p == nk and mask is None:
        out = jax.vmap(kernel)(qs, ks, vs)
    else:  # padded keys (and masked ones) get segment 0, which no query (segment 1) attends
        seg_q = jnp.ones((b, nq_p), jnp.int32)
        seg_k = jnp.pad(valid, ((0, 0), (0, nk_p - nk))).astype(jnp.int32)
        out = jax.vmap(
            lambda a, b_, c, sq, sk_: kernel(a, b_, c, segment_ids=sk.SegmentIds(q=sq, kv=sk_))
        )(qs, ks, vs, seg_q, seg_k)
    return out.transpose(0, 2, 1, 3)[:, :nq].astype(q.dtype)
