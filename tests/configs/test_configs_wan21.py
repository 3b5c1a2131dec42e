"""configs/wan21.py: every arg builds valid model/vae/text configs; sizes match Wan's published ones."""

import dataclasses

import jax.numpy as jnp
import pytest

from configs import wan21
from sora_jax.models import umt5, vae
from sora_jax.models.dit import DiTConfig
from tests.parity.wan_fixture import diffusers_kwargs

# DiT parameter counts = diffusers WanTransformer3DModel on the meta device (checked live below).
DIT_PARAMS = {'t2v_1.3b': 1_418_996_800, 't2v_14b': 14_288_491_584}
PUBLISHED = {'t2v_1.3b': 1.3e9, 't2v_14b': 14e9}


def _text_config(c) -> umt5.UMT5Config:
    fields = {f.name for f in dataclasses.fields(umt5.UMT5Config)}
    kw = {k: v for k, v in c.text.to_dict().items() if k in fields}
    kw['dtype'], kw['param_dtype'] = jnp.dtype(kw['dtype']), jnp.dtype(kw['param_dtype'])
    return umt5.UMT5Config(**kw).validate()


@pytest.mark.parametrize('arg', ['t2v_1.3b', 't2v_14b', 't2v_14b,480p', 'tiny'])
def test_configs_build_and_agree(arg):
    c = wan21.get_config(arg)
    dit = DiTConfig.from_config(c.model)
    v = vae.from_config(c.vae)
    t = _text_config(c)
    assert dit.in_channels == dit.out_channels == v.z_dim
    assert dit.text_dim == t.d_model
    assert dit.dim == dit.num_heads * (128 if arg != 'tiny' else 12)
    sf = 2 ** (len(v.dim_mult) - 1)
    tf = 2 ** sum(v.temperal_downsample)
    assert (sf, tf) == (8, 4)
    assert c.sample.height % (sf * dit.patch_size[1]) == 0
    assert c.sample.width % (sf * dit.patch_size[2]) == 0
    assert (c.sample.num_frames - 1) % tf == 0
    assert c.sample.sampler == 'unipc' and c.sample.guidance_scale == 5.0
    assert c.sample.negative_prompt == wan21.WAN_NEGATIVE_PROMPT
    if arg != 'tiny':
        assert c.sample.steps == 50 and c.sample.num_frames == 81 and c.text.max_length == 512
        assert c.text.vocab_size == 256384 and c.text.num_layers == 24
        assert len(v.latents_mean) == 16 and v.latents_std[0] == 2.8184
        h, w, shift = (720, 1280, 5.0) if arg == 't2v_14b' else (480, 832, 3.0)
        assert (c.sample.height, c.sample.width, c.sample.shift) == (h, w, shift)


def test_bad_args_raise():
    with pytest.raises(ValueError, match='unknown arg'):
        wan21.get_config('t2v_7b')
    with pytest.raises(ValueError, match='resolution'):
        wan21.get_config('t2v_14b,1080p')


@pytest.mark.parametrize('arg', sorted(DIT_PARAMS))
def test_parameter_counts(arg):
    n = DiTConfig.from_config(wan21.get_config(arg).model).num_params()
    assert n == DIT_PARAMS[arg]
    assert abs(n - PUBLISHED[arg]) / PUBLISHED[arg] < 0.1  # "1.3B" / "14B" as published


@pytest.mark.parametrize('arg', sorted(DIT_PARAMS))
def test_matches_diffusers_on_meta_device(arg):
    torch = pytest.importorskip('torch')
    diffusers = pytest.importorskip('diffusers')
    from sora_jax.convert import wan

    c = wan21.get_config(arg)
    m = c.model
    with torch.device('meta'):
        ref = diffusers.WanTransformer3DModel(**diffusers_kwargs(c)['transformer'])
        ref_vae = diffusers.AutoencoderKLWan()
    assert sum(p.numel() for p in ref.parameters()) == DIT_PARAMS[arg]
    # what the converter reads from a hub config.json is what this config says
    parsed = wan.dit_config_from_hf(dict(ref.config))
    ours = DiTConfig.from_config(m)
    arch = (
        'patch_size',
        'in_channels',
        'out_channels',
        'dim',
        'num_heads',
        'ffn_dim',
        'depth',
        'text_dim',
        'freq_dim',
        'eps',
        'cross_attn_norm',
    )
    assert {k: getattr(parsed, k) for k in arch} == {k: getattr(ours, k) for k in arch}
    assert wan.vae_config_from_hf(dict(ref_vae.config)) == vae.from_config(c.vae)


# Wan 2.1 I2V: DiT and CLIP image encoder counts = diffusers / transformers on the meta device.
I2V_DIT_PARAMS = 16_394_878_784
CLIP_PARAMS = 630_766_080


@pytest.mark.parametrize('arg', ['i2v_14b_480p', 'i2v_14b_720p', 'tiny_i2v'])
def test_i2v_configs_build_and_agree(arg):
    from sora_jax.models.clip_vision import CLIPVisionConfig

    c = wan21.get_config(arg)
    dit = DiTConfig.from_config(c.model)
    v = vae.from_config(c.vae)
    clip = CLIPVisionConfig(**c.image_encoder.to_dict()).validate()
    assert dit.in_channels == 2 * v.z_dim + 4 and dit.out_channels == v.z_dim  # [x, mask, image]
    assert dit.image_dim == clip.hidden_size
    assert c.text.max_length == 512  # diffusers' I2V attention takes the last 512 tokens as text
    if arg != 'tiny_i2v':
        assert dit.num_params() == I2V_DIT_PARAMS and clip.num_tokens == 257
        res, shift = ((480, 832), 3.0) if arg.endswith('480p') else ((720, 1280), 5.0)
        assert (c.sample.height, c.sample.width) == res and c.sample.shift == shift
        assert c.hf_id == f'Wan-AI/Wan2.1-I2V-14B-{arg[-4:].upper()}-Diffusers'
    with pytest.raises(ValueError, match='480p checkpoint'):
        wan21.get_config('i2v_14b_480p,720p')


def test_i2v_matches_diffusers_on_meta_device():
    torch = pytest.importorskip('torch')
    diffusers = pytest.importorskip('diffusers')
    transformers = pytest.importorskip('transformers')
    import math

    import jax
    from flax import nnx

    from sora_jax.convert import wan
    from sora_jax.models import clip_vision

    c = wan21.get_config('i2v_14b_480p')
    m, e = c.model, c.image_encoder
    with torch.device('meta'):
        ref = diffusers.WanTransformer3DModel(**diffusers_kwargs(c)['transformer'])
        ref_clip = transformers.CLIPVisionModel(
            transformers.CLIPVisionConfig(**e.to_dict(), projection_dim=1024)
        )
    assert sum(p.numel() for p in ref.parameters()) == I2V_DIT_PARAMS
    assert sum(p.numel() for p in ref_clip.parameters()) == CLIP_PARAMS
    parsed = wan.dit_config_from_hf(dict(ref.config))
    ours = DiTConfig.from_config(m)
    arch = (
        'patch_size',
        'in_channels',
        'out_channels',
        'dim',
        'num_heads',
        'ffn_dim',
        'depth',
        'text_dim',
        'freq_dim',
        'eps',
        'cross_attn_norm',
        'image_dim',
        'image_pos_len',
    )
    assert {k: getattr(parsed, k) for k in arch} == {k: getattr(ours, k) for k in arch}
    cfg = clip_vision.CLIPVisionConfig.from_hf(ref_clip.config.to_dict())
    assert cfg == clip_vision.CLIPVisionConfig(**e.to_dict())
    state = nnx.state(
        nnx.eval_shape(lambda: clip_vision.CLIPVisionEncoder(cfg, rngs=nnx.Rngs(0))), nnx.Param
    )
    assert sum(math.prod(x.shape) for x in jax.tree.leaves(state)) == CLIP_PARAMS
