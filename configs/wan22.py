"""Wan 2.2 (Apache-2.0 open weights) loaded into sora_jax: TI2V-5B and the A14B two-expert models.

Args (`--config=configs/wan22.py:ARG`):
  ti2v_5b    Wan2.2-TI2V-5B: DiT 4,999,787,712 params (30 blocks x 3072, 48 latent channels),
             text- and image-to-video from one model (per-token timesteps, `expand_timesteps`),
             the Wan 2.2 VAE (4 x 16 x 16, 48 channels), 704x1280, 121 frames at 24 fps.
  t2v_a14b   Wan2.2-T2V-A14B: two 14,288,491,584-param DiTs (40 blocks x 5120): `transformer`
             (high noise, guidance 4.0) until timestep 875 = boundary_ratio 0.875 x 1000, then
             `transformer_2` (low noise, guidance_scale_2 3.0); Wan 2.1 VAE; 720x1280, shift 12.
  i2v_a14b   Wan2.2-I2V-A14B: two 14,288,901,184-param DiTs (36 input channels: noise + mask +
             first-frame latents), boundary 0.9, guidance 3.5 / 3.5, shift 5.
             Append ',480p' to an A14B arg for 480x832.
  tiny       a random tiny two-expert Wan (configs/wan21.py:tiny's sizes, boundary 0.9) that the
             tests build with `tests/parity/wan_fixture.py:make_tiny_wan_folder(two_experts=True)`.
  tiny_ti2v  a random tiny TI2V model (expand_timesteps; 8 latent channels) on a tiny Wan 2.2
             residual VAE (2x2 patches, 16x space, 4x time), for the tests (same fixture).
Parameter counts are `DiTConfig.num_params()`, equal to diffusers' `WanTransformer3DModel` built on
the meta device (tests/configs/test_configs_wan22.py). Sampling defaults are the Wan 2.2 repository's
(wan/configs/wan_*.py: sample_steps, sample_shift, sample_guide_scale, boundary, frame_num,
sample_fps). Text encoder (UMT5-XXL), negative prompt and the rest are configs/wan21.py's.

Convert the diffusers folder once (the A14B's `transformer_2/` and model_index.json with
`boundary_ratio` / `expand_timesteps` come along), then sample:

  huggingface-cli download Wan-AI/Wan2.2-TI2V-5B-Diffusers --local-dir /data/Wan2.2-TI2V-5B-Diffusers
  python experiments/convert_wan.py --src=/data/Wan2.2-TI2V-5B-Diffusers --dst=checkpoints/wan22_ti2v_5b
  python experiments/sample.py --checkpoint=checkpoints/wan22_ti2v_5b \
      --config=configs/wan22.py:ti2v_5b --prompt="A cat and a dog baking a cake together." \
      --out=outputs/wan22_cat.mp4 [--mode=i2v --image=first_frame.png]

  (A14B: Wan-AI/Wan2.2-T2V-A14B-Diffusers -> checkpoints/wan22_t2v_a14b, --config=...:t2v_a14b.)
"""

import os

import ml_collections as mlc

from sora_jax import config_files

# The shared Wan layout (text, mesh, training); by path, as --config=configs/wan22.py loads us.
wan21 = config_files.load_module(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), 'wan21.py')
)

_HUB = {
    'ti2v_5b': 'Wan-AI/Wan2.2-TI2V-5B-Diffusers',
    't2v_a14b': 'Wan-AI/Wan2.2-T2V-A14B-Diffusers',
    'i2v_a14b': 'Wan-AI/Wan2.2-I2V-A14B-Diffusers',
}
_RESOLUTIONS = {'480p': (480, 832), '720p': (720, 1280)}  # A14B sizes (H, W)


def get_config(arg: str = 'ti2v_5b') -> mlc.ConfigDict:
    name, _, res = arg.partition(',')
    if name not in (*_HUB, 'tiny', 'tiny_ti2v'):
        raise ValueError(
            f'configs/wan22.py: unknown arg {arg!r}; use ti2v_5b, t2v_a14b, '
            'i2v_a14b (A14B optionally ",480p" / ",720p"), tiny or tiny_ti2v.'
        )
    if res and (name not in ('t2v_a14b', 'i2v_a14b') or res not in _RESOLUTIONS):
        raise ValueError(
            f'configs/wan22.py: resolution {res!r} in {arg!r}; only the A14B args '
            'take ",480p" or ",720p" (TI2V-5B is 704x1280).'
        )
    c = wan21.get_config('tiny' if name.startswith('tiny') else 't2v_14b')
    c.hf_id = _HUB.get(name, '')  # hub repo of the diffusers weights
    c.checkpoint = '' if name.startswith('tiny') else f'checkpoints/wan22_{name}'
    s = c.sample
    s.boundary_ratio = None  # two experts: switch at timestep boundary_ratio * 1000
    # (None: one DiT; a converted folder's model_index.json
    # gives it when this is None)
    s.guidance_scale_2 = None  # CFG of the low-noise expert (None: guidance_scale)
    s.expand_timesteps = None  # TI2V per-token timesteps (None: from model_index.json)

    if name == 'ti2v_5b':
        from sora_jax.models.vae import WAN22_LATENTS_MEAN, WAN22_LATENTS_STD

        c.model.dim, c.model.num_heads, c.model.ffn_dim, c.model.depth = 3072, 24, 14336, 30
        c.model.in_channels = c.model.out_channels = c.latent_channels = 48
        v = c.vae  # the Wan 2.2 VAE (sora_jax.models.vae.wan22_config)
        v.base_dim, v.decoder_base_dim, v.z_dim = 160, 256, 48  # encoder / decoder widths, latent
        v.is_residual = True  # residual down / up blocks
        v.patch_size = 2  # 2x2 pixel patches around the VAE: 16x space in total
        v.in_channels = v.out_channels = 12  # 3 colours x 2 x 2 patch
        v.latents_mean, v.latents_std = WAN22_LATENTS_MEAN, WAN22_LATENTS_STD
        s.steps, s.guidance_scale, s.shift = 50, 5.0, 5.0
        s.num_frames, s.height, s.width, s.fps = 121, 704, 1280, 24
        s.expand_timesteps = True
        c.flow.shift = 5.0
    elif name in ('t2v_a14b', 'i2v_a14b'):
        height, width = _RESOLUTIONS[res or '720p']
        s.height, s.width, s.num_frames, s.fps, s.steps = height, width, 81, 16, 40
        if name == 't2v_a14b':
            s.boundary_ratio, s.guidance_scale, s.guidance_scale_2, s.shift = 0.875, 4.0, 3.0, 12.0
        else:  # noise (16) + frame mask (4) + first-frame latents (16) in
            c.model.in_channels = 36
            s.boundary_ratio, s.guidance_scale, s.guidance_scale_2, s.shift = 0.9, 3.5, 3.5, 5.0
        c.flow.shift = s.shift
    elif name == 'tiny':  # the boundary is a timestep of 4 steps at shift 3 (999, 900, 750, 500)
        s.boundary_ratio, s.guidance_scale, s.guidance_scale_2 = 0.9, 4.0, 3.0
    else:  # tiny_ti2v
        c.model.in_channels = c.model.out_channels = c.latent_channels = 8
        v = c.vae
        v.base_dim, v.decoder_base_dim, v.z_dim, v.dim_mult = 4, 6, 8, (1, 2, 4, 4)
        v.is_residual, v.patch_size, v.in_channels, v.out_channels = True, 2, 12, 12
        v.latents_mean = (0.1, -0.2, 0.05, 0.3, 0.0, -0.1, 0.2, 0.15)
        v.latents_std = (1.2, 0.8, 1.5, 0.9, 1.1, 0.7, 1.3, 1.0)
        s.expand_timesteps, s.height, s.width = True, 64, 64
    return c
