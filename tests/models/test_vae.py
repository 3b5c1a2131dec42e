"""Causal video VAE: causality, chunked == whole, image == 1-frame video, shapes, errors, tiling,
and parity with diffusers' AutoencoderKLWan (when torch is installed)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sora_jax.models import vae as V

T, H, W = 9, 16, 24  # 3 latent frames, 4x6 latent pixels with the tiny config


def numpy_init_vae(cfg, seed=0):
    """A WanVAE with torch-default-like random weights drawn by numpy (no XLA compile per
    parameter shape, which dominates eager init time on a busy CPU)."""
    vae = nnx.eval_shape(lambda: V.WanVAE(cfg, rngs=nnx.Rngs(0)))
    rs = np.random.RandomState(seed)
    flat = dict(nnx.to_flat_state(nnx.state(vae, nnx.Param)))
    for path, var in flat.items():
        shape = var.shape
        if path[-1] == 'kernel' and 'proj' not in path:  # proj is zero-initialised like Wan
            value = rs.uniform(-1, 1, shape) / np.sqrt(np.prod(shape[:-1]))
        else:
            value = np.full(shape, 1.0 if path[-1] == 'gamma' else 0.0)
        var.set_value(jnp.asarray(value, jnp.float32))
    nnx.update(vae, nnx.from_flat_state(flat))
    return vae


@pytest.fixture(scope='module')
def vae():
    return numpy_init_vae(V.tiny_config())


@pytest.fixture(scope='module')
def fns(vae):
    return dict(
        encode=V.jitted(vae, 'encode'),
        encode_chunked=V.jitted(vae, 'encode_chunked'),
        decode=V.jitted(vae, 'decode', clip=False),
        decode_chunked=V.jitted(vae, 'decode_chunked', clip=False),
    )


@pytest.fixture(scope='module')
def video():
    return jax.random.uniform(jax.random.key(1), (2, T, H, W, 3), minval=-1.0, maxval=1.0)


@pytest.fixture(scope='module')
def latents(fns, video):
    return fns['encode'](video)[0]


def test_factors_and_latent_shape(vae):
    assert (vae.spatial_factor, vae.temporal_factor) == (4, 4)
    assert vae.latent_shape(1, 8, 8) == (1, 2, 2, 4)
    assert vae.latent_shape(17, 32, 64) == (5, 8, 16, 4)
    wan = V.wan21_config()
    abstract = nnx.eval_shape(lambda: V.WanVAE(wan, rngs=nnx.Rngs(0)))
    assert (abstract.spatial_factor, abstract.temporal_factor) == (8, 4)
    # Wan 2.1 at 81 x 480 x 832 -> latent [21, 60, 104, 16]
    assert abstract.latent_shape(81, 480, 832) == (21, 60, 104, 16)


@pytest.mark.parametrize('t,h,w', [(1, 8, 8), (5, 16, 8), (13, 8, 32)])
def test_output_shapes(vae, t, h, w):
    x = jax.ShapeDtypeStruct((2, t, h, w, 3), jnp.float32)
    lt = 1 + (t - 1) // 4
    for method in ('encode', 'encode_chunked'):
        mean, logvar = jax.eval_shape(getattr(vae, method), x)
        assert mean.shape == logvar.shape == (2, lt, h // 4, w // 4, 4)
    z = jax.ShapeDtypeStruct((2, lt, h // 4, w // 4, 4), jnp.float32)
    for method in ('decode', 'decode_chunked'):
        assert jax.eval_shape(getattr(vae, method), z).shape == (2, t, h, w, 3)


@pytest.mark.parametrize(
    'shape,match',
    [
        ((1, 8, 16, 16, 3), r'num_frames=8 .*1 \+ 4k.* 5 or 9 frames'),
        ((1, 0, 16, 16, 3), r'num_frames=0'),
        ((1, 5, 18, 16, 3), r'18x16 .*spatial factor 4.* 16x16'),
        ((1, 5, 16, 16, 4), r'\[B, T, H, W, 3\]'),
    ],
)
def test_invalid_inputs_raise(vae, shape, match):
    with pytest.raises(ValueError, match=match):
        vae.encode(jnp.zeros(shape))
    with pytest.raises(ValueError, match=match):
        vae.encode_chunked(jnp.zeros(shape))


def test_invalid_latent_shape_raises(vae):
    with pytest.raises(ValueError, match=r'\[B, T, H, W, 4\]'):
        vae.decode(jnp.zeros((1, 2, 4, 4, 3)))
    with pytest.raises(ValueError, match='num_frames=6'):
        vae.latent_shape(6, 16, 16)


@pytest.mark.slow
def test_chunked_equals_whole(fns, video, latents):
    mean_c, logvar_c = fns['encode_chunked'](video)
    mean, logvar = fns['encode'](video)
    assert mean.shape == (2, 3, 4, 6, 4)
    assert float(jnp.max(jnp.abs(mean_c - mean))) < 1e-4  # measured 3e-7
    assert float(jnp.max(jnp.abs(logvar_c - logvar))) < 1e-4
    rec, rec_c = fns['decode'](latents), fns['decode_chunked'](latents)
    assert rec.shape == video.shape
    assert float(jnp.max(jnp.abs(rec_c - rec))) < 1e-4  # measured ~3e-6
    assert float(jnp.std(rec)) > 0.05  # not trivially zero


@pytest.mark.slow
def test_chunked_memory_is_flat_in_frames(vae):
    graphdef, state = nnx.split(vae)

    def temp_bytes(method, latent_frames):
        f = jax.jit(lambda s, z: getattr(nnx.merge(graphdef, s), method)(z))
        z = jax.ShapeDtypeStruct((1, latent_frames, 4, 4, 4), jnp.float32)
        return f.lower(state, z).compile().memory_analysis().temp_size_in_bytes

    short, long = temp_bytes('decode_chunked', 3), temp_bytes('decode_chunked', 17)  # 9 / 65 frames
    assert long < 1.1 * short, (short, long)  # measured 1.02x at 64x64, 17 vs 129 frames
    assert temp_bytes('decode', 17) > 3 * temp_bytes('decode', 3)  # the whole path grows


def test_encoder_is_causal(fns, video):
    # Frame 5 starts latent chunk 2 (frames 5..8); latents 0, 1 must not move.
    changed = video.at[:, 5].set(-video[:, 5])
    for name in ('encode', 'encode_chunked'):
        a, b = fns[name](video)[0], fns[name](changed)[0]
        assert float(jnp.max(jnp.abs(a[:, :2] - b[:, :2]))) <= 1e-6
        assert float(jnp.max(jnp.abs(a[:, 2] - b[:, 2]))) > 1e-3


def test_roundtrip_is_causal(fns, video):
    changed = video.at[:, 5].set(-video[:, 5])
    a = fns['decode'](fns['encode'](video)[0])
    b = fns['decode'](fns['encode'](changed)[0])
    assert float(jnp.max(jnp.abs(a[:, :5] - b[:, :5]))) <= 1e-6
    assert float(jnp.max(jnp.abs(a[:, 5:] - b[:, 5:]))) > 1e-3


def test_decoder_is_causal(fns, latents):
    changed = latents.at[:, 1].add(1.0)  # latent 1 decodes to frames 1..4
    for name in ('decode', 'decode_chunked'):
        a, b = fns[name](latents), fns[name](changed)
        assert float(jnp.max(jnp.abs(a[:, :1] - b[:, :1]))) <= 1e-6
        assert float(jnp.max(jnp.abs(a[:, 1:5] - b[:, 1:5]))) > 1e-3


def test_image_is_one_frame_video(vae, fns, video, latents):
    image = video[:, :1]  # [B, 1, H, W, 3]
    mean, _ = fns['encode_chunked'](image)
    assert mean.shape == (2, 1, 4, 6, 4)
    np.testing.assert_allclose(mean, latents[:, :1], atol=1e-5)
    dec = jax.jit(lambda z: vae.decode(z, clip=False))(mean)
    assert dec.shape == image.shape
    np.testing.assert_allclose(dec, fns['decode'](latents)[:, :1], atol=1e-5)


def test_latent_normalisation_roundtrip():
    cfg = V.VAEConfig(
        base_dim=4,
        z_dim=2,
        dim_mult=(1, 1),
        num_res_blocks=1,
        temperal_downsample=(True,),
        latents_mean=(1.0, -2.0),
        latents_std=(2.0, 0.5),
    )
    vae = nnx.eval_shape(lambda: V.WanVAE(cfg, rngs=nnx.Rngs(0)))  # only the config is used
    z = jnp.array([[3.0, -2.0]])
    np.testing.assert_allclose(vae.normalize_latents(z), [[1.0, 0.0]])
    np.testing.assert_allclose(vae.denormalize_latents(vae.normalize_latents(z)), z)
    with pytest.raises(ValueError, match='latents_std'):
        V.VAEConfig(
            z_dim=2,
            dim_mult=(1, 1),
            temperal_downsample=(True,),
            latents_mean=None,
            latents_std=(1.0,),
        ).validate()


def test_tile_blending_is_exact_for_a_local_function(vae):
    # With a pixel-local "decoder" every tile agrees on the overlap, so blending must be exact:
    # this checks tile placement, overlap weights and normalisation. [1, 2, 4, 11, 4] latents.
    z = jax.random.normal(jax.random.key(2), (1, 2, 4, 11, 4))
    up = lambda t: jnp.repeat(jnp.repeat(t, 4, axis=2), 4, axis=3)[..., :3]
    out = vae._tiled(up, z, 4, 2, 4, 1, 3, 2)  # tiles of 4 latent px at stride 2 (last shifted)
    assert out.shape == (1, 2, 16, 44, 3)
    assert float(jnp.max(jnp.abs(out - up(z)))) < 1e-6


@pytest.fixture(scope='module')
def wide(video):
    return jnp.concatenate([video[:1, :5, :8]] * 11, axis=3)[:, :, :, :256]  # [1, 5, 8, 256, 3]


@pytest.mark.slow
def test_tiled_decode_close_to_untiled(vae, wide):
    z = jax.jit(vae.encode)(wide)[0]  # [1, 2, 2, 64, 4]
    ref = jax.jit(lambda z: vae.decode_chunked(z, clip=False))(z)
    err = {}
    for size, stride in ((64, 32), (128, 64)):
        tiled = jax.jit(lambda z: vae.tiled_decode(z, size, stride, clip=False))(z)
        assert tiled.shape == ref.shape == wide.shape
        err[size] = (float(jnp.mean(jnp.abs(tiled - ref))), float(jnp.max(jnp.abs(tiled - ref))))
    # Random init: outputs std ~0.25, receptive field ~+-13 latent px, so the error comes from
    # tile borders and shrinks with the tile/overlap. Measured (mean, max): 64/32 px
    # (0.033, 0.43), 128/64 px (0.0070, 0.13).
    assert err[128][0] < 0.02 and err[128][1] < 0.5
    assert err[128][0] < 0.5 * err[64][0]


def test_tiled_encode_close_to_untiled(vae, wide):
    ref = jax.jit(vae.encode)(wide)[0]
    tiled = jax.jit(lambda x: vae.tiled_encode(x, 128, 64)[0])(wide)
    assert tiled.shape == ref.shape == (1, 2, 2, 64, 4)
    mean_err = float(jnp.mean(jnp.abs(tiled - ref)))
    assert mean_err < 0.05 * float(jnp.std(ref)), mean_err


@pytest.mark.slow
def test_streaming_equals_chunked_and_compiles_once_per_chunk_shape(vae, fns, video, latents):
    mean = jnp.concatenate([m for m, _ in V.stream_encode(vae, np.asarray(video))], axis=1)
    np.testing.assert_allclose(mean, latents, atol=1e-5)
    frames = jnp.concatenate(list(V.stream_decode(vae, latents, clip=False)), axis=1)
    np.testing.assert_allclose(frames, fns['decode_chunked'](latents), atol=1e-5)
    # The jitted chunk functions are cached per graphdef for the process, so another test file
    # on this worker may have compiled other shapes: count what this clip adds.
    first, nxt = V._stream_fns(nnx.graphdef(vae), 'decode')
    compiled = (first._cache_size(), nxt._cache_size())
    assert min(compiled) >= 1
    longer = jnp.concatenate([latents, latents], axis=1)  # 6 latent frames: no new compile
    assert len(list(V.stream_decode(vae, longer))) == 6
    assert (first._cache_size(), nxt._cache_size()) == compiled


@pytest.mark.parametrize(
    'kernel,stride,padding',
    [
        (3, 1, 1),  # the residual-block conv
        ((3, 1, 1), (2, 1, 1), 0),  # downsample3d's time conv (time stride 2)
        ((1, 3, 3), (1, 2, 2), 0),  # a space-strided conv
        (1, 1, 0),  # 1x1x1 (quant conv, shortcut)
    ],
)
def test_causal_conv_by_taps_equals_a_3d_convolution(kernel, stride, padding):
    """CausalConv3d sums 2D convolutions over its temporal taps; it must equal lax's 3D conv of
    the causally padded input (same weights, same strides)."""
    from sora_jax.models.vae_blocks import CausalConv3d

    conv = CausalConv3d(3, 5, kernel, stride=stride, padding=padding, rngs=nnx.Rngs(0))
    conv.bias.set_value(jax.random.normal(jax.random.key(2), conv.bias.shape))
    x = jax.random.normal(jax.random.key(1), (2, 7, 10, 12, 3))
    pt, ph, pw = conv.time_pad, *conv.space_pad
    xp = jnp.pad(x, ((0, 0), (pt, 0), (ph, ph), (pw, pw), (0, 0)))
    want = (
        jax.lax.conv_general_dilated(
            xp,
            conv.kernel[...],
            conv.strides,
            'VALID',
            dimension_numbers=('NDHWC', 'DHWIO', 'NDHWC'),
            precision=jax.lax.Precision.HIGHEST,
        )
        + conv.bias[...]
    )
    got = conv(x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4)
