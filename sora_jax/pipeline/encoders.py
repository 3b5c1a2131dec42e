"""The pipeline's encoders: any callable prompts -> (context [B, L, D], mask [B, L] | None) is a
text encoder; `CLIPImage` gives Wan 2.1 I2V its image tokens."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sora_jax.models.text import ByteTokenizer


class ByteText:
    """The shapes family's byte-level encoder (its params live in the Denoiser checkpoint)."""

    def __init__(self, graphdef, params, max_length: int):
        self.graphdef, self.params = graphdef, params
        self.tokenizer = ByteTokenizer(max_length)
        self._encode = jax.jit(lambda p, ids: nnx.merge(graphdef, p)(ids, ids != 0))

    def __call__(self, prompts: Sequence[str]):
        ids, mask = self.tokenizer(list(prompts))
        return self._encode(self.params, jnp.asarray(ids)), jnp.asarray(mask)


class UMT5Text:
    """Wan's UMT5 encoder: padded to max_length, padded positions zeroed, no attention mask."""

    def __init__(self, module, tokenizer, max_length: int = 512):
        from sora_jax.models import umt5

        self.tokenizer, self.max_length = tokenizer, max_length
        graphdef, self.state = nnx.split(module)
        self._encode = jax.jit(
            lambda st, ids, m: umt5.encode_prompt(nnx.merge(graphdef, st), ids, m)
        )

    def __call__(self, prompts: Sequence[str]):
        ids, mask = self.tokenizer(list(prompts), max_length=self.max_length)
        return self._encode(self.state, jnp.asarray(ids), jnp.asarray(mask)), None


class CLIPImage:
    """Wan 2.1 I2V's image encoder: uint8 images [B, H, W, 3] -> CLIP features [B, 257, 1280]
    (the penultimate hidden state, after CLIPImageProcessor's resize / crop / normalise)."""

    def __init__(self, module, processor=None):
        from sora_jax.models.clip_preprocess import CLIPImageConfig

        self.processor = processor or CLIPImageConfig()
        graphdef, self.state = nnx.split(module)
        self._encode = jax.jit(lambda st, px: nnx.merge(graphdef, st).penultimate(px))

    def __call__(self, images: np.ndarray) -> jax.Array:
        from sora_jax.models import clip_preprocess

        return self._encode(
            self.state, jnp.asarray(clip_preprocess.preprocess(images, self.processor))
        )
