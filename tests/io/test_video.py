"""Video file IO: mp4/gif round trips, float conversions, clear errors for bad files."""

import os

import numpy as np
import pytest

from sora_jax.data import shapes
from sora_jax.io import video as V


@pytest.fixture(scope='module')
def clip():
    return shapes.generate(0, 1, num_frames=10, height=32, width=48)['video']


def test_mp4_round_trip(clip, tmp_path):
    path = V.write_video(tmp_path / 'a' / 'b' / 'clip.mp4', clip, fps=8)  # parents created
    assert path.is_file() and path.stat().st_size > 0
    back = V.read_video(path)
    assert back.shape == clip.shape and back.dtype == np.uint8
    err = np.abs(back.astype(np.float32) - clip.astype(np.float32)).mean()
    assert err < 6.0, err  # h264 is lossy (chroma subsampling at shape edges)
    assert V.video_fps(path) == pytest.approx(8.0)


def test_gif_round_trip(clip, tmp_path):
    path = V.write_video(tmp_path / 'clip.gif', clip, fps=10)
    back = V.read_video(path)
    assert back.shape == clip.shape and back.dtype == np.uint8
    err = np.abs(back.astype(np.float32) - clip.astype(np.float32)).mean()
    assert err < 10.0, err  # 256-colour palette


def test_float_conversions():
    x = np.arange(256, dtype=np.uint8).reshape(1, 1, 256, 1).repeat(3, -1)
    f = V.to_float(x)
    assert f.dtype == np.float32 and f.min() == -1.0 and f.max() == 1.0
    np.testing.assert_array_equal(V.to_uint8(f), x)
    np.testing.assert_array_equal(V.to_uint8(np.array([-3.0, 0.0, 3.0])), [0, 128, 255])
    with pytest.raises(ValueError, match='uint8'):
        V.to_float(x.astype(np.float32))


def test_bad_inputs_raise_value_error(tmp_path, clip):
    with pytest.raises(ValueError, match='does not exist'):
        V.read_video(tmp_path / 'missing.mp4')
    (tmp_path / 'empty.mp4').write_bytes(b'')
    with pytest.raises(ValueError, match='empty'):
        V.read_video(tmp_path / 'empty.mp4')
    (tmp_path / 'noise.mp4').write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match='Cannot decode'):
        V.read_video(tmp_path / 'noise.mp4')
    good = V.write_video(tmp_path / 'good.mp4', clip)
    data = good.read_bytes()
    (tmp_path / 'trunc.mp4').write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match='trunc.mp4'):
        V.read_video(tmp_path / 'trunc.mp4')
    with pytest.raises(ValueError, match='extension'):
        V.write_video(tmp_path / 'clip.avi2', clip)
    with pytest.raises(ValueError, match='to_uint8'):
        V.write_video(tmp_path / 'f.mp4', V.to_float(clip))
    with pytest.raises(ValueError, match=r'\[T, H, W, 3\]'):
        V.write_video(tmp_path / 'g.mp4', clip[0])
    assert not os.path.exists(tmp_path / 'f.mp4')
