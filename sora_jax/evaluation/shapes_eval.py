"""Prompt-following evaluation of a shapes model, and of the judge itself.

  summary = evaluate_shapes(pipe, num_per_combo=1, holdout=default_holdout())  # the model
  summary = evaluate_ground_truth(num_clips=500, blur=1, noise=8)             # the judge
  print(report(summary))

`evaluate_shapes` samples N prompts per (shape, colour, motion) in each language with a
TextToVideo and judges them from pixels (`shapes_judge`); `evaluate_ground_truth` judges real
one-shape dataset clips (optionally blurred and noised, or round-tripped through a VAE: what a
latent model can reach at best). Both return the summary `report` prints: accuracy per attribute
per language, seen vs held-out combinations, background flicker, plus the per-clip records.
One-shape prompts are built with `shapes.caption`. CLI: experiments/evaluate.py.
"""

import itertools
import time

from absl import logging


def default_holdout() -> tuple:
    """configs/shapes.py's HOLDOUT: the (colour, shape) pairs its models never see in training."""
    from sora_jax import config_files

    return tuple(tuple(c) for c in config_files.load_module('configs/shapes.py').HOLDOUT)


ATTRS = ('shape', 'color', 'motion', 'all')


def combinations(holdout, holdout_only: bool = False, colors=None) -> list[dict]:
    """Every (shape, colour, motion) as attribute dicts with a `held_out` flag (`colors`: only
    these colours)."""
    from sora_jax.data import shapes

    out = []
    for shape, color, motion in itertools.product(
        shapes.SHAPES, colors or shapes.COLORS, shapes.MOTIONS
    ):
        a = {'shape': shape, 'color': color, 'motion': motion}
        a['held_out'] = shapes.is_held_out(a, holdout)
        if a['held_out'] or not holdout_only:
            out.append(a)
    return out


def _record(verdict: dict, attrs: dict, **extra) -> dict:
    m = verdict['measured'] or {}
    return {
        **extra,
        **{k: attrs[k] for k in ('shape', 'color', 'motion')},
        **{f'{k}_ok': bool(verdict[k]) for k in ATTRS},
        'seen': {k: m.get(k) for k in ('shape', 'color', 'motion')},
        'num_objects': verdict['num_objects'],
        'flicker': verdict['flicker'],
    }


def summarize(records: list[dict]) -> dict:
    """Accuracy per attribute (and all three) + mean flicker, per language, seen vs held-out."""
    import numpy as np

    def group(rs):
        if not rs:
            return None
        out = {'n': len(rs), **{k: float(np.mean([r[f'{k}_ok'] for r in rs])) for k in ATTRS}}
        out['flicker'] = float(np.mean([r['flicker'] for r in rs]))
        out['one_object'] = float(np.mean([r['num_objects'] == 1 for r in rs]))
        return out

    langs = sorted({r['lang'] for r in records})
    groups = {}
    for lang in langs + (['all'] if len(langs) > 1 else []):
        rs = [r for r in records if lang in ('all', r['lang'])]
        for split, keep in (
            ('', lambda r: True),
            ('/seen', lambda r: not r['held_out']),
            ('/held_out', lambda r: r['held_out']),
        ):
            g = group([r for r in rs if keep(r)])
            if g is not None:
                groups[lang + split] = g
    by_value = {}
    for key in ('shape', 'color', 'motion'):
        for value in sorted({r[key] for r in records}):
            rs = [r for r in records if r[key] == value]
            by_value[f'{key}={value}'] = float(np.mean([r[f'{key}_ok'] for r in rs]))
    seen_color = {}  # prompt colour -> {colour the judge saw: fraction of its clips}
    for value in sorted({r['color'] for r in records}):
        seen = [str(r['seen']['color']) for r in records if r['color'] == value]
        seen_color[value] = {c: seen.count(c) / len(seen) for c in sorted(set(seen))}
    return {'groups': groups, 'by_value': by_value, 'seen_color': seen_color}


def table(summary: dict) -> str:
    head = (
        f'{"group":<16}{"n":>6}' + ''.join(f'{k:>9}' for k in ATTRS) + f'{"1 obj":>8}{"flicker":>9}'
    )
    lines = [head, '-' * len(head)]
    for name, g in summary['groups'].items():
        lines.append(
            f'{name:<16}{g["n"]:>6}'
            + ''.join(f'{g[k]:>9.3f}' for k in ATTRS)
            + f'{g["one_object"]:>8.3f}{g["flicker"]:>9.2f}'
        )
    return '\n'.join(lines)


def evaluate_shapes(
    pipe,
    *,
    num_per_combo=1,
    languages=('en', 'es'),
    holdout=(),
    holdout_only=False,
    steps=25,
    guidance_scale=None,
    num_frames=None,
    height=None,
    width=None,
    batch_size=32,
    seed=0,
    progress=True,
    colors=None,
) -> dict:
    """Samples one-shape prompts with `pipe` (a TextToVideo), judges them; summary + records."""
    from sora_jax.data import shapes
    from sora_jax.evaluation import shapes_judge

    for lang in languages:
        if lang not in shapes.LANGS:
            raise ValueError(f'Unknown language {lang!r}; use a subset of {shapes.LANGS}.')
    bad = sorted(set(colors or ()) - set(shapes.COLORS))
    if bad:
        raise ValueError(f'--colors: unknown {bad}; use a subset of {sorted(shapes.COLORS)}.')
    jobs = [
        (a, lang, rep)
        for rep in range(num_per_combo)
        for a in combinations(holdout, holdout_only, colors)
        for lang in languages
    ]
    records, t_sample, t_judge = [], 0.0, 0.0
    for b, start in enumerate(range(0, len(jobs), batch_size)):
        chunk = jobs[start : start + batch_size]
        prompts = [shapes.caption(a, lang) for a, lang, _ in chunk]
        t0 = time.perf_counter()
        videos = pipe(
            prompts,
            num_frames=num_frames,
            height=height,
            width=width,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            seed=seed + b,
            progress=progress,
        )
        t1 = time.perf_counter()
        for (a, lang, rep), prompt, video in zip(chunk, prompts, videos):
            verdict = shapes_judge.judge_clip(video, a)
            records.append(
                _record(verdict, a, lang=lang, held_out=a['held_out'], prompt=prompt, repeat=rep)
            )
        t_sample += t1 - t0
        t_judge += time.perf_counter() - t1
        logging.info('batch %d: %d/%d clips judged', b, len(records), len(jobs))
    summary = summarize(records)
    summary['timing'] = {
        'sample_s_per_clip': t_sample / max(len(records), 1),
        'judge_ms_per_clip': 1e3 * t_judge / max(len(records), 1),
    }
    summary['records'] = records
    return summary


def evaluate_ground_truth(
    *,
    num_clips=500,
    num_frames=17,
    height=32,
    width=32,
    seed=0,
    blur=0.0,
    noise=0.0,
    backgrounds=None,
    size_scale=1.0,
    vae=None,
    holdout=None,
) -> dict:
    """Judges real one-shape dataset clips against their own attributes: the judge's accuracy.
    `vae` (a FrozenVAE): judge each clip's round trip through it instead (adds 'psnr').
    `holdout`: the (colour, shape) pairs marked held out (default: configs/shapes.py:HOLDOUT)."""
    import numpy as np

    from sora_jax.data import shapes
    from sora_jax.evaluation import reconstruction, shapes_judge

    if holdout is None:
        holdout = default_holdout()

    records, t_judge, psnrs = [], 0.0, []
    examples = [
        shapes.generate(
            seed,
            i,
            num_frames=num_frames,
            height=height,
            width=width,
            max_objects=1,
            backgrounds=backgrounds or shapes.BACKGROUNDS,
            size_scale=size_scale,
        )
        for i in range(num_clips)
    ]
    videos = [ex['video'] for ex in examples]
    if vae is not None:
        recon, m = reconstruction.reconstruct_video(vae, np.stack(videos))
        videos, psnrs = list(recon), m['psnr_per_clip']
    for i, (ex, video) in enumerate(zip(examples, videos)):
        if blur > 0 or noise > 0:
            video = shapes_judge.degrade(video, blur, noise, seed=i)
        obj = ex['scene'].objects[0]
        t0 = time.perf_counter()
        verdict = shapes_judge.judge_clip(video, obj)
        t_judge += time.perf_counter() - t0
        records.append(
            _record(
                verdict,
                obj,
                lang='gt',
                index=i,
                held_out=shapes.is_held_out(obj, holdout),
            )
        )
    summary = summarize(records)
    summary['timing'] = {'judge_ms_per_clip': 1e3 * t_judge / max(num_clips, 1)}
    if psnrs:
        summary['psnr'] = float(np.mean(psnrs))
    summary['records'] = records
    return summary


def checkpoint_vae(checkpoint):
    """The VAE a DiT checkpoint samples through (a bundle's vae/, a workdir's autoencoder), or the
    checkpoint itself when it is a VAE run."""
    from sora_jax.io import checkpoint as ckpt
    from sora_jax.pipeline import load_vae

    if not checkpoint:
        raise ValueError(
            '--autoencoder needs --checkpoint=DIR (a DiT run or bundle with a VAE, or a VAE run).'
        )
    config = ckpt.load_config(ckpt.checkpoint_dir(checkpoint))
    if config.get('objective') == 'vae':
        from sora_jax.models import frozen_vae

        return frozen_vae.load(checkpoint)
    vae = load_vae(config.get('autoencoder', 'none'), relative_to=checkpoint)
    if vae is None:
        raise ValueError(
            f'{checkpoint!r} is a pixel-space model (autoencoder=none); there is no '
            'VAE to round-trip through.'
        )
    return vae


def report(summary: dict) -> str:
    """The printed summary: the table, accuracy by value, what the judge saw per prompt colour,
    the VAE round trip PSNR (when measured) and the timing."""
    lines = [table(summary)]
    lines.append('by value: ' + ', '.join(f'{k} {v:.2f}' for k, v in summary['by_value'].items()))
    for asked, seen in summary.get('seen_color', {}).items():
        lines.append(
            f'prompt colour {asked}: judged ' + ', '.join(f'{c} {v:.2f}' for c, v in seen.items())
        )
    if 'psnr' in summary:
        lines.append(f'VAE round trip PSNR {summary["psnr"]:.2f} dB')
    lines.append(f'timing: {summary["timing"]}')
    return '\n'.join(lines)
