"""A folder of clips + captions.jsonl for the LoRA demo: shapes whose captions name one colour
(`--say`) while the clips show another (`--show`), e.g. "a red circle moving up" drawn blue.
The shipped shapes model never draws a red prompt in blue; a LoRA trained on this folder
(configs/shapes.py:lora_demo) should, and the shapes judge measures by how much.

  python experiments/lora_demo_data.py --out=data/red_is_blue --num=512 --say=red --show=blue
"""

import json
import os

from absl import app, flags  # noqa: E402

flags.DEFINE_string('out', None, 'Output folder (clips/*.mp4 + captions.jsonl).')
flags.DEFINE_integer('num', 512, 'Clips.')
flags.DEFINE_string('say', 'red', 'Colour named in every caption.')
flags.DEFINE_string('show', 'blue', 'Colour every shape is drawn in.')
flags.DEFINE_integer('seed', 1, 'Scene seed.')
flags.mark_flags_as_required(['out'])


def main(argv):
    del argv
    from sora_jax.data import shapes
    from sora_jax.io import video as video_io

    F = flags.FLAGS
    for name in (F.say, F.show):
        if name not in shapes.COLORS:
            raise ValueError(f'colour {name!r} is not one of {sorted(shapes.COLORS)}.')
    os.makedirs(os.path.join(F.out, 'clips'), exist_ok=True)
    lines = []
    for i in range(F.num):  # one shape on a plain background at 1.5x size, like the shipped data
        scene = shapes.sample_scene(
            F.seed,
            i,
            num_frames=16,
            height=32,
            width=32,
            max_objects=1,
            backgrounds=('plain',),
            size_scale=1.5,
        )
        obj = scene.objects[0]
        attrs = {'shape': obj['shape'], 'color': F.say, 'motion': obj['motion']}
        obj['color'] = F.show
        rel = os.path.join('clips', f'{i:05d}.mp4')
        video_io.write_video(os.path.join(F.out, rel), shapes.render(scene))
        lines.append(
            {
                'file': rel,
                'caption': shapes.caption(attrs, 'en'),
                'caption_es': shapes.caption(attrs, 'es'),
                'creator': 'sora_jax',
                'license': 'cc0-1.0',
            }
        )
    with open(os.path.join(F.out, 'captions.jsonl'), 'w') as f:
        f.writelines(json.dumps(x, ensure_ascii=False) + '\n' for x in lines)
    print(f'wrote {F.num} clips to {F.out} (captions say {F.say}, shapes are {F.show})')


if __name__ == '__main__':
    app.run(main)
