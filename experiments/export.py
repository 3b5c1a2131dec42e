"""Export a trained DiT (+ its VAE) as a self-contained inference bundle, e.g. checkpoints/shapes.

  python experiments/export.py --dit=workdirs/shapes_dit --dst=checkpoints/shapes [--dtype=float16] [--step=N]

The bundle holds only EMA parameters (`--noema`: the raw ones; no optimizer state), in
`--dtype` (float16 halves the size; sampling casts back to float32), the DiT's config with
`autoencoder='vae'`, and the VAE as `<dst>/vae` in the same layout.
`TextToVideo.from_checkpoint(dst)` loads it. `--dst` may be a bucket (gs://...): the bundle is
completed on local disk and then copied there with etils.epath.
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
    flags.DEFINE_enum(
        'dtype', 'float16', ['float16', 'bfloat16', 'float32'], 'Stored parameter dtype.'
    )
    flags.DEFINE_bool(
        'ema',
        True,
        'Export the EMA parameters (--noema: the raw parameters, e.g. '
        'when the EMA still averages in weights from before a late improvement).',
    )
    flags.DEFINE_integer(
        'step',
        None,
        'DiT checkpoint step to export (default: the newest; the '
        'workdir keeps train.keep_checkpoints of them).',
    )
    flags.mark_flags_as_required(['dit', 'dst'])


def export_params(
    src_workdir: str,
    dst_workdir: str,
    build_model,
    dtype: str,
    edit_config=None,
    ema: bool = True,
    step: int | None = None,
):
    """EMA (or raw) params of checkpoint `step` (default: the newest) in src -> a one-step
    checkpoint in dst, stored as `ema_params` (what samplers load)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from sora_jax.io import checkpoint as ckpt_io
    from sora_jax.train import checkpoint as ckpt

    cdir = os.path.join(src_workdir, 'checkpoints')
    config = ckpt_io.load_config(cdir)
    abstract = nnx.state(nnx.eval_shape(lambda: build_model(config, nnx.Rngs(0))), nnx.Param)
    params, step = ckpt_io.restore_params(cdir, abstract, ema=ema, step=step)
    params = jax.tree.map(lambda x: x.astype(jnp.dtype(dtype)), params)
    if edit_config is not None:
        config = edit_config(config)
    mngr = ckpt.manager(os.path.join(dst_workdir, 'checkpoints'), keep=1, async_save=False)
    ckpt.save(mngr, step, {'ema_params': params}, config=config, force=True)
    mngr.wait_until_finished()
    n = sum(x.size for x in jax.tree.leaves(params))
    return step, n


def export_bundle(
    dit: str, dst: str, dtype: str = 'float16', ema: bool = True, step: int | None = None
) -> int:
    """Writes the bundle of DiT workdir `dit` (+ its VAE, its data record) to `dst`; returns its
    size in bytes. `dst` may be any etils.epath path (gs://...): the bundle is written and
    completed in a local temporary directory (Orbax writes there), then copied to `dst` with
    epath, which replaces an older bundle only once the new one is whole."""
    import tempfile

    from etils import epath

    from sora_jax.data import staging
    from sora_jax.io import checkpoint as ckpt
    from sora_jax.safety import record
    from sora_jax.train.objectives import flow as flow_objective
    from sora_jax.train.objectives import vae as vae_objective

    config = ckpt.load_config(str(epath.Path(dit) / 'checkpoints'))
    remote = staging.is_remote(dst)
    tmp = tempfile.mkdtemp(prefix='sora_jax_bundle_') if remote else dst.rstrip('/') + '.tmp'
    shutil.rmtree(tmp, ignore_errors=True)
    if config.autoencoder not in ('none', '', None):
        vstep, n = export_params(
            config.autoencoder, os.path.join(tmp, 'vae'), vae_objective.build_model, 'float32'
        )
        print(f'VAE: step {vstep}, {n:,} params (float32)')

    def edit(c):
        c.unlock()
        if c.autoencoder not in ('none', '', None):
            c.autoencoder = 'vae'
        c.exported_weights = 'ema' if ema else 'raw'
        return c

    step, n = export_params(dit, tmp, flow_objective.build_model, dtype, edit, ema=ema, step=step)
    print(f'DiT: step {step}, {n:,} params ({dtype}, {"EMA" if ema else "raw"} weights)')
    rec = record.load(dit) or record.for_config(config)  # the run's record, else from its config
    record.write(tmp, rec)
    print(
        f'data record: {rec["dataset"]}, {rec["clips"]} clips, sha256 {record.record_hash(rec)[:16]}'
    )
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(tmp) for f in fs)
    if remote:  # copied whole beside the old bundle first, then swapped in
        out, staged = epath.Path(dst), epath.Path(dst.rstrip('/') + '.tmp')
        if staged.exists():
            staged.rmtree()
        staging.copy_missing(tmp, staged)
        if out.exists():
            out.rmtree()
        staged.rename(out)
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        shutil.rmtree(dst, ignore_errors=True)
        os.replace(tmp, dst)
    return size


def main(argv):
    del argv
    F = flags.FLAGS
    size = export_bundle(F.dit, F.dst, F.dtype, ema=F.ema, step=F.step)
    print(f'wrote {F.dst} ({size / 2**20:.1f} MiB)')


if __name__ == '__main__':
    define_flags()
    app.run(main)
