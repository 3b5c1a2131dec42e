"""A converted Wan folder (Orbax layout) and the one loader the inference pipeline calls.

`experiments/convert_wan.py --src=<diffusers Wan> --dst=DST` writes

  DST/text_encoder/{params/, config.json}   UMT5Encoder params (Orbax) + transformers config.json
  DST/transformer/{params/, config.json}    DiT params + diffusers config.json
  DST/vae/{params/, config.json}            WanVAE params + diffusers config.json
  DST/tokenizer/                            copied verbatim (tokenizer.json / spiece.model)

Params are the flat NNX paths ('blocks/attn1/to_q/kernel', stacked on a leading layer axis for
scanned blocks) nested into dicts and saved with `ocp.StandardCheckpointer`; they keep the
checkpoint dtype (bf16 stays bf16). The HF config.json stays the source of truth for the model
hyper-parameters (`wan.component_spec` parses it).
"""
from __future__ import annotations

import os
from typing import Any, Mapping, NamedTuple, Optional

import numpy as np
from absl import logging


class WanModels(NamedTuple):
    """What `load_wan` returns; a component missing from the folder is None."""
    text_encoder: Any   # sora_jax.models.umt5.UMT5Encoder
    tokenizer: Any      # sora_jax.models.umt5.UMT5Tokenizer
    transformer: Any    # sora_jax.models.dit.DiT
    vae: Any            # sora_jax.models.vae.WanVAE
    configs: dict       # component -> UMT5Config / DiTConfig / VAEConfig


def unflatten(flat: Mapping[str, np.ndarray]) -> dict:
    tree: dict = {}
    for path, arr in flat.items():
        node = tree
        *parents, leaf = path.split('/')
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = arr
    return tree


def flatten(tree: Mapping, prefix: str = '') -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        path = f'{prefix}/{k}' if prefix else str(k)
        out.update(flatten(v, path) if isinstance(v, Mapping) else {path: np.asarray(v)})
    return out


def save_params(flat: Mapping[str, np.ndarray], path: str) -> None:
    """Writes the nested params pytree as an Orbax (StandardCheckpointer) checkpoint at `path`."""
    import orbax.checkpoint as ocp
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.abspath(path), unflatten(flat), force=True)
    ckptr.wait_until_finished()


def restore_params(path: str) -> dict[str, np.ndarray]:
    """Reads a checkpoint written by `save_params` back as a flat dict of numpy arrays."""
    import orbax.checkpoint as ocp
    return flatten(ocp.StandardCheckpointer().restore(os.path.abspath(path)))


def load_converted(dst: str, component: str, weights_dtype: Any = None, **config_overrides):
    """(config, module) for `dst/<component>`: the model is built with `nnx.eval_shape` (no
    init memory) and filled from the Orbax params. `weights_dtype` casts them (None: as saved); the
    text encoder's and transformer's param dtype follow the loaded params unless overridden."""
    import jax.numpy as jnp
    from sora_jax.convert import wan
    folder = os.path.join(dst, component)
    if not os.path.isfile(os.path.join(folder, 'config.json')):
        raise ValueError(f'{folder!r} holds no config.json; convert it first: python '
                         f'experiments/convert_wan.py --src=<Wan diffusers folder> --dst={dst} '
                         f'--components={component}')
    flat = restore_params(os.path.join(folder, 'params'))
    if weights_dtype is not None:
        flat = {k: v.astype(weights_dtype) for k, v in flat.items()}
    widest = jnp.dtype(max({v.dtype for v in flat.values()}, key=lambda d: d.itemsize))
    if component == 'text_encoder':
        config_overrides.setdefault('param_dtype', widest)
        config_overrides.setdefault('dtype', widest)
    elif component == 'transformer':
        config_overrides.setdefault('param_dtype', widest.name)
    cfg, make, _ = wan.component_spec(component, folder, **config_overrides)
    logging.info('loaded %s from %s (%d arrays, %s)', component, folder, len(flat), widest)
    return cfg, wan.build(make, flat)


def load_wan(dst: str, *, dtype: Any = None, vae_dtype: Any = np.float32,
             overrides: Optional[Mapping[str, Mapping[str, Any]]] = None) -> WanModels:
    """Loads every component of a converted Wan folder (see the module docstring).

    dtype: cast text encoder and transformer params to it (None: keep the saved dtype).
    vae_dtype: the VAE's param dtype (float32, as Wan decodes; None: as saved).
    overrides: per-component config overrides, e.g. {'transformer': {'attention': 'cudnn'}}.
    Returns WanModels(text_encoder, tokenizer, transformer, vae, configs).
    """
    from sora_jax.models import umt5
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - {'text_encoder', 'transformer', 'vae'})
    if unknown:
        raise ValueError(f'overrides for unknown components {unknown}; use text_encoder, '
                         'transformer or vae.')
    if not os.path.isdir(dst):
        raise ValueError(f'{dst!r} does not exist; convert a Wan folder into it first with '
                         'experiments/convert_wan.py --src=... --dst=...')
    models: dict[str, Any] = {'configs': {}}
    for comp, comp_dtype in (('text_encoder', dtype), ('transformer', dtype), ('vae', vae_dtype)):
        models[comp] = None
        if os.path.isdir(os.path.join(dst, comp)):
            cfg, models[comp] = load_converted(dst, comp, comp_dtype, **overrides.get(comp, {}))
            models['configs'][comp] = cfg
    if not models['configs']:
        raise ValueError(f'{dst!r} holds none of text_encoder/, transformer/, vae/; is it the '
                         '--dst of experiments/convert_wan.py?')
    tok = os.path.join(dst, 'tokenizer')
    models['tokenizer'] = umt5.UMT5Tokenizer.from_dir(tok) if os.path.isdir(tok) else None
    return WanModels(**models)
