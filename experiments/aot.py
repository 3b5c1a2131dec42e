"""Compile the real train / sampling / VAE-decode step for a TPU slice on this (CPU) machine:
per-chip memory against HBM, flops, collectives and a roofline estimate, as text and JSON.

  python experiments/aot.py --config=configs/wan21.py:t2v_14b --topology=v5p-64 --task=train \
      --num_frames=81 --height=720 --width=1280 --batch_size=16 \
      --config.mesh.shape='(1,16,1,2)' --json=outputs/aot_14b_train.json

--topology takes slice names (v5p names count TensorCores, two per chip: v5p-64 = 32 chips;
v5e / v6e names count chips) or topology strings (v5p:4x4x2). Needs libtpu
(`pip install -e '.[tpu]'`, also in `[test]`); no TPU. `--config.model.attention=auto` uses
splash attention for a TPU target. `--task=rollout` compiles one chunk of a causal DiT's
chunked rollout (`--config.model.causal_chunk=3`, a cache of `--rollout_window` chunks; the
clip size gives the video's length in chunks, the program is the same for any):

  python experiments/aot.py --config=configs/wan21.py:t2v_1.3b,480p --topology=v5e-8 \
      --task=rollout --config.model.causal_chunk=3 --num_frames=961 --height=480 --width=832 \
      --config.mesh.shape='(1,1,1,8)'

Train steps use `train.param_dtype` / `train.remat` from the
config (configs/wan21.py: float32 master weights, remat 'full').
"""

import json
import os
import sys

os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # compile for the TPU; run nothing on it

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from sora_jax import config_files  # noqa: E402

config_files.register_configs()  # config files outside configs/ may import configs.*
config_flags.DEFINE_config_file('config', None, 'Config file (FILE.py:ARG).', lock_config=True)
flags.DEFINE_string('topology', None, 'v5p-64 | v5e-8 | v6e-256 | v5p:4x4x2 ...')
flags.DEFINE_enum(
    'task', 'train', ['train', 'sample', 'decode', 'rollout'], 'Which step to compile.'
)
flags.DEFINE_integer('num_frames', None, 'Frames (default: config.sample.num_frames).')
flags.DEFINE_integer('height', None, 'Pixels (default: config.sample.height).')
flags.DEFINE_integer('width', None, 'Pixels (default: config.sample.width).')
flags.DEFINE_integer(
    'batch_size',
    None,
    'Clips per step (default: train.batch_size for train, '
    '1 otherwise; sampling compiles the 2x CFG batch).',
)
flags.DEFINE_integer('text_length', None, 'Text tokens (default: config.text.max_length).')
flags.DEFINE_string(
    'quantize',
    None,
    'int8 | fp8 (--task=sample): weight-only quantized DiT block kernels, as '
    'experiments/sample.py --quantize samples (sora_jax/models/quantize.py).',
)
flags.DEFINE_integer(
    'rollout_window',
    4,
    "--task=rollout: past chunks in the key/value cache (the chunked sampler's --window).",
)
flags.DEFINE_integer(
    'rollout_sink_frames', 0, '--task=rollout: first latent frames kept in the cache for ever.'
)
flags.DEFINE_integer(
    'rollout_steps', None, '--task=rollout: steps per chunk (config.sample.steps).'
)
flags.DEFINE_string('rollout_sampler', None, '--task=rollout: sampler (config.sample.sampler).')
ROLLOUT_FLAGS = ('rollout_window', 'rollout_sink_frames', 'rollout_steps', 'rollout_sampler')
flags.DEFINE_string('json', None, 'Write the report here.')
flags.mark_flags_as_required(['config', 'topology'])


def main(argv):
    del argv
    from sora_jax.aot import compile as compile_lib
    from sora_jax.aot import report, run

    f = flags.FLAGS
    c = f.config
    given = [n for n in ROLLOUT_FLAGS if f[n].present]
    if given and f.task != 'rollout':
        raise ValueError(f'--{given[0]} applies to --task=rollout, not --task={f.task}.')
    batch = f.batch_size or (int(c.train.batch_size) if f.task == 'train' else 1)
    rep = run.check(
        c,
        f.topology,
        f.task,
        num_frames=f.num_frames or int(c.sample.num_frames),
        height=f.height or int(c.sample.height),
        width=f.width or int(c.sample.width),
        batch_size=batch,
        text_length=f.text_length,
        quantize=f.quantize,
        rollout=compile_lib.RolloutShape(
            f.rollout_window, f.rollout_sink_frames, f.rollout_steps, f.rollout_sampler
        )
        if f.task == 'rollout'
        else None,
    )
    rep['command'] = ' '.join(['python', 'experiments/aot.py'] + sys.argv[1:])
    print(report.text(rep), flush=True)
    if f.json:
        os.makedirs(os.path.dirname(os.path.abspath(f.json)), exist_ok=True)
        with open(f.json, 'w') as fh:
            json.dump(rep, fh, indent=1, default=float)
        print(f'wrote {f.json}')


if __name__ == '__main__':
    app.run(main)
