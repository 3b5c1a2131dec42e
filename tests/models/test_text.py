"""Byte tokenizer round trip (any language), truncation, and encoder padding behaviour."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from sora_jax.models.text import BOS, ByteEncoderConfig, ByteTextEncoder, ByteTokenizer


def test_round_trip_any_language():
    tok = ByteTokenizer(64)
    for s in ['a red circle moving to the left', 'un círculo rojo moviéndose', '红色的圆', '']:
        ids, mask = tok(s)
        assert ids[0, 0] == BOS
        assert tok.decode(ids[0]) == s
        assert int(mask.sum()) == 1 + len(s.encode('utf-8'))


def test_truncation_warns_and_keeps_valid_utf8(caplog):
    tok = ByteTokenizer(8)
    ids, mask = tok('ñññññññ')  # 14 bytes, room for 7 -> 3 whole characters
    assert mask.sum() == 1 + 6
    assert tok.decode(ids[0]) == 'ñññ'


def test_encoder_ignores_padding_content():
    cfg = ByteEncoderConfig(max_length=16, dim=32, depth=2, num_heads=4)
    enc = ByteTextEncoder(cfg, rngs=nnx.Rngs(0))
    ids, mask = ByteTokenizer(16)(['abc'])
    out = enc(jnp.asarray(ids))
    assert out.shape == (1, 16, 32)
    np.testing.assert_array_equal(np.asarray(out[0, 4:]), 0.0)
    ids2 = ids.copy()
    ids2[0, 4:] = 66  # content in padded positions, still masked out
    out2 = enc(jnp.asarray(ids2), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(out[0, :4]), np.asarray(out2[0, :4]), atol=1e-5)


def _shifted(enc, ids, shift):
    """Encoder output of `ids` [1, n] starting at position `shift` (masked padding before it)."""
    n = ids.shape[1]
    padded = np.zeros((1, n + shift), np.int32)
    padded[0, shift:] = ids[0]
    out = enc(jnp.asarray(padded), jnp.asarray(padded != 0))
    return np.asarray(out[0, shift:])


def test_rope_positions_are_relative():
    """With text.position='rope' a byte string encodes the same wherever it starts (what lets
    'triangle' after 'red ' mean the 'triangle' seen after 'blue '); learned positions do not."""
    ids = np.asarray(ByteTokenizer(12)(['triangle'])[0][:, 1:10])  # bytes, no BOS, no padding
    rope = ByteTextEncoder(
        ByteEncoderConfig(max_length=16, dim=32, depth=2, num_heads=4, position='rope'),
        rngs=nnx.Rngs(0),
    )
    assert not hasattr(rope, 'pos')
    np.testing.assert_allclose(_shifted(rope, ids, 0), _shifted(rope, ids, 3), atol=1e-5)
    # still order-aware: reversing the bytes changes every feature
    rev = np.asarray(_shifted(rope, ids[:, ::-1].copy(), 0))[::-1]
    assert np.abs(rev - _shifted(rope, ids, 0)).max() > 1e-2
    learned = ByteTextEncoder(
        ByteEncoderConfig(max_length=16, dim=32, depth=2, num_heads=4), rngs=nnx.Rngs(0)
    )
    assert np.abs(_shifted(learned, ids, 0) - _shifted(learned, ids, 3)).max() > 1e-2


def test_bad_position_names_the_choices():
    import pytest

    with pytest.raises(ValueError, match="text.position='abs'.*learned.*rope"):
        ByteEncoderConfig.from_config({'position': 'abs'})
