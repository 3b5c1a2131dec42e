"""Step caches: DiT evaluations skipped when a cached value can stand in for them, decided and
applied inside the jitted sampler (a `lax.switch` on carried state, no host round trip).

  magcache    MagCache (Ma et al. 2025, diffusers `apply_mag_cache`): the residual of the whole
              block stack (output - input tokens) changes in magnitude by a ratio per step that
              is nearly model-independent of the prompt; calibrated once (`calibrate=True`
              records it), the accumulated error sum |1 - prod ratios| since the last computed
              step decides: skip while it is <= `threshold` and at most `max_skip` in a row, never
              in the first `retention_ratio` of the evaluations. A skipped step's tokens are its
              input + the last computed residual.
  firstblock  First-Block Cache (ParaAttention, diffusers `apply_first_block_cache`): the first
              block always runs; when its residual moved by a relative L1 of <= `threshold` since
              the last computed step, the other blocks are skipped and their last residual
              (last block output - first block output) is added instead.
  taylorseer  TaylorSeer (Liu et al. 2025; diffusers `apply_taylorseer_cache` with
              `use_lite_mode=True`): the DiT output is computed on a fixed schedule (the first
              `warmup` evaluations, then every `interval`-th, all from `cooldown` on) and
              predicted in between by a Taylor series of divided differences up to `order`.

Each branch of classifier-free guidance (conditional rows, unconditional rows) keeps its own
state, as diffusers' `cache_context('cond' / 'uncond')` does, and counts its own evaluations; the
rest of the stack runs on the rows of the branches that compute (none, one branch alone, or all).
A two-expert model (Wan 2.2 A14B) starts the low-noise expert with fresh state, as the second
transformer's own hooks do in diffusers. The skip rules mirror diffusers 0.42.1 exactly, so the
same evaluations are skipped (tests/parity/test_step_cache_parity.py).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sora_jax.diffusion import samplers

KINDS = ('none', 'magcache', 'firstblock', 'taylorseer')
DEFAULT_THRESHOLD = {'magcache': 0.06, 'firstblock': 0.05}  # diffusers' defaults


@dataclasses.dataclass(frozen=True)
class StepCache:
    """Which cache and its knobs (a static, hashable part of `DenoisePlan`)."""

    kind: str = 'none'  # KINDS
    threshold: float = 0.0  # magcache: accumulated error; firstblock: relative L1 of the
    # first block's residual (diffusers' defaults: 0.06, 0.05)
    max_skip: int = 3  # magcache: consecutive skipped evaluations at most (K)
    retention_ratio: float = 0.2  # magcache: the first round(ratio * evaluations) always run
    mag_ratios: tuple[float, ...] = ()  # magcache: magnitude ratio per evaluation (calibrate=True
    # prints them; any length: resampled to the run's evaluations by nearest neighbour)
    calibrate: bool = False  # magcache: skip nothing, record the ratios (CacheStats.mag_ratios)
    interval: int = 5  # taylorseer: evaluations between full ones (cache_interval)
    warmup: int = 3  # taylorseer: first evaluations always computed (disable_cache_before_step)
    cooldown: int | None = None  # taylorseer: computed from this evaluation on (None: never)
    order: int = 1  # taylorseer: Taylor order (max_order)

    @property
    def on(self) -> bool:
        return self.kind != 'none'

    def check(self, depth: int) -> 'StepCache':
        """Itself, or a ValueError naming the bad knob. `depth`: the DiT's blocks."""
        if self.kind not in KINDS:
            raise ValueError(f'cache={self.kind!r} is not one of {KINDS}.')
        if not math.isfinite(self.threshold) or self.threshold < 0:
            raise ValueError(f'cache_threshold={self.threshold} must be >= 0 and finite.')
        if self.kind == 'magcache':
            if not self.mag_ratios and not self.calibrate:
                raise ValueError(
                    'cache=magcache needs mag_ratios (per-evaluation magnitude ratios of this '
                    'model): run once with calibrate=True (--cache_calibrate) and pass the '
                    'printed ratios.'
                )
            if self.max_skip < 0 or not 0.0 <= self.retention_ratio <= 1.0:
                raise ValueError(
                    f'magcache max_skip={self.max_skip} must be >= 0 and retention_ratio='
                    f'{self.retention_ratio} in [0, 1].'
                )
            if not all(math.isfinite(r) for r in self.mag_ratios):
                raise ValueError(f'mag_ratios={self.mag_ratios} must be finite numbers.')
        if self.kind == 'firstblock' and depth < 2:
            raise ValueError(f'cache=firstblock needs a DiT of 2 blocks or more, not {depth}.')
        if self.kind == 'taylorseer' and (self.interval < 1 or self.warmup < 1 or self.order < 0):
            raise ValueError(
                f'taylorseer interval={self.interval} and warmup={self.warmup} must be >= 1, '
                f'order={self.order} >= 0.'
            )
        return self


def resolve(cache, defaults, depth: int) -> StepCache:
    """A call's `cache=` (None: config.sample.cache; a kind name; or a StepCache) -> StepCache,
    checked. `defaults`: config.sample (its `cache`, `cache_threshold`, ... if set)."""
    if isinstance(cache, StepCache):
        return cache.check(depth)
    if cache is not None and not isinstance(cache, str):
        raise ValueError(f'cache={cache!r} must be a kind name {KINDS} or a StepCache.')
    return build(defaults, cache).check(depth)


@dataclasses.dataclass(frozen=True)
class CacheStats:
    """What a cached sampling run did, per branch b (0: conditional, 1: unconditional)."""

    kind: str
    evaluations: int  # DiT evaluations the run would make without a cache (all branches)
    skipped: int  # of those, skipped
    skipped_steps: tuple[tuple[int, ...], ...]  # [b]: evaluation indices skipped
    mag_ratios: tuple[tuple[float, ...], ...] = ()  # [b]: calibrate=True's ratios

    def __str__(self) -> str:
        return (
            f'cache={self.kind}: {self.skipped} of {self.evaluations} DiT evaluations skipped '
            f'({self.evaluations - self.skipped} computed)'
        )


def stats(cache: StepCache, carry) -> CacheStats:
    """The CacheStats of a run's final carry (host arrays)."""
    log = np.asarray(carry['log'])  # [S, G] skipped
    ratios = ()
    if cache.calibrate:
        r = np.asarray(carry['ratios'])
        ratios = tuple(tuple(float(v) for v in r[:, g]) for g in range(r.shape[1]))
    return CacheStats(
        kind=cache.kind,
        evaluations=int(log.size),
        skipped=int(log.sum()),
        skipped_steps=tuple(
            tuple(int(i) for i in np.flatnonzero(log[:, g])) for g in range(log.shape[1])
        ),
        mag_ratios=ratios,
    )


# ----------------------------------------------------------------------------- state


def init_state(cache: StepCache, dit_cfg, groups: int, x_shape, num_evals: int) -> dict:
    """The carry of a run: per-branch state [G, ...] under 'branch', and the run's record.
    `x_shape`: the DiT input of one branch [B, T, H, W, C_in] (the output has C_out)."""
    b, t, h, w, _ = x_shape
    pt, ph, pw = dit_cfg.patch_size
    tokens = (b, (t // pt) * (h // ph) * (w // pw), dit_cfg.dim)
    from sora_jax.models.dit import DTYPES

    g = groups
    branch = {'calls': jnp.zeros((g,), jnp.int32)}
    if cache.kind in ('magcache', 'firstblock'):
        branch['residual'] = jnp.zeros((g, *tokens), DTYPES[dit_cfg.dtype])
        branch['has'] = jnp.zeros((g,), bool)
    if cache.kind == 'firstblock':
        branch['head'] = jnp.zeros((g, *tokens), DTYPES[dit_cfg.dtype])
    if cache.kind == 'magcache':
        branch['acc_ratio'] = jnp.ones((g,), jnp.float32)
        branch['acc_err'] = jnp.zeros((g,), jnp.float32)
        branch['acc_steps'] = jnp.zeros((g,), jnp.int32)
    if cache.kind == 'taylorseer':
        out = (b, t, h, w, dit_cfg.out_channels)
        branch['factors'] = jnp.zeros((g, cache.order + 1, *out), jnp.float32)
        branch['orders'] = jnp.zeros((g,), jnp.int32)  # valid orders (0: no update yet)
        branch['last'] = jnp.full((g,), -1, jnp.int32)
    carry = {
        'branch': branch,
        'log': jnp.zeros((num_evals, g), bool),
        'index': jnp.zeros((), jnp.int32),
        'high': jnp.ones((), bool),  # two experts: the high-noise expert ran last
    }
    if cache.calibrate:
        carry['ratios'] = jnp.ones((num_evals, g), jnp.float32)
    return carry


def _fresh(branch: dict) -> dict:
    """Branch state as `init_state` makes it (the expert switch)."""
    out = jax.tree.map(jnp.zeros_like, branch)
    if 'acc_ratio' in out:
        out['acc_ratio'] = jnp.ones_like(branch['acc_ratio'])
    if 'last' in out:
        out['last'] = jnp.full_like(branch['last'], -1)
    return out


def _bcast(flag, like):
    """flag [G] -> broadcastable against like [G, ...]."""
    return flag.reshape(flag.shape + (1,) * (like.ndim - 1))


def _mag_ratios(cache: StepCache, n: int) -> np.ndarray:
    """mag_ratios resampled to n evaluations (diffusers' nearest_interp, float32)."""
    src = np.asarray(cache.mag_ratios, np.float32)
    if len(src) == n:
        return src
    if n == 1:
        return src[-1:]
    scale = (len(src) - 1) / (n - 1)
    idx = np.round(np.arange(n, dtype=np.float32) * np.float32(scale)).astype(np.int64)
    return src[idx]


def _subset(fn: Callable, compute, b: int):
    """fn(start, size) evaluated on the rows of the branches that compute ([G] bool; branch g
    holds rows g*b..g*b+b-1): none (zeros), one branch alone, or all rows. -> [G, b, ...]."""
    g = compute.shape[0]
    shape = jax.eval_shape(lambda: fn(0, g * b))
    zeros = lambda: jnp.zeros((g, b, *shape.shape[1:]), shape.dtype)
    full = lambda: fn(0, g * b).reshape(g, b, *shape.shape[1:])
    if g == 1:
        return jax.lax.cond(compute[0], full, zeros)
    which = jnp.argmax(compute)

    def one():
        out = fn(which * b, b)
        return jax.lax.dynamic_update_slice_in_dim(zeros(), out[None], which, 0)

    n = jnp.sum(compute.astype(jnp.int32))
    return jax.lax.switch(jnp.minimum(n, 2), (zeros, one, full))


# ----------------------------------------------------------------------------- one evaluation


def evaluate(dit, cache: StepCache, x, t, inputs, text_kv, carry, groups: int):
    """One cached DiT evaluation: x [G*B, T, H, W, C_in] (G branches of B rows), t [G*B] (or
    per token [G*B, N]); `inputs` (a `denoise.DiTInputs`) the text and image rows alike;
    `text_kv` the DiT's precomputed cross-attention keys/values of those rows (`DiT.text_kv`,
    [depth, G*B, ...]) or None -> (output [G*B, T, H, W, C_out], carry)."""
    context, context_mask, image = inputs.context, inputs.context_mask, inputs.image_tokens
    rows = x.shape[0]
    b = rows // groups
    br = dict(carry['branch'])
    i = br['calls']  # [G] this branch's evaluations since its state was fresh
    num_evals = carry['log'].shape[0]
    if cache.kind == 'taylorseer':
        args = (x, t, context, context_mask, image, text_kv)
        out, compute, br = _taylorseer(dit, cache, args, br, b)
    else:
        h, e = dit.embed(x, t, context, context_mask, image, text_kv=text_kv)
        grouped = lambda a: a.reshape(groups, b, *a.shape[1:])
        start = 1 if cache.kind == 'firstblock' else 0
        h1 = dit.run_blocks(h, e, 0, 1) if start else h  # the input of the blocks that may skip
        g1 = grouped(h1)
        if cache.kind == 'firstblock':
            r1 = g1 - grouped(h)  # the first block's residual
            axes = tuple(range(1, r1.ndim))
            diff = jnp.mean(jnp.abs(r1 - br['head']), axes) / jnp.mean(jnp.abs(br['head']), axes)
            compute = ~br['has'] | (diff > cache.threshold)
            br['head'] = jnp.where(_bcast(compute, r1), r1, br['head'])
        else:
            compute, br = _magcache_decide(cache, br, i, num_evals)

        def rest(s, n):
            return dit.run_blocks(jax.lax.dynamic_slice_in_dim(h1, s, n, 0), e.rows(s, n), start)

        h_c = _subset(rest, compute, b)
        residual = h_c - g1
        if cache.calibrate:  # mean over tokens of |r| / |r_prev| (diffusers' calibration)
            norm = lambda a: jnp.linalg.norm(a.astype(jnp.float32), axis=-1)
            ratio = jnp.mean(norm(residual) / (norm(br['residual']) + 1e-8), axis=(1, 2))
            ratio = jnp.where(br['has'], ratio, 1.0)
            carry = dict(carry, ratios=carry['ratios'].at[carry['index']].set(ratio))
        c = _bcast(compute, h_c)
        h_out = jnp.where(c, h_c, g1 + br['residual'])
        br['residual'] = jnp.where(c, residual, br['residual'])
        br['has'] = br['has'] | compute
        out = dit.head(h_out.reshape(h.shape), e)
    br['calls'] = i + 1
    log = carry['log'].at[carry['index']].set(~compute)
    carry = dict(carry, branch=br, log=log, index=carry['index'] + 1)
    return out, carry


def _magcache_decide(cache: StepCache, br: dict, i, num_evals: int):
    """([G] compute, branch state) by diffusers' MagCacheHeadHook rule (float32 accumulators)."""
    if cache.calibrate:
        return jnp.ones_like(br['has']), br
    ratios = jnp.asarray(_mag_ratios(cache, num_evals))
    scale = jnp.where(i < ratios.shape[0], ratios[jnp.minimum(i, ratios.shape[0] - 1)], 1.0)
    retention = int(cache.retention_ratio * num_evals + 0.5)
    after = i >= retention
    acc_ratio = br['acc_ratio'] * scale
    acc_steps = br['acc_steps'] + 1
    acc_err = br['acc_err'] + jnp.abs(1.0 - acc_ratio)
    skip = after & br['has'] & (acc_err <= cache.threshold) & (acc_steps <= cache.max_skip)
    reset = after & ~skip
    keep = ~after
    br = dict(
        br,
        acc_ratio=jnp.where(keep, br['acc_ratio'], jnp.where(reset, 1.0, acc_ratio)),
        acc_steps=jnp.where(keep, br['acc_steps'], jnp.where(reset, 0, acc_steps)),
        acc_err=jnp.where(keep, br['acc_err'], jnp.where(reset, 0.0, acc_err)),
    )
    return ~skip, br


def _taylorseer(dit, cache: StepCache, args, br, b):
    """TaylorSeer (lite) on the DiT output: (output, [G] compute, branch state). `args`: the
    DiT's (x, t, context, context_mask, image, text_kv) of all rows."""
    x, t, context, context_mask, image, text_kv = args
    i, last, orders, factors = br['calls'], br['last'], br['orders'], br['factors']
    groups = i.shape[0]
    compute = (i < cache.warmup) | (jnp.mod(i - cache.warmup - 1, cache.interval) == 0)
    if cache.cooldown is not None:
        compute = compute | (i >= cache.cooldown)
    compute = compute | (last < 0)

    def full(s, n):
        take = lambda a, axis=0: None if a is None else jax.lax.dynamic_slice_in_dim(a, s, n, axis)
        kw = {} if image is None else {'image': take(image)}
        if text_kv is not None:  # [depth, rows, ...]
            kw['text_kv'] = jax.tree.map(lambda a: take(a, 1), text_kv)
        out = dit(take(x), take(t), take(context), take(context_mask), **kw)
        return out.astype(jnp.float32)

    out_c = _subset(full, compute, b)  # [G, B, ...]
    # prediction: sum_k f_k offset^k / k! over the valid orders
    offset = (i - last).astype(jnp.float32)
    pred = jnp.zeros_like(out_c)
    for k in range(cache.order + 1):
        coef = jnp.where(k < orders, offset**k / math.factorial(k), 0.0)
        pred = pred + factors[:, k] * _bcast(coef, pred)
    # update: divided differences against the previous factors
    delta = jnp.maximum(i - last, 1).astype(jnp.float32)
    new = [out_c]
    for k in range(cache.order):
        new.append((new[k] - factors[:, k]) / _bcast(delta, out_c))
    new_orders = jnp.where(last < 0, 1, jnp.minimum(orders + 1, cache.order + 1))
    new = jnp.stack(new, 1)  # [G, order + 1, B, ...]
    valid = jnp.arange(cache.order + 1)[None] < new_orders[:, None]  # [G, order + 1]
    new = jnp.where(valid.reshape(valid.shape + (1,) * (new.ndim - 2)), new, 0.0)
    c = _bcast(compute, out_c)
    br = dict(
        br,
        factors=jnp.where(_bcast(compute, new), new, factors),
        orders=jnp.where(compute, new_orders, orders),
        last=jnp.where(compute, i, last),
    )
    out = jnp.where(c, out_c, pred)
    return out.reshape(groups * b, *out.shape[2:]), compute, br


# ----------------------------------------------------------------------------- the velocity


def guided(model_fn: Callable, guidance_scale: float, guidance_interval) -> Callable:
    """`samplers.cfg_velocity` over a stateful model_fn(x [2B], t, carry) -> (out, carry): the
    same guidance arithmetic, the carry threaded through its one model call."""

    def velocity(x, t, carry):
        box = []

        def plain(xx, tt):
            out, c = model_fn(xx, tt, carry)
            box.append(c)
            return out

        v = samplers.cfg_velocity(plain, guidance_scale, guidance_interval)(x, t)
        return v, box[0]

    return velocity


def two_experts(high, low, boundary_ratio: float, quantization: int | None) -> Callable:
    """`samplers.two_experts` for stateful velocities (x, t, carry) -> (v, carry): the branch
    state is fresh when the low-noise expert takes over."""

    def velocity(x, t, carry):
        is_high = samplers.high_noise(t, boundary_ratio, quantization)
        switched = carry['high'] & ~is_high
        fresh = _fresh(carry['branch'])
        branch = jax.tree.map(lambda f, c: jnp.where(switched, f, c), fresh, carry['branch'])
        carry = dict(carry, branch=branch, high=is_high)
        return jax.lax.cond(is_high, high, low, x, t, carry)

    return velocity


def build(defaults, kind: str | None = None, **knobs) -> StepCache:
    """A StepCache from a kind and knobs (None: config.sample `defaults` for the kind and
    threshold, the dataclass defaults for the rest), unchecked (`TextToVideo` checks it)."""
    kind = defaults.get('cache', 'none') if kind is None else kind
    threshold = knobs.pop('threshold', None)
    if threshold is None:
        threshold = defaults.get('cache_threshold', None)
    threshold = DEFAULT_THRESHOLD.get(kind, 0.0) if threshold is None else float(threshold)
    ratios = knobs.pop('mag_ratios', None)
    if ratios is None:
        ratios = defaults.get('cache_mag_ratios', ())
    set_knobs = {k: v for k, v in knobs.items() if v is not None}
    return StepCache(
        kind=kind,
        threshold=threshold,
        mag_ratios=tuple(float(r) for r in ratios),
        **set_knobs,
    )
