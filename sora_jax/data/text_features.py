"""Text features of every caption, encoded once by a frozen text encoder and joined to records.

A model fed precomputed text features (`train/objectives/flow_context.py`: Wan's DiT over its
frozen 5.7B UMT5) needs no text encoder in the train step. `encode_captions` runs the encoder
once over the distinct captions of a dataset and keeps the result on disk; `ContextSource`
adds each record's features to it:

  record  {'latents' [T', h, w, C], 'id', 'caption_en', 'caption_es', ...}
  ->      the same plus 'context' f32 [max_length, D]: the caption's features, zero past its
          last token (Wan's rule; what `pipeline.UMT5Text` feeds at sampling)

The caption language of a record is `data/pipeline.py`'s `choose_language(seed, id,
spanish_prob)`, so text features and text ids always describe the same caption.

Cache file (`cache_path`): `<root>/text_features/<key>.npz` holding `captions` (a JSON list) and
one array `f<i>` [tokens_i, D] per caption; the key hashes the captions, the encoder's identity
and max_length. Written to a temporary name and renamed, so it is complete or absent; it holds
plain arrays only (read with allow_pickle=False).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable, Sequence

import numpy as np
from absl import logging

from sora_jax.data.pipeline import _text, choose_language

# texts -> one float32 array [tokens_i, D] per text (the features of its real tokens only)
EncodeFn = Callable[[Sequence[str]], Sequence[np.ndarray]]


def captions_of(sources: dict[str, Any]) -> list[str]:
    """The distinct non-empty captions (English and Spanish) of every record, sorted."""
    out = set()
    for src in sources.values():
        for i in range(len(src)):
            rec = src[i]
            out.update(
                t
                for t in (_text(rec.get('caption_en', b'')), _text(rec.get('caption_es', b'')))
                if t
            )
    return sorted(out)


def cache_path(root: str, captions: Sequence[str], encoder_id: str, max_length: int) -> str:
    """`<root>/text_features/<key>.npz`, the key hashing (captions, encoder id, max_length)."""
    ident = json.dumps([list(captions), encoder_id, int(max_length)])
    key = hashlib.sha1(ident.encode()).hexdigest()[:16]
    return os.path.join(root, 'text_features', key + '.npz')


def encode_captions(
    captions: Sequence[str], make_encoder: Callable[[], EncodeFn], path: str, batch_size: int = 8
) -> dict[str, np.ndarray]:
    """{caption: f32 [tokens, D]} from the cache file `path`, or encoded (the encoder is built
    by `make_encoder()` only then) and written there."""
    if os.path.isfile(path):
        with np.load(path, allow_pickle=False) as z:
            cached = json.loads(str(z['captions']))
            if cached == list(captions):
                return {c: z[f'f{i}'] for i, c in enumerate(cached)}
        logging.warning('text feature cache %s lists other captions; encoding again.', path)
    encode = make_encoder()
    feats: list[np.ndarray] = []
    for start in range(0, len(captions), batch_size):
        chunk = list(captions[start : start + batch_size])
        pad = [''] * (batch_size - len(chunk))  # one batch shape: one compile
        feats += [np.asarray(f, np.float32) for f in encode(chunk + pad)[: len(chunk)]]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f'{path}.tmp{os.getpid()}.npz'
    np.savez(
        tmp,
        captions=np.asarray(json.dumps(list(captions))),
        **{f'f{i}': f for i, f in enumerate(feats)},
    )
    os.replace(tmp, path)
    logging.info('encoded %d captions into %s', len(captions), path)
    return dict(zip(captions, feats))


class ContextSource:
    """`source` (random access, records with captions) + 'context' f32 [max_length, D]."""

    def __init__(
        self,
        source,
        features: dict[str, np.ndarray],
        max_length: int,
        seed: int,
        spanish_prob: float,
    ):
        self.source, self.features = source, features
        self.max_length, self.seed, self.spanish_prob = int(max_length), int(seed), spanish_prob
        self.dim = next(iter(features.values())).shape[-1] if features else 0

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        rec = dict(self.source[i])
        captions = [_text(rec.get('caption_en', b'')), _text(rec.get('caption_es', b''))]
        lang = choose_language(self.seed, int(rec['id']), self.spanish_prob)
        text = captions[lang] or captions[1 - lang]
        if text not in self.features:
            raise ValueError(
                f'record {i} (id {int(rec["id"])}): caption {text!r} has no text '
                'features; encode the captions of this very dataset.'
            )
        f = self.features[text][: self.max_length]
        ctx = np.zeros((self.max_length, self.dim), np.float32)
        ctx[: len(f)] = f
        rec['context'] = ctx
        return rec

    def record_sizes(self):
        sizes = getattr(self.source, 'record_sizes', None)
        return (
            sizes()
            if callable(sizes)
            else [tuple(self.source[i]['latents'].shape[:3]) for i in range(len(self))]
        )
