"""Wan 2.1 weights (diffusers / HF safetensors folders) -> sora_jax parameter pytrees.

A converted model is a flat dict `'a/b/kernel' -> np.ndarray` in the layout of the NNX state
(`nnx.to_flat_state` paths joined by '/'), applied onto an abstract NNX state. Each model has a
small key-map function returning `{source key: Rule}`; a Rule names the target path, the slot on
a stacked leading layer axis (scanned blocks) and the layout transpose:

  linear  torch [out, in]              -> [in, out]
  conv3d  torch [out, in, kt, kh, kw]  -> [kt, kh, kw, in, out]
  conv2d  torch [out, in, kh, kw]      -> [kh, kw, in, out]
  flatten torch [C, 1, 1(, 1)]         -> [C]   (VAE RMS gains)

`convert` is strict: any source key without a rule, any rule whose source is missing, and any
target parameter (or stacked slot) left unfilled raises one ValueError listing them all.

Reading streams tensor by tensor from memory-mapped files (the safetensors header is parsed
directly, no torch needed); each target array is allocated once and filled in place, so a 14B
model is never held twice. bfloat16 stays bfloat16 (`ml_dtypes`) unless a `dtype` is given.

Components (diffusers sub-folder -> module, key map, config parser):
  text_encoder  UMT5Encoder  umt5_key_map  UMT5Config.from_hf
  transformer   DiT          dit_key_map   dit_config_from_hf
  vae           WanVAE       vae_key_map   vae_config_from_hf
  transformer_2 DiT          dit_key_map   dit_config_from_hf  (Wan 2.2 A14B low-noise expert)
`load_component(src, name)` builds one straight from safetensors; `convert_folder` writes the
Orbax layout that `sora_jax.convert.checkpoint.load_wan` reads back.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from absl import logging

from sora_jax.convert.safetensors import SafetensorsFolder  # re-exported
from sora_jax.io.checkpoint import save_flat

_TRANSPOSES = {
    'none': None,
    'linear': (1, 0),
    'conv2d': (2, 3, 1, 0),
    'conv3d': (2, 3, 4, 1, 0),
    'flatten': None,  # RMS gains [C, 1, 1(, 1)] -> [C]
}


# ----------------------------------------------------------------------------- key maps


@dataclasses.dataclass(frozen=True)
class Rule:
    target: str  # flat NNX path, e.g. 'layers/q/kernel'
    layer: int | None = None  # slot on the stacked leading axis, None if not stacked
    transform: str = 'none'  # one of _TRANSPOSES


@dataclasses.dataclass(frozen=True)
class KeyMap:
    rules: Mapping[str, Rule]
    # Tied duplicates: alias source key -> primary source key. An alias is read only when its
    # primary is absent from the files (e.g. `encoder.embed_tokens.weight` vs `shared.weight`).
    aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)


def umt5_key_map(num_layers: int) -> KeyMap:
    """transformers `UMT5EncoderModel` state dict -> `sora_jax.models.umt5.UMT5Encoder`."""
    rules = {
        'shared.weight': Rule('shared/embedding'),
        'encoder.final_layer_norm.weight': Rule('final_norm/weight'),
    }
    for i in range(num_layers):
        p = f'encoder.block.{i}.layer'
        rules.update(
            {
                f'{p}.0.layer_norm.weight': Rule('layers/attn_norm/weight', i),
                f'{p}.0.SelfAttention.relative_attention_bias.weight': Rule(
                    'layers/rel_bias/embedding', i
                ),
                f'{p}.1.layer_norm.weight': Rule('layers/ffn_norm/weight', i),
            }
        )
        for name in 'qkvo':
            rules[f'{p}.0.SelfAttention.{name}.weight'] = Rule(f'layers/{name}/kernel', i, 'linear')
        for name in ('wi_0', 'wi_1', 'wo'):
            rules[f'{p}.1.DenseReluDense.{name}.weight'] = Rule(
                f'layers/{name}/kernel', i, 'linear'
            )
    return KeyMap(rules, {'encoder.embed_tokens.weight': 'shared.weight'})


def dit_key_map(depth: int, image: bool = False, image_pos: bool = False) -> KeyMap:
    """diffusers `WanTransformer3DModel` state dict -> `sora_jax.models.dit.DiT`. T2V by default;
    `image` adds the I2V keys (the image embedder, each block's attn2 add_k_proj / add_v_proj /
    norm_added_k), `image_pos` the FLF2V image position table."""
    rules = {
        'patch_embedding.weight': Rule('patch_embedding/kernel', transform='conv3d'),
        'patch_embedding.bias': Rule('patch_embedding/bias'),
        'condition_embedder.time_proj.weight': Rule(
            'condition_embedder/time_proj/kernel', transform='linear'
        ),
        'condition_embedder.time_proj.bias': Rule('condition_embedder/time_proj/bias'),
        'proj_out.weight': Rule('proj_out/kernel', transform='linear'),
        'proj_out.bias': Rule('proj_out/bias'),
        'scale_shift_table': Rule('scale_shift_table'),
    }
    for emb in ('time_embedder', 'text_embedder'):
        for lin in ('linear_1', 'linear_2'):
            src, dst = f'condition_embedder.{emb}.{lin}', f'condition_embedder/{emb}/{lin}'
            rules[f'{src}.weight'] = Rule(f'{dst}/kernel', transform='linear')
            rules[f'{src}.bias'] = Rule(f'{dst}/bias')
    linears = {f'{a}.{n}': f'{a}/{n}' for a in ('attn1', 'attn2') for n in ('to_q', 'to_k', 'to_v')}
    linears.update(
        {
            'attn1.to_out.0': 'attn1/to_out',
            'attn2.to_out.0': 'attn2/to_out',
            'ffn.net.0.proj': 'ffn/proj_in',
            'ffn.net.2': 'ffn/proj_out',
        }
    )
    for i in range(depth):
        p = f'blocks.{i}'
        rules[f'{p}.scale_shift_table'] = Rule('blocks/scale_shift_table', i)
        rules[f'{p}.norm2.weight'] = Rule('blocks/norm2/weight', i)
        rules[f'{p}.norm2.bias'] = Rule('blocks/norm2/bias', i)
        for a in ('attn1', 'attn2'):
            for n in ('norm_q', 'norm_k'):
                rules[f'{p}.{a}.{n}.weight'] = Rule(f'blocks/{a}/{n}/weight', i)
        for src, dst in linears.items():
            rules[f'{p}.{src}.weight'] = Rule(f'blocks/{dst}/kernel', i, 'linear')
            rules[f'{p}.{src}.bias'] = Rule(f'blocks/{dst}/bias', i)
    if image:
        rules.update(_dit_image_rules(depth, image_pos))
    return KeyMap(rules)


def _dit_image_rules(depth: int, image_pos: bool) -> dict[str, Rule]:
    """The I2V DiT's extra keys (diffusers `WanImageEmbedding` and the added key/value path)."""
    src, dst = 'condition_embedder.image_embedder', 'condition_embedder/image_embedder'
    rules = {}
    for s, d in (('norm1', 'norm1'), ('norm2', 'norm2')):
        rules[f'{src}.{s}.weight'] = Rule(f'{dst}/{d}/weight')
        rules[f'{src}.{s}.bias'] = Rule(f'{dst}/{d}/bias')
    for s, d in (('ff.net.0.proj', 'proj_in'), ('ff.net.2', 'proj_out')):
        rules[f'{src}.{s}.weight'] = Rule(f'{dst}/{d}/kernel', transform='linear')
        rules[f'{src}.{s}.bias'] = Rule(f'{dst}/{d}/bias')
    if image_pos:
        rules[f'{src}.pos_embed'] = Rule(f'{dst}/pos_embed')
    for i in range(depth):
        p = f'blocks.{i}.attn2'
        for n in ('add_k_proj', 'add_v_proj'):
            rules[f'{p}.{n}.weight'] = Rule(f'blocks/attn2/{n}/kernel', i, 'linear')
            rules[f'{p}.{n}.bias'] = Rule(f'blocks/attn2/{n}/bias', i)
        rules[f'{p}.norm_added_k.weight'] = Rule('blocks/attn2/norm_added_k/weight', i)
    return rules


def dit_config_from_hf(hf: Mapping[str, Any] | str, **overrides):
    """diffusers transformer `config.json` (dict, file or folder) -> `DiTConfig`."""
    from sora_jax.models.dit import DiTConfig

    hf = _read_json(hf)
    if hf.get('qk_norm', 'rms_norm_across_heads') != 'rms_norm_across_heads':
        raise ValueError(
            f"qk_norm={hf['qk_norm']!r}: only 'rms_norm_across_heads' (Wan 2.1) is supported."
        )
    dim = hf['num_attention_heads'] * hf['attention_head_dim']
    image_dim, kv_dim = hf.get('image_dim') or 0, hf.get('added_kv_proj_dim') or 0
    if bool(image_dim) != bool(kv_dim) or (kv_dim and kv_dim != dim):
        raise ValueError(
            f'image_dim={image_dim}, added_kv_proj_dim={kv_dim}: an image-to-video '
            f'Wan sets both, with added_kv_proj_dim = the model width {dim} (the '
            'embedded image tokens); a text-to-video one sets neither.'
        )
    kw = dict(
        patch_size=tuple(hf['patch_size']),
        in_channels=hf['in_channels'],
        out_channels=hf['out_channels'],
        num_heads=hf['num_attention_heads'],
        dim=hf['num_attention_heads'] * hf['attention_head_dim'],
        ffn_dim=hf['ffn_dim'],
        depth=hf['num_layers'],
        text_dim=hf['text_dim'],
        freq_dim=hf['freq_dim'],
        eps=hf.get('eps', 1e-6),
        cross_attn_norm=hf.get('cross_attn_norm', True),
    )
    if image_dim:  # Wan 2.1 I2V / FLF2V
        kw.update(image_dim=image_dim, image_pos_len=hf.get('pos_embed_seq_len') or 0)
    if hf.get('causal_chunk'):  # a causal generator (convert/causal_wan.py): block-causal chunks
        kw['causal_chunk'] = int(hf['causal_chunk'])
    kw.update(overrides)
    return DiTConfig.from_config(kw)


def vae_key_map(cfg) -> KeyMap:
    """diffusers `AutoencoderKLWan` state dict -> `sora_jax.models.vae.WanVAE` (Wan 2.1 layout,
    or Wan 2.2's with `cfg.is_residual`: `down_blocks.N.{resnets.M,downsampler}` and
    `up_blocks.N.{resnets.M,upsampler}`; the avg / dup shortcuts have no weights).

    Walks the module lists the way diffusers builds them (`WanEncoder3d` / `WanDecoder3d`), so
    the map follows from the config alone. torch RMS gains `[C, 1, 1(, 1)]` flatten to `[C]`;
    `resample.1` (the conv after the pad / upsample op) is our `resample`.
    """
    rules: dict[str, Rule] = {}

    def conv(src, dst, kind='conv3d'):
        rules[f'{src}.weight'] = Rule(f'{dst}/kernel', transform=kind)
        rules[f'{src}.bias'] = Rule(f'{dst}/bias')

    def resnet(src, dst, in_dim, out_dim):
        for n in ('norm1', 'norm2'):
            rules[f'{src}.{n}.gamma'] = Rule(f'{dst}/{n}/gamma', transform='flatten')
        conv(f'{src}.conv1', f'{dst}/conv1')
        conv(f'{src}.conv2', f'{dst}/conv2')
        if in_dim != out_dim:
            conv(f'{src}.conv_shortcut', f'{dst}/conv_shortcut')

    def attention(src, dst):
        rules[f'{src}.norm.gamma'] = Rule(f'{dst}/norm/gamma', transform='flatten')
        conv(f'{src}.to_qkv', f'{dst}/to_qkv', 'conv2d')
        conv(f'{src}.proj', f'{dst}/proj', 'conv2d')

    def resample(src, dst, mode):
        conv(f'{src}.resample.1', f'{dst}/resample', 'conv2d')
        if mode.endswith('3d'):
            conv(f'{src}.time_conv', f'{dst}/time_conv')

    def mid(src, dst, dim):
        resnet(f'{src}.resnets.0', f'{dst}/resnets/0', dim, dim)
        attention(f'{src}.attentions.0', f'{dst}/attentions/0')
        resnet(f'{src}.resnets.1', f'{dst}/resnets/1', dim, dim)

    def io(side):
        conv(f'{side}.conv_in', f'{side}/conv_in')
        conv(f'{side}.conv_out', f'{side}/conv_out')
        rules[f'{side}.norm_out.gamma'] = Rule(f'{side}/norm_out/gamma', transform='flatten')

    n_levels = len(cfg.dim_mult)
    dims = [cfg.base_dim * u for u in (1, *cfg.dim_mult)]
    idx, scale = 0, 1.0
    for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
        if cfg.is_residual:
            src, dst = f'encoder.down_blocks.{i}', f'encoder/down_blocks/{i}'
            for j in range(cfg.num_res_blocks):
                resnet(f'{src}.resnets.{j}', f'{dst}/resnets/{j}', in_dim, out_dim)
                in_dim = out_dim
            if i != n_levels - 1:
                resample(
                    f'{src}.downsampler',
                    f'{dst}/downsampler',
                    'downsample3d' if cfg.temperal_downsample[i] else 'downsample2d',
                )
            continue
        for _ in range(cfg.num_res_blocks):
            resnet(f'encoder.down_blocks.{idx}', f'encoder/down_blocks/{idx}', in_dim, out_dim)
            idx, in_dim = idx + 1, out_dim
            if scale in cfg.attn_scales:
                attention(f'encoder.down_blocks.{idx}', f'encoder/down_blocks/{idx}')
                idx += 1
        if i != n_levels - 1:
            mode = 'downsample3d' if cfg.temperal_downsample[i] else 'downsample2d'
            resample(f'encoder.down_blocks.{idx}', f'encoder/down_blocks/{idx}', mode)
            idx, scale = idx + 1, scale / 2.0
    mid('encoder.mid_block', 'encoder/mid_block', dims[-1])
    io('encoder')

    dec_dim = cfg.decoder_base_dim or cfg.base_dim
    dims = [dec_dim * u for u in (cfg.dim_mult[-1], *cfg.dim_mult[::-1])]
    up_time = tuple(cfg.temperal_downsample[::-1])
    mid('decoder.mid_block', 'decoder/mid_block', dims[0])
    for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
        if i > 0 and not cfg.is_residual:
            in_dim //= 2  # Wan 2.1: the upsampler halved the channels
        for j in range(cfg.num_res_blocks + 1):
            resnet(
                f'decoder.up_blocks.{i}.resnets.{j}',
                f'decoder/up_blocks/{i}/resnets/{j}',
                in_dim,
                out_dim,
            )
            in_dim = out_dim
        if i != n_levels - 1:
            up = 'upsampler' if cfg.is_residual else 'upsamplers.0'
            resample(
                f'decoder.up_blocks.{i}.{up}',
                f'decoder/up_blocks/{i}/{up.replace(".", "/")}',
                'upsample3d' if up_time[i] else 'upsample2d',
            )
    io('decoder')
    conv('quant_conv', 'quant_conv')
    conv('post_quant_conv', 'post_quant_conv')
    return KeyMap(rules)


def vae_config_from_hf(hf: Mapping[str, Any] | str, **overrides):
    """diffusers vae `config.json` (dict, file or folder) -> `VAEConfig` (Wan 2.1 or 2.2).

    `scale_factor_spatial` / `scale_factor_temporal` (what diffusers' pipelines size latents
    with) must equal the factors the layers give, else the folder is inconsistent: ValueError.
    """
    from sora_jax.models import vae

    hf = _read_json(hf)
    names = (
        'base_dim',
        'decoder_base_dim',
        'z_dim',
        'dim_mult',
        'num_res_blocks',
        'attn_scales',
        'temperal_downsample',
        'latents_mean',
        'latents_std',
        'in_channels',
        'out_channels',
        'is_residual',
        'patch_size',
    )
    kw = {k: hf[k] for k in names if k in hf}
    if kw.get('decoder_base_dim') == kw.get('base_dim', 96):
        kw['decoder_base_dim'] = None  # one width for both sides (Wan 2.1)
    kw.update(overrides)
    cfg = vae.from_config(kw)
    factors = {
        'scale_factor_spatial': 2 ** (len(cfg.dim_mult) - 1) * cfg.patch,
        'scale_factor_temporal': 2 ** sum(bool(t) for t in cfg.temperal_downsample),
    }
    for key, want in factors.items():
        if hf.get(key) is not None and hf[key] != want:
            raise ValueError(
                f'{key}={hf[key]} in the VAE config, but dim_mult={cfg.dim_mult}, '
                f'temperal_downsample={cfg.temperal_downsample}, patch_size='
                f'{cfg.patch_size} give {want}; fix {key} (or the layer settings) '
                'in config.json.'
            )
    return cfg


def _read_json(hf: Mapping[str, Any] | str) -> dict:
    if isinstance(hf, (str, os.PathLike)):
        path = os.path.join(hf, 'config.json') if os.path.isdir(hf) else hf
        with open(path) as f:
            return json.load(f)
    return dict(hf)


# ----------------------------------------------------------------------------- converting


def convert(
    reader: SafetensorsFolder | str,
    key_map: KeyMap,
    targets: Mapping[str, tuple[tuple[int, ...], Any]],
    dtype: Any = None,
) -> dict[str, np.ndarray]:
    """Streams the source tensors into new arrays shaped like `targets` (path -> (shape, dtype)).

    The output dtype is the source dtype (bf16 stays bf16) unless `dtype` is given.
    Raises ValueError naming every unmapped source key and every unfilled target.
    """
    if isinstance(reader, str):
        reader = SafetensorsFolder(reader)
    src = set(reader.keys())
    used = {k: r for k, r in key_map.rules.items() if k in src}
    for alias, primary in key_map.aliases.items():
        if alias in src and primary not in src:
            used[alias] = key_map.rules[primary]
    problems = []
    unmapped = sorted(src - set(key_map.rules) - set(key_map.aliases))
    if unmapped:
        problems.append(f'{len(unmapped)} source keys have no rule: {_abbrev(unmapped)}')
    bad_targets = sorted({r.target for r in key_map.rules.values()} - set(targets))
    if bad_targets:
        problems.append(
            f'rules name {len(bad_targets)} paths the model lacks: {_abbrev(bad_targets)}'
        )
    filled: dict[str, set] = {}
    for r in used.values():
        filled.setdefault(r.target, set()).add(r.layer)
    unfilled = []
    for path, (shape, _) in sorted(targets.items()):
        stacked = {r.layer for r in key_map.rules.values() if r.target == path} - {None}
        want = set(range(shape[0])) if stacked else {None}
        miss = want - filled.get(path, set())
        if miss:
            unfilled.append(path if None in miss else f'{path}[layers {sorted(miss)}]')
    if unfilled:
        problems.append(f'{len(unfilled)} target parameters left unfilled: {_abbrev(unfilled)}')
    if problems:
        raise ValueError(
            'Weight key map does not match: '
            + '; '.join(problems)
            + '. Check that the folder holds the right component and config.'
        )

    out: dict[str, np.ndarray] = {}
    for key in sorted(used, key=lambda k: (used[k].target, used[k].layer or 0)):
        rule = used[key]
        shape, _ = targets[rule.target]
        x = reader.get(key)
        perm = _TRANSPOSES[rule.transform]
        if rule.transform == 'flatten':
            x = x.reshape(-1)
        elif perm is not None:
            if x.ndim != len(perm):
                raise ValueError(f'{key}: shape {x.shape} is not a {rule.transform} weight.')
            x = x.transpose(perm)
        want = shape[1:] if rule.layer is not None else shape
        if tuple(x.shape) != tuple(want):
            raise ValueError(
                f'{key} -> {rule.target}: converted shape {x.shape} != model shape '
                f'{tuple(want)}; the config does not match the checkpoint.'
            )
        if rule.target not in out:
            out[rule.target] = np.empty(shape, dtype or x.dtype)
        if rule.layer is None:
            out[rule.target][...] = x
        else:
            out[rule.target][rule.layer] = x
    logging.info('converted %d tensors into %d parameters', len(used), len(out))
    return out


def _abbrev(items: list[str], n: int = 12) -> str:
    return ', '.join(items[:n]) + (f', ... (+{len(items) - n} more)' if len(items) > n else '')


# ----------------------------------------------------------------------------- NNX glue


def state_targets(abstract_state) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Flat `path -> (shape, dtype)` of an (abstract) NNX state."""
    from flax import nnx

    return {
        '/'.join(map(str, p)): (tuple(v.shape), v.dtype)
        for p, v in nnx.to_flat_state(abstract_state)
    }


def apply_to_state(state, flat: Mapping[str, np.ndarray]):
    """Returns `state` with every leaf replaced by `flat[path]` (as jax arrays)."""
    import jax.numpy as jnp
    from flax import nnx

    flat_state = nnx.to_flat_state(state)
    paths = {'/'.join(map(str, p)) for p, _ in flat_state}
    if paths != set(flat):
        raise ValueError(
            f'State/params mismatch: missing {_abbrev(sorted(paths - set(flat)))}; '
            f'extra {_abbrev(sorted(set(flat) - paths))}.'
        )
    leaves = []
    for p, v in flat_state:
        arr = flat['/'.join(map(str, p))]
        if tuple(arr.shape) != tuple(v.shape):
            raise ValueError(f'{"/".join(map(str, p))}: array {arr.shape} != state {v.shape}.')
        leaves.append((p, v.replace(jnp.asarray(arr))))
    return nnx.from_flat_state(leaves)


def build(make_model: Callable[[], Any], flat: Mapping[str, np.ndarray]):
    """Creates the model abstractly (no init memory) and fills it with `flat`."""
    from flax import nnx

    graphdef, abstract = nnx.split(nnx.eval_shape(make_model))
    return nnx.merge(graphdef, apply_to_state(abstract, flat))


# ----------------------------------------------------------------------------- components

COMPONENTS = ('text_encoder', 'transformer', 'vae')  # diffusers sub-folder names
# Converted when `src` has them (`convert_folder`): Wan 2.2 A14B's low-noise expert with the
# default components, Wan 2.1 I2V's CLIP image encoder with the transformer.
OPTIONAL_COMPONENTS = ('transformer_2', 'image_encoder')


def component_spec(component: str, hf_config: Mapping[str, Any] | str, **overrides):
    """(our config, model factory, KeyMap) for one Wan component from its HF `config.json`."""
    from flax import nnx

    if component == 'text_encoder':
        from sora_jax.models import umt5

        cfg = umt5.UMT5Config.from_hf(_read_json(hf_config), **overrides)
        return cfg, lambda: umt5.UMT5Encoder(cfg, rngs=nnx.Rngs(0)), umt5_key_map(cfg.num_layers)
    if component in (
        'transformer',
        'transformer_2',
    ):  # transformer_2: Wan 2.2 A14B low-noise expert
        from sora_jax.models.dit import DiT

        cfg = dit_config_from_hf(hf_config, **overrides)
        return (
            cfg,
            lambda: DiT(cfg, rngs=nnx.Rngs(0)),
            dit_key_map(cfg.depth, image=cfg.image_dim > 0, image_pos=cfg.image_pos_len > 0),
        )
    if component == 'vae':
        from sora_jax.models.vae import WanVAE

        cfg = vae_config_from_hf(hf_config, **overrides)
        return cfg, lambda: WanVAE(cfg, rngs=nnx.Rngs(0)), vae_key_map(cfg)
    if component == 'image_encoder':  # Wan 2.1 I2V: transformers CLIPVisionModel
        from sora_jax.convert.clip_vision import clip_vision_key_map
        from sora_jax.models import clip_vision

        cfg = clip_vision.CLIPVisionConfig.from_hf(_read_json(hf_config), **overrides)
        return (
            cfg,
            lambda: clip_vision.CLIPVisionEncoder(cfg, rngs=nnx.Rngs(0)),
            clip_vision_key_map(cfg.num_hidden_layers),
        )
    raise ValueError(
        f'component {component!r} is not convertible; choose from '
        f'{COMPONENTS + OPTIONAL_COMPONENTS}.'
    )


def _targets(make) -> dict[str, tuple[tuple[int, ...], Any]]:
    from flax import nnx

    return state_targets(nnx.split(nnx.eval_shape(make))[1])


def load_component(src: str, component: str, weights_dtype: Any = None, **config_overrides):
    """A diffusers sub-folder (config.json + safetensors) -> a ready NNX module.

    weights_dtype: cast the weights (None: keep the checkpoint dtype)."""
    _, make, key_map = component_spec(component, src, **config_overrides)
    return build(make, convert(src, key_map, _targets(make), dtype=weights_dtype))


def load_umt5(src: str, dtype: Any = None, **config_overrides):
    """Wan `text_encoder/` folder -> a ready `UMT5Encoder` (dtype: the checkpoint's by default)."""
    import jax.numpy as jnp

    if dtype is None:
        dtype = SafetensorsFolder(src).dtype('encoder.final_layer_norm.weight')
    config_overrides.setdefault('param_dtype', jnp.dtype(dtype))
    config_overrides.setdefault('dtype', jnp.dtype(dtype))
    return load_component(src, 'text_encoder', dtype, **config_overrides)


def load_dit(src: str, **config_overrides):
    """Wan `transformer/` folder -> a ready `DiT` (params keep the checkpoint dtype)."""
    return load_component(src, 'transformer', **config_overrides)


def load_vae(src: str, dtype: Any = np.float32, **config_overrides):
    """Wan `vae/` folder -> a ready `WanVAE` (float32 by default, as Wan runs its VAE)."""
    return load_component(src, 'vae', dtype, **config_overrides)


def convert_component(src: str, dst: str, component: str) -> dict[str, np.ndarray]:
    """`<wan>/<component>` -> Orbax params at `dst/params` + the HF config.json beside them."""
    _, make, key_map = component_spec(component, src)
    flat = convert(src, key_map, _targets(make))
    os.makedirs(dst, exist_ok=True)
    with (
        open(os.path.join(src, 'config.json')) as f,
        open(os.path.join(dst, 'config.json'), 'w') as g,
    ):
        g.write(f.read())
    save_flat(flat, os.path.join(dst, 'params'))
    return flat


def convert_text_encoder(src: str, dst: str) -> dict[str, np.ndarray]:
    return convert_component(src, dst, 'text_encoder')


def convert_transformer(src: str, dst: str) -> dict[str, np.ndarray]:
    return convert_component(src, dst, 'transformer')


def convert_vae(src: str, dst: str) -> dict[str, np.ndarray]:
    return convert_component(src, dst, 'vae')


def convert_image_encoder(src: str, dst: str) -> dict[str, np.ndarray]:
    return convert_component(src, dst, 'image_encoder')


# Component name (diffusers folder) -> converter (src folder, dst folder).
CONVERTERS: dict[str, Callable[[str, str], Any]] = {
    'text_encoder': convert_text_encoder,
    'transformer': convert_transformer,
    'vae': convert_vae,
    'transformer_2': convert_transformer,  # Wan 2.2 A14B: the low-noise expert, same layout
    'image_encoder': convert_image_encoder,
}
# Pipeline settings copied from `src/model_index.json` (diffusers `WanPipeline` config).
PIPELINE_KEYS = ('boundary_ratio', 'expand_timesteps')


def pipeline_settings(folder: str) -> dict[str, Any]:
    """`boundary_ratio` / `expand_timesteps` of a (diffusers or converted) Wan folder's
    model_index.json; {} when it has none (a Wan 2.1 folder needs neither)."""
    path = os.path.join(folder, 'model_index.json')
    if not os.path.isfile(path):
        return {}
    index = _read_json(path)
    return {k: index[k] for k in PIPELINE_KEYS if index.get(k) is not None}


def convert_folder(src: str, dst: str, components: Iterable[str] = COMPONENTS) -> None:
    """Converts the named diffusers sub-folders of `src` into `dst/<component>/{params,config.json}`.

    The `tokenizer/` folder is copied along with the text encoder, and `model_index.json` (the
    pipeline settings: Wan 2.2's `boundary_ratio`, `expand_timesteps`) with any component. With
    the default components, `transformer_2/` (Wan 2.2 A14B's low-noise expert) is converted too
    when `src` has it. An image-to-video folder's `image_encoder/` (CLIP) is converted, and its
    `image_processor/` copied, along with the transformer.
    """
    components = list(components)
    if tuple(components) == COMPONENTS:
        components += [c for c in OPTIONAL_COMPONENTS if os.path.isdir(os.path.join(src, c))]
    if (
        'transformer' in components
        and 'image_encoder' not in components
        and os.path.isdir(os.path.join(src, 'image_encoder'))
    ):
        components.append('image_encoder')
    for comp in components:
        if comp not in CONVERTERS:
            raise ValueError(
                f'component {comp!r} is not convertible; choose from {sorted(CONVERTERS)}.'
            )
        if not os.path.isdir(os.path.join(src, comp)):
            raise ValueError(
                f'{os.path.join(src, comp)!r} does not exist; --src must be a '
                f'diffusers Wan folder holding {sorted(CONVERTERS)} sub-folders.'
            )
    for comp in components:
        logging.info('converting %s', comp)
        CONVERTERS[comp](os.path.join(src, comp), os.path.join(dst, comp))
    import shutil

    tok = os.path.join(src, 'tokenizer')
    if os.path.isdir(tok) and 'text_encoder' in components:
        shutil.copytree(tok, os.path.join(dst, 'tokenizer'), dirs_exist_ok=True)
    if os.path.isfile(os.path.join(src, 'model_index.json')) and components:
        shutil.copyfile(
            os.path.join(src, 'model_index.json'), os.path.join(dst, 'model_index.json')
        )
    proc = os.path.join(src, 'image_processor')
    if os.path.isdir(proc) and 'image_encoder' in components:
        shutil.copytree(proc, os.path.join(dst, 'image_processor'), dirs_exist_ok=True)
