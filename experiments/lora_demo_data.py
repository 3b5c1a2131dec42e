"""A folder of clips + captions.jsonl for the LoRA demo: shapes whose captions name one colour
(`--say`) while the clips show another (`--show`), e.g. "a red circle moving up" drawn blue
(`sora_jax.data.lora_demo`; a LoRA trained on it: configs/shapes.py:lora_demo).

  python experiments/lora_demo_data.py --out=data/red_is_blue --num=512 --say=red --show=blue
"""

from absl import app, flags

flags.DEFINE_string('out', None, 'Output folder (clips/*.mp4 + captions.jsonl).')
flags.DEFINE_integer('num', 512, 'Clips.')
flags.DEFINE_string('say', 'red', 'Colour named in every caption.')
flags.DEFINE_string('show', 'blue', 'Colour every shape is drawn in.')
flags.DEFINE_integer('seed', 1, 'Scene seed.')
flags.mark_flags_as_required(['out'])


def main(argv):
    del argv
    from sora_jax.data import lora_demo

    F = flags.FLAGS
    n = lora_demo.write_folder(F.out, F.num, F.say, F.show, F.seed)
    print(f'wrote {n} clips to {F.out} (captions say {F.say}, shapes are {F.show})')


if __name__ == '__main__':
    app.run(main)
