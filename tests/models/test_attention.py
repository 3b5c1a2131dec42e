"""Attention kernels agree: xla vs chunked vs splash (Pallas interpreter), with and without key
masks, padded lengths, under a mesh and in gradients; 'auto' follows the compile target."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax.models import attention


@pytest.mark.parametrize('nq,nk,chunk', [(37, 37, 8), (16, 5, 4), (64, 64, 64)])
def test_chunked_matches_xla(nq, nk, chunk):
    ks = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(ks[0], (2, nq, 3, 8))
    k = jax.random.normal(ks[1], (2, nk, 3, 8))
    v = jax.random.normal(ks[2], (2, nk, 3, 8))
    mask = jax.random.bernoulli(ks[3], 0.7, (2, nk)).at[:, 0].set(True)
    for m in (None, mask):
        a = attention.dot_product_attention(q, k, v, m, impl='xla')
        b = attention.dot_product_attention(q, k, v, m, impl='chunked', chunk_size=chunk)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_auto_resolves_on_cpu_and_rejects_unknown():
    assert attention.resolve_impl('auto') == 'xla'
    with pytest.raises(ValueError, match='not one of'):
        attention.resolve_impl('flash9000')
    with pytest.raises(ValueError, match='needs a TPU'):
        attention.dot_product_attention(*(jnp.zeros((1, 4, 1, 8)),) * 3, impl='splash')


def _qkvm(b, nq, nk, h, d, seed=0):
    ks = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(ks[0], (b, nq, h, d))
    k = jax.random.normal(ks[1], (b, nk, h, d))
    v = jax.random.normal(ks[2], (b, nk, h, d))
    mask = jax.random.bernoulli(ks[3], 0.7, (b, nk)).at[:, 0].set(True)
    return q, k, v, mask


def test_splash_matches_xla_padded_and_masked():
    # 200 queries, 77 keys: both padded to the 128-token tile; masked keys and padding share
    # segment 0, which no query attends.
    q, k, v, mask = _qkvm(2, 200, 77, 4, 16)
    for m in (None, mask):
        a = attention.attend(q, k, v, m, impl='xla')
        b = attention.splash_attention(q, k, v, m, interpret=True)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)


def test_splash_under_a_mesh_and_its_gradient():
    from sora_jax.parallel import mesh as mesh_lib

    q, k, v, mask = _qkvm(2, 192, 77, 4, 16, seed=1)
    mesh = mesh_lib.make_mesh((2, 1, 2, 2))  # batch, heads and queries split; keys gathered
    f = lambda q, k, v: attention.splash_attention(q, k, v, mask, interpret=True)
    ref = lambda q, k, v: attention.attend(q, k, v, mask, impl='xla')
    with jax.set_mesh(mesh), mesh_lib.use_rules(None):
        out = jax.jit(f)(q, k, v)
        grads = jax.jit(jax.grad(lambda *a: (f(*a) ** 2).sum(), argnums=(0, 1, 2)))(q, k, v)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref(q, k, v)), atol=2e-5)
    ref_grads = jax.grad(lambda *a: (ref(*a) ** 2).sum(), argnums=(0, 1, 2))(q, k, v)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=1e-4)


def test_auto_follows_the_mesh_being_compiled_for():
    from sora_jax.parallel import mesh as mesh_lib

    assert attention.resolve_impl('auto', 'tpu') == 'splash'
    assert attention.resolve_impl('auto', 'gpu') == 'cudnn'
    with jax.set_mesh(mesh_lib.make_mesh((8, 1, 1, 1))):  # CPU devices
        assert attention.resolve_impl('auto') == 'xla'
    pytest.importorskip('libtpu')
    from sora_jax.aot import topology

    tpu = mesh_lib.make_mesh((4, 1, 1, 1), devices=topology.devices(topology.resolve('v5p-8')))
    seen = []

    def f(x):
        seen.append(attention.resolve_impl('auto'))
        return x

    with jax.set_mesh(tpu):
        jax.jit(f).lower(jax.ShapeDtypeStruct((4,), jnp.float32))
    assert seen == ['splash']


@pytest.mark.slow
@pytest.mark.parametrize('nq,nk,chunk', [(37, 37, 8), (50, 21, 16)])
def test_chunked_gradient_matches_xla(nq, nk, chunk):
    """The chunked kernel's flash-style backward (custom VJP) equals autodiff of plain attention."""
    q, k, v, mask = _qkvm(2, nq, nk, 3, 8, seed=2)
    w = jax.random.normal(jax.random.key(9), q.shape)
    for m in (None, mask):
        f = lambda *a: (attention.chunked_attention(*a, m, chunk_size=chunk) * w).sum()
        r = lambda *a: (attention.attend(*a, m, impl='xla') * w).sum()
        for g, gr in zip(
            jax.grad(f, argnums=(0, 1, 2))(q, k, v), jax.grad(r, argnums=(0, 1, 2))(q, k, v)
        ):
            np.testing.assert_allclose(np.asarray(g), np.asarray(gr), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize('masked_row', [False, True])
def test_xla_kernel_and_its_gradient_match_jax(masked_row):
    """'xla' (own gradient: saved probabilities, rowsum(dO * O)) equals autodiff through
    jax.nn.dot_product_attention, in values and gradients, with a padding mask and with a batch
    whose every key is masked (its logits are constant: no gradient reaches q or k)."""
    r = np.random.default_rng(3)
    q, k, v = (
        jnp.asarray(r.standard_normal(s), jnp.float32)
        for s in ((2, 20, 3, 8), (2, 7, 3, 8), (2, 7, 3, 8))
    )
    mask = jnp.asarray(r.random((2, 7)) > 0.3).at[0, 0].set(True)
    if masked_row:
        mask = mask.at[1].set(False)
    w = jnp.asarray(r.standard_normal((2, 20, 3, 8)), jnp.float32)

    def ref(q, k, v):
        return jax.nn.dot_product_attention(
            q, k, v, mask=mask[:, None, None, :], implementation='xla'
        )

    def ours(q, k, v):
        return attention.attend(q, k, v, mask, impl='xla')

    np.testing.assert_allclose(ours(q, k, v), ref(q, k, v), atol=1e-6)
    g_ours = jax.grad(lambda *a: (ours(*a) * w).sum(), argnums=(0, 1, 2))(q, k, v)
    g_ref = jax.grad(lambda *a: (ref(*a) * w).sum(), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(g_ours, g_ref):
        np.testing.assert_allclose(a, b, atol=2e-6)
    assert float(jnp.abs(g_ours[0]).max()) > 0.1  # the test sees real gradients
