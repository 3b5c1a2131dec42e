"""CLIP vision tower (transformers `CLIPVisionModel`) in Flax NNX: Wan 2.1 I2V's image encoder.

Mirrors modeling_clip.py exactly (inference only, no dropout):
  * embeddings: a [CLS] vector, then non-overlapping p x p patches (Conv2d without bias, here a
    reshape + matmul), plus a learned position table over the 1 + (S / p)^2 tokens.
  * `pre_layrnorm` (sic, the HF name), then pre-norm blocks: x += Attn(LN1(x)) (q / k / v / out
    projections with biases, 1/sqrt(d) scaling, no mask); x += fc2(act(fc1(LN2(x)))).
  * `post_layernorm` on the [CLS] token gives `pooler_output`.
HF's `hidden_states` tuple is (the pre-norm embeddings, the output of every block); Wan uses
`hidden_states[-2]`, the output of the last block but one (`penultimate`, [B, 257, 1280] for
Wan's ViT-H/14 at 224 px), so its last block and post norm are loaded (the checkpoint has them)
but never run for Wan.

Layers are stacked on a leading axis (`layers/...` params have shape [L, ...]) and run with
`jax.lax.scan` over the first `num_layers` of them. Pixels are channels-last [B, S, S, 3],
normalised as `clip_preprocess.preprocess` makes them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from sora_jax.models import attention as attn_lib
from sora_jax.models import layers

ACTIVATIONS = {
    'gelu': lambda x: jax.nn.gelu(x, approximate=False),
    'quick_gelu': lambda x: x * jax.nn.sigmoid(1.702 * x),
    'gelu_new': lambda x: jax.nn.gelu(x, approximate=True),
    'gelu_pytorch_tanh': lambda x: jax.nn.gelu(x, approximate=True),
}
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    """Hyper-parameters (names follow HF `CLIPVisionConfig`); defaults: Wan's ViT-H/14."""

    image_size: int = 224  # input pixels (square)
    patch_size: int = 14  # patch side
    num_channels: int = 3  # input channels
    hidden_size: int = 1280  # width
    intermediate_size: int = 5120  # MLP hidden width
    num_hidden_layers: int = 32  # blocks
    num_attention_heads: int = 16  # heads
    layer_norm_eps: float = 1e-5  # LayerNorm epsilon
    hidden_act: str = 'gelu'  # one of ACTIVATIONS
    attention: str = 'xla'  # attention kernel (models/attention.py)
    dtype: str = 'float32'  # compute dtype
    param_dtype: str = 'float32'  # weights as loaded

    def validate(self) -> 'CLIPVisionConfig':
        if self.image_size % self.patch_size:
            raise ValueError(
                f'image_size={self.image_size} is not divisible by patch_size={self.patch_size}.'
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f'hidden_size={self.hidden_size} is not divisible by '
                f'num_attention_heads={self.num_attention_heads}.'
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f'hidden_act={self.hidden_act!r} is not one of {sorted(ACTIVATIONS)}.')
        for k in ('dtype', 'param_dtype'):
            if getattr(self, k) not in DTYPES:
                raise ValueError(f'{k}={getattr(self, k)!r} is not one of {sorted(DTYPES)}.')
        if self.num_hidden_layers < 2:
            raise ValueError(
                f'num_hidden_layers={self.num_hidden_layers}: Wan reads the last '
                'block but one, so at least 2 are needed.'
            )
        return self

    @property
    def num_tokens(self) -> int:
        return 1 + (self.image_size // self.patch_size) ** 2

    @classmethod
    def from_hf(cls, hf: dict[str, Any] | str, **overrides) -> 'CLIPVisionConfig':
        """From an HF `config.json` (dict, file or folder) of a `CLIPVisionModel` (or of a full
        `CLIPModel`, whose `vision_config` is read)."""
        if isinstance(hf, (str, os.PathLike)):
            path = os.path.join(hf, 'config.json') if os.path.isdir(hf) else hf
            with open(path) as f:
                hf = json.load(f)
        hf = dict(hf.get('vision_config', hf))
        names = (
            'image_size',
            'patch_size',
            'num_channels',
            'hidden_size',
            'intermediate_size',
            'num_hidden_layers',
            'num_attention_heads',
            'layer_norm_eps',
            'hidden_act',
        )
        kw = {k: hf[k] for k in names if k in hf}
        kw.update(overrides)
        return cls(**kw).validate()


class CLIPLayer(nnx.Module):
    """One pre-norm transformer block (HF `CLIPEncoderLayer`)."""

    def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs):
        d, kw = (
            cfg.hidden_size,
            dict(rngs=rngs, dtype=DTYPES[cfg.dtype], param_dtype=DTYPES[cfg.param_dtype]),
        )
        self.cfg = cfg
        self.layer_norm1 = layers.LayerNorm(d, eps=cfg.layer_norm_eps, affine=True)
        self.q_proj = layers.linear(d, d, ('embed', 'heads'), **kw)
        self.k_proj = layers.linear(d, d, ('embed', 'heads'), **kw)
        self.v_proj = layers.linear(d, d, ('embed', 'heads'), **kw)
        self.out_proj = layers.linear(d, d, ('heads', 'embed'), **kw)
        self.layer_norm2 = layers.LayerNorm(d, eps=cfg.layer_norm_eps, affine=True)
        self.fc1 = layers.linear(d, cfg.intermediate_size, ('embed', 'mlp'), **kw)
        self.fc2 = layers.linear(cfg.intermediate_size, d, ('mlp', 'embed'), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, N, D] -> [B, N, D]."""
        cfg, dtype = self.cfg, DTYPES[self.cfg.dtype]
        h = self.layer_norm1(x).astype(dtype)
        q, k, v = (
            rearrange(p(h), 'b n (h d) -> b n h d', h=cfg.num_attention_heads)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        out = attn_lib.dot_product_attention(q, k, v, None, impl=cfg.attention)
        x = x + self.out_proj(rearrange(out, 'b n h d -> b n (h d)')).astype(x.dtype)
        h = self.layer_norm2(x).astype(dtype)
        return x + self.fc2(ACTIVATIONS[cfg.hidden_act](self.fc1(h))).astype(x.dtype)


class CLIPVisionEncoder(nnx.Module):
    """pixels [B, S, S, 3] (CLIP-normalised) -> hidden states [B, 1 + (S/p)^2, hidden_size]."""

    def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs):
        cfg.validate()
        self.cfg = cfg
        d, p, pdt = cfg.hidden_size, cfg.patch_size, DTYPES[cfg.param_dtype]
        init = nnx.initializers.variance_scaling(
            1.0, 'fan_in', 'normal', in_axis=(0, 1, 2), out_axis=3
        )
        self.patch_embedding = nnx.Param(
            init(rngs.params(), (p, p, cfg.num_channels, d), pdt),
            out_sharding=(None, None, None, 'embed'),
        )
        self.class_embedding = nnx.Param(
            jax.random.normal(rngs.params(), (d,), pdt) * d**-0.5, out_sharding=('embed',)
        )
        self.position_embedding = nnx.Param(
            jax.random.normal(rngs.params(), (cfg.num_tokens, d), pdt) * 0.02,
            out_sharding=(None, 'embed'),
        )
        self.pre_layrnorm = layers.LayerNorm(d, eps=cfg.layer_norm_eps, affine=True)

        @nnx.split_rngs(splits=cfg.num_hidden_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: 'layers'})
        def make_layers(r):
            return CLIPLayer(cfg, rngs=r)

        self.layers = make_layers(rngs)
        self.post_layernorm = layers.LayerNorm(d, eps=cfg.layer_norm_eps, affine=True)

    def __call__(self, pixels: jax.Array, num_layers: int | None = None) -> jax.Array:
        """HF `hidden_states[num_layers]`: the embeddings after `pre_layrnorm` (0) or the output
        of block `num_layers` (None: all, HF `last_hidden_state`). pixels: [B, S, S, C]."""
        cfg = self.cfg
        n = cfg.num_hidden_layers if num_layers is None else int(num_layers)
        if not 0 <= n <= cfg.num_hidden_layers:
            raise ValueError(f'num_layers={num_layers} must be in [0, {cfg.num_hidden_layers}].')
        s, p = cfg.image_size, cfg.patch_size
        if pixels.ndim != 4 or pixels.shape[1:] != (s, s, cfg.num_channels):
            raise ValueError(
                f'pixels have shape {tuple(pixels.shape)}; expected [B, {s}, {s}, '
                f'{cfg.num_channels}] (clip_preprocess.preprocess makes them).'
            )
        dtype = DTYPES[cfg.dtype]
        tok = rearrange(pixels, 'b (h p) (w q) c -> b (h w) (p q c)', p=p, q=p)
        kernel = self.patch_embedding[...].reshape(-1, cfg.hidden_size)
        patches = tok.astype(dtype) @ kernel.astype(dtype)
        cls = jnp.broadcast_to(
            self.class_embedding[...].astype(dtype), (pixels.shape[0], 1, cfg.hidden_size)
        )
        x = jnp.concatenate([cls, patches], axis=1) + self.position_embedding[...].astype(dtype)
        x = self.pre_layrnorm(x).astype(dtype)
        if n == 0:
            return x
        gdef, state = nnx.split(self.layers)
        state = jax.tree.map(lambda a: a[:n], state)

        def body(h, layer_state):
            return nnx.merge(gdef, layer_state)(h), None

        x, _ = jax.lax.scan(body, x, state)
        return x

    def penultimate(self, pixels: jax.Array) -> jax.Array:
        """Wan's image features: HF `hidden_states[-2]` [B, 1 + (S/p)^2, hidden_size]."""
        return self(pixels, self.cfg.num_hidden_layers - 1)

    def pooled(self, pixels: jax.Array) -> jax.Array:
        """HF `pooler_output`: `post_layernorm` of the last block's [CLS] token, [B, hidden]."""
        return self.post_layernorm(self(pixels)[:, 0])
