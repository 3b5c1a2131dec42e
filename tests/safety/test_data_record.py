"""Training-data record of a video folder: per-clip creator / license / source, the
data.allowed_licenses and data.exclude filters (counted like the other skips), and a removal
request honoured by excluding and rebuilding (the record's counts and clip-id hash change)."""

import hashlib
import json

import pytest

from configs import shapes as shapes_config
from sora_jax.data import shapes
from sora_jax.data.builders import video_folder as VF
from sora_jax.io import video as V
from sora_jax.safety import record
from sora_jax.train import validate

# file, creator, license, source (a clip with no license; one too short to use)
CLIPS = [
    ('a.mp4', 'Ana', 'CC-BY-4.0', 'https://ex.org/a'),
    ('b.mp4', 'Ana', 'cc-by-4.0', ''),
    ('c.gif', 'Bo', 'cc0-1.0', ''),
    ('d.mp4', 'Cy', 'proprietary', ''),
    ('e.mp4', 'Dee', 'cc-by-4.0', ''),
    ('f.mp4', '', '', ''),
    ('sub/g.mp4', 'Eve', 'cc0-1.0', 'https://ex.org/g'),
    ('short.mp4', 'Bo', 'cc0-1.0', ''),
]


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp('credited')
    for i, (f, *_) in enumerate(CLIPS):
        t = 2 if f == 'short.mp4' else 4
        V.write_video(root / f, shapes.generate(5, i, num_frames=t, height=8, width=8)['video'])
    rows = [
        {
            'file': f,
            'caption': f'clip {f}',
            **({'creator': c} if c else {}),
            **({'license': lic} if lic else {}),
            **({'source': s} if s else {}),
        }
        for f, c, lic, s in CLIPS
    ]
    (root / 'captions.jsonl').write_text('\n'.join(json.dumps(r) for r in rows) + '\n')
    return root


def _config(folder, data_dir, exclude=''):
    c = shapes_config.get_config('tiny')
    c.data.name, c.data.folder, c.data.data_dir = 'folder', str(folder), str(data_dir)
    c.data.sizes = ((4, 8, 8),)
    c.data.allowed_licenses = ('cc-by-4.0', 'cc0-1.0')
    c.data.exclude = str(exclude)
    return c


def _ids_hash(ids):
    return hashlib.sha256('\n'.join(sorted(ids)).encode()).hexdigest()


def test_folder_record_with_licenses_and_opt_outs(folder, tmp_path):
    optout = tmp_path / 'optout.txt'
    optout.write_text('# removal requests\nbo\n  sub/g.mp4  \n')  # a creator, a file name
    rec = record.for_config(_config(folder, tmp_path / 'tfds', optout))
    kept = ['a.mp4', 'b.mp4', 'e.mp4']
    assert rec['clips'] == 3 and rec['clip_ids_sha256'] == _ids_hash(kept)
    assert rec['licenses'] == {'cc-by-4.0': 3}  # compared and counted case-insensitively
    assert rec['creators'] == [{'creator': 'Ana', 'clips': 2}, {'creator': 'Dee', 'clips': 1}]
    assert rec['sources'] == ['https://ex.org/a']
    # Bo's two clips and g.mp4 opted out (checked before the length); d and f: license
    assert rec['skipped'] == {
        'license_not_allowed': 2,
        'missing_caption': 0,
        'opted_out': 3,
        'too_short': 0,
        'too_small': 0,
        'unreadable': 0,
    }
    assert rec['filters'] == {'allowed_licenses': ['cc-by-4.0', 'cc0-1.0'], 'exclude_entries': 2}
    assert rec['dataset'] == f'video_folder:{folder.name}' and rec['synthetic'] is False
    text = record.describe(rec)
    assert 'Ana: 2 clips' in text and 'opted_out 3' in text

    # A removal request: Ana asks out. Same file edited in place -> a new build, new record.
    optout.write_text('# removal requests\nbo\n  sub/g.mp4  \nANA\n')
    after = record.for_config(_config(folder, tmp_path / 'tfds', optout))
    assert after['clips'] == 1 and after['clip_ids_sha256'] == _ids_hash(['e.mp4'])
    assert after['creators'] == [{'creator': 'Dee', 'clips': 1}]
    assert after['licenses'] == {'cc-by-4.0': 1}
    assert after['skipped']['opted_out'] == 5 and after['version'] != rec['version']
    assert record.record_hash(after) != record.record_hash(rec)


def test_any_license_and_csv_credits(folder, tmp_path):
    c = _config(folder, tmp_path / 'tfds')
    c.data.allowed_licenses = ()
    rec = record.for_config(c)
    assert rec['clips'] == 7 and rec['skipped']['too_short'] == 1
    assert rec['licenses'] == {'cc-by-4.0': 3, 'cc0-1.0': 2, 'proprietary': 1, 'unspecified': 1}
    assert [x['clips'] for x in rec['creators']] == [2, 1, 1, 1, 1]  # Ana Bo Cy Dee Eve
    (tmp_path / 'c.csv').write_text(
        'file,caption,creator,license,source\na.mp4,hi,Ana,cc0-1.0,\nb.mp4,yo,,,\n'
    )
    assert VF.read_captions(str(tmp_path / 'c.csv')) == {
        'a.mp4': {'caption_en': 'hi', 'caption_es': '', 'creator': 'Ana', 'license': 'cc0-1.0'},
        'b.mp4': {'caption_en': 'yo', 'caption_es': ''},
    }


def test_resumed_run_on_changed_data_keeps_the_earlier_record(tmp_path):
    first = record.build('d', '1', [{'id': 'a', 'creator': 'Ana'}, {'id': 'b'}])
    second = record.build('d', '1', [{'id': 'b'}])
    record.write_for_run(str(tmp_path), first)
    record.write_for_run(str(tmp_path), second)  # no checkpoints yet: a fresh run, replaced
    assert record.load(tmp_path) == second
    (tmp_path / 'checkpoints' / '8').mkdir(parents=True)
    record.write_for_run(str(tmp_path), second)  # resumed, same data: unchanged
    assert record.load(tmp_path) == second
    record.write_for_run(str(tmp_path), first)  # resumed on changed data: the old one is kept
    got = record.load(tmp_path)
    assert got['clips'] == 2 and got['earlier_records'] == [second]


def test_warm_started_run_keeps_the_source_record(folder, tmp_path):
    base = record.build('video_folder:old', '1', [{'id': 'x', 'creator': 'Zed'}])
    record.write(str(tmp_path / 'base'), base)
    c = _config(folder, tmp_path / 'tfds')
    c.train.init_from = str(tmp_path / 'base')
    rec = record.for_config(c)
    assert rec['init_from'] == base and rec['clips'] == 5
    assert 'warm-started from a run trained on: video_folder:old (1 clips' in record.describe(rec)
    c.train.init_from = str(tmp_path)  # a source without a record is said so
    assert record.for_config(c)['init_from'] == {'note': f'{tmp_path.name} has no data record'}


def test_bad_filter_config_is_a_clear_error(folder, tmp_path):
    c = _config(folder, tmp_path / 'tfds', tmp_path / 'missing.txt')
    with pytest.raises(ValueError, match=r'config.data.exclude=.*missing.txt.*no such file'):
        validate.validate_config(c)
    c = _config(folder, tmp_path / 'tfds')
    c.data.allowed_licenses = ('cc0-1.0', ' ')
    with pytest.raises(ValueError, match=r'config.data.allowed_licenses=.*license names'):
        validate.validate_config(c)
    c = shapes_config.get_config('tiny')
    c.data.allowed_licenses = ('cc0-1.0',)
    with pytest.raises(ValueError, match=r'allowed_licenses.*video folders.*unset it'):
        validate.validate_config(c)
    with pytest.raises(ValueError, match='exclude=.*is not a file'):
        VF.VideoFolderConfig(folder=str(folder), exclude=str(tmp_path / 'nope.txt'))


def test_duplicate_caption_rows_are_an_error_naming_both_lines(tmp_path):
    """A second row for a.mp4 would replace the first's creator and license in the record."""
    rows = [
        {'file': 'a.mp4', 'caption': 'one', 'creator': 'Ana', 'license': 'cc-by-4.0'},
        {'file': 'b.mp4', 'caption': 'two'},
        {'file': './a.mp4', 'caption': 'again', 'creator': 'Bo'},
    ]
    path = tmp_path / 'captions.jsonl'
    path.write_text('\n'.join(json.dumps(r) for r in rows) + '\n')
    with pytest.raises(ValueError, match=rf"{path}: lines 1 and 3 both describe './a.mp4'"):
        VF.read_captions(str(path))
    csv_path = tmp_path / 'captions.csv'
    csv_path.write_text('file,caption,creator\na.mp4,one,Ana\nb.mp4,two,\na.mp4,again,Bo\n')
    with pytest.raises(ValueError, match=rf"{csv_path}: lines 2 and 4 both describe 'a.mp4'"):
        VF.read_captions(str(csv_path))


def test_symlinks_out_of_the_folder_are_skipped_and_counted(tmp_path):
    root, outside = tmp_path / 'clips', tmp_path / 'private'
    root.mkdir()
    (outside / 'sub').mkdir(parents=True)
    for i, p in enumerate([root / 'a.mp4', outside / 'secret.mp4', outside / 'sub' / 's.mp4']):
        V.write_video(p, shapes.generate(5, i, num_frames=4, height=8, width=8)['video'])
    (root / 'link.mp4').symlink_to(outside / 'secret.mp4')
    (root / 'dirlink').symlink_to(outside / 'sub')
    (root / 'inner.mp4').symlink_to(root / 'a.mp4')  # inside the folder: fine
    rows = [{'file': f, 'caption': f'clip {f}'} for f in ('a.mp4', 'link.mp4', 'inner.mp4')]
    rows.append({'file': 'dirlink/s.mp4', 'caption': 'through a linked directory'})
    (root / 'captions.jsonl').write_text('\n'.join(json.dumps(r) for r in rows) + '\n')
    c = _config(root, tmp_path / 'data')
    c.data.allowed_licenses = ()
    rec = record.for_config(c)
    assert rec['clips'] == 2 and rec['skipped']['outside_folder'] == 1, rec
