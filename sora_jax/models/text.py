"""The byte-level text encoder: UTF-8 bytes -> a small bidirectional transformer.

No vocabulary file: any language works. Positions are learned absolute embeddings
(`position='learned'`) or rotary (`position='rope'`): with RoPE a word means the same wherever it
starts, so "triangle" after "red " (6 bytes) is the "triangle" seen after "blue " (7 bytes), which
an unseen colour-shape pairing needs. Token ids are 0 = padding, 1..256 = byte value + 1,
257 = BOS (always first, so the empty prompt — the unconditional input for classifier-free
guidance — is one BOS token, never an all-padding row). The UMT5 encoder that loads Wan's
weights lives in `models/umt5.py`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from sora_jax.models import attention as attn_lib
from sora_jax.models import layers, rope
from sora_jax.models.config import fields_from_config

PAD, BOS, VOCAB = 0, 257, 258
POSITIONS = ('learned', 'rope')


@dataclasses.dataclass(frozen=True)
class ByteTokenizer:
    """UTF-8 bytes -> int32 ids of a fixed length with a padding mask."""

    max_length: int = 128

    def encode_one(self, text: str, *, warn: bool = True) -> np.ndarray:
        if not isinstance(text, str):
            raise ValueError(f'prompt must be a str, got {type(text).__name__}: {text!r}.')
        data = text.encode('utf-8')
        room = self.max_length - 1
        if len(data) > room:
            if warn:
                logging.warning(
                    "Prompt is %d UTF-8 bytes; truncated to the text encoder's "
                    'max_length=%d (raise text.max_length to keep it all): %r',
                    len(data),
                    room,
                    text[:60] + '...',
                )
            data = data[:room]
            # Never cut a multi-byte character in half.
            data = data.decode('utf-8', errors='ignore').encode('utf-8')
        ids = np.zeros((self.max_length,), np.int32)
        ids[0] = BOS
        ids[1 : 1 + len(data)] = np.frombuffer(data, np.uint8).astype(np.int32) + 1
        return ids

    def __call__(self, texts: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """texts -> (ids [N, L] int32, mask [N, L] bool)."""
        if isinstance(texts, str):
            texts = [texts]
        ids = np.stack([self.encode_one(t) for t in texts])
        return ids, ids != PAD

    @staticmethod
    def decode(ids: np.ndarray) -> str:
        ids = np.asarray(ids)
        data = bytes(int(i) - 1 for i in ids if 0 < int(i) < BOS)
        return data.decode('utf-8', errors='replace')


@dataclasses.dataclass(frozen=True)
class ByteEncoderConfig:
    max_length: int = 128
    dim: int = 128
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: int = 4
    dtype: str = 'float32'
    position: str = 'learned'  # 'learned' absolute embeddings | 'rope' (rotary, relative)

    @classmethod
    def from_config(cls, cfg: Any) -> 'ByteEncoderConfig':
        c = cls(**fields_from_config(cls, cfg, 'text'))
        if c.dim % c.num_heads:
            raise ValueError(f'text.dim={c.dim} is not divisible by text.num_heads={c.num_heads}.')
        if c.position not in POSITIONS:
            raise ValueError(f'text.position={c.position!r} is not one of {POSITIONS}.')
        if c.position == 'rope' and (c.dim // c.num_heads) % 2:
            raise ValueError(
                f'text.position=rope needs an even head dim; text.dim={c.dim} / '
                f'text.num_heads={c.num_heads} is odd.'
            )
        if c.max_length < 2:
            raise ValueError(f'text.max_length={c.max_length} must be >= 2 (BOS + one byte).')
        return c


class _EncoderLayer(nnx.Module):
    def __init__(self, cfg: ByteEncoderConfig, *, rngs: nnx.Rngs):
        dt = jnp.dtype(cfg.dtype)
        self.heads = cfg.num_heads
        self.norm1 = layers.LayerNorm(cfg.dim, affine=True, eps=1e-5)
        self.qkv = layers.linear(cfg.dim, 3 * cfg.dim, ('embed', 'heads'), rngs=rngs, dtype=dt)
        self.out = layers.linear(cfg.dim, cfg.dim, ('heads', 'embed'), rngs=rngs, dtype=dt)
        self.norm2 = layers.LayerNorm(cfg.dim, affine=True, eps=1e-5)
        self.mlp = layers.FeedForward(cfg.dim, cfg.mlp_ratio * cfg.dim, rngs=rngs, dtype=dt)

    def __call__(self, x, mask, angles=None):
        b, n, d = x.shape
        q, k, v = jnp.split(self.qkv(self.norm1(x).astype(x.dtype)), 3, axis=-1)
        q, k, v = (a.reshape(b, n, self.heads, d // self.heads) for a in (q, k, v))
        if angles is not None:
            q, k = rope.apply_rope(q, angles), rope.apply_rope(k, angles)
        h = attn_lib.dot_product_attention(q, k, v, mask, impl='xla').reshape(b, n, d)
        x = x + self.out(h)
        return x + self.mlp(self.norm2(x).astype(x.dtype))


class ByteTextEncoder(nnx.Module):
    """ids: [B, L] int32 -> features [B, L, dim] (padding rows zeroed)."""

    def __init__(self, cfg: ByteEncoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = nnx.Embed(
            VOCAB,
            cfg.dim,
            rngs=rngs,
            embedding_init=nnx.with_partitioning(nnx.initializers.normal(0.02), ('vocab', 'embed')),
        )
        if cfg.position == 'learned':
            self.pos = nnx.Param(
                jax.random.normal(rngs.params(), (cfg.max_length, cfg.dim)) * 0.02,
                out_sharding=(None, 'embed'),
            )
        self.layers = nnx.List([_EncoderLayer(cfg, rngs=rngs) for _ in range(cfg.depth)])
        self.norm = layers.LayerNorm(cfg.dim, affine=True, eps=1e-5)

    def __call__(self, ids: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        if ids.shape[-1] > self.cfg.max_length:
            raise ValueError(
                f'text ids have length {ids.shape[-1]} > text.max_length='
                f'{self.cfg.max_length}; tokenize with ByteTokenizer(max_length).'
            )
        mask = ids != PAD if mask is None else mask
        x = self.embed(ids)
        angles = None
        if self.cfg.position == 'learned':
            x = x + self.pos[: ids.shape[-1]][None]
        else:
            angles = rope.rope_angles_1d(ids.shape[-1], self.cfg.dim // self.cfg.num_heads)
        for layer in self.layers:
            x = layer(x, mask, angles)
        return self.norm(x) * mask[..., None]
