"""Block-causal DiT (model.causal_chunk) and its key/value cache: a chunk's output ignores later
chunks and equals full attention where no future exists (chunk 0; the last chunk of a prefix
through one block); cached chunk-by-chunk sampling equals the
uncached forward over the prefix (within 1e-5), on a tiny DiT and the tiny Wan 2.1 layout."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sora_jax.models import kv_cache
from sora_jax.models.dit import DiT, DiTConfig
from tests.parity.wan_fixture import tiny_config

pytestmark = pytest.mark.slow

pytestmark = pytest.mark.slow  # compiles and samples or trains for tens of seconds

CHUNK = 2  # latent frames per chunk
TINY = DiTConfig(
    in_channels=4,
    out_channels=4,
    dim=48,
    num_heads=4,
    ffn_dim=64,
    depth=2,
    text_dim=16,
    freq_dim=32,
    attention='xla',
    causal_chunk=CHUNK,
)


def wan_tiny() -> DiTConfig:
    c = DiTConfig.from_config(tiny_config().model)
    return dataclasses.replace(c, causal_chunk=CHUNK, attention='xla')


CONFIGS = {'tiny': lambda: TINY, 'wan21_tiny': wan_tiny}


def inputs(cfg: DiTConfig, frames: int, seed: int = 1):
    x = jax.random.normal(jax.random.key(seed), (2, frames, 4, 6, cfg.in_channels))
    ctx = jax.random.normal(jax.random.key(2), (2, 5, cfg.text_dim))
    return x, ctx


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_chunk_ignores_future_and_equals_full_attention_on_prefix(name):
    cfg = CONFIGS[name]()
    causal = DiT(cfg, rngs=nnx.Rngs(0))
    full = DiT(dataclasses.replace(cfg, causal_chunk=0), rngs=nnx.Rngs(0))
    x, ctx = inputs(cfg, 3 * CHUNK)
    t = jnp.array([0.3, 0.8])
    y = causal(x, t, ctx)
    x_changed = x.at[:, 2 * CHUNK :].set(
        jax.random.normal(jax.random.key(9), x[:, 2 * CHUNK :].shape)
    )
    y_changed = causal(x_changed, t, ctx)
    # the first two chunks do not see the third; the third does
    np.testing.assert_array_equal(y[:, : 2 * CHUNK], y_changed[:, : 2 * CHUNK])
    assert float(jnp.abs(y[:, 2 * CHUNK :] - y_changed[:, 2 * CHUNK :]).max()) > 1e-3
    # chunk 0 has no past: full attention over it alone
    err = float(jnp.abs(y[:, :CHUNK] - full(x[:, :CHUNK], t, ctx)).max())
    assert err < 1e-5, err
    # one block: the last chunk of a prefix [0..c] attends to all of it, as full attention does
    # (deeper, the earlier chunks' full-attention states would see chunk c)
    one = dataclasses.replace(cfg, depth=1)
    causal1 = DiT(one, rngs=nnx.Rngs(0))
    full1 = DiT(dataclasses.replace(one, causal_chunk=0), rngs=nnx.Rngs(0))
    y1 = causal1(x, t, ctx)
    for c in range(3):
        end = (c + 1) * CHUNK
        ref = full1(x[:, :end], t, ctx)
        err = float(jnp.abs(y1[:, end - CHUNK : end] - ref[:, end - CHUNK :]).max())
        assert err < 1e-5, (c, err)
    # chunks do attend to the past: the full-attention prefix differs from chunk 1 alone
    alone = full(x[:, CHUNK : 2 * CHUNK], t, ctx)
    assert float(jnp.abs(alone - y[:, CHUNK : 2 * CHUNK]).max()) > 1e-3


def cached_rollout(model, chunks, t_now, ctx, layout):
    """Each chunk denoised at t_now with the cache of the past clean chunks (written at t = 0),
    through one jitted program for every chunk -> outputs per chunk."""
    cfg = model.cfg
    gdef, state = nnx.split(model)

    @jax.jit
    def step(state, cache, x, index):
        m = nnx.merge(gdef, state)
        b = x.shape[0]
        v, _ = m.chunk(x, jnp.full((b,), t_now), ctx, cache=cache, frame_offset=index * CHUNK)
        _, kv = m.chunk(x, jnp.zeros((b,)), ctx, cache=cache, frame_offset=index * CHUNK)
        return v, kv_cache.write_chunk(cache, kv, index, layout)

    cache = kv_cache.empty_cache(
        layout, depth=cfg.depth, batch=ctx.shape[0], heads=cfg.num_heads, head_dim=cfg.head_dim
    )
    outs = []
    for i, x in enumerate(chunks):
        v, cache = step(state, cache, x, jnp.int32(i))
        outs.append(v)
    assert step._cache_size() == 1  # the same compiled program for every chunk
    return outs


def per_token_t(b, n_past_tokens, n_tokens, t_now):
    return jnp.concatenate([jnp.zeros((b, n_past_tokens)), jnp.full((b, n_tokens), t_now)], 1)


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_cached_chunks_equal_uncached_prefix(name):
    cfg = CONFIGS[name]()
    model = DiT(cfg, rngs=nnx.Rngs(0))
    n_chunks, t_now = 4, 0.7
    x, ctx = inputs(cfg, n_chunks * CHUNK)
    chunks = [x[:, i * CHUNK : (i + 1) * CHUNK] for i in range(n_chunks)]
    tok = CHUNK * (4 // 2) * (6 // 2)  # tokens per chunk (patch 1x2x2)
    layout = kv_cache.CacheLayout(chunk_tokens=tok, window=n_chunks)
    outs = cached_rollout(model, chunks, t_now, ctx, layout)
    for c in range(n_chunks):
        prefix = x[:, : (c + 1) * CHUNK]
        ref = model(prefix, per_token_t(2, c * tok, tok, t_now), ctx)[:, c * CHUNK :]
        err = float(jnp.abs(outs[c] - ref).max())
        assert err < 1e-5, (c, err)


def test_rolling_window_attends_to_last_chunks_only():
    """With a window of 2 chunks, chunk c sees chunks c-2, c-1 only: through one block (where a
    cached chunk's keys depend on that chunk alone, not on the evicted chunks it once saw) it
    equals the uncached forward over those three chunks, RoPE positions from frame (c - 2) * CHUNK."""
    model = DiT(dataclasses.replace(TINY, depth=1), rngs=nnx.Rngs(0))
    n_chunks, t_now, window = 5, 0.4, 2
    x, ctx = inputs(TINY, n_chunks * CHUNK)
    chunks = [x[:, i * CHUNK : (i + 1) * CHUNK] for i in range(n_chunks)]
    tok = CHUNK * 2 * 3
    outs = cached_rollout(model, chunks, t_now, ctx, kv_cache.CacheLayout(tok, window))
    for c in range(window, n_chunks):
        lo = (c - window) * CHUNK
        ref, _ = model.chunk(
            x[:, lo : (c + 1) * CHUNK],
            per_token_t(2, window * tok, tok, t_now),
            ctx,
            frame_offset=lo,
        )
        err = float(jnp.abs(outs[c] - ref[:, window * CHUNK :]).max())
        assert err < 1e-5, (c, err)
    # and it is not what the full prefix gives (the window really drops chunk 0)
    full_ref = model(x, per_token_t(2, 4 * tok, tok, t_now), ctx)[:, 4 * CHUNK :]
    assert float(jnp.abs(outs[4] - full_ref).max()) > 1e-4


def test_sink_tokens_kept_once_and_ring_overwrites():
    layout = kv_cache.CacheLayout(chunk_tokens=3, window=2, sink_tokens=2)
    cache = kv_cache.empty_cache(layout, depth=1, batch=1, heads=1, head_dim=2)
    write = jax.jit(kv_cache.write_chunk, static_argnums=3)
    for i in range(4):  # chunk i's tokens carry the value 10 i + j
        vals = (10 * i + jnp.arange(3, dtype=jnp.float32))[None, None, :, None, None]
        kv = kv_cache.ChunkKV(jnp.broadcast_to(vals, (1, 1, 3, 1, 2)), jnp.zeros((1, 1, 3, 1, 2)))
        cache = write(cache, kv, jnp.int32(i), layout)
        live = sorted(np.asarray(cache.k[0, 0, :, 0, 0])[np.asarray(cache.valid[0])].tolist())
        if i == 0:  # sinks 0, 1 once; chunk 0's own copy keeps token 2 only
            assert live == [0, 1, 2]
        if i == 3:  # sinks of chunk 0, then the ring holds chunks 2 and 3
            assert live == [0, 1, 20, 21, 22, 30, 31, 32]


def test_causal_chunk_checked():
    with pytest.raises(ValueError, match='causal_chunk=3 must be 0'):
        DiTConfig(patch_size=(2, 2, 2), causal_chunk=3).validate()
    model = DiT(TINY, rngs=nnx.Rngs(0))
    x, ctx = inputs(TINY, 3)
    with pytest.raises(ValueError, match='not whole chunks'):
        model(x, jnp.zeros((2,)), ctx)
    full = DiT(dataclasses.replace(TINY, causal_chunk=0), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match='needs a causal model'):
        full.chunk(x[:, :2], jnp.zeros((2,)), ctx)
