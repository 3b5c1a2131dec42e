"""DiT numerics knobs: bfloat16 compute over float32 master weights stays close to float32, and
remat policies change memory, not results."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from sora_jax.models.dit import DiT, DiTConfig

CFG = DiTConfig(
    patch_size=(1, 2, 2),
    in_channels=4,
    out_channels=4,
    dim=64,
    num_heads=4,
    ffn_dim=128,
    depth=2,
    text_dim=16,
    freq_dim=32,
    attention='xla',
)


@pytest.fixture(scope='module')
def setup():
    params = jax.jit(lambda: nnx.state(DiT(CFG, rngs=nnx.Rngs(0))))()
    ks = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(ks[0], (2, 2, 8, 8, 4))
    target = jax.random.normal(ks[1], x.shape)
    ctx = jax.random.normal(ks[2], (2, 6, 16))
    t = jnp.array([0.25, 0.75])
    batch = (x, t, ctx, target)
    return params, batch, _loss_and_grads(CFG, params, batch)


def _loss_and_grads(cfg, params, batch):
    gdef = nnx.graphdef(nnx.eval_shape(lambda: DiT(cfg, rngs=nnx.Rngs(0))))
    x, t, ctx, target = batch

    def loss(p):
        return jnp.mean((nnx.merge(gdef, p)(x, t, ctx) - target) ** 2)

    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.slow
def test_bf16_compute_close_to_f32(setup):
    params, batch, (l32, g32) = setup
    l16, g16 = _loss_and_grads(dataclasses.replace(CFG, dtype='bfloat16'), params, batch)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(g16))  # master weights stay f32
    assert abs(float(l16) - float(l32)) < 2e-2 * float(l32)
    assert float(l16) != float(l32)  # it really ran in bfloat16
    n32 = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(g32)))
    diff = jnp.sqrt(
        sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(g16), jax.tree.leaves(g32)))
    )
    assert float(diff / n32) < 5e-2


@pytest.mark.parametrize('remat', ['full', 'dots'])
def test_remat_same_loss_and_grads(setup, remat):
    params, batch, (l0, g0) = setup
    l1, g1 = _loss_and_grads(dataclasses.replace(CFG, remat=remat), params, batch)
    assert abs(float(l1) - float(l0)) < 1e-6
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        assert float(jnp.abs(a - b).max()) < 1e-5
