"""Preemption and exact resume, with real processes of experiments/train.py (tiny config, 8 steps,
64 clips of 8 = one epoch):

  ref  uninterrupted, 8 steps                                    (runs alongside p1)
  p1   SIGTERM after step 2 is logged -> finishes the step, checkpoints k, exits 0
  p2   resumes from k; SIGKILL while its step-4 save is uncommitted (save delay test hook)
  p3   resumes: warns about the unfinished save, restores k, trains to 8
  nan  (alongside p3) NaN inputs from step 3, train.max_nonfinite=2: stops at step 4

p3's final state, per-step losses and example ids must equal ref's bitwise; every clip is seen
exactly once. A persistent XLA cache shared by the processes keeps them to one compile.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import shapes as shapes_config
from sora_jax.train import sources as sources_lib
from tests.xla import xla_flags

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CONFIG = """
from configs import shapes


def get_config(arg='tiny'):
    c = shapes.get_config(arg)
    c.train.num_steps = 8
    c.train.checkpoint_every = 4
    c.train.log_every = 1
    c.train.log_example_ids = True     # test hook: workdir/example_ids.jsonl
    c.train.debug_sleep_per_step = 0.0  # test hook: seconds after each step
    c.train.debug_save_delay_s = 0.0    # test hook: stall checkpoint commits
    c.train.debug_nan_from_step = 0     # test hook: NaN inputs from this step on
    return c
"""


# the fault-injection run of the last test (started by the fixture, next to p3)
NAN_FLAGS = (
    '--config.train.debug_nan_from_step=3',
    '--config.train.max_nonfinite=2',
    '--config.train.checkpoint_every=1',
)


def subprocess_env(base: Path) -> dict:
    return dict(
        os.environ,
        JAX_PLATFORMS='cpu',
        XLA_FLAGS=xla_flags(2),
        JAX_COMPILATION_CACHE_DIR=str(base / 'jax_cache'),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
        PYTHONUNBUFFERED='1',
    )


def launch(base: Path, workdir: Path, *overrides: str) -> subprocess.Popen:
    """experiments/train.py on the wrapper config; stdout/stderr go to files in workdir/.."""
    cfg = base / 'reliability_config.py'
    if not cfg.exists():
        cfg.write_text(CONFIG)
    name = workdir.name
    out = open(base / f'{name}.out', 'a')
    err = open(base / f'{name}.err', 'a')
    cmd = [
        sys.executable,
        'experiments/train.py',
        f'--config={cfg}',
        f'--workdir={workdir}',
        *overrides,
    ]
    return subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(base), stdout=out, stderr=err)


def wait_for(predicate, proc, timeout=900.0, what=''):
    t0 = time.time()
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f'process exited ({proc.returncode}) before {what}')
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError(f'timed out waiting for {what}')
        time.sleep(0.05)


def committed(ckdir: Path) -> list[int]:
    return sorted(int(p.name) for p in ckdir.iterdir() if p.name.isdigit())


def unfinished(ckdir: Path) -> list[str]:
    return sorted(p.name for p in ckdir.iterdir() if '.orbax-checkpoint-tmp' in p.name)


def read_state(step_dir: Path) -> dict:
    """A saved train state as {path: numpy array} (RNG keys as their key data)."""
    path = step_dir / 'state'
    ckptr = ocp.PyTreeCheckpointer()
    meta = ckptr.metadata(path)
    meta = getattr(getattr(meta, 'item_metadata', meta), 'tree', meta)
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    args = jax.tree.map(lambda m: ocp.ArrayRestoreArgs(sharding=dev), meta)
    tree = ckptr.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))
    out = {}
    for p, v in jax.tree.leaves_with_path(tree):
        if jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key):
            v = jax.random.key_data(v)
        out[jax.tree_util.keystr(p)] = np.asarray(v)
    return out


def read_ids(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / 'example_ids.jsonl').read_text().splitlines()]


def _text(base, name):
    return (base / f'{name}.out').read_text() + (base / f'{name}.err').read_text()


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    sources_lib.make_sources(
        shapes_config.get_config('tiny')
    )  # build the data once, before 2 readers
    ref_dir, res_dir = base / 'ref', base / 'resumed'
    ck = res_dir / 'checkpoints'
    t0 = time.time()
    ref = launch(base, ref_dir)
    p1 = launch(base, res_dir, '--config.train.debug_sleep_per_step=1.0')
    ids_file = res_dir / 'example_ids.jsonl'
    wait_for(
        lambda: ids_file.exists() and len(ids_file.read_text().splitlines()) >= 2,
        p1,
        what='step 2 of the first run',
    )
    p1.send_signal(signal.SIGTERM)
    p1_rc = p1.wait(timeout=600)
    after_p1 = committed(ck)
    p2 = launch(base, res_dir, '--config.train.debug_save_delay_s=120')
    wait_for(lambda: ck.exists() and unfinished(ck), p2, what='an uncommitted save')
    p2.send_signal(signal.SIGKILL)
    p2_rc = p2.wait(timeout=600)
    after_p2 = (committed(ck), unfinished(ck))
    p3 = launch(base, res_dir)
    nan = launch(base, base / 'nan', *NAN_FLAGS)  # independent: alongside p3
    p3_rc = p3.wait(timeout=900)
    ref_rc = ref.wait(timeout=900)
    nan_rc = nan.wait(timeout=900)
    return dict(
        base=base,
        ref=ref_dir,
        res=res_dir,
        rc=(ref_rc, p1_rc, p2_rc, p3_rc),
        nan_rc=nan_rc,
        after_p1=after_p1,
        after_p2=after_p2,
        after_p3=(committed(ck), unfinished(ck)),
        seconds=time.time() - t0,
    )


def test_sigterm_finishes_step_checkpoints_and_exits_zero(runs):
    base = runs['base']
    assert runs['rc'][1] == 0, _text(base, 'resumed')[-3000:]
    (k,) = runs['after_p1']  # exactly one checkpoint: the preemption save, before step 4's
    assert k in (2, 3)
    out = (base / 'resumed.out').read_text()
    assert f'Preempted at step {k}: checkpoint at step {k} saved in' in out
    assert 'Resume by re-running the same command' in out
    assert 'preempted=1' in out  # train.py's final metrics line


def test_sigkill_mid_save_leaves_an_ignored_unfinished_checkpoint(runs):
    base = runs['base']
    k = runs['after_p1'][0]
    assert runs['rc'][2] == -signal.SIGKILL
    steps, tmp = runs['after_p2']
    assert steps == [k] and len(tmp) == 1 and tmp[0].startswith('4.orbax-checkpoint-tmp')
    p3_log = (base / 'resumed.err').read_text().rsplit('Ignoring unfinished checkpoint', 1)
    assert len(p3_log) == 2 and tmp[0] in p3_log[1][:300]
    assert f'Resumed from step {k} ' in p3_log[1]
    assert (base / 'resumed.err').read_text().count('Resumed from step') == 2  # p2 and p3
    assert runs['rc'][3] == 0
    assert runs['after_p3'] == ([4, 8], [])  # re-saved, leftover cleaned up, keep=2


def test_resumed_run_equals_uninterrupted_bitwise(runs):
    assert runs['rc'][0] == 0 and runs['rc'][3] == 0
    ref_ids, res_ids = read_ids(runs['ref']), read_ids(runs['res'])
    assert [r['step'] for r in res_ids] == list(range(1, 9))
    assert res_ids == ref_ids  # same example ids and bitwise-equal losses (exact float repr)
    seen = [i for r in res_ids for i in r['ids']]
    assert sorted(seen) == list(range(64))  # one epoch: nothing repeated, nothing skipped
    a = read_state(runs['ref'] / 'checkpoints' / '8')
    b = read_state(runs['res'] / 'checkpoints' / '8')
    assert a.keys() == b.keys() and len(a) > 100
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert int(b["['step']"]) == 8
    print(f'preemption runs: {runs["seconds"]:.1f} s')


def test_nonfinite_streak_stops_the_run_and_checkpoints_stay_finite(runs):
    """Fault injection: NaN inputs from step 3; max_nonfinite=2 -> stop at step 4, exit != 0."""
    base, rc = runs['base'], runs['nan_rc']
    work = base / 'nan'
    err = (base / 'nan.err').read_text()
    assert rc == 7, err[-3000:]  # cli.EXIT['nonfinite']: an expected failure, one line
    assert 'ERROR: 2 non-finite steps in a row at step 4 (train.max_nonfinite=2)' in err
    assert 'step 3: non-finite loss or gradient; update skipped (1 in a row, 1 in all)' in err
    logged = read_ids(work)
    assert [r['step'] for r in logged] == [1, 2, 3, 4]
    assert np.isfinite([r['loss'] for r in logged[:2]]).all()
    assert np.isnan([r['loss'] for r in logged[2:]]).all()
    assert committed(work / 'checkpoints') == [2, 3]  # keep_checkpoints=2
    s2, s3 = (read_state(work / 'checkpoints' / str(s)) for s in (2, 3))
    for key, v in s3.items():
        if v.dtype.kind == 'f':
            assert np.isfinite(v).all(), key
        if 'step' not in key and 'nonfinite' not in key:  # skipped: params, EMA, Adam kept
            np.testing.assert_array_equal(v, s2[key], err_msg=key)
    assert int(s3["['nonfinite_total']"]) == 1 and int(s3["['step']"]) == 3
