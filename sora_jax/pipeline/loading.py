"""Loading a `TextToVideo` (passed in as `cls`) with its `ModelFamily`: a training workdir or
shipped bundle (the shapes family, a LoRA run over its base), or a converted Wan folder. Every
restored weight is checked finite (`io/checkpoint.check_finite`)."""

from __future__ import annotations

import os

from absl import logging
from etils import epath
from flax import nnx

from sora_jax.io import checkpoint as ckpt
from sora_jax.models import denoiser, frozen_vae
from sora_jax.models import quantize as quantize_lib
from sora_jax.models.frozen_vae import FrozenVAE
from sora_jax.pipeline.encoders import CLIPImage, UMT5Text
from sora_jax.pipeline.family import ModelFamily


def from_checkpoint(cls, path: str | os.PathLike, *, ema: bool = True):
    """A training workdir (or shipped bundle): `<path>/checkpoints/<step>/`."""
    path = os.fspath(path)
    cdir = epath.Path(path) / 'checkpoints'  # any etils.epath path (gs://...)
    if not cdir.is_dir():
        raise ValueError(
            f'{path!r} is not a checkpoint: {cdir} does not exist. Pass a '
            'training --workdir or checkpoints/shapes.'
        )
    config = ckpt.load_config(cdir)
    if config.get('lora', {}).get('rank', 0):  # a LoRA run: its base plus its adapters
        return _from_lora_run(cls, path, config, ema)
    abstract = nnx.state(
        nnx.eval_shape(lambda: denoiser.build_model(config, nnx.Rngs(0))), nnx.Param
    )
    params, step = ckpt.restore_params(cdir, abstract, ema=ema)
    ckpt.check_finite(params, f'{path} step {step}')
    scales = ckpt.restore_tree(cdir, 'ema_scales', step) if ema else None
    if scales is not None:  # an int8 bundle (export.py --dtype=int8): QArrays, sampled as stored
        params['dit'] = quantize_lib.join(params['dit'], scales['dit'], 'int8')
    logging.info('Loaded %s params of step %d from %s', 'EMA' if ema else 'raw', step, path)
    vae = load_vae(config.autoencoder, relative_to=path)
    if vae is not None:
        vae = vae.with_stats(config.get('latent_mean', ()), config.get('latent_std', ()))
    pipe = cls._from_denoiser(config, params, vae)
    pipe.set_checkpoint(path)
    return pipe


def _from_lora_run(cls, path: str, config, ema: bool):
    """A LoRA training workdir: the base it names (config.lora.base: a workdir / bundle, or a
    converted Wan folder, sampled with the run's config) with its adapters merged in
    (convert/lora_run.py)."""
    from sora_jax.convert import checkpoint as converted
    from sora_jax.convert import lora as lora_files
    from sora_jax.convert import lora_run

    base = config.lora.get('base', '')
    sha, _ = lora_run.base_fingerprint(base)
    if sha != config.lora.get('base_sha256', ''):
        raise ValueError(
            f'{path!r} was trained on base {base!r} whose files no longer hash '
            'the same; restore the original base to sample this LoRA run.'
        )
    if converted.is_converted(base):  # configs/wan21.py:lora_*: sampled as from_wan
        pipe = from_wan(cls, base, config)
    else:
        pipe = from_checkpoint(cls, base, ema=bool(config.train.get('init_from_ema', True)))
    adapter, step, _ = lora_run.read_adapter(path, ema=ema)
    ckpt.check_finite(adapter, f'{path} step {step} (LoRA adapters)')
    pipe._base = lora_files.apply(*pipe._base, [adapter], merge=True)
    pipe.graphdef, pipe.params = pipe._base
    logging.info('LoRA run %s (step %d) merged into its base %s', path, step, base)
    pipe.set_checkpoint(path)
    return pipe


def from_wan(cls, path: str | os.PathLike, config=None):
    """A Wan 2.1 / 2.2 folder converted by experiments/convert_wan.py; `config` supplies the
    sampling defaults (configs/wan21.py, configs/wan22.py), e.g. UniPC, 50 steps, guidance 5,
    shift, negative prompt. A Wan 2.2 folder's model_index.json gives `boundary_ratio` (with
    `transformer_2/`) and `expand_timesteps`; config.sample.boundary_ratio, if set, wins."""
    from sora_jax.convert.checkpoint import load_wan

    path = os.fspath(path)
    m = load_wan(path)
    if m.transformer is None or m.text_encoder is None or m.tokenizer is None:
        raise ValueError(
            f'{path!r} lacks transformer/, text_encoder/ or tokenizer/; '
            're-run experiments/convert_wan.py on the full Wan folder.'
        )
    if config is None:
        raise ValueError('from_wan needs the sampling config (configs/wan21.py:...).')
    for name in ('text_encoder', 'transformer', 'transformer_2', 'vae', 'image_encoder'):
        module = getattr(m, name)
        if module is not None:
            ckpt.check_finite(nnx.state(module, nnx.Param), os.path.join(path, name))
    dit_cfg = m.configs['transformer']
    config = config.copy_and_resolve_references()
    config.unlock()
    config.model.patch_size = tuple(dit_cfg.patch_size)
    config.latent_channels = int(dit_cfg.out_channels)
    family = ModelFamily.of_wan(config, dit_cfg, m.pipeline, m.transformer_2 is not None, path)
    image_encoder = _wan_image_encoder(config, dit_cfg, m, path) if family.image_channels else None
    vae = None
    if m.vae is not None:
        vae = FrozenVAE(*nnx.split(m.vae), config)
    graphdef, params = nnx.split(m.transformer)
    params_2 = None
    if m.transformer_2 is not None:
        graphdef_2, params_2 = nnx.split(m.transformer_2)
        if graphdef_2 != graphdef:
            raise ValueError(
                'transformer_2/ differs from transformer/ in architecture; the '
                'two experts must share one config.json.'
            )
    max_len = int(config.text.get('max_length', 512))
    text = UMT5Text(m.text_encoder, m.tokenizer, max_len)
    pipe = cls(
        config,
        graphdef,
        params,
        text,
        vae,
        image_encoder=image_encoder,
        family=family,
        params_2=params_2,
    )
    pipe.set_checkpoint(path)
    return pipe


def _wan_image_encoder(config, dit_cfg, m, path) -> CLIPImage | None:
    """The CLIP encoder a Wan 2.1 I2V DiT's image tokens need (None for a DiT without image
    tokens, e.g. Wan 2.2 I2V-A14B); records the DiT's input width and image_dim in `config`."""
    config.model.in_channels = int(dit_cfg.in_channels)
    config.model.image_dim = int(dit_cfg.image_dim)
    if m.vae is None or dit_cfg.in_channels != 2 * dit_cfg.out_channels + 4:
        raise ValueError(
            f'{path!r}: an image-to-video DiT needs vae/ and in_channels = 2 x '
            f'{dit_cfg.out_channels} + 4 (got {dit_cfg.in_channels}).'
        )
    if not dit_cfg.image_dim:
        return None
    if m.image_encoder is None:
        raise ValueError(
            f'{path!r} lacks image_encoder/ (CLIP), which this I2V DiT needs; re-run '
            'experiments/convert_wan.py on the full Wan I2V folder.'
        )
    return CLIPImage(m.image_encoder, m.image_processor)


def load_vae(autoencoder: str, relative_to: str | None = None) -> FrozenVAE | None:
    """The frozen VAE named by config.autoencoder ('none' or a VAE checkpoint directory,
    absolute, relative to the DiT checkpoint (shipped bundles) or to the working directory)."""
    if autoencoder in (None, '', 'none'):
        return None
    path = autoencoder
    local = '://' not in path
    if (
        local
        and not os.path.isabs(path)
        and relative_to
        and (epath.Path(relative_to) / path).is_dir()
    ):
        path = os.fspath(epath.Path(relative_to) / path)
    return frozen_vae.load(path)
