"""`models/frozen_vae.load` reads the VAE of a VAE run's checkpoint without the training package:
the params themselves, or the `.vae` part of a GAN run (train/objectives/vae.py's
VAEWithDiscriminator), for each way the objective builds its model."""

import jax
import numpy as np
import pytest
from flax import nnx

from configs import shapes as shapes_config
from sora_jax.models import frozen_vae
from sora_jax.models.vae import WanVAE
from sora_jax.train import checkpoint as ckpt
from sora_jax.train.objectives import vae as vae_objective


@pytest.mark.slow
@pytest.mark.parametrize('use_gan, disc_weight', [(False, 0.1), (True, 0.1), (True, 0.0)])
def test_load_keeps_the_vae_of_any_vae_run(tmp_path, use_gan, disc_weight):
    c = shapes_config.get_config('tiny_vae')
    c.vae.use_gan, c.vae.disc_weight = use_gan, disc_weight
    model = vae_objective.build_model(c, nnx.Rngs(3))  # not load's Rngs(0): weights must load
    gan = isinstance(model, vae_objective.VAEWithDiscriminator)
    assert gan == (use_gan and disc_weight > 0)
    mngr = ckpt.manager(tmp_path / 'checkpoints', async_save=False)
    ckpt.save(mngr, 5, {'ema_params': nnx.state(model, nnx.Param)}, config=c)
    mngr.wait_until_finished()
    vae = frozen_vae.load(tmp_path)
    assert vae.step == 5 and isinstance(vae.module, WanVAE)
    want = jax.tree.leaves(nnx.state(vae_objective.vae_of(model), nnx.Param))
    got = jax.tree.leaves(nnx.state(vae.module, nnx.Param))
    assert len(got) == len(want) > 0
    for w, g in zip(want, got):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    fresh = jax.tree.leaves(nnx.state(WanVAE(c.vae, rngs=nnx.Rngs(0)), nnx.Param))
    assert any(not np.array_equal(np.asarray(f), np.asarray(g)) for f, g in zip(fresh, got))


def test_load_refuses_a_dit_run(tmp_path):
    c = shapes_config.get_config('tiny')
    mngr = ckpt.manager(tmp_path / 'checkpoints', async_save=False)
    ckpt.save(mngr, 1, {'ema_params': {'x': np.zeros(1)}}, config=c)
    mngr.wait_until_finished()
    with pytest.raises(ValueError, match="holds a 'flow' model, not a VAE"):
        frozen_vae.load(tmp_path)
