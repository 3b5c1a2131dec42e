"""UMT5 encoder and tokenizer: shapes, masking, padding rules (no torch needed)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece as spm
from flax import nnx

from sora_jax.models import umt5

SENTENCES = [
    'A red circle moves left across a blue background.',
    'Un cuadrado verde gira lentamente sobre fondo negro.',
    'Two yellow triangles bounce up and down.',
    'Una estrella blanca crece y luego se encoge.',
    'The camera pans right over a field of shapes.',
]


@pytest.fixture(scope='session')
def tok_dir(tmp_path_factory):
    """A tiny T5-style sentencepiece model (pad 0, eos 1, unk 2), like umt5's spiece.model."""
    d = tmp_path_factory.mktemp('umt5_tok')
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 20),
        model_prefix=str(d / 'spiece'),
        vocab_size=60,
        model_type='unigram',
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        minloglevel=2,
    )
    return str(d)


@pytest.fixture(scope='session')
def tiny():
    cfg = umt5.umt5_tiny(vocab_size=60)
    return umt5.UMT5Encoder(cfg, rngs=nnx.Rngs(0))


def test_tokenizer_pad_truncate_mask(tok_dir):
    tok = umt5.UMT5Tokenizer.from_dir(tok_dir)
    assert tok.backend == 'sentencepiece' and (tok.pad_id, tok.eos_id) == (0, 1)
    sp = spm.SentencePieceProcessor(model_file=f'{tok_dir}/spiece.model')
    pieces = sp.encode('A red circle moves')
    ids, mask = tok(['A red circle moves', SENTENCES[1] * 3], max_length=16)
    assert ids.shape == mask.shape == (2, 16) and ids.dtype == np.int32
    n = len(pieces) + 1
    assert ids[0, :n].tolist() == pieces + [1]  # eos appended
    assert ids[0, n:].tolist() == [0] * (16 - n)  # pad id 0
    assert mask[0].tolist() == [1] * n + [0] * (16 - n)
    long = sp.encode(SENTENCES[1] * 3)
    assert len(long) > 16
    assert ids[1].tolist() == long[:15] + [1]  # truncated, eos kept
    assert mask[1].sum() == 16


def test_tokenizer_cleans_like_wan(tok_dir):
    tok = umt5.UMT5Tokenizer.from_dir(tok_dir)
    a, _ = tok('  A red &amp;amp; circle\n\tmoves  ', max_length=20)
    b, _ = tok('A red & circle moves', max_length=20)
    np.testing.assert_array_equal(a, b)
    assert umt5.prompt_clean('  x &amp;lt; y \n z ') == 'x < y z'


def test_tokenizer_errors(tmp_path, tok_dir):
    with pytest.raises(ValueError, match='No usable tokenizer'):
        umt5.UMT5Tokenizer.from_dir(str(tmp_path))
    with pytest.raises(ValueError, match='max_length'):
        umt5.UMT5Tokenizer.from_dir(tok_dir)('x', max_length=0)


def test_encoder_shapes_and_per_layer_tables(tiny):
    cfg = tiny.cfg
    assert tiny.layers.rel_bias.embedding.shape == (cfg.num_layers, cfg.num_buckets, cfg.num_heads)
    assert tiny.layers.q.kernel.shape == (cfg.num_layers, cfg.d_model, cfg.num_heads * cfg.d_kv)
    ids = jnp.arange(2 * 9, dtype=jnp.int32).reshape(2, 9) % cfg.vocab_size
    out = tiny(ids, jnp.ones_like(ids))
    assert out.shape == (2, 9, cfg.d_model) and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))


def test_padding_does_not_change_valid_positions(tiny):
    """Masked keys are excluded and buckets are relative: extra padding changes nothing."""
    ids = jnp.array([[5, 9, 13, 7, 1]], jnp.int32)
    short = tiny(ids, jnp.ones_like(ids))
    padded_ids = jnp.concatenate([ids, jnp.array([[0, 0, 0, 0, 0, 0, 0]], jnp.int32) + 3], 1)
    mask = (jnp.arange(12) < 5).astype(jnp.int32)[None]
    padded = umt5.encode_prompt(tiny, padded_ids, mask)
    np.testing.assert_allclose(padded[:, :5], short, atol=1e-5)
    assert float(jnp.abs(padded[:, 5:]).max()) == 0.0


def test_every_layer_bias_table_is_used(tiny):
    """Zeroing a layer's bias table must change the output (the bias is used, per layer)."""
    ids = jnp.array([[4, 8, 15, 16, 23, 42 % 60]], jnp.int32)
    graphdef, state = nnx.split(tiny)
    base = tiny(ids)
    table = state['layers']['rel_bias']['embedding']
    for layer in range(tiny.cfg.num_layers):
        new = jax.tree.map(lambda x: x, state)
        new['layers']['rel_bias']['embedding'].set_value(table[...].at[layer].set(0.0))
        changed = nnx.merge(graphdef, new)(ids)
        assert float(jnp.abs(changed - base).max()) > 1e-4


def test_bucket_table_values():
    # Wan defaults: 16 buckets per direction, 8 exact, log-spaced to 128.
    b = umt5.relative_position_buckets(1, 300, 32, 128)[0]
    assert b[0] == 0
    assert b[1] == 16 + 1 and b[7] == 16 + 7  # positive distances use the upper half
    assert b[128:].max() == b[299] == 31  # saturates at the last bucket
    left = umt5.relative_position_buckets(300, 1, 32, 128)[:, 0]
    assert left[1] == 1 and left[299] == 15


def test_config_validation():
    with pytest.raises(ValueError, match='num_buckets'):
        umt5.umt5_tiny(num_buckets=7)
    with pytest.raises(ValueError, match='feed_forward_proj'):
        umt5.UMT5Config.from_hf(
            dict(
                vocab_size=8,
                d_model=8,
                d_kv=4,
                num_heads=2,
                d_ff=8,
                num_layers=1,
                feed_forward_proj='relu',
            )
        )
    xxl = umt5.umt5_xxl()
    assert (xxl.num_layers, xxl.d_model, xxl.d_ff, xxl.num_heads, xxl.d_kv, xxl.vocab_size) == (
        24,
        4096,
        10240,
        64,
        64,
        256384,
    )
