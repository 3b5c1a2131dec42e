"""Speed benchmarks: prints a table and writes the same figures as JSON.

  python experiments/benchmark.py dit --json=bench_dit.json      # train step vs PyTorch, MFU
  python experiments/benchmark.py sample --json=bench_sample.json  # TextToVideo seconds/clip
  python experiments/benchmark.py vae --json=bench_vae.json      # experiments/benchmark_vae.py

`dit` times one DiT train step (forward + backward + AdamW, float32 by default) of sora_jax and,
in the same process at the same config and thread count, of diffusers' `WanTransformer3DModel`
(weights copied through `sora_jax.convert.wan`). MFU = model FLOPs (analytic: 3x the forward
matmul FLOPs, attention included, remat recompute not) / step time / the matmul peak measured
in the same run (a large jitted f32 matmul). It also compiles the scanned train step at two
depths (`--compile_depths`) to show compile time flat in depth.

Noise: the two runtimes' steps are interleaved over `--rounds` rounds (the background load hits
both alike); each figure is the median over rounds with its range, `speed_ratio_vs_torch` is the
median of the per-round ratios. The CPU time other processes used during the timed rounds
(`other_cpu_share`, from /proc/stat) and the 1-minute load average before and after are
recorded; the output and the JSON carry a warning when others used more than `--quiet_share`
of the cores (`loaded`). `--profile=DIR` adds a
per-op profile of one step of each runtime (JAX profiler trace with XLA:CPU op events, torch's
profiler), summed by op kind, to the table and the JSON.

Subcommands live in SUBCOMMANDS {name: fn(FLAGS) -> dict}; `vae` is loaded from
`experiments/benchmark_vae.py` (its `run(FLAGS) -> dict`) so that file's owner adds flags there.
"""

import collections
import json
import os
import re
import resource
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sora_jax.io import host_memory  # noqa: E402

host_memory.retain_freed_memory()  # before jax starts its threads (see the module doc)

from absl import app, flags  # noqa: E402

flags.DEFINE_string('json', None, 'Write the figures to this JSON file.')
flags.DEFINE_integer(
    'threads',
    0,
    'CPU cores for both runtimes: the process is pinned to this '
    'many cores (XLA:CPU sizes its pool by them) and torch.set_num_threads gets '
    'the same number (0: every core this process may use).',
)
flags.DEFINE_integer(
    'rounds',
    5,
    'Timing rounds (JAX and torch interleaved); medians and ranges over rounds are reported.',
)
flags.DEFINE_integer('iters', 2, 'Steps per timing round.')
flags.DEFINE_float(
    'quiet_share',
    0.1,
    'Figures are marked as taken on a loaded machine when '
    'other processes used more than this share of all cores during the timed '
    'rounds (from /proc/stat minus this process; Linux).',
)
flags.DEFINE_float(
    'quiet_load',
    None,
    'Where /proc/stat is missing: a 1-minute load average '
    'above this before the run marks the figures as loaded (default: the number '
    'of cores).',
)
flags.DEFINE_string(
    'profile',
    None,
    'dit: also write a per-op profile of one train step of '
    'each runtime under this directory and summarise it by op kind.',
)
flags.DEFINE_bool(
    'forward',
    True,
    'dit: also time one forward pass on the CFG batch (2 x '
    '--batch: a sampling step) against torch.',
)
# dit
flags.DEFINE_integer('dim', 512, 'DiT width.')
flags.DEFINE_integer('heads', 8, 'DiT heads.')
flags.DEFINE_integer('ffn_dim', 2048, 'DiT MLP width.')
flags.DEFINE_integer('depth', 6, 'DiT blocks.')
flags.DEFINE_integer('text_dim', 256, 'Text feature width.')
flags.DEFINE_integer('text_len', 32, 'Text tokens.')
flags.DEFINE_integer('channels', 16, 'Latent channels.')
flags.DEFINE_list('latent', ['4', '16', '16'], 'Latent T,H,W (patch 1,2,2).')
flags.DEFINE_integer('batch', 4, 'Clips per train step.')
flags.DEFINE_string('dtype', 'float32', 'Compute dtype (params stay float32).')
flags.DEFINE_string('remat', 'none', 'DiT remat policy.')
flags.DEFINE_bool('torch', True, 'Also time diffusers WanTransformer3DModel (skipped if missing).')
flags.DEFINE_list(
    'compile_depths', ['2', '28'], 'Depths whose train-step compile time is measured (empty: skip).'
)
flags.DEFINE_integer('matmul_size', 2048, 'Side of the square f32 matmul that measures peak.')
# sample
flags.DEFINE_string(
    'sample_config',
    'dit_pixel',
    'configs/shapes.py ARG of a randomly initialised model (used without --sample_checkpoint).',
)
flags.DEFINE_string(
    'sample_checkpoint',
    None,
    'Time this trained checkpoint instead (e.g. checkpoints/shapes: includes its VAE decode).',
)
flags.DEFINE_integer('sample_steps', 10, 'Sampling steps.')
flags.DEFINE_integer('sample_frames', 0, 'Frames per clip (0: the config default).')
flags.DEFINE_integer('sample_size', 0, 'Height = width in pixels (0: the config default).')
FLAGS = flags.FLAGS


# ----------------------------------------------------------------------------- helpers


def _threads() -> int:
    return len(os.sched_getaffinity(0))


def pin_threads(n: int) -> None:
    """Pin to n cores before jax / torch start their thread pools (0: leave as is)."""
    cores = sorted(os.sched_getaffinity(0))
    if n < 0 or n > len(cores):
        raise ValueError(f'--threads={n} must be in [0, {len(cores)}] (the usable cores).')
    if n:
        os.sched_setaffinity(0, cores[:n])


def _best(fn, rounds: int, iters: int) -> float:
    """Best mean seconds per call over `rounds` rounds of `iters` calls."""
    return min(_mean_s(fn, iters) for _ in range(rounds))


def _mean_s(fn, iters: int) -> float:
    """Mean seconds per call over `iters` calls."""
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


def interleaved(fns: dict, rounds: int, iters: int) -> dict:
    """{name: [seconds per call in each round]}: the callables take turns within every round, so
    load from other processes lands on all of them alike."""
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            times[k].append(_mean_s(fn, iters))
    return times


def spread(xs) -> dict:
    """Median, min, max and (max - min) / median of a list of timings."""
    med = statistics.median(xs)
    return dict(median=med, min=min(xs), max=max(xs), spread=(max(xs) - min(xs)) / med)


def load_average() -> float:
    """The 1-minute load average (0.0 where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


class OtherLoad:
    """CPU time that *other* processes used while this one ran: the machine's busy time from
    /proc/stat minus this process's own CPU time, as a share of all cores x wall time. The load
    average cannot tell this: it counts the benchmark itself and lags by minutes."""

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample():
        try:
            with open('/proc/stat') as f:
                v = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        tick = os.sysconf('SC_CLK_TCK')
        busy = (sum(v) - v[3] - (v[4] if len(v) > 4 else 0)) / tick  # all but idle + iowait
        own = sum(os.times()[:4])
        return busy, own, time.perf_counter()

    def share(self) -> float | None:
        end = self._sample()
        if self.start is None or end is None:
            return None
        busy, own, wall = (b - a for a, b in zip(self.start, end))
        return max(busy - own, 0.0) / (wall * (os.cpu_count() or 1))


def load_verdict(
    other_share: float | None, before: float, quiet_share: float, quiet_load: float | None
) -> str | None:
    """A warning when other processes shared the machine during the timed rounds (or, without
    /proc/stat, when the load average was high before them); None when it was quiet."""
    if other_share is not None:
        if other_share > quiet_share:
            return (
                f'LOADED MACHINE: other processes used {100 * other_share:.0f}% of all cores '
                f'during the timed rounds (quiet: <= {100 * quiet_share:.0f}%). Compare only '
                'the ratios of interleaved runs; rerun on a quiet machine for absolute '
                'figures.'
            )
        return None
    quiet_load = float(os.cpu_count() or 1) if quiet_load is None else quiet_load
    if before > quiet_load:
        return (
            f'LOADED MACHINE: 1-minute load average {before:.2f} before the run (quiet: <= '
            f'{quiet_load:g}). Compare only the ratios of interleaved runs.'
        )
    return None


def op_kind(name: str) -> str:
    """An XLA op or fusion name -> its kind ('ynn_fusion.63' -> 'ynn_fusion')."""
    return re.sub(r'(\.\d+)+$', '', name)


def profile_jax(fn, directory: str, steps: int = 2) -> dict:
    """Per-op-kind milliseconds per step of `fn` (one step per call) from a JAX profiler trace.

    XLA:CPU emits one event per executed op only with `--xla_cpu_enable_xprof_traceme`, which
    must be in XLA_FLAGS before jax starts (the benchmark adds it when --profile is given). The
    ops of one step run on up to `threads` threads at once, so the sum exceeds the step time."""
    import glob

    import jax

    with jax.profiler.trace(directory):
        for _ in range(steps):
            fn()
    path = sorted(glob.glob(os.path.join(directory, '**', '*.xplane.pb'), recursive=True))[-1]
    kinds, ops = collections.Counter(), collections.Counter()
    for plane in jax.profiler.ProfileData.from_file(path).planes:
        for line in plane.lines:
            if not line.name.startswith('tf_XLAEigen'):  # XLA:CPU's op threads
                continue
            for ev in line.events:
                if ev.name.startswith(('ThunkExecutor', 'SlinkyThreadPool', 'while', 'end:')):
                    continue
                kinds[op_kind(ev.name)] += ev.duration_ns / 1e6 / steps
                ops[ev.name] += ev.duration_ns / 1e6 / steps
    return dict(
        trace=path,
        total_ms=sum(kinds.values()),
        kinds_ms=dict(kinds.most_common(15)),
        top_ops_ms=dict(ops.most_common(15)),
    )


def profile_torch(fn, steps: int = 2) -> dict:
    """Per-op milliseconds per step of `fn` from torch's profiler (self CPU time, aten ops)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
    rows = collections.Counter()
    for e in prof.key_averages():
        rows[e.key] += e.self_cpu_time_total / 1e3 / steps
    return dict(total_ms=sum(rows.values()), kinds_ms=dict(rows.most_common(15)))


def matmul_peak(n: int):
    """A callable `peak(window_s)` -> FLOP/s of a jitted [n, n] @ [n, n] float32 matmul.

    Each of 3 samples repeats the matmul for about `window_s` (the step time), and the best
    counts: called next to each timed round with the same window, load from other processes
    hits the peak and the step alike (a short window would catch quiet moments the step can't)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(jnp.matmul)
    f(a, b).block_until_ready()
    one = _best(lambda: f(a, b).block_until_ready(), 3, 1)

    def peak(window_s: float = 0.0) -> float:
        reps = max(1, round(window_s / one))
        return 2 * n**3 / _best(lambda: f(a, b).block_until_ready(), 3, reps)

    return peak


def dit_flops(cfg, tokens: int, text_len: int, batch: int) -> float:
    """Analytic forward matmul FLOPs of the DiT per batch (attention scores included)."""
    d, f, n, L = cfg.dim, cfg.ffn_dim, tokens, text_len
    patch = cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2]
    per_block = (
        2 * n * 4 * d * d  # self-attention q, k, v, out
        + 4 * n * n * d  # scores + weighted values
        + 2 * n * 2 * d * d  # cross-attention q, out
        + 2 * L * 2 * d * d  # cross-attention k, v on text
        + 4 * n * L * d  # cross scores + values
        + 2 * n * 2 * d * f
    )  # MLP
    outer = (
        2 * n * patch * cfg.in_channels * d
        + 2 * n * d * patch * cfg.out_channels
        + 2 * L * (cfg.text_dim * d + d * d)
        + 2 * (cfg.freq_dim * d + d * d + d * 6 * d)
    )
    return batch * (cfg.depth * per_block + outer)


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ----------------------------------------------------------------------------- dit


def _dit_config(depth=None):
    from sora_jax.models.dit import DiTConfig

    return DiTConfig(
        patch_size=(1, 2, 2),
        in_channels=FLAGS.channels,
        out_channels=FLAGS.channels,
        dim=FLAGS.dim,
        num_heads=FLAGS.heads,
        ffn_dim=FLAGS.ffn_dim,
        depth=depth or FLAGS.depth,
        text_dim=FLAGS.text_dim,
        freq_dim=256,
        attention='xla',
        dtype=FLAGS.dtype,
        remat=FLAGS.remat,
    )


def _jax_train_step(graphdef, tx):
    """(params, opt_state, x, t, ctx, target) -> (params, opt_state, loss): MSE + AdamW."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    def step(params, opt_state, x, t, ctx, target):
        def loss_fn(p):
            v = nnx.merge(graphdef, p)(x, t, ctx)
            return jnp.mean((v - target) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def _jax_forward(graphdef):
    """(params, x, t, ctx) -> velocity: one sampling step's DiT call."""
    import jax
    from flax import nnx

    return jax.jit(lambda params, x, t, ctx: nnx.merge(graphdef, params)(x, t, ctx))


def _inputs(cfg):
    import numpy as np

    t_, h_, w_ = (int(s) for s in FLAGS.latent)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((FLAGS.batch, t_, h_, w_, cfg.in_channels)).astype(np.float32)
    target = rng.standard_normal(x.shape).astype(np.float32)
    ctx = rng.standard_normal((FLAGS.batch, FLAGS.text_len, cfg.text_dim)).astype(np.float32)
    t = np.linspace(0.2, 0.9, FLAGS.batch).astype(np.float32)
    return x, t, ctx, target


def compile_seconds(depth: int) -> float:
    """Lower + compile the scanned train step at `depth` blocks from abstract shapes only."""
    import jax
    import optax
    from flax import nnx

    from sora_jax.models.dit import DiT

    cfg = _dit_config(depth)
    gdef, abstract = nnx.split(nnx.eval_shape(lambda: DiT(cfg, rngs=nnx.Rngs(0))))
    tx = optax.adamw(1e-4)
    opt = jax.eval_shape(tx.init, abstract)
    args = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in _inputs(cfg)]
    t0 = time.perf_counter()
    _jax_train_step(gdef, tx).lower(abstract, opt, args[0], args[1], args[2], args[3]).compile()
    return time.perf_counter() - t0


def _torch_model(cfg, folder):
    import torch
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    model = WanTransformer3DModel(
        patch_size=cfg.patch_size,
        num_attention_heads=cfg.num_heads,
        attention_head_dim=cfg.head_dim,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        text_dim=cfg.text_dim,
        freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim,
        num_layers=cfg.depth,
        cross_attn_norm=True,
        eps=cfg.eps,
    )
    model.save_pretrained(folder)
    return model


def bench_dit(_) -> dict:
    import jax
    import numpy as np
    import optax
    from flax import nnx

    from sora_jax.convert import wan
    from sora_jax.models.dit import DiT

    threads = _threads()
    cfg = _dit_config()
    x, t, ctx, target = _inputs(cfg)
    tokens = x.shape[1] * (x.shape[2] // 2) * (x.shape[3] // 2)
    out = dict(
        device=str(jax.devices()[0].device_kind),
        backend=jax.default_backend(),
        threads=threads,
        dtype=FLAGS.dtype,
        remat=FLAGS.remat,
        config=dict(
            dim=cfg.dim,
            heads=cfg.num_heads,
            ffn_dim=cfg.ffn_dim,
            depth=cfg.depth,
            text_dim=cfg.text_dim,
            text_len=FLAGS.text_len,
            batch=FLAGS.batch,
            latent=[int(s) for s in FLAGS.latent],
            channels=cfg.in_channels,
        ),
        tokens_per_step=FLAGS.batch * tokens,
    )
    peak_fn = matmul_peak(FLAGS.matmul_size)
    peak = 0.0

    use_torch = FLAGS.torch
    if use_torch:
        try:
            import diffusers  # noqa: F401
            import torch  # noqa: F401
        except ImportError:
            use_torch = False
    with tempfile.TemporaryDirectory() as folder:
        if use_torch:
            import torch

            torch.set_num_threads(threads)
            tmodel = _torch_model(cfg, folder)
            module = wan.load_dit(folder, attention='xla', dtype=FLAGS.dtype, remat=FLAGS.remat)
        else:
            module = jax.jit(lambda: DiT(cfg, rngs=nnx.Rngs(0)))()
    gdef, params = nnx.split(module)
    out['params'] = int(sum(a.size for a in jax.tree.leaves(params)))
    tx = optax.adamw(1e-4)
    opt_state = jax.jit(tx.init)(params)
    step = _jax_train_step(gdef, tx)

    t0 = time.perf_counter()
    compiled = step.lower(params, opt_state, x, t, ctx, target).compile()
    out['compile_s'] = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    if mem is not None:
        out['xla_temp_bytes'] = int(mem.temp_size_in_bytes)
        out['xla_argument_bytes'] = int(mem.argument_size_in_bytes)
        out['xla_peak_bytes'] = int(
            mem.temp_size_in_bytes
            + mem.argument_size_in_bytes
            + mem.output_size_in_bytes
            - mem.alias_size_in_bytes
        )
    state = {'p': params, 'o': opt_state}
    losses = []

    def jax_once():
        state['p'], state['o'], loss = compiled(state['p'], state['o'], x, t, ctx, target)
        losses.append(loss)
        loss.block_until_ready()

    jax_once()
    out['rss_after_jax_bytes'] = _rss_bytes()

    if use_torch:
        tx_t = torch.optim.AdamW(
            tmodel.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-4
        )
        tdt = {'float32': torch.float32, 'bfloat16': torch.bfloat16}[FLAGS.dtype]
        tmodel.train()
        tx_in = torch.from_numpy(x.transpose(0, 4, 1, 2, 3).copy())
        tt_in = torch.from_numpy(t * cfg.timestep_scale)
        tc_in = torch.from_numpy(ctx)
        tg_in = torch.from_numpy(target.transpose(0, 4, 1, 2, 3).copy())
        t_losses = []

        def torch_once():
            with torch.autocast('cpu', dtype=tdt, enabled=tdt != torch.float32):
                v = tmodel(tx_in, tt_in, tc_in, return_dict=False)[0]
            loss = ((v.float() - tg_in) ** 2).mean()
            loss.backward()
            tx_t.step()
            tx_t.zero_grad(set_to_none=True)
            t_losses.append(loss.item())

        torch_once()
        # same weights, same batch: the first losses agree (the converter + the model are exact)
        out['first_loss_jax'] = float(losses[0])
        out['first_loss_torch'] = t_losses[0]
    fns = {'jax': jax_once}
    if use_torch:
        fns['torch'] = torch_once
    if FLAGS.forward:  # one sampling step: forward only on the CFG batch (cond + uncond)
        fwd = _jax_forward(gdef)
        xf, tf_, cf = (np.concatenate([a, a]) for a in (x, t, ctx))
        cf[FLAGS.batch :] = 0.0
        fwd_c = fwd.lower(state['p'], xf, tf_, cf).compile()
        fns['jax_forward'] = lambda: fwd_c(state['p'], xf, tf_, cf).block_until_ready()
        fns['jax_forward']()
        if use_torch:
            tfx = torch.from_numpy(xf.transpose(0, 4, 1, 2, 3).copy())
            tft, tfc = torch.from_numpy(tf_ * cfg.timestep_scale), torch.from_numpy(cf)

            def torch_forward():
                with (
                    torch.inference_mode(),
                    torch.autocast('cpu', dtype=tdt, enabled=tdt != torch.float32),
                ):
                    tmodel(tfx, tft, tfc, return_dict=False)[0].float()

            fns['torch_forward'] = torch_forward
            torch_forward()
    out['load_before'] = load_average()
    others = OtherLoad()
    times = interleaved(fns, FLAGS.rounds, FLAGS.iters)
    out['other_cpu_share'] = others.share()
    for _ in range(FLAGS.rounds):  # the matmul peak, in windows as long as a step
        peak = max(peak, peak_fn(statistics.median(times['jax'])))
    out['load_after'] = load_average()
    warning = load_verdict(
        out['other_cpu_share'], out['load_before'], FLAGS.quiet_share, FLAGS.quiet_load
    )
    out['loaded'] = warning is not None
    if warning:
        out['warning'] = warning
    out['rounds'] = FLAGS.rounds
    out['matmul_peak_flops'] = peak
    jt = spread(times['jax'])
    out['step_s'] = jt['median']
    out['step_s_range'] = [jt['min'], jt['max']]
    out['step_s_spread'] = jt['spread']
    out['tokens_per_s'] = out['tokens_per_step'] / out['step_s']
    out['model_flops_per_step'] = 3 * dit_flops(cfg, tokens, FLAGS.text_len, FLAGS.batch)
    out['achieved_flops'] = out['model_flops_per_step'] / out['step_s']
    out['mfu'] = out['achieved_flops'] / out['matmul_peak_flops']
    if use_torch:
        tt = spread(times['torch'])
        out['torch_step_s'] = tt['median']
        out['torch_step_s_range'] = [tt['min'], tt['max']]
        out['torch_step_s_spread'] = tt['spread']
        out['torch_tokens_per_s'] = out['tokens_per_step'] / tt['median']
        out['torch_threads'] = torch.get_num_threads()
        out['torch_mfu'] = out['model_flops_per_step'] / tt['median'] / out['matmul_peak_flops']
        ratios = spread([b / a for a, b in zip(times['jax'], times['torch'])])  # paired rounds
        out['speed_ratio_vs_torch'] = ratios['median']
        out['speed_ratio_range'] = [ratios['min'], ratios['max']]
    if FLAGS.forward:
        ft = spread(times['jax_forward'])
        out['forward_batch'] = 2 * FLAGS.batch
        out['forward_s'] = ft['median']
        out['forward_s_range'] = [ft['min'], ft['max']]
        if use_torch:
            tf_t = spread(times['torch_forward'])
            out['torch_forward_s'] = tf_t['median']
            out['torch_forward_s_range'] = [tf_t['min'], tf_t['max']]
            r = spread([b / a for a, b in zip(times['jax_forward'], times['torch_forward'])])
            out['forward_speed_ratio_vs_torch'] = r['median']
            out['forward_speed_ratio_range'] = [r['min'], r['max']]
    if FLAGS.profile:
        out['profile_jax'] = profile_jax(jax_once, os.path.join(FLAGS.profile, 'jax'))
        if use_torch:
            out['profile_torch'] = profile_torch(torch_once)
    out['rss_peak_bytes'] = _rss_bytes()
    depths = [int(d) for d in FLAGS.compile_depths]
    for d in depths:
        out[f'compile_s_depth{d}'] = compile_seconds(d)
    if len(depths) == 2:
        out['compile_ratio'] = (
            out[f'compile_s_depth{depths[1]}'] / out[f'compile_s_depth{depths[0]}']
        )
    return out


# ----------------------------------------------------------------------------- sample


def bench_sample(_) -> dict:
    import jax

    from configs import shapes as shapes_config
    from sora_jax.pipeline import TextToVideo

    if FLAGS.sample_checkpoint:
        pipe = TextToVideo.from_checkpoint(FLAGS.sample_checkpoint)
        name = FLAGS.sample_checkpoint
    else:
        pipe = TextToVideo.from_config(shapes_config.get_config(FLAGS.sample_config), seed=0)
        name = f'configs/shapes.py:{FLAGS.sample_config} (random init)'
    config = pipe.config
    frames = FLAGS.sample_frames or config.sample.num_frames
    size = FLAGS.sample_size or config.sample.height
    kw = dict(
        num_frames=frames,
        height=size,
        width=size,
        num_inference_steps=FLAGS.sample_steps,
        seed=0,
        progress=False,
    )
    prompt = 'a red circle moving to the left'
    t0 = time.perf_counter()
    first = pipe(prompt, **kw)
    first_s = time.perf_counter() - t0
    clip_s = _best(lambda: pipe(prompt, **kw), FLAGS.rounds, 1)
    n_params = sum(a.size for a in jax.tree.leaves(pipe.params))
    return dict(
        device=str(jax.devices()[0].device_kind),
        model=name,
        vae=pipe.vae is not None,
        params=int(n_params),
        frames=frames,
        size=size,
        steps=FLAGS.sample_steps,
        sampler=config.sample.sampler,
        output_shape=list(first.shape),
        first_call_s=first_s,
        compile_s=max(first_s - clip_s, 0.0),
        seconds_per_clip=clip_s,
        seconds_per_step=clip_s / FLAGS.sample_steps,
        rss_peak_bytes=_rss_bytes(),
    )


# After our flags: benchmark_vae defines the --vae_* flags and skips those already defined.
from experiments import benchmark_vae  # noqa: E402


def bench_vae(flags_) -> dict:
    """The VAE benchmark (`sora_jax.evaluation.vae_bench`); its --vae_* flags are defined by
    experiments/benchmark_vae.py, imported at the top so the command line accepts them."""
    return benchmark_vae.run(flags_)


SUBCOMMANDS = {'dit': bench_dit, 'sample': bench_sample, 'vae': bench_vae}


# ----------------------------------------------------------------------------- output


def _fmt(v) -> str:
    if isinstance(v, float):
        return f'{v:.4g}'
    if isinstance(v, list):
        return '[' + ', '.join(_fmt(a) for a in v) + ']'
    return str(v)


def print_table(name: str, figures: dict) -> None:
    width = max(len(k) for k in figures)
    print(f'== benchmark {name} ==')
    for k, v in figures.items():
        if k.startswith('profile_'):
            print(f'{k}: {v["total_ms"]:.0f} ms of op time per step, by op kind:')
            for op, ms in v['kinds_ms'].items():
                print(f'    {ms:9.1f} ms  {op}')
            continue
        if k == 'warning':
            continue
        if k.endswith('_bytes'):
            v = f'{v / 2**20:.1f} MiB'
        elif k.endswith('flops') and isinstance(v, float):
            v = f'{v / 1e9:.2f} GFLOP' + ('' if 'per_step' in k else '/s')
        print(f'{k:<{width}}  {_fmt(v)}')


def main(argv):
    if len(argv) != 2 or argv[1] not in SUBCOMMANDS:
        raise app.UsageError(
            f'usage: benchmark.py {{{",".join(SUBCOMMANDS)}}} --json=FILE; got {argv[1:]}.'
        )
    pin_threads(FLAGS.threads)
    if FLAGS.profile:  # XLA:CPU emits per-op trace events only when told before it starts
        os.environ['XLA_FLAGS'] = (
            os.environ.get('XLA_FLAGS', '') + ' --xla_cpu_enable_xprof_traceme=true'
        ).strip()
    figures = SUBCOMMANDS[argv[1]](FLAGS)
    if argv[1] != 'vae':  # the VAE benchmark prints its own per-length table
        print_table(argv[1], figures)
    if figures.get('warning'):
        print(f'WARNING: {figures["warning"]}', file=sys.stderr)
        print(f'WARNING: {figures["warning"]}')
    if FLAGS.json:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.json)), exist_ok=True)
        with open(FLAGS.json, 'w') as f:
            json.dump(dict(figures, benchmark=argv[1]), f, indent=1)


if __name__ == '__main__':
    app.run(main)
