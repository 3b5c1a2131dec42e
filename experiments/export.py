"""Export a trained DiT (+ its VAE) as a self-contained inference bundle, e.g. checkpoints/shapes.

  python experiments/export.py --dit=workdirs/shapes_dit --dst=checkpoints/shapes [--dtype=float16] [--step=N]
  python experiments/export.py --vae=workdirs/world_vae_frames --dst=checkpoints/world_vae

`--vae` exports a VAE workdir alone (float32 parameters, no optimizer state): what
`config.autoencoder` and `reconstruct.py --checkpoint` take, small enough to keep in git.

The bundle holds only EMA parameters (`--noema`: the raw ones; no optimizer state), in
`--dtype` (float16 halves the size; sampling casts back to float32; int8 stores the DiT's block
kernels as int8 with per-channel scales, the rest float16, and samples as `--quantize=int8`
does on the float16 bundle, in about 60% of its size), the DiT's config with
`autoencoder='vae'`, and the VAE as `<dst>/vae` in the same layout (sora_jax/export.py).
`--dst` must be new, empty, or a bundle this command wrote; it may not be, hold or lie inside
the DiT or VAE workdir. An old bundle is replaced only once the new one is complete (atomic
swap); anything else is refused, one ERROR line, nothing changed (exit statuses:
docs/guarantees.md). `--dst` may be a bucket (gs://...).
"""

import os

from absl import flags  # noqa: E402

from sora_jax import cli  # noqa: E402

flags.DEFINE_string('dit', None, 'DiT training workdir.')
flags.DEFINE_string('vae', None, 'A VAE training workdir to export alone (instead of --dit).')
flags.DEFINE_string('dst', None, 'Bundle directory to write (new, empty, or an earlier bundle).')
flags.DEFINE_enum(
    'dtype',
    'float16',
    ['float16', 'bfloat16', 'float32', 'int8'],
    'Stored parameter dtype (int8: the DiT block kernels, sampled as --quantize=int8 does).',
)
flags.DEFINE_bool(
    'ema',
    True,
    'Export the EMA parameters (--noema: the raw parameters, e.g. '
    'when the EMA still averages in weights from before a late improvement).',
)
flags.DEFINE_integer(
    'step',
    None,
    'Checkpoint step to export (default: the newest; the '
    'workdir keeps train.keep_checkpoints of them).',
)
flags.mark_flags_as_required(['dst'])


def main(argv):
    del argv
    from sora_jax import export

    F = flags.FLAGS
    if (F.dit is None) == (F.vae is None):
        raise ValueError('give exactly one of --dit=WORKDIR (a bundle) or --vae=WORKDIR.')
    src, what = (F.dit, 'DiT') if F.dit else (F.vae, 'VAE')
    with cli.reading(
        f'the {what} workdir {src}', 'pass a training workdir whose checkpoints are complete'
    ):
        from sora_jax.io import checkpoint as ckpt_io

        config = ckpt_io.load_config(os.path.join(src, 'checkpoints'))
    if F.vae and config.objective != 'vae':
        raise ValueError(f'--vae={F.vae!r} holds a {config.objective!r} run; use --dit for it.')
    if F.dit:
        size = export.export_bundle(F.dit, F.dst, F.dtype, ema=F.ema, step=F.step)
    else:
        size = export.export_vae(F.vae, F.dst, ema=F.ema, step=F.step)
    print(f'wrote {F.dst} ({size / 2**20:.1f} MiB)')


if __name__ == '__main__':
    cli.run(main)
