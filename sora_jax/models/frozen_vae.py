"""A trained VAE, frozen: load it from its checkpoint and encode / decode under jit.

Used by the inference pipeline and by DiT training on latents (`config.autoencoder` = a VAE
training workdir). Latents are normalised with the VAE's per-channel mean/std (and an extra
`latent_scale` when the VAE config sets one) so the DiT sees roughly unit-variance inputs.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
from etils import epath
from flax import nnx

from sora_jax.io import checkpoint as ckpt
from sora_jax.models.vae import WanVAE


@dataclasses.dataclass
class FrozenVAE:
    graphdef: Any
    state: Any
    config: Any
    step: int = -1  # checkpoint step the weights came from
    mean: Any = None  # extra per-channel latent stats of the DiT's data (config.latent_mean)
    std: Any = None

    def with_stats(self, mean, std) -> 'FrozenVAE':
        """The same VAE normalising latents by per-channel (mean, std) (empty: identity)."""
        if not len(mean):
            return dataclasses.replace(self, mean=None, std=None)
        return dataclasses.replace(
            self, mean=jnp.asarray(mean, jnp.float32), std=jnp.asarray(std, jnp.float32)
        )

    @property
    def module(self):
        return nnx.merge(self.graphdef, self.state)

    @functools.cached_property
    def temporal_factor(self) -> int:
        return self.module.temporal_factor

    @functools.cached_property
    def spatial_factor(self) -> int:
        return self.module.spatial_factor

    @functools.cached_property
    def z_dim(self) -> int:
        return int(self.config.vae.z_dim)

    def encode(self, video: jax.Array) -> jax.Array:
        """video [B, T, H, W, 3] in [-1, 1] -> normalised latents (posterior mean)."""
        z = _encode(self.graphdef, self.state, video)
        return z if self.mean is None else (z - self.mean) / self.std

    def decode(self, latents: jax.Array) -> jax.Array:
        """normalised latents -> video [B, T, H, W, 3] in [-1, 1] (chunked causal decode)."""
        if self.mean is not None:
            latents = latents * self.std + self.mean
        return _decode(self.graphdef, self.state, latents)


@functools.partial(jax.jit, static_argnums=0)
def _encode(graphdef, state, video):
    vae = nnx.merge(graphdef, state)
    mean, _ = vae.encode_chunked(video)
    return vae.normalize_latents(mean)


@functools.partial(jax.jit, static_argnums=0)
def _decode(graphdef, state, latents):
    vae = nnx.merge(graphdef, state)
    return vae.decode_chunked(vae.denormalize_latents(latents))


def load(path: str | os.PathLike, *, ema: bool = True) -> FrozenVAE:
    """A VAE training workdir (`<path>/checkpoints/<step>`) -> FrozenVAE (EMA weights by default;
    for a GAN run, the VAE part only). Non-finite weights are a ValueError."""
    path = os.fspath(path)
    cdir = epath.Path(path) / 'checkpoints'
    if not cdir.is_dir():
        raise ValueError(
            f'autoencoder checkpoint {path!r} not found ({cdir} does not exist); '
            "set config.autoencoder to a VAE training workdir, or 'none'."
        )
    config = ckpt.load_config(cdir)
    if config.objective != 'vae':
        raise ValueError(
            f'{path!r} holds a {config.objective!r} model, not a VAE; point '
            'config.autoencoder at the workdir of a configs/...:vae run.'
        )
    # The training model is a WanVAE, or (a GAN run) train/objectives/vae.py's
    # VAEWithDiscriminator, params {'vae': WanVAE's, 'disc': ...}, whose `.vae` we keep.
    abstract = nnx.state(nnx.eval_shape(lambda: WanVAE(config.vae, rngs=nnx.Rngs(0))), nnx.Param)
    gan = _with_discriminator(config)
    params, step = ckpt.restore_params(
        cdir, {'vae': abstract} if gan else abstract, ema=ema, missing_ok=gan
    )  # a GAN run's 'disc' params are left
    params = params['vae'] if gan else params
    if len(jax.tree.leaves(params)) != len(jax.tree.leaves(abstract)):  # missing: None leaves
        raise ValueError(
            f'{path!r} step {step} lacks parameters of the VAE its config.vae '
            'describes; point config.autoencoder at a complete VAE run.'
        )
    ckpt.check_finite(params, f'{path} step {step}')
    model = WanVAE(config.vae, rngs=nnx.Rngs(0))  # non-param constants, then weights
    nnx.update(model, params)
    graphdef, state = nnx.split(model)
    return FrozenVAE(graphdef, state, config, step)


def _with_discriminator(config) -> bool:
    """Whether a VAE run trained the discriminator inside its model: `use_gan(config)` of
    train/objectives/vae.py (vae.use_gan with vae.disc_weight > 0; its defaults False, 0.1)."""
    vae = config.vae
    return bool(vae.get('use_gan', False)) and float(vae.get('disc_weight', 0.1)) > 0
