"""The shipped demo model (checkpoints/shapes) is small, loads without its training workdir and
samples deterministic 16-frame clips on CPU (what `make demo` runs).

Not asserted here: prompt following. The shipped model is undertrained (2,400 CPU steps) and the
judge does not yet find the prompted colour in its samples; `experiments/evaluate.py` measures it.
"""
import pathlib

import numpy as np
import pytest

from sora_jax.pipeline import TextToVideo

CKPT = pathlib.Path(__file__).resolve().parents[1] / 'checkpoints' / 'shapes'


@pytest.fixture(scope='module')
def pipe():
    return TextToVideo.from_checkpoint(CKPT)


def test_bundle_is_small_and_self_contained(pipe):
    size = sum(p.stat().st_size for p in CKPT.rglob('*') if p.is_file())
    assert size < 40 * 2**20, f'shipped checkpoint is {size / 2**20:.1f} MiB (limit 40)'
    assert pipe.config.autoencoder == 'none'
    assert pipe.conditioned  # trained with frame masks: one model for every mode


def test_samples_demo_clip_deterministically(pipe):
    a = pipe('a red circle moving to the right', num_inference_steps=4, seed=0, progress=False)
    b = pipe('a red circle moving to the right', num_inference_steps=4, seed=0, progress=False)
    assert a.shape == (1, 16, 32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert a.std() > 1.0
