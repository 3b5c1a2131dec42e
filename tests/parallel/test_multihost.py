"""Two processes on 127.0.0.1 (jax.distributed, gloo CPU collectives, 2 simulated devices each)
train the tiny shapes DiT with experiments/train.py and checkpoint together with Orbax.

Launch 1 trains 4 steps (checkpoints at 2 and 4). Launch 2 runs on a copy of the workdir with
checkpoint 4 removed, so it resumes from step 2: it must reach the same step-4 loss and write
the same step-4 parameters as the uninterrupted launch, and the two processes of each launch
must report identical losses.
"""

import os
import re
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.xla import xla_flags

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = os.path.join(ROOT, 'experiments', 'train.py')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _launch(workdir, data_dir, cache_dir, timeout=900):
    """Both processes of one run; returns their stdout+stderr texts. The second launch reuses
    the first one's compiled executables (persistent compilation cache)."""
    port = _free_port()
    env = dict(
        os.environ,
        JAX_PLATFORMS='cpu',
        XLA_FLAGS=xla_flags(2),
        JAX_COMPILATION_CACHE_DIR=str(cache_dir),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0',
    )
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                TRAIN,
                '--config=configs/shapes.py:tiny',
                f'--workdir={workdir}',
                f'--config.data.data_dir={data_dir}',
                '--config.train.num_steps=4',
                '--config.train.checkpoint_every=2',
                '--config.train.log_every=2',
                f'--coordinator=127.0.0.1:{port}',
                '--num_processes=2',
                f'--process_id={i}',
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:  # only our own children, by handle
            if p.poll() is None:
                p.kill()
    for i, (p, o) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f'process {i} failed:\n{o[-4000:]}'
    return outs


def _final(out: str) -> dict[str, float]:
    line = [l for l in out.splitlines() if l.startswith('final ')][-1]
    return {k: float(v) for k, v in re.findall(r'(\S+)=(\S+)', line)}


def _params(ckpt_dir):
    """Step checkpoint -> {path: np.ndarray} of the train state's params, read as numpy."""
    import orbax.checkpoint as ocp

    path = os.path.join(ckpt_dir, 'state')
    meta = ocp.PyTreeCheckpointer().metadata(path)
    tree = meta.item_metadata.tree if hasattr(meta, 'item_metadata') else meta.tree
    import jax

    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    state = ocp.PyTreeCheckpointer().restore(path, restore_args=args)
    flat = jax.tree_util.tree_flatten_with_path(state['params'])[0]
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    from configs import shapes as shapes_config
    from sora_jax.train import sources as sources_lib

    tmp = tmp_path_factory.mktemp('multihost')
    data_dir = str(tmp / 'data')
    config = shapes_config.get_config('tiny')
    config.data.data_dir = data_dir
    sources_lib.make_sources(config)  # build the dataset once, before two processes read it
    full = tmp / 'full'
    out_full = _launch(full, data_dir, tmp / 'cache')
    resumed = tmp / 'resumed'
    shutil.copytree(full, resumed)
    shutil.rmtree(resumed / 'checkpoints' / '4')
    out_resumed = _launch(resumed, data_dir, tmp / 'cache')
    return full, out_full, resumed, out_resumed


def test_processes_agree(runs):
    _, out_full, _, out_resumed = runs
    for outs in (out_full, out_resumed):
        a, b = (_final(o) for o in outs)
        assert a['step'] == b['step'] == 4
        assert a['loss'] == b['loss'] and np.isfinite(a['loss'])
        assert 'process 1 of 2, 2 local / 4 global devices' in outs[1]


def test_resume_repeats_uninterrupted_run(runs):
    full, out_full, resumed, out_resumed = runs
    assert all('Resumed from step 2' in o for o in out_resumed)
    assert not any('Resumed' in o for o in out_full)
    assert _final(out_resumed[0])['loss'] == _final(out_full[0])['loss']
    a = _params(full / 'checkpoints' / '4')
    b = _params(resumed / 'checkpoints' / '4')
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-6, err_msg=k)
