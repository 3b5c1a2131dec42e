"""sora_jax/cli.py: every CLI turns expected failures into one ERROR line with a documented exit
status (a bug keeps its traceback, and --verbosity=1 shows one for everything): bad files and
paths for convert_wan / export / export_lora / reconstruct, and the mapping itself (full disk,
non-finite result, refused prompt, unreadable file)."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from absl import flags

from sora_jax import cli
from sora_jax.safety.moderation import PromptRefused

ROOT = Path(__file__).resolve().parents[2]


def _cli(script, *args):
    return subprocess.run(
        [sys.executable, str(ROOT / 'experiments' / script), *args],
        env=dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


def _one_line(r, code, message):
    errors = [line for line in r.stderr.splitlines() if line.startswith('ERROR: ')]
    assert r.returncode == code, r.stderr[-3000:]
    assert len(errors) == 1 and 'Traceback' not in r.stderr, r.stderr[-3000:]
    assert message in errors[0], errors[0]


def test_convert_wan_missing_source(tmp_path):
    r = _cli('convert_wan.py', f'--src={tmp_path / "none"}', f'--dst={tmp_path / "out"}')
    assert r.returncode == 2 and r.stderr.count('ERROR: ') == 1 and 'Traceback' not in r.stderr
    assert str(tmp_path / 'none') in r.stderr


def test_export_lora_keeps_an_existing_file(tmp_path):
    out = tmp_path / 'mine.safetensors'
    out.write_bytes(b'keep me')
    r = _cli('export_lora.py', f'--workdir={tmp_path}', f'--out={out}')
    _one_line(r, 4, 'exists; pass --overwrite')
    assert out.read_bytes() == b'keep me'


def test_export_and_reconstruct_name_an_unreadable_checkpoint(tmp_path):
    (tmp_path / 'run' / 'checkpoints').mkdir(parents=True)
    r = _cli('export.py', f'--dit={tmp_path / "run"}', f'--dst={tmp_path / "b"}')
    _one_line(r, 5, f'cannot read the DiT workdir {tmp_path / "run"}')
    r = _cli(
        'reconstruct.py',
        f'--checkpoint={tmp_path / "run"}',
        f'--input={tmp_path / "in.mp4"}',
        f'--out={tmp_path / "o.mp4"}',
    )
    _one_line(r, 5, f'cannot read checkpoint {tmp_path / "run"}')


@pytest.mark.parametrize(
    'error,code,text',
    [
        (OSError(errno.ENOSPC, 'No space left on device'), 6, 'No space left on device'),
        (OSError(errno.EROFS, 'Read-only file system'), 6, 'Read-only file system'),
        (FloatingPointError('the sampled latents hold NaN'), 7, 'hold NaN'),
        (PromptRefused('graphic_violence', 'gore', 'x'), 3, 'graphic_violence'),
        (ValueError('--x=1: bad\nsecond line'), 2, '--x=1: bad second line'),
        (cli.UnreadableError('cannot read a'), 5, 'cannot read a'),
        (FileNotFoundError(2, 'No such file', 'x.mp4'), 2, 'x.mp4'),
    ],
)
def test_expected_failures_are_one_line(error, code, text, capsys):
    def main(argv):
        raise error

    with pytest.raises(SystemExit) as e:
        cli.guard(main)([])
    err = capsys.readouterr().err
    assert e.value.code == code and err.count('\n') == 1 and err.startswith('ERROR: ')
    assert text in err


def test_bugs_keep_their_traceback():
    def main(argv):
        raise KeyError('a bug')

    with pytest.raises(KeyError):
        cli.guard(main)([])


def test_reading_wraps_any_reader_error():
    with pytest.raises(cli.UnreadableError, match=r'cannot read checkpoint x: missing .*; fix it'):
        with cli.reading('checkpoint x', 'fix it'):
            {}['_METADATA']
    assert cli.exit_code(cli.UnreadableError('x')) == 5
    assert 'verbosity' in flags.FLAGS  # absl's flag that turns tracebacks back on
