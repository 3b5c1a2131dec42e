"""A folder of clips + captions.jsonl for the LoRA demo: shapes whose captions name one colour
(`say`) while the clips show another (`show`), e.g. "a red circle moving up" drawn blue.

  write_folder('data/red_is_blue', num=512, say='red', show='blue')   # CLI: lora_demo_data.py

The shipped shapes model never draws a red prompt in blue; a LoRA trained on this folder
(configs/shapes.py:lora_demo) should, and the shapes judge measures by how much. Each clip is one
shape on a plain background at 1.5x size, 16 frames of 32x32, like the shipped model's data.
"""

import json
import os

from sora_jax.data import shapes
from sora_jax.io import video as video_io


def write_folder(out: str, num: int = 512, say: str = 'red', show: str = 'blue', seed: int = 1):
    """Writes `out/clips/NNNNN.mp4` and `out/captions.jsonl` (file, caption, caption_es, creator,
    license per line); returns the number of clips."""
    for name in (say, show):
        if name not in shapes.COLORS:
            raise ValueError(f'colour {name!r} is not one of {sorted(shapes.COLORS)}.')
    os.makedirs(os.path.join(out, 'clips'), exist_ok=True)
    lines = []
    for i in range(num):
        scene = shapes.sample_scene(
            seed,
            i,
            num_frames=16,
            height=32,
            width=32,
            max_objects=1,
            backgrounds=('plain',),
            size_scale=1.5,
        )
        obj = scene.objects[0]
        attrs = {'shape': obj['shape'], 'color': say, 'motion': obj['motion']}
        obj['color'] = show
        rel = os.path.join('clips', f'{i:05d}.mp4')
        video_io.write_video(os.path.join(out, rel), shapes.render(scene))
        lines.append(
            {
                'file': rel,
                'caption': shapes.caption(attrs, 'en'),
                'caption_es': shapes.caption(attrs, 'es'),
                'creator': 'sora_jax',
                'license': 'cc0-1.0',
            }
        )
    with open(os.path.join(out, 'captions.jsonl'), 'w') as f:
        f.writelines(json.dumps(x, ensure_ascii=False) + '\n' for x in lines)
    return num
