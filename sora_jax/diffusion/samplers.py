"""Euler / Heun / UniPC / DPM-Solver++(2M) samplers over one velocity function.

`sample(velocity_fn, noise, method=..., num_steps=...)` integrates dx/dt = v(x, t) from t = 1
(noise) to t = 0 (data) over the times of `make_sigmas` (or given ``sigmas``). The diffusion code
knows only ``velocity_fn(x_t: [B, ...], t: [B]) -> v: [B, ...]``, never the model.

How the loop compiles: all per-step scalars (step sizes, multistep coefficients, model times) are
computed on the host in float64 from the schedule and fed as rows of a table, so every method has
ONE step function whose body calls ``velocity_fn`` exactly once (Heun runs 2 stages per step).
``loop='scan'`` (default) runs the steps in `jax.lax.scan` -- the model is traced and compiled
once and the whole sampler can sit inside the caller's `jax.jit`. ``loop='python'`` jits that step
once and calls it per step from Python, so a host-side ``callback(i, t_next, x)`` (e.g. tqdm) can
run between steps. To reuse compiled code across calls, keep the same ``velocity_fn`` object and
wrap `sample` in the caller's `jax.jit` (the schedule is static: ``num_steps``, ``shift``, ...).

Schedules and solvers follow diffusers' flow-matching conventions (the Wan 2.1 sampler is
``UniPCMultistepScheduler(prediction_type='flow_prediction', use_flow_sigmas=True, flow_shift=s)``):
* euler: ``x <- x + (t_next - t) v`` (FlowMatchEulerDiscreteScheduler.step).
* heun: trapezoidal 2nd order with the velocity re-evaluated at t_next (2 model calls per step,
  run as 2 scan stages through one call site); plain Euler on the final step
  to t = 0 (k-diffusion convention: no model call at t = 0).
* dpmpp_2m: DPM-Solver++(2M) midpoint in data prediction x0 = x - t v, with alpha = 1 - t,
  sigma = t, lambda = log(alpha / sigma); first order on the first and on the final step.
* unipc: UniPC-bh2, order 2 predictor + UniC corrector, lower order at warm-up and on the final
  step, exactly as diffusers' UniPCMultistepScheduler with solver_order=2, lower_order_final=True.
For the multistep solvers a schedule starting at t = 1 has its first time moved to 1 - 1e-6 (for the
coefficients and the model time), as diffusers does, since lambda(1) = -inf.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sora_jax.diffusion.flow import shift_time, unshift_time

METHODS = ('euler', 'heun', 'unipc', 'dpmpp_2m')
VelocityFn = Callable[[jax.Array, jax.Array], jax.Array]
_FIRST_SIGMA_EPS = 1e-6


# ----------------------------------------------------------------------------- schedule


def make_sigmas(
    num_steps: int,
    shift: float = 1.0,
    *,
    t_start: float = 1.0,
    num_train_timesteps: int | None = 1000,
) -> np.ndarray:
    """Descending sampling times [num_steps + 1] (float64): t_0 = t_start, ..., t_N = 0.

    Wan / diffusers UniPC flow convention: ``u = linspace(u0, u0 / num_train_timesteps, N + 1)[:-1]``
    with ``u0 = unshift_time(t_start, shift)``, then ``t = shift_time(u, shift)`` and a final 0
    appended. With t_start = 1 this is exactly ``UniPCMultistepScheduler(use_flow_sigmas=True,
    flow_shift=shift).set_timesteps(N).sigmas`` (before its 1 - 1e-6 clamp of the first value).
    t_start < 1 (SDEdit) spaces the N steps over [t_start, 0] in the same (unshifted) way.
    The last step always jumps from about shift_time(1/N + 1/num_train_timesteps) to 0;
    ``num_train_timesteps=None`` gives evenly spaced ``u = linspace(u0, 0, N + 1)`` instead (a schedule
    that refines uniformly with N, as order-of-accuracy studies need).
    """
    if num_steps < 1:
        raise ValueError(f'num_steps must be >= 1, got {num_steps}.')
    if not 0.0 < t_start <= 1.0:
        raise ValueError(
            f't_start must be in (0, 1], got {t_start}; t_start = 0 needs no sampling.'
        )
    u0 = float(unshift_time(np.float64(t_start), shift))
    u_end = u0 / num_train_timesteps if num_train_timesteps else 0.0
    u = np.linspace(u0, u_end, num_steps + 1, dtype=np.float64)[:-1]
    t = shift_time(u, shift)
    return np.concatenate([t, [0.0]]).astype(np.float64)


def _check_sigmas(sigmas) -> np.ndarray:
    s = np.asarray(sigmas, dtype=np.float64)
    if s.ndim != 1 or s.shape[0] < 2:
        raise ValueError(
            f'sigmas must be 1-D with >= 2 entries (t_0 ... t_N), got shape {s.shape}.'
        )
    if np.any(np.diff(s) >= 0) or s[0] > 1.0 or s[-1] < 0.0:
        raise ValueError(f'sigmas must descend strictly within [0, 1], got {s}; use make_sigmas().')
    return s


def _lam(sig: np.ndarray) -> np.ndarray:
    """lambda = log(alpha / sigma) for the flow path alpha = 1 - t, sigma = t (inf at t = 0)."""
    with np.errstate(divide='ignore'):
        return np.log(1.0 - sig) - np.log(sig)


# ----------------------------------------------------------------------------- coefficient tables


def _unipc_coeffs(sig: np.ndarray) -> np.ndarray:
    """[N, 8] rows (ce, ca, cb, cc, cd, pa, pb, pc) of the UniPC-bh2 (order 2) step.

    With m = x - t v (data prediction), m1 / m2 the previous two predictions and x_last the corrected
    sample of the previous step:
      corrector  xc    = ce x + ca x_last + cb m1 + cc (m2 - m1) + cd (m - m1)
      predictor  x_new = pa xc + pb m + pc (m1 - m)
    Mirrors diffusers multistep_uni_c_bh_update / multistep_uni_p_bh_update (predict_x0, bh2).
    """
    n = sig.shape[0] - 1
    alpha, lam = 1.0 - sig, _lam(sig)
    order = [min(2, n - i, i + 1) for i in range(n)]
    rows = np.zeros((n, 8), np.float64)
    with np.errstate(divide='ignore', invalid='ignore'):
        for i in range(n):
            if i == 0:
                rows[i, 0] = 1.0
            else:  # UniC with the order of the previous predictor
                h = lam[i] - lam[i - 1]
                hh = -h
                h_phi_1 = np.expm1(hh)
                b_h = np.expm1(hh)
                rows[i, 1] = sig[i] / sig[i - 1]
                rows[i, 2] = -alpha[i] * h_phi_1
                if order[i - 1] == 1:
                    rows[i, 4] = -alpha[i] * b_h * 0.5
                else:
                    r1 = (lam[i - 2] - lam[i - 1]) / h
                    h_phi_k, fact, b = h_phi_1 / hh - 1.0, 1, []
                    for k in (1, 2):
                        b.append(h_phi_k * fact / b_h)
                        fact *= k + 1
                        h_phi_k = h_phi_k / hh - 1.0 / fact
                    rho = np.linalg.solve(np.array([[1.0, 1.0], [r1, 1.0]]), np.array(b))
                    rows[i, 3] = -alpha[i] * b_h * rho[0] / r1
                    rows[i, 4] = -alpha[i] * b_h * rho[1]
            h = lam[i + 1] - lam[i]  # UniP
            hh = -h
            h_phi_1 = np.expm1(hh)
            rows[i, 5] = sig[i + 1] / sig[i]
            rows[i, 6] = -alpha[i + 1] * h_phi_1
            if order[i] == 2:
                r1 = (lam[i - 1] - lam[i]) / h
                rows[i, 7] = -alpha[i + 1] * np.expm1(hh) * 0.5 / r1
    return rows


def _dpmpp_2m_coeffs(sig: np.ndarray) -> np.ndarray:
    """[N, 3] rows (a, b0, b1): x_new = a x + b0 m + b1 m_prev (DPM-Solver++ 2M, midpoint)."""
    n = sig.shape[0] - 1
    alpha, lam = 1.0 - sig, _lam(sig)
    rows = np.zeros((n, 3), np.float64)
    with np.errstate(divide='ignore', invalid='ignore'):
        for i in range(n):
            h = lam[i + 1] - lam[i]
            e = np.expm1(-h)  # -1 on the final step to t = 0
            rows[i, 0] = sig[i + 1] / sig[i]
            if i == 0 or i == n - 1:
                rows[i, 1] = -alpha[i + 1] * e
            else:
                r = (lam[i] - lam[i - 1]) / h
                rows[i, 1] = -alpha[i + 1] * e * (1.0 + 0.5 / r)
                rows[i, 2] = alpha[i + 1] * e * 0.5 / r
    return rows


# ----------------------------------------------------------------------------- guidance


def cfg_velocity(
    model_fn: VelocityFn,
    guidance_scale: float,
    guidance_interval: tuple[float, float] = (0.0, 1.0),
    *,
    cond_fn: VelocityFn | None = None,
    skip_scale: float = 0.0,
    skip_interval: tuple[float, float] = (0.0, 1.0),
) -> VelocityFn:
    """Classifier-free guidance (+ optional skip-layer guidance) as a velocity function.

    Batching contract (one model call per step): ``model_fn(x2: [2B, ...], t2: [2B]) -> [2B, ...]``
    gets ``concat([x, x])`` and ``concat([t, t])``; the pipeline builds it over text embeddings
    ``concat([cond, uncond])`` (conditional first), so rows [:B] are conditional and [B:] are
    unconditional. Returns ``v = v_c + (s - 1) (v_c - v_u)`` with s = guidance_scale where
    ``t_lo <= t <= t_hi`` and s = 1 (pure conditional) elsewhere; s = 1 returns v_c exactly.
    If ``cond_fn(x: [B, ...], t: [B])`` (the conditional model alone) is given, steps whose times all
    lie outside the interval skip the unconditional half (a `lax.cond`; the model then compiles for
    both batch sizes).

    Skip-layer guidance (``skip_scale > 0``, as SD 3.5's SLG and spatiotemporal skip guidance):
    ``model_fn`` gets ``[3B]`` rows, the third block being the conditional model weakened (the
    pipeline skips some of its blocks), and ``v += p (v_c - v_weak)`` with p = skip_scale where
    t lies in ``skip_interval``: the sample is pushed away from what the weakened model predicts
    (blur, smeared moving objects).
    """
    t_lo, t_hi = guidance_interval
    if not 0.0 <= t_lo <= t_hi <= 1.0:
        raise ValueError(
            f'guidance_interval must satisfy 0 <= t_lo <= t_hi <= 1, got {guidance_interval}.'
        )
    s_lo, s_hi = skip_interval
    if not 0.0 <= s_lo <= s_hi <= 1.0:
        raise ValueError(f'skip_interval must satisfy 0 <= t_lo <= t_hi <= 1, got {skip_interval}.')
    if skip_scale < 0:
        raise ValueError(f'skip_scale={skip_scale} must be >= 0 (0 turns skip-layer guidance off).')
    rows = 3 if skip_scale > 0 else 2

    def expand(s, like):
        return s.astype(like.dtype).reshape(s.shape + (1,) * (like.ndim - 1))

    def guided(x, t):
        out = model_fn(jnp.concatenate([x] * rows, 0), jnp.concatenate([t] * rows, 0))
        v_c, v_u, *v_weak = jnp.split(out, rows, axis=0)
        inside = (t >= t_lo) & (t <= t_hi)
        s = expand(jnp.where(inside, guidance_scale, 1.0), v_c)
        v = v_c + (s - 1.0) * (v_c - v_u)
        if v_weak:
            p = expand(jnp.where((t >= s_lo) & (t <= s_hi), skip_scale, 0.0), v_c)
            v = v + p * (v_c - v_weak[0])
        return v

    if cond_fn is None:
        return guided

    def velocity(x, t):
        any_inside = jnp.any((t >= t_lo) & (t <= t_hi))
        if rows == 3:
            any_inside = any_inside | jnp.any((t >= s_lo) & (t <= s_hi))
        return jax.lax.cond(
            any_inside, guided, lambda xx, tt: cond_fn(xx, tt).astype(x.dtype), x, t
        )

    return velocity


def two_experts(
    high, low, boundary_ratio: float, quantization: int | None, num_train_timesteps: int = 1000
):
    """Wan 2.2 A14B as diffusers' `WanPipeline(transformer, transformer_2, boundary_ratio)`: the
    velocity `high` (the high-noise expert with its guidance) while the timestep t_train =
    num_train_timesteps * t >= boundary_ratio * num_train_timesteps, `low` after. With timestep
    quantization the compare is on the integer timestep the DiT sees (diffusers' int64 `t`).
    `high`, `low` and the result are velocity functions (x, t: [B]) whose rows share one time
    (as `sample` calls them); both branches compile, one runs per step (`lax.cond`)."""

    def velocity(x, t):
        is_high = high_noise(t, boundary_ratio, quantization, num_train_timesteps)
        return jax.lax.cond(is_high, high, low, x, t)

    return velocity


def high_noise(
    t: jax.Array, boundary_ratio: float, quantization: int | None, num_train_timesteps: int = 1000
) -> jax.Array:
    """Whether the step at times t [B] (rows share one time) belongs to Wan 2.2's high-noise
    expert (`two_experts`): a bool scalar."""
    threshold = boundary_ratio * num_train_timesteps  # float64, as diffusers computes it
    if quantization:  # integer timesteps: t_int >= threshold <=> t_int >= ceil(threshold)
        t_int = jnp.round(t[0] * quantization) * (num_train_timesteps // quantization)
        return t_int >= math.ceil(threshold)
    return t[0] >= boundary_ratio


# ----------------------------------------------------------------------------- sampling


def num_evaluations(method: str, num_steps: int) -> int:
    """Model evaluations of one sampling run ("stages" of `_tables`): Heun's 2 per step but one
    on the final step, one per step for the others."""
    return 2 * num_steps - 1 if method == 'heun' else num_steps


def _tables(method: str, sig: np.ndarray, quantize: int | None):
    """Host tables, one row per model evaluation ("stage"; a Heun step has two).

    Returns rows (t, t_next, t_model, coef) as float64 arrays over stages, ``done`` (bool [S]: the
    stage completes a step) and ``t_first`` (the schedule's first time as the solver sees it).
    t is the solver time, t_model what velocity_fn sees, t_next the time reached by the step.
    """
    sig = sig.copy()
    if method in ('unipc', 'dpmpp_2m') and abs(sig[0] - 1.0) < _FIRST_SIGMA_EPS:
        sig[0] -= _FIRST_SIGMA_EPS
    sig32 = sig.astype(np.float32).astype(
        np.float64
    )  # coefficients from the f32 schedule (diffusers)
    t_model = np.floor(sig * quantize) / quantize if quantize else sig32
    n = sig.shape[0] - 1
    t, t_next, tm, done = sig32[:-1], sig32[1:], t_model[:-1], np.ones(n, bool)
    if method == 'euler':
        coef = (sig32[1:] - sig32[:-1])[:, None]
    elif (
        method == 'heun'
    ):  # stages: (step i, first eval) and, except on the final step, (i, second)
        stages = []
        for i in range(n - 1):
            stages += [(i, True), (i, False)]
        stages.append((n - 1, True))
        idx = np.array([i for i, _ in stages])
        first = np.array([f for _, f in stages])
        done = ~first | (idx == n - 1)
        t, t_next = sig32[idx], sig32[idx + 1]
        tm = np.where(first, t_model[idx], t_model[idx + 1])
        coef = np.stack([t_next - t, first, done], axis=1).astype(np.float64)
    elif method == 'unipc':
        coef = _unipc_coeffs(sig32)
    else:
        coef = _dpmpp_2m_coeffs(sig32)
    if not np.all(np.isfinite(coef)):
        raise ValueError(f'non-finite {method} coefficients for sigmas {sig}; use make_sigmas().')
    return (t, t_next, tm, coef), done, sig32[0]


def _make_step(method: str, velocity_fn, step_callback, dtype):
    """One stage: ((state, carry), (t, t_next, t_model, coef)) -> ((state, carry), x). state[0]
    is x; `velocity_fn(x, t, carry) -> (v, carry)`.

    Every method has exactly one ``velocity_fn`` call site, so a big model is traced and compiled
    once (Heun alternates predictor / corrector stages with `jnp.where` selects).
    """

    def step(state_carry, row):
        state, carry = state_carry

        def vel(x, tm):
            nonlocal carry
            tt = jnp.full((x.shape[0],), tm, dtype)
            v, carry = velocity_fn(x, tt, carry)
            return v.astype(dtype)

        t, t_next, tm, c = row
        x = state[0]
        if method == 'euler':
            new = (x + c[0] * vel(x, tm),)
            done = True
        elif method == 'heun':  # state (x, x_euler, v_first); c = (dt, is_first, completes_step)
            _, x_e, v1 = state
            first, done = c[1] > 0.5, c[2] > 0.5
            v = vel(jnp.where(first, x, x_e), tm)
            x_e_new = x + c[0] * v
            x_new = jnp.where(first, jnp.where(done, x_e_new, x), x + c[0] * 0.5 * (v1 + v))
            new = (x_new, jnp.where(first, x_e_new, x_e), jnp.where(first, v, v1))
        elif method == 'dpmpp_2m':
            m = x - t * vel(x, tm)
            new = (c[0] * x + c[1] * m + c[2] * state[1], m)
            done = True
        else:  # unipc
            _, m1, m2, x_last = state
            m = x - t * vel(x, tm)
            xc = c[0] * x + c[1] * x_last + c[2] * m1 + c[3] * (m2 - m1) + c[4] * (m - m1)
            new = (c[5] * xc + c[6] * m + c[7] * (m1 - m), m, m1, xc)
            done = True
        x_new = new[0]
        if step_callback is not None:
            x_cb = step_callback(x_new, t_next).astype(dtype)
            x_new = x_cb if done is True else jnp.where(done, x_cb, x_new)
        return ((x_new,) + tuple(new[1:]), carry), x_new

    return step


def sample(
    velocity_fn: VelocityFn,
    noise: jax.Array,
    *,
    method: str = 'unipc',
    num_steps: int = 50,
    shift: float = 1.0,
    sigmas=None,
    t_start: float = 1.0,
    guidance: float | None = None,
    guidance_interval: tuple[float, float] = (0.0, 1.0),
    step_callback=None,
    timestep_quantization: int | None = None,
    loop: str = 'scan',
    callback=None,
    return_trajectory: bool = False,
    velocity_carry=None,
):
    """Integrate from ``noise`` (the state at t = sigmas[0]) to t = 0 and return x0.

    The state is kept in float32 (float64 if ``noise`` is float64 under ``jax.enable_x64``).

    velocity_fn: ``(x_t: [B, ...], t: [B]) -> v``; with ``guidance`` set it is the batched
      cond/uncond model of `cfg_velocity` (``[2B, ...] -> [2B, ...]``), wrapped here with
      ``cfg_velocity(velocity_fn, guidance, guidance_interval)``.
    method: one of 'euler', 'heun', 'unipc', 'dpmpp_2m'.
    num_steps / shift / t_start: schedule ``make_sigmas(num_steps, shift, t_start=t_start)``;
      ignored when ``sigmas`` ([N + 1], descending to 0) is given. t_start = 0 returns ``noise``.
    step_callback: traceable ``(x, t_next) -> x`` applied to the state at t = sigmas[0] and after
      every step, e.g. conditioning's re-imposition of known latents.
    timestep_quantization: if n, velocity_fn sees ``floor(t * n) / n`` (diffusers UniPC passes the
      integer timestep ``int(1000 t)`` to Wan); the solver math always uses the exact t.
    loop: 'scan' (jit-friendly, one trace) or 'python' (jitted step, host ``callback(i, t_next, x)``).
    return_trajectory: also return the states after every step, [N, B, ...].
    velocity_carry: a pytree carried from one model evaluation to the next (a step cache's
      state, pipeline/step_cache.py): then ``velocity_fn(x, t, carry) -> (v, carry)``, and the
      return value is ``(x0, carry)`` (``(x0, traj, carry)`` with ``return_trajectory``).
    """
    if method not in METHODS:
        raise ValueError(f'unknown sampler {method!r}; use one of {METHODS}.')
    if loop not in ('scan', 'python'):
        raise ValueError(f"loop must be 'scan' or 'python', got {loop!r}.")
    if callback is not None and loop != 'python':
        raise ValueError("a host callback needs loop='python'.")
    if guidance is not None:
        if velocity_carry is not None:
            raise ValueError('guidance= wraps a plain velocity_fn; give no velocity_carry with it.')
        velocity_fn = cfg_velocity(velocity_fn, guidance, guidance_interval)
    stateful = velocity_carry is not None

    def finish(x, traj, carry):
        out = (x, traj) if return_trajectory else (x,)
        out = out + ((carry,) if stateful else ())
        return out if len(out) > 1 else out[0]

    if not stateful:
        plain = velocity_fn
        velocity_fn = lambda x, t, carry: (plain(x, t), carry)
    if sigmas is None and t_start == 0.0:  # SDEdit at strength 0: nothing to integrate
        x = jnp.asarray(noise, jnp.promote_types(jnp.asarray(noise).dtype, jnp.float32))
        return finish(x, x[None][:0], velocity_carry)
    sig = (
        make_sigmas(num_steps, shift, t_start=t_start) if sigmas is None else _check_sigmas(sigmas)
    )
    rows64, done, t_first = _tables(method, sig, timestep_quantization)
    dtype = jnp.promote_types(jnp.asarray(noise).dtype, jnp.float32)  # f32, or f64 under x64
    rows = tuple(jnp.asarray(r, dtype) for r in rows64)

    x = jnp.asarray(noise, dtype)
    if step_callback is not None:
        x = step_callback(x, jnp.asarray(t_first, dtype)).astype(dtype)
    zeros = jnp.zeros_like(x)
    state = {
        'euler': (x,),
        'heun': (x, zeros, zeros),
        'dpmpp_2m': (x, zeros),
        'unipc': (x, zeros, zeros, x),
    }[method]
    step = _make_step(method, velocity_fn, step_callback, dtype)

    state = (state, velocity_carry)
    if loop == 'scan':
        body = step if return_trajectory else (lambda st, row: (step(st, row)[0], None))
        state, traj = jax.lax.scan(body, state, rows)
        if return_trajectory:
            traj = traj[np.flatnonzero(done)]
    else:
        jstep = jax.jit(step)
        traj, i = [], 0
        for s_idx in range(done.shape[0]):
            state, x_s = jstep(state, tuple(r[s_idx] for r in rows))
            if not done[s_idx]:
                continue
            if return_trajectory:
                traj.append(x_s)
            if callback is not None:
                callback(i, float(rows64[1][s_idx]), state[0][0])
            i += 1
        traj = jnp.stack(traj) if return_trajectory else None
    (state, carry) = state
    return finish(state[0], traj, carry)
