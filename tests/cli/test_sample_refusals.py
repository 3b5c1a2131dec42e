"""experiments/sample.py refuses nonsense before it loads or compiles anything, one ERROR line
and a documented exit status each (sora_jax/cli.py): non-finite guidance, sizes of 0 or beyond
the maxima, a .webm it cannot sign, an output that exists or that another process is writing,
a directory as --out, broken LoRA files, an invalid-UTF-8 prompt; a damaged checkpoint is one
line (status 5); an mp4 run writes only the file it was asked for."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SHAPES = ROOT / 'checkpoints' / 'shapes'


def _run(args, tmp_path, prompt='a red circle', timeout=600):
    env = dict(
        os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(ROOT), XDG_CONFIG_HOME=str(tmp_path / 'c')
    )
    argv = [sys.executable, str(ROOT / 'experiments' / 'sample.py'), f'--prompt={prompt}']
    if not any(a.startswith('--checkpoint=') for a in args):
        argv.append(f'--checkpoint={SHAPES}')
    return subprocess.run(
        argv + args,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        errors='surrogateescape',
    )


def _one_error(r, code, message):
    errors = [line for line in r.stderr.splitlines() if line.startswith('ERROR: ')]
    assert r.returncode == code, r.stderr[-3000:]
    assert len(errors) == 1 and 'Traceback' not in r.stderr, r.stderr[-3000:]
    assert message in errors[0], errors[0]
    assert 'sampling' not in r.stderr  # refused before the sampler ran


@pytest.mark.parametrize(
    'flags,message',
    [
        (['--guidance_scale=nan'], '--guidance_scale=nan: not a finite number'),
        (['--guidance_scale=inf'], '--guidance_scale=inf: not a finite number'),
        (['--height=0', '--width=0'], '--height=0: must be in [1, 4096]'),
        (['--height=100000', '--width=100000'], '--height=100000: must be in [1, 4096]'),
        (['--num_frames=0'], '--num_frames=0: must be in [1, 1024]'),
        (['--steps=0'], '--steps=0: must be in [1, 1000]'),
        (
            ['--num_frames=1021', '--height=4096', '--width=4096'],
            'for the output alone; this machine has',
        ),
        (['--mode=t2v', '--out={tmp}/a.webm'], 'a .webm file cannot carry Content Credentials'),
        (['--out={tmp}'], 'is a directory; give a file name'),
        (['--lora={tmp}/x.safetensors:nan'], "the scale 'nan' is not a finite number"),
        (['--lora={tmp}/none.safetensors'], 'none.safetensors'),
    ],
)
def test_refused_before_loading(tmp_path, flags, message):
    flags = [f.replace('{tmp}', str(tmp_path)) for f in flags]
    if not any(f.startswith('--out=') for f in flags):
        flags.append(f'--out={tmp_path / "a.png"}')
    if not any(f.startswith('--mode=') for f in flags):
        flags.append('--mode=t2i')
    r = _run(flags, tmp_path)
    _one_error(r, 2, message)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != 'c') == []


def test_read_only_output_is_refused_before_loading(tmp_path, read_only_dir):
    r = _run(['--mode=t2i', f'--out={read_only_dir / "a.png"}'], tmp_path)
    _one_error(r, 2, 'cannot write in')
    assert list(read_only_dir.iterdir()) == []


def test_broken_and_nan_lora_files_name_the_file(tmp_path):
    from safetensors.numpy import save_file

    nan = tmp_path / 'nan.safetensors'
    sd = {
        'transformer.blocks.0.attn2.to_v.lora_A.weight': np.full((4, 256), np.nan, np.float32),
        'transformer.blocks.0.attn2.to_v.lora_B.weight': np.zeros((256, 4), np.float32),
    }
    save_file(sd, str(nan))
    junk = tmp_path / 'junk.safetensors'
    junk.write_bytes(b'\xff' * 64)
    for path, message in ((nan, 'non-finite values'), (junk, 'its header claims')):
        r = _run(['--mode=t2i', f'--out={tmp_path / "a.png"}', f'--lora={path}'], tmp_path)
        _one_error(r, 2, f'LoRA file {path}')
        assert message in r.stderr


def test_invalid_utf8_prompt(tmp_path):
    r = _run(['--mode=t2i', f'--out={tmp_path / "a.png"}'], tmp_path, prompt='caf\udce9')
    _one_error(r, 2, '--prompt #1 is not valid UTF-8')


def test_existing_output_is_kept(tmp_path):
    out = tmp_path / 'a.png'
    out.write_bytes(b'my own picture')
    r = _run(['--mode=t2i', f'--out={out}'], tmp_path)
    _one_error(r, 4, 'exists; pass --overwrite to replace it')
    assert out.read_bytes() == b'my own picture'


def test_a_second_sampler_on_the_same_path_refuses(tmp_path):
    out = tmp_path / 'a.png'
    hold = (
        'import sys, time\nfrom sora_jax.io import outputs\n'
        'outputs.reserve(sys.argv[1])\nprint("held", flush=True)\ntime.sleep(120)\n'
    )
    p = subprocess.Popen(
        [sys.executable, '-c', hold, str(out)],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout.readline().strip() == 'held'
        r = _run(['--mode=t2i', f'--out={out}'], tmp_path)
        _one_error(r, 4, f'is in use by pid {p.pid}')
    finally:
        p.kill()
        p.wait()
    assert not out.exists()


@pytest.fixture(scope='module')
def damaged(tmp_path_factory):
    """Copies of the shipped bundle: without _METADATA, with an array file deleted, truncated."""
    root = tmp_path_factory.mktemp('damaged')
    state = Path('checkpoints') / '2800' / 'state'
    out = {}
    for name in ('no_metadata', 'deleted', 'truncated'):
        d = root / name
        shutil.copytree(SHAPES, d)
        big = max((d / state / 'ocdbt.process_0' / 'd').iterdir(), key=lambda p: p.stat().st_size)
        if name == 'no_metadata':
            (d / state / '_METADATA').unlink()
        elif name == 'deleted':
            big.unlink()
        else:
            big.write_bytes(big.read_bytes()[: big.stat().st_size // 2])
        out[name] = d
    return out


@pytest.mark.parametrize('name', ['no_metadata', 'deleted', 'truncated'])
def test_damaged_checkpoint_is_one_line(damaged, tmp_path, name):
    r = _run(
        ['--mode=t2i', f'--out={tmp_path / "a.png"}', f'--checkpoint={damaged[name]}'], tmp_path
    )
    _one_error(r, 5, f'cannot read checkpoint {damaged[name]}:')
    if name == 'no_metadata':
        assert 'state/_METADATA is missing' in r.stderr
    assert len(r.stderr.splitlines()) < 10, r.stderr[-3000:]
    assert not (tmp_path / 'a.png').exists()


@pytest.mark.slow
def test_mp4_run_writes_only_the_named_file(tmp_path):
    out = tmp_path / 'clip.mp4'
    r = _run(['--steps=1', '--noprogress', f'--out={out}'], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != 'c') == ['clip.mp4']
    r = _run(['--steps=1', '--noprogress', f'--out={out}', '--gif', '--overwrite'], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != 'c') == ['clip.gif', 'clip.mp4']
    from sora_jax.safety import provenance

    assert provenance.read(str(tmp_path / 'clip.gif'))['valid']


def test_nan_checkpoint_is_an_error_not_a_black_video(tmp_path):
    """A checkpoint whose weights hold NaN (a corrupted array file) is refused on load, one line
    (status 5), nothing written or signed."""
    import jax

    from configs import shapes as shapes_config
    from sora_jax.parallel import mesh as mesh_lib
    from sora_jax.train import checkpoint as ckpt
    from sora_jax.train import loop
    from sora_jax.train.objectives import flow as flow_objective

    c = shapes_config.get_config('tiny')
    mesh = mesh_lib.make_mesh((1, 1, 1, 1), devices=jax.devices()[:1])
    _, state, *_ = loop.init_state(c, mesh, mesh_lib.rules_dict(), flow_objective)
    leaves, tree = jax.tree.flatten(state.ema_params)
    leaves[0] = leaves[0].at[0].set(float('nan'))
    state = state.replace(ema_params=jax.tree.unflatten(tree, leaves))
    mngr = ckpt.manager(tmp_path / 'run' / 'checkpoints', async_save=False)
    ckpt.save(mngr, 1, state, config=c)
    out = tmp_path / 'a.png'
    r = _run(['--mode=t2i', f'--out={out}', f'--checkpoint={tmp_path / "run"}'], tmp_path)
    _one_error(r, 5, f'cannot read checkpoint {tmp_path / "run"}')
    assert 'NaN' in r.stderr and not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize('free', [0, 8192])
def test_full_disk_is_one_line_and_leaves_nothing(tmp_path, free, tmpfs):
    """A full disk (no room for the lock) or one that fills while the video is written (8 KiB
    free): exit 6, one line, the user's file on it untouched and no lock or partial output left
    (a tmpfs mount filled by the user's file; root only)."""
    disk = tmp_path / 'disk'
    disk.mkdir()
    with tmpfs(disk, 'size=256k'):
        mine = disk / 'mine.bin'
        with open(mine, 'wb', buffering=0) as f:  # fill it: the user's file takes every block
            try:
                while True:
                    f.write(b'\1' * 4096)
            except OSError:
                pass
        if free:
            os.truncate(mine, mine.stat().st_size - free)
        size = mine.stat().st_size
        r = _run(['--steps=1', '--noprogress', f'--out={disk / "clip.mp4"}'], tmp_path)
        errors = [line for line in r.stderr.splitlines() if line.startswith('ERROR: ')]
        assert r.returncode == 6, r.stderr[-3000:]
        assert len(errors) == 1 and 'Traceback' not in r.stderr, r.stderr[-3000:]
        assert sorted(p.name for p in disk.iterdir()) == ['mine.bin']
        assert mine.stat().st_size == size
