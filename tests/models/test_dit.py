"""DiT: shapes for several (T, H, W), scan == unrolled, bad shapes rejected, velocity depends on t."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sora_jax.models.dit import DiT, DiTConfig

CFG = DiTConfig(
    in_channels=4,
    out_channels=4,
    dim=32,
    num_heads=2,
    ffn_dim=64,
    depth=2,
    text_dim=16,
    patch_size=(1, 2, 2),
)


@pytest.fixture(scope='module')
def model():
    return DiT(CFG, rngs=nnx.Rngs(0))


@pytest.mark.slow
@pytest.mark.parametrize('thw', [(1, 4, 4), (3, 8, 4), (5, 4, 12), (2, 6, 6)])
def test_output_shape_any_size(model, thw):
    x = jax.random.normal(jax.random.key(1), (2, *thw, 4))
    ctx = jax.random.normal(jax.random.key(2), (2, 7, 16))
    y = model(x, jnp.array([0.2, 0.7]), ctx)
    assert y.shape == x.shape
    assert bool(jnp.all(jnp.isfinite(y)))


def test_bad_shape_is_clear_error(model):
    with pytest.raises(ValueError, match='height=5 is not divisible by patch size 2'):
        model(jnp.zeros((1, 2, 5, 4, 4)), jnp.zeros((1,)), jnp.zeros((1, 3, 16)))
    with pytest.raises(ValueError, match='channels'):
        model(jnp.zeros((1, 2, 4, 4, 3)), jnp.zeros((1,)), jnp.zeros((1, 3, 16)))


@pytest.mark.slow
def test_scan_equals_unrolled(model):
    import dataclasses

    gd, state = nnx.split(model)
    unrolled = nnx.merge(gd, state)
    unrolled.cfg = dataclasses.replace(CFG, scan_layers=False)
    x = jax.random.normal(jax.random.key(3), (1, 2, 4, 4, 4))
    ctx = jax.random.normal(jax.random.key(4), (1, 5, 16))
    t = jnp.array([0.5])
    a = model(x, t, ctx)
    b = unrolled(x, t, ctx)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


@pytest.mark.slow
def test_remat_same_gradients(model):
    import dataclasses

    gd, state = nnx.split(model)
    x = jax.random.normal(jax.random.key(5), (1, 2, 4, 4, 4))
    ctx = jax.random.normal(jax.random.key(6), (1, 5, 16))

    def loss(st, remat):
        m = nnx.merge(gd, st)
        m.cfg = dataclasses.replace(CFG, remat=remat)
        return jnp.mean(m(x, jnp.array([0.3]), ctx) ** 2)

    g0 = jax.grad(loss)(state, 'none')
    g1 = jax.grad(loss)(state, 'full')
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


@pytest.mark.slow
def test_context_mask_matters_and_padding_ignored(model):
    x = jax.random.normal(jax.random.key(7), (1, 2, 4, 4, 4))
    ctx = jax.random.normal(jax.random.key(8), (1, 6, 16))
    mask = jnp.array([[True, True, True, False, False, False]])
    t = jnp.array([0.5])
    a = model(x, t, ctx, mask)
    ctx2 = ctx.at[:, 3:].set(123.0)  # garbage in padded positions
    b = model(x, t, ctx2, mask)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    c = model(x, jnp.array([0.9]), ctx, mask)
    assert float(jnp.abs(a - c).max()) > 1e-3  # timestep conditioning is live


def test_pooled_text_starts_neutral_ignores_padding_and_conditions():
    """model.pooled_text: zero-initialised, so a fresh model equals the one without it (same
    other params); padded positions never reach the pool; once trained it carries the text."""
    import dataclasses

    pooled = DiT(dataclasses.replace(CFG, pooled_text=True), rngs=nnx.Rngs(0))
    plain = DiT(CFG, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(7), (1, 2, 4, 4, 4))
    ctx = jax.random.normal(jax.random.key(8), (1, 6, 16))
    mask = jnp.array([[True, True, True, False, False, False]])
    t = jnp.array([0.5])
    st = nnx.state(pooled, nnx.Param)
    nnx.update(
        plain,
        {k: v for k, v in st.items() if k != 'condition_embedder'}
        | {
            'condition_embedder': {
                k: v for k, v in st['condition_embedder'].items() if not k.startswith('pooled_text')
            }
        },
    )
    np.testing.assert_allclose(pooled(x, t, ctx, mask), plain(x, t, ctx, mask), atol=1e-6)
    k = pooled.condition_embedder.pooled_text_2.kernel
    k.value = jax.random.normal(jax.random.key(9), k.value.shape) * 0.3
    a = pooled(x, t, ctx, mask)
    assert float(jnp.abs(a - plain(x, t, ctx, mask)).max()) > 1e-3
    b = pooled(x, t, ctx.at[:, 3:].set(55.0), mask)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_config_validation():
    with pytest.raises(ValueError, match='not divisible by model.num_heads'):
        DiTConfig(dim=30, num_heads=4).validate()
    with pytest.raises(ValueError, match="unknown DiT config keys \\['depht'\\]"):
        DiTConfig.from_config({'depht': 3})
    with pytest.raises(ValueError, match='model.remat'):
        DiTConfig(remat='sometimes').validate()


def test_param_count_matches_formula():
    d, f, L, c, tdim, fd = 32, 64, 2, 4, 16, 256
    attn = 4 * (d * d + d) + 2 * d
    block = 2 * attn + (d * f + f + f * d + d) + 2 * d + 6 * d
    expected = (
        L * block
        + (c * 4 * d + d)
        + (fd * d + d + d * d + d)
        + (d * 6 * d + 6 * d)
        + (tdim * d + d + d * d + d)
        + (d * c * 4 + c * 4)
        + 2 * d
    )
    assert CFG.num_params() == expected


def test_zero_init_starts_every_block_as_identity():
    """model.zero_init (adaLN-Zero): the velocity is exactly 0 at init, yet the output layer gets
    a gradient, so training moves off the identity; the default init is Wan's (non-zero)."""
    import dataclasses

    cfg = dataclasses.replace(CFG, zero_init=True)
    m = DiT(cfg, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(7), (1, 2, 4, 4, 4))
    ctx = jax.random.normal(jax.random.key(8), (1, 5, 16))
    t = jnp.array([0.4])
    np.testing.assert_array_equal(np.asarray(m(x, t, ctx)), 0.0)
    assert float(jnp.abs(m.blocks.scale_shift_table[...]).max()) == 0.0
    assert float(jnp.abs(m.blocks.attn2.to_out.kernel[...]).max()) == 0.0
    gd, st = nnx.split(m)
    g = jax.grad(lambda s: jnp.mean((nnx.merge(gd, s)(x, t, ctx) - x) ** 2))(st)
    assert float(jnp.abs(g['proj_out']['kernel'][...]).max()) > 1e-4
    # the other parameters are drawn exactly as without zero_init
    ref = DiT(CFG, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(
        np.asarray(m.blocks.attn1.to_q.kernel[...]), np.asarray(ref.blocks.attn1.to_q.kernel[...])
    )
    assert float(jnp.abs(ref(x, t, ctx)).max()) > 0


@pytest.mark.slow
def test_skip_turns_chosen_blocks_into_the_identity_per_example():
    """`skip` [B, depth]: a row skipping block i equals the model whose block i is removed;
    rows skipping nothing are unchanged, and scan == unrolled with skips."""
    import dataclasses

    x = jax.random.normal(jax.random.key(1), (2, 2, 4, 4, 4))
    ctx = jax.random.normal(jax.random.key(2), (2, 5, 16))
    t = jnp.array([0.3, 0.7])
    for scan in (True, False):
        m = DiT(dataclasses.replace(CFG, scan_layers=scan), rngs=nnx.Rngs(0))
        full = m(x, t, ctx)
        skip = np.array([[False, False], [False, True]])
        out = m(x, t, ctx, skip=skip)
        np.testing.assert_allclose(out[0], full[0], rtol=1e-5, atol=1e-6)
        assert float(jnp.abs(out[1] - full[1]).max()) > 1e-4
        # block 1 removed: a depth-1 model carrying block 0's weights
        short = DiT(dataclasses.replace(CFG, depth=1, scan_layers=scan), rngs=nnx.Rngs(0))
        gd, st = nnx.split(short)
        full_st = nnx.state(m)
        st = jax.tree.map(
            lambda a, b: b[:1] if a.ndim == b.ndim and a.shape != b.shape else b,
            nnx.state(short),
            full_st,
        )
        ref = nnx.merge(gd, st)(x, t, ctx)
        np.testing.assert_allclose(out[1], ref[1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match='skip has shape'):
        m(x, t, ctx, skip=np.zeros((2, 3), bool))


def test_part_of_the_stack_equals_the_whole_and_copies_no_weights():
    """embed -> run_blocks(0, 1) -> run_blocks(1) -> head (what First-Block Cache runs) equals the
    full call; the part reads its layers inside the scan instead of slicing (copying) them."""
    cfg = DiTConfig(
        in_channels=4, out_channels=4, dim=128, num_heads=2, ffn_dim=512, depth=4, text_dim=16
    )
    dit = DiT(cfg, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (1, 1, 4, 4, 4))
    t, ctx = jnp.array([0.3]), jax.random.normal(jax.random.key(2), (1, 3, 16))
    h, e = dit.embed(x, t, ctx)
    parts = dit.head(dit.run_blocks(dit.run_blocks(h, e, 0, 1), e, 1), e)
    np.testing.assert_allclose(np.asarray(parts), np.asarray(dit(x, t, ctx)), atol=1e-5)

    gdef, state = nnx.split(dit)

    def temp(start):  # XLA's temporaries of blocks start..3
        run = jax.jit(lambda s, h, e: nnx.merge(gdef, s).run_blocks(h, e, start))
        return run.lower(state, h, e).compile().memory_analysis().temp_size_in_bytes

    blocks = sum(a.nbytes for a in jax.tree.leaves(nnx.state(dit.blocks)))
    # slicing blocks 1..3 out of the stack first would add 3/4 of the blocks' 4.2 MB
    assert temp(1) <= temp(0) + blocks // 8, (temp(1), temp(0), blocks)
