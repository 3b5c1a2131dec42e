"""Re-cut a trained DiT's temporal patch (e.g. (4, 2, 2) -> (2, 2, 2)): a warm start for fine-tuning.

  step, old, new = repatch('checkpoints/shapes', 'workdirs/shapes_p2_init', patch_t=2)

Every transformer block, the text encoder and the embedders carry over unchanged (their shapes do
not depend on the patch); only the patch embedding and the output projection change shape:
  * patch embedding: the new kernel for frame j of a token is the sum of the old kernels for
    frames j, j + pt', j + 2 pt', ... so a static clip embeds to the same token as before;
  * output projection: the new rows for frame j are the mean of the old rows for those frames.
Temporal RoPE positions now count tokens of pt' frames, so the fine-tune re-learns their scale.
Writes `<dst>/checkpoints/<step>` with only EMA params (what `train.init_from` reads) and the
source's config with the new patch size. CLI: experiments/repatch.py.
"""

from __future__ import annotations

import os
import shutil
from typing import NamedTuple


class Repatched(NamedTuple):
    step: int  # the source checkpoint's step (the written one has the same)
    old_patch: tuple[int, int, int]
    new_patch: tuple[int, int, int]


def repatch_params(params: dict, old_patch, new_pt: int, out_channels: int) -> dict:
    """The converted params (a nested dict of arrays, as nnx.State.to_pure_dict gives)."""
    import numpy as np

    pt, ph, pw = old_patch
    if new_pt < 1 or pt % new_pt:
        raise ValueError(f'patch_t={new_pt} must divide the source temporal patch {pt}.')
    g = pt // new_pt
    out = dict(params)
    pe = dict(params['patch_embedding'])
    k = np.asarray(pe['kernel'])  # [pt, ph, pw, cin, dim]
    pe['kernel'] = k.reshape(g, new_pt, *k.shape[1:]).sum(0).astype(k.dtype)
    out['patch_embedding'] = pe
    po = dict(params['proj_out'])
    w = np.asarray(po['kernel'])  # [dim, pt * ph * pw * c] in (pt, ph, pw, c) order
    w = w.reshape(w.shape[0], g, new_pt, ph * pw * out_channels).mean(1)
    po['kernel'] = w.reshape(w.shape[0], -1).astype(po['kernel'].dtype)
    if 'bias' in po:
        b = np.asarray(po['bias']).reshape(g, new_pt, ph * pw * out_channels).mean(0)
        po['bias'] = b.reshape(-1).astype(po['bias'].dtype)
    out['proj_out'] = po
    return out


def repatch(src: str, dst: str, patch_t: int, ema: bool = True) -> Repatched:
    """src (workdir or bundle) -> dst, a one-step checkpoint of the converted (EMA) params."""
    import jax
    import numpy as np
    from flax import nnx

    from sora_jax.io import checkpoint as ckpt_io
    from sora_jax.models import denoiser
    from sora_jax.train import checkpoint as ckpt

    cdir = ckpt_io.checkpoint_dir(src)
    config = ckpt_io.load_config(cdir)
    model_abs = lambda c: nnx.state(
        nnx.eval_shape(lambda: denoiser.build_model(c, nnx.Rngs(0))), nnx.Param
    )
    params, step = ckpt_io.restore_params(cdir, model_abs(config), ema=ema)
    old_patch = tuple(config.model.patch_size)
    new = config.copy_and_resolve_references()
    new.unlock()
    new.model.patch_size = (patch_t, *old_patch[1:])
    if new.get('autoencoder', 'none') == 'vae':  # a bundle: its VAE lives next to the DiT
        new.autoencoder = os.path.join(os.path.abspath(src), 'vae')
    target = model_abs(new)
    want = [a.shape for a in jax.tree.leaves(target)]  # before the arrays replace the shapes
    pure = params.to_pure_dict()
    dit = repatch_params(pure['dit'], old_patch, patch_t, int(new.latent_channels))
    pure = {**pure, 'dit': dit}
    target.replace_by_pure_dict(jax.tree.map(np.asarray, pure))
    bad = [
        (p, a.shape, w)
        for (p, a), w in zip(jax.tree_util.tree_leaves_with_path(target), want)
        if a.shape != w
    ]
    if bad:
        raise ValueError(f'converted params do not fit the new model: {bad[:3]}')
    tmp = dst.rstrip('/') + '.tmp'
    shutil.rmtree(tmp, ignore_errors=True)
    mngr = ckpt.manager(os.path.join(tmp, 'checkpoints'), keep=1, async_save=False)
    ckpt.save(mngr, step, {'ema_params': target}, config=new, force=True)
    mngr.wait_until_finished()
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)
    return Repatched(step, old_patch, tuple(new.model.patch_size))
