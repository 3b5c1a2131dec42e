"""The shipped demo model (checkpoints/shapes: VAE + byte text encoder + latent DiT) is small,
loads without its training workdirs, samples deterministic 16-frame clips on CPU (what
`make demo` runs), and follows a prompt: the judge finds the prompted colour and motion in its
clip (the second prompt is a held-out combination). The full prompt-following figures (held-out
combinations, both languages) come from `experiments/evaluate.py` (docs/results.md).
"""

import pathlib

import numpy as np
import pytest

from sora_jax.pipeline import TextToVideo

CKPT = pathlib.Path(__file__).resolve().parents[2] / 'checkpoints' / 'shapes'


@pytest.fixture(scope='module')
def pipe():
    return TextToVideo.from_checkpoint(CKPT)


def test_bundle_is_small_and_self_contained(pipe):
    size = sum(p.stat().st_size for p in CKPT.rglob('*') if p.is_file())
    assert size < 40 * 2**20, f'shipped checkpoint is {size / 2**20:.1f} MiB (limit 40)'
    assert pipe.config.autoencoder == 'vae' and pipe.vae is not None  # the bundle's own VAE
    assert (pipe.temporal_factor, pipe.spatial_factor) == (1, 4)  # VAE: space only
    assert pipe.conditioned  # trained with frame masks: one model for every mode


def test_samples_demo_clip_deterministically(pipe):
    a = pipe('a red circle moving to the right', num_inference_steps=4, seed=0, progress=False)
    b = pipe('a red circle moving to the right', num_inference_steps=4, seed=0, progress=False)
    assert a.shape == (1, 16, 32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert a.std() > 1.0


@pytest.mark.parametrize(
    'prompt,attrs',
    [
        ('a red circle moving to the right', ('circle', 'red', 'moving_right')),
        ('un cuadrado azul moviéndose hacia arriba', ('square', 'blue', 'moving_up')),
    ],
)
def test_judge_finds_the_prompted_colour_and_motion(pipe, prompt, attrs):
    from sora_jax.evaluation import shapes_judge

    video = pipe(prompt, num_inference_steps=25, seed=0, progress=False)[0]
    verdict = shapes_judge.judge_clip(video, attrs)
    assert verdict['measured'] is not None, 'the judge found no shape'
    assert verdict['color'], verdict['measured']
    assert verdict['motion'], verdict['measured']  # both travel ~18 px across the 16 frames
