r"""Convert a Wan 2.1 or 2.2 diffusers folder (safetensors) into sora_jax Orbax checkpoints.

  python experiments/convert_wan.py --src=/data/Wan2.1-T2V-1.3B-Diffusers \
      --dst=checkpoints/wan21_t2v_1.3b [--components=text_encoder,transformer,vae]

Writes `dst/<component>/params` (Orbax) and `dst/<component>/config.json` (the HF config, kept
as the source of the hyper-parameters) for each component; the `tokenizer/` folder is copied
along with the text encoder, and model_index.json (Wan 2.2: boundary_ratio, expand_timesteps);
a Wan 2.2 A14B folder's `transformer_2/` is converted too, and an I2V folder's `image_encoder/`
(CLIP, converted) and `image_processor/` (copied) come along with the transformer. Load the result with
`sora_jax.convert.checkpoint.load_wan(dst)` (what experiments/sample.py does).

A causal Wan 2.1 generator as CausVid / Self-Forcing publish it (a torch .pt whose
'generator' / 'generator_ema' entry holds the original-Wan keys `model.blocks.0.self_attn.q.weight`
...; sora_jax/convert/causal_wan.py) becomes the transformer, with the text encoder and VAE of
--src (Wan 2.1 T2V 1.3B, what both start from), and its sampling settings in causal.json:

  python experiments/convert_wan.py --src=/data/Wan2.1-T2V-1.3B-Diffusers \
      --causal=checkpoints/self_forcing_dmd.pt --layout=self_forcing --dst=checkpoints/self_forcing
  python experiments/sample.py --checkpoint=checkpoints/self_forcing --seconds=10 --prompt=...

Tensors stream from memory-mapped files one at a time and keep their dtype (bf16 stays bf16).
Fails with a ValueError listing any unmapped source key or unfilled parameter.
"""

from absl import flags, logging

from sora_jax import cli
from sora_jax.convert import causal_wan, wan

FLAGS = flags.FLAGS
flags.DEFINE_string(
    'src',
    None,
    'Diffusers-layout Wan folder (transformer/, vae/, text_encoder/, tokenizer/).',
    required=True,
)
flags.DEFINE_string('dst', None, 'Output folder for the Orbax checkpoints.', required=True)
flags.DEFINE_list(
    'components',
    list(wan.COMPONENTS),
    f'Which sub-folders to convert ({", ".join(wan.COMPONENTS)}; by default also '
    'transformer_2, the Wan 2.2 A14B low-noise expert, when --src has it); an '
    "image-to-video folder's image_encoder/ (+ image_processor/) comes with the "
    'transformer.',
)
flags.DEFINE_string(
    'causal',
    None,
    'A causal generator .pt (CausVid / Self-Forcing layout): converted as the transformer; '
    '--src then gives the text encoder, tokenizer and VAE.',
)
flags.DEFINE_enum(
    'layout',
    'self_forcing',
    sorted(causal_wan.LAYOUTS),
    'With --causal: whose checkpoint (its pickle entry and sampling schedule).',
)
flags.DEFINE_string(
    'entry', None, "With --causal: the pickle entry, e.g. 'generator' (default: the layout's)."
)
flags.DEFINE_integer('num_heads', None, 'With --causal: attention heads (default width / 128).')


def main(argv):
    del argv
    if FLAGS.causal:
        causal_wan.convert(
            FLAGS.causal,
            FLAGS.dst,
            FLAGS.layout,
            base=FLAGS.src,
            key=FLAGS.entry,
            num_heads=FLAGS.num_heads,
        )
        logging.info('wrote %s', FLAGS.dst)
        return
    missing = [c for c in FLAGS.components if c not in wan.CONVERTERS]
    if missing:
        raise ValueError(
            f'--components: {missing} not convertible; available: '
            f'{sorted(wan.CONVERTERS)}. Pass e.g. --components=text_encoder,vae.'
        )
    wan.convert_folder(FLAGS.src, FLAGS.dst, FLAGS.components)
    logging.info('wrote %s', FLAGS.dst)


if __name__ == '__main__':
    cli.run(main)  # one-line errors, documented exit statuses (docs/guarantees.md)
