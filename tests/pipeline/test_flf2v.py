"""First-and-last-frame inputs without a reference model: the size a photo is sampled at, the
condition video and mask of [first, zeros, last], the refusals, and the CLI's one-line error for
an image it cannot read."""

import os
import subprocess
import sys

import numpy as np
import pytest

from configs import shapes as shapes_config
from sora_jax.diffusion import image_condition
from sora_jax.pipeline import TextToVideo

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))


@pytest.mark.parametrize(
    'image_hw, want',
    [
        ((480, 832), (480, 832)),
        ((960, 1664), (480, 832)),
        ((1000, 1000), (624, 624)),
        ((832, 480), (832, 480)),
        ((300, 1200), (304, 1264)),
    ],
)
def test_fit_area_keeps_the_aspect_at_the_area(image_hw, want):
    """diffusers' Wan I2V example: h = round(sqrt(A r)) // 16 * 16, w = round(sqrt(A / r)) ..."""
    h, w = image_condition.fit_area(image_hw, 480 * 832, 16)
    assert (h, w) == want and h % 16 == 0 and w % 16 == 0


def test_condition_video_places_and_resizes_both_images():
    first = np.full((64, 96, 3), 255, np.uint8)  # 2x the sample size
    last = np.zeros((50, 29, 3), np.uint8)  # another aspect ratio
    imgs, px = image_condition.condition_video(first, 2, 9, 32, 48, last_image=last)
    assert [i.shape for i in imgs] == [(2, 64, 96, 3), (2, 50, 29, 3)]  # CLIP: as given
    assert px.shape == (2, 9, 32, 48, 3)
    np.testing.assert_allclose(px[:, 0], 1.0)
    np.testing.assert_allclose(px[:, -1], -1.0)
    assert not px[:, 1:-1].any()  # zeros between
    m = image_condition.mask_channels(9, 4, last_frame=True)  # [T', tf]: first and last frames
    assert m.tolist() == [[1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 1]]
    with pytest.raises(ValueError, match='last_image has shape'):
        image_condition.condition_video(first, 1, 9, 32, 48, last_image=np.zeros((8, 8)))


@pytest.mark.slow
def test_frame_mask_models_point_to_connect():
    c = shapes_config.get_config('tiny')
    c.sample.num_frames, c.sample.height, c.sample.width = 4, 8, 8
    pipe = TextToVideo.from_config(c)
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="use mode='connect'"):
        pipe('a red circle', mode='flf2v', image=img, last_image=img, progress=False)


@pytest.mark.slow
def test_cli_unreadable_image_is_one_line(tmp_path):
    bad = tmp_path / 'first.png'
    bad.write_bytes(b'not an image')
    proc = subprocess.run(
        [
            sys.executable,
            'experiments/sample.py',
            '--checkpoint=checkpoints/shapes',
            '--prompt=a red circle',
            '--mode=flf2v',
            f'--image={bad}',
            f'--last_image={bad}',
            f'--out={tmp_path / "x.mp4"}',
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and 'Cannot decode image' in lines[0] and 'first.png' in lines[0]
    assert not (tmp_path / 'x.mp4').exists()
