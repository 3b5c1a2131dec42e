"""Rectified-flow primitives: noising, targets, loss, timestep sampling, shifts."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax.diffusion import flow


def test_add_noise_endpoints_and_midpoint():
    x0 = jnp.arange(6.0).reshape(2, 3)
    eps = -jnp.ones((2, 3))
    np.testing.assert_array_equal(flow.add_noise(x0, eps, jnp.zeros(2)), x0)
    np.testing.assert_array_equal(flow.add_noise(x0, eps, jnp.ones(2)), eps)
    xt = flow.add_noise(x0, eps, jnp.array([0.25, 0.5]))
    np.testing.assert_allclose(xt, [[-0.25, 0.5, 1.25], [1.0, 1.5, 2.0]], rtol=0, atol=1e-7)


def test_velocity_is_time_derivative_and_inverts():
    k1, k2 = jax.random.split(jax.random.key(0))
    x0 = jax.random.normal(k1, (3, 2, 4, 4, 5))
    eps = jax.random.normal(k2, x0.shape)
    t = jnp.array([0.1, 0.5, 0.9])
    v = flow.velocity_target(x0, eps)
    h = 1e-3
    fd = (flow.add_noise(x0, eps, t + h) - flow.add_noise(x0, eps, t - h)) / (2 * h)
    np.testing.assert_allclose(fd, v, atol=2e-3)
    xt = flow.add_noise(x0, eps, t)
    np.testing.assert_allclose(flow.x0_from_velocity(xt, v, t), x0, atol=1e-5)
    np.testing.assert_allclose(flow.noise_from_velocity(xt, v, t), eps, atol=1e-5)


def test_data_prediction_gives_the_true_velocity():
    """A perfect x0 prediction converts to exactly eps - x0 for t >= t_min; below t_min the
    division is clipped (finite), and 'velocity' passes through unchanged."""
    k1, k2 = jax.random.split(jax.random.key(3))
    x0 = jax.random.normal(k1, (4, 2, 3, 3, 3))
    eps = jax.random.normal(k2, x0.shape)
    t = jnp.array([0.05, 0.3, 0.7, 1.0])
    xt = flow.add_noise(x0, eps, t)
    v = flow.to_velocity(x0, xt, t, 'data')
    np.testing.assert_allclose(v, flow.velocity_target(x0, eps), atol=2e-5)
    wrong = flow.to_velocity(x0 + 0.1, xt, t, 'data')
    assert float(jnp.abs(wrong - v).max()) > 0.09
    tiny = jnp.full((4,), 1e-4)
    v0 = flow.to_velocity(x0 + 1.0, flow.add_noise(x0, eps, tiny), tiny, 'data')
    assert bool(jnp.isfinite(v0).all()) and float(jnp.abs(v0).max()) < 1.0 / 0.05 + 1.0
    np.testing.assert_array_equal(flow.to_velocity(eps, xt, t, 'velocity'), eps)
    with pytest.raises(ValueError, match="unknown prediction 'eps'"):
        flow.to_velocity(x0, xt, t, 'eps')


def test_data_prediction_with_a_time_per_frame():
    """Diffusion forcing's t [B, T, 1, 1, 1] (one per latent frame): each frame converts as a
    clip at that frame's t would; a t that does not broadcast is refused."""
    k1, k2 = jax.random.split(jax.random.key(4))
    x0 = jax.random.normal(k1, (2, 4, 3, 3, 2))
    eps = jax.random.normal(k2, x0.shape)
    t = jnp.array([[0.2, 0.2, 0.9, 0.9], [0.6, 0.6, 0.03, 0.03]])[:, :, None, None, None]
    xt = (1 - t) * x0 + t * eps
    out = x0 + 0.05 * eps  # an imperfect x0 prediction
    v = flow.to_velocity(out, xt, t, 'data')
    for f in range(4):
        tf = t[:, f, 0, 0, 0]
        want = flow.to_velocity(out[:, f], xt[:, f], tf, 'data')
        np.testing.assert_allclose(v[:, f], want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match='broadcast|incompatible'):
        flow.to_velocity(out, xt, jnp.ones((2, 3, 1, 1, 1)), 'data')


def test_flow_loss_values():
    v_pred = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    target = jnp.zeros((2, 2))
    assert float(flow.flow_loss(target, target)) == 0.0
    assert float(flow.flow_loss(v_pred, target)) == pytest.approx(7.5)  # (1+4+9+16)/4
    np.testing.assert_allclose(flow.flow_loss(v_pred, target, reduction='per_example'), [2.5, 12.5])
    # Leading-aligned mask [B, T]: exclude the second "frame" -> (1 + 9) / 2.
    assert float(
        flow.flow_loss(v_pred, target, jnp.array([[1.0, 0.0], [1.0, 0.0]]))
    ) == pytest.approx(5.0)
    # Per-example weights [B]: only the first example -> 2.5.
    assert float(flow.flow_loss(v_pred, target, jnp.array([1.0, 0.0]))) == pytest.approx(2.5)
    # Frame mask on video-shaped tensors: a masked frame may hold anything.
    vp = jnp.zeros((1, 3, 2, 2, 4)).at[:, 0].set(100.0).at[:, 1].set(1.0)
    assert float(
        flow.flow_loss(vp, jnp.zeros_like(vp), jnp.array([[0.0, 1.0, 1.0]]))
    ) == pytest.approx(0.5)
    with pytest.raises(ValueError, match='must match'):
        flow.flow_loss(v_pred, jnp.zeros((2, 3)))


def test_logit_normal_statistics():
    mean, std = 0.5, 1.2
    t = np.asarray(flow.sample_timesteps(jax.random.key(1), 20000, mean=mean, std=std))
    assert t.shape == (20000,) and t.dtype == np.float32
    assert 0.0 < t.min() and t.max() < 1.0
    assert np.median(t) == pytest.approx(1 / (1 + math.exp(-mean)), abs=0.01)
    logit = np.log(t / (1 - t))
    assert logit.mean() == pytest.approx(mean, abs=0.03) and logit.std() == pytest.approx(
        std, abs=0.03
    )
    u = np.asarray(flow.sample_timesteps(jax.random.key(2), 20000, method='uniform'))
    assert u.mean() == pytest.approx(0.5, abs=0.01) and np.mean(u < 0.25) == pytest.approx(
        0.25, abs=0.01
    )
    # The shift is applied after drawing: the median moves to shift_time(sigmoid(mean)).
    ts = np.asarray(flow.sample_timesteps(jax.random.key(1), 20000, mean=mean, std=std, shift=3.0))
    np.testing.assert_allclose(ts, flow.shift_time(t, 3.0), rtol=1e-6)
    # Deterministic per key.
    np.testing.assert_array_equal(
        t, flow.sample_timesteps(jax.random.key(1), 20000, mean=mean, std=std)
    )
    with pytest.raises(ValueError, match='unknown timestep method'):
        flow.sample_timesteps(jax.random.key(0), 4, method='cosine')


def test_shift_time_identity_monotone_inverse():
    t = np.linspace(0.0, 1.0, 101)
    np.testing.assert_array_equal(flow.shift_time(t, 1.0), t)
    for s in (0.5, 3.0, 5.0):
        ts = flow.shift_time(t, s)
        assert ts[0] == 0.0 and ts[-1] == pytest.approx(1.0)
        assert np.all(np.diff(ts) > 0)
        np.testing.assert_allclose(flow.unshift_time(ts, s), t, atol=1e-12)
    assert flow.shift_time(0.5, 3.0) == pytest.approx(0.75)  # 1.5 / 2
    assert np.all(flow.shift_time(t[1:-1], 3.0) > t[1:-1])  # shift > 1 moves towards noise
    with pytest.raises(ValueError, match='shift must be > 0'):
        flow.shift_time(t, 0.0)


def test_shift_for_tokens_formula():
    assert flow.shift_for_tokens(256, 1, 2.0) == pytest.approx(2.0)
    # 4x the spatial tokens -> 2x shift; 9x frames -> 3x shift.
    assert flow.shift_for_tokens(1024, 1, 2.0) == pytest.approx(4.0)
    assert flow.shift_for_tokens(9 * 256, 9, 2.0) == pytest.approx(6.0)
    shifts = [flow.shift_for_tokens(n * 5 * 64, 5, 1.0) for n in range(1, 20)]
    assert np.all(np.diff(shifts) > 0)
    assert flow.shift_for_tokens(64, 1, 1.0) == 1.0  # min_shift clip
    assert flow.shift_for_tokens(10**6, 10, 1.0, max_shift=7.0) == 7.0  # max_shift clip
    with pytest.raises(ValueError, match='not a multiple'):
        flow.shift_for_tokens(100, 3)
