"""One small GIF per capability (the README's gallery, docs/gifs/) from a shapes TextToVideo.

  records = render_all(pipe, 'docs/gifs', steps=25)   # CLI: experiments/capabilities.py

Each GIF shows the conditioning input (if any) on the left and the generated clip on the right,
upscaled `display_scale` times (nearest). Inputs for image/video prompting are real clips of
the shapes generator (held-out validation stream), so the known frames are ground truth. Writes
`<out>/<capability>.gif` and `<out>/capabilities.json` (prompt, mode, size, seconds, and the
judge's verdict on the generated clip where the prompt names one shape).
"""

import json
import os
import time

# name -> (mode, prompt (None: the caption of the reference clip), size, extra call arguments);
# size None is the config's default clip, 'wide' / 'tall' make one side 1.5x longer.
CAPABILITIES = {
    't2v': ('t2v', 'a red circle moving to the right', None, {}),
    't2v_es': ('t2v', 'una estrella amarilla moviéndose hacia arriba', None, {}),
    't2i': ('t2i', 'a green square standing still', None, {}),
    'widescreen': ('t2v', 'a white triangle moving to the left', 'wide', {}),
    'vertical': ('t2v', 'an orange circle moving down', 'tall', {}),
    'i2v': ('i2v', None, None, {}),
    'extend': ('extend', None, None, {}),
    'extend_backward': ('extend_backward', None, None, {}),
    'connect': ('connect', None, None, {}),
    'loop': ('loop', None, None, {}),
    'v2v': ('v2v', None, None, {'strength': 0.8}),
}


def reference_clip(config, num_frames, height, width, index=0, **attrs):
    """A real one-shape clip from the generator's validation stream, optionally forcing
    attributes (e.g. color='blue'); returns (uint8 [T, H, W, 3], attribute dict)."""
    from sora_jax.data import shapes

    vocab = {'shape': shapes.SHAPES, 'color': shapes.COLORS, 'motion': shapes.MOTIONS}
    for k, v in attrs.items():
        if k not in vocab or v not in vocab[k]:
            raise ValueError(
                f'reference_clip: unknown {k}={v!r}; use shape, color or motion '
                'values of the shapes vocabulary.'
            )
    d = config.get('data', {})
    kw = dict(
        backgrounds=tuple(d.get('backgrounds', shapes.BACKGROUNDS)),
        size_scale=float(d.get('size_scale', 1.0)),
    )
    for i in range(index, index + 10000):
        scene = shapes.sample_scene(
            2 * int(config.get('seed', 0)) + 1,
            i,
            num_frames=num_frames,
            height=height,
            width=width,
            max_objects=1,
            **kw,
        )
        obj = scene.objects[0]
        if all(obj[k] == v for k, v in attrs.items()):
            return shapes.render(scene), {k: obj[k] for k in ('shape', 'color', 'motion')}
    raise ValueError(f'no validation clip with {attrs} in 10,000 draws.')


def render_all(pipe, out_dir, *, steps=25, seed=0, display_scale=3, only=()):
    """Renders the capability GIFs; returns the records written to capabilities.json."""
    import numpy as np

    from sora_jax.data import shapes
    from sora_jax.evaluation import shapes_judge
    from sora_jax.io import video as video_io

    s = pipe.config.sample
    T, H, W = int(s.num_frames), int(s.height), int(s.width)
    tf = max(pipe.temporal_factor, 1)
    os.makedirs(out_dir, exist_ok=True)
    records = []
    for name, (mode, prompt, size, extra) in CAPABILITIES.items():
        if only and name not in only:
            continue
        t, h, w = T, H, W
        if size is not None:
            q = pipe.spatial_factor * pipe.patch[1]  # sizes must stay divisible by this
            longer = lambda n: max(q, int(round(1.5 * n / q)) * q)  # noqa: E731
            h, w = (h, longer(w)) if size == 'wide' else (longer(h), w)
        kw, inputs, attrs = dict(extra), [], None
        if mode in ('i2v', 'loop', 'extend', 'extend_backward', 'v2v', 'connect'):
            motion = 'resting' if mode == 'loop' else 'moving_right'
            clip, attrs = reference_clip(pipe.config, t, h, w, motion=motion)
            half = (t // 2 // tf) * tf + (1 if tf > 1 else 0)  # a whole number of latent frames
            if mode in ('i2v', 'loop'):
                kw['image'] = clip[0]
                inputs = [np.repeat(clip[:1], t, 0)]
            elif mode == 'extend':
                kw['video'] = clip[:half]
                inputs = [np.concatenate([clip[:half], np.zeros_like(clip[half:])])]
            elif mode == 'extend_backward':
                kw['video'] = clip[t - half :]
                inputs = [np.concatenate([np.zeros_like(clip[half:]), clip[t - half :]])]
            elif mode == 'connect':
                k = max(tf, (t // 4 // tf) * tf) + (1 if tf > 1 else 0)
                kw['video'] = (clip[:k], clip[t - k :])
                gap = np.zeros_like(clip[k : t - k])
                inputs = [np.concatenate([clip[:k], gap, clip[t - k :]])]
            else:  # v2v: recolour the clip
                kw['video'] = clip
                inputs = [clip]
                attrs = dict(attrs, color='blue' if attrs['color'] != 'blue' else 'yellow')
            prompt = shapes.caption(attrs, 'en')
        t0 = time.perf_counter()
        video = pipe(
            prompt,
            num_frames=t,
            height=h,
            width=w,
            num_inference_steps=steps,
            seed=seed,
            mode=mode,
            progress=False,
            **kw,
        )[0]
        secs = time.perf_counter() - t0
        rec = {
            'name': name,
            'mode': mode,
            'prompt': prompt,
            'size': [int(x) for x in video.shape[:3]],
            'seconds': round(secs, 2),
        }
        if mode != 't2i' and video.shape[0] > 1:
            a = attrs or _attrs_of(prompt)
            verdict = shapes_judge.judge_clip(video, a)
            rec['judge'] = {k: bool(verdict[k]) for k in ('shape', 'color', 'motion')}
        panels = [np.asarray(v[: video.shape[0]]) for v in inputs] + [video]
        sep = np.full((video.shape[0], video.shape[1], 2, 3), 255, np.uint8)
        grid = np.concatenate(sum(([p, sep] for p in panels), [])[:-1], axis=2)
        grid = grid.repeat(display_scale, 1).repeat(display_scale, 2)
        rec['gif'] = os.fspath(
            video_io.write_video(
                os.path.join(out_dir, f'{name}.gif'), grid, fps=float(s.get('fps', 8))
            )
        )
        records.append(rec)
        print(f'{name:16s} {secs:5.1f}s  {prompt!r}  {rec.get("judge", "")}', flush=True)
    with open(os.path.join(out_dir, 'capabilities.json'), 'w') as f:
        json.dump(records, f, indent=1, ensure_ascii=False)
    return records


def _attrs_of(prompt: str) -> dict:
    """(shape, colour, motion) named by a one-shape caption in either language."""
    import itertools

    from sora_jax.data import shapes

    for combo in itertools.product(shapes.SHAPES, shapes.COLORS, shapes.MOTIONS):
        a = dict(zip(('shape', 'color', 'motion'), combo))
        if prompt in (shapes.caption(a, 'en'), shapes.caption(a, 'es')):
            return a
    raise ValueError(f'{prompt!r} is not a one-shape caption of the shapes vocabulary.')
