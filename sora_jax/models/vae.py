"""The causal video VAE (diffusers `AutoencoderKLWan`: Wan 2.1 and Wan 2.2 layouts), channels last.

Wan 2.1 (`wan21_config`): 16 latent channels, 4x time, 8x space. Wan 2.2 TI2V-5B
(`wan22_config`): `is_residual` down/up blocks whose parameter-free shortcuts fold / unfold
neighbours into channels (`vae_patch.avg_down` / `dup_up`), a decoder wider than the encoder
(`decoder_base_dim`), and 2x2 pixel patches folded into channels around the whole VAE
(`patch_size`), so 48 latent channels at 4x time, 16x space. Both match diffusers to float32
round-off (tests/parity/test_vae_parity.py, tests/parity/test_wan22_vae_parity.py).

Images and videos share one latent space: frame 0 is coded alone, then chunks of
`temporal_factor` frames, so T frames <-> 1 + (T - 1) / temporal_factor latent frames and an
image is a 1-frame video. Three ways to run the same function:

* `encode` / `decode`: whole video in one pass (training).
* `encode_chunked` / `decode_chunked`: chunk by chunk with a feature cache, under one
  `jax.lax.scan` (one compile per video length) writing into a preallocated output, so the
  working memory is flat in the number of frames. Decoding runs one latent frame at a time.
  Measured (tiny config, 64x64, XLA CPU `memory_analysis().temp_size_in_bytes`): decode_chunked
  5.00 MiB at 17 frames vs 5.11 MiB at 129 (whole `decode`: 9.0 vs 68.5 MiB); encode_chunked
  3.95 vs 4.06 MiB (whole: 7.0 vs 52.9 MiB). Chunked equals whole to float32 round-off
  (max abs diff 3e-7 on latents, 3e-6 on frames) and matches diffusers' `AutoencoderKLWan`
  to < 1e-6 (tests/parity/test_vae_parity.py). `stream_encode` / `stream_decode` run the same
  chunks from Python, compiled once per chunk shape for any length, handing out each chunk.
* `tiled_encode` / `tiled_decode`: overlapping spatial tiles, each run chunked, blended with
  linear ramps over the overlap (a `lax.scan` over equal-size tiles, one compile). Blending
  is exact for a pixel-local function; the residual difference to untiled comes from each
  tile's zero padding inside the decoder's receptive field (~+-13 latent px for the tiny
  config). Measured on a random-init tiny VAE, 8x256 frames, outputs std 0.25, mean / max abs
  diff to untiled decode: tiles 64 px stride 32: 0.033 / 0.43; 128/64: 0.0070 / 0.13;
  192/128: 0.0032 / 0.10. Tiled encode 128/64: 0.0019 / 0.033 on latents of std 0.09.

Use the methods inside `jax.jit` (split the module once, `nnx.merge` inside), or `jitted()`.
Deviations from Wan worth knowing for the weight converter: see `vae_blocks.py`; tiles here all
have the same size (the last tile is shifted back to end at the border) and are blended by
normalised weights instead of Wan's sequential `blend_v`/`blend_h`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sora_jax.models.vae_blocks import CausalConv3d, Decoder3d, Encoder3d, FeatCache
from sora_jax.models.vae_patch import patchify, unpatchify

# Wan's per-channel latent statistics (diffusers vae/config.json latents_mean / latents_std): the one
# source the configs (configs/wan21.py, configs/wan22.py) and the tests read.
# Wan 2.1 VAE (16 channels): Wan-AI/Wan2.1-T2V-1.3B-Diffusers vae/config.json.
WAN21_LATENTS_MEAN = (
    -0.7571,
    -0.7089,
    -0.9113,
    0.1075,
    -0.1745,
    0.9653,
    -0.1517,
    1.5508,
    0.4134,
    -0.0715,
    0.5517,
    -0.3632,
    -0.1922,
    -0.9497,
    0.2503,
    -0.2921,
)
WAN21_LATENTS_STD = (
    2.8184,
    1.4541,
    2.3275,
    2.6558,
    1.2196,
    1.7708,
    2.6052,
    2.0743,
    3.2687,
    2.1526,
    2.8652,
    1.5579,
    1.6382,
    1.1253,
    2.8251,
    1.9160,
)

# Wan 2.2 TI2V-5B VAE (48 channels): Wan-AI/Wan2.2-TI2V-5B-Diffusers vae/config.json.
WAN22_LATENTS_MEAN = (
    -0.2289,
    -0.0052,
    -0.1323,
    -0.2339,
    -0.2799,
    0.0174,
    0.1838,
    0.1557,
    -0.1382,
    0.0542,
    0.2813,
    0.0891,
    0.1570,
    -0.0098,
    0.0375,
    -0.1825,
    -0.2246,
    -0.1207,
    -0.0698,
    0.5109,
    0.2665,
    -0.2108,
    -0.2158,
    0.2502,
    -0.2055,
    -0.0322,
    0.1109,
    0.1567,
    -0.0729,
    0.0899,
    -0.2799,
    -0.1230,
    -0.0313,
    -0.1649,
    0.0117,
    0.0723,
    -0.2839,
    -0.2083,
    -0.0520,
    0.3748,
    0.0152,
    0.1957,
    0.1433,
    -0.2944,
    0.3573,
    -0.0548,
    -0.1681,
    -0.0667,
)
WAN22_LATENTS_STD = (
    0.4765,
    1.0364,
    0.4514,
    1.1677,
    0.5313,
    0.4990,
    0.4818,
    0.5013,
    0.8158,
    1.0344,
    0.5894,
    1.0901,
    0.6885,
    0.6165,
    0.8454,
    0.4978,
    0.5759,
    0.3523,
    0.7135,
    0.6804,
    0.5833,
    1.4146,
    0.8986,
    0.5659,
    0.7069,
    0.5338,
    0.4889,
    0.4917,
    0.4069,
    0.4999,
    0.6866,
    0.4093,
    0.5709,
    0.6065,
    0.6415,
    0.4944,
    0.5726,
    1.2042,
    0.5458,
    1.6887,
    0.3971,
    1.0600,
    0.3943,
    0.5537,
    0.5444,
    0.4089,
    0.7468,
    0.7744,
)


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Model hyper-parameters; field names follow diffusers' `AutoencoderKLWan` config."""

    base_dim: int = 96  # channels of the first level
    z_dim: int = 16  # latent channels
    dim_mult: tuple = (1, 2, 4, 4)  # channel multiplier per level
    num_res_blocks: int = 2  # residual blocks per encoder level (+1 in the decoder)
    attn_scales: tuple = ()  # spatial scales (1, 0.5, ..) with attention in the encoder
    temperal_downsample: tuple = (False, True, True)  # per downsampling level: also halve time
    dropout: float = 0.0  # dropout inside residual blocks (training only)
    latents_mean: Optional[tuple] = WAN21_LATENTS_MEAN  # per-channel latent mean (None: zeros)
    latents_std: Optional[tuple] = WAN21_LATENTS_STD  # per-channel latent std (None: ones)
    in_channels: int = 3  # encoder input channels (video channels x patch_size^2)
    out_channels: int = 3  # decoder output channels (video channels x patch_size^2)
    tile_sample_min_size: int = 256  # tile size in pixels for tiled encode/decode
    tile_sample_stride: int = 192  # tile stride in pixels (overlap = size - stride)
    decoder_base_dim: Optional[int] = None  # decoder's first-level channels (None: base_dim)
    is_residual: bool = False  # Wan 2.2 residual down/up blocks (avg/dup shortcuts)
    patch_size: Optional[int] = None  # p x p pixel patches -> channels around the VAE (None/1: off)

    @property
    def patch(self) -> int:
        return self.patch_size or 1

    def validate(self) -> 'VAEConfig':
        n_down = len(self.dim_mult) - 1
        if len(self.temperal_downsample) != n_down:
            raise ValueError(
                f'temperal_downsample={self.temperal_downsample} must have len(dim_mult) - 1 = '
                f'{n_down} entries (one per downsampling level).'
            )
        if self.patch_size is not None and (
            not isinstance(self.patch_size, (int, np.integer)) or self.patch_size < 1
        ):
            raise ValueError(
                f'patch_size={self.patch_size!r} must be a positive int (or None for '
                f'no patching; Wan 2.2 uses 2).'
            )
        p2 = self.patch**2
        for name in ('in_channels', 'out_channels'):
            if getattr(self, name) % p2:
                raise ValueError(
                    f'{name}={getattr(self, name)} must be a multiple of patch_size^2 '
                    f'= {p2} (video channels x {p2}, e.g. {3 * p2} for RGB).'
                )
        if self.decoder_base_dim is not None and self.decoder_base_dim < 1:
            raise ValueError(
                f'decoder_base_dim={self.decoder_base_dim} must be positive (or None for base_dim).'
            )
        if self.is_residual:
            self._validate_residual()
        for name in ('latents_mean', 'latents_std'):
            v = getattr(self, name)
            if v is not None and len(v) != self.z_dim:
                raise ValueError(
                    f'{name} has {len(v)} entries; it needs z_dim={self.z_dim} '
                    f'(or None for zeros/ones).'
                )
        if self.latents_std is not None and min(self.latents_std) <= 0:
            raise ValueError(f'latents_std={self.latents_std} must be positive.')
        return self

    def _validate_residual(self) -> None:
        """The residual blocks' shortcuts regroup channels: widths must divide evenly."""
        if self.attn_scales:
            raise ValueError(
                f'attn_scales={self.attn_scales}: the residual (Wan 2.2) encoder has '
                'no attention blocks; set attn_scales=() or is_residual=False.'
            )
        n = len(self.dim_mult)
        dims = [self.base_dim * u for u in (1, *self.dim_mult)]
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == n - 1
            f = 1 if last else (2 if self.temperal_downsample[i] else 1) * 4
            if (a * f) % b:
                raise ValueError(
                    f'encoder level {i}: {a} -> {b} channels; the residual shortcut '
                    f'averages {a} x {f} folded channels into {b}, which must divide '
                    f'them. Change base_dim={self.base_dim} or dim_mult={self.dim_mult}.'
                )
        up_time = self.temperal_downsample[::-1]
        dec = self.decoder_base_dim or self.base_dim
        dims = [dec * u for u in (self.dim_mult[-1], *self.dim_mult[::-1])]
        for i, (a, b) in enumerate(zip(dims[:-2], dims[1:-1])):
            f = (2 if up_time[i] else 1) * 4
            if (b * f) % a:
                raise ValueError(
                    f'decoder level {i}: {a} -> {b} channels; the residual shortcut '
                    f'repeats {a} channels into {b} x {f}, which they must divide. '
                    f'Change decoder_base_dim={self.decoder_base_dim} or '
                    f'dim_mult={self.dim_mult}.'
                )


def from_config(cfg: Any) -> VAEConfig:
    """A `VAEConfig` from a VAEConfig, dict or ml_collections ConfigDict (other keys ignored)."""
    if isinstance(cfg, VAEConfig):
        return cfg.validate()
    if hasattr(cfg, 'to_dict'):
        cfg = cfg.to_dict()
    fields = {f.name for f in dataclasses.fields(VAEConfig)}
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in dict(cfg).items() if k in fields}
    return VAEConfig(**kw).validate()


def wan21_config() -> VAEConfig:
    """Wan 2.1 VAE: 96/16/(1,2,4,4)/2/(False,True,True): 4x time, 8x space."""
    return VAEConfig()


def wan22_config() -> VAEConfig:
    """Wan 2.2 TI2V-5B VAE: residual blocks, 2x2 patches, base 160 / decoder 256, z 48,
    (1,2,4,4), 2 blocks, (False,True,True): 4x time, 16x space; 704,688,668 parameters (checked
    against diffusers in tests/parity/test_wan22_vae_parity.py)."""
    return VAEConfig(
        base_dim=160,
        decoder_base_dim=256,
        z_dim=48,
        is_residual=True,
        patch_size=2,
        in_channels=12,
        out_channels=12,
        latents_mean=WAN22_LATENTS_MEAN,
        latents_std=WAN22_LATENTS_STD,
    )


def tiny_config() -> VAEConfig:
    """Tests/demo: base 8, z 4, (1,2,2), 1 block, (True,True): 4x time, 4x space, 161k params."""
    return VAEConfig(
        base_dim=8,
        z_dim=4,
        dim_mult=(1, 2, 2),
        num_res_blocks=1,
        temperal_downsample=(True, True),
        latents_mean=None,
        latents_std=None,
        tile_sample_min_size=32,
        tile_sample_stride=24,
    )


def posterior_sample(mean: jax.Array, logvar: jax.Array, rng: jax.Array) -> jax.Array:
    """z ~ N(mean, exp(logvar)) (diagonal Gaussian posterior)."""
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)


def posterior_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, 1)) summed over all but the batch axis: [B]."""
    kl = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
    return jnp.sum(kl.reshape(kl.shape[0], -1), axis=-1)


def _tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Starts of equal tiles covering [0, size): every `stride`, the last one ending at `size`."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride)) + [size - tile]
    return sorted(set(starts))


def _ramp(length: int, blend: int, tiled: bool) -> np.ndarray:
    """1D blending weight of a tile: linear ramps of `blend` samples at both ends, 1 inside."""
    if not tiled or blend <= 0:
        return np.ones(length, np.float32)
    i = np.arange(length, dtype=np.float32)
    return np.minimum(1.0, np.minimum(i + 1, length - i) / (blend + 1)).astype(np.float32)


class WanVAE(nnx.Module):
    """Causal video VAE. video: [B, T, H, W, 3] in [-1, 1] <-> latents [B, T', H/fs, W/fs, z]."""

    def __init__(self, config: Any, *, rngs: nnx.Rngs):
        cfg = from_config(config)
        self.config = cfg
        self.encoder = Encoder3d(
            in_channels=cfg.in_channels,
            dim=cfg.base_dim,
            z_dim=2 * cfg.z_dim,
            dim_mult=cfg.dim_mult,
            num_res_blocks=cfg.num_res_blocks,
            attn_scales=cfg.attn_scales,
            temperal_downsample=cfg.temperal_downsample,
            dropout=cfg.dropout,
            is_residual=cfg.is_residual,
            rngs=rngs,
        )
        self.quant_conv = CausalConv3d(2 * cfg.z_dim, 2 * cfg.z_dim, 1, rngs=rngs)
        self.post_quant_conv = CausalConv3d(cfg.z_dim, cfg.z_dim, 1, rngs=rngs)
        self.decoder = Decoder3d(
            dim=cfg.decoder_base_dim or cfg.base_dim,
            z_dim=cfg.z_dim,
            dim_mult=cfg.dim_mult,
            num_res_blocks=cfg.num_res_blocks,
            temperal_upsample=tuple(cfg.temperal_downsample[::-1]),
            dropout=cfg.dropout,
            out_channels=cfg.out_channels,
            is_residual=cfg.is_residual,
            rngs=rngs,
        )

    # ---- shapes -------------------------------------------------------------------------
    @property
    def spatial_factor(self) -> int:
        """Pixels per latent pixel: 2 per downsampling level, times the patch size."""
        return 2 ** (len(self.config.dim_mult) - 1) * self.config.patch

    @property
    def video_channels(self) -> int:
        """Channels of the videos coded (in_channels / patch_size^2)."""
        return self.config.in_channels // self.config.patch**2

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(bool(t) for t in self.config.temperal_downsample)

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(T', H', W', z_dim) of the latents of a [T, H, W, 3] video; ValueError if invalid."""
        self._check_size(num_frames, height, width)
        return (
            1 + (num_frames - 1) // self.temporal_factor,
            height // self.spatial_factor,
            width // self.spatial_factor,
            self.config.z_dim,
        )

    def _check_size(self, t: int, h: int, w: int) -> None:
        ft, fs = self.temporal_factor, self.spatial_factor
        if t < 1 or (t - 1) % ft:
            lo, hi = 1 + ft * ((max(t, 1) - 1) // ft), 1 + ft * ((max(t, 1) - 1) // ft + 1)
            raise ValueError(
                f'num_frames={t} is not a valid video length: the VAE codes frame 0 alone, then '
                f'chunks of {ft}, so lengths are 1 + {ft}k (1, {1 + ft}, {1 + 2 * ft}, ...). '
                f'Trim or pad to {lo if lo >= 1 else 1} or {hi} frames.'
            )
        if h % fs or w % fs or h < fs or w < fs:
            raise ValueError(
                f'frame size {h}x{w} is not divisible by the spatial factor {fs}; crop or resize to '
                f'{max(fs, h // fs * fs)}x{max(fs, w // fs * fs)}.'
            )

    def _check_video(self, video: jax.Array) -> None:
        if video.ndim != 5 or video.shape[-1] != self.video_channels:
            raise ValueError(
                f'video shape {video.shape} must be [B, T, H, W, '
                f'{self.video_channels}] (an image is [B, 1, H, W, C]).'
            )
        self._check_size(*video.shape[1:4])

    def _check_latents(self, z: jax.Array) -> None:
        if z.ndim != 5 or z.shape[-1] != self.config.z_dim:
            raise ValueError(f'latents shape {z.shape} must be [B, T, H, W, {self.config.z_dim}].')

    # ---- latent normalisation -----------------------------------------------------------
    def _stats(self, dtype):
        c = self.config
        mean = jnp.zeros(c.z_dim) if c.latents_mean is None else jnp.asarray(c.latents_mean)
        std = jnp.ones(c.z_dim) if c.latents_std is None else jnp.asarray(c.latents_std)
        return mean.astype(dtype), std.astype(dtype)

    def normalize_latents(self, z: jax.Array) -> jax.Array:
        """Encoder latents -> diffusion space: (z - latents_mean) / latents_std, per channel."""
        mean, std = self._stats(z.dtype)
        return (z - mean) / std

    def denormalize_latents(self, z: jax.Array) -> jax.Array:
        """Diffusion space -> decoder latents: z * latents_std + latents_mean."""
        mean, std = self._stats(z.dtype)
        return z * std + mean

    # ---- whole-video path ---------------------------------------------------------------
    @staticmethod
    def _moments(h: jax.Array) -> tuple[jax.Array, jax.Array]:
        mean, logvar = jnp.split(h, 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def encode(self, video: jax.Array, *, dropout_key: Optional[jax.Array] = None):
        """video [B, T, H, W, 3] -> (mean, logvar), each [B, T', H/fs, W/fs, z_dim]."""
        self._check_video(video)
        return self._moments(self._encode_frames(video, None, dropout_key))

    def decode(
        self, z: jax.Array, *, clip: bool = True, dropout_key: Optional[jax.Array] = None
    ) -> jax.Array:
        """latents [B, T', h, w, z_dim] -> video [B, 1 + ft (T'-1), h fs, w fs, 3] (clipped to [-1, 1])."""
        self._check_latents(z)
        out = self._decode_frames(self.post_quant_conv(z), None, dropout_key)
        return jnp.clip(out, -1.0, 1.0) if clip else out

    def __call__(self, video: jax.Array, rng: Optional[jax.Array] = None) -> jax.Array:
        """Round trip (posterior mean, or a sample when `rng` is given)."""
        mean, logvar = self.encode(video)
        z = mean if rng is None else posterior_sample(mean, logvar, rng)
        return self.decode(z)

    # ---- one pass (whole video or one chunk) --------------------------------------------
    def _encode_frames(
        self, video: jax.Array, cache: Optional[FeatCache], dropout_key: Optional[jax.Array] = None
    ) -> jax.Array:
        """video (or a chunk) -> quant_conv output [B, T', h, w, 2 z_dim] (patchified first)."""
        x = patchify(video, self.config.patch)
        return self.quant_conv(self.encoder(x, cache, dropout_key))

    def _decode_frames(
        self, x: jax.Array, cache: Optional[FeatCache], dropout_key: Optional[jax.Array] = None
    ) -> jax.Array:
        """post_quant_conv output (or a chunk of it) -> unclipped video frames."""
        return unpatchify(self.decoder(x, cache, dropout_key), self.config.patch)

    # ---- chunked causal path ------------------------------------------------------------
    def _scan_chunks(self, fn, x: jax.Array, chunk: int, out_per_chunk: int) -> jax.Array:
        """fn(x_chunk, FeatCache) on x[:, :1], then a lax.scan over x[:, 1:] in `chunk`-frame steps.

        Chunks are read with dynamic_slice and written into a preallocated output with
        dynamic_update_slice (in place in the loop carry), so the working memory is one chunk's
        activations plus the cache, whatever the number of frames.
        """
        cache = FeatCache(None)
        y0 = fn(x[:, :1], cache)
        n = (x.shape[1] - 1) // chunk
        if n == 0:
            return y0
        out = jnp.zeros((y0.shape[0], 1 + n * out_per_chunk, *y0.shape[2:]), y0.dtype)
        out = jax.lax.dynamic_update_slice_in_dim(out, y0, 0, axis=1)

        def body(carry, i):
            old, out = carry
            c = FeatCache(old)
            y = fn(jax.lax.dynamic_slice_in_dim(x, 1 + i * chunk, chunk, axis=1), c)
            return (
                c.new,
                jax.lax.dynamic_update_slice_in_dim(out, y, 1 + i * out_per_chunk, axis=1),
            ), None

        (_, out), _ = jax.lax.scan(body, (cache.new, out), jnp.arange(n))
        return out

    def encode_chunked(self, video: jax.Array):
        """Same as `encode`, chunk by chunk with a feature cache (memory flat in T)."""
        self._check_video(video)
        h = self._scan_chunks(self._encode_frames, video, self.temporal_factor, 1)
        return self._moments(h)

    def decode_chunked(self, z: jax.Array, *, clip: bool = True) -> jax.Array:
        """Same as `decode`, one latent frame at a time with a feature cache (memory flat in T)."""
        self._check_latents(z)
        out = self._scan_chunks(
            self._decode_frames, self.post_quant_conv(z), 1, self.temporal_factor
        )
        return jnp.clip(out, -1.0, 1.0) if clip else out

    # ---- spatial tiling -----------------------------------------------------------------
    def _tiled(
        self,
        fn,
        x: jax.Array,
        tile_in: int,
        stride_in: int,
        scale_num: int,
        scale_den: int,
        out_channels: int,
        out_frames: int,
    ) -> jax.Array:
        """Run fn on equal overlapping tiles of x (tile_in/stride_in in x's pixels), blend."""
        b, _, h, w, _ = x.shape
        th, tw = min(tile_in, h), min(tile_in, w)
        rows, cols = _tile_starts(h, th, stride_in), _tile_starts(w, tw, stride_in)
        oh, ow = th * scale_num // scale_den, tw * scale_num // scale_den
        blend = (tile_in - stride_in) * scale_num // scale_den
        win = np.outer(_ramp(oh, blend, len(rows) > 1), _ramp(ow, blend, len(cols) > 1))
        H, W = h * scale_num // scale_den, w * scale_num // scale_den
        norm = np.zeros((H, W), np.float32)
        for i in rows:
            for j in cols:
                oi, oj = i * scale_num // scale_den, j * scale_num // scale_den
                norm[oi : oi + oh, oj : oj + ow] += win
        starts = np.array([(i, j) for i in rows for j in cols], np.int32)
        win_j = jnp.asarray(win)[None, None, :, :, None]

        def body(canvas, ij):
            i, j = ij[0], ij[1]
            tile = jax.lax.dynamic_slice(x, (0, 0, i, j, 0), (b, x.shape[1], th, tw, x.shape[4]))
            y = fn(tile).astype(jnp.float32) * win_j
            oi, oj = i * scale_num // scale_den, j * scale_num // scale_den
            cur = jax.lax.dynamic_slice(canvas, (0, 0, oi, oj, 0), y.shape)
            return jax.lax.dynamic_update_slice(canvas, cur + y, (0, 0, oi, oj, 0)), None

        canvas = jnp.zeros((b, out_frames, H, W, out_channels), jnp.float32)
        canvas, _ = jax.lax.scan(body, canvas, jnp.asarray(starts))
        return (canvas / jnp.asarray(norm)[None, None, :, :, None]).astype(x.dtype)

    def _tile_args(self, tile_sample_min_size, tile_sample_stride):
        size = tile_sample_min_size or self.config.tile_sample_min_size
        stride = tile_sample_stride or self.config.tile_sample_stride
        fs = self.spatial_factor
        if size % fs or stride % fs or not 0 < stride <= size:
            raise ValueError(
                f'tile size {size} and stride {stride} must be multiples of the '
                f'spatial factor {fs} with 0 < stride <= size.'
            )
        return size, stride

    def tiled_encode(
        self,
        video: jax.Array,
        tile_sample_min_size: Optional[int] = None,
        tile_sample_stride: Optional[int] = None,
    ):
        """`encode_chunked` on overlapping spatial tiles of `tile_sample_min_size` pixels."""
        self._check_video(video)
        size, stride = self._tile_args(tile_sample_min_size, tile_sample_stride)
        t_lat = 1 + (video.shape[1] - 1) // self.temporal_factor
        h = self._tiled(
            lambda v: jnp.concatenate(self.encode_chunked(v), axis=-1),
            video,
            size,
            stride,
            1,
            self.spatial_factor,
            2 * self.config.z_dim,
            t_lat,
        )
        return self._moments(h)

    def tiled_decode(
        self,
        z: jax.Array,
        tile_sample_min_size: Optional[int] = None,
        tile_sample_stride: Optional[int] = None,
        *,
        clip: bool = True,
    ) -> jax.Array:
        """`decode_chunked` on overlapping latent tiles (sizes given in output pixels)."""
        self._check_latents(z)
        size, stride = self._tile_args(tile_sample_min_size, tile_sample_stride)
        fs = self.spatial_factor
        t_out = 1 + (z.shape[1] - 1) * self.temporal_factor
        out = self._tiled(
            lambda t: self.decode_chunked(t, clip=False),
            z,
            size // fs,
            stride // fs,
            fs,
            1,
            self.video_channels,
            t_out,
        )
        return jnp.clip(out, -1.0, 1.0) if clip else out


def jitted(vae: WanVAE, method: str, **kwargs):
    """`jax.jit` of `vae.<method>(x, **kwargs)` over the split state: f(x) -> output."""
    graphdef, state = nnx.split(vae)

    @jax.jit
    def fn(state, x):
        return getattr(nnx.merge(graphdef, state), method)(x, **kwargs)

    return lambda x: fn(state, x)


# ---- streaming: one compile per chunk shape, output handed out chunk by chunk ----------------


@functools.lru_cache(maxsize=8)
def _stream_fns(graphdef, kind: str):
    """(first, next) jitted per-chunk functions: (state, x[, cache]) -> (y, cache)."""

    def run(state, x, old):
        vae = nnx.merge(graphdef, state)
        c = FeatCache(old)
        if kind == 'encode':
            y = vae._encode_frames(x, c)
        else:
            y = vae._decode_frames(vae.post_quant_conv(x), c)
        return y, c.new

    return jax.jit(lambda s, x: run(s, x, None)), jax.jit(run)


def _stream(vae: WanVAE, x: jax.Array, kind: str, chunk: int) -> Iterator[jax.Array]:
    graphdef, state = nnx.split(vae)
    first, nxt = _stream_fns(graphdef, kind)
    y, cache = first(state, x[:, :1])
    yield y
    for start in range(1, x.shape[1], chunk):
        y, cache = nxt(state, x[:, start : start + chunk], cache)
        yield y


def stream_encode(vae: WanVAE, video: jax.Array) -> Iterator[tuple[jax.Array, jax.Array]]:
    """Yields (mean, logvar) one latent frame at a time ([B, 1, h, w, z]); equals `encode_chunked`.

    Two compiles (first chunk, later chunks) for every video length; `video` may be a host
    (numpy) array, so only one chunk at a time is on the device.
    """
    vae._check_video(video)
    for h in _stream(vae, video, 'encode', vae.temporal_factor):
        yield WanVAE._moments(h)


def stream_decode(vae: WanVAE, z: jax.Array, *, clip: bool = True) -> Iterator[jax.Array]:
    """Yields decoded frames per latent frame ([B, 1, H, W, 3] then [B, temporal_factor, ...]);
    concatenated they equal `decode_chunked`. Two compiles for every length; memory on the
    device is one chunk, so arbitrarily long videos can be written out as they come."""
    vae._check_latents(z)
    for y in _stream(vae, z, 'decode', 1):
        yield jnp.clip(y, -1.0, 1.0) if clip else y
