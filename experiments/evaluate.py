"""Prompt-following evaluation of a shapes checkpoint, and of the judge itself.

  # the model: N prompts per (shape, colour, motion) in each language, judged from pixels
  python experiments/evaluate.py --checkpoint=checkpoints/shapes --suite=shapes --json=outputs/eval.json
  python experiments/evaluate.py --checkpoint=... --suite=shapes --holdout_only --num_per_combo=4
  # the judge: real one-shape dataset clips (optionally blurred + noised like a VAE round trip)
  python experiments/evaluate.py --suite=ground_truth --json=outputs/judge.json [--blur=1 --noise=8]
  # the judge on VAE round trips of real clips: what a latent model can reach at best
  python experiments/evaluate.py --suite=ground_truth --checkpoint=checkpoints/shapes --autoencoder
  # the physics world (docs/world.md): held-out prompts per category; no --checkpoint: the truth
  python experiments/evaluate.py --suite=world [--checkpoint=...] --num_per_category=64
  # a minute of the world judged in 2-s windows (docs/long_video.md): a causal checkpoint by
  # rollout beside a full-attention --baseline by chained extend; no --checkpoint: the truth
  python experiments/evaluate.py --suite=world_long --checkpoint=CAUSAL --baseline=FULL \
      --seconds=60 --num_prompts=8 --json=outputs/long.json --plot=outputs/long.png

Prints a table (accuracy per attribute per language, seen vs held-out combinations, background
flicker) and writes the same figures as JSON; held-out combinations come from the checkpoint's
`data.holdout` (else `configs/shapes.py:HOLDOUT`). Each --suite is one function of SUITES: flags
-> one library call (`sora_jax.evaluation.shapes_eval`) -> (summary, settings).
"""

import json
import os

from sora_jax.io import host_memory

host_memory.retain_freed_memory()  # before jax starts its threads: no page faults per step

from absl import flags, logging  # noqa: E402

from sora_jax import cli  # noqa: E402
from sora_jax.evaluation import shapes_eval  # noqa: E402
from sora_jax.io import compile_cache  # noqa: E402  (defines --compilation_cache)

flags.DEFINE_string('checkpoint', None, 'Training workdir or shipped bundle (suite=shapes).')
flags.DEFINE_enum(
    'suite',
    'shapes',
    ['shapes', 'ground_truth', 'world', 'world_long'],
    'What to evaluate (SUITES below).',
)
flags.DEFINE_integer(
    'num_per_category', 64, 'suite=world: held-out prompts per category, language.'
)
flags.DEFINE_string('json', None, 'Write the figures here as JSON.')
flags.DEFINE_string(
    'gifs',
    None,
    'suite=world: write judged strips of the first passed and failed clip of each category '
    'here (world_model_right.gif, world_model_wrong.gif, their captions in world_model.json).',
)
flags.DEFINE_enum(
    'method',
    None,
    ['rollout', 'extend', 'truth'],
    'suite=world_long: rollout (a causal --checkpoint), extend (a full-attention one: chained '
    "mode='extend'), truth (no checkpoint); default from the checkpoint (truth without one).",
)
flags.DEFINE_float('seconds', 60.0, 'suite=world_long: seconds of video per prompt.')
flags.DEFINE_integer('num_prompts', 8, 'suite=world_long: held-out two-object prompts (en, es).')
flags.DEFINE_string(
    'baseline',
    None,
    'suite=world_long: a full-attention checkpoint run by chained extend beside --checkpoint '
    '(same prompts), both in the table and the plot.',
)
flags.DEFINE_string('plot', None, 'suite=world_long: write the pass rate and drift plot (PNG).')
flags.DEFINE_integer(
    'window_frames', None, 'suite=world_long: frames per judged window (default: 2 s + 1).'
)
flags.DEFINE_integer(
    'overlap', None, 'suite=world_long, extend: known frames per call (default: a third).'
)
flags.DEFINE_integer('rollout_window', 4, 'suite=world_long, rollout: past chunks attended.')
flags.DEFINE_integer('sink_frames', 0, 'suite=world_long, rollout: first latent frames kept.')
flags.DEFINE_bool('progress', True, 'suite=world_long: a progress bar over the prompts.')
flags.DEFINE_integer('num_per_combo', 1, 'Samples per (shape, colour, motion) and language.')
flags.DEFINE_integer('steps', 25, 'Sampling steps.')
flags.DEFINE_float('guidance_scale', None, 'Classifier-free guidance; default from the config.')
flags.DEFINE_list('languages', ['en', 'es'], 'Caption languages.')
flags.DEFINE_bool('holdout_only', False, 'Only the held-out combinations.')
flags.DEFINE_integer('batch_size', 32, 'Prompts per sampling call.')
flags.DEFINE_integer('num_frames', None, 'Frames; default from the config (ground_truth: 17).')
flags.DEFINE_integer('height', None, 'Height; default from the config (ground_truth: 32).')
flags.DEFINE_integer('width', None, 'Width; default from the config (ground_truth: 32).')
flags.DEFINE_integer(
    'seed', 0, 'Sampling seed (batch i uses seed + i); dataset seed for ground_truth.'
)
flags.DEFINE_integer('num_clips', 500, 'ground_truth: clips to judge.')
flags.DEFINE_float('blur', 0.0, 'ground_truth: Gaussian blur sigma (px) applied before judging.')
flags.DEFINE_float(
    'noise', 0.0, 'ground_truth: Gaussian noise std (0..255) applied before judging.'
)
flags.DEFINE_bool('ema', True, 'Sample the EMA parameters.')
flags.DEFINE_string(
    'vae',
    None,
    'suite=world without --checkpoint: judge the truth after a round trip through this VAE '
    '(a VAE workdir or bundle/vae): the ceiling of a DiT on its latents.',
)
flags.DEFINE_string(
    'quantize',
    None,
    'suite=shapes: int8 | fp8 weight-only DiT block kernels (as experiments/sample.py --quantize).',
)
flags.DEFINE_list('colors', None, 'suite=shapes: only prompts of these colours (default: all).')
flags.DEFINE_multi_string(
    'lora',
    None,
    'suite=shapes: LoRA FILE[:scale] over the checkpoint (repeatable; see experiments/sample.py).',
)
flags.DEFINE_bool(
    'autoencoder',
    False,
    'ground_truth: judge the clips after a round trip through '
    "the --checkpoint's VAE (its config.autoencoder).",
)
flags.DEFINE_list(
    'backgrounds',
    None,
    "ground_truth: background kinds (default: every kind, or the --checkpoint's data.backgrounds).",
)
flags.DEFINE_float(
    'size_scale',
    None,
    "ground_truth: shape size scale (default 1, or the --checkpoint's data.size_scale).",
)


def ground_truth_suite(F) -> tuple[dict, dict]:
    """The judge on real dataset clips (those of --checkpoint's data settings, when given)."""
    data = {}
    if F.checkpoint:  # judge the data distribution that checkpoint was trained on
        from sora_jax.io import checkpoint as ckpt

        data = ckpt.load_config(ckpt.checkpoint_dir(F.checkpoint)).get('data', {})
    backgrounds = tuple(F.backgrounds or data.get('backgrounds', ()) or ()) or None
    size_scale = F.size_scale if F.size_scale is not None else float(data.get('size_scale', 1.0))
    vae = shapes_eval.checkpoint_vae(F.checkpoint) if F.autoencoder else None
    summary = shapes_eval.evaluate_ground_truth(
        num_clips=F.num_clips,
        num_frames=F.num_frames or 17,
        height=F.height or 32,
        width=F.width or 32,
        seed=F.seed,
        blur=F.blur,
        noise=F.noise,
        backgrounds=backgrounds,
        size_scale=size_scale,
        vae=vae,
    )
    settings = {
        'num_clips': F.num_clips,
        'blur': F.blur,
        'noise': F.noise,
        'backgrounds': list(backgrounds or ()),
        'size_scale': size_scale,
        'autoencoder': bool(F.autoencoder),
    }
    return summary, settings


def shapes_suite(F) -> tuple[dict, dict]:
    """The --checkpoint model (with --lora adapters) on one-shape prompts."""
    if not F.checkpoint:
        raise ValueError('--suite=shapes needs --checkpoint=DIR (a workdir or checkpoints/shapes).')
    from sora_jax.pipeline import TextToVideo

    pipe = TextToVideo.from_checkpoint(F.checkpoint, ema=F.ema, quantize=F.quantize)
    if F.lora:
        from sora_jax.convert.lora import parse_spec

        pipe.set_loras([parse_spec(s) for s in F.lora])
    holdout = tuple(
        tuple(c) for c in pipe.config.get('data', {}).get('holdout', shapes_eval.default_holdout())
    )
    summary = shapes_eval.evaluate_shapes(
        pipe,
        num_per_combo=F.num_per_combo,
        languages=tuple(F.languages),
        holdout=holdout,
        holdout_only=F.holdout_only,
        steps=F.steps,
        guidance_scale=F.guidance_scale,
        num_frames=F.num_frames,
        height=F.height,
        width=F.width,
        batch_size=F.batch_size,
        seed=F.seed,
        colors=F.colors,
    )
    settings = {
        'checkpoint': F.checkpoint,
        'lora': F.lora,
        'quantize': F.quantize,
        'colors': F.colors,
        'num_per_combo': F.num_per_combo,
        'steps': F.steps,
        'guidance_scale': F.guidance_scale,
        'languages': list(F.languages),
        'holdout': [list(c) for c in holdout],
        'holdout_only': F.holdout_only,
    }
    return summary, settings


def world_suite(F) -> tuple[dict, dict]:
    """Held-out physics-world prompts (sora_jax/evaluation/world_eval.py) with the --checkpoint
    model, or without one the generator's own clips (the judge's ceiling)."""
    from sora_jax.evaluation import world_eval

    model = world_eval.ground_truth_model
    if F.vae and F.checkpoint:
        raise ValueError('--vae judges the truth through a VAE; drop --checkpoint (or --vae).')
    if F.vae:
        from sora_jax.models import frozen_vae

        model = world_eval.vae_round_trip_model(frozen_vae.load(F.vae))
    if F.checkpoint:
        from sora_jax.pipeline import TextToVideo

        model = TextToVideo.from_checkpoint(F.checkpoint, ema=F.ema)
    examples = {} if F.gifs else None
    summary = world_eval.evaluate_world(
        model,
        F.num_per_category,
        tuple(F.languages),
        steps=F.steps,
        guidance_scale=F.guidance_scale,
        batch_size=F.batch_size,
        seed=F.seed,
        examples=examples,
    )
    if F.gifs:
        import json
        import os

        rows = world_eval.write_strips(examples, F.gifs)
        with open(os.path.join(F.gifs, 'world_model.json'), 'w', encoding='utf-8') as f:
            json.dump(rows, f, indent=1, ensure_ascii=False)
        print(f'wrote {len(rows)} judged clips to {F.gifs}')
    return summary, {
        'checkpoint': F.checkpoint,
        'vae': F.vae,
        'num_per_category': F.num_per_category,
    }


def world_long_suite(F) -> tuple[dict, dict]:
    """A minute (--seconds) of held-out world prompts judged window by window
    (sora_jax/evaluation/world_long.py): --checkpoint by --method, and --baseline by extend.
    Every flag and checkpoint is checked before a weight loads."""
    from sora_jax.evaluation import world_long, world_long_report

    options = world_long.LongOptions(
        seconds=F.seconds,
        num_prompts=F.num_prompts,
        languages=tuple(F.languages),
        window_frames=F.window_frames,
        steps=F.steps,
        guidance_scale=F.guidance_scale,
        seed=F.seed,
        overlap=F.overlap,
        rollout_window=F.rollout_window,
        sink_frames=F.sink_frames,
        progress=F.progress,
    )
    runs = world_long.plan_runs(F.checkpoint, F.method, F.baseline, options)
    if F.plot:
        import matplotlib  # noqa: F401  (the [test] extra; checked before any model loads)
    results = []
    for path, method in runs:
        pipe = None
        if path:
            from sora_jax.pipeline import TextToVideo

            pipe = TextToVideo.from_checkpoint(path, ema=F.ema)
        results.append(world_long.evaluate_long(pipe, method, options, checkpoint=path))
        print(world_long_report.table(results[-1]) + '\n', flush=True)
    if F.plot:
        print(f'wrote {world_long_report.plot(results, F.plot)}')
    summary = {'results': [r.to_json() for r in results]}
    return summary, {'checkpoint': F.checkpoint, 'baseline': F.baseline, 'seconds': F.seconds}


SUITES = {
    'shapes': shapes_suite,
    'ground_truth': ground_truth_suite,
    'world': world_suite,
    'world_long': world_long_suite,
}


def main(argv):
    del argv
    compile_cache.enable()
    F = flags.FLAGS
    if F.suite == 'world_long' and not F['verbosity'].present:
        logging.set_verbosity(logging.WARNING)  # no Orbax INFO chatter; progress bars instead
    summary, settings = SUITES[F.suite](F)
    summary['suite'], summary['settings'] = F.suite, settings
    if F.suite == 'world':
        from sora_jax.evaluation import world_eval

        print(world_eval.report(summary), flush=True)
    elif F.suite != 'world_long':  # its tables are printed as each run ends
        print(shapes_eval.report(summary), flush=True)
    if F.json:
        os.makedirs(os.path.dirname(os.path.abspath(F.json)), exist_ok=True)
        with open(F.json, 'w') as f:
            json.dump(
                summary,
                f,
                indent=1,
                default=lambda x: x.tolist() if hasattr(x, 'tolist') else str(x),
            )
        print(f'wrote {F.json}')


if __name__ == '__main__':
    cli.run(main)  # one-line errors, documented exit statuses (docs/guarantees.md)
