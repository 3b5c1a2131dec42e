"""VAE parity: diffusers AutoencoderKLWan (torch, f32) vs sora_jax WanVAE, through the converter.

The reference codes videos chunk by chunk with its feature cache (frame 0, then 4 frames per
chunk; decoding one latent frame at a time); ours is compared in both its whole-video and its
chunked (`lax.scan` + cache) paths, unclamped and clamped.
"""

import jax
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan
from flax import nnx

from sora_jax.convert import wan
from sora_jax.models.vae import WanVAE

# name -> (diffusers kwargs, video [T, H, W]). 'wan_like' keeps Wan's 3 levels (8x space,
# 2D then 3D resampling); 'two_level' is 4x time / 4x space.
CONFIGS = {
    'wan_like': (
        dict(
            base_dim=4,
            z_dim=3,
            dim_mult=[1, 2, 2, 2],
            num_res_blocks=2,
            attn_scales=[],
            temperal_downsample=[False, True, True],
            latents_mean=[0.1, -0.2, 0.3],
            latents_std=[1.5, 0.5, 2.0],
        ),
        (9, 16, 24),
    ),
    'two_level': (
        dict(
            base_dim=6,
            z_dim=4,
            dim_mult=[1, 2],
            num_res_blocks=1,
            attn_scales=[],
            temperal_downsample=[True],
            latents_mean=[0.0] * 4,
            latents_std=[1.0] * 4,
            scale_factor_spatial=2,
            scale_factor_temporal=2,
        ),
        (9, 8, 12),
    ),
}
TOL = 1e-4
# Tiny tensors: torch's thread pool only adds contention on a shared 2-core runner (~100x here).
torch.set_num_threads(1)


def _randomize(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():  # non-trivial RMS gains, so a swapped or unflattened gain would show
        for name, p in model.named_parameters():
            if name.endswith('gamma'):
                p.copy_(1.0 + 0.5 * torch.randn_like(p))


@pytest.fixture(scope='module', params=sorted(CONFIGS))
def case(request, tmp_path_factory):
    kw, shape = CONFIGS[request.param]
    torch.manual_seed(len(request.param))
    model = AutoencoderKLWan(**kw).eval()
    _randomize(model, len(request.param) + 1)
    folder = str(tmp_path_factory.mktemp(request.param))
    model.save_pretrained(folder, max_shard_size='50KB')  # sharded, as the hub ships big models
    ours = wan.load_vae(folder)
    rng = np.random.default_rng(0)
    video = rng.uniform(-1, 1, (2, 3, *shape)).astype(np.float32)  # torch layout [B, C, T, H, W]
    return request.param, model, ours, folder, video


def _to_jax(x):
    return x.transpose(0, 2, 3, 4, 1)


def _to_torch(x):
    return np.asarray(x).transpose(0, 4, 1, 2, 3)


def _err(ours, ref):
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / max(1.0, np.abs(ref).max()))


def _run(vae: WanVAE, method: str, x, **kw):
    graphdef, state = nnx.split(vae)
    return jax.jit(lambda s, a: getattr(nnx.merge(graphdef, s), method)(a, **kw))(state, x)


def _torch_decode_unclamped(model, z):
    """`AutoencoderKLWan._decode` without the final clamp (same loop over latent frames)."""
    model.clear_cache()
    x = model.post_quant_conv(z)
    outs = []
    for i in range(z.shape[2]):
        model._conv_idx = [0]
        outs.append(
            model.decoder(
                x[:, :, i : i + 1],
                feat_cache=model._feat_map,
                feat_idx=model._conv_idx,
                first_chunk=i == 0,
            )
        )
    model.clear_cache()
    return torch.cat(outs, 2)


def test_encode_matches(case):
    name, model, ours, _, video = case
    with torch.no_grad():
        dist = model.encode(torch.from_numpy(video)).latent_dist
        ref_mean, ref_logvar = dist.mean.numpy(), dist.logvar.numpy()
    t_lat = 1 + (video.shape[2] - 1) // ours.temporal_factor
    assert ref_mean.shape[2] == t_lat
    for method in ('encode', 'encode_chunked'):
        mean, logvar = _run(ours, method, _to_jax(video))
        e_mean, e_logvar = _err(_to_torch(mean), ref_mean), _err(_to_torch(logvar), ref_logvar)
        print(
            f'{name} {method}: mean err {e_mean:.2e}, logvar err {e_logvar:.2e}, '
            f'|mean| max {np.abs(ref_mean).max():.2f}'
        )
        assert e_mean < TOL and e_logvar < TOL


def test_decode_matches(case):
    name, model, ours, _, video = case
    rng = np.random.default_rng(1)
    t_lat = 1 + (video.shape[2] - 1) // ours.temporal_factor
    fs = ours.spatial_factor
    z = rng.standard_normal(
        (2, ours.config.z_dim, t_lat, video.shape[3] // fs, video.shape[4] // fs)
    ).astype(np.float32)
    with torch.no_grad():
        ref = _torch_decode_unclamped(model, torch.from_numpy(z)).numpy()
        ref_clamped = model.decode(torch.from_numpy(z)).sample.numpy()
    assert ref.shape[2] == video.shape[2] >= 9
    assert np.abs(ref).max() > 1.0  # the unclamped comparison is not hidden by the clamp
    for method in ('decode', 'decode_chunked'):
        out = _to_torch(_run(ours, method, _to_jax(z), clip=False))
        e = _err(out, ref)
        e_clamped = _err(np.clip(out, -1, 1), ref_clamped)
        print(
            f'{name} {method}: err {e:.2e} (|ref| max {np.abs(ref).max():.2f}), '
            f'clamped err {e_clamped:.2e}'
        )
        assert e < TOL and e_clamped < TOL


def test_latent_normalisation_uses_config_stats(case):
    name, model, ours, _, _ = case
    z = np.random.default_rng(2).standard_normal((1, 2, 2, 2, ours.config.z_dim)).astype(np.float32)
    mean = np.asarray(model.config.latents_mean, np.float32)
    std = np.asarray(model.config.latents_std, np.float32)
    np.testing.assert_allclose(np.asarray(ours.normalize_latents(z)), (z - mean) / std, rtol=1e-6)


def test_key_map_covers_both_sides(case):
    name, model, ours, folder, _ = case
    cfg = wan.vae_config_from_hf(folder)
    key_map = wan.vae_key_map(cfg)
    assert set(key_map.rules) == set(model.state_dict())
    targets = wan.state_targets(nnx.split(nnx.eval_shape(lambda: WanVAE(cfg, rngs=nnx.Rngs(0))))[1])
    assert sorted(r.target for r in key_map.rules.values()) == sorted(targets)  # 1:1
    flat = wan.convert(folder, key_map, targets)
    sd = model.state_dict()
    np.testing.assert_array_equal(
        flat['encoder/conv_in/kernel'],
        sd['encoder.conv_in.weight'].numpy().transpose(2, 3, 4, 1, 0),
    )
    np.testing.assert_array_equal(
        flat['decoder/norm_out/gamma'], sd['decoder.norm_out.gamma'].numpy().reshape(-1)
    )


def test_key_map_with_encoder_attention():
    """attn_scales puts attention blocks between the encoder's resnets (shifting the indices).

    Wan 2.1 ships attn_scales=[], and diffusers 0.42.1 cannot run this case (its encoder passes
    `feat_cache` to `WanAttentionBlock.forward`, a TypeError), so only the map is checked here.
    """
    kw = dict(CONFIGS['wan_like'][0], attn_scales=[1.0, 0.5])
    model = AutoencoderKLWan(**kw)
    cfg = wan.vae_config_from_hf(model.config)
    key_map = wan.vae_key_map(cfg)
    assert set(key_map.rules) == set(model.state_dict())
    assert sum('to_qkv.weight' in k for k in key_map.rules) == 2 * 2 + 2  # 2 levels x 2 + mids
    targets = wan.state_targets(nnx.split(nnx.eval_shape(lambda: WanVAE(cfg, rngs=nnx.Rngs(0))))[1])
    assert sorted(r.target for r in key_map.rules.values()) == sorted(targets)


def test_inconsistent_scale_factors_rejected():
    """diffusers' pipelines size latents with scale_factor_*; they must match the layers."""
    with pytest.raises(ValueError, match='scale_factor_spatial=8'):
        wan.vae_config_from_hf(dict(CONFIGS['two_level'][0], scale_factor_spatial=8))
    with pytest.raises(ValueError, match='scale_factor_temporal=4'):
        wan.vae_config_from_hf(dict(CONFIGS['two_level'][0], scale_factor_temporal=4))
    # one width written out for both sides is the Wan 2.1 layout
    assert wan.vae_config_from_hf(
        dict(CONFIGS['two_level'][0], decoder_base_dim=6)
    ) == wan.vae_config_from_hf(CONFIGS['two_level'][0])


def test_full_size_wan21_map_shapes():
    """The real Wan 2.1 VAE (diffusers defaults, meta device: no memory): every tensor lands on
    a target of the transformed shape."""
    with torch.device('meta'):
        model = AutoencoderKLWan()
    cfg = wan.vae_config_from_hf(model.config)
    key_map = wan.vae_key_map(cfg)
    sd = model.state_dict()
    assert set(key_map.rules) == set(sd) and len(sd) == 194
    targets = wan.state_targets(nnx.split(nnx.eval_shape(lambda: WanVAE(cfg, rngs=nnx.Rngs(0))))[1])
    for key, rule in key_map.rules.items():
        shape = tuple(sd[key].shape)
        if rule.transform == 'flatten':
            shape = (int(np.prod(shape)),)
        elif wan._TRANSPOSES[rule.transform] is not None:
            shape = tuple(shape[i] for i in wan._TRANSPOSES[rule.transform])
        assert shape == targets[rule.target][0], key
