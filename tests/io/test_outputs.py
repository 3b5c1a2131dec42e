"""sora_jax/io/outputs.py: an output is checked before any work (directory, unwritable parent,
existing file, format), written under a temporary name and moved into place whole, never over
a file that exists without overwrite; two processes writing one path: the second refuses."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sora_jax.io import lock, outputs

REPO = Path(__file__).resolve().parents[2]


def test_refuses_a_directory_an_existing_file_and_a_bad_format(tmp_path):
    with pytest.raises(ValueError, match='is a directory; give a file name'):
        outputs.check(tmp_path)
    f = tmp_path / 'a.mp4'
    f.write_bytes(b'mine')
    with pytest.raises(outputs.OutputExistsError, match='exists; pass --overwrite'):
        outputs.check(f)
    assert outputs.check(f, overwrite=True) == str(f)
    with pytest.raises(ValueError, match=r"extension '.webm' is not one of \['.mp4'\]"):
        outputs.check(tmp_path / 'b.webm', formats=('.mp4',))
    (tmp_path / 'file').write_text('x')
    with pytest.raises(ValueError, match='is a file, not a directory'):
        outputs.check(tmp_path / 'file' / 'b.mp4')
    assert f.read_bytes() == b'mine'


def test_refuses_a_read_only_directory(read_only_dir):
    with pytest.raises(ValueError, match='cannot write in .*ro'):
        outputs.check(read_only_dir / 'sub' / 'a.mp4')
    with pytest.raises(ValueError, match='cannot write in .*ro'):
        outputs.check(read_only_dir / 'a.mp4')


def test_commit_is_whole_and_never_clobbers(tmp_path):
    out = tmp_path / 'sub' / 'a.txt'
    r = outputs.reserve(out)
    assert os.path.dirname(r.tmp) == str(out.parent) and r.tmp.endswith('.txt')
    Path(r.tmp).write_text('new')
    assert not out.exists()  # nothing under the user's name until commit
    out.write_text('appeared meanwhile')
    with pytest.raises(outputs.OutputExistsError, match='appeared while it was being written'):
        r.commit()
    assert out.read_text() == 'appeared meanwhile' and Path(r.tmp).read_text() == 'new'
    assert outputs.write_text(out, 'replaced', overwrite=True) == str(out)
    assert out.read_text() == 'replaced'
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(['a.txt', Path(r.tmp).name])


def test_abort_leaves_the_old_file(tmp_path):
    out = tmp_path / 'a.txt'
    out.write_text('old')
    with pytest.raises(RuntimeError):
        with outputs.reserved([out], overwrite=True) as (r,):
            Path(r.tmp).write_text('half')
            raise RuntimeError('crash mid-write')
    assert out.read_text() == 'old' and sorted(os.listdir(tmp_path)) == ['a.txt']


def test_second_process_writing_the_same_path_refuses(tmp_path):
    out = tmp_path / 'a.mp4'
    code = (
        'import sys, time\n'
        'from sora_jax.io import outputs\n'
        'r = outputs.reserve(sys.argv[1])\n'
        'print("reserved", flush=True)\n'
        'time.sleep(120)\n'
    )
    p = subprocess.Popen(
        [sys.executable, '-c', code, str(out)],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout.readline().strip() == 'reserved'
        with pytest.raises(lock.LockedError, match=f'in use by pid {p.pid}.*writing a.mp4'):
            outputs.reserve(out)
    finally:
        p.kill()
        p.wait()
    outputs.reserve(out).abort()  # its holder is dead: the stale lock is taken over
