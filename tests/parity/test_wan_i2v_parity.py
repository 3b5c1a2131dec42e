"""Wan 2.1 image-to-video parity: sora_jax vs diffusers 0.42 `WanImageToVideoPipeline` /
transformers 5 `CLIPVisionModel`, on a tiny random I2V folder (tests/parity/wan_fixture.py,
`configs/wan21.py:tiny_i2v`) converted by `convert_folder`.

Covered: CLIPImageProcessor preprocessing (bit-exact, incl. a Pillow bicubic resize), the CLIP
image features (`hidden_states[-2]`), the I2V DiT velocity (image tokens through add_k_proj /
add_v_proj, 12 = 4 + 4 + 4 input channels; and the FLF2V position table), both key maps, and
the latents and frames of a whole CFG + UniPC run from one image.
"""

import os

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from sora_jax.convert import wan
from sora_jax.convert.clip_vision import clip_vision_key_map
from sora_jax.diffusion import image_condition
from sora_jax.models import clip_preprocess, clip_vision
from sora_jax.models.dit import DiT
from tests.parity.wan_fixture import load_reference_pipeline, make_tiny_wan_folder, tiny_config

FEATURE_ATOL = 1e-5  # CLIP features, |x| ~ 3 (measured ~5e-7)
VELOCITY_RTOL = 1e-4  # DiT velocity, max err / max(1, |ref| max), as test_dit_parity.py
LATENT_ATOL = 1e-3  # as test_wan_pipeline_parity.py (measured ~2e-6)
FRAME_ATOL = 1.5 / 255  # uint8 frames vs diffusers' float frames in [0, 1]
FLOAT_FRAME_ATOL = 1e-4  # the same before rounding


@pytest.fixture(scope='module')
def i2v(tmp_path_factory):
    """(diffusers folder, converted folder, reference WanImageToVideoPipeline, our TextToVideo)."""
    torch.set_num_threads(1)
    from sora_jax.pipeline import TextToVideo

    src = make_tiny_wan_folder(str(tmp_path_factory.mktemp('wan_i2v_src')), i2v=True)
    dst = str(tmp_path_factory.mktemp('wan_i2v_dst'))
    # what experiments/convert_wan.py runs with its default --components (the T2V test runs the
    # CLI itself); image_encoder/ comes along with the transformer
    wan.convert_folder(src, dst, wan.COMPONENTS)
    ref = load_reference_pipeline(src, image_to_video=True)
    return src, dst, ref, TextToVideo.from_wan(dst, tiny_config('tiny_i2v'))


def _image(h, w, seed=0):
    """A smooth random RGB image (uint8): blobs, not white noise, so resizing matters."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w] / max(h, w)
    img = sum(
        np.sin(rng.uniform(2, 9) * xx + rng.uniform(2, 9) * yy + rng.uniform(0, 6))[..., None]
        * rng.uniform(-1, 1, 3)
        for _ in range(4)
    )
    return np.clip(127.5 + 60 * img + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)


def test_converted_folder_has_the_image_components(i2v):
    _, dst, _, pipe = i2v
    for sub in ('image_encoder', 'image_processor', 'transformer', 'vae', 'text_encoder'):
        assert os.path.isdir(os.path.join(dst, sub)), sub
    assert pipe.wan_i2v and pipe.image_encoder is not None
    assert pipe.config.model.in_channels == 12 and pipe.config.model.image_dim == 16


@pytest.mark.parametrize('size', [(32, 32), (45, 70), (90, 33)])
def test_preprocess_matches_clip_image_processor(i2v, size):
    from PIL import Image

    _, _, ref, pipe = i2v
    img = _image(*size, seed=size[0])
    want = ref.image_processor(images=Image.fromarray(img), return_tensors='np')['pixel_values']
    ours = clip_preprocess.preprocess(img, pipe.image_encoder.processor)
    assert ours.shape == (1, 32, 32, 3)
    assert np.abs(ours - want.transpose(0, 2, 3, 1)).max() < 1e-6  # Pillow's resize, bit for bit


def test_clip_features_match(i2v):
    from PIL import Image

    _, _, ref, pipe = i2v
    img = _image(45, 70)
    with torch.no_grad():
        want = ref.encode_image(Image.fromarray(img), torch.device('cpu')).numpy()
    ours = np.asarray(pipe.image_encoder(img))
    assert ours.shape == want.shape == (1, 17, 16)  # 1 + (32 / 8)^2 tokens
    err = np.abs(ours - want).max()
    print(f'CLIP features max|err| {err:.2e} (|ref| max {np.abs(want).max():.2f})')
    assert err < FEATURE_ATOL
    # the penultimate block, not the last: the last block's output differs
    with torch.no_grad():
        px = ref.image_processor(images=Image.fromarray(img), return_tensors='pt')
        last = ref.image_encoder(**px).last_hidden_state.numpy()
    assert np.abs(ours - last).max() > 100 * FEATURE_ATOL


def test_key_maps_cover_both_sides(i2v):
    _, _, ref, _ = i2v
    cfg = wan.dit_config_from_hf(dict(ref.transformer.config))
    assert cfg.image_dim == 16 and cfg.in_channels == 12
    key_map = wan.dit_key_map(cfg.depth, image=True)
    assert set(key_map.rules) == set(ref.transformer.state_dict())
    targets = wan.state_targets(nnx.split(nnx.eval_shape(lambda: DiT(cfg, rngs=nnx.Rngs(0))))[1])
    assert {r.target for r in key_map.rules.values()} == set(targets)

    ccfg = clip_vision.CLIPVisionConfig.from_hf(ref.image_encoder.config.to_dict())
    cmap = clip_vision_key_map(ccfg.num_hidden_layers)
    assert set(cmap.rules) == set(ref.image_encoder.state_dict())
    assert set(cmap.aliases) == {f'vision_model.{k}' for k in cmap.rules}  # transformers < 5 names
    ctargets = wan.state_targets(
        nnx.split(nnx.eval_shape(lambda: clip_vision.CLIPVisionEncoder(ccfg, rngs=nnx.Rngs(0))))[1]
    )
    assert {r.target for r in cmap.rules.values()} == set(ctargets)


def _velocities(ref_model, dit, x, ts, ctx, img, img_ours):
    """(diffusers, ours) velocities, channels first; x: [B, C, T, H, W] numpy."""
    with torch.no_grad():
        ref = ref_model(
            torch.from_numpy(x),
            torch.from_numpy(ts),
            torch.from_numpy(ctx),
            torch.from_numpy(img),
            return_dict=False,
        )[0].numpy()
    fn = jax.jit(lambda a, b, c, i: dit(a, b, c, image=i))
    out = fn(x.transpose(0, 2, 3, 4, 1), ts / 1000.0, ctx, img_ours)
    return ref, np.asarray(out).transpose(0, 4, 1, 2, 3), fn


def test_dit_velocity_matches(i2v):
    """The fixture's converted I2V DiT vs its diffusers original, one forward."""
    _, _, ref_pipe, pipe = i2v
    c = tiny_config('tiny_i2v')
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, c.model.in_channels, 2, 4, 6)).astype(np.float32)
    ctx = rng.standard_normal((2, 512, c.model.text_dim)).astype(np.float32)  # text: last 512
    img = rng.standard_normal((2, 17, c.model.image_dim)).astype(np.float32)
    ts = np.array([999.0, 250.0], np.float32)
    dit = nnx.merge(pipe.graphdef, pipe.params)
    ref, out, fn = _velocities(ref_pipe.transformer, dit, x, ts, ctx, img, img)
    assert out.shape == ref.shape == (2, 4, 2, 4, 6)
    err = np.abs(out - ref).max() / max(1.0, np.abs(ref).max())
    print(f'I2V DiT velocity max err (scaled) {err:.2e}')
    assert err < VELOCITY_RTOL
    # the image tokens matter: the other example's features move the velocity
    other = np.asarray(fn(x.transpose(0, 2, 3, 4, 1), ts / 1000.0, ctx, img[::-1]))
    assert np.abs(other.transpose(0, 4, 1, 2, 3) - ref).max() > 1e-2
    with pytest.raises(ValueError, match='needs image='):
        dit(x.transpose(0, 2, 3, 4, 1), ts / 1000.0, ctx)


def test_flf2v_dit_velocity_matches(tmp_path):
    """FLF2V: first + last image tokens with a learned position table (pos_embed_seq_len)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    kw = dict(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=9,
        out_channels=4,
        text_dim=16,
        freq_dim=32,
        ffn_dim=40,
        num_layers=2,
        image_dim=20,
        added_kv_proj_dim=24,
        pos_embed_seq_len=10,
    )
    model = WanTransformer3DModel(**kw).eval()
    with torch.no_grad():  # randomise the zero/one-initialised parameters too
        for name, p in model.named_parameters():
            if 'norm' in name or name.endswith('bias') or 'pos_embed' in name:
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name.endswith('weight') else 0.0))
    model.save_pretrained(str(tmp_path))
    dit = wan.load_dit(str(tmp_path), attention='xla')
    assert dit.cfg.image_pos_len == 10
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 9, 3, 4, 6)).astype(np.float32)
    ctx = rng.standard_normal((2, 512, 16)).astype(np.float32)
    img = rng.standard_normal((4, 5, 20)).astype(np.float32)
    # diffusers views [2B, S, D] as [B, 2S, D] (first, last image of each example)
    ref, out, _ = _velocities(
        model, dit, x, np.array([999.0, 250.0], np.float32), ctx, img, img.reshape(2, 10, 20)
    )
    err = np.abs(out - ref).max() / max(1.0, np.abs(ref).max())
    print(f'FLF2V DiT velocity max err (scaled) {err:.2e}')
    assert err < VELOCITY_RTOL


def test_mask_channels_follow_diffusers():
    m = image_condition.mask_channels(9, 4)
    assert m.shape == (3, 4) and m[0].tolist() == [1, 1, 1, 1] and not m[1:].any()
    flf = image_condition.mask_channels(9, 4, last_frame=True)  # the last pixel frame only
    assert flf[0].tolist() == [1, 1, 1, 1] and flf[2].tolist() == [0, 0, 0, 1]
    with pytest.raises(ValueError, match='1 \\+ 4k'):
        image_condition.mask_channels(8, 4)


@pytest.fixture(scope='module')
def run(i2v):
    """One I2V sampling run of both pipelines: CFG 5, 3 UniPC steps, 5 frames of 32x48."""
    from PIL import Image

    _, _, ref, pipe = i2v
    c = tiny_config('tiny_i2v')
    frames, h, w = 5, 32, 48
    img = _image(h, w, seed=3)
    noise = torch.randn(1, 4, 2, h // 8, w // 8, generator=torch.Generator().manual_seed(1))
    kw = dict(
        prompt=['A red circle moves to the left.'],
        negative_prompt=['static, blurred'],
        num_frames=frames,
        height=h,
        width=w,
        num_inference_steps=3,
        guidance_scale=5.0,
    )
    with torch.no_grad():
        ref_lat = ref(
            image=Image.fromarray(img),
            **kw,
            latents=noise,
            output_type='latent',
            max_sequence_length=c.text.max_length,
        ).frames.numpy()
        ref_np = ref(
            image=Image.fromarray(img),
            **kw,
            latents=noise,
            output_type='np',
            max_sequence_length=c.text.max_length,
        ).frames
    ours = dict(
        kw,
        sampler='unipc',
        shift=c.sample.shift,
        mode='i2v',
        image=img,
        latents=noise.permute(0, 2, 3, 4, 1).numpy(),
        progress=False,
        watermark=False,
    )
    lat = pipe(**ours, output_type='latent')
    return pipe, ours, ref_lat.transpose(0, 2, 3, 4, 1), ref_np, lat


def test_sample_latents_match(run):
    _, ours, ref_lat, _, lat = run
    assert lat.shape == ref_lat.shape == (1, 2, 4, 6, 4)
    err = np.abs(lat - ref_lat).max()
    moved = np.abs(ref_lat - ours['latents']).max()
    print(f'I2V latents max|err| {err:.2e} (moved {moved:.2f} from the noise)')
    assert moved > 0.1
    assert err < LATENT_ATOL


def test_sample_frames_match(run):
    import jax.numpy as jnp

    pipe, ours, _, ref_np, lat = run
    vid = pipe(**ours, output_type='np')
    assert vid.dtype == np.uint8 and vid.shape == ref_np.shape == (1, 5, 32, 48, 3)
    frame_err = np.abs(vid.astype(np.float32) / 255.0 - ref_np).max()
    ours_f = np.clip(np.asarray(pipe.vae.decode(jnp.asarray(lat))) / 2 + 0.5, 0.0, 1.0)
    float_err = np.abs(ours_f - ref_np).max()
    print(f'I2V frames max|err| uint8 {frame_err * 255:.3f}/255, float {float_err:.2e}')
    assert ref_np.std() > 0.01
    assert frame_err < FRAME_ATOL and float_err < FLOAT_FRAME_ATOL


def test_i2v_model_refuses_other_modes(i2v):
    _, _, _, pipe = i2v
    with pytest.raises(ValueError, match="image-to-video model; call it with mode='i2v'"):
        pipe('a cat', num_frames=5, height=32, width=32, progress=False)
    with pytest.raises(ValueError, match='image has shape'):  # any size, but an RGB image
        pipe(
            'a cat',
            num_frames=5,
            height=32,
            width=32,
            mode='i2v',
            image=np.zeros((16, 16), np.uint8),
            progress=False,
        )


def test_transformers4_key_layout_converts(i2v, tmp_path):
    """Hub folders written by transformers < 5 prefix every key with `vision_model.`."""
    import shutil

    from safetensors.torch import save_file

    src, _, ref, pipe = i2v
    shutil.copy(os.path.join(src, 'image_encoder', 'config.json'), tmp_path / 'config.json')
    save_file(
        {f'vision_model.{k}': v.contiguous() for k, v in ref.image_encoder.state_dict().items()},
        str(tmp_path / 'model.safetensors'),
    )
    enc = wan.load_component(str(tmp_path), 'image_encoder')
    px = clip_preprocess.preprocess(_image(32, 32), pipe.image_encoder.processor)
    ours = np.asarray(pipe.image_encoder(_image(32, 32)))
    assert np.abs(np.asarray(enc.penultimate(px)) - ours).max() < 1e-6  # same weights
