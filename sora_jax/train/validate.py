"""Config validation before anything is built or compiled: each error names the key, the value
and the fix."""
from __future__ import annotations

import math
import os

import jax


def _err(key, value, fix):
    return ValueError(f'config.{key}={value!r}: {fix}')


def validate_config(config) -> None:
    t = config.train
    for key in ('num_steps', 'batch_size', 'log_every', 'checkpoint_every', 'grad_accum_steps'):
        v = t[key]
        if not isinstance(v, int) or v < 1:
            raise _err(f'train.{key}', v, 'must be a positive integer.')
    if t.batch_size % t.grad_accum_steps:
        raise _err('train.batch_size', t.batch_size,
                   f'must be divisible by train.grad_accum_steps={t.grad_accum_steps}.')
    if not 0.0 <= t.ema_decay < 1.0:
        raise _err('train.ema_decay', t.ema_decay, 'must be in [0, 1).')
    if t.learning_rate <= 0:
        raise _err('train.learning_rate', t.learning_rate, 'must be > 0.')
    shape = tuple(config.mesh.shape)
    n = jax.device_count()
    fixed = math.prod(s for s in shape if s != -1)
    if len(shape) != 4:
        raise _err('mesh.shape', shape, 'needs 4 entries (data, fsdp, tensor, sequence).')
    if (-1 in shape and n % fixed) or (-1 not in shape and fixed != n):
        raise _err('mesh.shape', shape, f'must multiply to the {n} devices (use -1 for one axis).')
    mesh_shape = [s if s != -1 else n // fixed for s in shape]
    batch_shards = mesh_shape[0] * mesh_shape[1]
    micro = t.batch_size // t.grad_accum_steps
    if micro % batch_shards:
        raise _err('train.batch_size', t.batch_size,
                   f'the micro-batch {micro} must be divisible by data*fsdp={batch_shards}.')
    if 'model' in config and 'patch_size' in config.model:
        _check_sizes(config)


def _check_sizes(config) -> None:
    """Clip sizes must map to latent grids the patch divides."""
    d = config.data
    sizes = [tuple(s) for s in d.sizes] or [(d.num_frames, d.height, d.width)]
    tf, sf = _vae_factors(config)
    for (tt, hh, ww) in sizes:
        if tf > 1 and (tt - 1) % tf:
            raise _err('data.num_frames', tt, f'the causal VAE needs 1 + {tf}k frames.')
        lat = (1 + (tt - 1) // tf if tf > 1 else tt, hh // sf, ww // sf)
        if hh % sf or ww % sf:
            raise _err('data.height/width', (hh, ww), f'must be multiples of the VAE factor {sf}.')
        for name, n, p in zip(('frames', 'height', 'width'), lat, config.model.patch_size):
            if n % p:
                raise _err('model.patch_size', tuple(config.model.patch_size),
                           f'latent {name}={n} (from clip size {(tt, hh, ww)}) is not divisible '
                           f'by {p}; change data sizes or the patch.')


def _vae_factors(config) -> tuple[int, int]:
    """(temporal, spatial) factors of config.autoencoder, read from its saved config."""
    path = config.get('autoencoder', 'none')
    if path in ('none', '', None):
        if config.get('latent_channels', 3) != 3:
            raise _err('latent_channels', config.latent_channels,
                       "must be 3 in pixel space (autoencoder='none').")
        return 1, 1
    cdir = os.path.join(path, 'checkpoints')
    if not os.path.isdir(cdir):
        raise _err('autoencoder', path, f'{cdir} does not exist; train a VAE first '
                   '(experiments/train.py --config=configs/shapes.py:vae --workdir=...) or use '
                   "'none' for pixel space.")
    from sora_jax.train import checkpoint as ckpt
    vae = ckpt.load_config(cdir).vae
    if config.get('latent_channels') != vae.z_dim:
        raise _err('latent_channels', config.get('latent_channels'),
                   f'must equal the VAE z_dim={vae.z_dim} of {path}.')
    return 2 ** sum(bool(t) for t in vae.temperal_downsample), 2 ** (len(vae.dim_mult) - 1)
