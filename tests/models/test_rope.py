"""3D RoPE: split sizes, norm preservation, and the relative-position property."""

import jax
import numpy as np

from sora_jax.models import rope


def test_split_matches_wan():
    assert rope.rope_split(128) == (44, 42, 42)
    t, h, w = rope.rope_split(16)
    assert (t, h, w) == (16 - 2 * 4, 4, 4)


def test_norm_preserved():
    x = jax.random.normal(jax.random.key(0), (1, 2 * 3 * 4, 2, 24))
    y = rope.apply_rope(x, rope.rope_angles((2, 3, 4), 24))
    np.testing.assert_allclose(np.linalg.norm(x, axis=-1), np.linalg.norm(y, axis=-1), rtol=1e-5)


def test_relative_position_property():
    """<R(p) q, R(p') k> depends only on p - p' (per axis of the 3D grid)."""
    d = 24
    q = jax.random.normal(jax.random.key(1), (d,))
    k = jax.random.normal(jax.random.key(2), (d,))
    big = rope.rope_angles((6, 6, 6), d)  # rows in (t, h, w) order

    def idx(t, h, w):
        return (t * 6 + h) * 6 + w

    def score(p, pp):
        qr = rope.apply_rope(q[None, None, None], big[idx(*p)][None])[0, 0, 0]
        kr = rope.apply_rope(k[None, None, None], big[idx(*pp)][None])[0, 0, 0]
        return float(qr @ kr)

    s1 = score((1, 2, 3), (0, 1, 1))
    s2 = score((4, 5, 4), (3, 4, 2))  # same offset (1, 1, 2)
    s3 = score((4, 5, 4), (3, 4, 3))  # different offset
    assert abs(s1 - s2) < 1e-4
    assert abs(s1 - s3) > 1e-3


def test_offset_equals_shifted_grid():
    a = rope.rope_angles((2, 3, 4), 24, offset=(1, 0, 2))
    full = rope.rope_angles((3, 3, 6), 24).reshape(3, 3, 6, -1)
    np.testing.assert_allclose(a.reshape(2, 3, 4, -1), full[1:, :, 2:], atol=1e-6)
