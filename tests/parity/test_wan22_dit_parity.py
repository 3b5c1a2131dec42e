"""Wan 2.2 DiT parity: per-token timesteps ([B, N], the TI2V first-frame path) vs diffusers.

diffusers' `WanTransformer3DModel` takes `timestep` of shape [B, N] (`timestep.ndim == 2`): each
token gets its own time embedding, block modulation and output shift / scale. A tiny random model
with the TI2V-5B channel count (48 in / 48 out) is converted through our key map and run both ways.
"""

import jax
import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel

from sora_jax.convert import wan

KW = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=48,
    out_channels=48,
    text_dim=16,
    freq_dim=32,
    ffn_dim=40,
    num_layers=2,
)
GRID = (3, 4, 6)  # latent [T, H, W] -> 3 x 2 x 3 = 18 tokens
TOKENS = 18
TOL = 1e-4  # max |ours - diffusers| / max(1, |ref| max)


@pytest.fixture(scope='module')
def models(tmp_path_factory):
    """(diffusers model, our DiT loaded from its saved folder, jitted forward)."""
    torch.manual_seed(7)
    model = WanTransformer3DModel(**KW).eval()
    with torch.no_grad():  # randomise the zero/one-initialised parameters too
        for name, p in model.named_parameters():
            if 'norm' in name or name.endswith('bias'):
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name.endswith('weight') else 0.0))
    folder = str(tmp_path_factory.mktemp('ti2v_dit'))
    model.save_pretrained(folder)
    dit = wan.load_dit(folder, attention='xla')
    return model, dit, jax.jit(lambda x, t, c: dit(x, t, c))


def _inputs():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, KW['in_channels'], *GRID)).astype(np.float32)
    ctx = rng.standard_normal((2, 5, KW['text_dim'])).astype(np.float32)
    return x, ctx


def _ours(fwd, x, ts, ctx):
    out = fwd(x.transpose(0, 2, 3, 4, 1), ts / 1000.0, ctx)
    return np.asarray(out).transpose(0, 4, 1, 2, 3)


def test_per_token_velocity_matches(models):
    model, _, fwd = models
    x, ctx = _inputs()
    first = np.zeros(TOKENS, bool)
    first[: TOKENS // GRID[0]] = True  # tokens of latent frame 0
    ts = np.stack(
        [
            np.where(first, 0.0, 937.0),  # TI2V: conditioned first frame at t = 0
            np.random.default_rng(1).integers(0, 1000, TOKENS),
        ]
    ).astype(np.float32)
    with torch.no_grad():
        ref = model(
            torch.from_numpy(x), torch.from_numpy(ts), torch.from_numpy(ctx), return_dict=False
        )[0].numpy()
    out = _ours(fwd, x, ts, ctx)
    assert out.shape == ref.shape == (2, 48, *GRID)
    err = np.abs(out - ref).max() / max(1.0, np.abs(ref).max())
    print(f'per-token timesteps: max abs err (scaled) {err:.2e}, |ref| max {np.abs(ref).max():.2f}')
    assert err < TOL
    # the per-token path is really per token: frame 0 at t = 0 differs from all tokens at t = 937
    with torch.no_grad():
        flat = model(
            torch.from_numpy(x), torch.full((2,), 937.0), torch.from_numpy(ctx), return_dict=False
        )[0].numpy()
    assert np.abs(flat[0, :, 0] - ref[0, :, 0]).max() > 100 * TOL
    assert np.abs(flat[0, :, 1:] - ref[0, :, 1:]).max() > 100 * TOL  # attention mixes frames


def test_constant_per_token_equals_per_example(models):
    """t: [B, N] filled with t_b is the model at t: [B] (diffusers' WanPipeline expand_timesteps
    text-to-video path), and the [B] path still matches diffusers."""
    model, _, fwd = models
    x, ctx = _inputs()
    ts = np.array([999.0, 250.0], np.float32)
    with torch.no_grad():
        ref = model(
            torch.from_numpy(x), torch.from_numpy(ts), torch.from_numpy(ctx), return_dict=False
        )[0].numpy()
    per_example = _ours(fwd, x, ts, ctx)
    per_token = _ours(fwd, x, np.repeat(ts[:, None], TOKENS, 1), ctx)
    assert np.abs(per_example - ref).max() / max(1.0, np.abs(ref).max()) < TOL
    assert np.abs(per_token - per_example).max() < 1e-5


def test_bad_timestep_shape_raises(models):
    _, dit, _ = models
    x, ctx = _inputs()
    with pytest.raises(ValueError, match='per token'):
        dit(x.transpose(0, 2, 3, 4, 1), np.zeros((2, TOKENS + 1), np.float32), ctx)
