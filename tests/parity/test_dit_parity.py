"""DiT parity: diffusers WanTransformer3DModel (torch, f32) vs sora_jax DiT, through the converter."""

import jax
import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel
from flax import nnx

from sora_jax.convert import wan
from sora_jax.models.dit import DiT

# (diffusers kwargs, latent [T, H, W], text length)
CONFIGS = {
    'p122': (
        dict(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=12,
            in_channels=4,
            out_channels=4,
            text_dim=16,
            freq_dim=32,
            ffn_dim=40,
            num_layers=2,
        ),
        (3, 4, 6),
        7,
    ),
    'p212': (
        dict(
            patch_size=(2, 1, 2),
            num_attention_heads=3,
            attention_head_dim=8,
            in_channels=3,
            out_channels=5,
            text_dim=12,
            freq_dim=16,
            ffn_dim=36,
            num_layers=3,
            cross_attn_norm=True,
        ),
        (4, 3, 4),
        5,
    ),
}


@pytest.fixture(scope='module', params=sorted(CONFIGS))
def case(request, tmp_path_factory):
    kw, grid, ctx_len = CONFIGS[request.param]
    torch.manual_seed(len(request.param) + 3)
    model = WanTransformer3DModel(**kw).eval()
    with torch.no_grad():  # randomise the zero/one-initialised parameters too
        for name, p in model.named_parameters():
            if 'norm' in name or name.endswith('bias'):
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name.endswith('weight') else 0.0))
    folder = str(tmp_path_factory.mktemp(request.param))
    model.save_pretrained(folder, max_shard_size='40KB')
    return request.param, model, folder, grid, ctx_len


def test_velocity_matches(case):
    name, model, folder, (t, h, w), ctx_len = case
    kw = CONFIGS[name][0]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, kw['in_channels'], t, h, w)).astype(np.float32)
    ctx = rng.standard_normal((2, ctx_len, kw['text_dim'])).astype(np.float32)
    ts = np.array([999.0, 250.0], np.float32)
    with torch.no_grad():
        ref = model(
            torch.from_numpy(x), torch.from_numpy(ts), torch.from_numpy(ctx), return_dict=False
        )[0].numpy()
    dit = wan.load_dit(folder, attention='xla')
    out = jax.jit(lambda a, b, c: dit(a, b, c))(x.transpose(0, 2, 3, 4, 1), ts / 1000.0, ctx)
    out = np.asarray(out).transpose(0, 4, 1, 2, 3)
    assert out.shape == ref.shape == (2, kw['out_channels'], t, h, w)
    err = np.abs(out - ref).max() / max(1.0, np.abs(ref).max())
    print(f'{name}: max abs err (scaled) {err:.2e}, |ref| max {np.abs(ref).max():.2f}')
    assert err < 1e-4


def test_key_map_covers_both_sides(case):
    name, model, folder, _, _ = case
    cfg = wan.dit_config_from_hf(folder)
    key_map = wan.dit_key_map(cfg.depth)
    assert set(key_map.rules) == set(model.state_dict())
    targets = wan.state_targets(nnx.split(nnx.eval_shape(lambda: DiT(cfg, rngs=nnx.Rngs(0))))[1])
    assert {r.target for r in key_map.rules.values()} == set(targets)
    slots = [(r.target, r.layer) for r in key_map.rules.values()]
    assert len(slots) == len(set(slots))
    for path, (shape, _) in targets.items():
        if path.startswith('blocks/'):
            assert {l for tg, l in slots if tg == path} == set(range(shape[0]))


def test_inconsistent_i2v_config_rejected():
    """I2V sets image_dim and added_kv_proj_dim (= the width) together (tests/parity/
    test_wan_i2v_parity.py checks the I2V DiT itself)."""
    with pytest.raises(ValueError, match='image-to-video'):
        wan.dit_config_from_hf(dict(CONFIGS['p122'][0], image_dim=1280))
    with pytest.raises(ValueError, match='added_kv_proj_dim = the model width 24'):
        wan.dit_config_from_hf(dict(CONFIGS['p122'][0], image_dim=1280, added_kv_proj_dim=16))
