"""Wan 2.1 weights (diffusers / HF safetensors folders) -> sora_jax parameter pytrees.

A converted model is a flat dict `'a/b/kernel' -> np.ndarray` in the layout of the NNX state
(`nnx.to_flat_state` paths joined by '/'), applied onto an abstract NNX state. Each model has a
small key-map function returning `{source key: Rule}`; a Rule names the target path, the slot on
a stacked leading layer axis (scanned blocks) and the layout transpose:

  linear  torch [out, in]              -> [in, out]
  conv3d  torch [out, in, kt, kh, kw]  -> [kt, kh, kw, in, out]
  conv2d  torch [out, in, kh, kw]      -> [kh, kw, in, out]

`convert` is strict: any source key without a rule, any rule whose source is missing, and any
target parameter (or stacked slot) left unfilled raises one ValueError listing them all.

Reading streams tensor by tensor from memory-mapped files (the safetensors header is parsed
directly, no torch needed); each target array is allocated once and filled in place, so a 14B
model is never held twice. bfloat16 stays bfloat16 (`ml_dtypes`) unless a `dtype` is given.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import struct
from typing import Any, Callable, Iterable, Mapping

import ml_dtypes
import numpy as np
from absl import logging

_ST_DTYPES = {
    'F64': np.float64, 'F32': np.float32, 'F16': np.float16, 'BF16': ml_dtypes.bfloat16,
    'F8_E4M3': ml_dtypes.float8_e4m3fn, 'F8_E5M2': ml_dtypes.float8_e5m2,
    'I64': np.int64, 'I32': np.int32, 'I16': np.int16, 'I8': np.int8, 'U8': np.uint8,
    'BOOL': np.bool_,
}

_TRANSPOSES = {
    'none': None,
    'linear': (1, 0),
    'conv2d': (2, 3, 1, 0),
    'conv3d': (2, 3, 4, 1, 0),
}


# ----------------------------------------------------------------------------- reading


class SafetensorsFolder:
    """Lazy reader over a folder of safetensors: one file, or shards + `*.safetensors.index.json`.

    `get(key)` returns a read-only memory-mapped view (no copy, no torch); `shape`/`dtype` come
    from the headers alone.
    """

    def __init__(self, path: str):
        if os.path.isfile(path):
            files = [path]
        elif os.path.isdir(path):
            files = sorted(glob.glob(os.path.join(path, '*.safetensors')))
        else:
            raise ValueError(f'{path!r} does not exist; pass a folder of *.safetensors files '
                             '(e.g. <wan>/text_encoder) or one .safetensors file.')
        if not files:
            raise ValueError(f'No *.safetensors in {path!r} (found: {sorted(os.listdir(path))}).')
        index = glob.glob(os.path.join(path, '*.safetensors.index.json')) if os.path.isdir(path) else []
        if len(index) > 1:
            raise ValueError(f'Several index files in {path!r}: {index}; keep one.')
        self._entries: dict[str, tuple[str, dict]] = {}
        for f in files:
            for key, info in _read_header(f).items():
                if key in self._entries:
                    raise ValueError(f'Tensor {key!r} is in both {self._entries[key][0]} and {f}.')
                self._entries[key] = (f, info)
        if index:
            with open(index[0]) as fh:
                weight_map = json.load(fh)['weight_map']
            base = os.path.dirname(index[0])
            missing = {k for k, f in weight_map.items()
                       if k not in self._entries or
                       os.path.abspath(self._entries[k][0]) != os.path.abspath(os.path.join(base, f))}
            if missing:
                raise ValueError(f'{index[0]} lists {len(missing)} tensors not found in its shards '
                                 f'(e.g. {sorted(missing)[:5]}); the download is incomplete.')
        self._maps: dict[str, np.memmap] = {}

    def keys(self) -> list[str]:
        return sorted(self._entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._entries[key][1]['shape'])

    def dtype(self, key: str) -> np.dtype:
        return np.dtype(_ST_DTYPES[self._entries[key][1]['dtype']])

    def get(self, key: str) -> np.ndarray:
        fname, info = self._entries[key]
        if fname not in self._maps:
            self._maps[fname] = np.memmap(fname, dtype=np.uint8, mode='r')
        start, end = info['data_offsets']
        base = info['_base']
        raw = self._maps[fname][base + start: base + end]
        return raw.view(self.dtype(key)).reshape(self.shape(key))


def _read_header(fname: str) -> dict[str, dict]:
    with open(fname, 'rb') as f:
        (n,) = struct.unpack('<Q', f.read(8))
        header = json.loads(f.read(n))
    header.pop('__metadata__', None)
    for key, info in header.items():
        if info['dtype'] not in _ST_DTYPES:
            raise ValueError(f'{fname}: tensor {key!r} has unsupported dtype {info["dtype"]}.')
        info['_base'] = 8 + n
    return header


# ----------------------------------------------------------------------------- key maps


@dataclasses.dataclass(frozen=True)
class Rule:
    target: str                 # flat NNX path, e.g. 'layers/q/kernel'
    layer: int | None = None    # slot on the stacked leading axis, None if not stacked
    transform: str = 'none'     # one of _TRANSPOSES


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
        rules.update({
            f'{p}.0.layer_norm.weight': Rule('layers/attn_norm/weight', i),
            f'{p}.0.SelfAttention.relative_attention_bias.weight': Rule('layers/rel_bias/embedding', i),
            f'{p}.1.layer_norm.weight': Rule('layers/ffn_norm/weight', i),
        })
        for name in 'qkvo':
            rules[f'{p}.0.SelfAttention.{name}.weight'] = Rule(f'layers/{name}/kernel', i, 'linear')
        for name in ('wi_0', 'wi_1', 'wo'):
            rules[f'{p}.1.DenseReluDense.{name}.weight'] = Rule(f'layers/{name}/kernel', i, 'linear')
    return KeyMap(rules, {'encoder.embed_tokens.weight': 'shared.weight'})


def dit_key_map(depth: int) -> KeyMap:
    """diffusers `WanTransformer3DModel` (T2V) state dict -> `sora_jax.models.dit.DiT`."""
    rules = {
        'patch_embedding.weight': Rule('patch_embedding/kernel', transform='conv3d'),
        'patch_embedding.bias': Rule('patch_embedding/bias'),
        'condition_embedder.time_proj.weight': Rule('condition_embedder/time_proj/kernel',
                                                    transform='linear'),
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
    linears.update({'attn1.to_out.0': 'attn1/to_out', 'attn2.to_out.0': 'attn2/to_out',
                    'ffn.net.0.proj': 'ffn/proj_in', 'ffn.net.2': 'ffn/proj_out'})
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
    return KeyMap(rules)


def dit_config_from_hf(hf: Mapping[str, Any] | str, **overrides):
    """diffusers transformer `config.json` (dict, file or folder) -> `DiTConfig`."""
    from sora_jax.models.dit import DiTConfig
    if isinstance(hf, (str, os.PathLike)):
        path = os.path.join(hf, 'config.json') if os.path.isdir(hf) else hf
        with open(path) as f:
            hf = json.load(f)
    if hf.get('qk_norm', 'rms_norm_across_heads') != 'rms_norm_across_heads':
        raise ValueError(f"qk_norm={hf['qk_norm']!r}: only 'rms_norm_across_heads' (Wan 2.1) is "
                         'supported.')
    if hf.get('image_dim') or hf.get('added_kv_proj_dim'):
        raise ValueError('image-to-video Wan (image_dim / added_kv_proj_dim set) is not supported '
                         'yet; convert a T2V checkpoint.')
    kw = dict(patch_size=tuple(hf['patch_size']), in_channels=hf['in_channels'],
              out_channels=hf['out_channels'], num_heads=hf['num_attention_heads'],
              dim=hf['num_attention_heads'] * hf['attention_head_dim'], ffn_dim=hf['ffn_dim'],
              depth=hf['num_layers'], text_dim=hf['text_dim'], freq_dim=hf['freq_dim'],
              eps=hf.get('eps', 1e-6), cross_attn_norm=hf.get('cross_attn_norm', True))
    kw.update(overrides)
    return DiTConfig.from_config(kw)


# ----------------------------------------------------------------------------- converting


def convert(reader: SafetensorsFolder | str, key_map: KeyMap,
            targets: Mapping[str, tuple[tuple[int, ...], Any]], dtype: Any = None
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
        problems.append(f'rules name {len(bad_targets)} paths the model lacks: {_abbrev(bad_targets)}')
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
        raise ValueError('Weight key map does not match: ' + '; '.join(problems) +
                         '. Check that the folder holds the right component and config.')

    out: dict[str, np.ndarray] = {}
    for key in sorted(used, key=lambda k: (used[k].target, used[k].layer or 0)):
        rule = used[key]
        shape, _ = targets[rule.target]
        x = reader.get(key)
        perm = _TRANSPOSES[rule.transform]
        if perm is not None:
            if x.ndim != len(perm):
                raise ValueError(f'{key}: shape {x.shape} is not a {rule.transform} weight.')
            x = x.transpose(perm)
        want = shape[1:] if rule.layer is not None else shape
        if tuple(x.shape) != tuple(want):
            raise ValueError(f'{key} -> {rule.target}: converted shape {x.shape} != model shape '
                             f'{tuple(want)}; the config does not match the checkpoint.')
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
    return {'/'.join(map(str, p)): (tuple(v.shape), v.dtype)
            for p, v in nnx.to_flat_state(abstract_state)}


def apply_to_state(state, flat: Mapping[str, np.ndarray]):
    """Returns `state` with every leaf replaced by `flat[path]` (as jax arrays)."""
    import jax.numpy as jnp
    from flax import nnx
    flat_state = nnx.to_flat_state(state)
    paths = {'/'.join(map(str, p)) for p, _ in flat_state}
    if paths != set(flat):
        raise ValueError(f'State/params mismatch: missing {_abbrev(sorted(paths - set(flat)))}; '
                         f'extra {_abbrev(sorted(set(flat) - paths))}.')
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


def load_umt5(src: str, dtype: Any = None, **config_overrides):
    """Wan `text_encoder/` folder (config.json + safetensors) -> a ready `UMT5Encoder`."""
    from flax import nnx
    from sora_jax.models import umt5
    reader = SafetensorsFolder(src)
    if dtype is None:
        dtype = reader.dtype('encoder.final_layer_norm.weight')
    config_overrides.setdefault('param_dtype', dtype)
    config_overrides.setdefault('dtype', dtype)
    cfg = umt5.UMT5Config.from_hf(src, **config_overrides)
    make = lambda: umt5.UMT5Encoder(cfg, rngs=nnx.Rngs(0))
    targets = state_targets(nnx.split(nnx.eval_shape(make))[1])
    return build(make, convert(reader, umt5_key_map(cfg.num_layers), targets, dtype=dtype))


# ----------------------------------------------------------------------------- Orbax


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


def convert_text_encoder(src: str, dst: str) -> dict[str, np.ndarray]:
    """`<wan>/text_encoder` -> Orbax params at `dst/params` + the HF config.json beside them."""
    from flax import nnx
    from sora_jax.models import umt5
    cfg = umt5.UMT5Config.from_hf(src)
    make = lambda: umt5.UMT5Encoder(cfg, rngs=nnx.Rngs(0))
    targets = state_targets(nnx.split(nnx.eval_shape(make))[1])
    flat = convert(src, umt5_key_map(cfg.num_layers), targets)
    _write(src, dst, flat)
    return flat


def load_dit(src: str, **config_overrides):
    """Wan `transformer/` folder -> a ready `DiT` (params keep the checkpoint dtype)."""
    from flax import nnx
    from sora_jax.models.dit import DiT
    cfg = dit_config_from_hf(src, **config_overrides)
    make = lambda: DiT(cfg, rngs=nnx.Rngs(0))
    targets = state_targets(nnx.split(nnx.eval_shape(make))[1])
    return build(make, convert(src, dit_key_map(cfg.depth), targets))


def convert_transformer(src: str, dst: str) -> dict[str, np.ndarray]:
    """`<wan>/transformer` -> Orbax params at `dst/params` + the diffusers config.json beside them."""
    from flax import nnx
    from sora_jax.models.dit import DiT
    cfg = dit_config_from_hf(src)
    targets = state_targets(nnx.split(nnx.eval_shape(lambda: DiT(cfg, rngs=nnx.Rngs(0))))[1])
    flat = convert(src, dit_key_map(cfg.depth), targets)
    _write(src, dst, flat)
    return flat


def _write(src: str, dst: str, flat: Mapping[str, np.ndarray]) -> None:
    os.makedirs(dst, exist_ok=True)
    with open(os.path.join(src, 'config.json')) as f, \
         open(os.path.join(dst, 'config.json'), 'w') as g:
        g.write(f.read())
    save_params(flat, os.path.join(dst, 'params'))


# Component name (diffusers folder) -> converter. The VAE joins once models/vae.py lands.
CONVERTERS: dict[str, Callable[[str, str], Any]] = {
    'text_encoder': convert_text_encoder,
    'transformer': convert_transformer,
}


def convert_folder(src: str, dst: str, components: Iterable[str]) -> None:
    """Converts the named diffusers sub-folders of `src` into `dst/<component>/`."""
    for comp in components:
        if comp not in CONVERTERS:
            raise ValueError(f'component {comp!r} is not convertible yet; choose from '
                             f'{sorted(CONVERTERS)}.')
        logging.info('converting %s', comp)
        CONVERTERS[comp](os.path.join(src, comp), os.path.join(dst, comp))
    tok = os.path.join(src, 'tokenizer')
    if os.path.isdir(tok) and 'text_encoder' in components:
        import shutil
        shutil.copytree(tok, os.path.join(dst, 'tokenizer'), dirs_exist_ok=True)
