"""Training on a video folder with broken files, end to end through experiments/train.py
(`--config.data.name=folder --config.data.folder=DIR`): the broken files are skipped, counted and
logged with their paths, training runs its steps, and the summary reports the count."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sora_jax.data import shapes
from sora_jax.io import video as V
from tests.xla import xla_flags

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CONFIG = """
from configs import shapes


def get_config(arg='tiny'):
    c = shapes.get_config(arg)
    c.data.folder = ''                 # a folder of videos + captions.jsonl (data.name='folder')
    c.data.spanish_prob = 0.0
    c.train.num_steps = 8              # = test_preemption's runs: same program, one XLA compile
    c.train.checkpoint_every = 8
    c.train.eval_every = 8             # no validation split: evaluation is skipped, not a crash
    c.train.log_example_ids = True     # test hook: workdir/example_ids.jsonl
    return c
"""
BROKEN = {
    'missing_caption': ['uncaptioned.mp4'],
    'unreadable': ['empty.mp4', 'noise.webm', 'truncated.mp4'],
    'too_short': ['short.mp4'],
    'too_small': ['tiny.gif'],
}


def _clip(i, t, h, w):
    return shapes.generate(3, i, num_frames=t, height=h, width=w)['video']


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp('videos')
    V.write_video(root / 'a.mp4', _clip(0, 6, 12, 12))
    V.write_video(root / 'b.webm', _clip(1, 5, 12, 16))
    V.write_video(root / 'sub' / 'c.gif', _clip(2, 4, 8, 8))
    V.write_video(root / 'uncaptioned.mp4', _clip(3, 6, 12, 12))
    V.write_video(root / 'short.mp4', _clip(4, 2, 12, 12))  # 2 < 4 frames
    V.write_video(root / 'tiny.gif', _clip(5, 6, 4, 4))  # 4 x 4 < 8 x 8
    (root / 'empty.mp4').write_bytes(b'')
    (root / 'noise.webm').write_bytes(np.random.default_rng(0).bytes(3000))
    data = (root / 'a.mp4').read_bytes()
    (root / 'truncated.mp4').write_bytes(data[: len(data) // 2])
    rows = [
        {'file': f, 'caption': f'clip {f}'}
        for f in (
            'a.mp4',
            'b.webm',
            'sub/c.gif',
            'short.mp4',
            'tiny.gif',
            'empty.mp4',
            'noise.webm',
            'truncated.mp4',
            'gone.mp4',
        )
    ]
    lines = [json.dumps(r) for r in rows] + ['{not json', json.dumps({'file': 'x.mp4'})]
    (root / 'captions.jsonl').write_text('\n'.join(lines) + '\n')
    return root


@pytest.fixture(scope='module')
def run(folder, tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    cfg = base / 'folder_config.py'
    cfg.write_text(CONFIG)
    work = base / 'folder_run'
    env = dict(
        os.environ,
        JAX_PLATFORMS='cpu',
        XLA_FLAGS=xla_flags(2),
        JAX_COMPILATION_CACHE_DIR=str(base / 'jax_cache'),  # shared with test_preemption
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
    )
    p = subprocess.run(
        [
            sys.executable,
            'experiments/train.py',
            f'--config={cfg}',
            f'--workdir={work}',
            '--config.data.name=folder',
            f'--config.data.folder={folder}',
            f'--config.data.data_dir={base / "folder_tfds"}',
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return p, work


def test_broken_files_skipped_and_training_runs(run):
    p, work = run
    assert p.returncode == 0, p.stderr[-4000:]
    final = dict(kv.split('=') for kv in p.stdout.split('final ', 1)[1].split())
    assert float(final['step']) == 8 and float(final['data_skipped']) == 6
    assert np.isfinite(float(final['loss'])) and float(final['preempted']) == 0
    assert sorted(os.listdir(work / 'checkpoints')) == ['8']
    ids = [
        i
        for line in (work / 'example_ids.jsonl').read_text().splitlines()
        for i in json.loads(line)['ids']
    ]
    # 3 usable clips, 8 batches of 8 over repeated, reshuffled epochs: each 21 or 22 times
    counts = sorted(np.unique(ids, return_counts=True)[1].tolist())
    assert len(ids) == 64 and counts == [21, 21, 22]


def test_run_writes_its_data_record(run):
    p, work = run
    assert p.returncode == 0, p.stderr[-4000:]
    rec = json.loads((work / 'data_record.json').read_text())  # beside the checkpoints
    ids = '\n'.join(sorted(['a.mp4', 'b.webm', 'sub/c.gif']))
    assert rec['clips'] == 3 and rec['licenses'] == {'unspecified': 3} and rec['creators'] == []
    assert rec['clip_ids_sha256'] == hashlib.sha256(ids.encode()).hexdigest()
    assert {k: v for k, v in rec['skipped'].items() if v} == {k: len(v) for k, v in BROKEN.items()}


def test_skips_logged_with_paths_and_summarised(run, folder):
    p, _ = run
    err = p.stderr
    assert 'data: 6 files skipped at build time' in err
    assert 'data summary: 6 files skipped' in err
    for reason, names in BROKEN.items():
        for name in names:
            assert f'skipping {folder / name} ({reason})' in err, (reason, name)
    assert 'caption for gone.mp4 but no such video' in err
    assert 'no validation split' in err
