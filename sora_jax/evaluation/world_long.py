"""A minute of the physics world judged window by window (issue 32): does a long video stay
itself? Held-out two-object prompts (en + es) are generated for `seconds` by one method, and the
video is cut into consecutive windows of W frames (default 2 s: 33 frames at 16 fps), each judged
by `world_windows.judge_window` against the prompt, with the first window as the drift reference.

  result = evaluate_long(pipe, 'rollout', LongOptions(seconds=60, num_prompts=8))
  json.dump(result.to_json(), f)
  world_long_report.table(result); world_long_report.plot([result, baseline], 'long.png')

Methods (how `seconds` of one prompt are made; frames are judged as they come, so no more than
a window and a clip are held):
  rollout  a causal checkpoint (`model.causal_chunk > 0`): `pipeline/rollout.frames`, chunk by
           chunk with a key/value cache of the last `rollout_window` chunks.
  extend   the baseline, a full-attention checkpoint: a first clip of the clip length the model
           was trained on (config.sample.num_frames) by t2v, then `mode='extend'` chained: each
           call is conditioned on the last `overlap` frames of the previous one and adds
           clip - overlap frames (default overlap: a third of the clip's token frames, 9 frames
           of 33 for the world model). The pipeline has no overlap setting of its own.
  truth    no model: the scene's own objects simulated by the world's law for the whole video
           (`world.simulate`, the same start as the 33-frame clip). The judge's ceiling: the
           world has no object-object collisions, so two objects may pass through each other;
           each window records whether they touch in it (`contact`), and the figures are also
           given for the windows where they never do (`apart`) and where they do (`touching`).

Prompts: the two-object scenes of the `physics` category (bouncing or falling, no bar) of the
held-out streams `--suite=world` draws (`world_eval.held_out_scene`), languages alternating;
bouncing and falling never stop, so every window has motion to check.

A window passes when `WindowVerdict.ok` holds (colour, shape and motion as prompted on one track
per object, nothing vanishing, appearing or duplicated); physics (the laws kept inside the
window) is reported beside it. Figures: pass rate per window index across prompts, per 10-s
bucket, over the first and the last `edge_seconds` (10 s: the first and last k windows,
k = round(10 s x fps / W)) and overall; colour drift (mean |object colour - first window's|,
0..255), background drift and sharpness ratio against the first window.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Iterator, Sequence

import numpy as np
from absl import logging
from tqdm.auto import tqdm

from sora_jax.data import world
from sora_jax.evaluation import world_eval, world_judge, world_windows

METHODS = ('rollout', 'extend', 'truth')
CRITERIA = ('color', 'shape', 'motion', 'binding', 'physics', 'permanence', 'stability')
WORLD_FPS = 16.0  # configs/world.py sample.fps: the truth's clock


@dataclasses.dataclass(frozen=True)
class LongOptions:
    """One evaluation: `num_prompts` held-out prompts, `seconds` of video each."""

    seconds: float = 60.0
    num_prompts: int = 8
    languages: tuple[str, ...] = ('en', 'es')
    num_objects: int = 2  # objects per prompt (1 or 2)
    window_seconds: float = 2.0  # window length, frames = round(window_seconds x fps) + 1
    window_frames: int | None = None  # overrides window_seconds
    edge_seconds: float = 10.0  # the first / last span compared
    bucket_seconds: float = 10.0  # rows of `table`
    steps: int | None = None  # sampling steps (None: config.sample's)
    guidance_scale: float | None = None
    seed: int = 0  # prompts draw from this seed's streams; prompt i samples with seed + 1000 i
    overlap: int | None = None  # extend: known frames per call (1 + k x temporal factor)
    rollout_window: int = 4  # rollout: past chunks attended
    sink_frames: int = 0  # rollout: first latent frames kept
    progress: bool = True


def span_frames(seconds: float, fps: float) -> int:
    """Frames that span `seconds` at `fps`, both ends included: round(seconds x fps) + 1 (a 2-s
    window at 16 fps is the world's 33-frame clip; a minute is 961 frames)."""
    return int(round(float(seconds) * float(fps))) + 1


def plan(options: LongOptions, fps: float) -> tuple[int, int]:
    """(frames per video, frames per window), or a ValueError naming the bad option."""
    if not (math.isfinite(options.seconds) and options.seconds > 0):
        raise ValueError(f'seconds={options.seconds}: pass a number of seconds > 0.')
    if options.num_prompts < 1:
        raise ValueError(f'num_prompts={options.num_prompts}: pass at least 1.')
    if options.num_objects not in (1, 2):
        raise ValueError(f'num_objects={options.num_objects}: the world holds 1 or 2 objects.')
    if options.window_frames is not None:
        window = int(options.window_frames)
    else:
        window = span_frames(options.window_seconds, fps)
    if window < 3:
        raise ValueError(f'a window of {window} frames is too short to judge; use >= 3 frames.')
    frames = span_frames(options.seconds, fps)
    if frames < window:
        raise ValueError(
            f'seconds={options.seconds} gives {frames} frames at {fps:g} fps, less than one '
            f'window of {window} frames; pass seconds >= {(window - 1) / fps:g}.'
        )
    return frames, window


def check_method(method: str, causal_chunk: int) -> None:
    """A ValueError unless `method` fits a checkpoint whose DiT has `causal_chunk` (0: full)."""
    if method not in METHODS:
        raise ValueError(f'method={method!r}; use one of {METHODS}.')
    if method == 'rollout' and causal_chunk < 1:
        raise ValueError(
            'method=rollout needs a causal checkpoint (model.causal_chunk > 0); this one has a '
            'full-attention DiT: use method=extend for it (the baseline).'
        )
    if method == 'extend' and causal_chunk > 0:
        raise ValueError(
            f'method=extend is the full-attention baseline; this checkpoint is causal '
            f'(model.causal_chunk={causal_chunk}): use method=rollout for it.'
        )


def checkpoint_clock(path: str) -> tuple[int, float]:
    """(model.causal_chunk, config.sample.fps) of a training workdir or bundle, read from its
    saved config before any weight loads."""
    from sora_jax.io import checkpoint as ckpt

    cdir = os.path.join(os.fspath(path), 'checkpoints')
    if not os.path.isdir(cdir):
        raise ValueError(
            f'{path!r} is not a checkpoint ({cdir} does not exist); pass a world DiT workdir '
            'or bundle, e.g. workdirs/world_dit_long.'
        )
    config = ckpt.load_config(cdir)
    return int(config.model.get('causal_chunk', 0) or 0), float(config.sample.get('fps', 16))


def plan_runs(
    checkpoint: str | None, method: str | None, baseline: str | None, options: LongOptions
) -> list[tuple[str | None, str]]:
    """(checkpoint, method) of each run of a comparison, checked before any weight loads:
    `checkpoint` by `method` (default: rollout if it is causal, else extend; without a
    checkpoint, the truth), then `baseline` (a full-attention checkpoint) by extend. A
    ValueError names a method that does not fit its checkpoint, or seconds under one window."""
    runs = []
    if checkpoint:
        chunk, fps = checkpoint_clock(checkpoint)
        method = method or ('rollout' if chunk else 'extend')
        if method == 'truth':
            raise ValueError('method=truth runs no model; drop the checkpoint.')
        check_method(method, chunk)
        runs.append((checkpoint, method, fps))
    elif method not in (None, 'truth'):
        raise ValueError(f'method={method} needs a checkpoint (--checkpoint=DIR).')
    else:
        runs.append((None, 'truth', WORLD_FPS))
    if baseline:
        chunk, fps = checkpoint_clock(baseline)
        if chunk:
            raise ValueError(
                f'baseline {baseline!r} is causal (model.causal_chunk={chunk}); the baseline is '
                'a full-attention checkpoint run by chained extend.'
            )
        runs.append((baseline, 'extend', fps))
    for _, _, fps in runs:
        plan(options, fps)
    return [(path, m) for path, m, _ in runs]


# ----------------------------------------------------------------------------- prompts
def prompts(
    num_prompts: int, languages: Sequence[str] = ('en', 'es'), seed: int = 0, num_objects: int = 2
) -> list[world_eval.Item]:
    """`num_prompts` held-out scenes with `num_objects` objects from the `physics` category's
    streams of `world_eval.items` (prompt i in languages[i % len]), distinct per language."""
    out, next_index = [], {}
    for i in range(num_prompts):
        li = i % len(languages)
        lang = languages[li]
        if lang not in world.LANGS:
            raise ValueError(f'Unknown language {lang!r}; use a subset of {world.LANGS}.')
        k = next_index.get(li, 0)
        for k in range(k, k + 1000):
            s = world_eval.held_out_scene('physics', li, k, seed)
            if len(s.objects) == num_objects:
                break
        else:
            raise ValueError(f'no {num_objects}-object physics scene in 1000 draws.')
        next_index[li] = k + 1
        out.append(world_eval.Item('physics', lang, world.caption(s, lang), s))
    return out


# ----------------------------------------------------------------------------- the methods
def default_overlap(clip_frames: int, temporal_factor: int, temporal_patch: int = 1) -> int:
    """Known frames per extend call: a third of the clip's token frames (latent frames / the
    DiT's temporal patch; at least one), as video frames that fill whole latents
    (1 + (k - 1) x factor). 33 frames: 9, with the world VAE coding frames alone and (3, 4, 4)
    patches (11 token frames, 3 known) as with a 4x-time VAE and (1, ...) patches."""
    latents = 1 + (clip_frames - 1) // temporal_factor
    known = max(1, latents // temporal_patch // 3) * temporal_patch
    return 1 + (known - 1) * temporal_factor


def check_overlap(overlap: int, clip_frames: int, temporal_factor: int) -> int:
    if not 1 <= overlap < clip_frames or (overlap - 1) % temporal_factor:
        raise ValueError(
            f'overlap={overlap}: extend needs 1 <= overlap < {clip_frames} (the clip) and '
            f'overlap = 1 + k x {temporal_factor} (whole latent frames), e.g. '
            f'{default_overlap(clip_frames, temporal_factor)}.'
        )
    return overlap


def extend_frames(
    pipe, prompt: str, num_frames: int, *, overlap: int | None = None, seed: int = 0, **call
) -> Iterator[np.ndarray]:
    """Exactly `num_frames` uint8 frames [T, H, W, 3] of one prompt, in pieces: a t2v clip of
    config.sample.num_frames frames, then `mode='extend'` clips, each given the last `overlap`
    frames of the previous clip and yielding its clip - overlap new frames (the last cut).
    `call`: further keyword arguments of every pipeline call (steps, guidance, ...)."""
    clip = int(pipe.config.sample.num_frames)
    tf, pt = int(pipe.temporal_factor), int(getattr(pipe, 'patch', (1,))[0])
    overlap = default_overlap(clip, tf, pt) if overlap is None else overlap
    check_overlap(overlap, clip, tf)
    call = {'progress': False, **call}
    video = pipe(prompt, num_frames=clip, seed=seed, **call)[0]  # [clip, H, W, 3]
    made, k = 0, 0
    while True:
        piece = video[: num_frames - made] if k == 0 else video[overlap:][: num_frames - made]
        made += len(piece)
        yield piece
        if made >= num_frames:
            return
        k += 1
        head = video[-overlap:]
        video = pipe(prompt, num_frames=clip, seed=seed + k, mode='extend', video=head, **call)[0]


def rollout_frames(pipe, prompt: str, num_frames: int, options) -> Iterator[np.ndarray]:
    """`pipeline/rollout.frames` for one prompt, as uint8 pieces [T, H, W, 3]."""
    from sora_jax.pipeline import rollout

    for piece in rollout.frames(pipe, prompt, num_frames, options):
        yield piece[0]


def truth_paths(scene: world.Scene, num_frames: int) -> list[np.ndarray]:
    """Each object's centre [T, 2] run on by the world's law (`world.simulate` from the clip's
    first state) for `num_frames`."""
    paths = []
    for o in scene.objects:
        lo, hi = world.walls(o.shape, o.size, scene.height, scene.width)
        paths.append(world.simulate(o.position[0], o.velocity[0], o.gravity, lo, hi, num_frames))
    return [p.position for p in paths]


def truth_contact(scene: world.Scene, paths: Sequence[np.ndarray], gap: float = 2.0) -> np.ndarray:
    """bool [T]: the two objects within touching distance (|centre difference| < the sum of
    their extents + `gap` px on both axes, the distance a world scene keeps them apart). The
    world has no collisions: touching objects overlap, and the judge sees one blob for two."""
    if len(paths) < 2:
        return np.zeros(len(paths[0]), bool)
    a, b = scene.objects
    d = np.abs(paths[0] - paths[1])  # [T, 2]
    return np.all(d < a.extent + b.extent + gap, axis=1)


def truth_frames(
    scene: world.Scene, num_frames: int, piece: int = 64, paths=None
) -> Iterator[np.ndarray]:
    """The scene's objects on their `truth_paths` for `num_frames`, drawn as `world.render`
    draws, in pieces of `piece` frames."""
    layers = []
    for o, pos in zip(scene.objects, paths or truth_paths(scene, num_frames)):
        rgb = np.broadcast_to(np.float32(world.COLORS[o.color].rgb), (num_frames, 3))
        layers.append((o, pos, rgb))
    for a in range(0, num_frames, piece):
        b = min(a + piece, num_frames)
        drawn = [
            world.Layer(o.shape, o.size, rgb[a:b], pos[a:b], np.ones(b - a, bool))
            for o, pos, rgb in layers
        ]
        yield world.draw(scene.background_rgb, drawn, scene.occluder, b - a)


# ----------------------------------------------------------------------------- judging
def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def window_record(v: world_windows.WindowVerdict, index: int, fps: float) -> dict:
    """One judged window as plain JSON: ok, the criteria, the drift figures, the problems."""
    c = v.verdict
    objs = c.objects
    return {
        'index': index,
        'start': v.start,
        'stop': v.stop,
        'seconds': v.start / fps,
        'ok': bool(v.ok),
        'color': all(o.color_ok for o in objs),
        'shape': all(o.shape_ok for o in objs),
        'motion': all(o.motion_ok for o in objs),
        'binding': bool(c.binding),
        'physics': bool(c.physics),
        'permanence': c.permanence,
        'stability': bool(c.stability),
        'seen': [list(o.seen) if o.seen else None for o in objs],
        'sharpness_ratio': _num(v.sharpness_ratio),
        'color_drift': _num(v.color_drift),
        'background_drift': _num(v.background_drift),
        'problems': list(c.problems),
        'contact': None,  # the truth: the two objects touched in the window (else unknown)
    }


def judge_windows(
    pieces: Iterator[np.ndarray], objects: Any, window: int, fps: float
) -> Iterator[dict]:
    """Consecutive windows of `window` frames of a video given in uint8 pieces [T, H, W, 3],
    judged as soon as each is complete (the first is the reference); frames past the last
    whole window are left unjudged. Yields `window_record`s."""
    buf, start, ref, index = None, 0, None, 0
    for piece in pieces:
        piece = np.asarray(piece)
        buf = piece if buf is None else np.concatenate([buf, piece], 0)
        while len(buf) >= window:
            v = world_windows.judge_window(buf[:window], objects, 0, window, ref)
            ref = v.stats if ref is None else ref
            v = dataclasses.replace(v, start=start, stop=start + window)
            yield window_record(v, index, fps)
            buf, start, index = buf[window:], start + window, index + 1


# ----------------------------------------------------------------------------- aggregates
def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def _figures(ws: list[dict]) -> dict:
    out = {'n': len(ws), 'pass_rate': _mean([float(w['ok']) for w in ws])}
    for k in ('color_drift', 'background_drift', 'sharpness_ratio'):
        out[k] = _mean([w[k] for w in ws])
    return out


def aggregate(
    per_prompt: Sequence[Sequence[dict]],
    fps: float,
    window: int,
    edge_seconds: float = 10.0,
    bucket_seconds: float = 10.0,
) -> dict:
    """Figures of the judged windows of every prompt (`per_prompt[p]`: its window records):
    per window index across prompts, per `bucket_seconds` bucket of window start times, the
    first and last k = round(edge_seconds x fps / window) windows (at most all; they overlap
    when a video has under 2k), overall, and per criterion. Rates are fractions of windows
    (None where there are none)."""
    flat = [w for ws in per_prompt for w in ws]
    n_win = max((len(ws) for ws in per_prompt), default=0)
    k = min(max(1, int(round(edge_seconds * fps / window))), n_win)
    per_window = []
    for i in range(n_win):
        ws = [p[i] for p in per_prompt if i < len(p)]
        per_window.append({'index': i, 'seconds': i * window / fps, **_figures(ws)})
    buckets: dict[int, list] = {}
    for w in flat:
        buckets.setdefault(int(w['start'] / fps // bucket_seconds), []).append(w)
    rows = [
        {'start_s': b * bucket_seconds, 'stop_s': (b + 1) * bucket_seconds, **_figures(ws)}
        for b, ws in sorted(buckets.items())
    ]
    first = [w for ws in per_prompt for w in ws[:k]]
    last = [w for ws in per_prompt for w in ws[-k:]]
    known = [w for w in flat if w.get('contact') is not None]
    crit = {c: _mean([None if w[c] is None else float(w[c]) for w in flat]) for c in CRITERIA}
    return {
        'windows_per_prompt': n_win,
        'edge_windows': k,
        'per_window': per_window,
        'buckets': rows,
        'first': _figures(first),
        'last': _figures(last),
        'overall': _figures(flat),
        'criteria': crit,
        # the truth only: windows where the objects never touch / touch somewhere
        'apart': _figures([w for w in known if not w['contact']]) if known else None,
        'touching': _figures([w for w in known if w['contact']]) if known else None,
    }


@dataclasses.dataclass
class LongResult:
    """An evaluation's settings, its judged windows per prompt and their aggregates; plain JSON
    (`to_json` / `from_json`)."""

    method: str
    checkpoint: str | None
    fps: float
    window: int  # frames per window
    num_frames: int  # frames per video
    settings: dict
    prompts: list  # per prompt: {'prompt', 'lang', 'objects', 'windows': [window_record], ...}
    summary: dict  # `aggregate`

    @property
    def label(self) -> str:
        name = os.path.basename(os.path.normpath(self.checkpoint)) if self.checkpoint else ''
        return f'{self.method} ({name})' if name else self.method

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> 'LongResult':
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


def evaluate_long(
    pipe, method: str, options: LongOptions = LongOptions(), checkpoint: str | None = None
) -> LongResult:
    """Generates `options.seconds` of each of `options.num_prompts` held-out prompts with `pipe`
    (a TextToVideo; None for method='truth') by `method` and judges them window by window."""
    if method == 'truth':
        if pipe is not None:
            raise ValueError('method=truth runs no model; pass pipe=None.')
        fps = WORLD_FPS
    else:
        from flax import nnx

        from sora_jax.pipeline import rollout

        check_method(method, int(nnx.merge(pipe.graphdef, pipe.params).cfg.causal_chunk))
        fps = float(pipe.config.sample.get('fps', 16))
    num_frames, window = plan(options, fps)
    jobs = prompts(options.num_prompts, options.languages, options.seed, options.num_objects)
    if method == 'extend':  # before anything compiles
        clip = int(pipe.config.sample.num_frames)
        tf, pt = int(pipe.temporal_factor), int(pipe.patch[0])
        overlap = options.overlap if options.overlap is not None else default_overlap(clip, tf, pt)
        check_overlap(overlap, clip, tf)
    records = []
    bar = tqdm(jobs, desc=f'{method} prompts', unit='prompt', disable=not options.progress)
    for i, it in enumerate(bar):
        seed = options.seed + 1000 * i
        touch = None
        if method == 'truth':
            paths = truth_paths(it.scene, num_frames)
            touch = truth_contact(it.scene, paths)
            pieces = truth_frames(it.scene, num_frames, paths=paths)
        elif method == 'extend':
            pieces = extend_frames(
                pipe, it.prompt, num_frames, overlap=overlap, seed=seed,
                num_inference_steps=options.steps, guidance_scale=options.guidance_scale,
            )  # fmt: skip
        else:
            ro = rollout.options_for(
                pipe, window=options.rollout_window, sink_frames=options.sink_frames,
                num_inference_steps=options.steps, guidance_scale=options.guidance_scale,
                seed=seed, progress=False,
            )  # fmt: skip
            pieces = rollout_frames(pipe, it.prompt, num_frames, ro)
        objects = world_judge.prompt_objects(it.scene)
        t0 = time.perf_counter()
        windows = list(judge_windows(pieces, objects, window, fps))
        if touch is not None:
            for w in windows:
                w['contact'] = bool(touch[w['start'] : w['stop']].any())
        records.append({
            'prompt': it.prompt, 'lang': it.lang, 'objects': [list(o) for o in objects],
            'windows': windows, 'seconds_taken': time.perf_counter() - t0,
        })  # fmt: skip
        logging.info(
            '%s %d/%d: %d of %d windows passed (%.0f s)', method, i + 1, len(jobs),
            sum(w['ok'] for w in windows), len(windows), records[-1]['seconds_taken'],
        )  # fmt: skip
    summary = aggregate(
        [r['windows'] for r in records], fps, window, options.edge_seconds, options.bucket_seconds
    )
    settings = {k: v for k, v in dataclasses.asdict(options).items() if k != 'progress'}
    settings['languages'] = list(options.languages)  # as JSON gives it back
    if method == 'extend':
        settings['overlap'] = overlap
    return LongResult(method, checkpoint, fps, window, num_frames, settings, records, summary)
