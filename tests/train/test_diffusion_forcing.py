"""Diffusion forcing (objective 'diffusion_forcing'): each latent-frame chunk is noised at its own
t, the DiT sees those times per token, and a tiny run (configs/shapes.py:tiny with a causal DiT)
trains with finite losses."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import shapes as shapes_config
from sora_jax.train import loop
from sora_jax.train import validate as validate_lib
from sora_jax.train.objectives import diffusion_forcing as df

pytestmark = pytest.mark.slow  # compiles and samples or trains for tens of seconds

CHUNK = 2  # latent frames per chunk (the temporal patch): the 4-frame tiny clips are 2 chunks


def _config():
    c = shapes_config.get_config('tiny')
    c.objective = 'diffusion_forcing'
    c.model.causal_chunk = CHUNK
    return c


def _batch(c, b=4):
    rng = np.random.default_rng(0)
    d = c.data
    video = rng.uniform(-1, 1, (b, d.num_frames, d.height, d.width, 3)).astype(np.float32)
    ids = rng.integers(1, 257, (b, c.text.max_length)).astype(np.int32)
    ids[:, 0] = 257
    return {'video': jnp.asarray(video), 'text_ids': jnp.asarray(ids)}


def test_chunks_get_their_own_noise_levels():
    c = _config()
    model = df.build_model(c, nnx.Rngs(0))
    batch = _batch(c)
    seen = {}
    dit_call = type(model.dit).__call__

    def spy(self, x, t, *a, **kw):  # record what the DiT is given
        seen['t'], seen['x'] = t, x
        return dit_call(self, x, t, *a, **kw)

    type(model.dit).__call__ = spy
    try:
        loss, metrics = df.loss_fn(model, batch, jax.random.key(3), c)
    finally:
        type(model.dit).__call__ = dit_call
    assert np.isfinite(float(loss))
    t = np.asarray(seen['t'])  # [B, N] per token
    n_chunks = c.data.num_frames // CHUNK
    per_chunk = t.reshape(4, n_chunks, -1)
    # one time per chunk (all its tokens agree), different between the chunks of one clip
    np.testing.assert_array_equal(per_chunk, per_chunk[:, :, :1].repeat(per_chunk.shape[2], 2))
    t_chunk = per_chunk[:, :, 0]
    spread = t_chunk.max(1) - t_chunk.min(1)
    assert (spread > 0.05).all(), spread
    np.testing.assert_allclose(float(metrics['t_chunk_spread']), spread.mean(), rtol=1e-5)
    # the input is noised frame by frame at its chunk's t: the chunk with the larger t is
    # further from the data
    dist = np.abs(np.asarray(seen['x']) - np.asarray(batch['video']))
    dist = dist.reshape(4, n_chunks, -1).mean(-1)
    assert (np.argmax(dist, 1) == np.argmax(t_chunk, 1)).all(), (dist, t_chunk)


def test_data_prediction_is_a_velocity_at_each_chunks_time():
    """flow.prediction='data': the DiT's output is x0, and the loss is the velocity loss of
    (x_t - x0_hat) / max(t_c, 0.05), each frame at its own chunk's t_c (not one t per clip)."""
    c = _config()
    c.flow.prediction = 'data'
    validate_lib.validate_config(c)
    model = df.build_model(c, nnx.Rngs(0))
    batch = _batch(c)
    seen = {}
    dit_call = type(model.dit).__call__

    def spy(self, x, t, *a, **kw):
        seen['x'], seen['t'] = x, t
        seen['out'] = dit_call(self, x, t, *a, **kw)
        return seen['out']

    type(model.dit).__call__ = spy
    try:
        loss, _ = df.loss_fn(model, batch, jax.random.key(3), c)
    finally:
        type(model.dit).__call__ = dit_call
    x0 = np.asarray(batch['video'], np.float64)
    x_t, out = np.asarray(seen['x'], np.float64), np.asarray(seen['out'], np.float64)
    n_chunks = c.data.num_frames // CHUNK
    t_chunk = np.asarray(seen['t']).reshape(4, n_chunks, -1)[:, :, 0]
    t_frame = np.repeat(t_chunk, CHUNK, 1)[:, :, None, None, None].astype(np.float64)
    noise = (x_t - (1 - t_frame) * x0) / t_frame
    want = np.mean(((x_t - out) / np.maximum(t_frame, 0.05) - (noise - x0)) ** 2)
    np.testing.assert_allclose(float(loss), want, rtol=1e-4)
    as_velocity = np.mean((out - (noise - x0)) ** 2)  # the output read as a velocity instead
    assert abs(as_velocity - want) > 1e-2 * want, (as_velocity, want)


def test_config_needs_a_causal_model():
    c = _config()
    c.model.causal_chunk = 0
    with pytest.raises(ValueError, match='model.causal_chunk'):
        validate_lib.validate_config(c)


def test_tiny_diffusion_forcing_run(tmp_path):
    c = _config()
    c.train.num_steps, c.train.log_every, c.train.checkpoint_every = 3, 1, 3
    c.train.eval_every = 0
    c.data.data_dir = os.path.join(str(tmp_path), 'data')
    metrics = loop.train_and_evaluate(c, os.path.join(str(tmp_path), 'work'))
    assert metrics['step'] == 3
    assert np.isfinite(metrics['loss']), metrics
    assert metrics['t_chunk_spread'] > 0.05, metrics
