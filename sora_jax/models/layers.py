"""Small shared building blocks: norms, linears with logical axes, MLPs, modulation, embeddings.

Every parameter carries logical axis names (`nnx.with_partitioning`); `parallel/mesh.py` maps
them to mesh axes. Logical names used across the models:
  'embed'  model width            'mlp'   FFN hidden width
  'heads'  flattened q/k/v width  'kv'    text / condition width
  'vocab'  token table rows       'norm'  per-channel norm scales (kept replicated)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

Axes = tuple[str | None, ...]


def linear(
    din: int,
    dout: int,
    axes: Axes,
    *,
    rngs: nnx.Rngs,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    use_bias: bool = True,
    zero_init: bool = False,
    lora: tuple[int, float] | None = None,
) -> nnx.Linear:
    """nnx.Linear whose kernel [din, dout] and bias [dout] carry logical axes; with
    `lora=(rank, scale)` a `models.lora.LoRALinear` (same kernel and bias, plus an adapter)."""
    kinit = nnx.initializers.zeros_init() if zero_init else nnx.initializers.xavier_uniform()
    kw = dict(
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nnx.with_partitioning(kinit, axes),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (axes[-1],)),
        rngs=rngs,
    )
    if lora is not None:
        from sora_jax.models.lora import LoRALinear

        return LoRALinear(din, dout, rank=lora[0], scale=lora[1], axes=axes, **kw)
    return nnx.Linear(din, dout, **kw)


class RMSNorm(nnx.Module):
    """RMS norm over the last axis with a learned gain, computed in float32 (torch.nn.RMSNorm)."""

    def __init__(self, dim: int, *, eps: float = 1e-6, axis_name: str | None = 'norm'):
        self.eps = eps
        self.weight = nnx.Param(jnp.ones((dim,), jnp.float32), out_sharding=(axis_name,))

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return (y * self.weight[...]).astype(x.dtype)


class LayerNorm(nnx.Module):
    """LayerNorm in float32 (Wan's FP32LayerNorm); optional affine weight/bias."""

    def __init__(self, dim: int, *, eps: float = 1e-6, affine: bool = False):
        self.eps = eps
        self.affine = affine
        if affine:
            self.weight = nnx.Param(jnp.ones((dim,), jnp.float32), out_sharding=('norm',))
            self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32), out_sharding=('norm',))

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight[...] + self.bias[...]
        return y


class FeedForward(nnx.Module):
    """Linear -> GELU(tanh) -> Linear (diffusers `FeedForward(activation_fn='gelu-approximate')`)."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        lora: dict | None = None,
    ):
        lora = lora or {}  # {'proj_in' / 'proj_out': (rank, scale)}: LoRA adapters
        self.proj_in = linear(
            dim,
            hidden,
            ('embed', 'mlp'),
            rngs=rngs,
            dtype=dtype,
            param_dtype=param_dtype,
            lora=lora.get('proj_in'),
        )
        self.proj_out = linear(
            hidden,
            dim,
            ('mlp', 'embed'),
            rngs=rngs,
            dtype=dtype,
            param_dtype=param_dtype,
            lora=lora.get('proj_out'),
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.proj_out(jax.nn.gelu(self.proj_in(x), approximate=True))


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal features of t: [B] -> [B, dim], cosine half first (diffusers flip_sin_to_cos)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class MLPEmbedder(nnx.Module):
    """Linear -> activation -> Linear (timestep and text projections)."""

    def __init__(
        self,
        din: int,
        dim: int,
        *,
        act: str,
        rngs: nnx.Rngs,
        in_axis: str = 'kv',
        dtype=jnp.float32,
        param_dtype=jnp.float32,
    ):
        self.act = act
        self.linear_1 = linear(
            din, dim, (in_axis, 'embed'), rngs=rngs, dtype=dtype, param_dtype=param_dtype
        )
        self.linear_2 = linear(
            dim, dim, ('embed', 'embed_out'), rngs=rngs, dtype=dtype, param_dtype=param_dtype
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.linear_1(x)
        h = jax.nn.silu(h) if self.act == 'silu' else jax.nn.gelu(h, approximate=True)
        return self.linear_2(h)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """adaLN modulation x * (1 + scale) + shift; shift/scale broadcast over tokens: [B, 1, D]."""
    return x * (1.0 + scale) + shift
