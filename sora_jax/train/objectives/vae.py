"""VAE objective: L1 reconstruction + KL to N(0, I), plus an optional hinge-GAN term from a small
3D patch discriminator once `vae.disc_start` steps have passed.

`config.vae` holds the model fields of `sora_jax.models.vae.VAEConfig` (base_dim, z_dim, ...)
and these objective knobs (defaults in brackets):
  kl_weight [1e-6]          weight of the KL term (SD / Wan convention, see below)
  sample_posterior [True]   decode a posterior sample (else the mean)
  disc_start [0]            step from which the adversarial terms are on
  disc_weight [0.1]         weight of the generator's adversarial loss
  disc_dim [32], disc_layers [2]   width / depth of `PatchDiscriminator3D`
  edge_weight [0.0]         extra L1 weight near edges (see `edge_weights`): small objects'
                            corners and colours, a few % of the pixels, count as much as the
                            background that plain L1 is dominated by

Both terms are per-element means over the video: rec = mean|x - x'|, kl = (KL summed over the
latent) / (elements in one video), so `kl_weight` means what it means in the SD/Wan recipe where
both are sums. `batch['video']`: float32 [B, T, H, W, 3] in [-1, 1], T = 1 + 4k for Wan.

  use_gan [False]           train the discriminator inside the model (see below)
  inflate_from_image [False]  warm start (train.init_from) from an image-trained VAE: the past-
                            frame taps of every causal 3D conv start at zero (see below)

GAN with the generic loop (one model, one optimizer). With `vae.use_gan` and `disc_weight > 0`,
`build_model` returns `VAEWithDiscriminator` (`.vae`, `.disc`) and `loss_fn` returns
  total = [rec + kl_weight KL + disc_weight adv](disc params under stop_gradient)
        + [0.5 hinge(disc(video), disc(recon))](recon under stop_gradient),
so d total / d vae = d generator loss / d vae and d total / d disc = d disc loss / d disc: one
AdamW step updates both players on their own objectives (same learning rate and schedule). The
loop only hands `loss_fn` the params, so there is no step counter to gate on: the adversarial
terms are on from step 0, and `disc_start` must be 0 with `use_gan` (a ValueError says so). To
warm up without the GAN, lower `disc_weight` instead. The discriminator is checkpointed with the
VAE; `models/frozen_vae.load` keeps the `.vae` part (telling the layouts apart as `use_gan`
does: tests/models/test_frozen_vae.py).

A custom two-optimizer trainer can instead call `loss_fn(vae, ..., step=, disc=)` and
`disc_loss_fn`, which gate on `disc_start`.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from sora_jax.evaluation.metrics import psnr
from sora_jax.models.vae import WanVAE, posterior_kl, posterior_sample

DEFAULTS = dict(
    kl_weight=1e-6,
    sample_posterior=True,
    disc_start=0,
    disc_weight=0.1,
    disc_dim=32,
    disc_layers=2,
    use_gan=False,
    inflate_from_image=False,
    edge_weight=0.0,
)


def _opt(config, key: str):
    vae = config['vae'] if 'vae' in config else {}
    return vae[key] if key in vae else DEFAULTS[key]


def use_gan(config) -> bool:
    """Whether `build_model` adds a discriminator (vae.use_gan and disc_weight > 0)."""
    on = bool(_opt(config, 'use_gan')) and float(_opt(config, 'disc_weight')) > 0
    if on and int(_opt(config, 'disc_start')) != 0:
        raise ValueError(
            f'vae.disc_start={_opt(config, "disc_start")} with vae.use_gan=True: the generic '
            'loop gives loss_fn no step counter, so the in-model GAN is on from step 0. Set '
            'vae.disc_start=0 (or use_gan=False and a two-optimizer trainer).'
        )
    return on


def adapt_warm_start(params, config):
    """Image -> video inflation for `vae.inflate_from_image`. A causal conv reads frames
    (t-2, t-1, t) with kernel slices 0, 1, 2; on 1-frame training clips the past is zero padding,
    so slices 0 and 1 never got a gradient and still hold their random init. Zeroing them makes
    the warm-started VAE code every frame of a video exactly as the image VAE codes one frame;
    video training then learns what the past adds. Other params pass through."""
    if not bool(_opt(config, 'inflate_from_image')):
        return params

    def inflate(path, x):
        name = jax.tree_util.keystr(path).removesuffix('.value')  # nnx.State leaves: Param.value
        if name.endswith("['kernel']") and x.ndim == 5 and x.shape[0] > 1:  # [kt, kh, kw, in, out]
            return x.at[:-1].set(0)
        return x

    return jax.tree_util.tree_map_with_path(inflate, params)


def build_model(config, rngs: nnx.Rngs):
    """WanVAE, or VAEWithDiscriminator when `use_gan(config)`."""
    if use_gan(config):
        return VAEWithDiscriminator(config, rngs=rngs)
    return WanVAE(config.vae, rngs=rngs)


def vae_of(model) -> WanVAE:
    """The VAE inside a training model (itself, or `.vae` of a VAEWithDiscriminator)."""
    return model.vae if isinstance(model, VAEWithDiscriminator) else model


class PatchDiscriminator3D(nnx.Module):
    """PatchGAN in 3D: video [B, T, H, W, 3] -> logits [B, T', H / 2^(n+1), W / 2^(n+1), 1]."""

    def __init__(self, dim: int = 32, num_layers: int = 2, in_channels: int = 3, *, rngs: nnx.Rngs):
        self.conv_in = nnx.Conv(
            in_channels, dim, (3, 4, 4), strides=(1, 2, 2), padding='SAME', rngs=rngs
        )
        layers, norms, d = [], [], dim
        for i in range(num_layers):
            out = dim * 2 ** (i + 1)
            layers.append(nnx.Conv(d, out, (3, 4, 4), strides=(2, 2, 2), padding='SAME', rngs=rngs))
            norms.append(nnx.GroupNorm(out, num_groups=min(32, out // 4 or 1), rngs=rngs))
            d = out
        self.layers, self.norms = nnx.List(layers), nnx.List(norms)
        self.conv_out = nnx.Conv(d, 1, (3, 3, 3), padding='SAME', rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.leaky_relu(self.conv_in(x), 0.2)
        for conv, norm in zip(self.layers, self.norms):
            x = jax.nn.leaky_relu(norm(conv(x)), 0.2)
        return self.conv_out(x)


def build_discriminator(config, rngs: nnx.Rngs) -> PatchDiscriminator3D:
    return PatchDiscriminator3D(
        int(_opt(config, 'disc_dim')), int(_opt(config, 'disc_layers')), rngs=rngs
    )


class VAEWithDiscriminator(nnx.Module):
    """Both GAN players in one module, so one train state / optimizer holds them."""

    def __init__(self, config, *, rngs: nnx.Rngs):
        self.vae = WanVAE(config.vae, rngs=rngs)
        self.disc = build_discriminator(config, rngs)


def _frozen(module):
    """The same module with every parameter under stop_gradient (used inside a traced loss)."""
    graphdef, state = nnx.split(module)
    return nnx.merge(graphdef, jax.lax.stop_gradient(state))


def _hinge(real: jax.Array, fake: jax.Array) -> jax.Array:
    return 0.5 * (jnp.mean(jax.nn.relu(1.0 - real)) + jnp.mean(jax.nn.relu(1.0 + fake)))


def reconstruct(model: WanVAE, video: jax.Array, rng: jax.Array, config):
    """(recon unclipped [B, T, H, W, 3], mean, logvar) with the objective's posterior sampling."""
    k_post, k_drop = jax.random.split(rng)
    dropout_key = k_drop if model.config.dropout > 0 else None
    mean, logvar = model.encode(video, dropout_key=dropout_key)
    z = posterior_sample(mean, logvar, k_post) if _opt(config, 'sample_posterior') else mean
    recon = model.decode(z, clip=False, dropout_key=dropout_key)
    return recon, mean, logvar


def edge_weights(video: jax.Array, strength: float, radius: int = 5) -> jax.Array:
    """Per-pixel L1 weights [B, T, H, W, 1] that are 1 on flat regions and up to 1 + strength
    within `radius` pixels of an edge of `video` [B, T, H, W, C] (in [-1, 1]).

    The edge strength of a pixel is the larger channel-summed absolute difference to its right
    and lower neighbour, scaled so a full-contrast edge in one channel is 1 and clipped at 1;
    a (2 radius + 1)^2 max filter spreads it over the pixels around the edge, which covers the
    interior of a 9-11 px object at radius 5 (its centre is 4-5 px from its edges). Smooth gradients and textures stay near 1.
    """
    v = jax.lax.stop_gradient(video)
    dx = jnp.abs(v[:, :, :, 1:] - v[:, :, :, :-1]).sum(-1)
    dy = jnp.abs(v[:, :, 1:] - v[:, :, :-1]).sum(-1)
    g = jnp.maximum(
        jnp.pad(dx, ((0, 0), (0, 0), (0, 0), (0, 1))), jnp.pad(dy, ((0, 0),) * 2 + ((0, 1), (0, 0)))
    )
    g = jnp.clip(g / 2.0, 0.0, 1.0)
    k = 2 * radius + 1
    g = jax.lax.reduce_window(g, -jnp.inf, jax.lax.max, (1, 1, k, k), (1, 1, 1, 1), 'SAME')
    return (1.0 + strength * g)[..., None]


def _rec_loss(recon: jax.Array, video: jax.Array, config) -> tuple[jax.Array, jax.Array]:
    """(loss term, plain L1): the L1 the loss uses (edge-weighted and renormalised to the
    weights' mean, so it reads as an L1 when `vae.edge_weight` > 0) and the plain mean L1."""
    err = jnp.abs(recon - video)
    plain = jnp.mean(err)
    strength = float(_opt(config, 'edge_weight'))
    if strength <= 0:
        return plain, plain
    w = edge_weights(video, strength)
    return jnp.mean(w * err) / jnp.mean(w), plain


def _gan_on(step, config) -> jax.Array:
    return (jnp.asarray(step) >= int(_opt(config, 'disc_start'))).astype(jnp.float32)


def loss_fn(
    model: WanVAE,
    batch: dict,
    rng: jax.Array,
    config,
    *,
    step: Any = 0,
    disc: Optional[PatchDiscriminator3D] = None,
):
    """(loss, metrics): L1 + kl_weight * KL (+ disc_weight * generator hinge loss once on).

    `model` a VAEWithDiscriminator: generator loss + discriminator loss (see the module doc).
    """
    if isinstance(model, VAEWithDiscriminator):
        return _joint_loss(model, batch, rng, config)
    video = batch['video'].astype(jnp.float32)
    recon, mean, logvar = reconstruct(model, video, rng, config)
    rec_term, rec = _rec_loss(recon, video, config)
    kl = jnp.mean(posterior_kl(mean, logvar)) / (video[0].size)
    loss = rec_term + float(_opt(config, 'kl_weight')) * kl
    adv = jnp.zeros(())
    if disc is not None:
        adv = -jnp.mean(disc(recon))
        loss = loss + float(_opt(config, 'disc_weight')) * _gan_on(step, config) * adv
    metrics = dict(
        loss=loss,
        rec_loss=rec,
        kl=kl,
        adv_loss=adv,
        psnr=psnr(jax.lax.stop_gradient(jnp.clip(recon, -1, 1)), video),
        latent_std=jnp.std(jax.lax.stop_gradient(mean)),
        logvar=jnp.mean(jax.lax.stop_gradient(logvar)),
    )
    return loss, metrics


def _joint_loss(model: VAEWithDiscriminator, batch: dict, rng: jax.Array, config):
    """Generator loss (frozen discriminator) + discriminator loss (frozen reconstruction)."""
    video = batch['video'].astype(jnp.float32)
    recon, mean, logvar = reconstruct(model.vae, video, rng, config)
    rec_term, rec = _rec_loss(recon, video, config)
    kl = jnp.mean(posterior_kl(mean, logvar)) / (video[0].size)
    adv = -jnp.mean(_frozen(model.disc)(recon))
    gen = (
        rec_term + float(_opt(config, 'kl_weight')) * kl + float(_opt(config, 'disc_weight')) * adv
    )
    real, fake = model.disc(video), model.disc(jax.lax.stop_gradient(recon))
    d_loss = _hinge(real, fake)
    sg = jax.lax.stop_gradient
    metrics = dict(
        loss=gen + d_loss,
        gen_loss=gen,
        rec_loss=rec,
        kl=kl,
        adv_loss=adv,
        disc_loss=d_loss,
        logits_real=jnp.mean(sg(real)),
        logits_fake=jnp.mean(sg(fake)),
        psnr=psnr(sg(jnp.clip(recon, -1, 1)), video),
        latent_std=jnp.std(sg(mean)),
        logvar=jnp.mean(sg(logvar)),
    )
    return gen + d_loss, metrics


def disc_loss_fn(
    disc: PatchDiscriminator3D, model: WanVAE, batch: dict, rng: jax.Array, config, *, step: Any = 0
):
    """(loss, metrics) of the discriminator: hinge loss on real videos vs reconstructions.

    Pass the same `rng` as to `loss_fn` to score the very reconstruction the generator saw
    (recomputed here, without gradient to the VAE). Zero before `vae.disc_start`.
    """
    video = batch['video'].astype(jnp.float32)
    recon = jax.lax.stop_gradient(reconstruct(model, video, rng, config)[0])
    real, fake = disc(video), disc(recon)
    loss = _hinge(real, fake) * _gan_on(step, config)
    return loss, dict(disc_loss=loss, logits_real=jnp.mean(real), logits_fake=jnp.mean(fake))
