"""Frame-mask conditioning: masks per mode, causal frame map, model input, paste, SDEdit, training masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax.diffusion import conditioning as cond
from sora_jax.diffusion import samplers

B, T, H, W, C = 2, 5, 3, 4, 6


def _latents(seed, shape=(B, T, H, W, C)):
    return jax.random.normal(jax.random.key(seed), shape)


def test_latent_masks_per_mode():
    m = lambda *a: cond.latent_mask_for_mode(*a).astype(int).tolist()
    assert m('t2v', 5) == [0, 0, 0, 0, 0]
    assert m('v2v', 5) == [0, 0, 0, 0, 0]
    assert m('t2i', 1) == [0]
    assert m('i2v', 5) == [1, 0, 0, 0, 0]
    assert m('extend', 5, 2) == [1, 1, 0, 0, 0]
    assert m('extend_backward', 5, 2) == [0, 0, 0, 1, 1]
    assert m('connect', 5, (2, 1)) == [1, 1, 0, 0, 1]
    assert m('connect', 5, 1) == [1, 0, 0, 0, 1]
    assert m('loop', 5) == [1, 0, 0, 0, 1]
    with pytest.raises(ValueError, match='cannot have known'):
        cond.latent_mask_for_mode('extend', 5, 5)
    with pytest.raises(ValueError, match="'t2i' has one latent frame"):
        cond.latent_mask_for_mode('t2i', 3)
    with pytest.raises(ValueError, match='unknown conditioning mode'):
        cond.latent_mask_for_mode('inpaint', 3)


def test_causal_frame_map():
    assert cond.num_latent_frames(81) == 21 and cond.num_latent_frames(1) == 1
    assert cond.num_latent_frames(9, temporal_factor=2) == 5
    with pytest.raises(ValueError, match='1 \\+ k \\* 4'):
        cond.num_latent_frames(16)
    assert list(cond.pixel_frames_of_latent(0)) == [0]
    assert list(cond.pixel_frames_of_latent(1)) == [1, 2, 3, 4]
    assert list(cond.pixel_frames_of_latent(3)) == [9, 10, 11, 12]
    for p in range(17):  # the two maps are inverse
        assert p in cond.pixel_frames_of_latent(cond.latent_of_pixel_frame(p))


def test_frame_plan_modes():
    plan = cond.frame_plan('extend', 17, num_known_pixel_frames=9)  # latents 0,1,2 = pixels 0..8
    assert plan['num_latent_frames'] == 5
    assert plan['latent_mask'].astype(int).tolist() == [1, 1, 1, 0, 0]
    assert plan['known_pixel_frames'] == list(range(9))
    plan = cond.frame_plan('extend', 17, num_known_pixel_frames=7)  # latent 2 only partly known
    assert plan['latent_mask'].astype(int).tolist() == [1, 1, 0, 0, 0]
    plan = cond.frame_plan('extend_backward', 17, num_known_pixel_frames=8)
    assert plan['latent_mask'].astype(int).tolist() == [0, 0, 0, 1, 1]
    assert plan['known_pixel_frames'] == list(range(9, 17))
    plan = cond.frame_plan('connect', 17, num_known_pixel_frames=(5, 4))
    assert plan['latent_mask'].astype(int).tolist() == [1, 1, 0, 0, 1]
    assert plan['known_pixel_frames'] == [0, 1, 2, 3, 4, 13, 14, 15, 16]
    plan = cond.frame_plan('i2v', 17)
    assert plan['known_pixel_frames'] == [0] and plan['keep_pixel_frames'] == 17
    plan = cond.frame_plan('loop', 17)
    assert plan['latent_mask'].astype(int).tolist() == [1, 0, 0, 0, 1]
    assert plan['known_pixel_frames'] == [0] and plan['keep_pixel_frames'] == 13
    assert cond.frame_plan('t2i', 1)['num_latent_frames'] == 1
    assert [list(r) for r in cond.frame_plan('t2v', 9, temporal_factor=4)['latent_to_pixel']] == [
        [0],
        [1, 2, 3, 4],
        [5, 6, 7, 8],
    ]


def test_build_condition_modes():
    shape = (B, T, H, W, C)
    img = _latents(1, (B, 1, H, W, C))
    mask, known = cond.build_condition('t2v', shape)
    assert mask.shape == (B, T) and float(mask.sum()) == 0 and float(jnp.abs(known).sum()) == 0
    mask, known = cond.build_condition('i2v', shape, img)
    assert mask[0].tolist() == [1, 0, 0, 0, 0]
    np.testing.assert_array_equal(known[:, 0], img[:, 0])
    assert float(jnp.abs(known[:, 1:]).sum()) == 0
    mask, known = cond.build_condition('loop', shape, img)
    assert mask[1].tolist() == [1, 0, 0, 0, 1]
    np.testing.assert_array_equal(known[:, -1], img[:, 0])
    head = _latents(2, (B, 2, H, W, C))
    mask, known = cond.build_condition('extend', shape, head)
    assert mask[0].tolist() == [1, 1, 0, 0, 0]
    np.testing.assert_array_equal(known[:, :2], head)
    mask, known = cond.build_condition('extend_backward', shape, head)
    assert mask[0].tolist() == [0, 0, 0, 1, 1]
    np.testing.assert_array_equal(known[:, 3:], head)
    mask, known = cond.build_condition('connect', shape, head, img)
    assert mask[0].tolist() == [1, 1, 0, 0, 1]
    np.testing.assert_array_equal(known[:, -1], img[:, 0])
    with pytest.raises(ValueError, match='needs cond_latents'):
        cond.build_condition('i2v', shape)


def _causal_encode(tf=4):
    """A stand-in causal VAE over [B, T, H, W, 3]: latent 0 is frame 0, latent l the mean of
    its `tf` frames (`pixel_frames_of_latent`)."""

    def encode(px):
        t_lat = cond.num_latent_frames(px.shape[1], tf)
        return jnp.stack(
            [px[:, list(cond.pixel_frames_of_latent(i, tf))].mean(1) for i in range(t_lat)], 1
        )

    return encode


def test_condition_from_frames_modes():
    """The pipeline's one path from pixels to (mask, known, frames kept), 9 frames -> 3 latents."""
    enc = _causal_encode()
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (9, 2, 2, 3), dtype=np.uint8)
    px = video.astype(np.float32) / 127.5 - 1.0
    shape, frames = (2, 3, 2, 2, 3), (9, 2, 2)
    lat = np.asarray(enc(jnp.asarray(px[None])))[0]  # [3, 2, 2, 3] of the whole clip
    run = lambda mode, **kw: cond.condition_from_frames(
        mode, enc, shape, frames, temporal_factor=4, **kw
    )

    def check(fc, mask, known_from, keep=9):
        assert fc.mask.shape == (2, 3) and fc.known.shape == shape and fc.keep_frames == keep
        assert fc.mask[0].astype(int).tolist() == mask and np.array_equal(fc.mask[0], fc.mask[1])
        for i, src in enumerate(known_from):  # latent i of `known`: from pixels, or zeros
            want = np.zeros((2, 2, 3)) if src is None else src
            np.testing.assert_allclose(np.asarray(fc.known[1, i]), want, atol=1e-6)

    check(run('t2v'), [0, 0, 0], [None] * 3)
    check(run('t2i'), [0, 0, 0], [None] * 3, keep=1)
    check(run('i2v', image=video[0]), [1, 0, 0], [px[0], None, None])
    check(run('extend', video=video[:5]), [1, 1, 0], [lat[0], lat[1], None])
    check(run('extend', video=video[:3]), [1, 0, 0], [lat[0], None, None])  # latent 1 partial
    check(run('extend_backward', video=video[5:]), [0, 0, 1], [None, None, lat[2]])
    check(run('connect', video=(video[:1], video[5:])), [1, 0, 1], [lat[0], None, lat[2]])
    check(run('loop', image=video[0]), [1, 0, 1], [px[0], None, px[0]], keep=5)
    v2v = run('v2v', video=video)
    assert not np.asarray(v2v.mask).any()
    np.testing.assert_allclose(np.asarray(v2v.known[0]), lat, atol=1e-6)
    seen = []
    ti2v = cond.condition_from_frames(
        'i2v',
        lambda x: seen.append(x.shape) or enc(x),
        shape,
        frames,
        image=video[0],
        first_frame_only=True,
    )
    assert seen == [(2, 1, 2, 2, 3)]  # the image alone, as latent frame 0
    check(ti2v, [1, 0, 0], [px[0], None, None])


@pytest.mark.parametrize(
    'mode,kw,match',
    [
        ('i2v', {}, "mode='i2v' needs image="),
        ('t2v', dict(image=np.zeros((2, 2, 3), np.uint8)), 'takes no image/video'),
        ('i2v', dict(image=np.zeros((4, 4, 3), np.uint8)), r'image has shape \(2, 4, 4, 3\)'),
        ('extend', dict(video=np.zeros((9, 2, 2, 3), np.uint8)), 'needs num_frames > 9'),
        ('v2v', dict(video=np.zeros((5, 2, 2, 3), np.uint8)), 'v2v needs num_frames=9'),
        ('connect', dict(video=np.zeros((5, 2, 2, 3))), r'video=\(head_frames, tail_frames\)'),
        ('extend', dict(video=np.zeros((0, 2, 2, 3), np.uint8)), 'cannot have known'),
        ('extend', dict(video=np.zeros((2, 2, 2, 3), np.uint8), temporal_factor=1), 'make 9'),
    ],
)
def test_condition_from_frames_errors(mode, kw, match):
    with pytest.raises(ValueError, match=match):
        cond.condition_from_frames(
            mode, _causal_encode(), (2, 3, 2, 2, 3), (9, 2, 2), **{'temporal_factor': 4, **kw}
        )


def test_model_input_and_apply_known():
    x = _latents(3)
    known = _latents(4)
    mask = jnp.array([[1.0, 0, 0, 0, 1], [0, 0, 1, 0, 0]])
    inp = cond.model_input(x, mask, known)
    assert inp.shape == (B, T, H, W, 2 * C + 1)
    np.testing.assert_array_equal(inp[..., :C], x)
    np.testing.assert_array_equal(inp[0, 0, ..., C : 2 * C], known[0, 0])
    assert float(jnp.abs(inp[0, 1:4, ..., C : 2 * C]).sum()) == 0
    np.testing.assert_array_equal(
        inp[..., -1], jnp.broadcast_to(mask[:, :, None, None], (B, T, H, W))
    )
    out = cond.apply_known(x, mask, known)
    np.testing.assert_array_equal(out[0, 0], known[0, 0])
    np.testing.assert_array_equal(out[0, 4], known[0, 4])
    np.testing.assert_array_equal(out[1, 2], known[1, 2])
    np.testing.assert_array_equal(out[0, 1:4], x[0, 1:4])
    with pytest.raises(ValueError, match='must be \\[B, T_lat\\]'):
        cond.apply_known(x, mask[:, :3], known)


def test_replace_callback_pins_known_frames_through_sampling():
    known = _latents(5)
    noise = _latents(6)
    mask, known = cond.build_condition('connect', known.shape, known[:, :2], known[:, -1:])
    vel = lambda x, t: noise - jnp.tanh(x)  # any smooth field
    for method in ('euler', 'unipc'):
        x = samplers.sample(
            vel,
            noise,
            method=method,
            num_steps=6,
            shift=3.0,
            step_callback=cond.replace_callback(mask, known, noise),
        )
        np.testing.assert_array_equal(x[:, :2], known[:, :2])
        np.testing.assert_array_equal(x[:, -1], known[:, -1])
        assert float(jnp.abs(x[:, 2:4] - known[:, 2:4]).min()) > 0


def test_sdedit_start():
    x0, noise = _latents(7), _latents(8)
    xs, ts = cond.sdedit_start(x0, noise, 0.0)
    assert ts == 0.0
    np.testing.assert_array_equal(xs, x0)
    np.testing.assert_array_equal(samplers.sample(lambda x, t: x, xs, t_start=ts), x0)
    xs1, ts1 = cond.sdedit_start(x0, noise, 1.0)
    xs2, _ = cond.sdedit_start(x0 + 5.0, noise, 1.0)
    assert ts1 == 1.0
    np.testing.assert_array_equal(xs1, noise)
    np.testing.assert_array_equal(xs2, noise)
    xs, ts = cond.sdedit_start(x0, noise, 0.3)
    assert ts == pytest.approx(0.3)
    np.testing.assert_allclose(xs, 0.7 * x0 + 0.3 * noise, atol=1e-6)
    with pytest.raises(ValueError, match='strength'):
        cond.sdedit_start(x0, noise, 1.5)


def test_random_training_mask_probabilities_and_determinism():
    probs = {
        't2v': 0.4,
        'i2v': 0.2,
        'extend': 0.1,
        'extend_backward': 0.1,
        'connect': 0.1,
        'loop': 0.1,
    }
    n, t = 20000, 6
    draw = jax.jit(lambda key: cond.random_training_mask(key, n, t, probs, return_modes=True))
    mask, modes = draw(jax.random.key(0))
    mask, modes = np.asarray(mask), np.asarray(modes)
    assert mask.shape == (n, t) and mask.dtype == np.float32
    freq = np.bincount(modes, minlength=6) / n
    np.testing.assert_allclose(freq, [probs[m] for m in cond.TRAIN_MODES], atol=0.012)
    by = {name: mask[modes == i] for i, name in enumerate(cond.TRAIN_MODES)}
    assert by['t2v'].sum() == 0
    assert np.all(by['i2v'] == [1, 0, 0, 0, 0, 0])
    assert np.all(by['loop'] == [1, 0, 0, 0, 0, 1])
    ext = by['extend']  # a known prefix of length 1..T-1, all lengths occur
    k = ext.sum(1)
    assert np.all(ext == (np.arange(t)[None] < k[:, None])) and set(k) == set(range(1, t))
    bwd = by['extend_backward']
    k = bwd.sum(1)
    assert np.all(bwd == (np.arange(t)[None] >= t - k[:, None])) and set(k) == set(range(1, t))
    con = by['connect']  # both ends known, a generated gap in between
    assert np.all(con[:, 0] == 1) and np.all(con[:, -1] == 1) and np.all(con.sum(1) <= t - 1)
    assert np.all(np.abs(np.diff(con, axis=1)).sum(1) == 2)
    # Deterministic per key (eager == jitted), different across keys.
    np.testing.assert_array_equal(draw(jax.random.key(0))[0], mask)
    assert not np.array_equal(draw(jax.random.key(1))[0], mask)
    np.testing.assert_array_equal(cond.random_training_mask(jax.random.key(0), n, t, probs), mask)
    # One latent frame (images): every mode falls back to t2v.
    assert float(cond.random_training_mask(jax.random.key(0), 100, 1, probs).sum()) == 0
    with pytest.raises(ValueError, match='unknown training modes'):
        cond.random_training_mask(jax.random.key(0), 4, t, {'v2v': 1.0})


def test_token_timesteps_zero_on_known_frames():
    """Wan 2.2 TI2V (diffusers expand_timesteps): tokens of known latent frames get t = 0, in the
    DiT's (t, h, w) token order; a temporal patch takes the mask of its first frame."""
    t = jnp.array([0.9, 0.4])
    mask = jnp.array([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    out = cond.token_timesteps(t, mask, (2, 4, 4, 6, 8), (1, 2, 2))  # 4 frames x 2 x 3 tokens
    assert out.shape == (2, 24)
    want = np.repeat(np.array([[0.0, 0.9, 0.9, 0.0], [0.4] * 4], np.float32), 6, axis=1)
    np.testing.assert_array_equal(np.asarray(out), want)
    out2 = cond.token_timesteps(t, mask, (2, 4, 4, 6, 8), (2, 2, 2))  # 2 frames x 2 x 3 tokens
    np.testing.assert_array_equal(np.asarray(out2), want.reshape(2, 2, 12)[:, :, :6].reshape(2, 12))
