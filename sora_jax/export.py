"""A trained DiT (+ its VAE) -> a self-contained inference bundle, e.g. checkpoints/shapes.

    size = export_bundle('workdirs/shapes_dit', 'checkpoints/shapes', dtype='float16')

The bundle holds only EMA parameters (`ema=False`: the raw ones; no optimizer state) in `dtype`,
the DiT's config with `autoencoder='vae'`, the VAE as `<dst>/vae` (float32), the run's data
record, and a marker file (`.sora_jax_bundle.json`: source, step, dtype) that says this function
wrote it. `TextToVideo.from_checkpoint(dst)` loads it.

What `dst` may be, checked before anything is read: missing, empty, or a bundle this function
wrote (it has the marker). Anything else (a folder holding a user's files, a training workdir)
is refused, and so is a `dst` equal to, inside or around a source (the DiT or VAE workdir): the
export would replace the run it reads. The new bundle is written whole into a temporary
directory beside `dst`; an old bundle is then renamed aside, the new one renamed in, and the old
one removed: at every moment `dst` is the old bundle or the new one. A lock beside `dst`
(`.<name>.lock`, io/lock.py) keeps two exports from writing it at once. `dst` may be a bucket
(gs://...): the bundle is completed on local disk, copied beside the old one, then swapped.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile

MARKER = '.sora_jax_bundle.json'


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
    checkpoint in dst, stored as `ema_params` (what samplers load). Returns (step, params)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from sora_jax.io import checkpoint as ckpt_io
    from sora_jax.train import checkpoint as ckpt

    cdir = os.path.join(src_workdir, 'checkpoints')
    config = ckpt_io.load_config(cdir)
    abstract = nnx.state(nnx.eval_shape(lambda: build_model(config, nnx.Rngs(0))), nnx.Param)
    params, step = ckpt_io.restore_params(cdir, abstract, ema=ema, step=step)
    if dtype == 'int8':
        item = _int8_item(params)
    else:
        params = jax.tree.map(lambda x: x.astype(jnp.dtype(dtype)), params)
        item = {'ema_params': params}
    if edit_config is not None:
        config = edit_config(config)
    mngr = ckpt.manager(os.path.join(dst_workdir, 'checkpoints'), keep=1, async_save=False)
    ckpt.save(mngr, step, item, config=config, force=True)
    mngr.wait_until_finished()
    n = sum(x.size for x in jax.tree.leaves(params))
    return step, n


def _int8_item(params) -> dict:
    """A Denoiser's params as an int8 bundle stores them: the DiT's block-stack kernels as int8
    with one float32 scale per block and output channel (`models/quantize.py`, the quantization
    `--quantize=int8` applies at load), quantized from their float16 values, so sampling the
    int8 bundle equals sampling the float16 bundle with `--quantize=int8`; every other parameter
    float16. The scales are their own tree, `ema_scales`."""
    import jax
    import jax.numpy as jnp

    from sora_jax.models import quantize as quantize_lib

    half = lambda x: x.astype(jnp.float16)  # noqa: E731
    params = jax.tree.map(lambda x: half(x).astype(jnp.float32), params)
    qvalues, scales = quantize_lib.split(quantize_lib.quantize_params(params['dit'], 'int8'))
    params['dit'] = qvalues
    params = jax.tree.map(lambda x: x if x.dtype == jnp.int8 else half(x), params)
    return {'ema_params': params, 'ema_scales': {'dit': scales}}


def _real(p: str) -> str:
    return os.path.realpath(os.path.abspath(os.fspath(p)))


def _related(a: str, b: str) -> bool:
    a, b = _real(a), _real(b)
    return os.path.commonpath([a, b]) in (a, b)


def is_bundle(path: str) -> bool:
    """Whether `path` is a bundle `export_bundle` wrote (it holds the marker file)."""
    from etils import epath

    return (epath.Path(path) / MARKER).is_file()


def check_dst(dst: str, sources) -> None:
    """ValueError unless `dst` may be (re)written: missing, empty or a marked bundle, and
    neither equal to, inside nor around any of `sources` (local paths)."""
    from etils import epath

    for src in sources:
        if '://' not in dst and '://' not in src and _related(dst, src):
            raise ValueError(
                f'--dst={dst!r} is, contains or lies inside the source {src!r}; exporting '
                'there would replace the run it reads. Pass a new directory, e.g. '
                'checkpoints/NAME.'
            )
    d = epath.Path(dst)
    if not d.exists():
        return
    if not d.is_dir():
        raise ValueError(f'--dst={dst!r} is a file; pass a directory for the bundle.')
    if any(True for _ in d.iterdir()) and not is_bundle(dst):
        raise ValueError(
            f'--dst={dst!r} is not empty and is not a bundle export wrote (no {MARKER}); '
            'nothing was changed. Pass a new or empty directory.'
        )


def _swap_in(new: str, dst: str) -> None:
    """Moves the complete bundle `new` to `dst` (local): an old bundle is renamed aside first,
    then removed once the new one is in place."""
    old = None
    if os.path.lexists(dst):
        if os.listdir(dst):
            old = tempfile.mkdtemp(
                dir=os.path.dirname(dst), prefix=f'.{os.path.basename(dst)}.old-'
            )
            os.rmdir(old)
            os.rename(dst, old)
        else:
            os.rmdir(dst)  # empty: nothing to keep
    try:
        os.rename(new, dst)
    except BaseException:
        if old is not None:
            os.rename(old, dst)  # put the old bundle back
        raise
    if old is not None and os.path.isfile(os.path.join(old, MARKER)):
        shutil.rmtree(old)


def export_bundle(
    dit: str, dst: str, dtype: str = 'float16', ema: bool = True, step: int | None = None
) -> int:
    """Writes the bundle of DiT workdir `dit` (+ its VAE, its data record) to `dst`; returns its
    size in bytes. See the module docstring for what `dst` may be and how it is replaced."""
    from etils import epath

    from sora_jax.io import checkpoint as ckpt
    from sora_jax.safety import record
    from sora_jax.train.objectives import flow as flow_objective
    from sora_jax.train.objectives import vae as vae_objective

    config = ckpt.load_config(str(epath.Path(dit) / 'checkpoints'))
    has_vae = config.autoencoder not in ('none', '', None)

    def fill(tmp: str) -> dict:
        if has_vae:
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

        step_, n = export_params(
            dit, tmp, flow_objective.build_model, dtype, edit, ema=ema, step=step
        )
        print(f'DiT: step {step_}, {n:,} params ({dtype}, {"EMA" if ema else "raw"} weights)')
        rec = record.load(dit) or record.for_config(config)  # the run's record, else its config's
        record.write(tmp, rec)
        print(
            f'data record: {rec["dataset"]}, {rec["clips"]} clips, '
            f'sha256 {record.record_hash(rec)[:16]}'
        )
        return {'source': _real(dit), 'step': int(step_), 'dtype': dtype}

    return _write_bundle(dst, [dit] + ([config.autoencoder] if has_vae else []), fill, ema)


def export_vae(vae: str, dst: str, ema: bool = True, step: int | None = None) -> int:
    """Writes a VAE training workdir's parameters alone (float32, no optimizer state) to `dst`,
    a directory `frozen_vae.load` and `config.autoencoder` take; the same rules for `dst` as
    `export_bundle`. A stage of a recipe can so be kept (and committed) without its workdir."""
    from sora_jax.train.objectives import vae as vae_objective

    def fill(tmp: str) -> dict:
        step_, n = export_params(vae, tmp, vae_objective.build_model, 'float32', ema=ema, step=step)
        print(f'VAE: step {step_}, {n:,} params (float32, {"EMA" if ema else "raw"} weights)')
        return {'source': _real(vae), 'step': int(step_), 'dtype': 'float32', 'kind': 'vae'}

    return _write_bundle(dst, [vae], fill, ema)


def _dir_mode() -> int:
    """The mode `os.makedirs` gives a new directory under the process's umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o777 & ~mask


def _write_bundle(dst: str, sources: list[str], fill, ema: bool) -> int:
    """Checks `dst`, locks it, lets `fill(tmp)` write the bundle into a temporary directory
    beside it (returning the marker's fields), writes the marker and swaps the bundle in."""
    from sora_jax.data import staging
    from sora_jax.io import lock as lock_lib

    remote = staging.is_remote(dst)
    dst = dst.rstrip('/') if remote else _real(dst)
    check_dst(dst, sources)
    parent = tempfile.gettempdir() if remote else os.path.dirname(dst)
    os.makedirs(parent, exist_ok=True)
    name = os.path.basename(dst)
    held = None if remote else lock_lib.acquire(os.path.join(parent, f'.{name}.lock'), 'export')
    tmp = tempfile.mkdtemp(dir=parent, prefix=f'.{name}.new-')
    os.chmod(tmp, _dir_mode())  # mkdtemp's 0700 would make the bundle private once renamed
    try:
        marker = fill(tmp)
        marker.update(
            weights='ema' if ema else 'raw',
            written=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        )
        with open(os.path.join(tmp, MARKER), 'w', encoding='utf-8') as f:
            json.dump(marker, f, indent=1)
        size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(tmp) for f in fs)
        if remote:
            _swap_remote(tmp, dst)
        else:
            check_dst(dst, sources[:1])  # still missing, empty or a bundle
            _swap_in(tmp, dst)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)  # our own temporary directory
        if held is not None:
            held.release()
    return size


def _swap_remote(tmp: str, dst: str) -> None:
    """Copies the local bundle beside the remote `dst`, then replaces it (object stores have no
    directory rename: `dst` is missing between the delete and the rename)."""
    from etils import epath

    from sora_jax.data import staging

    out, staged = epath.Path(dst), epath.Path(dst + '.sora_jax_new')
    if staged.exists():
        if not (staged / MARKER).is_file():
            raise ValueError(
                f'{staged} exists and is not a bundle; remove it or pick another --dst.'
            )
        staged.rmtree()
    staging.copy_missing(tmp, staged)
    with open(os.path.join(tmp, MARKER), encoding='utf-8') as f:  # hidden: copy_missing skips it
        (staged / MARKER).write_text(f.read())
    if out.exists():
        out.rmtree()  # check_dst: empty or a marked bundle
    staged.rename(out)
