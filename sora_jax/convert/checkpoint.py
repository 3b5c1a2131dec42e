"""A converted Wan folder (Orbax layout) and the one loader the inference pipeline calls.

`experiments/convert_wan.py --src=<diffusers Wan> --dst=DST` writes

  DST/text_encoder/{params/, config.json}   UMT5Encoder params (Orbax) + transformers config.json
  DST/transformer/{params/, config.json}    DiT params + diffusers config.json
  DST/vae/{params/, config.json}            WanVAE params + diffusers config.json
  DST/tokenizer/                            copied verbatim (tokenizer.json / spiece.model)
  DST/transformer_2/{params/, config.json}  Wan 2.2 A14B only: the low-noise expert DiT
  DST/model_index.json                      copied: Wan 2.2 boundary_ratio / expand_timesteps
  DST/image_encoder/{params/, config.json}  I2V only: CLIPVisionEncoder params + its config.json
  DST/image_processor/                      I2V only: preprocessor_config.json, copied verbatim

Params are the flat NNX paths ('blocks/attn1/to_q/kernel', stacked on a leading layer axis for
scanned blocks) nested into dicts and saved with `ocp.StandardCheckpointer`; they keep the
checkpoint dtype (bf16 stays bf16). The HF config.json stays the source of truth for the model
hyper-parameters (`wan.component_spec` parses it). The layout's reading and writing live in
`io/checkpoint.py` (the one checkpoint reader); this module builds the models from it.

With a `mesh`, `load_wan` / `load_converted` restore every parameter straight into its target
sharding (the logical axis rules of `parallel/mesh.py` applied to the abstract model built with
`nnx.eval_shape`): each process reads only its devices' slices, so no host ever holds a whole
copy of the 14B transformer. Without one, params are read whole onto the host (one device).

`is_converted` tells such a folder from a training workdir; `fingerprint` hashes its
transformer/ (the base a Wan LoRA run names, `convert/lora_run.py`).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Mapping, NamedTuple, Optional

import numpy as np
from absl import logging

from sora_jax.convert import wan
from sora_jax.io.checkpoint import restore_flat, restore_sharded, saved_arrays


class WanModels(NamedTuple):
    """What `load_wan` returns; a component missing from the folder is None."""

    text_encoder: Any  # sora_jax.models.umt5.UMT5Encoder
    tokenizer: Any  # sora_jax.models.umt5.UMT5Tokenizer
    transformer: Any  # sora_jax.models.dit.DiT
    vae: Any  # sora_jax.models.vae.WanVAE
    configs: dict  # component -> UMT5Config / DiTConfig / VAEConfig / CLIPVisionConfig
    transformer_2: Any = None  # Wan 2.2 A14B: the low-noise expert DiT (None: one DiT)
    pipeline: dict = {}  # model_index.json settings: boundary_ratio, expand_timesteps
    image_encoder: Any = None  # sora_jax.models.clip_vision.CLIPVisionEncoder (I2V folders)
    image_processor: Any = None  # sora_jax.models.clip_preprocess.CLIPImageConfig (I2V folders)


def is_converted(path: str) -> bool:
    """True for a folder written by experiments/convert_wan.py (it has transformer/config.json)."""
    return bool(path) and os.path.isfile(os.path.join(path, 'transformer', 'config.json'))


def fingerprint(root: str) -> str:
    """sha256 of the files of a converted folder's transformer/ (its config and params)."""
    base = os.path.join(root, 'transformer')
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(base)):
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            h.update(os.path.relpath(path, base).encode())
            with open(path, 'rb') as f:
                for chunk in iter(lambda: f.read(1 << 24), b''):
                    h.update(chunk)
    return h.hexdigest()


def load_converted(
    dst: str,
    component: str,
    weights_dtype: Any = None,
    *,
    mesh: Any = None,
    rules: Any = None,
    **config_overrides,
):
    """(config, module) for `dst/<component>`: the model is built with `nnx.eval_shape` (no
    init memory) and filled from the Orbax params. `weights_dtype` casts them (None: as saved); the
    text encoder's and transformer's param dtype follow the loaded params unless overridden.

    mesh: a `jax.sharding.Mesh` (e.g. `parallel.mesh.make_mesh`): every parameter is restored
      straight into the NamedSharding its logical axes get under `rules` (None: the default
      rules; a config's `mesh.rules` works too). None: whole arrays on the default device.
    """
    import jax
    import jax.numpy as jnp

    folder = os.path.join(dst, component)
    if not os.path.isfile(os.path.join(folder, 'config.json')):
        raise ValueError(
            f'{folder!r} holds no config.json; convert it first: python '
            f'experiments/convert_wan.py --src=<Wan diffusers folder> --dst={dst} '
            f'--components={component}'
        )
    params = os.path.join(folder, 'params')
    saved = saved_arrays(params)
    dtypes = {
        k: np.dtype(weights_dtype) if weights_dtype is not None else d
        for k, (_, d) in saved.items()
    }
    widest = jnp.dtype(max(set(dtypes.values()), key=lambda d: d.itemsize))
    if component == 'text_encoder':
        config_overrides.setdefault('param_dtype', widest)
        config_overrides.setdefault('dtype', widest)
    elif component in ('transformer', 'transformer_2'):
        config_overrides.setdefault('param_dtype', widest.name)
    elif component == 'image_encoder':
        config_overrides.setdefault('param_dtype', widest.name)
        config_overrides.setdefault('dtype', widest.name)
    cfg, make, _ = wan.component_spec(component, folder, **config_overrides)
    if mesh is None:
        flat = restore_flat(params)
        if weights_dtype is not None:
            flat = {k: v.astype(weights_dtype) for k, v in flat.items()}
        module = wan.build(make, flat)
    else:
        from flax import nnx

        from sora_jax.parallel import mesh as mesh_lib

        graphdef, abstract = nnx.split(nnx.eval_shape(make))
        rules = rules if isinstance(rules, dict) else mesh_lib.rules_dict(rules)
        shardings = {
            '/'.join(map(str, p)): v.get_value()
            for p, v in nnx.to_flat_state(mesh_lib.state_shardings(abstract, mesh, rules))
        }
        targets = {
            k: jax.ShapeDtypeStruct(shape, dtypes.get(k, dtype), sharding=shardings[k])
            for k, (shape, dtype) in wan.state_targets(abstract).items()
        }
        flat = restore_sharded(params, targets)
        module = nnx.merge(graphdef, wan.apply_to_state(abstract, flat))
    logging.info(
        'loaded %s from %s (%d arrays, %s%s)',
        component,
        folder,
        len(saved),
        widest,
        f', sharded over mesh {dict(mesh.shape)}' if mesh is not None else '',
    )
    return cfg, module


def load_wan(
    dst: str,
    *,
    dtype: Any = None,
    vae_dtype: Any = np.float32,
    overrides: Optional[Mapping[str, Mapping[str, Any]]] = None,
    mesh: Any = None,
    rules: Any = None,
    image_encoder_dtype: Any = np.float32,
) -> WanModels:
    """Loads every component of a converted Wan folder (see the module docstring).

    dtype: cast text encoder and transformer params to it (None: keep the saved dtype).
    vae_dtype: the VAE's param dtype (float32, as Wan decodes; None: as saved).
    image_encoder_dtype: the I2V CLIP encoder's dtype (float32, as diffusers' example; None: as
      saved).
    overrides: per-component config overrides, e.g. {'transformer': {'attention': 'cudnn'}}
      (a Wan 2.2 A14B folder's `transformer_2` takes the transformer's unless given its own).
    mesh, rules: restore every parameter straight into its sharding on `mesh` under the logical
      axis `rules` (see `load_converted`); None: whole arrays on one device. Both experts of a
      Wan 2.2 A14B folder are sharded by the same rules.
    Returns WanModels(text_encoder, tokenizer, transformer, vae, configs, transformer_2,
    pipeline, image_encoder, image_processor).
    """
    from sora_jax.models import umt5

    overrides = dict(overrides or {})
    known = {'text_encoder', 'transformer', 'vae', 'transformer_2', 'image_encoder'}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(
            f'overrides for unknown components {unknown}; use text_encoder, '
            'transformer, transformer_2, vae or image_encoder.'
        )
    overrides.setdefault('transformer_2', overrides.get('transformer', {}))
    if not os.path.isdir(dst):
        raise ValueError(
            f'{dst!r} does not exist; convert a Wan folder into it first with '
            'experiments/convert_wan.py --src=... --dst=...'
        )
    models: dict[str, Any] = {'configs': {}}
    for comp, comp_dtype in (
        ('text_encoder', dtype),
        ('transformer', dtype),
        ('vae', vae_dtype),
        ('transformer_2', dtype),
        ('image_encoder', image_encoder_dtype),
    ):
        models[comp] = None
        if os.path.isdir(os.path.join(dst, comp)):
            cfg, models[comp] = load_converted(
                dst, comp, comp_dtype, mesh=mesh, rules=rules, **overrides.get(comp, {})
            )
            models['configs'][comp] = cfg
    if not models['configs']:
        raise ValueError(
            f'{dst!r} holds none of text_encoder/, transformer/, vae/; is it the '
            '--dst of experiments/convert_wan.py?'
        )
    tok = os.path.join(dst, 'tokenizer')
    models['tokenizer'] = umt5.UMT5Tokenizer.from_dir(tok) if os.path.isdir(tok) else None
    models['pipeline'] = wan.pipeline_settings(dst)
    proc = os.path.join(dst, 'image_processor')
    if os.path.isdir(proc):
        from sora_jax.models.clip_preprocess import CLIPImageConfig

        models['image_processor'] = CLIPImageConfig.from_hf(proc)
    return WanModels(**models)
