"""Attention kernels agree: xla vs chunked, with and without key masks."""
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
