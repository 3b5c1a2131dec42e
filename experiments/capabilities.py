"""One small GIF per capability (the README's gallery, docs/gifs/), from the shipped or any shapes checkpoint.

  python experiments/capabilities.py --checkpoint=checkpoints/shapes --out=docs/gifs

What each GIF shows: `sora_jax.evaluation.capabilities`.
"""

from sora_jax.io import host_memory

host_memory.retain_freed_memory()  # before jax starts its threads: no page faults per step

from absl import app, flags  # noqa: E402

from sora_jax.io import compile_cache  # noqa: E402  (defines --compilation_cache)

flags.DEFINE_string('checkpoint', 'checkpoints/shapes', 'Training workdir or shipped bundle.')
flags.DEFINE_string('out', 'docs/gifs', 'Directory for the GIFs and capabilities.json.')
flags.DEFINE_integer('steps', 25, 'Sampling steps.')
flags.DEFINE_integer('seed', 0, 'Sampling seed.')
flags.DEFINE_integer('display_scale', 3, 'Nearest-neighbour upscale of the written GIFs.')
flags.DEFINE_list('only', [], 'Capabilities to render (default: all).')
FLAGS = flags.FLAGS


def main(argv):
    del argv
    compile_cache.enable()
    from sora_jax.evaluation import capabilities
    from sora_jax.pipeline import TextToVideo

    pipe = TextToVideo.from_checkpoint(FLAGS.checkpoint)
    capabilities.render_all(
        pipe,
        FLAGS.out,
        steps=FLAGS.steps,
        seed=FLAGS.seed,
        display_scale=FLAGS.display_scale,
        only=tuple(FLAGS.only),
    )


if __name__ == '__main__':
    app.run(main)
