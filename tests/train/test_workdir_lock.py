"""One training run per workdir (sora_jax/io/lock.py, wired in train/loop.py): a second
experiments/train.py on a workdir another process holds refuses at once with one line naming
the owner (exit status 4), a lock left by a dead process is taken over with a warning, and the
lock is released however the run ends."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from configs import shapes as shapes_config
from sora_jax.io import lock
from sora_jax.train import loop

REPO = Path(__file__).resolve().parents[2]
HOLD = (
    'import sys, time\n'
    'from sora_jax.io import lock\n'
    'with lock.workdir(sys.argv[1], what="holder"):\n'
    '    print("held", flush=True)\n'
    '    time.sleep(120)\n'
)


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')


@pytest.fixture
def holder(tmp_path):
    """Another process holding tmp_path/run's lock: (workdir, its pid)."""
    workdir = tmp_path / 'run'
    p = subprocess.Popen(
        [sys.executable, '-c', HOLD, str(workdir)], env=_env(), stdout=subprocess.PIPE, text=True
    )
    try:
        assert p.stdout.readline().strip() == 'held'
        yield workdir, p.pid
    finally:
        p.kill()
        p.wait()


def test_second_train_process_refuses_naming_the_owner(holder):
    workdir, pid = holder
    t0 = time.time()
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / 'experiments' / 'train.py'),
            '--config=configs/shapes.py:tiny',
            f'--workdir={workdir}',
            '--config.train.num_steps=2',
        ],
        env=_env(),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert r.returncode == 4, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith('ERROR:')]
    assert len(errors) == 1 and 'Traceback' not in r.stderr, r.stderr[-3000:]
    assert f'in use by pid {pid} on host {socket.gethostname()}' in errors[0]
    assert '(holder)' in errors[0]
    assert not (workdir / 'checkpoints').exists()  # refused before anything was written
    assert time.time() - t0 < 60


def test_train_and_evaluate_refuses_in_process(holder):
    workdir, pid = holder
    with pytest.raises(lock.LockedError, match=f'pid {pid}'):
        loop.train_and_evaluate(shapes_config.get_config('tiny'), str(workdir))


def test_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    path = tmp_path / lock.WORKDIR_LOCK
    path.write_text(json.dumps({'host': socket.gethostname(), 'pid': dead.pid, 'started': 'x'}))
    with caplog.at_level('WARNING'):
        with lock.workdir(str(tmp_path)) as held:
            assert json.loads(path.read_text())['pid'] == os.getpid() == held.owner['pid']
    assert f'stale lock {path} of pid {dead.pid}' in caplog.text
    assert not path.exists()  # released


def test_lock_of_another_host_is_never_taken_over(tmp_path):
    path = tmp_path / lock.WORKDIR_LOCK
    path.write_text(json.dumps({'host': 'elsewhere', 'pid': 1, 'started': 'x'}))
    with pytest.raises(lock.LockedError, match=f'pid 1 on host elsewhere.*delete {path}'):
        lock.acquire(str(path))
    assert json.loads(path.read_text())['host'] == 'elsewhere'


def test_released_when_the_run_fails(tmp_path):
    c = shapes_config.get_config('tiny')
    c.train.init_from = str(tmp_path / 'no_such_run')
    with pytest.raises(ValueError, match='init_from'):
        loop.train_and_evaluate(c, str(tmp_path / 'run'))
    assert not (tmp_path / 'run' / lock.WORKDIR_LOCK).exists()
    with lock.workdir(str(tmp_path / 'run')):  # free again
        pass


def test_other_hosts_and_remote_paths_hold_nothing(tmp_path):
    with lock.workdir(str(tmp_path), enabled=False) as held:
        assert held is None and not (tmp_path / lock.WORKDIR_LOCK).exists()
    with lock.workdir('gs://bucket/run') as held:
        assert held is None
