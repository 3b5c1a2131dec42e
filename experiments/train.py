"""Train whatever the config names (DiT or VAE); resumes from the newest checkpoint in --workdir.

  python experiments/train.py --config=configs/shapes.py:dit --workdir=workdirs/shapes_dit \
      [--config.train.num_steps=100 ...]

One run per workdir (a second one refuses, naming the first: exit status 4); a bad flag or
config key is one line (status 2; the exit statuses are in sora_jax/cli.py and
docs/guarantees.md); --verbosity=1 shows tracebacks.
"""

from sora_jax.io import host_memory  # noqa: E402

host_memory.retain_freed_memory()  # before jax starts its threads: no page faults per step

from absl import flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from sora_jax import cli, config_files  # noqa: E402
from sora_jax.io import compile_cache  # noqa: E402  (defines --compilation_cache)

config_files.register_configs()  # config files outside configs/ may import configs.*
config_flags.DEFINE_config_file('config', None, 'Config file (FILE.py:ARG).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints and TensorBoard logs.')
flags.mark_flags_as_required(['config', 'workdir'])
flags.DEFINE_string('coordinator', None, 'host:port of process 0 for multi-host (jax.distributed).')
flags.DEFINE_integer('num_processes', None, 'Processes in a multi-host run.')
flags.DEFINE_integer('process_id', None, 'This process in a multi-host run.')


def main(argv):
    del argv
    compile_cache.enable()
    from sora_jax.parallel import distributed

    distributed.initialize(
        flags.FLAGS.coordinator, flags.FLAGS.num_processes, flags.FLAGS.process_id
    )
    from sora_jax.train.loop import train_and_evaluate

    metrics = train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
    logging.info('done: %s', metrics)
    print('final', ' '.join(f'{k}={v:.5g}' for k, v in metrics.items()), flush=True)


if __name__ == '__main__':
    cli.run(main)
