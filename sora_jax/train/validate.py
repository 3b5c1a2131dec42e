"""Config validation before anything is built or compiled: each error names the key, the value
and the fix (`ValueError('config.KEY=VALUE: fix')`).

Checked: train knobs (positive integers, ranges), dtypes, the mesh against the device count,
the data source (name, folder path, sizes, license filter, opt-out file) and the clip sizes
against the VAE and patch factors (DiT) or the VAE's own factors (VAE), attention heads, the
autoencoder checkpoint path. Unknown keys are rejected earlier, by `config_flags` on the
command line (`--config.x.y` with no such key) and by ConfigDict attribute access in code."""

from __future__ import annotations

import importlib.util
import math
import os

import jax
from absl import logging


def _err(key, value, fix):
    return ValueError(f'config.{key}={value!r}: {fix}')


DTYPES = ('float32', 'bfloat16', 'float16')


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_init_from(config, workdir: str) -> None:
    """train.init_from must exist when the run starts fresh (a resumed run no longer reads it)."""
    from etils import epath

    init_from = config.train.get('init_from', '')
    if not init_from or (epath.Path(workdir) / 'checkpoints').is_dir():
        return
    if not epath.Path(init_from).is_dir():
        raise _err(
            'train.init_from',
            init_from,
            'is not a directory; give a training workdir '
            "or an exported bundle to start from, or '' to start from scratch.",
        )


def validate_config(config) -> None:
    for section in ('train', 'data', 'mesh'):
        if section not in config:
            raise _err(
                section,
                None,
                f'a training config needs a {section!r} section (this one '
                'may be for sampling, or, like configs/wan21.py, for experiments/aot.py '
                'compiles only); train with a config that defines it (configs/shapes.py:dit '
                'or :vae).',
            )
    if 'objective' not in config:
        raise _err('objective', None, "name the training objective (e.g. 'flow' or 'vae').")
    if importlib.util.find_spec(f'sora_jax.train.objectives.{config.objective}') is None:
        raise _err(
            'objective',
            config.objective,
            'has no module sora_jax/train/objectives/'
            f'{config.objective}.py; use one of flow, vae (or add that file).',
        )
    t = config.train
    for key in (
        'num_steps',
        'batch_size',
        'log_every',
        'checkpoint_every',
        'grad_accum_steps',
        'max_nonfinite',
        'keep_checkpoints',
    ):
        v = t.get(key, 1)
        if not _is_int(v) or v < 1:
            raise _err(f'train.{key}', v, 'must be a positive integer.')
    for key in ('eval_every', 'warmup_steps', 'eval_num_videos'):
        v = t.get(key, 0)
        if not _is_int(v) or v < 0:
            raise _err(f'train.{key}', v, 'must be an integer >= 0 (0: off).')
    from sora_jax.train import tracking

    tracking.backends_of(config)  # ValueError naming train.log_to
    prof = tuple(t.get('profile_steps', ()) or ())
    if prof and (
        len(prof) != 2 or not all(_is_int(v) and v >= 1 for v in prof) or prof[0] > prof[1]
    ):
        raise _err(
            'train.profile_steps',
            prof,
            'must be (first, last) 1-based steps with '
            'first <= last, e.g. (5, 7), or () for no trace.',
        )
    if t.batch_size % t.grad_accum_steps:
        raise _err(
            'train.batch_size',
            t.batch_size,
            f'must be divisible by train.grad_accum_steps={t.grad_accum_steps}.',
        )
    _check_memory_options(t)
    if not 0.0 <= t.ema_decay < 1.0:
        raise _err('train.ema_decay', t.ema_decay, 'must be in [0, 1).')
    if not t.learning_rate > 0:
        raise _err('train.learning_rate', t.learning_rate, 'must be > 0.')
    if not t.get('grad_clip', 1.0) > 0:
        raise _err('train.grad_clip', t.grad_clip, 'must be > 0.')
    flow_cfg = config.get('flow', None)
    if flow_cfg is not None and flow_cfg.get('prediction', 'velocity') not in ('velocity', 'data'):
        raise _err('flow.prediction', flow_cfg.prediction, "use 'velocity' or 'data' (x0).")
    if config.objective == 'diffusion_forcing':  # train/objectives/diffusion_forcing.py
        chunk = config.get('model', {}).get('causal_chunk', 0)
        if not _is_int(chunk) or chunk < 1:
            raise _err(
                'model.causal_chunk',
                chunk,
                'diffusion forcing needs latent frames per chunk >= 1 (a block-causal DiT).',
            )
    _check_dtypes(config)
    _check_data(config)
    shape = tuple(config.mesh.shape)
    n = jax.device_count()
    if len(shape) != 4:
        raise _err('mesh.shape', shape, 'needs 4 entries (data, fsdp, tensor, sequence).')
    if any(not _is_int(s) or (s < 1 and s != -1) for s in shape) or shape.count(-1) > 1:
        raise _err(
            'mesh.shape',
            shape,
            'entries must be positive integers, with at most one -1 (the remaining devices).',
        )
    fixed = math.prod(s for s in shape if s != -1)
    if (-1 in shape and n % fixed) or (-1 not in shape and fixed != n):
        raise _err('mesh.shape', shape, f'must multiply to the {n} devices (use -1 for one axis).')
    mesh_shape = [s if s != -1 else n // fixed for s in shape]
    batch_shards = mesh_shape[0] * mesh_shape[1]
    micro = t.batch_size // t.grad_accum_steps
    if micro % batch_shards:
        raise _err(
            'train.batch_size',
            t.batch_size,
            f'the micro-batch {micro} must be divisible by data*fsdp={batch_shards}.',
        )
    from sora_jax.train import lora as lora_train

    lora_train.validate(config)
    if 'model' in config and 'patch_size' in config.model:
        _check_model(config)
        _check_sizes(config)
    elif 'vae' in config:
        _check_vae_sizes(config)


def _check_memory_options(t) -> None:
    """train.mu_dtype / nu_dtype / ema / optimizer_memory (`train/state.py`)."""
    from sora_jax.train import state as state_lib

    for key in ('mu_dtype', 'nu_dtype'):
        v = t.get(key, '')
        if v not in state_lib.MOMENT_DTYPES:
            raise _err(
                f'train.{key}',
                v,
                "use 'bfloat16' (2 bytes a parameter) or '' / 'float32' (as the params).",
            )
    if t.get('ema', 'device') not in state_lib.EMA_MODES:
        raise _err(
            'train.ema',
            t.ema,
            "use 'device', 'host' or 'off' (EMA in HBM, in pinned host memory, or none).",
        )
    if t.get('optimizer_memory', 'device') not in state_lib.MEMORIES:
        raise _err(
            'train.optimizer_memory',
            t.optimizer_memory,
            "use 'device' or 'host' (AdamW moments in HBM or in pinned host memory).",
        )


def _check_dtypes(config) -> None:
    for section, key in (('model', 'dtype'), ('model', 'param_dtype'), ('text', 'dtype')):
        if section in config and key in config[section]:
            v = config[section][key]
            if v not in DTYPES:
                raise _err(f'{section}.{key}', v, f'must be one of {DTYPES}.')


def _check_data(config) -> None:
    d = config.data
    if d.name not in ('shapes', 'world', 'folder', 'video_folder'):
        raise _err(
            'data.name',
            d.name,
            "must be 'shapes' or 'world' (synthetic) or 'folder' (a folder of "
            'videos + captions.jsonl/csv, set data.folder).',
        )
    if d.name in ('folder', 'video_folder'):
        folder = d.get('folder', '')
        if not folder or not os.path.isdir(folder):
            raise _err(
                'data.folder',
                folder,
                'is not a directory; point it at the folder holding '
                'the videos and captions.jsonl (or captions.csv).',
            )
    _check_credit_filters(d)
    sizes = [tuple(s) for s in d.get('sizes', ())] or [(d.num_frames, d.height, d.width)]
    for size in sizes:
        if len(size) != 3 or not all(_is_int(v) and v >= 1 for v in size):
            raise _err(
                'data.sizes' if d.get('sizes') else 'data.num_frames/height/width',
                size,
                'each clip size must be 3 positive integers (T, H, W).',
            )
    if not 0.0 <= d.get('spanish_prob', 0.0) <= 1.0:
        raise _err('data.spanish_prob', d.spanish_prob, 'must be in [0, 1].')


def _check_credit_filters(d) -> None:
    """data.allowed_licenses / data.exclude: folder datasets only, names and an existing file."""
    licenses, exclude = d.get('allowed_licenses', ()), d.get('exclude', '')
    folder = d.name in ('folder', 'video_folder')
    if isinstance(licenses, str) or not all(isinstance(x, str) and x.strip() for x in licenses):
        raise _err(
            'data.allowed_licenses',
            licenses,
            "must be a tuple of license names, e.g. ('cc-by-4.0', 'cc0-1.0'), or () to allow any.",
        )
    if not isinstance(exclude, str):
        raise _err('data.exclude', exclude, "must be the path of an opt-out file, or ''.")
    if (licenses or exclude) and not folder:
        key = 'data.allowed_licenses' if licenses else 'data.exclude'
        raise _err(
            key,
            licenses or exclude,
            f"applies to video folders (data.name='folder'), not "
            f'data.name={d.name!r} (synthetic: no creators or licenses); unset it.',
        )
    if exclude and not os.path.isfile(exclude):
        raise _err(
            'data.exclude',
            exclude,
            'no such file; give a text file listing the creators, '
            "file names or sources that opted out (one a line, # comments), or '' for none.",
        )


def _check_model(config) -> None:
    m = config.model
    patch = tuple(m.patch_size)
    if len(patch) != 3 or not all(_is_int(p) and p >= 1 for p in patch):
        raise _err('model.patch_size', patch, 'must be 3 positive integers (t, h, w).')
    if m.dim % m.num_heads or (m.dim // m.num_heads) % 2:
        raise _err(
            'model.num_heads',
            m.num_heads,
            f'must divide model.dim={m.dim} into an even head dim (RoPE rotates pairs).',
        )
    if (
        'text' in config
        and 'text_dim' in m
        and 'dim' in config.text
        and m.text_dim != config.text.dim
    ):
        raise _err('model.text_dim', m.text_dim, f'must equal text.dim={config.text.dim}.')
    narrow = too_narrow_for_velocity(config)
    if narrow:
        logging.warning('%s', narrow)


def too_narrow_for_velocity(config) -> str | None:
    """A warning when a velocity-predicting DiT is no wider than the values one token predicts
    (patch volume x latent channels), else None. Near t = 1 a velocity is mostly the noise, so
    the network must carry every one of a token's noise values through its width besides what
    it knows: narrower, the flow loss keeps a floor of at least (values - width) / values; as
    wide, the world DiT (384 for 384) still sampled noise after 1,000 steps, and twice as wide
    (the shapes DiT, 256 for 128) samples well. Predicting the clean data instead
    (`flow.prediction='data'`; Li & He 2025, "Back to Basics") needs no such width: clean
    latents lie on a low-dimensional manifold. Valid, so a warning, not an error (tiny test
    models are narrow on purpose)."""
    m, channels = config.model, int(config.get('latent_channels', 3))
    values = math.prod(tuple(m.patch_size)) * channels
    prediction = config.get('flow', {}).get('prediction', 'velocity')
    if m.dim > values or prediction != 'velocity':
        return None
    floor = (
        f'the flow loss cannot go below {(values - m.dim) / values:.2f} and '
        if m.dim < values
        else ''
    )
    return (
        f'config.model.dim={m.dim} is no wider than the {values} values a token predicts '
        f'(patch {tuple(m.patch_size)} x {channels} channels): {floor}samples stay noisy with '
        "flow.prediction='velocity'; set flow.prediction='data', model.dim > "
        f'{values} or smaller patches.'
    )


def _check_vae_sizes(config) -> None:
    """The VAE objective: clips must code into whole latents."""
    d, v = config.data, config.vae
    tf = 2 ** sum(bool(x) for x in v.temperal_downsample)
    sf = 2 ** (len(v.dim_mult) - 1)
    for tt, hh, ww in [tuple(s) for s in d.sizes] or [(d.num_frames, d.height, d.width)]:
        if tf > 1 and (tt - 1) % tf:
            raise _err(
                'data.num_frames',
                tt,
                f'the causal VAE needs 1 + {tf}k frames (e.g. {1 + tf * max(1, (tt - 1) // tf)}).',
            )
        if hh % sf or ww % sf:
            raise _err('data.height/width', (hh, ww), f'must be multiples of the VAE factor {sf}.')


def _check_sizes(config) -> None:
    """Clip sizes must map to latent grids the patch divides."""
    d = config.data
    sizes = [tuple(s) for s in d.sizes] or [(d.num_frames, d.height, d.width)]
    tf, sf = _vae_factors(config)
    for tt, hh, ww in sizes:
        if tf > 1 and (tt - 1) % tf:
            raise _err('data.num_frames', tt, f'the causal VAE needs 1 + {tf}k frames.')
        lat = (1 + (tt - 1) // tf if tf > 1 else tt, hh // sf, ww // sf)
        if hh % sf or ww % sf:
            raise _err('data.height/width', (hh, ww), f'must be multiples of the VAE factor {sf}.')
        for name, n, p in zip(('frames', 'height', 'width'), lat, config.model.patch_size):
            if n % p:
                raise _err(
                    'model.patch_size',
                    tuple(config.model.patch_size),
                    f'latent {name}={n} (from clip size {(tt, hh, ww)}) is not divisible '
                    f'by {p}; change data sizes or the patch.',
                )


def _vae_factors(config) -> tuple[int, int]:
    """(temporal, spatial) factors of config.autoencoder, read from its saved config."""
    from sora_jax.train import wan_frozen

    if wan_frozen.uses_wan(config):  # the converted Wan folder's VAE (config.vae)
        wan_frozen.validate(config)
        return wan_frozen.factors(config)
    path = config.get('autoencoder', 'none')
    if path in ('none', '', None):
        if config.get('latent_channels', 3) != 3:
            raise _err(
                'latent_channels',
                config.latent_channels,
                "must be 3 in pixel space (autoencoder='none').",
            )
        return 1, 1
    from etils import epath

    cdir = epath.Path(path) / 'checkpoints'
    if not cdir.is_dir():
        raise _err(
            'autoencoder',
            path,
            f'{cdir} does not exist; train a VAE first '
            '(experiments/train.py --config=configs/shapes.py:vae --workdir=...) or use '
            "'none' for pixel space.",
        )
    from sora_jax.io import checkpoint as ckpt

    vae = ckpt.load_config(cdir).vae
    if config.get('latent_channels') != vae.z_dim:
        raise _err(
            'latent_channels',
            config.get('latent_channels'),
            f'must equal the VAE z_dim={vae.z_dim} of {path}.',
        )
    return 2 ** sum(bool(t) for t in vae.temperal_downsample), 2 ** (len(vae.dim_mult) - 1)
