"""Speed benchmarks: prints a table and writes the same figures as JSON.

  python experiments/benchmark.py dit --json=bench_dit.json      # train step vs PyTorch, MFU
  python experiments/benchmark.py sample --json=bench_sample.json  # TextToVideo seconds/clip
  python experiments/benchmark.py vae --json=bench_vae.json      # VAE encode/decode by length
  python experiments/benchmark.py fast_inference --json=bench_fast.json  # caches, text K/V, int8/fp8

Each subcommand is one library call: `dit` -> `sora_jax.bench.dit.run` (what is timed, how load
from other processes is judged, and which FLOPs MFU counts are in its docstring), `sample` ->
`sora_jax.bench.sample.run`, `vae` -> `sora_jax.evaluation.vae_bench.run` (its --vae_* flags),
`fast_inference` -> `sora_jax.bench.fast_inference.run` (its --fast_* flags, --rounds).
"""

import json
import os
import sys

from sora_jax.io import host_memory

host_memory.retain_freed_memory()  # before jax starts its threads (see the module doc)

from absl import app, flags  # noqa: E402

from sora_jax.bench import dit, fast_inference, machine, profile, sample, table  # noqa: E402
from sora_jax.evaluation import vae_bench  # noqa: E402

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
# fast_inference
flags.DEFINE_string(
    'fast_checkpoint',
    'checkpoints/shapes',
    'Shapes model timed and judged per cache (empty: skip).',
)
flags.DEFINE_list('fast_colors', [], 'Shapes prompts of these colours only (default: every one).')
flags.DEFINE_list('fast_languages', ['en'], 'Shapes prompt languages.')
flags.DEFINE_bool('fast_holdout_only', True, 'Shapes prompts of the held-out pairs only.')
flags.DEFINE_integer('fast_shapes_steps', 25, 'Shapes sampling steps.')
flags.DEFINE_list('fast_wan', ['tiny', 't2v_1.3b'], 'configs/wan21.py DiTs, random weights.')
flags.DEFINE_integer('fast_wan_steps', 8, 'Wan sampler steps.')
flags.DEFINE_list('fast_wan_latent', ['2', '8', '8'], "Wan latent T',h,w (patch 1,2,2).")
flags.DEFINE_integer('fast_text_len', 512, 'Wan text tokens (random features).')
flags.DEFINE_enum(
    'fast_wan_dtype',
    'float32',
    ['', 'float32', 'bfloat16'],
    "Random Wan DiTs' weights and compute ('': the config's; float32: what a CPU computes in).",
)
flags.DEFINE_list('fast_firstblock', ['0.05', '0.1'], 'First-Block Cache thresholds.')
flags.DEFINE_list('fast_magcache', ['0.06', '0.12'], 'MagCache thresholds.')
flags.DEFINE_list('fast_taylorseer', ['3', '5'], 'TaylorSeer intervals.')
flags.DEFINE_float(
    'fast_min_round_s',
    1.0,
    'A variant is called repeatedly within a round for at least this (0: once).',
)
flags.DEFINE_list(
    'fast_memory', ['tiny', 't2v_1.3b', 't2v_14b'], 'configs/wan21.py DiTs whose bytes are counted.'
)
vae_bench.define_flags()
FLAGS = flags.FLAGS


def bench_dit(f) -> dict:
    return dit.run(
        dit.DiTBench(
            dim=f.dim,
            heads=f.heads,
            ffn_dim=f.ffn_dim,
            depth=f.depth,
            text_dim=f.text_dim,
            text_len=f.text_len,
            channels=f.channels,
            latent=tuple(int(s) for s in f.latent),
            batch=f.batch,
            dtype=f.dtype,
            remat=f.remat,
            torch=f.torch,
            forward=f.forward,
            compile_depths=tuple(int(d) for d in f.compile_depths),
            matmul_size=f.matmul_size,
            rounds=f.rounds,
            iters=f.iters,
            quiet_share=f.quiet_share,
            quiet_load=f.quiet_load,
            profile=f.profile,
        )
    )


def bench_sample(f) -> dict:
    return sample.run(
        sample.SampleBench(
            config=f.sample_config,
            checkpoint=f.sample_checkpoint,
            steps=f.sample_steps,
            frames=f.sample_frames,
            size=f.sample_size,
            rounds=f.rounds,
        )
    )


def bench_vae(f) -> dict:
    result = vae_bench.run(f)
    print(vae_bench.format_table(result), flush=True)  # its own per-length table
    return result


def bench_fast_inference(f) -> dict:
    kinds = ('firstblock', 'magcache', 'taylorseer')
    result = fast_inference.run(
        fast_inference.FastInferenceBench(
            checkpoint=f.fast_checkpoint or None,
            colors=tuple(f.fast_colors),
            languages=tuple(f.fast_languages),
            holdout_only=f.fast_holdout_only,
            shapes_steps=f.fast_shapes_steps,
            wan=tuple(f.fast_wan),
            wan_steps=f.fast_wan_steps,
            wan_latent=tuple(int(s) for s in f.fast_wan_latent),
            text_len=f.fast_text_len,
            wan_dtype=f.fast_wan_dtype,
            settings=tuple(
                (k, tuple(float(v) for v in getattr(f, f'fast_{k}')))
                for k in kinds
                if getattr(f, f'fast_{k}')
            ),
            memory=tuple(f.fast_memory),
            rounds=f.rounds,
            min_round_s=f.fast_min_round_s,
            quiet_share=f.quiet_share,
            quiet_load=f.quiet_load,
        )
    )
    print(fast_inference.format_markdown(result), flush=True)  # its own markdown tables
    return result


SUBCOMMANDS = {
    'dit': bench_dit,
    'sample': bench_sample,
    'vae': bench_vae,
    'fast_inference': bench_fast_inference,
}


def main(argv):
    if len(argv) != 2 or argv[1] not in SUBCOMMANDS:
        raise app.UsageError(
            f'usage: benchmark.py {{{",".join(SUBCOMMANDS)}}} --json=FILE; got {argv[1:]}.'
        )
    machine.pin_threads(FLAGS.threads)
    if FLAGS.profile:  # XLA:CPU emits per-op trace events only when told before it starts
        os.environ['XLA_FLAGS'] = (
            os.environ.get('XLA_FLAGS', '') + ' ' + profile.XLA_CPU_TRACE_FLAG
        ).strip()
    figures = SUBCOMMANDS[argv[1]](FLAGS)
    if argv[1] not in ('vae', 'fast_inference'):  # those print their own tables
        print(table.format_table(argv[1], figures))
    if figures.get('warning'):
        print(f'WARNING: {figures["warning"]}', file=sys.stderr)
        print(f'WARNING: {figures["warning"]}')
    if FLAGS.json:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.json)), exist_ok=True)
        with open(FLAGS.json, 'w') as f:
            json.dump(dict(figures, benchmark=argv[1]), f, indent=1)


if __name__ == '__main__':
    app.run(main)
