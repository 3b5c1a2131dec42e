"""Samplers on the analytic Gaussian flow: accuracy, convergence order, guidance, hooks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax.diffusion import samplers

MU, S = 0.7, 0.5  # data x0 ~ N(MU, S^2) per element, noise ~ N(0, 1)


def _sigma(t):
    return jnp.sqrt((1 - t) ** 2 * S**2 + t**2)


def gaussian_velocity(x, t):
    """Exact marginal velocity E[eps - x0 | x_t] for Gaussian data.

    x_t ~ N((1 - t) MU, sigma_t^2) with sigma_t^2 = (1 - t)^2 S^2 + t^2; the probability-flow map is
    affine, x_t = (1 - t) MU + sigma_t eps, so v = -MU + sigma_t' / sigma_t (x - (1 - t) MU) and the
    exact ODE solution from eps at t = 1 is x0 = MU + S eps.
    """
    t = t.reshape(t.shape + (1,) * (x.ndim - 1)).astype(x.dtype)
    sig = _sigma(t)
    dsig = (-(1 - t) * S**2 + t) / sig
    return -MU + dsig / sig * (x - (1 - t) * MU)


@pytest.fixture(scope='module')
def eps():
    return jax.random.normal(jax.random.key(0), (512, 2, 4))


def test_make_sigmas_schedule():
    s = samplers.make_sigmas(10, shift=3.0)
    assert s.shape == (11,) and s[0] == 1.0 and s[-1] == 0.0 and np.all(np.diff(s) < 0)
    u = np.linspace(1.0, 1e-3, 11)[:-1]
    np.testing.assert_allclose(s[:-1], 3 * u / (1 + 2 * u), rtol=1e-12)
    lin = samplers.make_sigmas(4, num_train_timesteps=None)
    np.testing.assert_allclose(lin, [1.0, 0.75, 0.5, 0.25, 0.0])
    half = samplers.make_sigmas(5, shift=3.0, t_start=0.6)
    assert half[0] == pytest.approx(0.6) and half[-1] == 0.0 and np.all(np.diff(half) < 0)
    with pytest.raises(ValueError, match='num_steps'):
        samplers.make_sigmas(0)


@pytest.mark.parametrize('method', samplers.METHODS)
def test_samplers_reach_gaussian_target(method, eps):
    x = samplers.sample(gaussian_velocity, eps, method=method, num_steps=30, shift=3.0)
    assert x.shape == eps.shape and x.dtype == jnp.float32
    exact = MU + S * eps
    # Max error / std error at 30 steps (measured: euler .18/.047, heun .042/.011, unipc .0047/.0012,
    # dpmpp_2m .0012/.0003); Heun's last step is Euler over t in [0.095, 0].
    tol_max, tol_std = {
        'euler': (0.25, 0.06),
        'heun': (0.06, 0.015),
        'unipc': (0.01, 0.003),
        'dpmpp_2m': (0.01, 0.003),
    }[method]
    assert float(jnp.max(jnp.abs(x - exact))) < tol_max
    assert float(jnp.mean(x)) == pytest.approx(float(jnp.mean(exact)), abs=0.005)
    assert float(jnp.std(x)) == pytest.approx(float(jnp.std(exact)), abs=tol_std)
    assert float(jnp.mean(x)) == pytest.approx(MU, abs=0.05)
    assert float(jnp.std(x)) == pytest.approx(S, abs=tol_std + 0.03)


def _slope(method):
    """-d log(error) / d log(N) over N = 32..256 (float64, evenly spaced t)."""
    ns = [32, 64, 128, 256]
    with jax.enable_x64(True):
        e = jax.random.normal(jax.random.key(1), (8, 16), jnp.float64)
        exact = MU + S * e
        errs = []
        for n in ns:
            sig = samplers.make_sigmas(n, num_train_timesteps=None)
            x = samplers.sample(gaussian_velocity, e, method=method, sigmas=sig)
            assert x.dtype == jnp.float64
            errs.append(float(jnp.sqrt(jnp.mean((x - exact) ** 2))))
    return -np.polyfit(np.log(ns), np.log(errs), 1)[0], errs


def test_order_of_accuracy():
    slopes, errs = {}, {}
    for m in samplers.METHODS:
        slopes[m], errs[m] = _slope(m)
        assert all(a > b for a, b in zip(errs[m], errs[m][1:])), (m, errs[m])
    assert 0.9 < slopes['euler'] < 1.1, slopes
    assert 1.85 < slopes['heun'] < 2.15, slopes
    assert 1.8 < slopes['unipc'] < 3.2, slopes
    # DPM++(2M) on uniform-t steps: error ~ log(N) / N^2 (large lambda-steps near t = 1) -> ~1.75.
    assert 1.6 < slopes['dpmpp_2m'] < 2.3, slopes
    for m in ('heun', 'unipc', 'dpmpp_2m'):
        assert errs[m][-1] < errs['euler'][-1] / 10, errs


def test_python_loop_matches_scan_and_calls_back(eps):
    seen = []
    a = samplers.sample(gaussian_velocity, eps, method='unipc', num_steps=6, shift=2.0)
    b = samplers.sample(
        gaussian_velocity,
        eps,
        method='unipc',
        num_steps=6,
        shift=2.0,
        loop='python',
        callback=lambda i, t, x: seen.append((i, t, x.shape)),
    )
    np.testing.assert_allclose(a, b, atol=1e-6)
    sig = samplers.make_sigmas(6, 2.0)
    assert [s[0] for s in seen] == list(range(6))
    np.testing.assert_allclose([s[1] for s in seen], sig[1:], atol=1e-7)
    x, traj = samplers.sample(
        gaussian_velocity, eps, method='heun', num_steps=5, return_trajectory=True
    )
    assert traj.shape == (5,) + eps.shape
    np.testing.assert_array_equal(traj[-1], x)
    with pytest.raises(ValueError, match='unknown sampler'):
        samplers.sample(gaussian_velocity, eps, method='ddim')


def test_sample_inside_jit_and_t_start(eps):
    fn = jax.jit(lambda n: samplers.sample(gaussian_velocity, n, method='dpmpp_2m', num_steps=8))
    np.testing.assert_allclose(
        fn(eps), samplers.sample(gaussian_velocity, eps, method='dpmpp_2m', num_steps=8), atol=1e-6
    )
    np.testing.assert_array_equal(samplers.sample(gaussian_velocity, eps, t_start=0.0), eps)
    # Starting from the exact state at t = 0.5 lands on the same x0 as the full run.
    x_half = (1 - 0.5) * MU + _sigma(0.5) * eps
    x = samplers.sample(gaussian_velocity, x_half, method='heun', num_steps=40, t_start=0.5)
    assert float(jnp.max(jnp.abs(x - (MU + S * eps)))) < 5e-3


def _two_field_model(x2, t2):
    """Batched cond/uncond model: first half -> +1, second half -> -1 (times t for a t-dependence)."""
    b = x2.shape[0] // 2
    sign = jnp.concatenate([jnp.ones(b), -jnp.ones(b)]).reshape((-1,) + (1,) * (x2.ndim - 1))
    return sign * (1.0 + x2) * (1.0 + t2.reshape(sign.shape))


def test_cfg_scale_one_is_conditional_and_interval():
    x = jax.random.normal(jax.random.key(3), (3, 4))
    t = jnp.array([0.2, 0.5, 0.9])
    v_c = (1.0 + x) * (1.0 + t[:, None])
    np.testing.assert_array_equal(samplers.cfg_velocity(_two_field_model, 1.0)(x, t), v_c)
    v = samplers.cfg_velocity(_two_field_model, 4.0, (0.3, 0.8))(x, t)
    # Outside [0.3, 0.8]: conditional; inside: v_c + 3 (v_c - v_u) = v_c + 3 * 2 v_c = 7 v_c.
    np.testing.assert_array_equal(v[0], v_c[0])
    np.testing.assert_array_equal(v[2], v_c[2])
    np.testing.assert_allclose(v[1], 7.0 * v_c[1], rtol=1e-6)
    # With a cond-only model, steps fully outside the interval skip the unconditional half.
    cond_fn = lambda xx, tt: (
        (1.0 + xx) * (1.0 + tt[:, None]) + 100.0
    )  # marks "skipped uncond" calls
    vs = samplers.cfg_velocity(_two_field_model, 4.0, (0.3, 0.8), cond_fn=cond_fn)
    np.testing.assert_allclose(vs(x, jnp.full((3,), 0.9)), (1 + x) * 1.9 + 100.0, rtol=1e-6)
    np.testing.assert_allclose(vs(x, jnp.full((3,), 0.5)), 7.0 * (1 + x) * 1.5, rtol=1e-6)
    with pytest.raises(ValueError, match='guidance_interval'):
        samplers.cfg_velocity(_two_field_model, 2.0, (0.8, 0.3))


def test_sample_with_guidance_equals_wrapped_velocity(eps):
    guided = samplers.sample(
        _two_field_model,
        eps[:4],
        method='euler',
        num_steps=4,
        guidance=2.0,
        guidance_interval=(0.5, 1.0),
    )
    manual = samplers.sample(
        samplers.cfg_velocity(_two_field_model, 2.0, (0.5, 1.0)),
        eps[:4],
        method='euler',
        num_steps=4,
    )
    np.testing.assert_array_equal(guided, manual)
    cond_only = samplers.sample(
        _two_field_model, eps[:4], method='euler', num_steps=4, guidance=1.0
    )
    np.testing.assert_allclose(
        cond_only,
        samplers.sample(
            lambda x, t: (1.0 + x) * (1.0 + t[:, None, None]), eps[:4], method='euler', num_steps=4
        ),
        rtol=1e-6,
    )


def test_step_callback_applied_every_step(eps):
    # A callback that zeroes element [.., 0, 0] pins it at 0 from start to finish for every solver.
    cb = lambda x, t: x.at[:, 0, 0].set(0.0)
    for m in samplers.METHODS:
        x, traj = samplers.sample(
            gaussian_velocity,
            eps[:8],
            method=m,
            num_steps=5,
            step_callback=cb,
            return_trajectory=True,
        )
        assert float(jnp.max(jnp.abs(traj[:, :, 0, 0]))) == 0.0
        assert float(jnp.min(jnp.abs(x[:, 1:]))) > 0.0


def test_timestep_quantization_feeds_integer_times(eps):
    seen = []
    vel = lambda x, t: (
        jax.debug.callback(lambda tt: seen.append(float(tt[0])), t),
        gaussian_velocity(x, t),
    )[1]
    samplers.sample(
        vel,
        eps[:2],
        method='unipc',
        num_steps=4,
        shift=5.0,
        timestep_quantization=1000,
        loop='python',
    )
    sig = samplers.make_sigmas(4, 5.0)
    expected = np.floor(np.concatenate([[1 - 1e-6], sig[1:-1]]) * 1000) / 1000
    np.testing.assert_allclose(seen, expected, atol=1e-6)


@pytest.mark.parametrize('loop', ['scan', 'python'])
def test_velocity_traced_once_per_sample(eps, loop):
    """The (big) model has one call site: traced once per sampling run, for every method."""
    for m in samplers.METHODS:
        traces = []

        def vel(x, t):
            traces.append(1)  # runs at trace time only
            return gaussian_velocity(x, t)

        samplers.sample(vel, eps[:2], method=m, num_steps=5, loop=loop)
        assert len(traces) == 1, (m, loop, len(traces))


def _three_field_model(x3, t3):
    """Rows: cond (+1), uncond (-1), weakened cond (+0.5), each times (1 + x)."""
    b = x3.shape[0] // 3
    sign = jnp.concatenate([jnp.ones(b), -jnp.ones(b), 0.5 * jnp.ones(b)]).reshape(
        (-1,) + (1,) * (x3.ndim - 1)
    )
    return sign * (1.0 + x3)


def test_skip_layer_guidance_term_and_interval():
    x = jax.random.normal(jax.random.key(4), (3, 4))
    t = jnp.array([0.1, 0.5, 0.9])
    v_c = 1.0 + x
    v = samplers.cfg_velocity(_three_field_model, 1.0, skip_scale=2.0, skip_interval=(0.3, 1.0))(
        x, t
    )
    # outside the skip interval: v_c; inside: v_c + 2 (v_c - 0.5 v_c) = 2 v_c
    np.testing.assert_allclose(v[0], v_c[0], rtol=1e-6)
    np.testing.assert_allclose(v[1:], 2.0 * v_c[1:], rtol=1e-6)
    # with CFG 3 as well: v_c + 2 (v_c + v_c) + 2 (0.5 v_c) = 6 v_c
    v = samplers.cfg_velocity(_three_field_model, 3.0, skip_scale=2.0)(x, t)
    np.testing.assert_allclose(v, 6.0 * v_c, rtol=1e-6)
    with pytest.raises(ValueError, match='skip_interval'):
        samplers.cfg_velocity(_three_field_model, 1.0, skip_scale=1.0, skip_interval=(0.9, 0.1))
    with pytest.raises(ValueError, match='skip_scale'):
        samplers.cfg_velocity(_three_field_model, 1.0, skip_scale=-1.0)


@pytest.mark.parametrize(
    'boundary,quantization,high_at,low_at',
    [
        (0.9, 1000, (0.999, 0.9, 0.901), (0.899, 0.75, 0.0)),  # timestep 900 = 0.9 x 1000: high
        (0.875, 1000, (0.875, 0.876), (0.874, 0.5)),
        (0.9, None, (0.9, 0.95), (0.8999, 0.1)),
    ],
)
def test_two_experts_switch_at_the_boundary_timestep(boundary, quantization, high_at, low_at):
    """Wan 2.2 A14B (diffusers WanPipeline): the high-noise expert while t_train >= boundary x
    1000 on the integer timestep the DiT sees, then the low-noise one."""
    v = jax.jit(
        samplers.two_experts(lambda x, t: x + 1.0, lambda x, t: x + 2.0, boundary, quantization)
    )
    x = jnp.zeros((2, 3))
    for t, want in [(t, 1.0) for t in high_at] + [(t, 2.0) for t in low_at]:
        tq = np.floor(t * quantization) / quantization if quantization else t  # what sample feeds
        out = v(x, jnp.full((2,), tq, jnp.float32))
        assert float(out[0, 0]) == want, (t, tq)
