"""A converted Wan 2.1 folder as the frozen parts of a training run (`objective='flow_context'`,
configs/wan21.py:lora_*).

`config.checkpoint` is the folder `experiments/convert_wan.py --dst` wrote (text_encoder/,
tokenizer/, transformer/, vae/; `convert/checkpoint.py`). From it:
  * its VAE encodes the clips once into the latent cache (`data/latents.py`); latents are Wan's
    normalised ones (`vae.latents_mean/std`), as `TextToVideo.from_wan` samples them;
  * its UMT5 encodes every distinct caption once (`data/text_features.py`), so batches carry
    `context` [B, text.max_length, text_dim] and no text encoder sits next to the DiT;
  * its DiT is the frozen base of LoRA adapters (`lora.base`, read by `train/lora.py` with
    `load_dit_params`).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

COMPONENTS = ('text_encoder', 'tokenizer', 'transformer', 'vae')


def uses_wan(config) -> bool:
    return config.get('objective', 'flow') == 'flow_context'


def validate(config) -> None:
    """config.checkpoint holds every component; the config's sizes agree with the folder's."""
    root = config.get('checkpoint', '')
    missing = [c for c in COMPONENTS if not os.path.isdir(os.path.join(root or '.', c))]
    if not root or missing:
        raise ValueError(
            f'config.checkpoint={root!r} is not a converted Wan folder (missing '
            f'{missing}); convert one first: python experiments/convert_wan.py '
            '--src=<Wan diffusers folder> --dst=DIR, then --config.checkpoint=DIR.'
        )
    from sora_jax.convert import wan

    dit, _, _ = wan.component_spec('transformer', os.path.join(root, 'transformer'))
    m = config.model
    want = dict(
        dim=m.dim,
        depth=m.depth,
        num_heads=m.num_heads,
        ffn_dim=m.ffn_dim,
        text_dim=m.text_dim,
        in_channels=config.latent_channels,
    )
    bad = {k: (v, getattr(dit, k)) for k, v in want.items() if v != getattr(dit, k)}
    if bad:
        raise ValueError(
            f'config.model does not match the DiT of {root!r} ({{key: (config, '
            f'folder)}} {bad}); use the configs/wan21.py arg of its size.'
        )


def factors(config) -> tuple[int, int]:
    """(temporal, spatial) factors of the Wan VAE (config.vae)."""
    v = config.vae
    return 2 ** sum(bool(t) for t in v.temperal_downsample), 2 ** (len(v.dim_mult) - 1)


def make_sources(
    config, pixel_sources: dict[str, Any], data_dir: str | None = None
) -> dict[str, Any]:
    """{split: source of {'latents', 'context', 'id', captions}} from the clips' sources; the
    latent and caption-feature caches go under `data_dir` (default config.data.data_dir; the
    train loop passes the local mirror of a gs:// one)."""
    from flax import nnx

    from sora_jax.convert.checkpoint import load_converted
    from sora_jax.data import latents as latents_lib
    from sora_jax.data import text_features
    from sora_jax.models.frozen_vae import FrozenVAE

    root = config.checkpoint
    vae: list = []  # loaded on the first clip to encode: not at all when the cache is complete

    def encode(video):
        if not vae:
            graphdef, state = nnx.split(load_converted(root, 'vae', np.float32)[1])
            vae.append(FrozenVAE(graphdef, state, config, step=0))
        return vae[0].encode(video)

    data_dir = config.data.data_dir if data_dir is None else data_dir
    out = latents_lib.cache_dir(data_dir, config.data.to_dict(), os.path.join(root, 'vae'), 0)
    latents_lib.encode_dataset(pixel_sources, encode, out, batch_size=1)
    vae.clear()
    sources = {s: latents_lib.open_split(out, s) for s in pixel_sources}
    max_length = int(config.text.max_length)
    captions = text_features.captions_of(sources)
    path = text_features.cache_path(
        data_dir, captions, os.path.abspath(os.path.join(root, 'text_encoder')), max_length
    )
    features = text_features.encode_captions(
        captions, lambda: caption_encoder(root, max_length), path
    )
    return {
        s: text_features.ContextSource(
            src, features, max_length, config.seed, config.data.spanish_prob
        )
        for s, src in sources.items()
    }


def caption_encoder(root: str, max_length: int):
    """texts -> [f32 [tokens_i, text_dim], ...]: the folder's tokenizer and UMT5, Wan's rule
    (pad / truncate to max_length; features of the real tokens, as `pipeline.UMT5Text`)."""
    from flax import nnx

    from sora_jax.convert.checkpoint import load_converted
    from sora_jax.models import umt5

    _, module = load_converted(root, 'text_encoder')
    tok = umt5.UMT5Tokenizer.from_dir(os.path.join(root, 'tokenizer'))
    graphdef, state = nnx.split(module)
    run = jax.jit(lambda st, ids, m: umt5.encode_prompt(nnx.merge(graphdef, st), ids, m))

    def encode(texts):
        ids, mask = tok(list(texts), max_length=max_length)
        out = np.asarray(jax.device_get(run(state, ids, mask)).astype(np.float32))
        return [o[: int(m.sum())] for o, m in zip(out, mask)]

    return encode


def load_dit_params(root: str, abstract):
    """`abstract` (an nnx.State of DiT params, leaves with shapes, dtypes and shardings) filled
    from the converted transformer/params, each array read straight into its sharding and cast
    to its dtype; a missing, extra or mis-shaped parameter is a ValueError naming it."""
    from flax import nnx

    from sora_jax.convert import wan
    from sora_jax.io.checkpoint import restore_sharded

    targets = {
        '/'.join(map(str, p)): jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=v.sharding)
        for p, v in nnx.to_flat_state(abstract)
    }
    flat = restore_sharded(os.path.join(root, 'transformer', 'params'), targets)
    return wan.apply_to_state(abstract, flat)
