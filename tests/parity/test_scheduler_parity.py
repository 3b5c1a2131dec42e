"""Scheduler parity with diffusers: one full sampling run of UniPC (Wan 2.1), Euler and DPM++(2M).

The velocity is the exact flow field of Gaussian data, evaluated in float64 on both sides; every
intermediate state of our sampler must match diffusers' `step` outputs within 1e-4.
"""

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
diffusers = pytest.importorskip('diffusers')

from sora_jax.diffusion import samplers  # noqa: E402

MU, S = 0.7, 0.5


def _vel_np(x, t):
    sig = np.sqrt((1 - t) ** 2 * S**2 + t**2)
    return -MU + (-(1 - t) * S**2 + t) / sig**2 * (x - (1 - t) * MU)


def _vel_jax(x, t):
    t = t.reshape(t.shape + (1,) * (x.ndim - 1))
    sig2 = (1 - t) ** 2 * S**2 + t**2
    return -MU + (-(1 - t) * S**2 + t) / sig2 * (x - (1 - t) * MU)


def _run_diffusers(sched, eps, model_time):
    """Reference loop as in diffusers pipelines; model_time(i, timestep) is what the field sees."""
    x, traj = torch.from_numpy(eps), []
    for i, ts in enumerate(sched.timesteps):
        v = _vel_np(x.numpy().astype(np.float64), model_time(i, ts)).astype(np.float32)
        x = sched.step(torch.from_numpy(v), ts, x).prev_sample
        traj.append(x.numpy())
    return np.stack(traj)


@pytest.fixture(scope='module')
def eps():
    return np.random.RandomState(0).randn(2, 3, 4, 5).astype(np.float32)


@pytest.mark.parametrize('num_steps,shift', [(10, 5.0), (25, 3.0), (3, 1.0)])
def test_unipc_matches_diffusers(eps, num_steps, shift):
    sched = diffusers.UniPCMultistepScheduler(
        prediction_type='flow_prediction',
        use_flow_sigmas=True,
        flow_shift=shift,
        solver_order=2,
        solver_type='bh2',
    )
    sched.set_timesteps(num_steps)
    ref_sig = sched.sigmas.numpy()
    ours = samplers.make_sigmas(num_steps, shift)
    np.testing.assert_allclose(ours[1:].astype(np.float32), ref_sig[1:], rtol=0, atol=0)
    assert ref_sig[0] == np.float32(1 - 1e-6) and ours[0] == 1.0  # the clamp lives in the sampler
    ref = _run_diffusers(sched, eps, lambda i, ts: float(ref_sig[i]))
    x, traj = samplers.sample(
        _vel_jax,
        jnp.asarray(eps),
        method='unipc',
        num_steps=num_steps,
        shift=shift,
        return_trajectory=True,
    )
    np.testing.assert_allclose(np.asarray(traj), ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(x), ref[-1], atol=1e-4, rtol=0)


def test_unipc_wan_integer_timesteps_match_diffusers(eps):
    """Wan's pipeline feeds the model int(1000 t); timestep_quantization=1000 reproduces it."""
    sched = diffusers.UniPCMultistepScheduler(
        prediction_type='flow_prediction', use_flow_sigmas=True, flow_shift=5.0
    )
    sched.set_timesteps(12)
    ref = _run_diffusers(sched, eps, lambda i, ts: float(ts) / 1000.0)
    _, traj = samplers.sample(
        _vel_jax,
        jnp.asarray(eps),
        method='unipc',
        num_steps=12,
        shift=5.0,
        timestep_quantization=1000,
        return_trajectory=True,
    )
    np.testing.assert_allclose(np.asarray(traj), ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize('shift', [1.0, 3.0])
def test_euler_matches_flow_match_euler(eps, shift):
    sigmas = samplers.make_sigmas(8, shift)
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0)  # sigmas below are already shifted
    sched.set_timesteps(sigmas=sigmas[:-1].tolist())
    np.testing.assert_allclose(sched.sigmas.numpy(), sigmas.astype(np.float32), atol=1e-7)
    ref = _run_diffusers(sched, eps, lambda i, ts: float(sched.sigmas[i]))
    _, traj = samplers.sample(
        _vel_jax, jnp.asarray(eps), method='euler', sigmas=sigmas, return_trajectory=True
    )
    np.testing.assert_allclose(np.asarray(traj), ref, atol=1e-4, rtol=0)


def test_euler_default_flow_match_schedule(eps):
    """diffusers' own FlowMatchEuler schedule (shift=1: linspace(1, 1e-3, N) + [0]) passed as sigmas."""
    sched = diffusers.FlowMatchEulerDiscreteScheduler()
    sched.set_timesteps(6)
    sig = sched.sigmas.numpy().astype(np.float64)
    ref = _run_diffusers(sched, eps, lambda i, ts: float(sig[i]))
    _, traj = samplers.sample(
        _vel_jax, jnp.asarray(eps), method='euler', sigmas=sig, return_trajectory=True
    )
    np.testing.assert_allclose(np.asarray(traj), ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize('num_steps', [7, 20])
def test_dpmpp_2m_matches_diffusers(eps, num_steps):
    sched = diffusers.DPMSolverMultistepScheduler(
        prediction_type='flow_prediction',
        use_flow_sigmas=True,
        flow_shift=3.0,
        algorithm_type='dpmsolver++',
        solver_order=2,
        solver_type='midpoint',
    )
    sched.set_timesteps(num_steps)
    sig = sched.sigmas.numpy().astype(np.float64)
    ref = _run_diffusers(sched, eps, lambda i, ts: float(sig[i]))
    _, traj = samplers.sample(
        _vel_jax, jnp.asarray(eps), method='dpmpp_2m', sigmas=sig, return_trajectory=True
    )
    np.testing.assert_allclose(np.asarray(traj), ref, atol=1e-4, rtol=0)
