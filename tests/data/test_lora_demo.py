"""data/lora_demo.py (experiments/lora_demo_data.py): captions name one colour, clips show another."""

import json

import pytest

from sora_jax.data import lora_demo
from sora_jax.evaluation import shapes_judge
from sora_jax.io import video as video_io


def test_captions_say_red_clips_show_blue(tmp_path):
    assert lora_demo.write_folder(str(tmp_path), num=3, say='red', show='blue') == 3
    rows = [json.loads(x) for x in (tmp_path / 'captions.jsonl').read_text().splitlines()]
    assert len(rows) == 3 and all(' red ' in f' {r["caption"]} ' for r in rows)
    assert all('rojo' in r['caption_es'] or 'roja' in r['caption_es'] for r in rows)
    for r in rows:
        clip = video_io.read_video(tmp_path / r['file'])
        assert clip.shape == (16, 32, 32, 3)
        seen = shapes_judge.judge_clip(
            clip, {'shape': 'circle', 'color': 'blue', 'motion': 'resting'}
        )
        assert seen['measured']['color'] == 'blue'
    with pytest.raises(ValueError, match='teal'):
        lora_demo.write_folder(str(tmp_path / 'x'), num=1, say='teal')
