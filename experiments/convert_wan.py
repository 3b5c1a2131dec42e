r"""Convert a Wan 2.1 diffusers folder (safetensors) into sora_jax Orbax checkpoints.

  python experiments/convert_wan.py --src=/data/Wan2.1-T2V-1.3B-Diffusers --dst=/data/wan13b_jax \
      --components=text_encoder

Writes `dst/<component>/params` (Orbax) and `dst/<component>/config.json`; the `tokenizer/`
folder is copied along with the text encoder. Tensors stream from memory-mapped files one at a
time and keep their dtype (bf16 stays bf16). Fails with a ValueError listing any unmapped source
key or unfilled parameter.
"""
from absl import app, flags, logging

from sora_jax.convert import wan

FLAGS = flags.FLAGS
flags.DEFINE_string('src', None, 'Diffusers-layout Wan folder (transformer/, vae/, text_encoder/).',
                    required=True)
flags.DEFINE_string('dst', None, 'Output folder for the Orbax checkpoints.', required=True)
flags.DEFINE_list('components', sorted(wan.CONVERTERS),
                  'Which sub-folders to convert (transformer, vae, text_encoder).')


def main(argv):
    del argv
    missing = [c for c in FLAGS.components if c not in wan.CONVERTERS]
    if missing:
        raise ValueError(f'--components: {missing} not convertible yet; available: '
                         f'{sorted(wan.CONVERTERS)}. Pass e.g. --components=text_encoder.')
    wan.convert_folder(FLAGS.src, FLAGS.dst, FLAGS.components)
    logging.info('wrote %s', FLAGS.dst)


if __name__ == '__main__':
    app.run(main)
