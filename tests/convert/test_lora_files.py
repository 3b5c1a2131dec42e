"""LoRA files in the pipeline (no torch): TextToVideo.set_loras merged == kept separate, two files
add up, set_loras([]) restores the base bitwise, --lora specs parse, bad files are refused."""

import functools

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from configs import shapes as shapes_config
from sora_jax.convert import lora as lora_files
from sora_jax.pipeline import TextToVideo


@pytest.fixture(scope='module')
def pipe():
    return TextToVideo.from_config(shapes_config.get_config('tiny'))


@functools.lru_cache(maxsize=None)
def _forward(graphdef):  # one compile per model layout (merged or not, kept rank)
    return jax.jit(lambda params, a, c: nnx.merge(graphdef, params)(a, np.array([0.3, 0.8]), c))


def _velocity(p):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 8, 8, 3)).astype(np.float32)
    ctx = rng.standard_normal((2, 5, p.config.model.text_dim)).astype(np.float32)
    return np.asarray(_forward(p.graphdef)(p.params, x, ctx))


def _random_file(path, depth, dim, ffn, seed, rank=2):
    rng = np.random.default_rng(seed)
    sd = {}
    for i in range(depth):
        for name, din, dout in (
            ('attn1.to_q', dim, dim),
            ('attn2.to_out.0', dim, dim),
            ('ffn.net.0.proj', dim, ffn),
        ):
            sd[f'transformer.blocks.{i}.{name}.lora_A.weight'] = rng.standard_normal(
                (rank, din)
            ).astype(np.float32)
            sd[f'transformer.blocks.{i}.{name}.lora_B.weight'] = (
                rng.standard_normal((dout, rank)).astype(np.float32) * 0.1
            )
    save_file(sd, path)
    return path


def test_merged_equals_kept_and_off_restores_base(pipe, tmp_path):
    m = pipe.config.model
    f1 = _random_file(str(tmp_path / 'a.safetensors'), m.depth, m.dim, m.ffn_dim, 1)
    f2 = _random_file(str(tmp_path / 'b.safetensors'), m.depth, m.dim, m.ffn_dim, 2, rank=3)
    base = _velocity(pipe)
    pipe.set_loras([(f1, 0.7), (f2, 1.3)], merge=True)
    merged = _velocity(pipe)
    pipe.set_loras([(f1, 0.7), (f2, 1.3)], merge=False)
    kept = _velocity(pipe)
    assert pipe.params['blocks']['attn1']['to_q']['lora']['lora_a'].shape[-1] == 5  # 2 + 3
    pipe.set_loras([])
    off = _velocity(pipe)
    assert np.abs(merged - base).max() > 1e-3
    np.testing.assert_allclose(kept, merged, atol=2e-5)
    np.testing.assert_array_equal(off, base)
    # scale 0 is the base too
    pipe.set_loras([(f1, 0.0)], merge=True)
    np.testing.assert_allclose(_velocity(pipe), base, atol=1e-6)
    pipe.set_loras([])


def test_wrong_size_lora_is_refused(pipe, tmp_path):
    m = pipe.config.model
    f = _random_file(str(tmp_path / 'big.safetensors'), m.depth, m.dim * 2, m.ffn_dim, 1)
    with pytest.raises(ValueError, match='another model size'):
        pipe.set_loras([(f, 1.0)])
    pipe.set_loras([])


def test_half_a_pair_is_refused(tmp_path):
    save_file(
        {'blocks.0.attn1.to_q.lora_A.weight': np.zeros((2, 4), np.float32)},
        str(tmp_path / 'half.safetensors'),
    )
    with pytest.raises(ValueError, match='lora_A and lora_B both needed'):
        lora_files.read(str(tmp_path / 'half.safetensors'))


@pytest.mark.parametrize(
    'spec, want',
    [
        ('x.safetensors', ('x.safetensors', 1.0)),
        ('x.safetensors:0.5', ('x.safetensors', 0.5)),
        ('dir:v2/x.safetensors', ('dir:v2/x.safetensors', 1.0)),
    ],
)
def test_parse_spec(spec, want):
    assert lora_files.parse_spec(spec) == want
