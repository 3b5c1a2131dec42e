"""VAE benchmark: encode/decode fps and memory at 17/33/65/129 frames, chunked vs whole.

  python experiments/benchmark_vae.py --json=bench_vae.json [--vae_config=shapes|tiny|wan21]
      [--vae_frames=17,33,65,129 --vae_height=64 --vae_width=64 --vae_modes=chunked,whole]

Prints the table and writes the figures (`sora_jax.evaluation.vae_bench.run`) as JSON; the same
as `experiments/benchmark.py vae`.
"""

import json
import pathlib

from absl import app, flags

from sora_jax.evaluation import vae_bench

vae_bench.define_flags()
flags.DEFINE_string('json', None, 'Write the figures to this JSON file.')
FLAGS = flags.FLAGS


def main(argv):
    del argv
    result = vae_bench.run(FLAGS)
    print(vae_bench.format_table(result), flush=True)
    if FLAGS.json:
        pathlib.Path(FLAGS.json).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(FLAGS.json).write_text(json.dumps(result, indent=2))
        print(f'wrote {FLAGS.json}')


if __name__ == '__main__':
    app.run(main)
