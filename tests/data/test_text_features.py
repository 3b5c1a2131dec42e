"""Caption features encoded once: the cache is reused without building the encoder, a changed
caption set encodes again, and records get their caption's features padded with zeros."""

import numpy as np
import pytest

from sora_jax.data import text_features


class _Source:
    def __init__(self, captions):
        self.recs = [
            {
                'id': np.int64(i),
                'caption_en': c.encode(),
                'caption_es': b'',
                'latents': np.zeros((1, 2, 2, 4), np.float32),
            }
            for i, c in enumerate(captions)
        ]

    def __len__(self):
        return len(self.recs)

    def __getitem__(self, i):
        return self.recs[i]


def _encoder(calls):
    def make():
        calls.append(1)
        return lambda texts: [np.full((len(t) % 5 + 1, 3), len(t), np.float32) for t in texts]

    return make


def test_cache_reused_and_context_padded(tmp_path):
    src = {'train': _Source(['a cat', 'a dog runs', 'a cat'])}
    caps = text_features.captions_of(src)
    assert caps == ['a cat', 'a dog runs']
    path = text_features.cache_path(str(tmp_path), caps, 'enc', 8)
    calls = []
    feats = text_features.encode_captions(caps, _encoder(calls), path, batch_size=4)
    again = text_features.encode_captions(caps, _encoder(calls), path, batch_size=4)
    assert len(calls) == 1  # the second call read the file
    for c in caps:
        np.testing.assert_array_equal(feats[c], again[c])
    other = text_features.encode_captions(['a bird'], _encoder(calls), path)
    assert len(calls) == 2 and list(other) == ['a bird']  # other captions: encoded again
    ctx = text_features.ContextSource(src['train'], feats, 8, seed=0, spanish_prob=0.0)[1]
    n = len('a dog runs') % 5 + 1
    assert ctx['context'].shape == (8, 3)
    assert (ctx['context'][:n] == len('a dog runs')).all() and not ctx['context'][n:].any()
    with pytest.raises(ValueError, match='no text features'):
        text_features.ContextSource(_Source(['unseen']), feats, 8, 0, 0.0)[0]
