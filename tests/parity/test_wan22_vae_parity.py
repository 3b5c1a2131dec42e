"""Wan 2.2 VAE parity: diffusers AutoencoderKLWan(is_residual=True, patch_size=2) (torch, f32)
vs sora_jax WanVAE, through the converter, on a tiny random model with Wan 2.2's layout
((1, 2, 4, 4) levels, 2D then two 3D resamplings, 2x2 patches: 4x time, 16x space; a decoder
wider than the encoder).

The reference codes frame 0 alone, then 4 frames per chunk (decoding one latent frame at a
time, the first one with `first_chunk=True`); ours is compared in its whole-video and its
chunked (`lax.scan` + cache) paths on a 9-frame video (frame 0 alone, which is the chunked
path of an image, then two chunks: the scan carries the cache once), and in its whole path on
an image (1 frame). A 5-frame video would run the same code with one step fewer, for 4 more
compiles (each is seconds on a 2-core runner).
"""

import jax
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify as torch_unpatchify
from flax import nnx

from sora_jax.convert import wan
from sora_jax.models import vae as V
from sora_jax.models.vae import WanVAE

KW = dict(
    base_dim=2,
    decoder_base_dim=3,
    z_dim=4,
    dim_mult=[1, 2, 4, 4],
    num_res_blocks=1,
    attn_scales=[],
    temperal_downsample=[False, True, True],
    is_residual=True,
    patch_size=2,
    in_channels=12,
    out_channels=12,
    scale_factor_spatial=16,
    scale_factor_temporal=4,
    latents_mean=[0.1, -0.2, 0.3, 0.0],
    latents_std=[1.5, 0.5, 2.0, 1.0],
)
HW = (32, 48)  # 2 x 3 latent pixels
FRAMES = (1, 9)  # an image and a video: 1 and 3 latent frames
CHUNKED = {1: False, 9: True}  # also compare the chunked path (see the docstring)
TOL = 1e-4  # as tests/parity/test_vae_parity.py (relative to max(1, |ref|))
torch.set_num_threads(1)  # tiny tensors: threads only add contention on a shared runner


@pytest.fixture(scope='module')
def case(tmp_path_factory):
    torch.manual_seed(22)
    model = AutoencoderKLWan(**KW).eval()
    with torch.no_grad():  # non-trivial RMS gains, so a swapped or unflattened gain would show
        for name, p in model.named_parameters():
            if name.endswith('gamma'):
                p.copy_(1.0 + 0.5 * torch.randn_like(p))
    folder = str(tmp_path_factory.mktemp('wan22_vae'))
    model.save_pretrained(folder, max_shard_size='50KB')
    ours = wan.load_vae(folder)
    graphdef, state = nnx.split(ours)
    fns = {}
    for method, kw in (
        ('encode', {}),
        ('encode_chunked', {}),
        ('decode', {'clip': False}),
        ('decode_chunked', {'clip': False}),
    ):
        fn = jax.jit(lambda s, a, m=method, k=kw: getattr(nnx.merge(graphdef, s), m)(a, **k))
        fns[method] = lambda a, fn=fn: fn(state, a)
    return model, ours, folder, fns


def _to_jax(x):
    return x.transpose(0, 2, 3, 4, 1)


def _to_torch(x):
    return np.asarray(x).transpose(0, 4, 1, 2, 3)


def _err(ours, ref):
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / max(1.0, np.abs(ref).max()))


def _torch_decode_unclamped(model, z):
    """`AutoencoderKLWan._decode` without the final clamp (same loop, first_chunk, unpatchify)."""
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
    return torch_unpatchify(torch.cat(outs, 2), model.config.patch_size)


def test_factors_and_shapes(case):
    _, ours, _, _ = case
    assert (ours.spatial_factor, ours.temporal_factor, ours.video_channels) == (16, 4, 3)
    assert ours.latent_shape(9, *HW) == (3, 2, 3, 4)
    with pytest.raises(
        ValueError,
        match=r'not divisible by the spatial factor 16; crop or resize '
        r'to 32x32',
    ):
        ours.latent_shape(9, 40, 40)


@pytest.mark.parametrize('frames', FRAMES)
def test_encode_matches(case, frames):
    model, ours, _, fns = case
    video = np.random.default_rng(frames).uniform(-1, 1, (2, 3, frames, *HW)).astype(np.float32)
    with torch.no_grad():
        dist = model.encode(torch.from_numpy(video)).latent_dist
        ref_mean, ref_logvar = dist.mean.numpy(), dist.logvar.numpy()
    assert ref_mean.shape == (2, 4, 1 + (frames - 1) // 4, 2, 3)
    for method in ('encode', 'encode_chunked')[: 1 + CHUNKED[frames]]:
        mean, logvar = fns[method](_to_jax(video))
        e_mean, e_logvar = _err(_to_torch(mean), ref_mean), _err(_to_torch(logvar), ref_logvar)
        print(
            f'{frames} frames {method}: mean err {e_mean:.2e}, logvar err {e_logvar:.2e}, '
            f'|mean| max {np.abs(ref_mean).max():.2f}'
        )
        assert e_mean < TOL and e_logvar < TOL


@pytest.mark.parametrize('frames', FRAMES)
def test_decode_matches(case, frames):
    model, ours, _, fns = case
    t_lat = 1 + (frames - 1) // 4
    z = np.random.default_rng(10 + frames).standard_normal((2, 4, t_lat, 2, 3)).astype(np.float32)
    with torch.no_grad():
        ref = _torch_decode_unclamped(model, torch.from_numpy(z)).numpy()
        ref_clamped = model.decode(torch.from_numpy(z)).sample.numpy()
    assert ref.shape == (2, 3, frames, *HW)
    assert np.abs(ref).max() > 1.0  # the unclamped comparison is not hidden by the clamp
    for method in ('decode', 'decode_chunked')[: 1 + CHUNKED[frames]]:
        out = _to_torch(fns[method](_to_jax(z)))
        e = _err(out, ref)
        e_clamped = _err(np.clip(out, -1, 1), ref_clamped)
        print(
            f'{frames} frames {method}: err {e:.2e} (|ref| max {np.abs(ref).max():.2f}), '
            f'clamped err {e_clamped:.2e}'
        )
        assert e < TOL and e_clamped < TOL


def test_key_map_covers_both_sides(case):
    model, _, folder, _ = case
    cfg = wan.vae_config_from_hf(folder)
    assert (cfg.is_residual, cfg.patch_size, cfg.decoder_base_dim) == (True, 2, 3)
    key_map = wan.vae_key_map(cfg)
    sd = model.state_dict()
    assert set(key_map.rules) == set(sd)
    targets = wan.state_targets(nnx.split(nnx.eval_shape(lambda: WanVAE(cfg, rngs=nnx.Rngs(0))))[1])
    assert sorted(r.target for r in key_map.rules.values()) == sorted(targets)  # 1:1
    flat = wan.convert(folder, key_map, targets)
    np.testing.assert_array_equal(
        flat['decoder/up_blocks/0/upsampler/time_conv/kernel'],
        sd['decoder.up_blocks.0.upsampler.time_conv.weight'].numpy().transpose(2, 3, 4, 1, 0),
    )
    np.testing.assert_array_equal(
        flat['encoder/down_blocks/1/downsampler/resample/kernel'],
        sd['encoder.down_blocks.1.downsampler.resample.1.weight'].numpy().transpose(2, 3, 1, 0),
    )


def test_latent_normalisation_uses_config_stats(case):
    _, ours, _, _ = case
    z = np.random.default_rng(2).standard_normal((1, 2, 2, 2, 4)).astype(np.float32)
    mean, std = (
        np.asarray(KW['latents_mean'], np.float32),
        np.asarray(KW['latents_std'], np.float32),
    )
    np.testing.assert_allclose(np.asarray(ours.normalize_latents(z)), (z - mean) / std, rtol=1e-6)


def test_config_errors_name_key_and_fix():
    with pytest.raises(ValueError, match='attn_scales.*no attention'):
        V.from_config(dict(KW, attn_scales=[0.5]))
    with pytest.raises(ValueError, match='in_channels=3 must be a multiple of patch_size'):
        V.from_config(dict(KW, in_channels=3))
    with pytest.raises(ValueError, match='encoder level 0: 2 -> 16 channels.*dim_mult'):
        V.from_config(dict(KW, dim_mult=[8, 8, 8, 8]))
    with pytest.raises(ValueError, match='scale_factor_spatial=8'):
        wan.vae_config_from_hf(dict(KW, scale_factor_spatial=8))


def test_wan22_ti2v_5b_config_matches_diffusers_on_meta_device():
    """The real Wan2.2-TI2V-5B VAE (its hub config.json values, meta device: no memory): same
    parameter count, the converter parses it to `wan22_config()`, every tensor maps 1:1 onto a
    target of the transformed shape."""
    cfg = V.wan22_config()
    hub = dict(
        base_dim=160,
        decoder_base_dim=256,
        z_dim=48,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=2,
        attn_scales=[],
        temperal_downsample=[False, True, True],
        dropout=0.0,
        is_residual=True,
        patch_size=2,
        in_channels=12,
        out_channels=12,
        scale_factor_spatial=16,
        scale_factor_temporal=4,
        latents_mean=list(V.WAN22_LATENTS_MEAN),
        latents_std=list(V.WAN22_LATENTS_STD),
    )
    with torch.device('meta'):
        model = AutoencoderKLWan(**hub)
    sd = model.state_dict()
    n_ref = sum(p.numel() for p in model.parameters())
    assert wan.vae_config_from_hf(dict(model.config)) == cfg
    abstract = nnx.split(nnx.eval_shape(lambda: WanVAE(cfg, rngs=nnx.Rngs(0))))[1]
    targets = wan.state_targets(abstract)
    assert sum(int(np.prod(s)) for s, _ in targets.values()) == n_ref == 704_688_668
    key_map = wan.vae_key_map(cfg)
    assert set(key_map.rules) == set(sd)
    assert sorted(r.target for r in key_map.rules.values()) == sorted(targets)
    for key, rule in key_map.rules.items():
        shape = tuple(sd[key].shape)
        if rule.transform == 'flatten':
            shape = (int(np.prod(shape)),)
        elif wan._TRANSPOSES[rule.transform] is not None:
            shape = tuple(shape[i] for i in wan._TRANSPOSES[rule.transform])
        assert shape == targets[rule.target][0], key
    vae = nnx.eval_shape(lambda: WanVAE(cfg, rngs=nnx.Rngs(0)))
    assert (vae.spatial_factor, vae.temporal_factor) == (16, 4)
    assert vae.latent_shape(121, 704, 1280) == (31, 44, 80, 48)


def test_tiled_decode_with_patches_places_tiles(case):
    """Tiles are cut in latent pixels and blended in (unpatchified) video pixels: 32 px tiles at
    a 16 px stride over 48 px (latent 2-px tiles at columns 0 and 1). Columns only one tile
    covers equal that tile decoded alone. (One latent frame: the time axis is the chunked path's,
    tested above; two frames would double the compile time here.)"""
    _, ours, _, _ = case
    z = np.random.default_rng(3).standard_normal((1, 1, 2, 3, 4)).astype(np.float32)
    with pytest.raises(ValueError, match='multiples of the spatial factor 16'):
        ours.tiled_decode(z, 24, 16)
    graphdef, state = nnx.split(ours)

    @jax.jit
    def run(s, z):
        vae = nnx.merge(graphdef, s)
        tiles = jax.numpy.concatenate([z[:, :, :, :2], z[:, :, :, 1:]])  # both tiles, alone
        return vae.tiled_decode(z, 32, 16, clip=False), vae.decode_chunked(tiles, clip=False)

    tiled, alone = map(np.asarray, run(state, z))
    left, right = alone[:1], alone[1:]
    assert tiled.shape == (1, 1, 32, 48, 3)
    np.testing.assert_allclose(tiled[:, :, :, :16], left[:, :, :, :16], atol=1e-5)
    np.testing.assert_allclose(tiled[:, :, :, 32:], right[:, :, :, 16:], atol=1e-5)
    assert np.abs(tiled[:, :, :, 16:32] - left[:, :, :, 16:]).max() > 1e-3  # blended there
