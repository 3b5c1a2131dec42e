"""Building blocks of the causal video VAE, laid out like diffusers' `AutoencoderKLWan` (Wan 2.1;
Wan 2.2's residual layout: `ResidualDownBlock` / `ResidualUpBlock`, keys `down_blocks.N.resnets.M`,
`.downsampler`, `up_blocks.N.upsampler`).

Every block runs in one of two ways:

* whole video (`cache=None`): the training path, one pass over all frames;
* one chunk at a time (`cache=FeatCache(...)`): frame 0 alone, then chunks of
  `temporal_factor` frames (encoder) or one latent frame (decoder). Each layer with a
  temporal receptive field reads the frames it needs from the previous chunk out of the
  cache and writes its own for the next chunk (Wan's `feat_cache`).

Both ways compute the same function: the chunked path is what Wan's reference runs, the
whole path is its closed form (see `Resample` for the two places where that is not a
plain causal convolution).

Tensors are channels last: `x: [B, T, H, W, C]`. Parameter names follow diffusers
(`conv_in`, `down_blocks.N`, `mid_block.resnets.N`, `norm_out`, `conv_out`, ...); the
differences a weight converter must know:

* conv weights are `kernel` `[kt, kh, kw, in, out]` (torch `weight` `[out, in, kt, kh, kw]`);
  2D convs `[kh, kw, in, out]`;
* `Resample.resample` is the conv itself (torch: `resample.1`, after a pad/upsample op);
* `RMSNorm.gamma` is `[C]` (torch: `[C, 1, 1, 1]` or `[C, 1, 1]`).
"""

from __future__ import annotations

from typing import Optional, Sequence

import einops
import jax
import jax.numpy as jnp
from flax import nnx

from sora_jax.models.vae_patch import avg_down, dup_up

CACHE_T = 2  # frames of the previous chunk a causal 3x3x3 conv needs (Wan's CACHE_T)


class FeatCache:
    """Per-chunk feature cache: reads the previous chunk's entries in call order, collects new ones.

    `old` is None on the first chunk (the past is zeros). `new` is a list of arrays in call
    order: the carry for the next chunk (a pytree with fixed shapes from the 2nd chunk on).
    """

    def __init__(self, old: Optional[Sequence[jax.Array]] = None):
        self.old = None if old is None else list(old)
        self.new: list[jax.Array] = []

    @property
    def first(self) -> bool:
        return self.old is None

    def pop(self) -> jax.Array:
        """The previous chunk's entry for the layer that is about to `push`."""
        return self.old[len(self.new)]

    def push(self, value: jax.Array) -> None:
        self.new.append(value)


def _triple(v) -> tuple[int, int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


class CausalConv3d(nnx.Conv):
    """3D conv, all time padding on the past side (Wan's `WanCausalConv3d`).

    `padding=(pt, ph, pw)` as in torch: time gets `2 * pt` frames of past, space `ph`/`pw` each side.
    x: [B, T, H, W, Cin] -> [B, T', H', W', Cout].

    Computed as a sum over the kt temporal taps of 2D convolutions on [B * T', H, W, Cin]: the
    same function as one 3D convolution, but XLA's CPU backend runs 2D convolutions 3-4x faster
    (the shapes VAE's train step and encoder; `experiments/benchmark.py vae`).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size,
        stride=1,
        padding=0,
        *,
        rngs: nnx.Rngs,
    ):
        super().__init__(
            in_features,
            out_features,
            kernel_size=_triple(kernel_size),
            strides=_triple(stride),
            padding='VALID',
            rngs=rngs,
        )
        pt, ph, pw = _triple(padding)
        self.time_pad = 2 * pt
        self.space_pad = (ph, pw)

    def __call__(self, x: jax.Array, cache: Optional[FeatCache] = None) -> jax.Array:
        tp = self.time_pad
        if tp > 0:
            if cache is None:
                past = jnp.zeros((x.shape[0], tp, *x.shape[2:]), x.dtype)
            else:
                past = (
                    jnp.zeros((x.shape[0], tp, *x.shape[2:]), x.dtype)
                    if cache.first
                    else cache.pop()
                )
            x = jnp.concatenate([past, x], axis=1)
            if cache is not None:
                cache.push(x[:, -tp:])
        ph, pw = self.space_pad
        if ph or pw:
            x = jnp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw), (0, 0)))
        return self._conv_by_taps(x)

    def _conv_by_taps(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...]
        bias = self.bias[...] if self.bias is not None else None
        x, kernel, bias = self.promote_dtype((x, kernel, bias), dtype=self.dtype)
        kt = kernel.shape[0]
        st, sh, sw = _triple(self.strides)
        b, t = x.shape[:2]
        t_out = (t - kt) // st + 1
        if t_out < 1:
            raise ValueError(
                f'CausalConv3d: {t} frames (with padding) are fewer than the temporal kernel {kt}.'
            )
        y = None
        for i in range(kt):
            xi = jax.lax.slice_in_dim(x, i, i + st * (t_out - 1) + 1, stride=st, axis=1)
            yi = jax.lax.conv_general_dilated(
                xi.reshape(b * t_out, *xi.shape[2:]),
                kernel[i],
                (sh, sw),
                'VALID',
                dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                precision=self.precision,
            )
            y = yi if y is None else y + yi
        y = y.reshape(b, t_out, *y.shape[1:])
        return y if bias is None else y + bias


class RMSNorm(nnx.Module):
    """Wan's `WanRMS_norm`: x / ||x||_2 over channels * sqrt(C) * gamma (computed in float32)."""

    def __init__(self, dim: int):
        self.scale = dim**0.5
        self.gamma = nnx.Param(jnp.ones((dim,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        norm = jnp.sqrt(jnp.sum(xf * xf, axis=-1, keepdims=True))
        y = xf / jnp.maximum(norm, 1e-12)  # torch F.normalize eps
        return (y * self.scale * self.gamma[...]).astype(x.dtype)


class Resample(nnx.Module):
    """Wan's `WanResample`: 'upsample2d', 'upsample3d', 'downsample2d', 'downsample3d'.

    Time semantics (identical in both paths, matching Wan's chunked reference):
    * downsample3d: frame 0 passes through; frame j >= 1 is `time_conv(x[2j-2 : 2j+1])`
      (kernel 3, stride 2, no padding), so T = 1 + 2n -> 1 + n.
    * upsample3d: frame 0 passes through; frames 1.. go through a causal conv (zero past,
      frame 0 not seen) to 2x channels, split into 2 frames each, so T = 1 + n -> 1 + 2n.
    """

    def __init__(
        self, dim: int, mode: str, upsample_out_dim: Optional[int] = None, *, rngs: nnx.Rngs
    ):
        valid = ('upsample2d', 'upsample3d', 'downsample2d', 'downsample3d')
        if mode not in valid:
            raise ValueError(f'Resample mode {mode!r} is not one of {valid}.')
        self.mode = mode
        upsample_out_dim = dim // 2 if upsample_out_dim is None else upsample_out_dim
        if mode.startswith('upsample'):
            self.resample = nnx.Conv(
                dim, upsample_out_dim, kernel_size=(3, 3), padding=((1, 1), (1, 1)), rngs=rngs
            )
        else:
            self.resample = nnx.Conv(
                dim, dim, kernel_size=(3, 3), strides=(2, 2), padding='VALID', rngs=rngs
            )
        if mode == 'upsample3d':
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0), rngs=rngs)
        elif mode == 'downsample3d':
            self.time_conv = CausalConv3d(
                dim, dim, (3, 1, 1), stride=(2, 1, 1), padding=0, rngs=rngs
            )
        else:
            self.time_conv = None

    def _time_up(self, x: jax.Array, cache: Optional[FeatCache]) -> jax.Array:
        if cache is not None and cache.first:
            # Wan's "Rep" marker: the next chunk sees a zero past.
            cache.push(jnp.zeros((x.shape[0], CACHE_T, *x.shape[2:]), x.dtype))
            return x
        if cache is None:
            head, x = x[:, :1], x[:, 1:]
            if x.shape[1] == 0:
                return head
        y = self.time_conv(x, cache)  # [B, T, H, W, 2C]
        y = einops.rearrange(y, 'b t h w (two c) -> b (t two) h w c', two=2)
        return y if cache is not None else jnp.concatenate([head, y], axis=1)

    def _time_down(self, x: jax.Array, cache: Optional[FeatCache]) -> jax.Array:
        if cache is None:
            if x.shape[1] == 1:
                return x
            return jnp.concatenate([x[:, :1], self.time_conv(x)], axis=1)
        if cache.first:
            cache.push(x[:, -1:])
            return x
        prev = cache.pop()
        cache.push(x[:, -1:])
        return self.time_conv(jnp.concatenate([prev, x], axis=1))

    def __call__(self, x: jax.Array, cache: Optional[FeatCache] = None) -> jax.Array:
        if self.mode == 'upsample3d':
            x = self._time_up(x, cache)
        if self.mode.startswith('upsample'):
            x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)  # nearest, 2x
        else:
            x = jnp.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1), (0, 0)))  # ZeroPad2d((0, 1, 0, 1))
        x = self.resample(x)
        if self.mode == 'downsample3d':
            x = self._time_down(x, cache)
        return x


class ResidualBlock(nnx.Module):
    """Wan's `WanResidualBlock`: RMSNorm-SiLU-CausalConv3d x2 (+ dropout) plus a 1x1x1 shortcut."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0, *, rngs: nnx.Rngs):
        self.norm1 = RMSNorm(in_dim)
        self.conv1 = CausalConv3d(in_dim, out_dim, 3, padding=1, rngs=rngs)
        self.norm2 = RMSNorm(out_dim)
        self.dropout = nnx.Dropout(dropout) if dropout > 0 else None
        self.conv2 = CausalConv3d(out_dim, out_dim, 3, padding=1, rngs=rngs)
        self.conv_shortcut = (
            CausalConv3d(in_dim, out_dim, 1, rngs=rngs) if in_dim != out_dim else None
        )

    def __call__(
        self,
        x: jax.Array,
        cache: Optional[FeatCache] = None,
        dropout_key: Optional[jax.Array] = None,
    ) -> jax.Array:
        h = x if self.conv_shortcut is None else self.conv_shortcut(x)
        x = self.conv1(nnx.silu(self.norm1(x)), cache)
        x = nnx.silu(self.norm2(x))
        if self.dropout is not None and dropout_key is not None:
            x = self.dropout(x, deterministic=False, rngs=dropout_key)
        return self.conv2(x, cache) + h


class AttentionBlock(nnx.Module):
    """Wan's `WanAttentionBlock`: single-head self-attention over the pixels of each frame."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        self.norm = RMSNorm(dim)
        self.to_qkv = nnx.Conv(dim, dim * 3, kernel_size=(1, 1), rngs=rngs)
        # Zero-initialised output projection (as Wan's original code): attention starts as identity.
        self.proj = nnx.Conv(
            dim, dim, kernel_size=(1, 1), kernel_init=nnx.initializers.zeros_init(), rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, h, w, c = x.shape
        qkv = self.to_qkv(self.norm(x))  # [B, T, H, W, 3C]
        qkv = einops.rearrange(qkv, 'b t h w (three c) -> three (b t) (h w) 1 c', three=3)
        y = jax.nn.dot_product_attention(qkv[0], qkv[1], qkv[2])  # [(B T), HW, 1, C]
        y = einops.rearrange(y, '(b t) (h w) 1 c -> b t h w c', b=b, h=h)
        return self.proj(y) + x


class MidBlock(nnx.Module):
    """Wan's `WanMidBlock`: resnet, spatial attention, resnet."""

    def __init__(self, dim: int, dropout: float = 0.0, *, rngs: nnx.Rngs):
        self.attentions = nnx.List([AttentionBlock(dim, rngs=rngs)])
        self.resnets = nnx.List([ResidualBlock(dim, dim, dropout, rngs=rngs) for _ in range(2)])

    def __call__(self, x, cache=None, dropout_key=None):
        keys = _split(dropout_key, len(self.resnets))
        x = self.resnets[0](x, cache, keys[0])
        for attn, resnet, key in zip(self.attentions, self.resnets[1:], keys[1:]):
            x = resnet(attn(x), cache, key)
        return x


def _split(key: Optional[jax.Array], n: int) -> list:
    return [None] * n if key is None else list(jax.random.split(key, n))


class ResidualDownBlock(nnx.Module):
    """Wan 2.2's `WanResidualDownBlock`: resnets + optional downsampler, plus a parameter-free
    `avg_down` shortcut of the block input (2x space when `down`, 2x time when `time_down`).

    Time: `avg_down` pads frame 0 with a zero frame; the downsampler codes frame 0 alone. Both
    give 1 + n frames from 1 + 2n, whole or chunk by chunk (chunks of 1, then even lengths).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_res_blocks: int,
        dropout: float,
        time_down: bool,
        down: bool,
        *,
        rngs: nnx.Rngs,
    ):
        self.out_dim = out_dim
        self.factor_t = 2 if time_down else 1
        self.factor_s = 2 if down else 1
        resnets = []
        for _ in range(num_res_blocks):
            resnets.append(ResidualBlock(in_dim, out_dim, dropout, rngs=rngs))
            in_dim = out_dim
        self.resnets = nnx.List(resnets)
        self.downsampler = (
            Resample(out_dim, 'downsample3d' if time_down else 'downsample2d', rngs=rngs)
            if down
            else None
        )

    def __call__(self, x, cache=None, dropout_key=None):
        shortcut = avg_down(x, self.out_dim, self.factor_t, self.factor_s)
        for resnet, key in zip(self.resnets, _split(dropout_key, len(self.resnets))):
            x = resnet(x, cache, key)
        if self.downsampler is not None:
            x = self.downsampler(x, cache)
        return x + shortcut


class Encoder3d(nnx.Module):
    """Wan's `WanEncoder3d`: video [B, T, H, W, 3] -> [B, 1 + (T-1)/ft, H/fs, W/fs, z_dim].

    `is_residual` (Wan 2.2): one `ResidualDownBlock` per level instead of the flat list of
    resnets / attention / resamplers (attention is not used there).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        dim: int,
        z_dim: int,
        dim_mult: Sequence[int],
        num_res_blocks: int,
        attn_scales: Sequence[float],
        temperal_downsample: Sequence[bool],
        dropout: float,
        rngs: nnx.Rngs,
        is_residual: bool = False,
    ):
        dims = [dim * u for u in [1, *dim_mult]]
        scale = 1.0
        self.conv_in = CausalConv3d(in_channels, dims[0], 3, padding=1, rngs=rngs)
        blocks = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if is_residual:
                last = i == len(dim_mult) - 1
                blocks.append(
                    ResidualDownBlock(
                        in_dim,
                        out_dim,
                        num_res_blocks,
                        dropout,
                        time_down=bool(temperal_downsample[i]) if not last else False,
                        down=not last,
                        rngs=rngs,
                    )
                )
                continue
            for _ in range(num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim, dropout, rngs=rngs))
                if scale in attn_scales:
                    blocks.append(AttentionBlock(out_dim, rngs=rngs))
                in_dim = out_dim
            if i != len(dim_mult) - 1:
                mode = 'downsample3d' if temperal_downsample[i] else 'downsample2d'
                blocks.append(Resample(out_dim, mode, rngs=rngs))
                scale /= 2.0
        self.down_blocks = nnx.List(blocks)
        self.mid_block = MidBlock(dims[-1], dropout, rngs=rngs)
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], z_dim, 3, padding=1, rngs=rngs)

    def __call__(self, x, cache=None, dropout_key=None):
        keys = _split(dropout_key, len(self.down_blocks) + 1)
        x = self.conv_in(x, cache)
        for layer, key in zip(self.down_blocks, keys):
            if isinstance(layer, AttentionBlock):
                x = layer(x)
            elif isinstance(layer, (ResidualBlock, ResidualDownBlock)):
                x = layer(x, cache, key)
            else:
                x = layer(x, cache)
        x = self.mid_block(x, cache, keys[-1])
        return self.conv_out(nnx.silu(self.norm_out(x)), cache)


class UpBlock(nnx.Module):
    """Wan's `WanUpBlock`: num_res_blocks + 1 resnets, then an optional upsampler."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_res_blocks: int,
        dropout: float,
        upsample_mode: Optional[str],
        *,
        rngs: nnx.Rngs,
    ):
        resnets = []
        for _ in range(num_res_blocks + 1):
            resnets.append(ResidualBlock(in_dim, out_dim, dropout, rngs=rngs))
            in_dim = out_dim
        self.resnets = nnx.List(resnets)
        self.upsamplers = (
            nnx.List([Resample(out_dim, upsample_mode, rngs=rngs)]) if upsample_mode else None
        )

    def __call__(self, x, cache=None, dropout_key=None):
        for resnet, key in zip(self.resnets, _split(dropout_key, len(self.resnets))):
            x = resnet(x, cache, key)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, cache)
        return x


class ResidualUpBlock(nnx.Module):
    """Wan 2.2's `WanResidualUpBlock`: num_res_blocks + 1 resnets and an optional upsampler
    (keeping `out_dim` channels), plus a parameter-free `dup_up` shortcut of the block input.

    The shortcut's first ft - 1 frames are dropped in the chunk holding frame 0 (whole path:
    `cache is None`; chunked: the first chunk), matching the causal upsampler's lone frame 0.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_res_blocks: int,
        dropout: float,
        time_up: bool,
        up: bool,
        *,
        rngs: nnx.Rngs,
    ):
        self.out_dim = out_dim
        self.factor_t = 2 if time_up else 1
        self.up = up
        resnets = []
        for _ in range(num_res_blocks + 1):
            resnets.append(ResidualBlock(in_dim, out_dim, dropout, rngs=rngs))
            in_dim = out_dim
        self.resnets = nnx.List(resnets)
        self.upsampler = (
            Resample(
                out_dim,
                'upsample3d' if time_up else 'upsample2d',
                upsample_out_dim=out_dim,
                rngs=rngs,
            )
            if up
            else None
        )

    def __call__(self, x, cache=None, dropout_key=None):
        shortcut = None
        if self.up:
            first = cache is None or cache.first
            shortcut = dup_up(x, self.out_dim, self.factor_t, 2, first)
        for resnet, key in zip(self.resnets, _split(dropout_key, len(self.resnets))):
            x = resnet(x, cache, key)
        if self.upsampler is not None:
            x = self.upsampler(x, cache)
        return x if shortcut is None else x + shortcut


class Decoder3d(nnx.Module):
    """Wan's `WanDecoder3d`: latents [B, T', h, w, z] -> video [B, 1 + ft(T'-1), h fs, w fs, 3].

    Wan 2.1 layout (`UpBlock`s whose upsamplers halve the channels) or, with `is_residual`,
    Wan 2.2's (`ResidualUpBlock`s, channels kept through the upsamplers).
    """

    def __init__(
        self,
        *,
        dim: int,
        z_dim: int,
        dim_mult: Sequence[int],
        num_res_blocks: int,
        temperal_upsample: Sequence[bool],
        dropout: float,
        out_channels: int,
        rngs: nnx.Rngs,
        is_residual: bool = False,
    ):
        dims = [dim * u for u in [dim_mult[-1], *dim_mult[::-1]]]
        self.conv_in = CausalConv3d(z_dim, dims[0], 3, padding=1, rngs=rngs)
        self.mid_block = MidBlock(dims[0], dropout, rngs=rngs)
        blocks = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            up = i != len(dim_mult) - 1
            if is_residual:
                blocks.append(
                    ResidualUpBlock(
                        in_dim,
                        out_dim,
                        num_res_blocks,
                        dropout,
                        time_up=bool(temperal_upsample[i]) if up else False,
                        up=up,
                        rngs=rngs,
                    )
                )
                continue
            if i > 0:
                in_dim //= 2  # the previous upsampler halved the channels
            mode = None
            if up:
                mode = 'upsample3d' if temperal_upsample[i] else 'upsample2d'
            blocks.append(UpBlock(in_dim, out_dim, num_res_blocks, dropout, mode, rngs=rngs))
        self.up_blocks = nnx.List(blocks)
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], out_channels, 3, padding=1, rngs=rngs)

    def __call__(self, x, cache=None, dropout_key=None):
        keys = _split(dropout_key, len(self.up_blocks) + 1)
        x = self.conv_in(x, cache)
        x = self.mid_block(x, cache, keys[-1])
        for block, key in zip(self.up_blocks, keys):
            x = block(x, cache, key)
        return self.conv_out(nnx.silu(self.norm_out(x)), cache)
