"""Export a trained DiT (+ its VAE) as a self-contained inference bundle, e.g. checkpoints/shapes.

  python experiments/export.py --dit=workdirs/shapes_dit --dst=checkpoints/shapes [--dtype=float16] [--step=N]

The bundle holds only EMA parameters (`--noema`: the raw ones; no optimizer state), in
`--dtype` (float16 halves the size; sampling casts back to float32), the DiT's config with
`autoencoder='vae'`, and the VAE as `<dst>/vae` in the same layout.
`TextToVideo.from_checkpoint(dst)` loads it.
"""
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402


def define_flags():
    """Command-line flags, defined only when run as a script (tests import this module)."""
    flags.DEFINE_string('dit', None, 'DiT training workdir.')
    flags.DEFINE_string('dst', None, 'Bundle directory to (re)write.')
    flags.DEFINE_enum('dtype', 'float16', ['float16', 'bfloat16', 'float32'],
                      'Stored parameter dtype.')
    flags.DEFINE_bool('ema', True, 'Export the EMA parameters (--noema: the raw parameters, e.g. '
                      'when the EMA still averages in weights from before a late improvement).')
    flags.DEFINE_integer('step', None, 'DiT checkpoint step to export (default: the newest; the '
                         'workdir keeps train.keep_checkpoints of them).')
    flags.mark_flags_as_required(['dit', 'dst'])


def export_params(src_workdir: str, dst_workdir: str, build_model, dtype: str, edit_config=None,
                  ema: bool = True, step: int | None = None):
    """EMA (or raw) params of checkpoint `step` (default: the newest) in src -> a one-step
    checkpoint in dst, stored as `ema_params` (what samplers load)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from sora_jax.train import checkpoint as ckpt

    cdir = os.path.join(src_workdir, 'checkpoints')
    config = ckpt.load_config(cdir)
    abstract = nnx.state(nnx.eval_shape(lambda: build_model(config, nnx.Rngs(0))), nnx.Param)
    params, step = ckpt.restore_params(cdir, abstract, ema=ema, step=step)
    params = jax.tree.map(lambda x: x.astype(jnp.dtype(dtype)), params)
    if edit_config is not None:
        config = edit_config(config)
    mngr = ckpt.manager(os.path.join(dst_workdir, 'checkpoints'), keep=1, async_save=False)
    ckpt.save(mngr, step, {'ema_params': params}, config=config, force=True)
    mngr.wait_until_finished()
    n = sum(x.size for x in jax.tree.leaves(params))
    return step, n


def main(argv):
    del argv
    from sora_jax.train.objectives import flow as flow_objective
    from sora_jax.train.objectives import vae as vae_objective
    from sora_jax.train import checkpoint as ckpt

    F = flags.FLAGS
    config = ckpt.load_config(os.path.join(F.dit, 'checkpoints'))
    tmp = F.dst.rstrip('/') + '.tmp'
    shutil.rmtree(tmp, ignore_errors=True)
    if config.autoencoder not in ('none', '', None):
        step, n = export_params(config.autoencoder, os.path.join(tmp, 'vae'),
                                vae_objective.build_model, 'float32')
        print(f'VAE: step {step}, {n:,} params (float32)')

    def edit(c):
        c.unlock()
        if c.autoencoder not in ('none', '', None):
            c.autoencoder = 'vae'
        c.exported_weights = 'ema' if F.ema else 'raw'
        return c

    step, n = export_params(F.dit, tmp, flow_objective.build_model, F.dtype, edit, ema=F.ema,
                             step=F.step)
    print(f'DiT: step {step}, {n:,} params ({F.dtype}, {"EMA" if F.ema else "raw"} weights)')
    from sora_jax.safety import record
    rec = record.load(F.dit) or record.for_config(config)  # the run's record, else from its config
    record.write(tmp, rec)
    print(f'data record: {rec["dataset"]}, {rec["clips"]} clips, sha256 {record.record_hash(rec)[:16]}')
    shutil.rmtree(F.dst, ignore_errors=True)
    os.replace(tmp, F.dst)
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(F.dst) for f in fs)
    print(f'wrote {F.dst} ({size / 2**20:.1f} MiB)')


if __name__ == '__main__':
    define_flags()
    app.run(main)
