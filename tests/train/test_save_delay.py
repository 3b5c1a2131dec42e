"""The fault-injection hook `train.debug_save_delay_s` (train/checkpoint.py): a save with the
delayed config handler waits, then commits like any other (the config readable, no temporary
directory left); before, Orbax found no args for the handler and the first save crashed."""

import os
import time

import numpy as np

from configs import shapes as shapes_config
from sora_jax.io import checkpoint as ckpt_io
from sora_jax.train import checkpoint as ckpt


def test_delayed_save_commits(tmp_path, caplog):
    c = shapes_config.get_config('tiny')
    cdir = tmp_path / 'checkpoints'
    mngr = ckpt.manager(cdir, save_delay_s=0.5, async_save=True)
    t0 = time.time()
    with caplog.at_level('WARNING'):
        ckpt.save(mngr, 1, {'x': np.arange(3.0)}, config=c)
        assert ckpt_io.unfinished(cdir)  # uncommitted while the hook waits
        mngr.wait_until_finished()
    assert time.time() - t0 >= 0.5
    assert sorted(os.listdir(cdir)) == ['1'] and mngr.latest_step() == 1
    assert ckpt_io.load_config(cdir).train.num_steps == c.train.num_steps
    assert 'No registered CheckpointArgs' not in caplog.text
    plain = ckpt.manager(tmp_path / 'plain', async_save=False)  # the undelayed path unchanged
    ckpt.save(plain, 2, {'x': np.arange(3.0)}, config=c)
    assert ckpt_io.load_config(tmp_path / 'plain').train.num_steps == c.train.num_steps
