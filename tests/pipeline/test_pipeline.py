"""TextToVideo on a tiny random model: modes reproduce known frames, SDEdit limits, loop
wrap-around, any size, seeds, batching, and clear errors for bad calls."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import shapes as shapes_config
from sora_jax.models import vae as vae_lib
from sora_jax.models.frozen_vae import FrozenVAE
from sora_jax.pipeline import TextToVideo

KW = dict(num_inference_steps=3, guidance_scale=2.0, progress=False)


def _config(**model):
    c = shapes_config.get_config('tiny')
    c.conditioning.enabled = True
    c.model.patch_size = (1, 2, 2)
    c.model.update(model)
    c.sample.num_frames, c.sample.height, c.sample.width = 5, 8, 8
    return c


@pytest.fixture(scope='module')
def pipe():
    return TextToVideo.from_config(_config())


@pytest.fixture(scope='module')
def latent_pipe():
    c = _config()
    vcfg = vae_lib.VAEConfig(
        base_dim=4,
        z_dim=4,
        dim_mult=(1, 2),
        num_res_blocks=1,
        temperal_downsample=(True,),
        latents_mean=None,
        latents_std=None,
    )
    # a 1-level VAE: 2x time would need (True,) -> temporal factor 2, spatial 2
    vae = vae_lib.WanVAE(vcfg, rngs=nnx.Rngs(0))
    gd, st = nnx.split(vae)
    c.latent_channels = 4
    return TextToVideo.from_config(c, vae=FrozenVAE(gd, st, None))


def test_t2v_shape_seed_and_batch(pipe):
    a = pipe(['a red circle moving to the left', 'un cuadrado azul'], seed=0, **KW)
    b = pipe(['a red circle moving to the left', 'un cuadrado azul'], seed=0, **KW)
    c = pipe(['a red circle moving to the left', 'un cuadrado azul'], seed=1, **KW)
    assert a.shape == (2, 5, 8, 8, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 1.0
    assert np.abs(a[0].astype(int) - a[1].astype(int)).mean() > 0.5  # prompts matter


@pytest.mark.parametrize('size', [(8, 16), (16, 8), (12, 12)])
def test_any_aspect_ratio(pipe, size):
    out = pipe('a green star growing', num_frames=3, height=size[0], width=size[1], **KW)
    assert out.shape == (1, 3, *size, 3)


def test_i2v_and_extend_reproduce_known_frames(pipe):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    out = pipe('a red circle', mode='i2v', image=image, **KW)
    np.testing.assert_array_equal(out[0, 0], image)  # pixel space: exact
    head = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    out = pipe('a red circle', mode='extend', video=head, **KW)
    np.testing.assert_array_equal(out[0, :2], head)
    tail = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    out = pipe('a red circle', mode='extend_backward', video=tail, **KW)
    np.testing.assert_array_equal(out[0, -2:], tail)
    out = pipe('a red circle', mode='connect', video=(head[:1], tail[1:]), **KW)
    np.testing.assert_array_equal(out[0, 0], head[0])
    np.testing.assert_array_equal(out[0, -1], tail[1])


def test_sdedit_limits(pipe):
    rng = np.random.default_rng(1)
    video = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    out0 = pipe('a red circle', mode='v2v', video=video, strength=0.0, **KW)
    np.testing.assert_array_equal(out0[0], video)
    out1 = pipe('a red circle', mode='v2v', video=video, strength=1.0, seed=3, **KW)
    t2v = pipe('a red circle', seed=3, **KW)
    np.testing.assert_array_equal(out1, t2v)  # strength 1 ignores the input entirely
    half = pipe('a red circle', mode='v2v', video=video, strength=0.5, seed=3, **KW)
    d_in = np.abs(half.astype(int) - video[None].astype(int)).mean()
    d_t2v = np.abs(half.astype(int) - t2v.astype(int)).mean()
    assert d_in < np.abs(t2v.astype(int) - video[None].astype(int)).mean() and d_t2v > 0


@pytest.mark.slow
def test_latent_modes_and_loop(latent_pipe):
    p = latent_pipe
    assert (p.temporal_factor, p.spatial_factor) == (2, 2)
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    out = p('a red circle', mode='i2v', image=image, num_frames=5, **KW)
    recon = p._to_uint8(
        p.vae.decode(p.vae.encode(jnp.asarray(image[None, None] / 127.5 - 1.0, jnp.float32)))
    )
    # frame 0 is the VAE round trip of the image (its latent is imposed exactly)
    assert np.abs(out[0, 0].astype(int) - recon[0, 0].astype(int)).max() <= 1
    loop = p('a red circle', mode='loop', image=image, num_frames=5, **KW)
    assert loop.shape[1] == 5 - 2  # the pinned tail (one latent = 2 frames) is dropped
    # latent wrap-around: the clip's last latent is its first (decoded frames then cycle)
    lat = p('a red circle', mode='loop', image=image, num_frames=5, output_type='latent', **KW)
    assert lat.shape == (1, 3, 4, 4, 4)
    np.testing.assert_array_equal(lat[:, -1], lat[:, 0])
    assert np.abs(lat[:, 1] - lat[:, 0]).max() > 1e-3  # the middle is generated, not copied


@pytest.mark.parametrize(
    'kwargs,match',
    [
        (dict(prompt=''), 'non-empty'),
        (dict(prompt='x', num_frames=0), 'num_frames'),
        (dict(prompt='x', num_frames=100000), 'num_frames'),
        (dict(prompt='x', height=7), 'height=7'),
        (dict(prompt='x', mode='zoom'), 'mode'),
        (dict(prompt='x', mode='i2v'), 'image'),
        (dict(prompt='x', sampler='rk45'), 'sampler'),
        (dict(prompt='x', strength=2.0), 'strength'),
        (dict(prompt=['a', 'b'], negative_prompt=['c']), 'negative prompts'),
        (dict(prompt='x', skip_guidance_scale=1.0, skip_layers=()), 'needs skip_layers'),
        (dict(prompt='x', skip_guidance_scale=1.0, skip_layers=(7,)), 'block indices'),
        (dict(prompt='x', skip_guidance_scale=-1.0), 'skip_guidance_scale'),
        (dict(prompt='x', skip_guidance_scale=1.0, skip_guidance_interval=(0.8, 0.2)), 'interval'),
    ],
)
def test_bad_calls_are_clear_errors(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipe(**{**KW, **kwargs})


def test_skip_layer_guidance_changes_the_sample_only_when_on(pipe):
    base = pipe('a red circle', seed=2, **KW)
    off = pipe('a red circle', seed=2, skip_guidance_scale=0.0, skip_layers=(0,), **KW)
    np.testing.assert_array_equal(base, off)
    on = pipe('a red circle', seed=2, skip_guidance_scale=3.0, skip_layers=(0,), **KW)
    assert on.shape == base.shape and np.abs(on.astype(int) - base).max() > 0


def test_long_prompt_truncated_matches_its_prefix(pipe):
    long = 'a red circle ' * 40  # 520 bytes > text.max_length
    a = pipe(long, seed=5, **KW)
    b = pipe(long[: pipe.text.tokenizer.max_length - 1], seed=5, **KW)
    np.testing.assert_array_equal(a, b)


def test_t2i_with_a_temporal_patch_returns_one_frame():
    """A DiT with temporal patch 2 (the shipped pixel-space model) cannot sample 1 frame; t2i
    samples the shortest clip it can and returns its first frame."""
    c = _config(patch_size=(2, 2, 2))
    p = TextToVideo.from_config(c)
    assert p.image_frames == 2
    img = p('a red circle', mode='t2i', seed=0, **KW)
    assert img.shape == (1, 1, 8, 8, 3) and img.dtype == np.uint8
    clip = p('a red circle', num_frames=2, seed=0, **KW)
    np.testing.assert_array_equal(img[:, 0], clip[:, 0])
