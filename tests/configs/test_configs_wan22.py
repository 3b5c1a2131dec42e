"""configs/wan22.py: every arg builds valid model/vae/text configs; sizes and sampling defaults are
Wan 2.2's; DiT parameter counts equal diffusers' on the meta device; the AOT tool takes them."""

import pytest

from configs import wan22
from sora_jax.aot.compile import Shape
from sora_jax.models import vae
from sora_jax.models.dit import DiTConfig
from tests.parity.wan_fixture import diffusers_kwargs

# DiT parameter counts = diffusers WanTransformer3DModel on the meta device (checked live below).
DIT_PARAMS = {'ti2v_5b': 4_999_787_712, 't2v_a14b': 14_288_491_584, 'i2v_a14b': 14_288_901_184}
PUBLISHED = {'ti2v_5b': 5e9, 't2v_a14b': 14e9, 'i2v_a14b': 14e9}  # "5B", "A14B" (per expert)
# arg -> (steps, guidance, guidance_2, boundary, shift, frames, height, width, fps, expand)
SAMPLING = {
    'ti2v_5b': (50, 5.0, None, None, 5.0, 121, 704, 1280, 24, True),
    't2v_a14b': (40, 4.0, 3.0, 0.875, 12.0, 81, 720, 1280, 16, None),
    't2v_a14b,480p': (40, 4.0, 3.0, 0.875, 12.0, 81, 480, 832, 16, None),
    'i2v_a14b': (40, 3.5, 3.5, 0.9, 5.0, 81, 720, 1280, 16, None),
    'tiny': (4, 4.0, 3.0, 0.9, 3.0, 5, 32, 32, 16, None),
    'tiny_ti2v': (4, 5.0, None, None, 3.0, 5, 64, 64, 16, True),
}
# arg -> DiT tokens of one default-size clip (what experiments/aot.py compiles for)
TOKENS = {'ti2v_5b': 31 * 22 * 40, 't2v_a14b': 21 * 45 * 80, 'i2v_a14b': 21 * 45 * 80}


@pytest.mark.parametrize('arg', sorted(SAMPLING))
def test_configs_build_and_agree(arg):
    c = wan22.get_config(arg)
    dit = DiTConfig.from_config(c.model)
    v = vae.from_config(c.vae)
    s = c.sample
    assert (
        s.steps,
        s.guidance_scale,
        s.guidance_scale_2,
        s.boundary_ratio,
        s.shift,
        s.num_frames,
        s.height,
        s.width,
        s.fps,
        s.expand_timesteps,
    ) == SAMPLING[arg]
    assert dit.out_channels == v.z_dim == c.latent_channels
    assert dit.in_channels == (36 if arg == 'i2v_a14b' else v.z_dim)
    assert dit.text_dim == c.text.d_model
    sf = 2 ** (len(v.dim_mult) - 1) * (v.patch_size or 1)
    assert (sf, 2 ** sum(v.temperal_downsample)) == ((16 if 'ti2v' in arg else 8), 4)
    assert s.height % (sf * dit.patch_size[1]) == 0 and s.width % (sf * dit.patch_size[2]) == 0
    assert (s.num_frames - 1) % 4 == 0 and s.sampler == 'unipc'
    assert s.timestep_quantization == 1000  # the integer timesteps the boundary compares
    assert c.flow.shift == s.shift


def test_ti2v_vae_is_the_wan22_vae():
    """The VAE section is `wan22_config()`, and what the converter reads from a diffusers
    AutoencoderKLWan with the hub's Wan2.2-TI2V-5B vae settings (built on the meta device)."""
    c = wan22.get_config('ti2v_5b')
    assert vae.from_config(c.vae) == vae.wan22_config()
    torch = pytest.importorskip('torch')
    diffusers = pytest.importorskip('diffusers')
    from sora_jax.convert import wan

    v = c.vae
    with torch.device('meta'):
        ref = diffusers.AutoencoderKLWan(
            base_dim=v.base_dim,
            decoder_base_dim=v.decoder_base_dim,
            z_dim=v.z_dim,
            is_residual=True,
            patch_size=2,
            in_channels=12,
            out_channels=12,
            scale_factor_spatial=16,
            scale_factor_temporal=4,
            latents_mean=list(v.latents_mean),
            latents_std=list(v.latents_std),
        )
    assert wan.vae_config_from_hf(dict(ref.config)) == vae.from_config(c.vae)
    assert sum(p.numel() for p in ref.parameters()) == 704_688_668


def test_bad_args_raise():
    with pytest.raises(ValueError, match='unknown arg'):
        wan22.get_config('t2v_5b')
    with pytest.raises(ValueError, match='resolution'):
        wan22.get_config('ti2v_5b,480p')
    with pytest.raises(ValueError, match='resolution'):
        wan22.get_config('t2v_a14b,1080p')


@pytest.mark.parametrize('arg', sorted(DIT_PARAMS))
def test_parameter_counts(arg):
    n = DiTConfig.from_config(wan22.get_config(arg).model).num_params()
    assert n == DIT_PARAMS[arg]
    assert abs(n - PUBLISHED[arg]) / PUBLISHED[arg] < 0.05


@pytest.mark.parametrize('arg', sorted(DIT_PARAMS))
def test_matches_diffusers_on_meta_device(arg):
    torch = pytest.importorskip('torch')
    diffusers = pytest.importorskip('diffusers')
    from sora_jax.convert import wan

    c = wan22.get_config(arg)
    m = c.model
    with torch.device('meta'):
        ref = diffusers.WanTransformer3DModel(**diffusers_kwargs(c)['transformer'])
    assert sum(p.numel() for p in ref.parameters()) == DIT_PARAMS[arg]
    parsed = wan.dit_config_from_hf(dict(ref.config))  # what the converter reads from the hub
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


@pytest.mark.parametrize('arg', sorted(TOKENS))
def test_aot_sizes(arg):
    """experiments/aot.py's latent grid for the default clip (no compile): TI2V-5B's VAE is 16x
    in space (8x levels x 2x2 patch), the A14B's 8x."""
    c = wan22.get_config(arg)
    s = c.sample
    assert Shape(s.num_frames, s.height, s.width, 1, 512).tokens(c) == TOKENS[arg]


def test_aot_compiles_a_wan22_sampling_step():
    """experiments/aot.py's sample task takes configs/wan22.py (tiny_ti2v, for a v5p-8, no TPU):
    the 16x VAE (2x2 patches) sizes the token grid."""
    pytest.importorskip('libtpu', reason='libtpu is in the [test] extra')
    from sora_jax.aot import run

    c = wan22.get_config('tiny_ti2v')
    c.mesh.shape = (1, 1, 1, 4)
    rep = run.check(c, 'v5p-8', 'sample', num_frames=5, height=64, width=64, batch_size=1)
    assert rep['fits'] and rep['tokens_per_clip'] == 2 * 2 * 2  # 2 latent frames of 4 x 4
    assert rep['inputs']['timesteps'] == [2, 8]  # TI2V: one timestep per token, CFG rows
