"""UMT5 text encoder (Wan 2.1's umt5-xxl) in Flax NNX, plus its tokenizer and Wan's prompt rule.

Mirrors `transformers.UMT5EncoderModel` (modeling_umt5.py) exactly:
  * pre-norm blocks: x += SelfAttn(RMS(x)); x += GatedGeluFFN(RMS(x)); final RMS norm.
  * T5 RMS norm: no mean subtraction, no bias, eps 1e-6, statistics in float32.
  * attention without 1/sqrt(d) scaling (`scaling = 1.0`), no biases in any projection,
    plus a bidirectional relative position bias with **its own table in every layer** (the UMT5
    difference from T5, which shares layer 0's table), keys masked additively at padding.
  * FFN: wo(gelu_tanh(wi_0 x) * wi_1 x)  ("gated-gelu" == gelu_new).
Dropout is omitted: this module is for inference and frozen-encoder training only.

Layers are stacked on a leading axis (`layers/...` params have shape [L, ...]) and run with
`jax.lax.scan`, so a 24-layer XXL encoder compiles one block.

Wan's prompt rule (diffusers `WanPipeline._get_t5_prompt_embeds`): clean the text, tokenize with
the eos token, pad/truncate to `max_length` (512), encode with the padding mask, then zero the
embeddings at padded positions (`encode_prompt`).
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class UMT5Config:
    """Encoder hyper-parameters (names follow HF `UMT5Config`)."""

    vocab_size: int = 256384  # rows of the token table (`shared`)
    d_model: int = 4096  # model width
    d_kv: int = 64  # per-head width
    num_heads: int = 64  # attention heads
    d_ff: int = 10240  # gated FFN hidden width
    num_layers: int = 24  # encoder blocks
    num_buckets: int = 32  # relative position buckets (half per direction)
    max_distance: int = 128  # distances >= this share the last bucket
    eps: float = 1e-6  # RMS norm epsilon
    dtype: Any = jnp.float32  # activation / compute dtype
    param_dtype: Any = jnp.float32  # parameter storage dtype

    def validate(self) -> 'UMT5Config':
        for name in ('vocab_size', 'd_model', 'd_kv', 'num_heads', 'd_ff', 'num_layers'):
            if getattr(self, name) < 1:
                raise ValueError(f'UMT5Config.{name}={getattr(self, name)} must be >= 1.')
        if self.num_buckets < 4 or self.num_buckets % 2:
            raise ValueError(
                f'UMT5Config.num_buckets={self.num_buckets}: need an even number >= 4 '
                '(half the buckets per direction, half of those exact).'
            )
        if self.max_distance <= self.num_buckets // 4:
            raise ValueError(
                f'UMT5Config.max_distance={self.max_distance} must exceed '
                f'num_buckets // 4 = {self.num_buckets // 4}.'
            )
        return self

    @classmethod
    def from_hf(cls, hf: dict[str, Any] | str, **overrides) -> 'UMT5Config':
        """From an HF `config.json` (dict or path to the file or to its folder)."""
        if isinstance(hf, (str, os.PathLike)):
            path = os.path.join(hf, 'config.json') if os.path.isdir(hf) else hf
            with open(path) as f:
                hf = json.load(f)
        ffp = hf.get('feed_forward_proj', 'gated-gelu')
        if ffp != 'gated-gelu':
            raise ValueError(
                f'feed_forward_proj={ffp!r} is not supported; only UMT5 "gated-gelu" '
                "checkpoints (such as Wan's umt5-xxl) are."
            )
        kw = dict(
            vocab_size=hf['vocab_size'],
            d_model=hf['d_model'],
            d_kv=hf['d_kv'],
            num_heads=hf['num_heads'],
            d_ff=hf['d_ff'],
            num_layers=hf['num_layers'],
            num_buckets=hf.get('relative_attention_num_buckets', 32),
            max_distance=hf.get('relative_attention_max_distance', 128),
            eps=hf.get('layer_norm_epsilon', 1e-6),
        )
        kw.update(overrides)
        return cls(**kw).validate()


def umt5_xxl(**overrides) -> UMT5Config:
    """google/umt5-xxl encoder as used by Wan 2.1 (~5.7B params)."""
    return UMT5Config(**overrides).validate()


def umt5_tiny(**overrides) -> UMT5Config:
    """A few-KB encoder for tests."""
    kw = dict(
        vocab_size=128,
        d_model=32,
        d_kv=8,
        num_heads=4,
        d_ff=48,
        num_layers=2,
        num_buckets=8,
        max_distance=16,
    )
    kw.update(overrides)
    return UMT5Config(**kw).validate()


# ----------------------------------------------------------------------------- modules


def relative_position_buckets(
    q_len: int, k_len: int, num_buckets: int, max_distance: int
) -> np.ndarray:
    """Bidirectional T5 buckets, int32 [q_len, k_len]; float32 ops in HF's order (exact match)."""
    rel = np.arange(k_len, dtype=np.int64)[None, :] - np.arange(q_len, dtype=np.int64)[:, None]
    half = num_buckets // 2
    buckets = (rel > 0).astype(np.int64) * half
    rel = np.abs(rel)
    max_exact = half // 2
    with np.errstate(divide='ignore'):
        ratio = np.log(rel.astype(np.float32) / np.float32(max_exact))
    ratio = ratio / np.float32(np.log(max_distance / max_exact))
    ratio = (ratio * np.float32(half - max_exact)).astype(np.float32)
    large = max_exact + np.where(rel < max_exact, 0, ratio).astype(np.int64)
    large = np.minimum(large, half - 1)
    return (buckets + np.where(rel < max_exact, rel, large)).astype(np.int32)


class T5Norm(nnx.Module):
    """RMS norm without mean/bias; float32 statistics; HF casts to a half-precision weight dtype."""

    def __init__(self, dim: int, cfg: UMT5Config):
        self.eps = cfg.eps
        self.weight = nnx.Param(jnp.ones((dim,), cfg.param_dtype), out_sharding=('norm',))

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        w = self.weight[...]
        if w.dtype != jnp.float32:
            y = y.astype(w.dtype)
        return w * y


def _dense(din: int, dout: int, axes, cfg: UMT5Config, rngs: nnx.Rngs, std: float) -> nnx.Linear:
    return nnx.Linear(
        din,
        dout,
        use_bias=False,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        kernel_init=nnx.with_partitioning(nnx.initializers.normal(std), axes),
        rngs=rngs,
    )


class UMT5Layer(nnx.Module):
    """One encoder block: self-attention with its own relative bias table, then gated FFN."""

    def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs):
        inner, d = cfg.num_heads * cfg.d_kv, cfg.d_model
        self.cfg = cfg
        self.attn_norm = T5Norm(d, cfg)
        self.q = _dense(d, inner, ('embed', 'heads'), cfg, rngs, (d * cfg.d_kv) ** -0.5)
        self.k = _dense(d, inner, ('embed', 'heads'), cfg, rngs, d**-0.5)
        self.v = _dense(d, inner, ('embed', 'heads'), cfg, rngs, d**-0.5)
        self.o = _dense(inner, d, ('heads', 'embed'), cfg, rngs, inner**-0.5)
        self.rel_bias = nnx.Embed(
            cfg.num_buckets,
            cfg.num_heads,
            dtype=jnp.float32,
            param_dtype=cfg.param_dtype,
            embedding_init=nnx.with_partitioning(nnx.initializers.normal(d**-0.5), (None, None)),
            rngs=rngs,
        )
        self.ffn_norm = T5Norm(d, cfg)
        self.wi_0 = _dense(d, cfg.d_ff, ('embed', 'mlp'), cfg, rngs, d**-0.5)
        self.wi_1 = _dense(d, cfg.d_ff, ('embed', 'mlp'), cfg, rngs, d**-0.5)
        self.wo = _dense(cfg.d_ff, d, ('mlp', 'embed'), cfg, rngs, cfg.d_ff**-0.5)

    def __call__(self, x: jax.Array, buckets: jax.Array, key_bias: jax.Array) -> jax.Array:
        """x: [B, S, D]; buckets: int [S, S]; key_bias: f32 [B, 1, 1, S] (0 or -big)."""
        cfg, dtype = self.cfg, self.cfg.dtype
        h = self.attn_norm(x).astype(dtype)
        split = lambda t: t.reshape(*t.shape[:2], cfg.num_heads, cfg.d_kv)  # [B, S, N, Dh]
        q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
        scores = jnp.einsum('bqnd,bknd->bnqk', q, k, preferred_element_type=jnp.float32)
        pos = jnp.transpose(self.rel_bias(buckets).astype(jnp.float32), (2, 0, 1))  # [N, S, S]
        probs = jax.nn.softmax(scores + pos[None] + key_bias, axis=-1).astype(dtype)
        out = jnp.einsum('bnqk,bknd->bqnd', probs, v).reshape(*x.shape[:2], -1)
        x = x + self.o(out).astype(x.dtype)
        h = self.ffn_norm(x).astype(dtype)
        h = jax.nn.gelu(self.wi_0(h), approximate=True) * self.wi_1(h)
        return x + self.wo(h).astype(x.dtype)


class UMT5Encoder(nnx.Module):
    """Token ids [B, S] + mask [B, S] -> last hidden states [B, S, d_model] (HF last_hidden_state)."""

    def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs):
        cfg.validate()
        self.cfg = cfg
        self.shared = nnx.Embed(
            cfg.vocab_size,
            cfg.d_model,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            embedding_init=nnx.with_partitioning(nnx.initializers.normal(1.0), ('vocab', 'embed')),
            rngs=rngs,
        )

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: 'layers'})
        def make_layers(r):
            return UMT5Layer(cfg, rngs=r)

        self.layers = make_layers(rngs)
        self.final_norm = T5Norm(cfg.d_model, cfg)

    def __call__(self, ids: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        cfg = self.cfg
        b, s = ids.shape
        if mask is None:
            mask = jnp.ones((b, s), jnp.int32)
        x = self.shared(ids)  # [B, S, D]
        buckets = jnp.asarray(relative_position_buckets(s, s, cfg.num_buckets, cfg.max_distance))
        key_bias = jnp.where(mask.astype(bool), 0.0, jnp.finfo(jnp.float32).min)
        key_bias = key_bias[:, None, None, :].astype(jnp.float32)  # [B, 1, 1, S]
        graphdef, params = nnx.split(self.layers)

        def body(h, layer_params):
            return nnx.merge(graphdef, layer_params)(h, buckets, key_bias), None

        x, _ = jax.lax.scan(body, x, params)
        return self.final_norm(x)


def encode_prompt(model: UMT5Encoder, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """Wan's rule: encoder states with padded positions set to zero. -> [B, S, d_model]."""
    out = model(ids, mask)
    return out * mask[..., None].astype(out.dtype)


# ----------------------------------------------------------------------------- tokenizer


def prompt_clean(text: str) -> str:
    """diffusers' Wan `prompt_clean`: ftfy (if installed), double html-unescape, squeeze spaces."""
    try:
        import ftfy  # optional, as in diffusers

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r'\s+', ' ', text).strip()


class UMT5Tokenizer:
    """Wan's umt5-xxl tokenizer from a local folder, with the pad/truncate rule built in.

    The Wan / google umt5-xxl `tokenizer/` folder holds `tokenizer.json` (HF tokenizers; what
    transformers' `T5Tokenizer` loads), `spiece.model` (sentencepiece), `tokenizer_config.json`
    and `special_tokens_map.json`. `tokenizer.json` is preferred when the `tokenizers` package is
    importable (it also knows the `<extra_id_*>` sentinels); otherwise `spiece.model` is used.
    """

    def __init__(self, encode_fn, pad_id: int, eos_id: int, backend: str):
        self._encode = encode_fn
        self.pad_id, self.eos_id, self.backend = pad_id, eos_id, backend

    @classmethod
    def from_dir(cls, path: str, backend: str = 'auto') -> 'UMT5Tokenizer':
        tj, sp = os.path.join(path, 'tokenizer.json'), os.path.join(path, 'spiece.model')
        if backend not in ('auto', 'tokenizers', 'sentencepiece'):
            raise ValueError(f"backend={backend!r}: use 'auto', 'tokenizers' or 'sentencepiece'.")
        if backend in ('auto', 'tokenizers') and os.path.exists(tj):
            try:
                import tokenizers
            except ImportError:
                if backend == 'tokenizers':
                    raise ValueError('backend="tokenizers" needs `pip install tokenizers`.')
            else:
                tok = tokenizers.Tokenizer.from_file(tj)
                pad, eos = tok.token_to_id('<pad>'), tok.token_to_id('</s>')
                enc = lambda texts: [
                    e.ids for e in tok.encode_batch(texts, add_special_tokens=False)
                ]
                return cls(enc, pad, eos, 'tokenizers')
        if backend in ('auto', 'sentencepiece') and os.path.exists(sp):
            import sentencepiece

            proc = sentencepiece.SentencePieceProcessor(model_file=sp)
            return cls(
                lambda texts: proc.encode(list(texts)),
                proc.pad_id(),
                proc.eos_id(),
                'sentencepiece',
            )
        found = sorted(os.listdir(path)) if os.path.isdir(path) else 'no such folder'
        raise ValueError(
            f'No usable tokenizer in {path!r} (found: {found}). Point it at the '
            'umt5-xxl `tokenizer/` folder holding tokenizer.json or spiece.model.'
        )

    def __call__(
        self, texts: str | Sequence[str], max_length: int = 512, clean: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """-> ids int32 [B, max_length], mask int32 [B, max_length].

        HF semantics (padding='max_length', truncation=True, add_special_tokens=True): the text is
        cut to max_length - 1 pieces, eos is appended, then pad_id fills the rest (mask 0).
        """
        if max_length < 1:
            raise ValueError(f'max_length={max_length} must be >= 1 (Wan uses 512).')
        texts = [texts] if isinstance(texts, str) else list(texts)
        if clean:
            texts = [prompt_clean(t) for t in texts]
        ids = np.full((len(texts), max_length), self.pad_id, np.int32)
        mask = np.zeros((len(texts), max_length), np.int32)
        for i, pieces in enumerate(self._encode(texts)):
            row = list(pieces[: max_length - 1]) + [self.eos_id]
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return ids, mask
