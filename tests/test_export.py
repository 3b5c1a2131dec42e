"""experiments/export.py: a training workdir -> an inference bundle of EMA (or raw) weights in
float16 that TextToVideo loads."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import shapes as shapes_config
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.pipeline import TextToVideo
from sora_jax.train import checkpoint as ckpt
from sora_jax.train import loop
from sora_jax.train.objectives import flow as flow_objective

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'experiments'))
import export  # noqa: E402


@pytest.mark.parametrize('ema', [True, False])
def test_export_ema_or_raw_weights(tmp_path, ema):
    c = shapes_config.get_config('tiny')
    mesh = mesh_lib.make_mesh((1, 1, 1, 1), devices=jax.devices()[:1])
    _, state, *_ = loop.init_state(c, mesh, mesh_lib.rules_dict(), flow_objective)
    state = state.replace(ema_params=jax.tree.map(lambda x: x * 0.5, state.ema_params))
    mngr = ckpt.manager(tmp_path / 'run' / 'checkpoints')
    ckpt.save(mngr, 3, state, config=c)
    mngr.wait_until_finished()
    step, n = export.export_params(
        str(tmp_path / 'run'),
        str(tmp_path / 'bundle'),
        flow_objective.build_model,
        'float16',
        ema=ema,
    )
    assert step == 3 and n == sum(x.size for x in jax.tree.leaves(state.params))
    pipe = TextToVideo.from_checkpoint(tmp_path / 'bundle')
    src = state.ema_params if ema else state.params
    for got, want in zip(jax.tree.leaves(pipe.params), jax.tree.leaves(src['dit'])):
        np.testing.assert_array_equal(
            np.asarray(got), np.asarray(jnp.asarray(want, jnp.float16), np.float32)
        )


def test_export_picks_a_step_and_names_the_saved_ones(tmp_path):
    c = shapes_config.get_config('tiny')
    mesh = mesh_lib.make_mesh((1, 1, 1, 1), devices=jax.devices()[:1])
    _, state, *_ = loop.init_state(c, mesh, mesh_lib.rules_dict(), flow_objective)
    mngr = ckpt.manager(tmp_path / 'run' / 'checkpoints', async_save=False)
    for step, scale in ((2, 0.5), (4, 2.0)):
        ckpt.save(
            mngr,
            step,
            state.replace(ema_params=jax.tree.map(lambda x: x * scale, state.ema_params)),
            config=c,
        )
    mngr.wait_until_finished()
    step, _ = export.export_params(
        str(tmp_path / 'run'), str(tmp_path / 'b2'), flow_objective.build_model, 'float32', step=2
    )
    assert step == 2
    pipe = TextToVideo.from_checkpoint(tmp_path / 'b2')
    for got, want in zip(jax.tree.leaves(pipe.params), jax.tree.leaves(state.ema_params['dit'])):
        np.testing.assert_allclose(np.asarray(got), 0.5 * np.asarray(want), rtol=1e-6)
    with pytest.raises(ValueError, match=r'no checkpoint at step 3.*\[2, 4\]'):
        export.export_params(
            str(tmp_path / 'run'),
            str(tmp_path / 'b3'),
            flow_objective.build_model,
            'float32',
            step=3,
        )
