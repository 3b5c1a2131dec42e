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
