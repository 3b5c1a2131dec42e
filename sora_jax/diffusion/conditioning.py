"""Frame-mask conditioning in latent space (Open-Sora 2.0 style): one model for every mode.

Representation:
* ``mask: [B, T_lat]`` float, 1 where a latent frame is known;
* ``known: [B, T_lat, H, W, C]`` clean latents of the known frames (zeros elsewhere);
* `model_input(x_t, mask, known)` = ``concat([x_t, known * mask, mask], -1)``: the DiT takes 2C + 1
  input channels when conditioning is enabled (C for t2v-only models).

Modes: 't2v' (nothing known), 'i2v' (first latent frame), 'extend' (first k), 'extend_backward'
(last k), 'connect' (first k_head and last k_tail, middle generated), 'loop' (first frame known and
the same latent pinned to the last frame), 'v2v' (SDEdit: nothing known, sampling starts from a
noised input video, see `sdedit_start`), 't2i' (one latent frame, nothing known).

Sampling: `condition_from_frames` turns the user's image / video into (mask, known) (the
pipeline's one path: frames placed in the clip, encoded, `build_condition`); then build
``velocity_fn = lambda x, t: dit(model_input(x, mask, known), t, ...)`` and pass
``step_callback=replace_callback(mask, known, noise)`` to `samplers.sample`, so known frames follow
the same noising path ``(1 - t) known + t noise`` the model saw in training, and are exact at t = 0.
Training: ``known = x0``, ``mask = random_training_mask(...)``, and ``flow_loss(..., mask=1 - mask)``
so the conditioned frames carry no loss.

Loop (wrap-around): the last latent frame is pinned to the first frame's latent, so the clip ends
where it starts. With a causal VAE the last latent decodes to the last ``temporal_factor`` pixel
frames, which then approximate frame 0; drop them (``plan['keep_pixel_frames']`` of
`frame_plan`) and play the rest on repeat: the frame before the cut was generated to run into frame 0.
(A crossfade of those frames into the head is the alternative when the pinned latent decodes with
visible artefacts: the first-frame latent is an image code, reused here in a 4-frame slot.)

Causal VAE frame map: T pixel frames <-> 1 + (T - 1) / temporal_factor latent frames; latent 0 is
pixel frame 0 alone, latent l >= 1 covers pixel frames [1 + (l - 1) f, l f].
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sora_jax.diffusion.flow import add_noise

MODES = ('t2v', 'i2v', 'extend', 'extend_backward', 'connect', 'loop', 'v2v', 't2i', 'flf2v')
TRAIN_MODES = ('t2v', 'i2v', 'extend', 'extend_backward', 'connect', 'loop')


def _check_mode(mode: str, allowed=MODES) -> None:
    if mode not in allowed:
        raise ValueError(f'unknown conditioning mode {mode!r}; use one of {allowed}.')


# ----------------------------------------------------------------------------- frame bookkeeping


def num_latent_frames(num_pixel_frames: int, temporal_factor: int = 4) -> int:
    """1 + (T - 1) / temporal_factor; T must be 1 + k * temporal_factor."""
    if num_pixel_frames < 1 or (num_pixel_frames - 1) % temporal_factor:
        raise ValueError(
            f'num_pixel_frames {num_pixel_frames} must be 1 + k * {temporal_factor} for the '
            f'causal VAE; use e.g. {1 + max(0, (num_pixel_frames - 1) // temporal_factor) * temporal_factor}.'
        )
    return 1 + (num_pixel_frames - 1) // temporal_factor


def pixel_frames_of_latent(latent_index: int, temporal_factor: int = 4) -> range:
    """Pixel frames decoded from one latent frame: [0] for latent 0, else [1 + (l-1) f, l f]."""
    if latent_index < 0:
        raise ValueError(f'latent_index must be >= 0, got {latent_index}.')
    if latent_index == 0:
        return range(0, 1)
    return range(1 + (latent_index - 1) * temporal_factor, 1 + latent_index * temporal_factor)


def latent_of_pixel_frame(pixel_index: int, temporal_factor: int = 4) -> int:
    """Latent frame holding a pixel frame: 0 for frame 0, else 1 + (p - 1) // f."""
    if pixel_index < 0:
        raise ValueError(f'pixel_index must be >= 0, got {pixel_index}.')
    return 0 if pixel_index == 0 else 1 + (pixel_index - 1) // temporal_factor


def latent_mask_for_mode(
    mode: str, num_latent: int, num_known: int | tuple[int, int] = 1
) -> np.ndarray:
    """Known latent frames of a mode: bool [num_latent].

    num_known: k for 'extend' / 'extend_backward', (k_head, k_tail) for 'connect' (an int means
    the same k at both ends); ignored by the other modes.
    """
    _check_mode(mode)
    m = np.zeros(num_latent, bool)
    if mode == 't2i' and num_latent != 1:
        raise ValueError(f"'t2i' has one latent frame, got {num_latent}; use 't2v' for videos.")
    if mode in ('t2v', 'v2v', 't2i'):
        return m
    if mode in ('i2v', 'loop'):
        if mode == 'loop' and num_latent < 2:
            raise ValueError(f"'loop' needs >= 2 latent frames, got {num_latent}.")
        m[0] = True
        m[-1] |= mode == 'loop'
        return m
    head, tail = {
        'extend': (num_known, 0),
        'extend_backward': (0, num_known),
        'connect': num_known if isinstance(num_known, tuple) else (num_known, num_known),
    }[mode]
    if head < 0 or tail < 0 or head + tail >= num_latent or head + tail == 0:
        raise ValueError(
            f'{mode!r} with {num_latent} latent frames cannot have known (head, tail) = '
            f'({head}, {tail}); keep 1 <= known < {num_latent} so something is generated.'
        )
    m[:head] = True
    if tail:
        m[num_latent - tail :] = True
    return m


def frame_plan(
    mode: str,
    num_pixel_frames: int,
    *,
    temporal_factor: int = 4,
    num_known_pixel_frames: int | tuple[int, int] = 1,
) -> dict:
    """Which pixel frames feed which latent frames for a mode (causal VAE).

    num_known_pixel_frames: frames supplied by the user: k for 'extend' (the first k) and
    'extend_backward' (the last k), (k_head, k_tail) for 'connect'. Only latent frames whose pixel
    frames are all supplied become known. Returns a dict with
      'num_latent_frames', 'latent_mask' (bool [T_lat]), 'latent_to_pixel' (list of ranges),
      'known_pixel_frames' (sorted pixel indices that determine the known latents) and
      'keep_pixel_frames' (frames to keep after decoding; drops the pinned tail for 'loop').
    Backward / connect tails: encode the full-length video (placeholder frames in front) so the
    tail latents carry the causal context they have at that position.
    """
    _check_mode(mode)
    t_lat = num_latent_frames(num_pixel_frames, temporal_factor)
    l2p = [pixel_frames_of_latent(i, temporal_factor) for i in range(t_lat)]
    k = num_known_pixel_frames
    head_px, tail_px = {'extend': (k, 0), 'extend_backward': (0, k)}.get(
        mode, k if isinstance(k, tuple) else (k, k)
    )
    if mode in ('extend', 'extend_backward', 'connect'):
        if head_px < 0 or tail_px < 0 or head_px + tail_px > num_pixel_frames:
            raise ValueError(
                f'{mode!r}: known pixel frames {num_known_pixel_frames} do not fit in '
                f'{num_pixel_frames} frames.'
            )
        head = sum(1 for r in l2p if r.stop <= head_px)  # latents fully inside the head
        tail = sum(1 for r in l2p[1:] if r.start >= num_pixel_frames - tail_px)
        mask = latent_mask_for_mode(
            mode, t_lat, {'extend': head, 'extend_backward': tail}.get(mode, (head, tail))
        )
    else:
        mask = latent_mask_for_mode(mode, t_lat)
    known_px = sorted({p for i in np.flatnonzero(mask) for p in l2p[i]})
    if mode == 'loop':
        known_px = [0]  # the pinned last latent is a copy of latent 0
    keep = num_pixel_frames - temporal_factor if mode == 'loop' else num_pixel_frames
    return {
        'num_latent_frames': t_lat,
        'latent_mask': mask,
        'latent_to_pixel': l2p,
        'known_pixel_frames': known_px,
        'keep_pixel_frames': keep,
    }


# ----------------------------------------------------------------------------- tensors


def build_condition(
    mode: str,
    latent_shape: tuple[int, ...],
    cond_latents: jax.Array | None = None,
    tail_latents: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(mask [B, T_lat] float32, known [B, T_lat, H, W, C]) for sampling in a mode.

    latent_shape: (B, T_lat, H, W, C) of the latents to generate.
    cond_latents: [B, k, H, W, C] encoded conditioning frames: the image (k >= 1, frame 0 used) for
      'i2v' / 'loop', the first k latents for 'extend', the last k for 'extend_backward', the head
      for 'connect' (with ``tail_latents`` the tail). None for 't2v', 'v2v', 't2i'.
    """
    _check_mode(mode)
    b, t_lat = latent_shape[:2]
    known = jnp.zeros(latent_shape, jnp.float32)
    if mode in ('t2v', 'v2v', 't2i'):
        mask = latent_mask_for_mode(mode, t_lat)
        return jnp.broadcast_to(jnp.asarray(mask, jnp.float32), (b, t_lat)), known
    if cond_latents is None or (mode == 'connect' and tail_latents is None):
        raise ValueError(
            f'mode {mode!r} needs cond_latents'
            + (' and tail_latents' if mode == 'connect' else '')
            + '.'
        )
    if cond_latents.shape[0] != b or cond_latents.shape[2:] != tuple(latent_shape[2:]):
        raise ValueError(
            f'cond_latents {cond_latents.shape} does not match latents {latent_shape} '
            'in batch / H / W / C.'
        )
    c = cond_latents.astype(jnp.float32)
    k = c.shape[1]
    if mode in ('i2v', 'loop'):
        known = known.at[:, 0].set(c[:, 0])
        if mode == 'loop':
            known = known.at[:, -1].set(c[:, 0])
        num_known = 1
    elif mode == 'extend':
        known, num_known = known.at[:, :k].set(c), k
    elif mode == 'extend_backward':
        known, num_known = known.at[:, t_lat - k :].set(c), k
    else:  # connect
        kt = tail_latents.shape[1]
        known = known.at[:, :k].set(c).at[:, t_lat - kt :].set(tail_latents.astype(jnp.float32))
        num_known = (k, kt)
    mask = jnp.asarray(latent_mask_for_mode(mode, t_lat, num_known), jnp.float32)
    return jnp.broadcast_to(mask, (b, t_lat)), known


class FrameCondition(NamedTuple):
    """What a sampling run conditions on: `condition_from_frames`'s result."""

    mask: jax.Array  # [B, T_lat] float32, 1 = known latent frame (v2v: zeros)
    known: jax.Array  # [B, T_lat, H, W, C] clean latents of the known frames (v2v: the input's)
    keep_frames: int  # pixel frames to keep after decoding (t2i: 1; loop: without its pinned tail)


def as_pixels(x, name: str, mode: str, batch: int, height: int, width: int, ndim: int):
    """User frames -> float32 [B, (T,) H, W, 3] in [-1, 1]: an image (ndim 3) or a video (ndim 4),
    one per batch row or one for all; uint8 is rescaled, floats are taken as [-1, 1]."""
    if x is None:
        raise ValueError(f'mode={mode!r} needs {name}=.')
    x = np.asarray(x)
    if x.ndim == ndim:
        x = np.broadcast_to(x[None], (batch, *x.shape))
    if x.ndim != ndim + 1 or x.shape[0] != batch or x.shape[-3:-1] != (height, width):
        raise ValueError(
            f'{name} has shape {x.shape}; expected {"[T, " if ndim == 4 else "["}'
            f'{height}, {width}, 3] (resize it to height x width).'
        )
    return x.astype(np.float32) / 127.5 - 1.0 if x.dtype == np.uint8 else x.astype(np.float32)


def condition_from_frames(
    mode: str,
    encode: Callable[[jax.Array], jax.Array],
    latent_shape: tuple[int, ...],
    frame_shape: tuple[int, int, int],
    *,
    image=None,
    video=None,
    temporal_factor: int = 1,
    first_frame_only: bool = False,
) -> FrameCondition:
    """The frame condition of a sampling call from the user's pixels: `image` ([H, W, 3] or
    [B, H, W, 3]: 'i2v', 'loop'), `video` ([T, H, W, 3] or [B, T, H, W, 3]: 'extend' (the head),
    'extend_backward' (the tail), 'v2v' (all T frames); a (head, tail) pair for 'connect').

    The known frames are placed in a T-frame clip (zeros elsewhere) and encoded together by
    `encode` ([B, T, H, W, 3] in [-1, 1] -> latents; a causal VAE so gives tail latents their
    context); the latent frames `frame_plan` marks known go through `build_condition`.
    `first_frame_only` (Wan 2.2 TI2V, mode 'i2v'): the image is encoded alone as latent frame 0.
    latent_shape: (B, T_lat, h, w, C) of the latents to generate; frame_shape: (T, H, W) pixels.
    """
    _check_mode(mode)
    if mode == 'flf2v':  # Wan I2V models only (image_condition.py); the pipeline routes it
        raise ValueError(
            "mode='flf2v' needs a Wan image-to-video model; a frame-mask model takes the first "
            "and last frames as mode='connect' with video=(head, tail)."
        )
    b, t_lat = latent_shape[:2]
    num_frames, height, width = frame_shape
    tf = max(temporal_factor, 1)
    pixels = functools.partial(as_pixels, mode=mode, batch=b, height=height, width=width)
    if mode in ('t2v', 't2i'):
        if image is not None or video is not None:
            raise ValueError(f"mode={mode!r} takes no image/video; use mode='i2v' or 'v2v'.")
        mask, known = build_condition('t2v', latent_shape)  # t2i: nothing known either
        return FrameCondition(mask, known, 1 if mode == 't2i' else num_frames)
    if mode == 'i2v' and first_frame_only:
        lat0 = encode(jnp.asarray(pixels(image, 'image', ndim=3))[:, None])  # [B, 1, h, w, C]
        return FrameCondition(*build_condition('i2v', latent_shape, lat0), num_frames)
    if mode == 'v2v':
        v = pixels(video, 'video', ndim=4)
        if v.shape[1] != num_frames:
            raise ValueError(f'video has {v.shape[1]} frames; v2v needs num_frames={num_frames}.')
        mask, _ = build_condition('v2v', latent_shape)
        return FrameCondition(mask, encode(jnp.asarray(v)), num_frames)
    buf = np.zeros((b, num_frames, height, width, 3), np.float32)
    known_px = 1
    if mode in ('i2v', 'loop'):
        buf[:, 0] = pixels(image, 'image', ndim=3)
    elif mode in ('extend', 'extend_backward'):
        v = pixels(video, 'video', ndim=4)
        known_px = v.shape[1]
        if known_px >= num_frames:
            raise ValueError(f'video has {known_px} frames; {mode} needs num_frames > {known_px}.')
        if mode == 'extend':
            buf[:, :known_px] = v
        else:
            buf[:, num_frames - known_px :] = v
    else:  # connect
        if not isinstance(video, (tuple, list)) or len(video) != 2:
            raise ValueError("mode='connect' needs video=(head_frames, tail_frames).")
        head, tail = pixels(video[0], 'video[0]', ndim=4), pixels(video[1], 'video[1]', ndim=4)
        known_px = (head.shape[1], tail.shape[1])
        if sum(known_px) >= num_frames:
            raise ValueError(
                f'head ({known_px[0]}) + tail ({known_px[1]}) frames leave nothing to generate '
                f'in num_frames={num_frames}.'
            )
        buf[:, : known_px[0]] = head
        buf[:, num_frames - known_px[1] :] = tail
    plan = frame_plan(mode, num_frames, temporal_factor=tf, num_known_pixel_frames=known_px)
    m = plan['latent_mask']
    if len(m) != t_lat:
        raise ValueError(
            f'{num_frames} frames make {len(m)} latent frames at temporal_factor={tf}, but '
            f"latent_shape has {t_lat}; pass the VAE's temporal_factor."
        )
    if not m.any():
        raise ValueError(
            f'mode={mode!r}: the given frames cover no whole latent frame; give at least '
            f'1 + {tf}k frames.'
        )
    lat = encode(jnp.asarray(buf))  # [B, T_lat, h, w, C]
    head = int(np.argmin(m)) if not m.all() else t_lat  # leading known latents
    tail = int(np.argmin(m[::-1]))  # trailing known latents
    if mode in ('i2v', 'loop'):
        mask, known = build_condition(mode, latent_shape, lat[:, :1])
    elif mode == 'extend':
        mask, known = build_condition(mode, latent_shape, lat[:, :head])
    elif mode == 'extend_backward':
        mask, known = build_condition(mode, latent_shape, lat[:, t_lat - tail :])
    else:
        mask, known = build_condition(mode, latent_shape, lat[:, :head], lat[:, t_lat - tail :])
    return FrameCondition(mask, known, plan['keep_pixel_frames'])


def _frames(mask: jax.Array, x: jax.Array) -> jax.Array:
    """mask [B, T] -> [B, T, 1, ..., 1] against x [B, T, H, W, C]."""
    if mask.shape != x.shape[:2]:
        raise ValueError(f'mask {mask.shape} must be [B, T_lat] = {x.shape[:2]}.')
    return mask.reshape(mask.shape + (1,) * (x.ndim - 2))


def model_input(x_t: jax.Array, mask: jax.Array, known: jax.Array) -> jax.Array:
    """DiT input [B, T, H, W, 2C + 1] = concat([x_t, known * mask, mask], -1)."""
    m = _frames(mask, x_t).astype(x_t.dtype)
    cond = known.astype(x_t.dtype) * m
    return jnp.concatenate([x_t, cond, jnp.broadcast_to(m, x_t.shape[:-1] + (1,))], axis=-1)


def apply_known(x: jax.Array, mask: jax.Array, known: jax.Array) -> jax.Array:
    """Paste known latents: x where mask == 0, known (bit-exact) where mask == 1."""
    return jnp.where(_frames(mask, x) > 0.5, known.astype(x.dtype), x)


def replace_callback(mask: jax.Array, known: jax.Array, noise: jax.Array):
    """`samplers.sample` step_callback: known frames <- (1 - t) known + t noise (exact at t = 0)."""

    def callback(x, t):
        tb = jnp.full((x.shape[0],), t, x.dtype)
        return apply_known(x, mask, add_noise(known.astype(x.dtype), noise.astype(x.dtype), tb))

    return callback


def sdedit_start(
    x0_video_latents: jax.Array, noise: jax.Array, strength: float
) -> tuple[jax.Array, float]:
    """Video-to-video (SDEdit) start: (x_start, t_start) with t_start = strength.

    x_start = (1 - strength) x0 + strength noise: strength 0 returns the input exactly (no steps to
    run), strength 1 is pure noise (the input is ignored). Sample with
    ``samplers.sample(..., t_start=t_start)``; strength is the noise level t itself (already in
    shifted time), so the same strength keeps the same amount of the input at any shift.
    """
    strength = float(strength)
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f'strength must be in [0, 1], got {strength}.')
    if strength == 0.0:
        return x0_video_latents, 0.0
    if strength == 1.0:
        return noise, 1.0
    return add_noise(x0_video_latents, noise, jnp.float32(strength)), strength


def random_training_mask(
    rng: jax.Array,
    batch: int,
    num_latent: int,
    probs: dict[str, float],
    *,
    return_modes: bool = False,
):
    """Random conditioning masks for training one model for all modes: [B, T_lat] float32.

    probs: mode -> probability over TRAIN_MODES (normalised; missing modes have 0), e.g.
      {'t2v': 0.5, 'i2v': 0.2, 'extend': 0.1, 'extend_backward': 0.05, 'connect': 0.1, 'loop': 0.05}.
    Each example draws a mode, then its sizes: extend / extend_backward know k ~ U{1..T-1} frames,
    connect knows k_head ~ U{1..T-2} and k_tail ~ U{1..T-1-k_head}, loop the first and last frame
    (with real data as ``known`` it trains the two-end case; at sampling the tail is the head latent).
    A mode impossible at this T_lat (anything but t2v at T_lat = 1, connect at T_lat = 2) gives an
    all-zero (t2v) mask. Deterministic per ``rng``; jittable (probs and sizes are static).
    return_modes: also return the drawn mode indices [B] into TRAIN_MODES.
    """
    bad = set(probs) - set(TRAIN_MODES)
    if bad:
        raise ValueError(f'unknown training modes {sorted(bad)}; use keys from {TRAIN_MODES}.')
    p = np.array([float(probs.get(m, 0.0)) for m in TRAIN_MODES])
    if np.any(p < 0) or p.sum() <= 0:
        raise ValueError(f'probs must be >= 0 with a positive sum, got {probs}.')
    if batch < 1 or num_latent < 1:
        raise ValueError(f'batch ({batch}) and num_latent ({num_latent}) must be >= 1.')
    mask, modes = _random_mask(rng, int(batch), int(num_latent), tuple(p / p.sum()))
    return (mask, modes) if return_modes else mask


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _random_mask(rng: jax.Array, batch: int, t: int, p: tuple[float, ...]):
    """Jitted body of `random_training_mask` (sizes and probabilities static)."""
    k_mode, k1, k2 = jax.random.split(rng, 3)
    modes = jax.random.choice(k_mode, len(TRAIN_MODES), (batch,), p=jnp.asarray(p))
    idx = jnp.arange(t)[None, :]  # [1, T]
    u1 = jax.random.uniform(k1, (batch, 1))
    u2 = jax.random.uniform(k2, (batch, 1))
    k_ext = 1 + jnp.floor(u1 * max(t - 1, 1)).astype(jnp.int32)  # 1..T-1
    k_head = 1 + jnp.floor(u1 * max(t - 2, 1)).astype(jnp.int32)  # 1..T-2
    k_tail = 1 + jnp.floor(u2 * jnp.maximum(t - 1 - k_head, 1)).astype(jnp.int32)
    feasible = {
        't2v': True,
        'i2v': t >= 2,
        'extend': t >= 2,
        'extend_backward': t >= 2,
        'connect': t >= 3,
        'loop': t >= 2,
    }
    masks = {
        't2v': jnp.zeros((batch, t), bool),
        'i2v': jnp.broadcast_to(idx == 0, (batch, t)),
        'extend': idx < k_ext,
        'extend_backward': idx >= t - k_ext,
        'connect': (idx < k_head) | (idx >= t - k_tail),
        'loop': jnp.broadcast_to((idx == 0) | (idx == t - 1), (batch, t)),
    }
    mask = jnp.zeros((batch, t), bool)
    for i, name in enumerate(TRAIN_MODES):
        if feasible[name]:
            mask = jnp.where((modes == i)[:, None], masks[name], mask)
    return mask.astype(jnp.float32), modes


def token_timesteps(t: jax.Array, mask: jax.Array, shape, patch) -> jax.Array:
    """Wan 2.2 TI2V per-token timesteps (diffusers' expand_timesteps): t [B] and the frame mask
    [B, T_lat] (1 = known) of latents `shape` [B, T_lat, h, w, C] -> [B, N] in the DiT's (t, h, w)
    token order: t on generated tokens, 0 on the tokens of known frames."""
    pt, ph, pw = patch
    _, _, lh, lw, _ = shape
    keep = 1.0 - mask[:, ::pt].astype(t.dtype)  # a token takes the mask of its first frame
    return jnp.repeat(t[:, None] * keep, (lh // ph) * (lw // pw), axis=1)
