"""Video-folder builder: good clips kept and cut to size, broken files skipped and counted."""

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from sora_jax.data import pipeline as P
from sora_jax.data import shapes
from sora_jax.data.builders import video_folder as VF
from sora_jax.io import video as V


def _clip(i, t, h, w):
    return shapes.generate(11, i, num_frames=t, height=h, width=w)['video']


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp('videos')
    V.write_video(root / 'good_a.mp4', _clip(0, 12, 40, 48))
    V.write_video(root / 'sub' / 'good_b.gif', _clip(1, 10, 36, 36))
    V.write_video(root / 'good_c.webm', _clip(2, 9, 32, 64))
    V.write_video(root / 'short.mp4', _clip(3, 3, 40, 48))  # < 8 frames
    V.write_video(root / 'small.mp4', _clip(4, 12, 16, 16))  # < 32 x 32
    V.write_video(root / 'uncaptioned.mp4', _clip(5, 12, 40, 48))  # no caption row
    (root / 'empty.mp4').write_bytes(b'')
    (root / 'noise.webm').write_bytes(np.random.default_rng(0).bytes(5000))
    data = (root / 'good_a.mp4').read_bytes()
    (root / 'truncated.mp4').write_bytes(data[: len(data) // 2])
    (root / 'notes.txt').write_text('not a video, ignored')
    rows = [
        {'file': 'good_a.mp4', 'caption': 'a red circle', 'caption_es': 'un círculo rojo'},
        {'file': 'sub/good_b.gif', 'caption': 'a blue star'},
        {'file': 'good_c.webm', 'caption': 'a green square'},
        {'file': 'short.mp4', 'caption': 'short'},
        {'file': 'small.mp4', 'caption': 'small'},
        {'file': 'empty.mp4', 'caption': 'empty'},
        {'file': 'noise.webm', 'caption': 'noise'},
        {'file': 'truncated.mp4', 'caption': 'truncated'},
        {'file': 'gone.mp4', 'caption': 'no such file'},
    ]
    lines = [json.dumps(r, ensure_ascii=False) for r in rows] + ['{not json']
    (root / 'captions.jsonl').write_text('\n'.join(lines) + '\n', encoding='utf-8')
    return root


@pytest.fixture(scope='module')
def built(folder, tmp_path_factory):
    config = VF.VideoFolderConfig(folder=str(folder), sizes=((8, 32, 32),))
    builder = VF.VideoFolder(
        config=config, data_dir=str(tmp_path_factory.mktemp('tfds')), file_format='array_record'
    )
    builder.download_and_prepare()
    return builder


def test_broken_files_skipped_and_counted(built):
    skipped = built.info.metadata['skipped']
    assert {k: len(v) for k, v in skipped.items()} == {
        'missing_caption': 1,
        'opted_out': 0,
        'license_not_allowed': 0,
        'unreadable': 3,
        'too_short': 1,
        'too_small': 1,
    }
    assert sorted(p.rsplit('/', 1)[-1] for p in skipped['unreadable']) == [
        'empty.mp4',
        'noise.webm',
        'truncated.mp4',
    ]
    assert skipped['missing_caption'][0].endswith('uncaptioned.mp4')
    assert skipped['too_short'][0].endswith('short.mp4')
    assert skipped['too_small'][0].endswith('small.mp4')
    assert built.info.metadata['captions_without_video'] == ['gone.mp4']
    assert built.info.metadata['files'] == 9
    assert built.info.metadata['kept'] == {'train': 3, 'validation': 0}
    reopened = tfds.builder_from_directory(built.data_dir).info.metadata  # persisted JSON
    assert {k: len(v) for k, v in reopened['skipped'].items()} == {
        k: len(v) for k, v in skipped.items()
    }


def test_no_usable_clip_is_a_clear_error(folder, tmp_path):
    config = VF.VideoFolderConfig(folder=str(folder), sizes=((64, 32, 32),))
    with pytest.raises(ValueError, match='too_short'):
        VF.build_video_folder(tmp_path, config)


def test_kept_clips_cut_to_size(built):
    src = built.as_data_source()['train']
    assert len(src) == 3
    by_file = {src[i]['file'].decode(): src[i] for i in range(len(src))}
    assert set(by_file) == {'good_a.mp4', 'sub/good_b.gif', 'good_c.webm'}
    for ex in by_file.values():
        assert ex['video'].shape == (8, 32, 32, 3) and ex['video'].dtype == np.uint8
    a = by_file['good_a.mp4']
    assert a['caption_en'].decode() == 'a red circle'
    assert a['caption_es'].decode() == 'un círculo rojo'
    assert by_file['sub/good_b.gif']['caption_es'] == b''
    # each kept clip is exactly the builder's cut of the decoded file
    for rel, ex in by_file.items():
        want = VF.cut_clip(V.read_video(f'{built.builder_config.folder}/{rel}'), (8, 32, 32), 1)
        np.testing.assert_array_equal(ex['video'], want)
    # the gif (square, 36 px) is only resized: close to the rendered frames
    orig = _clip(1, 10, 36, 36)[:8].astype(float).mean(axis=(1, 2))
    assert np.abs(by_file['sub/good_b.gif']['video'].mean(axis=(1, 2)) - orig).max() < 4
    # rebuilding with the same config reuses the build and its persisted metadata
    again = VF.build_video_folder(built.data_dir.split('/video_folder/')[0], built.builder_config)
    assert len(again['train']) == 3


def test_pipeline_serves_the_folder(built):
    src = built.as_data_source()['train']
    tok = lambda s: np.frombuffer(s.encode()[:32].ljust(32, b'\0'), np.uint8).astype(np.int32)
    batches = list(
        P.make_iterator(
            src,
            batch_size=2,
            seed=0,
            tokenize=tok,
            num_epochs=1,
            spanish_prob=1.0,
            drop_remainder=False,
            shard_index=0,
            shard_count=1,
        )
    )
    assert [b['video'].shape for b in batches] == [(2, 8, 32, 32, 3), (1, 8, 32, 32, 3)]
    texts = {
        bytes(r[r > 0].astype(np.uint8).tolist()).decode() for b in batches for r in b['text_ids']
    }
    # Spanish requested: used where present, English fallback elsewhere
    assert texts == {'un círculo rojo'[:32], 'a blue star', 'a green square'}


def test_size_rules_and_captions_csv(tmp_path):
    assert VF.pick_size(8, 32, 32, ((16, 64, 64), (8, 32, 32)), 1) == ((8, 32, 32), None)
    assert VF.pick_size(20, 64, 80, ((16, 64, 64), (8, 32, 32)), 1) == ((16, 64, 64), None)
    assert VF.pick_size(7, 64, 64, ((8, 32, 32),), 1) == (None, 'too_short')
    assert VF.pick_size(14, 64, 64, ((8, 32, 32),), 2) == (None, 'too_short')
    assert VF.pick_size(15, 64, 64, ((8, 32, 32),), 2) == ((8, 32, 32), None)
    assert VF.pick_size(16, 20, 64, ((8, 32, 32),), 1) == (None, 'too_small')
    clip = VF.cut_clip(np.zeros((20, 40, 80, 3), np.uint8), (4, 16, 16), 3)
    assert clip.shape == (4, 16, 16, 3)
    (tmp_path / 'c.csv').write_text('file,caption\na.mp4,hello\nb.mp4,\n', encoding='utf-8')
    assert VF.read_captions(str(tmp_path / 'c.csv')) == {
        'a.mp4': {'caption_en': 'hello', 'caption_es': ''}
    }
    with pytest.raises(ValueError, match='captions'):
        VF.VideoFolderConfig(folder=str(tmp_path / 'nowhere'))
