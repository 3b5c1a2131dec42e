"""Wan 2.1 first-and-last-frame (FLF2V) and image input handling vs diffusers 0.42
`WanImageToVideoPipeline(image=..., last_image=...)`.

The tiny random I2V folder of tests/parity/wan_fixture.py (`configs/wan21.py:tiny_i2v`) with
the FLF2V position table (`pos_embed_seq_len` = 2 x 17 image tokens), converted by
`convert_folder`. diffusers builds the condition video [first, zeros, last], the mask with the
first and last pixel frames known, and the CLIP tokens of both images ([2, S, D] viewed as
[1, 2S, D]); both images go in at other sizes than the sample's (the first at twice the size,
the last at an odd aspect ratio): resized for the VAE (Pillow Lanczos), seen by CLIP as given.
The one-image I2V folder of test_wan_i2v_parity.py checks the same input handling for mode='i2v'.
"""

import numpy as np
import pytest
import torch

from sora_jax.convert import wan
from tests.parity.test_wan_i2v_parity import (
    FLOAT_FRAME_ATOL,
    FRAME_ATOL,
    LATENT_ATOL,
    _image,
    i2v,  # noqa: F401  (the one-image I2V fixture, reused)
)
from tests.parity.wan_fixture import load_reference_pipeline, make_tiny_wan_folder, tiny_config

TOKENS = 17  # CLIP tokens per image: 1 + (32 / 8)^2


@pytest.fixture(scope='module')
def flf(tmp_path_factory):
    """(reference WanImageToVideoPipeline, our TextToVideo) over the tiny FLF2V folder."""
    torch.set_num_threads(1)
    from sora_jax.pipeline import TextToVideo

    c = tiny_config('tiny_i2v')
    c.model.image_pos_len = 2 * TOKENS
    src = make_tiny_wan_folder(str(tmp_path_factory.mktemp('flf_src')), i2v=True, config=c)
    dst = str(tmp_path_factory.mktemp('flf_dst'))
    wan.convert_folder(src, dst, wan.COMPONENTS)
    ref = load_reference_pipeline(src, image_to_video=True)
    assert ref.transformer.config.pos_embed_seq_len == 2 * TOKENS
    return ref, TextToVideo.from_wan(dst, tiny_config('tiny_i2v'))


def _run(ref, pipe, images: dict, mode: str, h=32, w=48, frames=5, seed=1):
    """(our latents, diffusers' latents, our uint8 frames, diffusers' float frames, noise):
    CFG 5, 3 UniPC steps, as test_wan_i2v_parity.py."""
    from PIL import Image

    c = tiny_config('tiny_i2v')
    noise = torch.randn(1, 4, 2, h // 8, w // 8, generator=torch.Generator().manual_seed(seed))
    kw = dict(
        prompt=['A red circle moves to the left.'],
        negative_prompt=['static, blurred'],
        num_frames=frames,
        height=h,
        width=w,
        num_inference_steps=3,
        guidance_scale=5.0,
    )
    pil = {k: Image.fromarray(v) for k, v in images.items()}
    with torch.no_grad():
        ref_kw = dict(kw, **pil, latents=noise, max_sequence_length=c.text.max_length)
        ref_lat = ref(**ref_kw, output_type='latent').frames.numpy()
        ref_np = ref(**ref_kw, output_type='np').frames
    ours = dict(
        kw,
        **images,
        sampler='unipc',
        shift=c.sample.shift,
        mode=mode,
        latents=noise.permute(0, 2, 3, 4, 1).numpy(),
        progress=False,
        watermark=False,
    )
    lat = pipe(**ours, output_type='latent')
    vid = pipe(**ours, output_type='np')
    return lat, ref_lat.transpose(0, 2, 3, 4, 1), vid, ref_np, ours['latents']


def _check(pipe, lat, ref_lat, vid, ref_np, noise, name):
    import jax.numpy as jnp

    assert lat.shape == ref_lat.shape
    err = np.abs(lat - ref_lat).max()
    moved = np.abs(ref_lat - noise).max()
    frame_err = np.abs(vid.astype(np.float32) / 255.0 - ref_np).max()
    ours_f = np.clip(np.asarray(pipe.vae.decode(jnp.asarray(lat))) / 2 + 0.5, 0.0, 1.0)
    float_err = np.abs(ours_f - ref_np).max()
    print(
        f'{name}: latents max|err| {err:.2e} (moved {moved:.2f}); frames uint8 '
        f'{frame_err * 255:.3f}/255, float {float_err:.2e}'
    )
    assert moved > 0.1 and ref_np.std() > 0.01
    assert err < LATENT_ATOL
    assert vid.shape == ref_np.shape and frame_err < FRAME_ATOL and float_err < FLOAT_FRAME_ATOL


@pytest.fixture(scope='module')
def flf_run(flf):
    ref, pipe = flf
    images = dict(image=_image(64, 96, seed=3), last_image=_image(50, 29, seed=4))
    return flf, images, _run(ref, pipe, images, 'flf2v')


def test_flf2v_matches_diffusers(flf_run):
    """First image at 2x the sample size, last at an odd aspect ratio."""
    (_, pipe), _, out = flf_run
    _check(pipe, *out, 'FLF2V')


def test_flf2v_last_image_matters(flf_run):
    """Another last image moves the sample well past the parity tolerance: it is used."""
    (_, pipe), images, (lat, _, _, _, noise) = flf_run
    c = tiny_config('tiny_i2v')
    other = pipe(
        'A red circle moves to the left.',
        negative_prompt='static, blurred',
        num_frames=5,
        height=32,
        width=48,
        num_inference_steps=3,
        guidance_scale=5.0,
        sampler='unipc',
        shift=c.sample.shift,
        mode='flf2v',
        image=images['image'],
        last_image=_image(50, 29, seed=9),
        latents=noise,
        progress=False,
        watermark=False,
        output_type='latent',
    )
    assert np.abs(other - lat).max() > 100 * LATENT_ATOL


def test_flf2v_refusals(flf, i2v):  # noqa: F811
    _, pipe = flf
    img = _image(32, 32)
    kw = dict(num_frames=5, height=32, width=32, progress=False)
    with pytest.raises(
        ValueError, match="first-and-last-frame \\(FLF2V\\) model: call it with mode='flf2v'"
    ):
        pipe('a cat', mode='i2v', image=img, **kw)
    with pytest.raises(ValueError, match="mode='flf2v' needs last_image="):
        pipe('a cat', mode='flf2v', image=img, **kw)
    one = i2v[3]  # a one-image I2V model has no position table for two images
    with pytest.raises(ValueError, match='needs a first-and-last-frame model'):
        one('a cat', mode='flf2v', image=img, last_image=img, **kw)


@pytest.mark.parametrize('size', [(64, 96), (90, 33)])
def test_i2v_resizes_the_image_like_diffusers(i2v, size):  # noqa: F811
    """mode='i2v' with a 2x-size and an odd-aspect image (sampled at 32x48): the VAE gets it
    resized, CLIP as given, as WanImageToVideoPipeline does."""
    _, _, ref, pipe = i2v
    _check(pipe, *_run(ref, pipe, dict(image=_image(*size, seed=5)), 'i2v'), f'I2V {size}')
