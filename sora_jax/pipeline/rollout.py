"""Chunked autoregressive rollout: a causal DiT (`model.causal_chunk > 0`) generates latent-frame
chunk after chunk with a key/value cache of the past, and the frames are decoded and handed out
as each chunk is done, so a video of any length runs with constant memory and constant time per
chunk (CausVid / Self-Forcing style sampling).

Per chunk i (one jitted program for every i; its inputs never change shape):
  1. denoise fresh noise [B, chunk, h, w, C] from t = 1 to 0 with the pipeline's sampler and
     classifier-free guidance; every DiT call attends to the chunk itself and to the cache
     (`DiT.chunk`, RoPE at absolute frame i * chunk);
  2. run the DiT once on the clean chunk at t = 0 and write its keys/values into the cache
     (`models/kv_cache.write_chunk`: a ring of `window` chunks after `sink_frames` kept frames
     of chunk 0);
  3. decode the chunk's latents with the causal VAE's feature cache (`models/vae.py` streaming:
     frame by frame, the same frames a decode of the whole latent video gives).

    pipe = TextToVideo.from_checkpoint('workdirs/causal')
    for frames in rollout(pipe, 'a red circle bouncing', RolloutOptions(num_chunks=30)):
        writer.add(frames)                     # uint8 [B, T_chunk, H, W, 3], watermarked

The unconditional rows (negative prompt) keep their own cache rows: the cache batch is 2B.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from sora_jax.diffusion import samplers
from sora_jax.models import kv_cache
from sora_jax.models import vae as vae_lib


@dataclasses.dataclass(frozen=True)
class RolloutOptions:
    """How a rollout runs: `num_chunks` chunks of the model's `causal_chunk` latent frames,
    each attending to the last `window` chunks (0: every past chunk, the cache then grows with
    num_chunks) plus `sink_frames` first latent frames kept for ever."""

    num_chunks: int
    window: int = 4
    sink_frames: int = 0
    # the rest as `TextToVideo.__call__` takes them; None: config.sample's
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    shift: float | None = None
    sampler: str | None = None
    height: int | None = None
    width: int | None = None
    seed: int = 0
    negative_prompt: str | None = None
    moderation: bool = True
    watermark: bool = True
    progress: bool = True

    def check(self, chunk: int) -> None:
        if self.num_chunks < 1 or self.window < 0:
            raise ValueError(
                f'rollout num_chunks={self.num_chunks}, window={self.window}: need '
                'num_chunks >= 1 and window >= 0.'
            )
        if not 0 <= self.sink_frames <= chunk:
            raise ValueError(
                f'rollout sink_frames={self.sink_frames} must lie in [0, {chunk}] (frames of '
                'the first chunk kept in the cache).'
            )


class Chunk(NamedTuple):
    """One generated chunk: its index, latents [B, chunk, h, w, C] and frames uint8
    [B, T, H, W, 3] (the first chunk of a causal VAE has 1 + (chunk - 1) * factor frames,
    later ones chunk * factor)."""

    index: int
    latents: jax.Array
    frames: np.ndarray


def causal_chunk(pipe) -> int:
    """Latent frames per chunk of the pipeline's DiT, or a ValueError for a full-attention DiT."""
    chunk = int(nnx.merge(pipe.graphdef, pipe.params).cfg.causal_chunk)
    if chunk < 1:
        raise ValueError(
            'this checkpoint has a full-attention DiT (model.causal_chunk=0); chunked rollouts '
            'need one trained causal (objective diffusion_forcing, model.causal_chunk > 0).'
        )
    return chunk


def frames_of(num_chunks: int, chunk: int, temporal_factor: int) -> int:
    """Video frames of `num_chunks` chunks: latent frame 0 decodes to one frame, the rest to
    `temporal_factor` each."""
    return 1 + (num_chunks * chunk - 1) * temporal_factor


def chunks_for_frames(num_frames: int, chunk: int, temporal_factor: int) -> int:
    """The fewest chunks giving at least `num_frames` frames."""
    latent = -(-(num_frames - 1) // temporal_factor) + 1
    return max(1, -(-latent // chunk))


@functools.partial(jax.jit, static_argnames=('graphdef', 'layout', 'steps', 'sampler', 'shift'))
def chunk_step(
    params,
    cache: kv_cache.KVCache,
    noise,
    context,
    context_mask,
    index,
    guidance_scale,
    *,
    graphdef,
    layout: kv_cache.CacheLayout,
    steps: int,
    sampler: str,
    shift: float,
):
    """noise [B, chunk, h, w, C] -> (clean latents, cache with this chunk written). context:
    [2B, L, D] conditional rows then unconditional; the cache has 2B rows. `index` (traced): the
    chunk's number, so every chunk runs this one compiled program."""
    dit = nnx.merge(graphdef, params)
    offset = index * dit.cfg.causal_chunk

    def model_fn(x2, t2):  # [2B, ...] rows: conditional, unconditional
        v, _ = dit.chunk(x2, t2, context, context_mask, cache=cache, frame_offset=offset)
        return v

    x0 = samplers.sample(
        model_fn,
        noise,
        method=sampler,
        num_steps=steps,
        shift=shift,
        guidance=guidance_scale,
    )
    both = jnp.concatenate([x0, x0], 0)
    zeros = jnp.zeros((both.shape[0],), jnp.float32)
    _, kv = dit.chunk(both, zeros, context, context_mask, cache=cache, frame_offset=offset)
    return x0, kv_cache.write_chunk(cache, kv, index, layout)


class StreamDecoder:
    """Latent frames -> video frames with the causal VAE's feature cache (pixel space: the
    identity), one latent frame at a time, so memory does not grow with the video."""

    def __init__(self, vae):
        self.vae = vae  # FrozenVAE or None
        self.cache = None
        if vae is not None:
            self.first, self.next = vae_lib._stream_fns(vae.graphdef, 'decode')

    def __call__(self, latents: jax.Array) -> jax.Array:
        """latents [B, n, h, w, C] (normalised as the DiT's) -> frames [B, T, H, W, 3]."""
        if self.vae is None:
            return latents
        if self.vae.mean is not None:
            latents = latents * self.vae.std + self.vae.mean
        z = _denormalize(self.vae.graphdef, self.vae.state, latents)
        out = []
        for i in range(z.shape[1]):
            if self.cache is None:
                y, self.cache = self.first(self.vae.state, z[:, i : i + 1])
            else:
                y, self.cache = self.next(self.vae.state, z[:, i : i + 1], self.cache)
            out.append(jnp.clip(y, -1.0, 1.0))
        return jnp.concatenate(out, 1)


@functools.partial(jax.jit, static_argnums=0)
def _denormalize(graphdef, state, latents):
    return nnx.merge(graphdef, state).denormalize_latents(latents)


def rollout(pipe, prompt: str, options: RolloutOptions) -> Iterator[Chunk]:
    """Generate `options.num_chunks` chunks for one prompt with the pipeline's causal DiT,
    yielding each (latents and decoded uint8 frames) as soon as it exists. The progress bar
    counts seconds of video (config.sample.fps)."""
    chunk = causal_chunk(pipe)
    options.check(chunk)
    s = pipe.config.sample
    sf, tf = pipe.spatial_factor, pipe.temporal_factor
    # the pipeline's own checks, defaults and prompt moderation, for one chunk's frames
    opts = pipe.check_inputs(
        prompt,
        num_frames=frames_of(1, chunk, tf),
        height=options.height,
        width=options.width,
        num_inference_steps=options.num_inference_steps,
        guidance_scale=options.guidance_scale,
        negative_prompt=options.negative_prompt,
        sampler=options.sampler,
        shift=options.shift,
        seed=options.seed,
        mode='t2v',
        strength=0.7,
        guidance_interval=(0.0, 1.0),
        skip_guidance_scale=0.0,
        skip_layers=None,
        skip_guidance_interval=None,
        output_type='np',
        progress=options.progress,
        moderation=options.moderation,
        watermark=options.watermark,
        guidance_scale_2=None,
    )
    height, width = opts.height, opts.width
    dit_cfg = nnx.merge(pipe.graphdef, pipe.params).cfg
    b = 1
    latent_shape = (b, chunk, height // sf, width // sf, pipe.latent_channels)
    pt, ph, pw = dit_cfg.patch_size
    tokens_per_frame = (height // sf // ph) * (width // sf // pw)
    chunk_tokens = (chunk // pt) * tokens_per_frame
    window = options.window or options.num_chunks
    layout = kv_cache.CacheLayout(
        chunk_tokens, window, (options.sink_frames // pt) * tokens_per_frame
    )
    context, context_mask = pipe.encode_prompt(opts)  # [2, L, D]: conditional, unconditional
    cache = kv_cache.empty_cache(
        layout,
        depth=dit_cfg.depth,
        batch=2 * b,
        heads=dit_cfg.num_heads,
        head_dim=dit_cfg.head_dim,
        dtype=jnp.dtype(dit_cfg.dtype),
    )
    decoder = StreamDecoder(pipe.vae)
    fps = float(s.get('fps', 16))
    total = frames_of(options.num_chunks, chunk, tf) / fps
    key = jax.random.key(opts.seed)
    with tqdm(
        total=round(total, 2), desc='video seconds', unit='s', disable=not options.progress
    ) as bar:
        for i in range(options.num_chunks):
            noise = jax.random.normal(jax.random.fold_in(key, i), latent_shape, jnp.float32)
            lat, cache = chunk_step(
                pipe.params,
                cache,
                noise,
                context,
                context_mask,
                jnp.int32(i),
                jnp.float32(opts.guidance_scale),
                graphdef=pipe.graphdef,
                layout=layout,
                steps=opts.num_inference_steps,
                sampler=opts.sampler,
                shift=float(opts.shift),
            )
            frames = pipe.finish(decoder(lat), opts)
            bar.update(round(frames.shape[1] / fps, 2))
            yield Chunk(i, lat, frames)


def sample_seconds(pipe, prompts, seconds: float, options: RolloutOptions) -> np.ndarray:
    """`seconds` of video per prompt, chunk by chunk (`rollout`), as uint8 [B, T, H, W, 3]
    with T = round(seconds * fps) frames (`options.num_chunks` is replaced by what that needs)."""
    fps = float(pipe.config.sample.get('fps', 16))
    n_frames = int(round(float(seconds) * fps))
    if not np.isfinite(seconds) or n_frames < 1:
        raise ValueError(f'seconds={seconds} gives no frame at {fps:g} fps; use seconds > 0.')
    chunk = causal_chunk(pipe)
    n = chunks_for_frames(n_frames, chunk, pipe.temporal_factor)
    opts = dataclasses.replace(options, num_chunks=n)
    clips = [
        np.concatenate([c.frames for c in rollout(pipe, p, opts)], 1)[:, :n_frames]
        for p in ([prompts] if isinstance(prompts, str) else list(prompts))
    ]
    return np.concatenate(clips, 0)
