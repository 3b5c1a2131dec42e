"""LightX2V / CausVid LoRA layouts in `convert/lora.py` without torch: original-Wan names under
`diffusion_model.` map to the sora_jax parameters, `.diff` / `.diff_b` / `.diff_m` add to the
weight / bias / modulation table (scaled), low-rank pairs outside the block projections become
dense deltas, and kept-separate adapters still merge the deltas."""

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from sora_jax.convert import lora as lora_files
from sora_jax.models.dit import DiT, DiTConfig

DIM, FFN, DEPTH, TEXT, FREQ = 24, 40, 2, 16, 32


@pytest.fixture(scope='module')
def split():
    cfg = DiTConfig(
        patch_size=(1, 2, 2),
        in_channels=4,
        out_channels=4,
        dim=DIM,
        ffn_dim=FFN,
        num_heads=2,
        depth=DEPTH,
        text_dim=TEXT,
        freq_dim=FREQ,
    )
    return nnx.split(DiT(cfg, rngs=nnx.Rngs(0)))


def _flat(params):
    return {'/'.join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(params)}


def test_deltas_land_on_their_parameters(split, tmp_path):
    rng = np.random.default_rng(0)
    r = 3
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    sd = {
        'diffusion_model.blocks.1.norm3.diff': f(DIM),  # cross-attention LayerNorm gain
        'diffusion_model.blocks.1.norm3.diff_b': f(DIM),
        'diffusion_model.blocks.0.self_attn.norm_q.diff': f(DIM),
        'diffusion_model.blocks.0.cross_attn.q.diff_b': f(DIM),
        'diffusion_model.blocks.0.diff_m': f(1, 6, DIM),  # the block's modulation table
        'diffusion_model.head.diff_m': f(1, 2, DIM),
        'diffusion_model.time_projection.1.lora_down.weight': f(r, DIM),
        'diffusion_model.time_projection.1.lora_up.weight': f(6 * DIM, r),
        'diffusion_model.time_projection.1.diff_b': f(6 * DIM),
        'diffusion_model.blocks.1.ffn.0.lora_down.weight': f(r, DIM),
        'diffusion_model.blocks.1.ffn.0.lora_up.weight': f(FFN, r),
        'diffusion_model.blocks.1.ffn.0.alpha': np.array(6.0, np.float32),
    }
    path = str(tmp_path / 'lx.safetensors')
    save_file(sd, path)
    adapter = lora_files.read(path, 0.5)
    assert set(adapter) == {'ffn.proj_in', lora_files.DELTA}
    base = _flat(split[1])
    for merge in (True, False):
        _, params = lora_files.apply(*split, [adapter], merge=merge)
        new = _flat(params)
        d = lambda k: new[k] - base[k]  # noqa: E731
        np.testing.assert_allclose(
            d('blocks/norm2/weight')[1], 0.5 * sd['diffusion_model.blocks.1.norm3.diff'], atol=1e-6
        )
        np.testing.assert_allclose(
            d('blocks/norm2/bias')[1], 0.5 * sd['diffusion_model.blocks.1.norm3.diff_b'], atol=1e-6
        )
        assert not d('blocks/norm2/weight')[0].any()
        np.testing.assert_allclose(
            d('blocks/attn1/norm_q/weight')[0],
            0.5 * sd['diffusion_model.blocks.0.self_attn.norm_q.diff'],
            atol=1e-6,
        )
        np.testing.assert_allclose(
            d('blocks/attn2/to_q/bias')[0],
            0.5 * sd['diffusion_model.blocks.0.cross_attn.q.diff_b'],
            atol=1e-6,
        )
        np.testing.assert_allclose(
            d('blocks/scale_shift_table')[0], 0.5 * sd['diffusion_model.blocks.0.diff_m'], atol=1e-6
        )
        np.testing.assert_allclose(
            d('scale_shift_table'), 0.5 * sd['diffusion_model.head.diff_m'], atol=1e-6
        )
        a, b = (
            sd['diffusion_model.time_projection.1.lora_down.weight'],
            sd['diffusion_model.time_projection.1.lora_up.weight'],
        )
        np.testing.assert_allclose(
            d('condition_embedder/time_proj/kernel'), 0.5 * (b @ a).T, atol=1e-5
        )
        np.testing.assert_allclose(
            d('condition_embedder/time_proj/bias'),
            0.5 * sd['diffusion_model.time_projection.1.diff_b'],
            atol=1e-6,
        )
        if merge:  # the block projection merged too, with alpha / r = 2
            a, b = (
                sd['diffusion_model.blocks.1.ffn.0.lora_down.weight'],
                sd['diffusion_model.blocks.1.ffn.0.lora_up.weight'],
            )
            np.testing.assert_allclose(
                d('blocks/ffn/proj_in/kernel')[1], 0.5 * 2.0 * (b @ a).T, atol=1e-5
            )
        else:  # kept separate: the adapter params exist, the kernel is the base one
            assert 'blocks/ffn/proj_in/lora/lora_a' in new
            assert not d('blocks/ffn/proj_in/kernel').any()


def test_a_delta_of_the_wrong_size_is_an_error(split, tmp_path):
    path = str(tmp_path / 'big.safetensors')
    save_file({'diffusion_model.blocks.0.norm3.diff': np.zeros(2 * DIM, np.float32)}, path)
    with pytest.raises(ValueError, match='delta of blocks/norm2/weight .* another model size'):
        lora_files.apply(*split, [lora_files.read(path)])
