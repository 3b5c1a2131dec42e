"""VAE benchmark: encode/decode fps and memory at 17/33/65/129 frames, chunked vs whole.

  python experiments/benchmark_vae.py --json=bench_vae.json [--vae_config=shapes|tiny|wan21]
      [--vae_frames=17,33,65,129 --vae_height=64 --vae_width=64 --vae_modes=chunked,whole]

Prints the table and writes the figures (`sora_jax.evaluation.vae_bench.run`) as JSON.
`experiments/benchmark.py vae` calls `run(FLAGS)` here; flags it does not define take the
defaults of `vae_bench.DEFAULTS`.
"""

import json
import os
import pathlib
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from sora_jax.evaluation import vae_bench  # noqa: E402

_D = vae_bench.DEFAULTS


def _define(name, fn, default, help_):
    if name not in flags.FLAGS:  # benchmark.py may share this flag registry
        fn(name, default, help_)


_define(
    'vae_config',
    flags.DEFINE_string,
    _D['vae_config'],
    'shapes (configs/shapes.py:vae) | tiny | wan21 (Wan 2.1 full VAE).',
)
_define(
    'vae_frames', flags.DEFINE_list, [str(t) for t in _D['vae_frames']], 'Video lengths (1 + 4k).'
)
_define('vae_height', flags.DEFINE_integer, _D['vae_height'], 'Frame height.')
_define('vae_width', flags.DEFINE_integer, _D['vae_width'], 'Frame width.')
_define('vae_batch', flags.DEFINE_integer, _D['vae_batch'], 'Videos per call.')
_define('vae_modes', flags.DEFINE_list, list(_D['vae_modes']), 'chunked and/or whole.')
_define('vae_rounds', flags.DEFINE_integer, _D['vae_rounds'], 'Timing rounds (best counts).')
_define('vae_iters', flags.DEFINE_integer, _D['vae_iters'], 'Calls per timing round.')
_define('vae_dtype', flags.DEFINE_string, _D['vae_dtype'], 'Params and activations dtype.')
if 'json' not in flags.FLAGS:
    flags.DEFINE_string('json', None, 'Write the figures to this JSON file.')
FLAGS = flags.FLAGS


def run(flags_=None) -> dict:
    """The benchmark dict (also what `experiments/benchmark.py vae` returns)."""
    result = vae_bench.run(FLAGS if flags_ is None else flags_)
    print(vae_bench.format_table(result), flush=True)
    return result


def main(argv):
    del argv
    result = run()
    if FLAGS.json:
        pathlib.Path(FLAGS.json).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(FLAGS.json).write_text(json.dumps(result, indent=2))
        print(f'wrote {FLAGS.json}')


if __name__ == '__main__':
    app.run(main)
