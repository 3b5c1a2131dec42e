"""A tiny training run on the physics world (configs/world.py:tiny_vae, :tiny and :tiny_causal, 4
steps each, in process): the world's data builds and batches, the losses are finite and the VAE's
falls, the causal one trains diffusion forcing (chunks of one clip at different noise levels),
and a run resumed from its step-2 checkpoint ends bitwise where the uninterrupted one did."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from configs import world as world_config
from sora_jax.io import checkpoint as ckpt_io
from sora_jax.train import checkpoint as ckpt
from sora_jax.train import loop

pytestmark = pytest.mark.slow


def _run(arg: str, root: str, name: str):
    c = world_config.get_config(arg)
    c.data.data_dir = os.path.join(root, 'data')
    c.train.log_example_ids = True  # workdir/example_ids.jsonl: (step, ids, loss)
    work = os.path.join(root, name)
    metrics = loop.train_and_evaluate(c, work)
    with open(os.path.join(work, 'example_ids.jsonl')) as f:
        losses = [json.loads(line)['loss'] for line in f]
    return c, work, metrics, losses


def _params(work: str):
    mngr = ckpt.manager(os.path.join(work, 'checkpoints'), create=False)
    saved = mngr.item_metadata(mngr.latest_step())['state']
    saved = getattr(saved, 'tree', saved)
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), saved['params'])
    params, _ = ckpt_io.restore_params(os.path.join(work, 'checkpoints'), abstract, ema=False)
    return params


@pytest.mark.parametrize('arg', ['tiny_vae', 'tiny', 'tiny_causal'])
def test_tiny_world_run_trains_and_resumes_exactly(arg, tmp_path):
    root = str(tmp_path)
    c, work_a, metrics, losses = _run(arg, root, 'a')  # 4 steps, checkpoints at 2 and 4
    assert metrics['step'] == 4 and len(losses) == 4
    assert np.all(np.isfinite(losses))
    if arg == 'tiny_vae':  # reconstruction from a random init falls within a few steps
        assert np.mean(losses[2:]) < losses[0], losses
    if arg == 'tiny_causal':  # block-causal DiT, one noise level per chunk of 2 frames
        assert c.objective == 'diffusion_forcing' and c.model.causal_chunk == 2
        assert metrics['t_chunk_spread'] > 0.05, metrics
    # resume: b starts from a's step-2 checkpoint and trains steps 3-4 on the same batches
    os.makedirs(os.path.join(root, 'b', 'checkpoints'))
    shutil.copytree(
        os.path.join(work_a, 'checkpoints', '2'), os.path.join(root, 'b', 'checkpoints', '2')
    )
    c.data.data_dir = os.path.join(root, 'data')
    c.train.log_example_ids = True
    loop.train_and_evaluate(c, os.path.join(root, 'b'))
    with open(os.path.join(root, 'b', 'example_ids.jsonl')) as f:
        resumed = [json.loads(line)['loss'] for line in f]
    assert resumed == losses[2:]
    for x, y in zip(jax.tree.leaves(_params(work_a)), jax.tree.leaves(_params(root + '/b'))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
