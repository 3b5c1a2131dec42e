"""What keeps a sampling call from returning a black video silently: non-finite or non-positive
options are refused in check_inputs, non-finite weights when a checkpoint loads, non-finite
latents after denoising (before anything decodes or signs them). And the two-expert family on a
tiny model: the switch at the boundary uses the second expert's params and guidance_scale_2."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from configs import shapes as shapes_config
from sora_jax.io import checkpoint as ckpt_io
from sora_jax.models import denoiser, frozen_vae
from sora_jax.models.vae import WanVAE
from sora_jax.pipeline import ModelFamily, TextToVideo
from sora_jax.train import checkpoint as train_ckpt

KW = dict(num_inference_steps=2, guidance_scale=2.0, progress=False, watermark=False)


def _config():
    c = shapes_config.get_config('tiny')
    c.model.patch_size = (1, 2, 2)
    c.sample.num_frames, c.sample.height, c.sample.width = 2, 8, 8
    return c


@pytest.fixture(scope='module')
def pipe():
    return TextToVideo.from_config(_config())


@pytest.fixture(scope='module')
def experts(pipe):
    """The same tiny DiT as two experts: the second's weights scaled, the boundary at t = 0.5."""
    family = ModelFamily.of_config(pipe.config, boundary_ratio=0.5)
    params_2 = jax.tree.map(lambda x: 1.5 * x, pipe.params)
    return TextToVideo(
        pipe.config, pipe.graphdef, pipe.params, pipe.text, family=family, params_2=params_2
    )


@pytest.mark.parametrize(
    'kwargs,match',
    [
        (dict(guidance_scale=float('nan')), r'guidance_scale=nan must be a finite number'),
        (dict(guidance_scale=float('inf')), r'guidance_scale=inf must be a finite number'),
        (dict(strength=float('nan'), mode='v2v'), r'strength=nan must be a finite number'),
        (dict(height=0), r'height=0 must be a positive int \(None: config.sample.height\)'),
        (dict(width=-8), r'width=-8 must be a positive int'),
        (dict(num_frames=0), r'num_frames=0 must be a positive int'),
        (dict(height=True), r'height=True must be a positive int'),
        (
            dict(skip_guidance_scale=float('nan')),
            r'skip_guidance_scale=nan must be >= 0 and finite',
        ),
    ],
)
def test_bad_numbers_are_one_line_errors(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match) as e:
        pipe('a red circle', **{**KW, **kwargs})
    assert '\n' not in str(e.value)


def test_none_means_the_config_default(pipe):
    out = pipe('a red circle', height=None, width=None, num_frames=None, **KW)
    assert out.shape == (1, 2, 8, 8, 3)


def test_guidance_scale_2_must_be_finite(experts):
    with pytest.raises(ValueError, match=r'guidance_scale_2=inf must be a finite number'):
        experts('a red circle', guidance_scale_2=float('inf'), **KW)


def test_two_experts_switch_at_the_boundary(pipe, experts):
    """Above the boundary only the first expert runs: one Euler step (the velocity at t = 1)
    agrees with the one-expert model; four steps (t = 1, .75, .5, .25) reach the second expert,
    with its own guidance scale."""
    one = dict(KW, sampler='euler', shift=1.0, output_type='latent', num_inference_steps=4)
    a = pipe('a red circle', **one)
    b = experts('a red circle', guidance_scale_2=2.0, **one)
    c = experts('a red circle', guidance_scale_2=5.0, **one)
    assert np.abs(a - b).max() > 1e-4 and np.abs(b - c).max() > 1e-4
    first = dict(one, num_inference_steps=1)
    np.testing.assert_array_equal(pipe('a red circle', **first), experts('a red circle', **first))
    with pytest.raises(ValueError, match='guidance_scale_2 is only used by a two-expert'):
        pipe('a red circle', guidance_scale_2=2.0, **KW)


def test_family_is_fixed_at_load_time(pipe, experts):
    assert pipe.family.boundary_ratio is None and experts.family.boundary_ratio == 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        experts.family.boundary_ratio = 0.7
    with pytest.raises(ValueError, match='params_2 is None but the family has boundary_ratio'):
        TextToVideo(pipe.config, pipe.graphdef, pipe.params, pipe.text, family=experts.family)


def test_non_finite_latents_are_an_error(pipe):
    bad = TextToVideo(
        pipe.config,
        pipe.graphdef,
        jax.tree.map(lambda x: x * np.nan, pipe.params),
        pipe.text,
    )
    for output_type in ('np', 'latent'):
        with pytest.raises(ValueError, match=r'sampling produced non-finite latents \(\d+ of'):
            bad('a red circle', output_type=output_type, **KW)


def _poison(params, key):
    """params with a NaN in the array at `key` (a '/'-joined path)."""

    def f(path, x):
        name = '/'.join(str(getattr(p, 'key', getattr(p, 'idx', p))) for p in path)
        return x.at[(0,) * x.ndim].set(np.nan) if name.startswith(key) else x

    return jax.tree_util.tree_map_with_path(f, params)


def test_a_checkpoint_with_nan_weights_is_refused(tmp_path):
    c = _config()
    params = nnx.state(denoiser.build_model(c, nnx.Rngs(0)), nnx.Param)
    good = jax.tree.leaves(params)
    key = next(
        '/'.join(str(getattr(p, 'key', p)) for p in path[:-1])
        for path, _ in jax.tree_util.tree_leaves_with_path(params)
        if 'dit' in str(path[0])
    )
    mngr = train_ckpt.manager(tmp_path / 'checkpoints', async_save=False)
    train_ckpt.save(mngr, 3, {'ema_params': _poison(params, key)}, config=c)
    mngr.wait_until_finished()
    with pytest.raises(ValueError) as e:
        TextToVideo.from_checkpoint(tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg and 'step 3' in msg and key in msg and '\n' not in msg
    assert 're-export the checkpoint or restore a good copy' in msg
    assert len(good) > 1  # the other arrays were fine: the message names the bad one


def test_a_vae_with_inf_weights_is_refused(tmp_path):
    c = shapes_config.get_config('tiny_vae')
    params = nnx.state(WanVAE(c.vae, rngs=nnx.Rngs(0)), nnx.Param)
    params = jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(np.inf), params)
    mngr = train_ckpt.manager(tmp_path / 'checkpoints', async_save=False)
    train_ckpt.save(mngr, 1, {'ema_params': params}, config=c)
    mngr.wait_until_finished()
    with pytest.raises(ValueError, match=rf'{tmp_path} step 1: parameter .* holds NaN or inf'):
        frozen_vae.load(tmp_path)


def test_check_finite_names_the_first_bad_array():
    tree = {'a': {'w': np.ones(3, np.float32)}, 'b': {'w': np.array([1.0, np.inf], np.float32)}}
    ckpt_io.check_finite({'a': tree['a'], 'n': np.arange(3)}, 'x')  # ints and finite: fine
    with pytest.raises(ValueError, match=r'^ckpt/7: parameter b/w holds NaN or inf \(1 arrays'):
        ckpt_io.check_finite(tree, 'ckpt/7')
