"""One attention entry point with kernel dispatch per backend.

`dot_product_attention(q, k, v, mask, impl=...)` with q: [B, Nq, H, D], k/v: [B, Nk, H, D],
mask: [B, Nk] (True = attend) or None. Implementations:
  'xla'     jax.nn.dot_product_attention, XLA kernel (any backend)
  'cudnn'   jax.nn.dot_product_attention(implementation='cudnn') — fused flash attention on GPU
  'chunked' memory-efficient: queries processed in chunks with an online softmax over key chunks,
            so the [Nq, Nk] score matrix never materialises (CPU / long videos)
  'splash'  Pallas splash attention on TPU
  'auto'    cudnn on GPU, splash on TPU, xla elsewhere
All return [B, Nq, H, D] in q's dtype and agree numerically (tests/models/test_attention.py).

`context_parallel='ulysses'|'ring'` runs the chosen kernel with tokens sharded over the
sequence mesh axis (`parallel/context.py`: all-to-all heads<->tokens, or a key/value ring);
'none' (default) leaves the sharding to XLA.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

IMPLS = ('auto', 'xla', 'cudnn', 'chunked', 'splash')


def resolve_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f'attention impl {impl!r} is not one of {IMPLS}; set model.attention to one.')
    if impl != 'auto':
        return impl
    platform = jax.default_backend()
    return {'gpu': 'cudnn', 'tpu': 'splash'}.get(platform, 'xla')


def dot_product_attention(q, k, v, mask=None, *, impl: str = 'auto', chunk_size: int = 512,
                          context_parallel: str = 'none'):
    if context_parallel != 'none':
        from sora_jax.parallel import context  # parallel/context.py calls back with 'none'
        return context.context_parallel_attention(q, k, v, mask, method=context_parallel,
                                                  impl=impl, chunk_size=chunk_size)
    impl = resolve_impl(impl)
    if impl == 'chunked':
        return chunked_attention(q, k, v, mask, chunk_size=chunk_size)
    if impl == 'splash':
        return _splash_attention(q, k, v, mask)
    bias_mask = None if mask is None else mask[:, None, None, :]
    if impl == 'cudnn':
        if q.dtype not in (jnp.bfloat16, jnp.float16):
            # cuDNN flash attention runs in half precision only.
            dt = q.dtype
            out = jax.nn.dot_product_attention(
                q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16),
                mask=bias_mask, implementation='cudnn')
            return out.astype(dt)
        return jax.nn.dot_product_attention(q, k, v, mask=bias_mask, implementation='cudnn')
    return jax.nn.dot_product_attention(q, k, v, mask=bias_mask, implementation='xla')


def chunked_attention(q, k, v, mask=None, *, chunk_size: int = 512):
    """Online-softmax attention over key chunks, scanned over query chunks.

    Peak memory is O(chunk_size^2 * heads) instead of O(Nq * Nk * heads).
    """
    b, nq, h, d = q.shape
    nk = k.shape[1]
    cq = min(chunk_size, nq)
    ck = min(chunk_size, nk)
    pq = (-nq) % cq
    pk = (-nk) % ck
    scale = 1.0 / math.sqrt(d)
    valid = jnp.ones((b, nk), bool) if mask is None else mask.astype(bool)
    qp = jnp.pad(q, ((0, 0), (0, pq), (0, 0), (0, 0)))
    kp = jnp.pad(k, ((0, 0), (0, pk), (0, 0), (0, 0)))
    vp = jnp.pad(v, ((0, 0), (0, pk), (0, 0), (0, 0)))
    valid = jnp.pad(valid, ((0, 0), (0, pk)))
    # [n_chunks, B, chunk, H, D]
    qc = qp.reshape(b, -1, cq, h, d).swapaxes(0, 1)
    kc = kp.reshape(b, -1, ck, h, d).swapaxes(0, 1)
    vc = vp.reshape(b, -1, ck, h, d).swapaxes(0, 1)
    mc = valid.reshape(b, -1, ck).swapaxes(0, 1)

    def one_query_chunk(qi):
        qi = qi.astype(jnp.float32) * scale

        def body(carry, kvm):
            ki, vi, mi = kvm
            return online_softmax_step(carry, qi, ki, vi, mi), None

        init = (jnp.zeros((b, h, cq, d), jnp.float32), jnp.full((b, h, cq), -jnp.inf),
                jnp.zeros((b, h, cq), jnp.float32))
        (acc, _, l), _ = jax.lax.scan(body, init, (kc, vc, mc))
        out = acc / jnp.maximum(l, 1e-30)[..., None]
        return out.transpose(0, 2, 1, 3)  # [B, cq, H, D]

    out = jax.lax.map(one_query_chunk, qc)  # [n, B, cq, H, D]
    out = out.swapaxes(0, 1).reshape(b, -1, h, d)[:, :nq]
    return out.astype(q.dtype)


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


def _splash_attention(q, k, v, mask):
    """Pallas splash attention (TPU). Falls back with a clear error elsewhere."""
    if jax.default_backend() != 'tpu':
        raise ValueError("attention impl 'splash' needs a TPU; use 'auto', 'xla' or 'chunked'.")
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    b, nq, h, d = q.shape
    nk = k.shape[1]
    mha_mask = sm.MultiHeadMask([sm.FullMask((nq, nk)) for _ in range(h)])
    kernel = sk.make_splash_mha(mha_mask, head_shards=1, q_seq_shards=1)
    qs = (q / math.sqrt(d)).transpose(0, 2, 1, 3)
    ks = k.transpose(0, 2, 1, 3)
    vs = v.transpose(0, 2, 1, 3)
    if mask is None:
        out = jax.vmap(kernel)(qs, ks, vs)
    else:
        seg_q = jnp.ones((b, nq), jnp.int32)
        seg_k = mask.astype(jnp.int32)
        ids = jax.vmap(lambda a, c: sk.SegmentIds(q=a, kv=c))(seg_q, seg_k)
        out = jax.vmap(lambda a, b_, c, s: kernel(a, b_, c, segment_ids=s))(qs, ks, vs, ids)
    return out.transpose(0, 2, 1, 3).astype(q.dtype)


@functools.lru_cache(maxsize=None)
def _warn_once(msg: str) -> None:
    from absl import logging
    logging.warning(msg)
