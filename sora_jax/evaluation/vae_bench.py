"""VAE benchmark: encode / decode frames per second and memory, chunked vs whole, by video length.

  result = run(args)   # args: absl FLAGS, a namespace or a dict; missing keys take DEFAULTS
  print(format_table(result))

For each frame count T (1 + 4k) and mode (`chunked`: `encode_chunked` / `decode_chunked`, one
compile per length under `lax.scan`; `whole`: `encode` / `decode`, every frame at once) it
compiles `jax.jit(f).lower(state, x).compile()` once and reports, for `encode` and `decode`:

  fps             frames in (encode) / frames out (decode) per second, best of `vae_rounds`
                  rounds of `vae_iters` calls
  temp_bytes      XLA's `memory_analysis().temp_size_in_bytes`: the working memory
  argument_bytes  inputs (params + video / latents), output_bytes: the result
  peak_bytes      temp + argument + output (an upper bound on the device footprint)
  compile_s       lower + compile seconds
  rss_growth_bytes  growth of the process' peak RSS during the compile and timed runs
                  (chunked runs go first, shortest first, so growth is attributable; 0 when an
                  earlier run already reached that peak; host only, rough on accelerators)

`run` returns {'setup': {...}, '17': {'chunked': {'encode': {...}, 'decode': {...}},
'whole': {...}}, '33': ...} (string keys, so it is its own JSON).
"""

from __future__ import annotations

import resource
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from sora_jax.models import vae as vae_lib

DEFAULTS = dict(
    vae_config='shapes',  # shapes (configs/shapes.py:vae) | tiny | wan21, or a VAEConfig
    vae_frames=(17, 33, 65, 129),  # video lengths (1 + 4k)
    vae_height=64,  # frame height (multiple of the spatial factor)
    vae_width=64,  # frame width
    vae_batch=1,  # videos per call
    vae_modes=('chunked', 'whole'),
    vae_rounds=2,  # timing rounds (best counts)
    vae_iters=1,  # calls per round
    vae_dtype='float32',  # params and activations
)


_HELP = dict(
    vae_config='shapes (configs/shapes.py:vae) | tiny | wan21 (Wan 2.1 full VAE).',
    vae_frames='Video lengths (1 + 4k).',
    vae_height='Frame height.',
    vae_width='Frame width.',
    vae_batch='Videos per call.',
    vae_modes='chunked and/or whole.',
    vae_rounds='Timing rounds (best counts).',
    vae_iters='Calls per timing round.',
    vae_dtype='Params and activations dtype.',
)


def define_flags() -> None:
    """The --vae_* absl flags (DEFAULTS) of the CLIs that run this benchmark
    (`experiments/benchmark.py vae`, `experiments/benchmark_vae.py`); defined ones are kept."""
    from absl import flags

    for name, default in DEFAULTS.items():
        if name in flags.FLAGS:
            continue
        if isinstance(default, tuple):
            flags.DEFINE_list(name, [str(v) for v in default], _HELP[name])
        elif isinstance(default, int):
            flags.DEFINE_integer(name, default, _HELP[name])
        else:
            flags.DEFINE_string(name, default, _HELP[name])


def _arg(args: Any, key: str):
    if isinstance(args, dict):
        return args.get(key, DEFAULTS[key])
    try:
        v = getattr(args, key)
    except AttributeError:  # absl FLAGS raise AttributeError for undefined flags
        return DEFAULTS[key]
    return DEFAULTS[key] if v is None else v


def vae_config(name: Any) -> vae_lib.VAEConfig:
    """'shapes' | 'tiny' | 'wan21', or a VAEConfig / dict of its fields."""
    if not isinstance(name, str):
        return vae_lib.from_config(name)
    if name == 'shapes':
        from sora_jax import config_files

        return vae_lib.from_config(config_files.load('configs/shapes.py:vae').vae)
    if name == 'tiny':
        return vae_lib.tiny_config()
    if name == 'wan21':
        return vae_lib.wan21_config()
    raise ValueError(f"vae_config={name!r}: use 'shapes', 'tiny' or 'wan21'.")


def _rss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == 'darwin' else r * 1024)


def _best(fn, rounds: int, iters: int) -> float:
    best = float('inf')
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(iters):
            jax.block_until_ready(fn())
        best = min(best, (time.perf_counter() - t0) / iters)
    return best


def _measure(
    graphdef, state, method: str, x: jax.Array, frames: int, rounds: int, iters: int
) -> dict:
    """Compile `vae.<method>(x)` once; memory analysis, timing, peak-RSS growth."""
    rss0 = _rss_bytes()

    def f(state, x):
        out = getattr(nnx.merge(graphdef, state), method)(x)
        return out[0] if isinstance(out, tuple) else out  # encode: the posterior mean

    t0 = time.perf_counter()
    compiled = jax.jit(f).lower(state, x).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    seconds = _best(lambda: compiled(state, x), rounds, iters)
    out = dict(fps=frames / seconds, seconds=seconds, compile_s=compile_s)
    if mem is not None:
        temp, arg, res = (
            int(mem.temp_size_in_bytes),
            int(mem.argument_size_in_bytes),
            int(mem.output_size_in_bytes),
        )
        out.update(
            temp_bytes=temp, argument_bytes=arg, output_bytes=res, peak_bytes=temp + arg + res
        )
    out['rss_growth_bytes'] = max(0, _rss_bytes() - rss0)
    return out


def run(args: Any = None) -> dict:
    """The benchmark (see the module doc); `args` holds the DEFAULTS keys (any subset)."""
    args = {} if args is None else args
    name = _arg(args, 'vae_config')
    frames = [int(t) for t in _arg(args, 'vae_frames')]
    h, w, b = (
        int(_arg(args, 'vae_height')),
        int(_arg(args, 'vae_width')),
        int(_arg(args, 'vae_batch')),
    )
    modes = list(_arg(args, 'vae_modes'))
    rounds, iters = int(_arg(args, 'vae_rounds')), int(_arg(args, 'vae_iters'))
    dtype = jnp.dtype(_arg(args, 'vae_dtype'))
    bad = [m for m in modes if m not in ('chunked', 'whole')]
    if bad:
        raise ValueError(f'vae_modes={modes}: unknown {bad}; use chunked and/or whole.')

    vae = nnx.eval_shape(lambda: vae_lib.WanVAE(vae_config(name), rngs=nnx.Rngs(0)))
    for t in frames:
        vae.latent_shape(t, h, w)  # ValueError naming the fix before anything compiles
    vae = vae_lib.WanVAE(vae_config(name), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(vae)
    state = jax.tree.map(
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, state
    )
    n_params = sum(a.size for a in jax.tree.leaves(nnx.state(vae, nnx.Param)))
    result: dict[str, Any] = {
        'setup': dict(
            config=name if isinstance(name, str) else repr(vae.config),
            height=h,
            width=w,
            batch=b,
            dtype=str(dtype),
            params=int(n_params),
            device=str(jax.devices()[0].device_kind),
            backend=jax.default_backend(),
            temporal_factor=vae.temporal_factor,
            spatial_factor=vae.spatial_factor,
            rounds=rounds,
            iters=iters,
        )
    }
    methods = {'chunked': ('encode_chunked', 'decode_chunked'), 'whole': ('encode', 'decode')}
    key = jax.random.key(0)
    for mode in modes:  # chunked first: its small peaks are not hidden by whole-video ones
        enc, dec = methods[mode]
        for t in frames:
            video = jax.random.uniform(key, (b, t, h, w, 3), dtype, -1.0, 1.0)
            z = jax.random.normal(key, (b, *vae.latent_shape(t, h, w)), dtype)
            result.setdefault(str(t), {})[mode] = dict(
                encode=_measure(graphdef, state, enc, video, b * t, rounds, iters),
                decode=_measure(graphdef, state, dec, z, b * t, rounds, iters),
            )
    return result


def format_table(result: dict) -> str:
    """The VAE table (docs/benchmarks.md): one row per (frames, mode)."""
    s = result['setup']
    mib = lambda x: f'{x / 2**20:8.1f}' if x is not None else '       -'
    lines = [
        f'VAE {s["config"]} ({s["params"]:,} params), {s["height"]}x{s["width"]}, batch '
        f'{s["batch"]}, {s["dtype"]}, {s["device"]}',
        'frames  mode     enc fps  dec fps  enc temp MiB  dec temp MiB  enc peak MiB  dec peak MiB',
    ]
    for t in sorted((k for k in result if k.isdigit()), key=int):
        for mode, r in result[t].items():
            e, d = r['encode'], r['decode']
            lines.append(
                f'{t:>6}  {mode:<7} {e["fps"]:8.1f} {d["fps"]:8.1f}      '
                f'{mib(e.get("temp_bytes"))}      {mib(d.get("temp_bytes"))}      '
                f'{mib(e.get("peak_bytes"))}      {mib(d.get("peak_bytes"))}'
            )
    return '\n'.join(lines)
