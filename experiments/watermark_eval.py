"""Measure the invisible watermark: PSNR, bit accuracy after each transform, false positives.

  python experiments/watermark_eval.py --clips=8 --fpr_clips=800 --checkpoint=checkpoints/shapes \
      --model_clips=4 --json=outputs/watermark_eval.json   # all of it (~30 min on 2 cores)
  python experiments/watermark_eval.py --clips=4 --fpr_clips=40 --json=/tmp/wm.json   # quick look
  python experiments/watermark_eval.py --sets=shapes:1,shapes:9,shapes:5,shapes:3,shapes:7,\
      natural:0,natural:300,natural:600,natural:900,natural:1200   # the combination alone, 80 clips
  python experiments/watermark_eval.py --fpr_only --fpr_clips=800   # the false-positive rate alone
  python experiments/watermark_eval.py --fpr_only --fpr_clips=400 --fpr_start=400   # its 2nd half
  python experiments/watermark_eval.py --timing_clips=3   # seconds per detection

Two measurements side by side on 2 cores: give each OMP_NUM_THREADS=1. What each measurement
does (clips, transforms, the false-positive bound, the --sets): `sora_jax.safety.watermark_eval`.
"""

import json
import os
import time

from absl import app, flags

from sora_jax.safety import watermark_eval as wm_eval

flags.DEFINE_integer('clips', 12, 'Marked clips per source (shapes, natural).')
flags.DEFINE_integer(
    'fpr_clips',
    800,
    'Unmarked clips for the false-positive rate (>= 600 with '
    'none found bounds it <= 0.5% at 95%; 0: skip it).',
)
flags.DEFINE_integer('images', 8, 'Single marked frames (t2i) per source, written as .png.')
flags.DEFINE_string(
    'checkpoint', None, 'Also mark clips sampled from this model (e.g. checkpoints/shapes).'
)
flags.DEFINE_integer('model_clips', 4, 'Clips sampled from --checkpoint.')
flags.DEFINE_integer(
    'fpr_start',
    0,
    'With --fpr_only: skip the first clips of the unmarked '
    'sequence (run a long measurement as parts in parallel).',
)
flags.DEFINE_bool('fpr_only', False, 'Only the false-positive rate on --fpr_clips unmarked clips.')
flags.DEFINE_list(
    'sets',
    [],
    'Only the combination, on these sets of 8 clips: shapes:SEED or natural:START (see above).',
)
flags.DEFINE_integer(
    'timing_clips',
    0,
    'Only the detection time: per clip, on this many unmarked, '
    'marked and marked-then-combined clips of each source (the first of the '
    'unmarked ones is read once before, untimed, to fill caches).',
)
flags.DEFINE_string('json', 'outputs/watermark_eval.json', 'Where to write the figures.')
FLAGS = flags.FLAGS


def main(argv):
    del argv
    t0 = time.time()
    if FLAGS.sets:
        result = {'combination_sets': wm_eval.combination_sets(FLAGS.sets)}
    elif FLAGS.fpr_only:
        result = {'false_positive': wm_eval.false_positives(FLAGS.fpr_clips, FLAGS.fpr_start)}
    elif FLAGS.timing_clips:
        result = {'detection_time': wm_eval.detection_time(FLAGS.timing_clips)}
    else:
        result = wm_eval.full(
            FLAGS.clips, FLAGS.fpr_clips, FLAGS.images, FLAGS.checkpoint, FLAGS.model_clips
        )
    if 'seconds' not in result:
        result['seconds'] = round(time.time() - t0, 1)
        print(result, flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.json)), exist_ok=True)
    with open(FLAGS.json, 'w') as f:
        json.dump(result, f, indent=1)
    print(f'wrote {FLAGS.json}')


if __name__ == '__main__':
    app.run(main)
