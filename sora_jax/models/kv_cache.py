"""A fixed-size self-attention key/value cache for chunk-by-chunk (autoregressive) sampling.

A causal DiT (`DiTConfig.causal_chunk > 0`) generates latent-frame chunks one after another;
each chunk's self-attention reads the keys and values of the chunks before it from this cache
instead of recomputing them. The arrays never change size, so every chunk runs the same compiled
program and memory does not grow with the video's length:

    k, v: [depth, B, S, heads, head_dim]   S = sink_tokens + window * chunk_tokens
    valid: [B, S] bool                      which slots hold a past token

Slots [0, sink_tokens) keep the first chunk's first frames for ever ("attention sinks", as in
StreamingLLM / Self-Forcing); the rest is a ring of `window` chunks (chunk i in slot i % window),
so the oldest chunk is overwritten once `window` chunks have passed. Keys are stored after RoPE
at their absolute positions, so slot order does not matter (attention is permutation invariant
over keys). A token sits in at most one slot: chunk 0's ring copy leaves out its sink tokens.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class ChunkKV(NamedTuple):
    """Self-attention keys and values of one chunk's tokens in every block, after RoPE."""

    k: jax.Array  # [depth, B, N, heads, head_dim]
    v: jax.Array  # [depth, B, N, heads, head_dim]


class KVCache(NamedTuple):
    """Past chunks' self-attention keys/values (see the module docstring for the layout)."""

    k: jax.Array  # [depth, B, S, heads, head_dim]
    v: jax.Array  # [depth, B, S, heads, head_dim]
    valid: jax.Array  # [B, S] bool


class CacheLayout(NamedTuple):
    """Sizes of a cache in tokens: `chunk_tokens` per chunk, a ring of `window` chunks after
    `sink_tokens` kept first-chunk tokens."""

    chunk_tokens: int
    window: int
    sink_tokens: int = 0

    @property
    def size(self) -> int:
        return self.sink_tokens + self.window * self.chunk_tokens

    def check(self) -> None:
        if self.chunk_tokens < 1 or self.window < 1:
            raise ValueError(
                f'cache layout {self}: chunk_tokens and window must be >= 1 (window = how many '
                'past chunks each chunk attends to).'
            )
        if not 0 <= self.sink_tokens <= self.chunk_tokens:
            raise ValueError(
                f'cache sink_tokens={self.sink_tokens} must lie in [0, chunk_tokens='
                f"{self.chunk_tokens}]: sinks are the first chunk's first frames."
            )


def empty_cache(
    layout: CacheLayout, *, depth: int, batch: int, heads: int, head_dim: int, dtype=jnp.float32
) -> KVCache:
    """A cache with no valid slot."""
    layout.check()
    shape = (depth, batch, layout.size, heads, head_dim)
    return KVCache(
        jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch, layout.size), bool)
    )


def write_chunk(cache: KVCache, kv: ChunkKV, index: jax.Array, layout: CacheLayout) -> KVCache:
    """The cache with chunk `index` (a traced int: one program for every chunk) written in.

    kv: [depth, B, chunk_tokens, heads, head_dim]. Chunk 0 also fills the sink slots with its
    first `sink_tokens` tokens (and leaves them out of its ring copy)."""
    n = layout.chunk_tokens
    if kv.k.shape[2] != n:
        raise ValueError(
            f'chunk keys have {kv.k.shape[2]} tokens; this cache holds chunks of {n} tokens.'
        )
    index = jnp.asarray(index, jnp.int32)
    start = layout.sink_tokens + (index % layout.window) * n
    zero = jnp.zeros((), jnp.int32)

    def put(buf, new, at):
        return jax.lax.dynamic_update_slice(
            buf, new.astype(buf.dtype), (zero, zero, at, zero, zero)
        )

    k, v = put(cache.k, kv.k, start), put(cache.v, kv.v, start)
    first = index == 0
    own = jnp.arange(n) >= jnp.where(first, layout.sink_tokens, 0)  # [n]
    valid = jax.lax.dynamic_update_slice(
        cache.valid, jnp.broadcast_to(own, (cache.valid.shape[0], n)), (zero, start)
    )
    if layout.sink_tokens:
        s = layout.sink_tokens
        k = jnp.where(first, k.at[:, :, :s].set(kv.k[:, :, :s].astype(k.dtype)), k)
        v = jnp.where(first, v.at[:, :, :s].set(kv.v[:, :, :s].astype(v.dtype)), v)
        valid = valid.at[:, :s].set(valid[:, :s] | first)
    return KVCache(k, v, valid)
