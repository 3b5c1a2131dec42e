"""sora_jax/convert/repatch.py: a DiT re-cut to a shorter temporal patch keeps its blocks, embeds a
static clip as before and predicts, per frame, the mean of what the old head predicted."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import shapes as shapes_config
from sora_jax.convert import repatch
from sora_jax.io import checkpoint as ckpt_io
from sora_jax.models.dit import DiT, DiTConfig
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.pipeline import TextToVideo
from sora_jax.train import checkpoint as ckpt
from sora_jax.train import loop
from sora_jax.train.objectives import flow as flow_objective

CFG = dict(in_channels=3, out_channels=3, dim=16, num_heads=2, ffn_dim=32, depth=1, text_dim=8)


def test_static_clip_embeds_the_same_and_head_is_the_frame_mean():
    old = DiT(DiTConfig(**CFG, patch_size=(4, 2, 2)), rngs=nnx.Rngs(0))
    new = DiT(DiTConfig(**CFG, patch_size=(2, 2, 2)), rngs=nnx.Rngs(1))
    pure = repatch.repatch_params(nnx.state(old, nnx.Param).to_pure_dict(), (4, 2, 2), 2, 3)
    st = nnx.state(new, nnx.Param)
    st.replace_by_pure_dict(pure)
    nnx.update(new, st)
    frame = jax.random.normal(jax.random.key(0), (1, 1, 4, 4, 3))
    static = jnp.tile(frame, (1, 8, 1, 1, 1))  # 8 equal frames
    e_old = old.patch_embedding(static)  # [1, 2 * 2 * 2, D]: 2 temporal tokens
    e_new = new.patch_embedding(static)  # [1, 4 * 2 * 2, D]
    np.testing.assert_allclose(
        e_new.reshape(1, 4, 4, -1),
        jnp.repeat(e_old.reshape(1, 2, 4, -1), 2, axis=1),
        rtol=1e-5,
        atol=1e-5,
    )
    h = jax.random.normal(jax.random.key(1), (5, 16))
    w_old = old.proj_out(h).reshape(5, 4, -1)  # frames 0..3 of a token
    w_new = new.proj_out(h).reshape(5, 2, -1)
    np.testing.assert_allclose(w_new, 0.5 * (w_old[:, :2] + w_old[:, 2:]), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(
        new.blocks.attn1.to_q.kernel[...], old.blocks.attn1.to_q.kernel[...]
    )
    with pytest.raises(ValueError, match='must divide'):
        repatch.repatch_params(nnx.state(old, nnx.Param).to_pure_dict(), (4, 2, 2), 3, 3)


def test_script_writes_a_loadable_warm_start(tmp_path):
    c = shapes_config.get_config('tiny')
    c.model.patch_size = (2, 2, 2)
    mesh = mesh_lib.make_mesh((1, 1, 1, 1), devices=jax.devices()[:1])
    _, state, *_ = loop.init_state(c, mesh, mesh_lib.rules_dict(), flow_objective)
    mngr = ckpt.manager(tmp_path / 'run' / 'checkpoints')
    ckpt.save(mngr, 3, state, config=c)
    mngr.wait_until_finished()
    step, old, new = repatch.repatch(str(tmp_path / 'run'), str(tmp_path / 'p1'), 1)
    assert (step, old, new) == (3, (2, 2, 2), (1, 2, 2))
    assert tuple(ckpt_io.load_config(tmp_path / 'p1' / 'checkpoints').model.patch_size) == (1, 2, 2)
    pipe = TextToVideo.from_checkpoint(tmp_path / 'p1')
    out = pipe('a red circle', num_frames=3, height=8, width=8, num_inference_steps=2)
    assert out.shape == (1, 3, 8, 8, 3)
