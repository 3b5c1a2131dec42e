"""One DiT train step of sora_jax against diffusers' `WanTransformer3DModel`, and its MFU.

  figures = run(DiTBench(dim=512, depth=6, batch=4))   # the dict `benchmark.py dit` prints

Times one train step (forward + backward + AdamW, float32 by default) of sora_jax and, in the
same process at the same config and thread count, of diffusers' model (weights copied through
`sora_jax.convert.wan`, so the first losses agree). MFU = model FLOPs per step
(`models/flops.dit_flops(...).mfu_flops`: 6 N tokens + attention, the count training logs and
AOT reports use) / step time / the matmul peak measured in the same run (`bench/peak.py`). With
`forward`, one forward on the CFG batch (2 x batch: a sampling step) is timed too. It also
compiles the scanned train step at `compile_depths` to show compile time flat in depth.

Noise: the runtimes' steps are interleaved over `rounds` rounds (background load hits all alike);
each figure is the median over rounds with its range, `speed_ratio_vs_torch` the median of the
per-round ratios. The CPU share other processes used during the timed rounds
(`other_cpu_share`) and the 1-minute load average before and after are recorded, with a warning
when others used more than `quiet_share` of the cores (`loaded`). `profile` (a directory) adds a
per-op-kind profile of one step of each runtime.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import time

from sora_jax.bench import machine, timing
from sora_jax.bench.peak import matmul_peak
from sora_jax.bench.profile import profile_jax, profile_torch
from sora_jax.models import flops


@dataclasses.dataclass(frozen=True)
class DiTBench:
    """What to time (the defaults are `experiments/benchmark.py dit`'s)."""

    dim: int = 512  # DiT width
    heads: int = 8
    ffn_dim: int = 2048
    depth: int = 6
    text_dim: int = 256
    text_len: int = 32
    channels: int = 16  # latent channels
    latent: tuple[int, int, int] = (4, 16, 16)  # latent T, H, W (patch 1, 2, 2)
    batch: int = 4  # clips per train step
    dtype: str = 'float32'  # compute dtype (params stay float32)
    remat: str = 'none'
    torch: bool = True  # also time diffusers (skipped when it is not installed)
    forward: bool = True  # also time one forward on the CFG batch
    compile_depths: tuple[int, ...] = (2, 28)  # train-step compile time at these depths
    matmul_size: int = 2048  # side of the square f32 matmul that measures the peak
    rounds: int = 5  # interleaved timing rounds
    iters: int = 2  # steps per round
    quiet_share: float = 0.1  # 'loaded' above this share of all cores used by others
    quiet_load: float | None = None  # without /proc/stat: 'loaded' above this load average
    profile: str | None = None  # directory for a per-op profile of one step of each runtime


def dit_config(opts: DiTBench, depth: int | None = None):
    """The benchmarked DiTConfig (XLA attention; `depth` overrides opts.depth)."""
    from sora_jax.models.dit import DiTConfig

    return DiTConfig(
        patch_size=(1, 2, 2),
        in_channels=opts.channels,
        out_channels=opts.channels,
        dim=opts.dim,
        num_heads=opts.heads,
        ffn_dim=opts.ffn_dim,
        depth=depth or opts.depth,
        text_dim=opts.text_dim,
        freq_dim=256,
        attention='xla',
        dtype=opts.dtype,
        remat=opts.remat,
    )


def tokens_per_clip(opts: DiTBench) -> int:
    t, h, w = opts.latent
    return t * (h // 2) * (w // 2)


def model_flops_per_step(opts: DiTBench) -> float:
    """MFU's numerator for one train step: models/flops.dit_flops(...).mfu_flops."""
    return flops.dit_flops(
        dit_config(opts), tokens_per_clip(opts), opts.batch, opts.text_len, train=True
    ).mfu_flops


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


def _inputs(opts: DiTBench, cfg):
    """x, t, ctx, target: x / target [B, T, H, W, C], t [B], ctx [B, text_len, text_dim]."""
    import numpy as np

    t_, h_, w_ = opts.latent
    rng = np.random.default_rng(0)
    x = rng.standard_normal((opts.batch, t_, h_, w_, cfg.in_channels)).astype(np.float32)
    target = rng.standard_normal(x.shape).astype(np.float32)
    ctx = rng.standard_normal((opts.batch, opts.text_len, cfg.text_dim)).astype(np.float32)
    t = np.linspace(0.2, 0.9, opts.batch).astype(np.float32)
    return x, t, ctx, target


def compile_seconds(opts: DiTBench, depth: int) -> float:
    """Lower + compile the scanned train step at `depth` blocks from abstract shapes only."""
    import jax
    import optax
    from flax import nnx

    from sora_jax.models.dit import DiT

    cfg = dit_config(opts, depth)
    gdef, abstract = nnx.split(nnx.eval_shape(lambda: DiT(cfg, rngs=nnx.Rngs(0))))
    tx = optax.adamw(1e-4)
    opt = jax.eval_shape(tx.init, abstract)
    args = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in _inputs(opts, cfg)]
    t0 = time.perf_counter()
    _jax_train_step(gdef, tx).lower(abstract, opt, *args).compile()
    return time.perf_counter() - t0


def _torch_model(cfg, folder):
    """diffusers' WanTransformer3DModel at `cfg`, also saved to `folder` (to convert from)."""
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


def _has_torch() -> bool:
    try:
        import diffusers  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def run(opts: DiTBench) -> dict:
    """The figures (see the module docstring); keys as `benchmark.py dit --json` writes them."""
    import jax
    import numpy as np
    import optax
    from flax import nnx

    from sora_jax.convert import wan
    from sora_jax.models.dit import DiT

    threads = machine.cpu_threads()
    cfg = dit_config(opts)
    x, t, ctx, target = _inputs(opts, cfg)
    tokens = tokens_per_clip(opts)
    out = dict(
        device=str(jax.devices()[0].device_kind),
        backend=jax.default_backend(),
        threads=threads,
        dtype=opts.dtype,
        remat=opts.remat,
        config=dict(
            dim=cfg.dim,
            heads=cfg.num_heads,
            ffn_dim=cfg.ffn_dim,
            depth=cfg.depth,
            text_dim=cfg.text_dim,
            text_len=opts.text_len,
            batch=opts.batch,
            latent=list(opts.latent),
            channels=cfg.in_channels,
        ),
        tokens_per_step=opts.batch * tokens,
    )
    peak_fn = matmul_peak(opts.matmul_size)
    peak = 0.0

    use_torch = opts.torch and _has_torch()
    with tempfile.TemporaryDirectory() as folder:
        if use_torch:
            import torch

            torch.set_num_threads(threads)
            tmodel = _torch_model(cfg, folder)
            module = wan.load_dit(folder, attention='xla', dtype=opts.dtype, remat=opts.remat)
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
    out['rss_after_jax_bytes'] = machine.rss_bytes()

    if use_torch:
        tx_t = torch.optim.AdamW(
            tmodel.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-4
        )
        tdt = {'float32': torch.float32, 'bfloat16': torch.bfloat16}[opts.dtype]
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
    if opts.forward:  # one sampling step: forward only on the CFG batch (cond + uncond)
        fwd = _jax_forward(gdef)
        xf, tf_, cf = (np.concatenate([a, a]) for a in (x, t, ctx))
        cf[opts.batch :] = 0.0
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
    out['load_before'] = machine.load_average()
    others = machine.OtherLoad()
    times = timing.interleaved(fns, opts.rounds, opts.iters)
    out['other_cpu_share'] = others.share()
    for _ in range(opts.rounds):  # the matmul peak, in windows as long as a step
        peak = max(peak, peak_fn(statistics.median(times['jax'])))
    out['load_after'] = machine.load_average()
    warning = machine.load_verdict(
        out['other_cpu_share'], out['load_before'], opts.quiet_share, opts.quiet_load
    )
    out['loaded'] = warning is not None
    if warning:
        out['warning'] = warning
    out['rounds'] = opts.rounds
    out['matmul_peak_flops'] = peak
    jt = timing.spread(times['jax'])
    out['step_s'] = jt['median']
    out['step_s_range'] = [jt['min'], jt['max']]
    out['step_s_spread'] = jt['spread']
    out['tokens_per_s'] = out['tokens_per_step'] / out['step_s']
    out['model_flops_per_step'] = model_flops_per_step(opts)
    out['achieved_flops'] = out['model_flops_per_step'] / out['step_s']
    out['mfu'] = out['achieved_flops'] / out['matmul_peak_flops']
    if use_torch:
        tt = timing.spread(times['torch'])
        out['torch_step_s'] = tt['median']
        out['torch_step_s_range'] = [tt['min'], tt['max']]
        out['torch_step_s_spread'] = tt['spread']
        out['torch_tokens_per_s'] = out['tokens_per_step'] / tt['median']
        out['torch_threads'] = torch.get_num_threads()
        out['torch_mfu'] = out['model_flops_per_step'] / tt['median'] / out['matmul_peak_flops']
        ratios = timing.spread([b / a for a, b in zip(times['jax'], times['torch'])])  # paired
        out['speed_ratio_vs_torch'] = ratios['median']
        out['speed_ratio_range'] = [ratios['min'], ratios['max']]
    if opts.forward:
        ft = timing.spread(times['jax_forward'])
        out['forward_batch'] = 2 * opts.batch
        out['forward_s'] = ft['median']
        out['forward_s_range'] = [ft['min'], ft['max']]
        if use_torch:
            tf_t = timing.spread(times['torch_forward'])
            out['torch_forward_s'] = tf_t['median']
            out['torch_forward_s_range'] = [tf_t['min'], tf_t['max']]
            r = timing.spread([b / a for a, b in zip(times['jax_forward'], times['torch_forward'])])
            out['forward_speed_ratio_vs_torch'] = r['median']
            out['forward_speed_ratio_range'] = [r['min'], r['max']]
    if opts.profile:
        out['profile_jax'] = profile_jax(jax_once, os.path.join(opts.profile, 'jax'))
        if use_torch:
            out['profile_torch'] = profile_torch(torch_once)
    out['rss_peak_bytes'] = machine.rss_bytes()
    depths = list(opts.compile_depths)
    for d in depths:
        out[f'compile_s_depth{d}'] = compile_seconds(opts, d)
    if len(depths) == 2:
        out['compile_ratio'] = (
            out[f'compile_s_depth{depths[1]}'] / out[f'compile_s_depth{depths[0]}']
        )
    return out
