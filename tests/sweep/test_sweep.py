"""A 2x2 sweep of the tiny config through experiments/sweep.py (subprocesses sharing the test
session's persistent compile cache): run 01 is preempted (SIGTERM to the sweep mid-run) and
resumed by the second invocation, run 03 is made to fail (NaN inputs, max_nonfinite=1) while the
others go on; the summary has four rows with the right statuses, and each run's TensorBoard event
files read back with the scalars, the fixed-prompt video summaries and the hparams."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sora_jax.sweep import spec
from tests.xla import xla_flags

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CONFIG = """
from configs import shapes
from sora_jax.sweep.spec import product, sweep


def get_config(arg='tiny'):
    c = shapes.get_config(arg)
    c.data.data_dir = {data_dir!r}
    c.train.num_steps = 8
    c.train.checkpoint_every = 4
    c.train.log_every = 2
    c.train.eval_every = 8
    c.train.max_nonfinite = 1
    return c


def get_sweep(arg=None):
    # The learning rates and step counts of the sweep notebook's runs (tests/colabs/test_colabs.py): the
    # two share the session's compilation cache, so whichever runs second compiles nothing new.
    runs = product(sweep('train.learning_rate', [1e-3, 3e-3]), sweep('seed', [0, 1]))
    runs[1]['train.debug_sleep_per_step'] = 1.0   # slow enough to be preempted mid-run
    runs[3]['train.debug_nan_from_step'] = 1      # made to fail: FloatingPointError
    return runs
"""


def _env(base: Path) -> dict:
    return dict(
        os.environ,
        JAX_PLATFORMS='cpu',
        PYTHONUNBUFFERED='1',
        XLA_FLAGS=xla_flags(2),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
    )


def _sweep_cmd(cfg: Path, work: Path, *extra: str) -> list[str]:
    return [sys.executable, 'experiments/sweep.py', f'--config={cfg}', f'--workdir={work}', *extra]


def _statuses(work: Path) -> dict:
    with open(work / 'summary.csv') as f:
        return {r['name']: r for r in csv.DictReader(f)}


@pytest.fixture(scope='module')
def swept(tmp_path_factory):
    base = tmp_path_factory.mktemp('sweep')
    cfg = base / 'sweep_config.py'
    cfg.write_text(CONFIG.format(data_dir=str(base / 'data')))
    work = base / 'sweep'
    names = spec.run_names(spec.expand(str(cfg), None)[1])
    first = subprocess.Popen(
        _sweep_cmd(cfg, work),
        cwd=REPO,
        env=_env(base),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    metrics = work / names[1] / 'metrics.jsonl'
    t0 = time.time()
    while not (metrics.exists() and metrics.read_text().strip()):  # run 01 logged step 2
        assert first.poll() is None, first.stdout.read()[-4000:]
        assert time.time() - t0 < 900, 'run 01 never logged'
        time.sleep(0.1)
    first.send_signal(signal.SIGTERM)
    out1, _ = first.communicate(timeout=600)
    after_first = _statuses(work)
    second = subprocess.run(
        _sweep_cmd(cfg, work),
        cwd=REPO,
        env=_env(base),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    return names, work, first.returncode, out1, after_first, second


def test_preempted_sweep_stops_and_records(swept):
    names, work, rc1, out1, after_first, _ = swept
    assert rc1 == 0, out1[-4000:]
    assert [after_first[n]['status'] for n in names] == [
        'done',
        'preempted',
        'pending',
        'pending',
    ], out1[-4000:]
    assert 0 < int(float(after_first[names[1]]['step'])) < 8


def test_second_invocation_resumes_skips_and_records_failure(swept):
    names, work, _, _, _, second = swept
    assert second.returncode == 1, second.stdout[-4000:] + second.stderr[-4000:]  # one failed
    assert f'{names[0]}: done (skipped)' in second.stdout
    rows = _statuses(work)
    assert len(rows) == 4
    assert [rows[n]['status'] for n in names] == ['done', 'done', 'done', 'failed']
    assert [int(rows[n]['attempts']) for n in names] == [1, 2, 1, 1]
    assert 'Resumed from step' in (work / names[1] / 'train.log').read_text()
    assert 'non-finite steps' in rows[names[3]]['error'], rows[names[3]]['error']
    for n in names[:3]:
        assert int(float(rows[n]['step'])) == 8
        assert np.isfinite(float(rows[n]['train_loss'])) and np.isfinite(
            float(rows[n]['eval_loss'])
        )
        assert 0.0 <= float(rows[n]['judge/all']) <= 1.0 and float(rows[n]['steps_per_sec']) > 0
    md = (work / 'summary.md').read_text().splitlines()
    assert len(md) == 2 + 4 and all(n in '\n'.join(md) for n in names)


def test_event_files_read_back(swept):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    names, work, *_ = swept
    for n in names[:3]:
        ea = EventAccumulator(str(work / n / 'tb'), size_guidance={'images': 0, 'scalars': 0})
        ea.Reload()
        tags = ea.Tags()
        assert {'loss', 'lr', 'grad_norm', 'perf/tokens_per_sec', 'eval/loss', 'judge/all'} <= set(
            tags['scalars']
        )
        steps = [e.step for e in ea.Scalars('loss')]  # the preempted run also logs its last step
        assert {2, 4, 6, 8} <= set(steps) and steps == sorted(set(steps)), steps
        assert tags['images'] == ['samples/00', 'samples/01']
        assert ea.Images('samples/00')[-1].encoded_image_string[:6] == b'GIF89a'
        assert '_hparams_/session_start_info' in ea.PluginTagToContent('hparams')
    hp = EventAccumulator(str(work / 'hparams' / names[0]))
    hp.Reload()
    assert '_hparams_/session_start_info' in hp.PluginTagToContent('hparams')
    assert {'final/train_loss', 'final/eval_loss'} <= set(hp.Tags()['scalars'])


def test_dry_run_and_print_only(tmp_path):
    cfg = tmp_path / 'c.py'
    cfg.write_text(CONFIG.format(data_dir=str(tmp_path / 'data')))
    out = subprocess.run(
        _sweep_cmd(cfg, tmp_path / 's', '--dry_run'),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 4 and lines[0].startswith('00_learning_rate=0.001,seed=0  [pending]')
    assert lines[3].startswith('03_learning_rate=0.003,seed=1,debug_nan_from_step=1  [pending]')
    out = subprocess.run(
        _sweep_cmd(cfg, tmp_path / 's', '--print_only'),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.count('experiments/train.py') == 4
    assert '--config.train.debug_nan_from_step=1' in out.stdout.splitlines()[3]
    assert not (tmp_path / 's').exists()  # nothing ran


def test_spec_helpers():
    runs = spec.product(
        spec.sweep('train.learning_rate', [1e-3, 3e-4]),
        spec.zipit(spec.sweep('model.dim', [32, 64]), spec.sweep('seed', [0, 1])),
    )
    assert len(runs) == 4 and runs[1] == {'train.learning_rate': 1e-3, 'model.dim': 64, 'seed': 1}
    assert spec.run_names(runs)[3] == '03_learning_rate=0.0003,dim=64,seed=1'
    with pytest.raises(ValueError, match='one length'):
        spec.zipit(spec.sweep('a', [1]), spec.sweep('b', [1, 2]))
    with pytest.raises(ValueError, match='swept twice'):
        spec.product(spec.sweep('a', [1]), spec.sweep('a', [2]))
    assert spec.flag_value((1, 2)) == '(1, 2)'
