"""Writes a LoRA run's adapters as a shareable safetensors file (the diffusers layout that
`WanPipeline.load_lora_weights` and `experiments/sample.py --lora` read).

  python experiments/export_lora.py --workdir=workdirs/shapes_lora --out=outputs/shapes_lora.safetensors
"""

from absl import flags  # noqa: E402

from sora_jax import cli  # noqa: E402

flags.DEFINE_string('workdir', None, 'Workdir of a LoRA training run (config lora.rank > 0).')
flags.DEFINE_string('out', None, 'Output .safetensors file.')
flags.DEFINE_bool('ema', True, 'Export the EMA adapters (--noema: the raw ones).')
flags.DEFINE_bool('overwrite', False, 'Replace --out if it exists.')
flags.mark_flags_as_required(['workdir', 'out'])


def main(argv):
    del argv
    from sora_jax.io import outputs
    from sora_jax.train import lora as lora_train

    outputs.check(flags.FLAGS.out, overwrite=flags.FLAGS.overwrite, formats=('.safetensors',))
    info = lora_train.export(flags.FLAGS.workdir, flags.FLAGS.out, ema=flags.FLAGS.ema)
    print(
        f'wrote {info["file"]}: {info["adapter_params"]:,} adapter params, '
        f'{info["bytes"]:,} bytes, step {info["step"]}; base {info["base"]} '
        f'(sha256 {info["base_sha256"][:12]}...)',
        flush=True,
    )


if __name__ == '__main__':
    cli.run(main)  # one-line errors, documented exit statuses (docs/guarantees.md)
