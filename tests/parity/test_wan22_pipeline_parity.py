"""Wan 2.2 end to end: `TextToVideo.from_wan` samples Wan 2.2 folders like diffusers does.

* A14B (two experts): a tiny random folder with `transformer/` (high noise) and `transformer_2/`
  (low noise) and `boundary_ratio` in model_index.json, converted by `convert_folder`; the run
  switches experts at the boundary timestep (with `guidance_scale_2` after the switch) exactly as
  `diffusers.WanPipeline(transformer, transformer_2, boundary_ratio)`.
  On `configs/wan21.py:tiny` (its tiny Wan 2.1 VAE), sampled with `configs/wan22.py:tiny`.
* TI2V (`expand_timesteps`): text-to-video as `WanPipeline(expand_timesteps=True)` and
  image-to-video as `WanImageToVideoPipeline(expand_timesteps=True)` (the image's latent frame
  enters the DiT clean with per-token timestep 0 and is pasted into the result), on
  `configs/wan22.py:tiny_ti2v` (a tiny Wan 2.2 residual VAE: 16x space, 8 latent channels).
* I2V-A14B: two experts whose input is Wan 2.1 I2V's (noise, 4 mask channels, the image's
  latents) without CLIP image tokens, as `WanImageToVideoPipeline(transformer, transformer_2,
  boundary_ratio)` runs it; on `configs/wan21.py:tiny_i2v` with `model.image_dim = 0`.
Latents and decoded frames are compared.
"""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from sora_jax.convert import wan
from tests.parity.wan_fixture import (
    WAN22_CONFIG_PATH,
    load_reference_pipeline,
    make_tiny_wan_folder,
    tiny_config,
)

LATENT_ATOL = 1e-3  # max |ours - diffusers| over the sampled latents
FRAME_ATOL = 1.5 / 255  # uint8 frames in [0, 1]: rounding (<= 0.5 / 255) + float error
FLOAT_FRAME_ATOL = 1e-4  # the same frames before rounding
PROMPTS = [
    'A red circle moves to the left across a blue background.',
    'Two yellow triangles bounce up and down, then stop.',
]
NEGS = ['static, blurred details', '']


def _converted(tmp_path_factory, name, config, **folder_kw):
    from sora_jax.pipeline import TextToVideo

    src = make_tiny_wan_folder(
        str(tmp_path_factory.mktemp(f'{name}_src')), config=config, **folder_kw
    )
    dst = str(tmp_path_factory.mktemp(f'{name}_dst'))
    wan.convert_folder(src, dst)
    return src, dst, TextToVideo.from_wan(dst, tiny_config(name, WAN22_CONFIG_PATH))


@pytest.fixture(scope='module')
def a14b(tmp_path_factory):
    torch.set_num_threads(1)
    src, dst, pipe = _converted(
        tmp_path_factory, 'tiny', tiny_config(), two_experts=True, boundary_ratio=0.9
    )
    return src, dst, load_reference_pipeline(src), pipe


@pytest.fixture(scope='module')
def ti2v(tmp_path_factory):
    torch.set_num_threads(1)
    src, _, pipe = _converted(
        tmp_path_factory,
        'tiny_ti2v',
        tiny_config('tiny_ti2v', WAN22_CONFIG_PATH),
        expand_timesteps=True,
    )
    return load_reference_pipeline(src), load_reference_pipeline(src, image_to_video=True), pipe


def _noise(b, frames, height, width, ch=4, seed=1, spatial=8):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(
        b, ch, 1 + (frames - 1) // 4, height // spatial, width // spatial, generator=gen
    )


def _compare(name, pipe, ref_lat, ref_np, lat, vid, noise):
    """Asserts latents and frames match; returns the latent error."""
    ref_lat = ref_lat.transpose(0, 2, 3, 4, 1)  # [B, T', h, w, C] like ours
    assert lat.shape == ref_lat.shape
    lat_err = np.abs(lat - ref_lat).max()
    moved = np.abs(ref_lat - noise.permute(0, 2, 3, 4, 1).numpy()).max()
    frame_err = np.abs(vid.astype(np.float32) / 255.0 - ref_np).max()
    ours_f = np.clip(np.asarray(pipe.vae.decode(jnp.asarray(lat))) / 2 + 0.5, 0.0, 1.0)
    float_err = np.abs(ours_f - ref_np).max()
    print(
        f'{name}: latents max|err| {lat_err:.2e} (moved {moved:.2f}); frames uint8 '
        f'{frame_err * 255:.3f}/255, float {float_err:.2e}'
    )
    assert moved > 0.1 and ref_np.std() > 0.01  # not vacuous
    assert vid.dtype == np.uint8 and vid.shape == ref_np.shape
    assert lat_err < LATENT_ATOL and frame_err < FRAME_ATOL and float_err < FLOAT_FRAME_ATOL
    return lat_err


def _ours(pipe, **kw):
    kw = dict(kw, sampler='unipc', progress=False, watermark=False)
    return pipe(**kw, output_type='latent'), pipe(**kw, output_type='np')


def test_from_wan_reads_the_two_experts(a14b):
    _, dst, _, pipe = a14b
    assert pipe.boundary_ratio == 0.9 and pipe.params_2 is not None
    assert not pipe.expand_timesteps
    assert wan.pipeline_settings(dst) == {'boundary_ratio': 0.9, 'expand_timesteps': False}
    k1 = np.asarray(pipe.params['blocks']['attn1']['to_q']['kernel'][...])
    k2 = np.asarray(pipe.params_2['blocks']['attn1']['to_q']['kernel'][...])
    assert k1.shape == k2.shape and np.abs(k1 - k2).max() > 0.01  # two different experts


def test_a14b_experts_restore_into_the_same_shardings(a14b):
    """With a mesh (fsdp 2 x tensor 4 of the 8 simulated devices) `transformer_2` is restored by
    the same logical rules as `transformer`: equal shardings leaf by leaf, split arrays."""
    from flax import nnx

    from sora_jax.convert.checkpoint import load_wan
    from sora_jax.parallel import mesh as mesh_lib

    _, dst, _, pipe = a14b
    mesh = mesh_lib.make_mesh((1, 2, 4, 1))
    m = load_wan(dst, mesh=mesh)
    one, two = (nnx.to_flat_state(nnx.state(x)) for x in (m.transformer, m.transformer_2))
    want = nnx.to_flat_state(mesh_lib.state_shardings(nnx.state(m.transformer_2), mesh))
    plain = nnx.to_flat_state(pipe.params_2)
    n_split = 0
    for (p1, a), (p2, b), (_, sh), (p3, ref) in zip(one, two, want, plain):
        assert p1 == p2 == p3
        a, b = a.get_value(), b.get_value()
        assert b.sharding.is_equivalent_to(sh.get_value(), b.ndim)
        assert b.sharding.is_equivalent_to(a.sharding, b.ndim)
        np.testing.assert_array_equal(np.asarray(b), np.asarray(ref.get_value()))
        n_split += not b.sharding.is_fully_replicated
    assert n_split >= 10


def test_a14b_sample_matches_diffusers(a14b):
    """4 steps at shift 3: timesteps 999, 900 (high-noise expert, CFG 4: 900 is the boundary
    0.9 x 1000 itself, high as diffusers' `t >= boundary`), 750, 500 (low-noise expert, CFG 3 =
    guidance_scale_2)."""
    _, _, ref, pipe = a14b
    frames, h, w, steps = 5, 32, 32, 4
    noise = _noise(2, frames, h, w)
    kw = dict(
        prompt=PROMPTS,
        negative_prompt=NEGS,
        num_frames=frames,
        height=h,
        width=w,
        num_inference_steps=steps,
        guidance_scale=4.0,
        guidance_scale_2=3.0,
    )
    ref.scheduler.set_timesteps(steps)
    assert [int(t) for t in ref.scheduler.timesteps] == [999, 900, 750, 500]
    n = tiny_config().text.max_length
    with torch.no_grad():
        ref_lat = ref(**kw, latents=noise, output_type='latent', max_sequence_length=n).frames
        ref_np = ref(**kw, latents=noise, output_type='np', max_sequence_length=n).frames
        # the comparison sees both experts and guidance_scale_2:
        same_g = ref(
            **dict(kw, guidance_scale_2=4.0),
            latents=noise,
            output_type='latent',
            max_sequence_length=n,
        ).frames.numpy()
        expert_2, ref.transformer_2 = ref.transformer_2, None
        ref.register_to_config(boundary_ratio=None)
        try:
            one = ref(
                **dict(kw, guidance_scale_2=None),
                latents=noise,
                output_type='latent',
                max_sequence_length=n,
            ).frames.numpy()
        finally:
            ref.transformer_2 = expert_2
            ref.register_to_config(boundary_ratio=0.9)
    lat, vid = _ours(pipe, **kw, latents=noise.permute(0, 2, 3, 4, 1).numpy())
    err = _compare('a14b', pipe, ref_lat.numpy(), ref_np, lat, vid, noise)
    for other in (same_g, one):
        assert np.abs(lat - other.transpose(0, 2, 3, 4, 1)).max() > 100 * err


def test_guidance_scale_2_needs_two_experts(ti2v):
    *_, pipe = ti2v
    with pytest.raises(ValueError, match='two-expert'):
        pipe('a red circle', guidance_scale_2=3.0, num_inference_steps=1, progress=False)


def test_ti2v_text_to_video_matches_diffusers(ti2v):
    ref, _, pipe = ti2v
    assert pipe.expand_timesteps and pipe.params_2 is None
    frames, h, w, steps = 9, 64, 96, 3
    noise = _noise(2, frames, h, w, ch=8, seed=2, spatial=16)
    kw = dict(
        prompt=PROMPTS,
        negative_prompt=NEGS,
        num_frames=frames,
        height=h,
        width=w,
        num_inference_steps=steps,
        guidance_scale=5.0,
    )
    n = tiny_config().text.max_length
    with torch.no_grad():
        ref_lat = ref(**kw, latents=noise, output_type='latent', max_sequence_length=n).frames
        ref_np = ref(**kw, latents=noise, output_type='np', max_sequence_length=n).frames
    lat, vid = _ours(pipe, **kw, latents=noise.permute(0, 2, 3, 4, 1).numpy())
    _compare('ti2v t2v', pipe, ref_lat.numpy(), ref_np, lat, vid, noise)


def test_ti2v_image_to_video_matches_diffusers(ti2v):
    """The image's latent frame is kept (per-token timestep 0 on its tokens), as diffusers'
    WanImageToVideoPipeline(expand_timesteps=True) does."""
    import PIL.Image

    _, ref_i2v, pipe = ti2v
    frames, h, w, steps = 9, 64, 96, 3
    rng = np.random.default_rng(3)
    image = (rng.uniform(0, 255, (h // 8, w // 8, 3))).astype(np.uint8)  # smooth: upsampled
    image = np.asarray(PIL.Image.fromarray(image).resize((w, h), PIL.Image.BILINEAR))
    noise = _noise(2, frames, h, w, ch=8, seed=4, spatial=16)  # the t2v shapes: one decode
    kw = dict(
        prompt=PROMPTS,
        negative_prompt=NEGS,
        num_frames=frames,
        height=h,  # compile
        width=w,
        num_inference_steps=steps,
        guidance_scale=5.0,
    )
    n = tiny_config().text.max_length
    with torch.no_grad():
        common = dict(kw, image=PIL.Image.fromarray(image), latents=noise, max_sequence_length=n)
        ref_lat = ref_i2v(**common, output_type='latent').frames
        ref_np = ref_i2v(**common, output_type='np').frames
    lat, vid = _ours(
        pipe, **kw, mode='i2v', image=image, latents=noise.permute(0, 2, 3, 4, 1).numpy()
    )
    _compare('ti2v i2v', pipe, ref_lat.numpy(), ref_np, lat, vid, noise)
    # the first latent frame is the image's latent (batch 1 here: float rounding differs)
    img = image[None, None].astype(np.float32) / 127.5 - 1.0
    enc = np.asarray(pipe.vae.encode(jnp.asarray(img)))[:, 0]  # [1, h, w, C]
    np.testing.assert_allclose(lat[:, 0], np.broadcast_to(enc, lat[:, 0].shape), atol=1e-6)


@pytest.fixture(scope='module')
def i2v_a14b(tmp_path_factory):
    torch.set_num_threads(1)
    from sora_jax.pipeline import TextToVideo

    c = tiny_config('tiny_i2v')
    c.model.image_dim = 0  # Wan 2.2 I2V-A14B: image latents in the input channels, no CLIP
    del c['image_encoder']
    src = make_tiny_wan_folder(
        str(tmp_path_factory.mktemp('i2v_a14b_src')),
        config=c,
        i2v=True,
        two_experts=True,
        boundary_ratio=0.9,
    )
    dst = str(tmp_path_factory.mktemp('i2v_a14b_dst'))
    wan.convert_folder(src, dst)
    return c, load_reference_pipeline(src, image_to_video=True), TextToVideo.from_wan(dst, c)


def test_i2v_a14b_sample_matches_diffusers(i2v_a14b):
    """4 steps, the high-noise expert (CFG 4) at timesteps >= 900, the low-noise one after
    (guidance_scale_2 = 3); the image's latents and mask channels beside the noise every step."""
    import PIL.Image

    c, ref, pipe = i2v_a14b
    assert pipe.wan_i2v and pipe.image_encoder is None and pipe.boundary_ratio == 0.9
    frames, h, w, steps = 5, 32, 32, 4
    rng = np.random.default_rng(5)
    image = (rng.uniform(0, 255, (h // 8, w // 8, 3))).astype(np.uint8)  # smooth: upsampled
    image = np.asarray(PIL.Image.fromarray(image).resize((w, h), PIL.Image.BILINEAR))
    noise = _noise(2, frames, h, w, seed=6)
    kw = dict(
        prompt=PROMPTS,
        negative_prompt=NEGS,
        num_frames=frames,
        height=h,
        width=w,
        num_inference_steps=steps,
        guidance_scale=4.0,
        guidance_scale_2=3.0,
    )
    with torch.no_grad():
        common = dict(
            kw,
            image=PIL.Image.fromarray(image),
            latents=noise,
            max_sequence_length=c.text.max_length,
        )
        ref_lat = ref(**common, output_type='latent').frames
        ref_np = ref(**common, output_type='np').frames
    lat, vid = _ours(
        pipe,
        **kw,
        shift=c.sample.shift,
        mode='i2v',
        image=image,
        latents=noise.permute(0, 2, 3, 4, 1).numpy(),
    )
    _compare('i2v a14b', pipe, ref_lat.numpy(), ref_np, lat, vid, noise)
