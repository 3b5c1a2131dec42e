"""Videos sampled from fixed prompts at each evaluation, and for shapes data the judge's scores.

  previews = Previews(config)                 # None-like (previews.enabled False) when off
  videos, prompts, scores = previews(ema_params)
  # videos: {'samples/00': uint8 [T, H, W, 3], ...}, prompts: {'samples/00': 'a red ...'},
  # scores: {'judge/color': 0.5, 'judge/shape': ..., 'judge/motion': ..., 'judge/all': ...}

Prompts: `train.eval_prompts` when given; else, for shapes data, `train.eval_num_videos` one-shape
captions (English) of attribute combinations drawn once with a fixed seed, held-out combinations
first, so the same prompts come back at every evaluation and in every run of a sweep. The
videos use `train.eval_sample_steps` sampler steps at the config's `sample` size, seed 0, the
EMA params; no watermark (training previews, not published outputs). Only flow (DiT) objectives
with `train.eval_every` > 0 sample; other runs get no previews (and build no pipeline).
"""

from __future__ import annotations

import itertools

import numpy as np
from absl import logging


def shapes_prompts(config, n: int) -> list[tuple[str, dict]]:
    """n (caption, attrs) pairs over shapes x colours x motions, held-out combinations first."""
    from sora_jax.data import shapes

    combos = [
        {'shape': s, 'color': c, 'motion': m}
        for s, c, m in itertools.product(shapes.SHAPES, shapes.COLORS, shapes.MOTIONS)
    ]
    order = np.random.default_rng(0).permutation(len(combos))
    combos = [combos[i] for i in order]
    holdout = tuple(tuple(h) for h in config.data.get('holdout', ()))
    combos.sort(key=lambda a: not shapes.is_held_out(a, holdout))  # stable: held out first
    return [(shapes.caption(a, 'en'), a) for a in combos[:n]]


class Previews:
    """Samples the fixed prompts with the current params; one pipeline (one compile) per run."""

    def __init__(self, config):
        self.config = config
        t = config.train
        n = int(t.get('eval_num_videos', 0) or 0)
        given = tuple(t.get('eval_prompts', ()) or ())
        self.steps = int(t.get('eval_sample_steps', 8) or 8)
        if (
            config.get('objective', 'flow') != 'flow'
            or 'sample' not in config
            or not t.get('eval_every', 0)
        ):  # no evaluations: nothing to build
            self.items = []
        elif given:
            self.items = [(p, None) for p in given]
        elif n and config.data.name == 'shapes':
            self.items = shapes_prompts(config, n)
        else:
            if n:
                logging.warning(
                    'train.eval_num_videos=%d but data.name=%r has no fixed prompts; '
                    'set train.eval_prompts.',
                    n,
                    config.data.name,
                )
            self.items = []
        self._pipe = None
        if self.items:  # built here, before the training mesh context: abstract model, no mesh
            from flax import nnx

            from sora_jax.pipeline import TextToVideo, load_vae
            from sora_jax.train.objectives import flow as flow_objective

            vae = load_vae(config.autoencoder)
            if vae is not None:
                vae = vae.with_stats(config.get('latent_mean', ()), config.get('latent_std', ()))
            abstract = nnx.state(
                nnx.eval_shape(lambda: flow_objective.build_model(config, nnx.Rngs(0))), nnx.Param
            )
            self._pipe = TextToVideo._from_denoiser(config, abstract, vae)

    @property
    def enabled(self) -> bool:
        return bool(self.items)

    def __call__(self, params) -> tuple[dict, dict, dict]:
        """({name: uint8 [T, H, W, 3]}, {name: prompt}, {judge/<attribute>: accuracy})."""
        if not self.items:
            return {}, {}, {}
        pipe = self._pipe
        pipe.params, pipe.text.params = params['dit'], params['text']
        prompts = [p for p, _ in self.items]
        frames = pipe(
            prompts, num_inference_steps=self.steps, seed=0, progress=False, watermark=False
        )
        names = [f'samples/{i:02d}' for i in range(len(prompts))]
        videos = dict(zip(names, frames))
        scores = {}
        attrs = [a for _, a in self.items]
        if all(a is not None for a in attrs):
            from sora_jax.evaluation.shapes_judge import judge_clip

            verdicts = [judge_clip(f, a) for f, a in zip(frames, attrs)]
            for k in ('color', 'shape', 'motion', 'all'):
                scores[f'judge/{k}'] = float(np.mean([bool(v[k]) for v in verdicts]))
        return videos, dict(zip(names, prompts)), scores
