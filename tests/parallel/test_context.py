"""Context-parallel attention (Ulysses all-to-all, ring) == plain attention on 8 CPU devices,
and a DiT forward/backward with context parallelism == without."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sora_jax.models import attention as attn_lib
from sora_jax.models.dit import DiT, DiTConfig
from sora_jax.parallel import context
from sora_jax.parallel import mesh as mesh_lib

pytestmark = pytest.mark.slow


def _qkv(b=2, n=32, h=4, d=8, seed=0):
    ks = jax.random.split(jax.random.key(seed), 4)
    q, k, v = (jax.random.normal(x, (b, n, h, d), jnp.float32) for x in ks[:3])
    mask = jax.random.bernoulli(ks[3], 0.7, (b, n)).at[:, 0].set(True)
    return q, k, v, mask


def _sharded_call(mesh_shape, method, q, k, v, mask, impl='xla'):
    mesh = mesh_lib.make_mesh(mesh_shape)
    spec = P(('data', 'fsdp'), 'sequence', 'tensor', None)
    with jax.set_mesh(mesh), mesh_lib.use_rules(None):
        args = [jax.device_put(x, NamedSharding(mesh, spec)) for x in (q, k, v)]
        m = (
            None
            if mask is None
            else jax.device_put(mask, NamedSharding(mesh, P(('data', 'fsdp'), 'sequence')))
        )
        fn = jax.jit(
            lambda a, b, c, mm: attn_lib.dot_product_attention(
                a, b, c, mm, impl=impl, context_parallel=method
            )
        )
        return fn(*args, m)


@pytest.mark.parametrize('method', ['ulysses', 'ring'])
@pytest.mark.parametrize(
    'mesh_shape,masked', [((1, 1, 1, 8), False), ((2, 1, 1, 4), True), ((1, 1, 2, 4), True)]
)
def test_equals_plain_attention(method, mesh_shape, masked):
    q, k, v, mask = _qkv(h=8)
    mask = mask if masked else None
    ref = attn_lib.dot_product_attention(q, k, v, mask, impl='xla')
    out = _sharded_call(mesh_shape, method, q, k, v, mask)
    assert out.shape == ref.shape == (2, 32, 8, 8)
    assert float(jnp.abs(out - ref).max()) < 1e-5


def test_gradients_equal_plain():
    q, k, v, mask = _qkv(h=8, n=16)
    loss = lambda f: lambda a, b, c: jnp.sum(f(a, b, c) ** 2)
    ref = jax.grad(
        loss(lambda a, b, c: attn_lib.dot_product_attention(a, b, c, mask, impl='xla')),
        argnums=(0, 1, 2),
    )(q, k, v)
    mesh = mesh_lib.make_mesh((1, 1, 1, 8))
    for method in ('ulysses', 'ring'):
        with jax.set_mesh(mesh):
            f = lambda a, b, c: attn_lib.dot_product_attention(
                a, b, c, mask, impl='xla', context_parallel=method
            )
            got = jax.jit(jax.grad(loss(f), argnums=(0, 1, 2)))(q, k, v)
        for g, r in zip(got, ref):
            assert float(jnp.abs(g - r).max()) < 1e-4, method


def test_ulysses_with_chunked_kernel_inside():
    q, k, v, _ = _qkv(h=8)
    ref = attn_lib.dot_product_attention(q, k, v, None, impl='xla')
    out = _sharded_call((1, 1, 1, 8), 'ulysses', q, k, v, None, impl='chunked')
    assert float(jnp.abs(out - ref).max()) < 1e-5


def test_no_mesh_is_plain():
    q, k, v, mask = _qkv()
    a = attn_lib.dot_product_attention(q, k, v, mask, impl='xla', context_parallel='ring')
    b = attn_lib.dot_product_attention(q, k, v, mask, impl='xla')
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert context.sequence_axis() == (None, 1)


def test_errors_name_the_fix():
    q, k, v, _ = _qkv(h=2)
    with pytest.raises(ValueError, match='context_parallel=ring'):  # 2 heads over 8 devices
        _sharded_call((1, 1, 1, 8), 'ulysses', q, k, v, None)
    q, k, v, _ = _qkv(n=12, h=8)
    with jax.set_mesh(mesh_lib.make_mesh((1, 1, 1, 8))):
        with pytest.raises(ValueError, match='not divisible'):  # 12 tokens over 8 devices
            jax.jit(
                lambda a, b, c: attn_lib.dot_product_attention(a, b, c, context_parallel='ring')
            )(q, k, v)
    with pytest.raises(ValueError, match='ulysses'):
        context.check_method('ulises')
    with pytest.raises(ValueError, match='context_parallel'):
        DiTConfig(dim=32, num_heads=4, context_parallel='rings').validate()


def _dit(cfg):
    """(graphdef, params) built inside jit (eager init of scanned blocks is slow on CPU)."""
    gdef = nnx.graphdef(nnx.eval_shape(lambda: DiT(cfg, rngs=nnx.Rngs(0))))
    return gdef, jax.jit(lambda: nnx.state(DiT(cfg, rngs=nnx.Rngs(0))))()


def test_dit_forward_and_grad_with_context_parallel():
    cfg = DiTConfig(
        patch_size=(1, 2, 2),
        in_channels=3,
        out_channels=3,
        dim=32,
        num_heads=4,
        ffn_dim=48,
        depth=2,
        text_dim=16,
        freq_dim=16,
        attention='xla',
    )
    x = jax.random.normal(jax.random.key(1), (2, 4, 4, 8, 3))  # 4*2*4 = 32 tokens
    t = jnp.array([0.3, 0.8])
    ctx = jax.random.normal(jax.random.key(2), (2, 5, 16))
    cmask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    gdef, params = _dit(cfg)
    fwd = lambda gd: jax.jit(lambda p: nnx.merge(gd, p)(x, t, ctx, cmask))
    grad = lambda gd: jax.jit(
        jax.value_and_grad(lambda p: jnp.mean(nnx.merge(gd, p)(x, t, ctx, cmask) ** 2))
    )
    ref_out = fwd(gdef)(params)
    ref_l, ref_g = grad(gdef)(params)
    mesh = mesh_lib.make_mesh((2, 1, 1, 4))
    for method in ('ulysses', 'ring'):
        gd = nnx.graphdef(
            nnx.eval_shape(
                lambda: DiT(dataclasses.replace(cfg, context_parallel=method), rngs=nnx.Rngs(0))
            )
        )
        with jax.set_mesh(mesh), mesh_lib.use_rules(None):
            out = fwd(gd)(params)
            assert out.shape == (2, 4, 4, 8, 3)
            assert float(jnp.abs(out - ref_out).max()) < 1e-5, method
            if method == 'ulysses':  # (both methods' gradients: test_gradients_equal_plain)
                l, g = grad(gd)(params)
                assert abs(float(l) - float(ref_l)) < 1e-6
                for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref_g)):
                    assert float(jnp.abs(a - b).max()) < 1e-5, method
