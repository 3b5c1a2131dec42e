"""Prompt-following evaluation on the physics world: held-out prompts in English and Spanish,
N per category and language, judged from pixels by `world_judge`; a table per category, the
issue's targets, and confusion tables (prompted -> seen) per attribute.

  summary = evaluate_world(pipe, num_per_category=64)                 # a TextToVideo
  summary = evaluate_world(ground_truth_model, num_per_category=64)   # the judge on the truth
  print(report(summary))

`model`: a TextToVideo (called as `pipe(prompts, num_frames=, height=, width=,
num_inference_steps=, guidance_scale=, seed=, progress=)`) or any callable
`(prompts: list[str], scenes: list[world.Scene]) -> uint8 [B, T, H, W, 3]`; a model sees only
the prompts, the scenes are there for `ground_truth_model`, which returns the generator's own
clips (the pipeline's end-to-end check and the judge's ceiling). Prompts are the captions of
held-out scenes (`world.sample_scene(..., subset='held_out')`: a held-out attribute pair or
two-object combination of `world.HOLDOUT` in every one) of four categories:

  one_object    one object, no bar        two_objects   two objects, no bar
  occluded      one or two, behind a bar  physics       bouncing or falling objects, no bar

Figures (fractions): colour / shape / motion per prompted object; binding per clip (every
attribute on the right object, no extra object); permanence per hidden passage; physics per
bouncing or falling object (its motion seen and its law kept); stability per clip; all per clip.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from typing import Any, Callable, Sequence

import numpy as np
from absl import logging

from sora_jax.data import world
from sora_jax.evaluation import world_judge

CATEGORIES = {
    'one_object': dict(num_objects=(1,), occluder_prob=0.0),
    'two_objects': dict(num_objects=(2,), occluder_prob=0.0),
    'occluded': dict(occluder_prob=1.0),
    'physics': dict(motions=('bouncing', 'falling'), occluder_prob=0.0),
}
# The targets: (figure, category or 'all', at least)
TARGETS = (
    ('color', 'one_object', 0.95),
    ('shape', 'one_object', 0.95),
    ('motion', 'one_object', 0.95),
    ('binding', 'two_objects', 0.80),
    ('permanence', 'all', 0.90),
    ('physics', 'all', 0.85),
    ('stability', 'all', 0.95),
)


@dataclasses.dataclass(frozen=True)
class Item:
    category: str
    lang: str
    prompt: str
    scene: world.Scene


def held_out_scene(category: str, lang_index: int, index: int, seed: int = 0) -> world.Scene:
    """Scene `index` of the held-out stream of `category` for the `lang_index`-th language of an
    evaluation (what `items` draws; `world_long` walks the same streams)."""
    c = list(CATEGORIES).index(category)
    return world.sample_scene(
        seed * 1000 + 10 * c + lang_index, index, subset='held_out', **CATEGORIES[category]
    )


def items(num_per_category: int, languages: Sequence[str] = ('en', 'es'), seed: int = 0):
    """`num_per_category` held-out scenes per category and language (distinct scenes)."""
    out = []
    for name in CATEGORIES:
        for li, lang in enumerate(languages):
            if lang not in world.LANGS:
                raise ValueError(f'Unknown language {lang!r}; use a subset of {world.LANGS}.')
            for i in range(num_per_category):
                s = held_out_scene(name, li, i, seed)
                out.append(Item(name, lang, world.caption(s, lang), s))
    return out


def ground_truth_model(prompts: list[str], scenes: list[world.Scene]) -> np.ndarray:
    """The generator's own clips: uint8 [B, T, H, W, 3]."""
    del prompts
    return np.stack([world.render(s) for s in scenes])


def vae_round_trip_model(vae) -> Callable:
    """The generator's clips encoded and decoded by `vae` (a `frozen_vae.FrozenVAE`): what the
    judge sees of the truth after the autoencoder, the ceiling of a DiT on its latents."""
    from sora_jax.evaluation import reconstruction

    def fn(prompts: list[str], scenes: list[world.Scene]) -> np.ndarray:
        recon, _ = reconstruction.reconstruct_video(vae, ground_truth_model(prompts, scenes))
        return recon

    return fn


def _as_fn(model, steps, guidance_scale, seed) -> Callable:
    if not hasattr(model, 'from_checkpoint'):  # a plain callable
        return model

    def fn(prompts, scenes, batch):
        s = scenes[0]
        return model(
            prompts,
            num_frames=s.num_frames,
            height=s.height,
            width=s.width,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            seed=seed + batch,
            progress=False,
        )

    return fn


def _record(item: Item, v: world_judge.ClipVerdict) -> dict:
    return {
        'category': item.category,
        'lang': item.lang,
        'prompt': item.prompt,
        'objects': [
            {
                'want': list(o.want),
                'seen': list(o.seen) if o.seen else None,
                'color': o.color_ok,
                'shape': o.shape_ok,
                'motion': o.motion_ok,
                'physics': o.physics_ok,
            }
            for o in v.objects
        ],
        'binding': v.binding,
        'passages': v.passages,
        'passages_failed': v.passages_failed,
        'stability': v.stability,
        'all': v.all,
        'flicker': v.flicker,
        'problems': list(v.problems),
    }


def evaluate_world(
    model: Any,
    num_per_category: int = 64,
    languages: Sequence[str] = ('en', 'es'),
    *,
    steps: int = 25,
    guidance_scale: float | None = None,
    batch_size: int = 32,
    seed: int = 0,
    examples: dict | None = None,
    examples_per_category: int = 1,
) -> dict:
    """Generates the held-out prompts with `model`, judges every clip; summary + records.

    `examples`: a dict filled with {'right': [...], 'wrong': [...]}, each entry (record, uint8
    video [T, H, W, 3]): the first `examples_per_category` passed and failed clips of each
    category, for `write_strips`."""
    jobs = items(num_per_category, languages, seed)
    if examples is not None:
        examples.setdefault('right', [])
        examples.setdefault('wrong', [])
    fn = _as_fn(model, steps, guidance_scale, seed)
    records, t_gen, t_judge = [], 0.0, 0.0
    for b, start in enumerate(range(0, len(jobs), batch_size)):
        chunk = jobs[start : start + batch_size]
        t0 = time.perf_counter()
        if fn is model:
            videos = fn([it.prompt for it in chunk], [it.scene for it in chunk])
        else:
            videos = fn([it.prompt for it in chunk], [it.scene for it in chunk], b)
        t1 = time.perf_counter()
        for it, video in zip(chunk, videos):
            records.append(_record(it, world_judge.judge_clip(np.asarray(video), it.scene)))
            if examples is not None:
                kept = examples['right' if records[-1]['all'] else 'wrong']
                if sum(r['category'] == it.category for r, _ in kept) < examples_per_category:
                    kept.append((records[-1], np.asarray(video)))
        t_gen += t1 - t0
        t_judge += time.perf_counter() - t1
        logging.info('batch %d: %d/%d clips judged', b, len(records), len(jobs))
    summary = summarize(records)
    summary['timing'] = {
        'generate_s_per_clip': t_gen / max(len(records), 1),
        'judge_ms_per_clip': 1e3 * t_judge / max(len(records), 1),
    }
    summary['records'] = records
    return summary


def _figures(rs: list[dict]) -> dict:
    objs = [o for r in rs for o in r['objects']]
    moving = [o for o in objs if o['want'][2] in ('bouncing', 'falling')]
    passages = sum(r['passages'] for r in rs)
    out = {'n': len(rs)}
    for k in ('color', 'shape', 'motion'):
        out[k] = float(np.mean([o[k] for o in objs])) if objs else None
    out['binding'] = float(np.mean([r['binding'] for r in rs]))
    out['permanence'] = 1.0 - sum(r['passages_failed'] for r in rs) / passages if passages else None
    out['passages'] = passages
    out['physics'] = (
        float(np.mean([o['motion'] and o['physics'] for o in moving])) if moving else None
    )
    out['stability'] = float(np.mean([r['stability'] for r in rs]))
    out['all'] = float(np.mean([r['all'] for r in rs]))
    return out


def summarize(records: list[dict]) -> dict:
    """Figures per category x language (and 'all'), targets, confusion tables."""
    groups = {}
    cats = list(dict.fromkeys(r['category'] for r in records))
    langs = list(dict.fromkeys(r['lang'] for r in records))
    for cat in cats + ['all']:
        for lang in langs + ['all']:
            rs = [
                r for r in records if cat in ('all', r['category']) and lang in ('all', r['lang'])
            ]
            if rs:
                groups[f'{cat}/{lang}'] = _figures(rs)
    targets = []
    for key, cat, least in TARGETS:
        value = groups.get(f'{cat}/all', {}).get(key)
        targets.append(
            {'figure': key, 'category': cat, 'target': least, 'value': value,
             'met': value is not None and value >= least}
        )  # fmt: skip
    confusion = {}
    for i, key in enumerate(('shape', 'color', 'motion')):
        table = collections.defaultdict(collections.Counter)
        for r in records:
            for o in r['objects']:
                table[o['want'][i]][o['seen'][i] if o['seen'] else 'none'] += 1
        confusion[key] = {w: dict(c) for w, c in sorted(table.items())}
    return {'groups': groups, 'targets': targets, 'confusion': confusion}


def report(summary: dict) -> str:
    """The tables as text."""
    cols = ('n', 'color', 'shape', 'motion', 'binding', 'permanence', 'physics', 'stability', 'all')
    fmt = lambda v: '   -' if v is None else (f'{v:4d}' if isinstance(v, int) else f'{v:.2f}')
    lines = ['group                 ' + ' '.join(f'{c:>10}' for c in cols)]
    for name, g in summary['groups'].items():
        lines.append(f'{name:<22}' + ' '.join(f'{fmt(g[c]):>10}' for c in cols))
    lines.append('')
    lines.append('targets (held-out prompts, en + es):')
    for t in summary['targets']:
        v = '-' if t['value'] is None else f'{t["value"]:.2f}'
        mark = 'met' if t['met'] else 'NOT met'
        lines.append(f'  {t["figure"]:<11} {t["category"]:<12} >= {t["target"]:.2f}: {v} {mark}')
    for key, table in summary['confusion'].items():
        seen = sorted({s for c in table.values() for s in c})
        lines.append('')
        lines.append(f'{key} confusion (rows: prompted, columns: seen)')
        lines.append(' ' * 14 + ' '.join(f'{s[:10]:>10}' for s in seen))
        for want, counts in table.items():
            lines.append(f'{want:<14}' + ' '.join(f'{counts.get(s, 0):>10}' for s in seen))
    return '\n'.join(lines)


def _write_strip(path: str, clips: list[tuple[np.ndarray, bool]], scale: int, fps: int) -> None:
    """Clips uint8 [T, H, W, 3] side by side in one GIF, each framed green (the judge passed
    it) or red (it failed); shorter clips hold their last frame."""
    from PIL import Image

    t = max(len(v) for v, _ in clips)
    framed = []
    for video, ok in clips:
        video = np.concatenate([video, np.repeat(video[-1:], t - len(video), 0)])
        f = np.pad(video, ((0, 0), (2, 2), (2, 2), (0, 0)))
        f[:, :, :2] = f[:, :, -2:] = f[:, :2] = f[:, -2:] = (40, 200, 60) if ok else (220, 40, 40)
        framed.append(f)
    frames = np.concatenate(framed, axis=2).repeat(scale, 1).repeat(scale, 2)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(
        path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0,
        optimize=True,
    )  # fmt: skip


def write_strips(
    examples: dict, out_dir: str, prefix: str = 'world_model', scale: int = 2, fps: int = 16
) -> list[dict]:
    """`evaluate_world(..., examples=)`'s clips as two judged GIF strips in `out_dir`:
    `{prefix}_right.gif` (passed) and `{prefix}_wrong.gif` (failed), left to right in the order
    judged; returns one {strip, panel, category, prompt, all, problems} per panel."""
    import os

    os.makedirs(out_dir, exist_ok=True)
    rows = []
    for kind in ('right', 'wrong'):
        kept = examples.get(kind, [])
        if not kept:
            continue
        strip = f'{prefix}_{kind}'
        _write_strip(
            os.path.join(out_dir, f'{strip}.gif'), [(v, r['all']) for r, v in kept], scale, fps
        )
        for i, (r, _) in enumerate(kept):
            rows.append(
                {'strip': strip, 'panel': i, 'category': r['category'], 'prompt': r['prompt'],
                 'all': r['all'], 'problems': r['problems']}
            )  # fmt: skip
    return rows


def write_examples(out_dir: str, seed: int = 0, scale: int = 2, fps: int = 16) -> list[dict]:
    """Two judged GIF strips into `out_dir`: world_right.gif (a ground-truth clip of each
    category, each judged) and world_wrong.gif (a clip with each of `world.CORRUPTIONS`, each
    judged); returns one {strip, panel, prompt, all, problems} per panel (left to right)."""
    import os

    panels, rows = {'world_right': [], 'world_wrong': []}, []
    for c, (name, kw) in enumerate(CATEGORIES.items()):
        for i in range(50):  # the occluded example shows an object passing fully behind the bar
            s = world.sample_scene(seed * 1000 + 500 + c, i, subset='held_out', **kw)
            if name != 'occluded' or min(o.visibility.min() for o in s.objects) == 0:
                break
        panels['world_right'].append((name, s, world.render(s)))
    for k, kind in enumerate(world.CORRUPTIONS):
        kw = {'color_swap': dict(num_objects=(2,)), 'half_bounce': dict(motions=('bouncing',))}
        for i in range(50):
            s = world.sample_scene(seed * 1000 + 600 + k, i, occluder_prob=0.0, **kw.get(kind, {}))
            bad = world.corrupt(s, kind, seed=i)
            if bad is not None:
                panels['world_wrong'].append((kind, s, bad))
                break
    os.makedirs(out_dir, exist_ok=True)
    for strip, items_ in panels.items():
        clips = []
        for label, s, video in items_:
            v = world_judge.judge_clip(video, s)
            rows.append(
                {'strip': strip, 'panel': label, 'prompt': world.caption(s, 'en'),
                 'all': v.all, 'problems': list(v.problems)}
            )  # fmt: skip
            clips.append((video, v.all))
        _write_strip(os.path.join(out_dir, f'{strip}.gif'), clips, scale, fps)
    return rows


def judge_check(num_per_category: int = 50, num_corrupted: int = 40, seed: int = 100) -> dict:
    """The judge against the truth (what tests/evaluation/test_world_judge.py asserts):
    {'agreement': {category: fraction of ground-truth clips passed, 'all': ...},
     'flagged': {corruption: fraction of corrupted clips failed}, 'clips_per_s': judge speed}."""
    agree, n_judged, t0 = {}, 0, time.perf_counter()
    for k, (name, kw) in enumerate(CATEGORIES.items()):
        scenes = [world.sample_scene(seed + k, i, **kw) for i in range(num_per_category)]
        agree[name] = float(
            np.mean([world_judge.judge_clip(world.render(s), s).all for s in scenes])
        )
        n_judged += len(scenes)
    agree['all'] = float(np.mean([agree[c] for c in CATEGORIES]))
    flagged = {}
    for kind in world.CORRUPTIONS:
        kw = {
            'color_swap': dict(num_objects=(2,)),
            'half_bounce': dict(motions=('bouncing', 'falling')),
        }.get(kind, {})
        hits, n, i = 0, 0, 0
        while n < num_corrupted:
            s = world.sample_scene(seed + 100, i, **kw)
            i += 1
            bad = world.corrupt(s, kind, seed=i)
            if bad is not None:
                n += 1
                hits += not world_judge.judge_clip(bad, s).all
        flagged[kind] = hits / n
        n_judged += n
    return {
        'agreement': agree,
        'flagged': flagged,
        'clips_per_s': n_judged / (time.perf_counter() - t0),
    }
