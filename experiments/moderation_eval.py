"""Precision and recall of the prompt moderation on the labelled prompt set.

  python experiments/moderation_eval.py --json=outputs/moderation.json
  python experiments/moderation_eval.py --policy=my_policy.json --show_misses   # tune split only
  # the output check on the shipped model's outputs (false positives, seconds per clip)
  python experiments/moderation_eval.py --output_clips=200 --checkpoint=checkpoints/shapes --json=outputs/output_check.json

Prints precision and recall per split (tune / heldout), language and category
(sora_jax/safety/moderation_eval.py says how they are counted), the time per prompt, and
writes the same figures as JSON. Misses are shown for the tune split only: the held-out split
is for measuring, not for tuning. With --output_clips=N it instead samples N clips from
--checkpoint (captions of random one-shape scenes, en + es, seeds 0..N-1) and runs the output
check ($SORA_JAX_OUTPUT_CHECK or --output_check; NudeNet when installed) on --frames_per_clip
frames of each, plus --natural_images (still photos, each as a clip of random crops): every
refusal of these benign clips is a false positive.
"""

import json
import os
import time

from absl import app, flags  # noqa: E402

flags.DEFINE_string('set', None, 'Labelled JSONL (default tests/safety/prompts/labelled.jsonl).')
flags.DEFINE_string('policy', None, 'Content policy JSON (default: the shipped policy).')
flags.DEFINE_string('json', None, 'Write the figures here as JSON.')
flags.DEFINE_bool('show_misses', False, 'Print the tune split prompts the policy gets wrong.')
flags.DEFINE_integer('output_clips', 0, 'Measure the output check on this many generated clips.')
flags.DEFINE_string('checkpoint', 'checkpoints/shapes', 'Model whose outputs are checked.')
flags.DEFINE_string(
    'output_check', None, 'auto | nudenet | FOLDER (default $SORA_JAX_OUTPUT_CHECK).'
)
flags.DEFINE_integer('frames_per_clip', 4, 'Frames checked per clip.')
flags.DEFINE_integer('batch', 25, 'Clips sampled per call.')
flags.DEFINE_integer('steps', None, 'Sampling steps (default: the checkpoint config).')
flags.DEFINE_multi_string('natural_images', [], 'Photos checked as clips of random crops.')
flags.DEFINE_integer('crops', 20, 'Clips made from each natural image.')


def measure_outputs(F) -> dict:
    """False positives and cost of the output check on generated (and natural) clips."""
    import numpy as np

    from sora_jax.data import shapes
    from sora_jax.pipeline import TextToVideo
    from sora_jax.safety import output_check

    det = output_check.configured(F.output_check)
    if det is None:
        raise ValueError('no output classifier: pip install nudenet or pass --output_check=FOLDER.')
    rng = np.random.default_rng(0)
    pipe = TextToVideo.from_checkpoint(F.checkpoint)
    fp, clips, secs, flagged = 0, 0, 0.0, []

    def run(frames, source):
        nonlocal fp, clips, secs
        t0 = time.perf_counter()
        vs = output_check.check_videos(frames, det, F.frames_per_clip)
        secs += time.perf_counter() - t0
        for i, v in enumerate(vs):
            clips += 1
            if not v.allowed:
                fp += 1
                flagged.append(
                    {'source': source, 'clip': i, 'verdicts': [x._asdict() for x in v.verdicts]}
                )

    gen_secs = 0.0
    for start in range(0, F.output_clips, F.batch):
        n = min(F.batch, F.output_clips - start)
        prompts = []
        for i in range(n):
            attrs = {
                'shape': rng.choice(list(shapes.SHAPES)),
                'color': rng.choice(list(shapes.COLORS)),
                'motion': rng.choice(list(shapes.MOTIONS)),
            }
            prompts.append(shapes.caption(attrs, shapes.LANGS[(start + i) % 2]))
        t0 = time.perf_counter()
        frames = pipe(prompts, num_inference_steps=F.steps, seed=start, progress=False)
        gen_secs += time.perf_counter() - t0
        run(frames, f'{F.checkpoint} seed {start}')
        print(f'{clips} clips, {fp} refused, {secs / clips:.3f} s per clip checked', flush=True)
    model_clips = clips
    for path in F.natural_images:
        from PIL import Image

        img = np.asarray(Image.open(path).convert('RGB'))
        h, w = img.shape[:2]
        crops = []
        for _ in range(F.crops):
            s = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
            y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
            c = np.asarray(Image.fromarray(img[y : y + s, x : x + s]).resize((128, 128)))
            crops.append(np.stack([c, c[:, ::-1]] * (F.frames_per_clip // 2 or 1)))
        run(np.stack(crops), path)
    return {
        'detector': det.name,
        'frames_per_clip': F.frames_per_clip,
        'model_clips': model_clips,
        'natural_clips': clips - model_clips,
        'refused': fp,
        'flagged': flagged,
        'check_seconds_per_clip': secs / max(clips, 1),
        'sample_seconds_per_clip': gen_secs / max(model_clips, 1),
        'frame_shape': list(frames.shape[2:]) if model_clips else None,
    }


def main(argv):
    del argv
    F = flags.FLAGS
    if F.output_clips:
        report = measure_outputs(F)
        print(json.dumps({k: v for k, v in report.items() if k != 'flagged'}, indent=1))
        if F.json:
            os.makedirs(os.path.dirname(os.path.abspath(F.json)), exist_ok=True)
            with open(F.json, 'w') as f:
                json.dump(report, f, indent=1)
        return
    from sora_jax.safety import moderation, moderation_eval

    rows = moderation_eval.load_set(F.set)
    mod = moderation.Moderator.load(F.policy)
    mod.check('warm up')
    t0 = time.perf_counter()
    report = moderation_eval.evaluate(mod.check, rows)
    ms = (time.perf_counter() - t0) * 1e3 / len(rows)
    report.update(policy=mod.source, set=F.set or moderation_eval.DEFAULT_SET, ms_per_prompt=ms)
    print(moderation_eval.format_table(report))
    print(f'{len(rows)} prompts, {ms:.3f} ms per prompt (policy {mod.source})')
    if F.show_misses:
        for m in report['misses']:
            print(
                f'MISS {m["label"]:7} {m["category"]:16} got={m["got"]} ({m["match"]}) {m["text"]}'
            )
    if F.json:
        os.makedirs(os.path.dirname(os.path.abspath(F.json)), exist_ok=True)
        with open(F.json, 'w') as f:
            json.dump(report, f, indent=1, ensure_ascii=False)
        print(f'wrote {F.json}')


if __name__ == '__main__':
    app.run(main)
