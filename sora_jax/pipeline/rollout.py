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
import json
import os
from typing import Callable, Iterable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from sora_jax.diffusion import conditioning as cond_lib
from sora_jax.diffusion import flow, samplers
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
    # a few-step causal generator's schedule (convert/causal_wan.py): the times t_0 > ... > 0
    # (None: the sampler's own from steps and shift), and `renoise`: each step predicts the
    # clean chunk x0 = x - t v and draws fresh noise at the next time, (1 - t') x0 + t' eps, as
    # CausVid and Self-Forcing sample (None: sampler above)
    sigmas: tuple[float, ...] | None = None
    renoise: bool = False
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
        if self.renoise and self.sigmas is None:
            raise ValueError('rollout renoise=True needs its sigmas (t_0 > ... > t_N = 0).')


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


@functools.partial(
    jax.jit,
    static_argnames=(
        'graphdef',
        'layout',
        'steps',
        'sampler',
        'shift',
        'sigmas',
        'renoise',
        'cfg',
        'frame_masks',
        'prediction',
    ),
)
def chunk_step(
    params,
    cache: kv_cache.KVCache,
    noise,
    context,
    context_mask,
    index,
    guidance_scale,
    key=None,
    *,
    graphdef,
    layout: kv_cache.CacheLayout,
    steps: int,
    sampler: str,
    shift: float,
    sigmas: tuple[float, ...] | None = None,
    renoise: bool = False,
    cfg: bool = True,
    frame_masks: bool = False,
    prediction: str = 'velocity',
):
    """noise [B, chunk, h, w, C] -> (clean latents, cache with this chunk written). context:
    with `cfg`, [2B, L, D] conditional rows then unconditional and a cache of 2B rows; without
    (guidance 1: the conditional pass alone), [B, L, D] and B rows. `index` (traced): the
    chunk's number, so every chunk runs this one compiled program. `renoise` (with `sigmas`):
    x0-prediction steps with fresh noise from `key` between them (RolloutOptions).
    `frame_masks`: a DiT trained with frame-mask conditioning gets [x, 0, 0] (t2v: no frame
    known, `diffusion/conditioning.model_input`). `prediction`: what the DiT outputs, converted
    to a velocity by `flow.to_velocity` (the family's config.flow.prediction)."""
    dit = nnx.merge(graphdef, params)
    offset = index * dit.cfg.causal_chunk

    def dit_in(x):
        if not frame_masks:
            return x
        return cond_lib.model_input(x, jnp.zeros(x.shape[:2], x.dtype), jnp.zeros_like(x))

    def model_fn(x, t):  # [2B, ...] rows with cfg: conditional, unconditional
        out, _ = dit.chunk(dit_in(x), t, context, context_mask, cache=cache, frame_offset=offset)
        return flow.to_velocity(out, x, t, prediction)

    guidance = guidance_scale if cfg else None
    if renoise:
        x0 = _renoise_sample(model_fn, noise, sigmas, key, guidance)
    else:
        x0 = samplers.sample(
            model_fn,
            noise,
            method=sampler,
            num_steps=steps,
            shift=shift,
            sigmas=None if sigmas is None else np.asarray(sigmas, np.float64),
            guidance=guidance,
        )
    both = jnp.concatenate([x0, x0], 0) if cfg else x0
    zeros = jnp.zeros((both.shape[0],), jnp.float32)
    _, kv = dit.chunk(dit_in(both), zeros, context, context_mask, cache=cache, frame_offset=offset)
    return x0, kv_cache.write_chunk(cache, kv, index, layout)


def _renoise_sample(model_fn, noise, sigmas, key, guidance):
    """CausVid / Self-Forcing few-step sampling: at each t_i the model's velocity gives the
    clean estimate x0 = x - t_i v; the next state is x0 noised afresh to t_{i+1}; the last
    estimate is the sample."""
    if guidance is not None:
        model_fn = samplers.cfg_velocity(model_fn, guidance)
    x = noise.astype(jnp.float32)
    b = x.shape[0]
    for i, (t, t_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        v = model_fn(x, jnp.full((b,), t, jnp.float32)).astype(jnp.float32)
        x0 = x - t * v
        if t_next == 0:
            return x0
        eps = jax.random.normal(jax.random.fold_in(key, i), x.shape, jnp.float32)
        x = (1.0 - t_next) * x0 + t_next * eps
    return x


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
    cfg = float(opts.guidance_scale) != 1.0  # guidance 1: the conditional pass alone
    if not cfg:
        context = context[:b]
        context_mask = None if context_mask is None else context_mask[:b]
    cache = kv_cache.empty_cache(
        layout,
        depth=dit_cfg.depth,
        batch=(2 if cfg else 1) * b,
        heads=dit_cfg.num_heads,
        head_dim=dit_cfg.head_dim,
        dtype=jnp.dtype(dit_cfg.dtype),
    )
    decoder = StreamDecoder(pipe.vae)
    fps = float(s.get('fps', 16))
    total = frames_of(options.num_chunks, chunk, tf) / fps
    key = jax.random.key(opts.seed)
    sigmas = None if options.sigmas is None else tuple(float(x) for x in options.sigmas)
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
                jax.random.fold_in(jax.random.fold_in(key, i), 1 << 20),  # renoise draws
                graphdef=pipe.graphdef,
                layout=layout,
                steps=opts.num_inference_steps,
                sampler=opts.sampler,
                shift=float(opts.shift),
                sigmas=sigmas,
                renoise=options.renoise,
                cfg=cfg,
                frame_masks=pipe.conditioned,
                prediction=pipe.prediction,
            )
            frames = pipe.finish(decoder(lat), opts)
            bar.update(round(frames.shape[1] / fps, 2))
            yield Chunk(i, lat, frames)


CAUSAL_JSON = 'causal.json'  # a converted causal Wan folder's sampling settings (convert/)


def sampling_defaults(path: str | None) -> dict:
    """The rollout settings a converted causal checkpoint was published with (`causal.json`
    beside its transformer/: sigmas, renoise, guidance_scale, window, sink_frames), or {}."""
    if not path:
        return {}
    f = os.path.join(os.fspath(path), CAUSAL_JSON)
    if not os.path.isfile(f):
        return {}
    with open(f) as fh:
        d = json.load(fh)
    keys = ('sigmas', 'renoise', 'guidance_scale', 'window', 'sink_frames')
    out = {k: d[k] for k in keys if d.get(k) is not None}
    if 'sigmas' in out:
        out['sigmas'] = tuple(float(x) for x in out['sigmas'])
    return out


def options_for(pipe, **kw) -> RolloutOptions:
    """RolloutOptions from call arguments (None: not given), the checkpoint's
    `sampling_defaults` filling what is not given, then RolloutOptions' own defaults."""
    given = {k: v for k, v in kw.items() if v is not None}
    return RolloutOptions(**{'num_chunks': 1, **sampling_defaults(pipe.checkpoint_path), **given})


def causal_clip(path: str, wan_config=None) -> tuple[int, int]:
    """(model.causal_chunk, config.sample.num_frames) of a checkpoint, read from its files
    before any weight loads: a training workdir / bundle's saved config, or a converted Wan
    folder's transformer/config.json (its sampling config `wan_config`, default
    configs/wan21.py:t2v_1.3b, gives the clip length). (0, n) for a full-attention model."""
    path = os.fspath(path)
    hf = os.path.join(path, 'transformer', 'config.json')
    if os.path.isfile(hf):
        with open(hf) as fh:
            chunk = int(json.load(fh).get('causal_chunk') or 0)
        if wan_config is None:
            from configs import wan21

            wan_config = wan21.get_config('t2v_1.3b')
        return chunk, int(wan_config.sample.num_frames)
    cdir = os.path.join(path, 'checkpoints')
    if not os.path.isdir(cdir):
        return 0, 0
    from sora_jax.io import checkpoint as ckpt

    config = ckpt.load_config(cdir)
    return int(config.model.get('causal_chunk', 0) or 0), int(config.sample.num_frames)


def frames_for_seconds(pipe, seconds: float) -> int:
    """round(seconds * config.sample.fps) frames, or a ValueError when that is none."""
    fps = float(pipe.config.sample.get('fps', 16))
    n_frames = int(round(float(seconds) * fps)) if np.isfinite(seconds) else 0
    if n_frames < 1:
        raise ValueError(f'seconds={seconds} gives no frame at {fps:g} fps; use seconds > 0.')
    return n_frames


def frames(pipe, prompt: str, num_frames: int, options: RolloutOptions) -> Iterator[np.ndarray]:
    """Exactly `num_frames` uint8 frames [B, T, H, W, 3] of one prompt, in pieces as the chunks
    come (`rollout` with the fewest chunks that give them; the last piece is cut)."""
    if num_frames < 1:
        raise ValueError(f'num_frames={num_frames} must be >= 1.')
    chunk = causal_chunk(pipe)
    n = chunks_for_frames(num_frames, chunk, pipe.temporal_factor)
    left = num_frames
    for c in rollout(pipe, prompt, dataclasses.replace(options, num_chunks=n)):
        piece = c.frames[:, :left]
        left -= piece.shape[1]
        if piece.shape[1]:
            yield piece


def sample_frames(pipe, prompts, num_frames: int, options: RolloutOptions) -> np.ndarray:
    """`num_frames` frames per prompt, chunk by chunk (`rollout`), as uint8 [B, T, H, W, 3]
    (`options.num_chunks` is replaced by what that needs)."""
    clips = [
        np.concatenate(list(frames(pipe, p, num_frames, options)), 1)
        for p in ([prompts] if isinstance(prompts, str) else list(prompts))
    ]
    return np.concatenate(clips, 0)


def sample_seconds(pipe, prompts, seconds: float, options: RolloutOptions) -> np.ndarray:
    """`seconds` of video per prompt, chunk by chunk (`rollout`), as uint8 [B, T, H, W, 3]
    with T = round(seconds * fps) frames (`options.num_chunks` is replaced by what that needs)."""
    return sample_frames(pipe, prompts, frames_for_seconds(pipe, seconds), options)


def segment_paths(out: str, count: int) -> list[str]:
    """The segment files of an output: OUT_000.mp4, OUT_001.mp4, ... (`count` of them)."""
    root, ext = os.path.splitext(out)
    return [f'{root}_{k:03d}{ext}' for k in range(count)]


def stream_to_file(
    pieces: Iterable[np.ndarray],
    out,
    fps: float,
    *,
    scale: int = 1,
    segment_frames: int = 0,
    reserve_segment: Callable[[int], object] | None = None,
    seal: Callable[[list[str]], None] = lambda paths: None,
) -> list[str]:
    """Writes uint8 pieces [1, T, H, W, 3] (`frames`) to `out` (an `io/outputs.Reserved`) as
    they come: an ffmpeg pipe onto its temporary name (`io/video.VideoStream`), so the frames
    never pile up. With `segment_frames` > 0 the same frames also go to segment files of that
    many frames (the last may be shorter): segment k is reserved when its first frame comes
    (`reserve_segment(k)` -> Reserved), and as soon as it is full it is closed, sealed
    (`seal([tmp])`: Content Credentials) and committed, so the start of a long video can be
    watched while the rest renders. The whole file is sealed and committed at the end. On an
    error every open temporary file is removed (committed segments stay). `scale`: nearest
    upscale (config.sample.display_scale). Returns the paths committed, segments first."""
    from sora_jax.io import video as video_io

    if segment_frames and reserve_segment is None:
        raise ValueError('segment_frames needs reserve_segment (the segment files).')
    done: list[str] = []
    whole, main = video_io.VideoStream(out.tmp, fps), out
    seg = seg_out = None
    k = 0
    try:
        for piece in pieces:
            clip = piece[0]
            if scale > 1:
                clip = np.repeat(np.repeat(clip, scale, axis=1), scale, axis=2)
            whole.add(clip)
            while segment_frames and len(clip):
                if seg is None:
                    seg_out = reserve_segment(k)
                    seg = video_io.VideoStream(seg_out.tmp, fps)
                take = clip[: segment_frames - seg.frames]
                seg.add(take)
                clip = clip[len(take) :]
                if seg.frames == segment_frames:
                    seg, seg_out = _finish(seg, seg_out, seal, done), None
                    k += 1
        if seg is not None:  # the last, shorter segment
            seg, seg_out = _finish(seg, seg_out, seal, done), None
        whole, main = _finish(whole, main, seal, done), None
    except BaseException:  # (a failed commit keeps its file itself: io/outputs.py)
        for stream, reserved in ((seg, seg_out), (whole, main)):
            if stream is not None:
                stream.abort()
            if reserved is not None:
                reserved.abort()
        raise
    return done


def _finish(stream, reserved, seal, done: list[str]) -> None:
    """Closes a stream, seals and commits its file (appended to `done`)."""
    stream.close()
    seal([reserved.tmp])
    done.append(reserved.commit())
