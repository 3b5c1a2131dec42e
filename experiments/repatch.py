"""Re-cut a trained DiT's temporal patch (e.g. (4, 2, 2) -> (2, 2, 2)): a warm start for fine-tuning.

  python experiments/repatch.py --src=checkpoints/shapes --dst=workdirs/shapes_p2_init --patch_t=2
  python experiments/train.py --config=configs/shapes.py:dit_p2 --workdir=workdirs/shapes_dit_p2

How the patch embedding and output projection are re-cut: `sora_jax.convert.repatch`.
"""

from sora_jax.io import host_memory

host_memory.retain_freed_memory()  # before jax starts its threads: no page faults per step

from absl import app, flags  # noqa: E402

flags.DEFINE_string('src', None, 'DiT training workdir or exported bundle.')
flags.DEFINE_string('dst', None, 'Directory to (re)write.')
flags.DEFINE_integer('patch_t', 2, 'New temporal patch (must divide the old one).')
flags.DEFINE_bool('ema', True, "Read the source's EMA params (--noema: its raw params).")
flags.mark_flags_as_required(['src', 'dst'])


def main(argv):
    del argv
    from sora_jax.convert.repatch import repatch

    F = flags.FLAGS
    step, old, new = repatch(F.src, F.dst, F.patch_t, ema=F.ema)
    print(f'{F.src} step {step}: patch {old} -> {new}; wrote {F.dst}')


if __name__ == '__main__':
    app.run(main)
