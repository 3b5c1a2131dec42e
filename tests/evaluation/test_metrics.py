"""PSNR / SSIM: identities, closed forms, input ranges, per-frame averaging."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax.evaluation import metrics


@pytest.fixture(scope='module')
def video():
    return jax.random.uniform(jax.random.key(0), (2, 3, 16, 16, 3), minval=-1.0, maxval=1.0)


def test_identical_videos(video):
    assert float(metrics.psnr(video, video)) == math.inf
    assert float(metrics.ssim(video, video)) == pytest.approx(1.0, abs=1e-6)


def test_psnr_known_offset():
    a = jnp.zeros((1, 2, 8, 8, 3))
    # +0.1 in [-1, 1] is +0.05 in [0, 1]: MSE 0.0025 -> 10 log10(1 / 0.0025) = 26.0206 dB
    assert float(metrics.psnr(a, a + 0.1)) == pytest.approx(26.0206, abs=1e-3)
    u = jnp.full((2, 8, 8, 3), 100, jnp.uint8)
    # 10 / 255 levels: 20 log10(25.5) = 28.1308 dB
    assert float(metrics.psnr(u, u + 10)) == pytest.approx(28.1308, abs=1e-3)


def test_psnr_gaussian_noise_matches_formula(video):
    noise = 0.02 * jax.random.normal(jax.random.key(1), video.shape)
    noisy = video + noise
    mse = np.mean(np.square(np.asarray(noise) / 2.0), axis=(-3, -2, -1))  # [B, T] in [0, 1] units
    expected = np.mean(10.0 * np.log10(1.0 / mse))
    assert float(metrics.psnr(video, noisy)) == pytest.approx(expected, abs=1e-3)
    assert metrics.psnr_per_frame(video, noisy).shape == (2, 3)
    # ~ 10 log10(1 / 0.01^2) = 40 dB for sigma 0.01 in [0, 1] units
    assert float(metrics.psnr(video, noisy)) == pytest.approx(40.0, abs=0.3)


def test_psnr_is_the_mean_over_frames():
    a = jnp.zeros((1, 2, 4, 4, 3))
    b = a.at[:, 0].add(0.1).at[:, 1].add(0.2)  # frames at 26.02 dB and 20.00 dB
    assert float(metrics.psnr(a, b)) == pytest.approx((26.0206 + 20.0) / 2, abs=1e-3)


def test_ssim_constant_frames_closed_form():
    # Constant frames have zero variance, so SSIM = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1).
    ua, ub, c1 = 0.25, 0.75, 0.01**2
    a = jnp.full((1, 1, 16, 16, 3), 2 * ua - 1)
    b = jnp.full((1, 1, 16, 16, 3), 2 * ub - 1)
    expected = (2 * ua * ub + c1) / (ua**2 + ub**2 + c1)
    assert float(metrics.ssim(a, b)) == pytest.approx(expected, rel=1e-4)


def test_ssim_range_and_noise_order(video):
    s1 = float(
        metrics.ssim(video, video + 0.05 * jax.random.normal(jax.random.key(2), video.shape))
    )
    s2 = float(metrics.ssim(video, video + 0.3 * jax.random.normal(jax.random.key(3), video.shape)))
    assert 1.0 > s1 > s2 > 0.0
    assert float(metrics.ssim(video, -video)) < 0.0  # anti-correlated
    assert float(metrics.ssim(video, video * 0.5)) == pytest.approx(
        float(metrics.ssim(video * 0.5, video)), abs=1e-6
    )  # symmetric


def test_uint8_and_float_agree(video):
    u8 = np.round((np.asarray(video) + 1) * 127.5).astype(np.uint8)
    f = u8.astype(np.float32) / 127.5 - 1.0
    noisy = np.clip(u8.astype(np.int32) + 7, 0, 255).astype(np.uint8)
    fn = noisy.astype(np.float32) / 127.5 - 1.0
    assert float(metrics.psnr(u8, noisy)) == pytest.approx(float(metrics.psnr(f, fn)), abs=1e-3)
    assert float(metrics.ssim(u8, noisy)) == pytest.approx(float(metrics.ssim(f, fn)), abs=1e-5)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match='shapes'):
        metrics.psnr(jnp.zeros((2, 8, 8, 3)), jnp.zeros((2, 8, 4, 3)))
    with pytest.raises(ValueError, match='uint8 or float'):
        metrics.psnr(jnp.zeros((2, 8, 8, 3), jnp.int32), jnp.zeros((2, 8, 8, 3), jnp.int32))
