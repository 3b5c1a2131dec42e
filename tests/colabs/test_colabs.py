"""The colabs run headless, top to bottom, on this machine (nbclient)."""

import os
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

from tests.xla import xla_flags

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _run(name, env):
    nb = nbformat.read(ROOT / 'colabs' / name, as_version=4)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(
            nb,
            timeout=600,
            kernel_name='python3',
            resources={'metadata': {'path': str(ROOT / 'colabs')}},
        ).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def _outputs(nb):
    return '\n'.join(
        o.get('text', '') for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', [])
    )


def test_train_shapes_notebook(tmp_path):
    nb = _run('train_shapes.ipynb', {'SORA_JAX_ROOT': str(ROOT), 'SORA_JAX_TRAIN_STEPS': '2'})
    assert "'step': 4" in _outputs(nb)
    assert '(4, 8, 8, 3)' in _outputs(nb)
    assert 'logged steps: [2, 4]' in _outputs(nb)  # log_every=2: two calls of 2 steps
    assert 'restored step 4 with ' in _outputs(nb)


@pytest.mark.skipif(
    not (ROOT / 'checkpoints' / 'shapes' / 'checkpoints').is_dir(), reason='no shipped checkpoint'
)
def test_quickstart_notebook():
    nb = _run('quickstart.ipynb', {'SORA_JAX_ROOT': str(ROOT), 'SORA_JAX_STEPS': '4'})
    assert '(2, 16, 32, 32, 3) uint8' in _outputs(nb)


def test_sweep_and_compare_notebook(tmp_path):
    # The step counts and device count of tests/sweep/test_sweep.py's sweep (same learning rates): the
    # session's compilation cache serves the programs of whichever of the two runs second.
    sets = ' '.join(
        [
            'train.num_steps=8',
            'train.eval_every=8',
            'train.log_every=2',
            'train.checkpoint_every=4',
            f'data.data_dir={tmp_path / "data"}',
        ]
    )
    nb = _run(
        'sweep_and_compare.ipynb',
        {
            'SORA_JAX_ROOT': str(ROOT),
            'SORA_JAX_SWEEP_DIR': str(tmp_path / 'sweep'),
            'SORA_JAX_SWEEP_SET': sets,
            'SORA_JAX_SAVE_PLOT': str(tmp_path / 'loss.png'),
            'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
            'XLA_FLAGS': xla_flags(2),
        },
    )
    out = _outputs(nb)
    assert "{'done': 4}" in out
    assert "curves: {'00_learning_rate=0.001,seed=0': 4, " in out
    assert "'samples_00.gif': (4, 32, 32, 3), 'samples_01.gif': (4, 32, 32, 3)" in out
    assert (tmp_path / 'loss.png').stat().st_size > 10_000
