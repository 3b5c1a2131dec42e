"""Print the training-data record of a checkpoint: datasets, licenses, credited creators.

  python experiments/credits.py --checkpoint=checkpoints/shapes
  python experiments/credits.py --checkpoint=workdirs/x --write   # (re)build it from the config

The record (sora_jax/safety/record.py) is `<checkpoint>/data_record.json`, written beside the
checkpoints of a training run and carried into bundles by experiments/export.py; its sha256 is
what every signed output's Content Credentials cite.
"""

import os

from absl import app, flags  # noqa: E402

flags.DEFINE_string('checkpoint', None, 'Training workdir or bundle.')
flags.DEFINE_bool('write', False, "Build the record from the checkpoint's config and write it.")
flags.mark_flags_as_required(['checkpoint'])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from sora_jax.safety import record

    rec = record.load(FLAGS.checkpoint)
    if FLAGS.write:
        from sora_jax.io import checkpoint as ckpt

        rec = record.for_config(ckpt.load_config(os.path.join(FLAGS.checkpoint, 'checkpoints')))
        print(f'wrote {record.write(FLAGS.checkpoint, rec)}')
    if rec is None:
        raise app.UsageError(
            f'{FLAGS.checkpoint} has no {record.FILENAME}; it was trained before '
            'data records existed: pass --write to build one from its config.'
        )
    print(record.describe(rec))


if __name__ == '__main__':
    app.run(main)
