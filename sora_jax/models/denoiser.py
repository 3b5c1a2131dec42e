"""Text encoder + DiT as one trainable module: the velocity model of text-to-video training.

`encode_text` runs once per prompt; `velocity` runs every sampling step on the cached text
features. Frame-mask conditioning (image-to-video, extend, ...) arrives as extra input
channels built by `diffusion/conditioning.py`; the module does not know about it (only
`dit_config` sizes the DiT's input for it).

`build_model(config, rngs)` is the model a run config describes (objective 'flow', the shapes
family): what training builds (`train/objectives/flow.py`) and what sampling restores into
(`pipeline.TextToVideo.from_checkpoint`).
"""

from __future__ import annotations

import jax
from flax import nnx

from sora_jax.models import lora as lora_lib
from sora_jax.models.dit import DiT, DiTConfig
from sora_jax.models.text import PAD, ByteEncoderConfig, ByteTextEncoder


class Denoiser(nnx.Module):
    def __init__(self, text_cfg: ByteEncoderConfig, dit_cfg: DiTConfig, *, rngs: nnx.Rngs):
        if dit_cfg.text_dim != text_cfg.dim:
            raise ValueError(
                f'model.text_dim={dit_cfg.text_dim} must equal text.dim={text_cfg.dim}.'
            )
        self.text = ByteTextEncoder(text_cfg, rngs=rngs)
        self.dit = DiT(dit_cfg, rngs=rngs)

    def encode_text(self, ids: jax.Array) -> tuple[jax.Array, jax.Array]:
        """ids: [B, L] -> (context [B, L, D], mask [B, L])."""
        mask = ids != PAD
        return self.text(ids, mask), mask

    def velocity(self, x, t, context, context_mask):
        return self.dit(x, t, context, context_mask)

    def __call__(self, x, t, ids):
        ctx, mask = self.encode_text(ids)
        return self.dit(x, t, ctx, mask)


def conditioning_enabled(config) -> bool:
    return bool(config.get('conditioning', {}).get('enabled', False))


def dit_config(config) -> DiTConfig:
    """DiT config with channels derived from the data (pixels or VAE latents): C in and out, or
    2C + 1 in with frame-mask conditioning (noisy latents, known latents, mask)."""
    c = int(config.latent_channels)
    cin = 2 * c + 1 if conditioning_enabled(config) else c
    return DiTConfig.from_config(
        dict(
            config.model.to_dict(),
            in_channels=cin,
            out_channels=c,
            lora=lora_lib.config_of(config).layout(),
        )
    )


def build_model(config, rngs: nnx.Rngs) -> Denoiser:
    return Denoiser(ByteEncoderConfig.from_config(config.text), dit_config(config), rngs=rngs)
