"""What the fast-inference options buy, measured in one run (`benchmark.py fast_inference`).

  figures = run(FastInferenceBench())       # the dict `benchmark.py fast_inference` writes
  print(format_markdown(figures))           # the tables docs/fast_inference.md shows

Three parts, each optional:

  shapes  the shipped shapes model (`checkpoint`): seconds per clip and the shapes judge's
          scores (`evaluation/shapes_eval.py`, the prompts of `colors` x `languages`, held-out
          pairs only by default) for full sampling against every step cache at two settings
          (`firstblock` / `magcache` thresholds, `taylorseer` intervals), with the DiT
          evaluations each skipped. The whole TextToVideo call is timed (text encoder, sampler,
          VAE decode, watermark), so the speedup is what a user sees.
  wan     Wan 2.1 DiTs with random weights at `configs/wan21.py` dims (`wan`: 'tiny', the
          parity tests' DiT, and 't2v_1.3b'): the jitted sampler alone (`pipeline/denoise.py`,
          CFG, the config's sampler and guidance, `wan_steps` steps) on `wan_latent` latents and
          `text_len` random text tokens, full against each cache and against recomputing the
          cross-attention keys / values at every step (`text_kv_cache=False`). The random
          DiT is built and run in `wan_dtype` (`random_dit`, see there for why float32 on CPU).
  memory  bytes of the Wan DiTs' weights in bf16, int8 and fp8 (`models/quantize.py`, from
          shapes via `nnx.eval_shape`, nothing allocated), and the quantized AOT sampling rows
          found in `aot_dir` (read, not recompiled).

Timing: every variant is compiled and run once first (its first call's seconds less the median
is `compile_s`); then `rounds` rounds each run every variant once in turn, so load from other
processes lands on all alike. Speedups are the median over rounds of the per-round ratio
full / variant, with the range. MagCache needs the model's magnitude ratios: one calibration
run (`calibrate=True`, nothing skipped) per model records them first. The CPU share other
processes used during the timed rounds and the 1-minute load average before / after are kept;
`warning` says when the machine was not quiet.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import math
import os
import time

from sora_jax.bench import machine, timing

SETTINGS = {
    'firstblock': (0.05, 0.1),  # relative L1 thresholds (diffusers' default, then twice it)
    'magcache': (0.06, 0.12),  # accumulated-error thresholds (diffusers' default, twice it)
    'taylorseer': (3, 5),  # intervals between computed evaluations (warmup 3, order 1)
}


@dataclasses.dataclass(frozen=True)
class FastInferenceBench:
    """What to measure (the defaults are `experiments/benchmark.py fast_inference`'s)."""

    checkpoint: str | None = 'checkpoints/shapes'  # the shapes part (None / '': skipped)
    colors: tuple[str, ...] = ()  # shapes prompts of these colours (): every colour
    languages: tuple[str, ...] = ('en',)
    holdout_only: bool = True  # only the (colour, shape) pairs held out of training
    shapes_steps: int = 25
    wan: tuple[str, ...] = ('tiny', 't2v_1.3b')  # configs/wan21.py args (): the part skipped
    wan_steps: int = 8
    wan_latent: tuple[int, int, int] = (2, 8, 8)  # latent T', h, w (patch 1, 2, 2)
    wan_dtype: str = 'float32'  # the random Wan DiTs' weights and compute ('': the config's)
    text_len: int = 512  # text tokens (Wan pads prompts to 512)
    settings: tuple[tuple[str, tuple[float, ...]], ...] = tuple(SETTINGS.items())
    memory: tuple[str, ...] = ('tiny', 't2v_1.3b', 't2v_14b')  # configs/wan21.py args
    aot_dir: str = 'docs/aot'
    rounds: int = 3
    min_round_s: float = 1.0  # a variant's calls are repeated within a round to last this long
    # (<= 0: one call each, with no extra call to size the rounds)
    quiet_share: float = 0.1  # 'loaded' above this share of all cores used by others
    quiet_load: float | None = None  # without /proc/stat: 'loaded' above this load average

    def check(self) -> 'FastInferenceBench':
        from sora_jax.pipeline.step_cache import KINDS

        if self.rounds < 1:
            raise ValueError(f'rounds={self.rounds} must be >= 1.')
        for kind, values in self.settings:
            if kind not in KINDS or kind == 'none' or not values:
                raise ValueError(f'settings: {kind}={values}; kinds are {KINDS[1:]} with values.')
        if self.wan_dtype not in ('', 'float32', 'bfloat16'):
            raise ValueError(f"wan_dtype={self.wan_dtype!r}: use '', 'float32' or 'bfloat16'.")
        if self.wan_steps < 2 or self.shapes_steps < 2:
            raise ValueError(
                f'wan_steps={self.wan_steps}, shapes_steps={self.shapes_steps}: need >= 2 '
                'steps for a cache to skip anything.'
            )
        return self


def _cache(kind: str, value: float, mag_ratios=()):
    """The StepCache of one variant: `value` is the threshold, or TaylorSeer's interval."""
    from sora_jax.pipeline.step_cache import StepCache

    if kind == 'taylorseer':
        return StepCache('taylorseer', interval=int(value))
    return StepCache(kind, threshold=float(value), mag_ratios=tuple(mag_ratios))


def _label(kind: str, value) -> str:
    return f'{kind} interval {int(value)}' if kind == 'taylorseer' else f'{kind} {value:g}'


def _timed(
    variants: dict, rounds: int, min_round_s: float, first_calls: dict | None = None
) -> tuple[dict, dict]:
    """variants {name: fn()} (name 'full' first). Each is first called once through
    `first_calls[name]` (default: itself; it compiles, and its result is kept), then `rounds`
    interleaved rounds of `iters` calls each, `iters` chosen so that the full variant's calls
    take at least `min_round_s` a round (a call of a few ms is timed over many; one call when
    `min_round_s` <= 0, which spares the extra call that sizes the rounds).
    -> (first results, {figures: per name (seconds per call), iters, load figures})."""
    first, first_s = {}, {}
    for name, fn in variants.items():
        t0 = time.perf_counter()
        first[name] = (first_calls or variants)[name]()
        first_s[name] = time.perf_counter() - t0
    iters = 1
    if min_round_s > 0:
        one = timing.mean_s(variants['full'], 1)
        iters = max(1, math.ceil(min_round_s / max(one, 1e-6)))
    load_before = machine.load_average()
    others = machine.OtherLoad()
    times = timing.interleaved(variants, rounds, iters)
    load = dict(
        iters=iters,
        load_before=load_before,
        load_after=machine.load_average(),
        other_cpu_share=others.share(),
    )
    figures = {}
    for name, ts in times.items():
        s = timing.spread(ts)
        r = timing.spread([a / b for a, b in zip(times['full'], ts)])  # paired per round
        figures[name] = dict(
            seconds=s['median'],
            seconds_range=[s['min'], s['max']],
            seconds_spread=s['spread'],
            first_call_s=first_s[name],  # compile + one run (+ judging for shapes)
            speedup=r['median'],
            speedup_range=[r['min'], r['max']],
        )
    return first, dict(figures=figures, **load)


# ----------------------------------------------------------------------------- shapes


def shapes_part(opts: FastInferenceBench) -> dict:
    """Seconds per clip and judge scores of the shapes model, full vs every cache setting."""
    from sora_jax.evaluation import shapes_eval
    from sora_jax.pipeline import TextToVideo

    pipe = TextToVideo.from_checkpoint(opts.checkpoint)
    holdout = tuple(
        tuple(c) for c in pipe.config.get('data', {}).get('holdout', shapes_eval.default_holdout())
    )
    combos = shapes_eval.combinations(holdout, opts.holdout_only, list(opts.colors) or None)
    clips = len(combos) * len(opts.languages)
    if not clips:
        raise ValueError(
            f'colors={opts.colors} with holdout_only={opts.holdout_only} leaves no prompts; '
            f'the held-out pairs are {holdout}.'
        )
    from sora_jax.data import shapes

    # evaluate_shapes' prompts in its order, sampled in one batch with its seed
    prompts = [shapes.caption(a, lang) for a in combos for lang in opts.languages]
    kw = dict(num_inference_steps=opts.shapes_steps, seed=0, progress=False)
    calib = dataclasses.replace(_cache('magcache', 0.0), calibrate=True)
    pipe(prompts, cache=calib, **kw)  # MagCache's ratios of this model at these settings
    ratios, evals = pipe.last_cache_stats.mag_ratios[0], pipe.last_cache_stats.evaluations
    caches = {'full': None}
    for kind, values in opts.settings:
        for v in values:
            caches[_label(kind, v)] = _cache(kind, v, ratios)
    stats = {}

    def sample(name):
        def fn():
            out = pipe(prompts, cache=caches[name], **kw)
            stats[name] = pipe.last_cache_stats
            return out

        return fn

    def judged(name):  # the first call: sampled and judged by the --suite=shapes evaluation
        return lambda: shapes_eval.evaluate_shapes(
            functools.partial(pipe, cache=caches[name]),
            num_per_combo=1,
            languages=tuple(opts.languages),
            holdout=holdout,
            holdout_only=opts.holdout_only,
            steps=opts.shapes_steps,
            batch_size=clips,
            seed=0,
            progress=False,
            colors=list(opts.colors) or None,
        )

    summaries, timed = _timed(
        {n: sample(n) for n in caches},
        opts.rounds,
        opts.min_round_s,
        {n: judged(n) for n in caches},
    )
    variants = {}
    for name in caches:
        groups = summaries[name]['groups']
        group = groups['all' if 'all' in groups else opts.languages[0]]
        s = stats[name]
        f = timed['figures'][name]
        variants[name] = dict(
            f,
            seconds_per_clip=f['seconds'] / clips,
            evaluations=evals,
            skipped=s.skipped if s else 0,
            judge={k: group[k] for k in ('shape', 'color', 'motion', 'all', 'one_object')},
        )
    return dict(
        checkpoint=opts.checkpoint,
        clips=clips,
        prompts=prompts,
        steps=opts.shapes_steps,
        sampler=str(pipe.config.sample.sampler),
        guidance_scale=float(pipe.config.sample.guidance_scale),
        mag_ratios=list(ratios),
        variants=variants,
        **{k: v for k, v in timed.items() if k != 'figures'},
    )


# ----------------------------------------------------------------------------- wan


def _dit_init(cfg, seed: int = 0):
    """The jittable function building a random DiT(cfg) (see `random_dit`)."""
    import jax
    from flax import nnx

    from sora_jax.models.dit import DiT

    return lambda: DiT(cfg, rngs=nnx.Rngs(jax.random.key(seed, impl='rbg')))


def random_dit(cfg, seed: int = 0):
    """A DiT(cfg) with random weights, built in one jitted call -> (graphdef, params).

    The keys are 'rbg' (XLA's RngBitGenerator), not JAX's default threefry: on the CPU,
    threefry's counters and bit arrays for the stacked [depth, ...] kernels are materialized
    whole, 13.9 GB of temporaries to build a Wan 1.3B (2.84 GB of bf16 weights); rbg's are
    0.07 GB. The weights are created in cfg.param_dtype directly.

    Run the DiT on a CPU in float32 (`FastInferenceBench.wan_dtype`): XLA's CPU backend computes a
    bf16 dot in float32 and converts each stacked bf16 kernel to float32 before the block scan,
    so a jitted bf16 sampler holds float32 copies of the weights next to them (1.3B: 5.84 GB of
    temporaries with 2.86 GB of bf16 arguments, against 0.75 GB with 5.69 GB of float32 ones)."""
    import jax
    from flax import nnx

    graphdef, params = nnx.split(jax.jit(_dit_init(cfg, seed))())
    return graphdef, jax.block_until_ready(params)


def wan_part(opts: FastInferenceBench, arg: str) -> dict:
    """The jitted CFG sampler of a random Wan 2.1 DiT at configs/wan21.py:`arg` dims: full vs
    each cache setting and vs text_kv_cache=False."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from sora_jax import config_files
    from sora_jax.models.dit import dit_config
    from sora_jax.pipeline import ModelFamily
    from sora_jax.pipeline.denoise import DiTInputs, denoise
    from sora_jax.pipeline.options import DenoisePlan
    from sora_jax.pipeline.step_cache import StepCache
    from sora_jax.pipeline.step_cache import stats as cache_stats

    config = config_files.load(f'configs/wan21.py:{arg}')
    cfg = dit_config(config)
    if opts.wan_dtype:
        cfg = dataclasses.replace(cfg, dtype=opts.wan_dtype, param_dtype=opts.wan_dtype)
    graphdef, params = random_dit(cfg)
    n_params = int(sum(a.size for a in jax.tree.leaves(params)))
    s = config.sample
    t_, h_, w_ = opts.wan_latent
    rng = np.random.default_rng(0)
    noise = jnp.asarray(rng.standard_normal((1, t_, h_, w_, cfg.out_channels)), jnp.float32)
    # two rows of random text features: the prompt's, then the negative prompt's
    context = jnp.asarray(rng.standard_normal((2, opts.text_len, cfg.text_dim)), jnp.float32)
    inputs = DiTInputs(
        mask=jnp.zeros((1, t_)), known=jnp.zeros_like(noise), context=context, context_mask=None
    )
    base = DenoisePlan(
        family=ModelFamily.of_config(config),
        sampler=str(s.sampler),
        num_steps=opts.wan_steps,
        shift=float(s.shift),
        guidance_scale=float(s.guidance_scale),
        guidance_scale_2=float(s.guidance_scale),
        guidance_interval=(0.0, 1.0),
        t_start=1.0,
        timestep_quantization=s.get('timestep_quantization', None),
        replace_known=False,
        expand_timesteps=False,
        skip_guidance_scale=0.0,
        skip_layers=(),
        skip_guidance_interval=(0.0, 1.0),
        progress=False,
    )
    run = jax.jit(denoise, static_argnames=('graphdef', 'plan'))

    def call(plan):
        lat, carry = run(params, None, noise, inputs, graphdef=graphdef, plan=plan)
        lat = jax.block_until_ready(lat)
        return lat, None if carry is None else cache_stats(plan.cache, carry)

    calib = call(dataclasses.replace(base, cache=StepCache('magcache', calibrate=True)))[1]
    ratios = calib.mag_ratios[0]
    plans = {'full': base, 'text K/V recomputed': dataclasses.replace(base, text_kv_cache=False)}
    for kind, values in opts.settings:
        for v in values:
            plans[_label(kind, v)] = dataclasses.replace(base, cache=_cache(kind, v, ratios))
    first, timed = _timed(
        {n: functools.partial(call, p) for n, p in plans.items()}, opts.rounds, opts.min_round_s
    )
    full = np.asarray(first['full'][0])
    variants = {}
    for name in plans:
        lat, st = first[name]
        variants[name] = dict(
            timed['figures'][name],
            evaluations=calib.evaluations,
            skipped=st.skipped if st else 0,
            max_abs_diff_vs_full=float(np.abs(np.asarray(lat) - full).max()),
        )
    return dict(
        config=f'configs/wan21.py:{arg}',
        params=n_params,
        dim=cfg.dim,
        depth=cfg.depth,
        dtype=cfg.dtype,
        latent=list(opts.wan_latent),
        video_tokens=t_ * (h_ // cfg.patch_size[1]) * (w_ // cfg.patch_size[2]),
        text_tokens=opts.text_len,
        steps=opts.wan_steps,
        sampler=base.sampler,
        guidance_scale=base.guidance_scale,
        latents_std=float(full.std()),
        mag_ratios=list(ratios),
        variants=variants,
        **{k: v for k, v in timed.items() if k != 'figures'},
    )


# ----------------------------------------------------------------------------- memory


def memory_part(opts: FastInferenceBench) -> dict:
    """Weight bytes of the Wan 2.1 DiTs (bf16) as stored in bf16 / int8 / fp8, from shapes; and
    the quantized sampling rows of the AOT reports in `aot_dir`."""
    import jax
    from flax import nnx

    from sora_jax import config_files
    from sora_jax.models import quantize
    from sora_jax.models.dit import DiT, dit_config

    dits = {}
    for arg in opts.memory:
        cfg = dataclasses.replace(
            dit_config(config_files.load(f'configs/wan21.py:{arg}')), param_dtype='bfloat16'
        )
        abstract = nnx.state(nnx.eval_shape(lambda: DiT(cfg, rngs=nnx.Rngs(0))), nnx.Param)
        row = {'params': int(sum(a.size for a in jax.tree.leaves(abstract)))}
        for q in ('bf16', 'int8', 'fp8'):
            qa = quantize.abstract_params(abstract, None if q == 'bf16' else q)
            row[f'{q}_bytes'] = quantize.weight_bytes(qa)
        dits[f'configs/wan21.py:{arg}'] = row
    return dict(dits=dits, aot=aot_quantized_rows(opts.aot_dir))


def aot_quantized_rows(aot_dir: str) -> list[dict]:
    """The AOT reports (`experiments/aot.py` JSON) in `aot_dir` of sampling with quantized
    weights, with the per-chip memory XLA gave them: [{file, topology, quantize, ...}]."""
    rows = []
    for path in sorted(glob.glob(os.path.join(aot_dir, '*.json'))):
        try:
            with open(path) as f:
                r = json.load(f)
        except (OSError, ValueError):
            continue
        if not isinstance(r, dict) or not r.get('quantize'):
            continue
        rows.append(
            dict(
                file=os.path.relpath(path),
                topology=r.get('topology'),
                chips=r.get('chips'),
                task=r.get('task'),
                quantize=r['quantize'],
                param_bytes=r.get('param_bytes'),
                memory_bytes=r.get('memory_bytes'),
                hbm_bytes=r.get('hbm_bytes'),
                fits=r.get('fits'),
                command=r.get('command'),
            )
        )
    return rows


# ----------------------------------------------------------------------------- run, table


def run(opts: FastInferenceBench) -> dict:
    """The figures (see the module docstring); keys as `benchmark.py fast_inference --json`
    writes them: 'shapes', 'wan' {config arg: ...}, 'memory', the load and `warning`."""
    import jax

    opts = opts.check()
    out = dict(
        device=str(jax.devices()[0].device_kind),
        backend=jax.default_backend(),
        threads=machine.cpu_threads(),
        rounds=opts.rounds,
        load_start=machine.load_average(),
    )
    if opts.checkpoint:
        out['shapes'] = shapes_part(opts)
    if opts.wan:
        out['wan'] = {arg: wan_part(opts, arg) for arg in opts.wan}
    if opts.memory:
        out['memory'] = memory_part(opts)
    out['load_end'] = machine.load_average()
    parts = [out.get('shapes')] + list(out.get('wan', {}).values())
    parts = [p for p in parts if p]
    shares = [p['other_cpu_share'] for p in parts if p['other_cpu_share'] is not None]
    out['other_cpu_share'] = max(shares) if shares else None
    warning = machine.load_verdict(
        out['other_cpu_share'], out['load_start'], opts.quiet_share, opts.quiet_load
    )
    out['loaded'] = warning is not None
    if warning:
        out['warning'] = warning
    return out


def _range(f: dict, key: str, fmt: str) -> str:
    lo, hi = f[f'{key}_range']
    return f'{f[key]:{fmt}} ({lo:{fmt}}-{hi:{fmt}})'


def _load_line(p: dict) -> str:
    share = p['other_cpu_share']
    share = 'n/a' if share is None else f'{100 * share:.0f}%'
    return (
        f'load average {p["load_before"]:.2f} before / {p["load_after"]:.2f} after the timed '
        f'rounds; other processes used {share} of all cores'
    )


def format_markdown(fig: dict) -> str:
    """The figures as the markdown tables of docs/fast_inference.md's Measured section."""
    lines = [
        f'{fig["device"]} ({fig["backend"]}), {fig["threads"]} threads, {fig["rounds"]} '
        'interleaved rounds; medians with the range over rounds.'
    ]
    if 'shapes' in fig:
        sh = fig['shapes']
        lines += [
            '',
            f'Shapes model ({sh["checkpoint"]}): {sh["clips"]} clips in one batch, '
            f'{sh["steps"]} {sh["sampler"]} steps, CFG {sh["guidance_scale"]:g}, the whole '
            f'TextToVideo call (text encoder, sampler, VAE decode); '
            f'{_load_line(sh)}.',
            '',
            '| sampling | s per clip | speedup | DiT evaluations skipped | judge: shape | colour '
            '| motion | all three |',
            '|---|---:|---:|---:|---:|---:|---:|---:|',
        ]
        for name, v in sh['variants'].items():
            j = v['judge']
            per = v['seconds_per_clip']
            lo, hi = (x / sh['clips'] for x in v['seconds_range'])
            lines.append(
                f'| {name} | {per:.3f} ({lo:.3f}-{hi:.3f}) | {_range(v, "speedup", ".2f")} | '
                f'{v["skipped"]} of {v["evaluations"]} | {j["shape"]:.2f} | {j["color"]:.2f} | '
                f'{j["motion"]:.2f} | {j["all"]:.2f} |'
            )
    for arg, w in fig.get('wan', {}).items():
        lines += [
            '',
            f'Wan 2.1 DiT at {w["config"]} dims, random weights ({w["params"]:,} parameters, '
            f'{w["dtype"]}): the jitted sampler alone, {w["steps"]} {w["sampler"]} steps, CFG '
            f'{w["guidance_scale"]:g}, {w["video_tokens"]} video + {w["text_tokens"]} text '
            f'tokens, {w["iters"]} calls a round; {_load_line(w)}.',
            '',
            '| sampling | s per call | speedup | DiT evaluations skipped | max \\|latents - full\\| |',
            '|---|---:|---:|---:|---:|',
        ]
        for name, v in w['variants'].items():
            lines.append(
                f'| {name} | {_range(v, "seconds", ".3f")} | {_range(v, "speedup", ".2f")} | '
                f'{v["skipped"]} of {v["evaluations"]} | {v["max_abs_diff_vs_full"]:.2g} |'
            )
    if 'memory' in fig:
        m = fig['memory']
        lines += [
            '',
            'DiT weight bytes (bf16 weights; `jax.eval_shape`, nothing allocated):',
            '',
            '| DiT | parameters | bf16 | int8 | fp8 |',
            '|---|---:|---:|---:|---:|',
        ]
        for name, r in m['dits'].items():
            lines.append(
                f'| {name} | {r["params"]:,} | {_bytes(r["bf16_bytes"])} | '
                f'{_bytes(r["int8_bytes"])} ({r["bf16_bytes"] / r["int8_bytes"]:.2f}x less) | '
                f'{_bytes(r["fp8_bytes"])} ({r["bf16_bytes"] / r["fp8_bytes"]:.2f}x less) |'
            )
        if m['aot']:
            lines += [
                '',
                'Quantized AOT sampling compiles (read from their reports):',
                '',
                '| report | topology | weights | weight bytes (all chips) | per chip | fits |',
                '|---|---|---|---:|---:|---|',
            ]
            for r in m['aot']:
                total = (r['memory_bytes'] or {}).get('total')
                lines.append(
                    f'| {r["file"]} | {r["topology"]} | {r["quantize"]} | '
                    f'{_bytes(r["param_bytes"]) if r["param_bytes"] else "-"} | '
                    f'{_bytes(total) if total else "-"} of {_bytes(r["hbm_bytes"])} | '
                    f'{r["fits"]} |'
                )
        else:
            lines += ['', 'No quantized AOT sampling report in the AOT directory.']
    return '\n'.join(lines)


def _bytes(n) -> str:
    for unit, scale in (('GB', 1e9), ('MB', 1e6), ('KB', 1e3)):
        if n >= scale:
            return f'{n / scale:.3f} {unit}' if unit == 'GB' else f'{n / scale:.1f} {unit}'
    return f'{n} B'
