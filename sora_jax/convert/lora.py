"""LoRA files people share for Wan 2.1 <-> sora_jax adapters (safetensors, no torch).

Layouts read (block N, a prefix `transformer.` / `diffusion_model.` or none):
  diffusers / PEFT  blocks.N.attn1.to_q.lora_A.weight [r, in], .lora_B.weight [out, r]
                    modules attn{1,2}.to_{q,k,v}, attn{1,2}.to_out.0, ffn.net.0.proj, ffn.net.2
  original Wan      blocks.N.self_attn.q.lora_A.weight / lora_B, or .lora_down.weight /
                    .lora_up.weight, with an optional .alpha (scalar)
                    modules self_attn.{q,k,v,o}, cross_attn.{q,k,v,o}, ffn.0, ffn.2
  distilled / extracted  (LightX2V's step-distill LoRAs, Kijai's CausVid and LightX2V
                    extractions; `diffusion_model.` keys in the original-Wan names) the low-rank
                    pairs above on any linear of the DiT (also cross_attn.k_img / v_img,
                    text_embedding.{0,2}, time_embedding.{0,2}, time_projection.1, head.head),
                    and full-weight deltas: `.diff` (added to the module's weight: norms' gains,
                    e.g. blocks.N.norm3.diff, self_attn.norm_q.diff), `.diff_b` (added to its
                    bias) and `.diff_m` (added to the modulation table, blocks.N.diff_m /
                    head.diff_m), as LightX2V's own loader (`lightx2v/utils/lora_loader.py`)
                    applies them: `weight += scale * diff`.
The update of a module is `scale * alpha / r * B @ A` (torch layout, [out, in]); without an
alpha, alpha = r (scale 1), as diffusers and PEFT do. Any other key is an error listing them.
diffusers' converter (`_convert_non_diffusers_wan_lora_to_diffusers`) drops the norms' `.diff`
/ `.diff_b` (zero in the published files) and the other `.diff` keys; here every delta is added.

An adapter is `{module: {block: (a [in, r], b [r, out])}}` (module a path in
`models.lora.MODULES`; the sora_jax kernel layout [in, out]) with the whole scale folded into
b, so `x @ kernel + x @ a @ b` is the adapted layer; dense updates of any other parameter
(the deltas above, and low-rank pairs outside `MODULES`, as B @ A) sit under the key `DELTA`:
`{DELTA: {(flat param path, block or None): delta in the sora_jax layout}}`, always merged
into the weights (also when the low-rank part is kept separate). Several adapters are
  merged   `merge(params, adapters)`: kernels += a @ b (no cost at sampling), or
  kept     `stack(adapters, depth)`: one LoRALinear per module whose rank is the sum of the
           files' ranks (A and B concatenated, blocks a file lacks are zero): exact, and
           removable (`TextToVideo.set_loras([])`).
`save` writes the diffusers layout (`transformer.blocks.N.attn1.to_q.lora_A.weight`, scale folded
into lora_B) that `WanPipeline.load_lora_weights` reads.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from typing import Iterable, Mapping

import numpy as np

from sora_jax.convert.safetensors import _ST_DTYPES, SafetensorsFolder
from sora_jax.models.lora import MODULES

Adapter = dict[str, dict]
DELTA = 'delta'  # the adapter key of dense parameter updates (see the module docstring)

_DIFFUSERS = {
    'attn1.to_q': 'attn1.to_q',
    'attn1.to_k': 'attn1.to_k',
    'attn1.to_v': 'attn1.to_v',
    'attn1.to_out.0': 'attn1.to_out',
    'attn2.to_q': 'attn2.to_q',
    'attn2.to_k': 'attn2.to_k',
    'attn2.to_v': 'attn2.to_v',
    'attn2.to_out.0': 'attn2.to_out',
    'ffn.net.0.proj': 'ffn.proj_in',
    'ffn.net.2': 'ffn.proj_out',
}
_WAN = {
    f'{w}.{s}': f'{a}.{m}'
    for w, a in (('self_attn', 'attn1'), ('cross_attn', 'attn2'))
    for s, m in (('q', 'to_q'), ('k', 'to_k'), ('v', 'to_v'), ('o', 'to_out'))
}
_WAN.update({'ffn.0': 'ffn.proj_in', 'ffn.2': 'ffn.proj_out'})
_SOURCE = {**_DIFFUSERS, **_WAN}
_TO_DIFFUSERS = {v: k for k, v in _DIFFUSERS.items()}
_KEY = re.compile(
    r'^(?:transformer\.|diffusion_model\.)?(?:blocks\.(\d+)\.)?(.+?)\.'
    r'(lora_A\.weight|lora_B\.weight|lora_down\.weight|lora_up\.weight|alpha|diff|diff_b)$'
)
_KEY_M = re.compile(r'^(?:transformer\.|diffusion_model\.)?(?:blocks\.(\d+)\.)?(head\.)?diff_m$')
_KINDS = {
    'lora_down.weight': 'A',
    'lora_A.weight': 'A',
    'lora_up.weight': 'B',
    'lora_B.weight': 'B',
    'alpha': 'alpha',
    'diff': 'diff',
    'diff_b': 'diff_b',
    'diff_m': 'diff_m',
}
# original-Wan module -> diffusers module (the names `convert.wan.dit_key_map` maps), for the
# parameters outside MODULES; blocks.N. is stripped before the lookup.
_WAN_BLOCK = {
    'self_attn.norm_q': 'attn1.norm_q',
    'self_attn.norm_k': 'attn1.norm_k',
    'cross_attn.norm_q': 'attn2.norm_q',
    'cross_attn.norm_k': 'attn2.norm_k',
    'cross_attn.k_img': 'attn2.add_k_proj',
    'cross_attn.v_img': 'attn2.add_v_proj',
    'cross_attn.norm_k_img': 'attn2.norm_added_k',
    'norm3': 'norm2',  # Wan's cross-attention LayerNorm (norm1 / norm2 have no weights)
}
ORIGINAL_TOP = {  # original-Wan top-level module -> diffusers module (I2V: img_emb)
    'patch_embedding': 'patch_embedding',
    'text_embedding.0': 'condition_embedder.text_embedder.linear_1',
    'text_embedding.2': 'condition_embedder.text_embedder.linear_2',
    'time_embedding.0': 'condition_embedder.time_embedder.linear_1',
    'time_embedding.2': 'condition_embedder.time_embedder.linear_2',
    'time_projection.1': 'condition_embedder.time_proj',
    'head.head': 'proj_out',
    'img_emb.proj.0': 'condition_embedder.image_embedder.norm1',
    'img_emb.proj.1': 'condition_embedder.image_embedder.ff.net.0.proj',
    'img_emb.proj.3': 'condition_embedder.image_embedder.ff.net.2',
    'img_emb.proj.4': 'condition_embedder.image_embedder.norm2',
}


MAX_HEADER_BYTES = 100 << 20  # a LoRA header lists a few thousand tensors: far below this


def parse_spec(spec: str) -> tuple[str, float]:
    """'FILE[:scale]' -> (FILE, scale); scale 1 when omitted; a non-finite scale
    ('FILE:nan', 'FILE:inf') is a ValueError."""
    path, sep, scale = spec.rpartition(':')
    if sep and path:
        try:
            value = float(scale)
        except ValueError:
            return spec, 1.0
        if not math.isfinite(value):
            raise ValueError(
                f'--lora={spec!r}: the scale {scale!r} is not a finite number; write '
                f'{path}:0.8 (or no scale for 1).'
            )
        return path, value
    return spec, 1.0


def check_file(path: str) -> dict:
    """The safetensors header of `path`, checked against the file before any tensor is read:
    the 8-byte length fits the file, the header is a JSON object, every tensor's dtype is
    known and its byte range lies inside the file and matches its shape. Every error is a
    ValueError that names the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f'LoRA file {path!r} does not exist; pass a .safetensors file.')
    size = os.path.getsize(path)
    fix = 'it is not a safetensors file, or it is truncated; download or export it again'
    with open(path, 'rb') as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f'LoRA file {path}: {size} bytes, too short for a header; {fix}.')
        (n,) = struct.unpack('<Q', head)
        if n > min(size - 8, MAX_HEADER_BYTES):
            raise ValueError(
                f'LoRA file {path}: its header claims {n} bytes but the file has {size}; {fix}.'
            )
        try:
            header = json.loads(f.read(n))
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            raise ValueError(f'LoRA file {path}: the header is not JSON ({e}); {fix}.') from None
    if not isinstance(header, dict):
        raise ValueError(f'LoRA file {path}: the header is not a JSON object; {fix}.')
    data = size - 8 - n
    for key, info in header.items():
        if key == '__metadata__':
            continue
        try:
            dtype = np.dtype(_ST_DTYPES[info['dtype']])
            shape = [int(d) for d in info['shape']]
            start, end = (int(o) for o in info['data_offsets'])
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f'LoRA file {path}: tensor {key!r} has a malformed header entry '
                f'{str(info)[:200]}; {fix}.'
            ) from None
        if min(shape, default=0) < 0 or not 0 <= start <= end <= data:
            raise ValueError(
                f'LoRA file {path}: tensor {key!r} lies at bytes {start}..{end} of a '
                f'{data}-byte data section; {fix}.'
            )
        if end - start != math.prod(shape) * dtype.itemsize:
            raise ValueError(
                f'LoRA file {path}: tensor {key!r} of shape {shape} ({info["dtype"]}) has '
                f'{end - start} bytes; {fix}.'
            )
    return header


def read(path: str, scale: float = 1.0) -> Adapter:
    """A LoRA safetensors file (any layout above) -> adapter with `scale * alpha / r` in b.
    The file is checked first (`check_file`); a tensor with a NaN or Inf is a ValueError
    naming the file and the tensor."""
    if not math.isfinite(scale):
        raise ValueError(f'LoRA file {path}: scale {scale} is not finite; pass e.g. 0.8.')
    check_file(path)
    reader = SafetensorsFolder(path)
    parts: dict[tuple[str, int | None], dict[str, np.ndarray]] = {}
    unknown = []
    for key in reader.keys():
        m, mm = _KEY.match(key), _KEY_M.match(key)
        if mm:
            block, module, kind = mm.group(1), 'head' if mm.group(2) else 'modulation', 'diff_m'
        elif m:
            block, module, kind = m.group(1), m.group(2), _KINDS[m.group(3)]
        else:
            unknown.append(key)
            continue
        slot = parts.setdefault((module, None if block is None else int(block)), {})
        if kind in slot:
            raise ValueError(
                f'{path}: {key} repeats the {kind} of block {block} '
                f'{module} (two layouts in one file?).'
            )
        value = np.asarray(reader.get(key), np.float32)
        if not np.all(np.isfinite(value)):
            raise ValueError(
                f'LoRA file {path}: {key} holds {int(np.sum(~np.isfinite(value)))} non-finite '
                'values (NaN / Inf); the file is corrupted or its training diverged.'
            )
        slot[kind] = value
    if not parts and not unknown:
        raise ValueError(f'{path} holds no LoRA weights.')
    out: Adapter = {}
    deltas: dict[tuple[str, int | None], np.ndarray] = {}
    rules = _dit_rules(1 + max((b for _, b in parts if b is not None), default=0))
    for (module, block), p in sorted(parts.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        lowrank = {'A', 'B', 'alpha'} & set(p)
        block_module = _SOURCE.get(module) if block is not None else None
        if lowrank:
            if 'A' not in p or 'B' not in p:
                have = sorted(k for k in p if k in ('A', 'B'))
                raise ValueError(
                    f'{path}: block {block} {module} has only {have}; lora_A and lora_B both '
                    'needed.'
                )
            a, b = p['A'], p['B']  # torch: A [r, in], B [out, r]
            if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
                raise ValueError(
                    f'{path}: block {block} {module}: lora_A {a.shape} and lora_B '
                    f'{b.shape} are not [r, in] and [out, r].'
                )
            r = a.shape[0]
            s = scale * (float(np.asarray(p['alpha']).reshape(())) / r if 'alpha' in p else 1.0)
            if block_module is not None:
                out.setdefault(block_module, {})[block] = (a.T.copy(), (b.T * s).astype(np.float32))
            else:
                rule = rules.get(_source_key(module, block, 'weight'))
                if rule is None or rule.transform != 'linear':
                    unknown.append(f'{_name(module, block)}.lora_*')
                else:
                    _add(deltas, rule, (s * (b @ a)).T)
        for kind, suffix in (('diff', 'weight'), ('diff_b', 'bias'), ('diff_m', None)):
            if kind not in p:
                continue
            rule = rules.get(_source_key(module, block, suffix))
            if rule is None:
                unknown.append(f'{_name(module, block)}.{kind}')
                continue
            _add(deltas, rule, scale * _to_layout(p[kind], rule.transform))
    if unknown:
        raise ValueError(
            f'{path}: {len(unknown)} keys are not LoRA weights or deltas of Wan DiT '
            f'parameters this loader knows: {sorted(unknown)}.'
        )
    if deltas:
        out[DELTA] = deltas
    return out


def _dit_rules(depth: int):
    """The diffusers DiT key -> sora_jax Rule map (I2V and FLF2V keys included)."""
    from sora_jax.convert.wan import dit_key_map

    return dit_key_map(depth, image=True, image_pos=True).rules


def _name(module: str, block: int | None) -> str:
    return module if block is None else f'blocks.{block}.{module}'


def _source_key(module: str, block: int | None, suffix: str | None) -> str:
    """The diffusers state-dict key of a file's module (original-Wan or diffusers names);
    `suffix` None: the modulation table (Wan's `modulation`, diffusers' scale_shift_table)."""
    if block is None:
        name = 'scale_shift_table' if suffix is None else ORIGINAL_TOP.get(module, module)
    elif suffix is None:
        name = 'scale_shift_table'
    elif module in _SOURCE:
        name = _TO_DIFFUSERS[_SOURCE[module]]
    else:
        name = _WAN_BLOCK.get(module, module)
    key = name if suffix is None else f'{name}.{suffix}'
    return key if block is None else f'blocks.{block}.{key}'


def _to_layout(value: np.ndarray, transform: str) -> np.ndarray:
    """A torch-layout delta in the sora_jax layout of its parameter (`convert.wan` Rule)."""
    from sora_jax.convert.wan import _TRANSPOSES

    if transform == 'flatten':
        return value.reshape(-1)
    perm = _TRANSPOSES[transform]
    return value if perm is None else np.transpose(value, perm)


def _add(deltas, rule, value: np.ndarray) -> None:
    key = (rule.target, rule.layer)
    deltas[key] = deltas[key] + value if key in deltas else value.astype(np.float32)


def check_fits(adapter: Adapter, kernels: Mapping[str, tuple[int, ...]], name: str = 'LoRA'):
    """kernels: {module: stacked kernel shape [depth, in, out]}; a mismatch is a ValueError.
    (The dense `DELTA` updates are checked against their parameters by `merge`.)"""
    for module, blocks in adapter.items():
        if module == DELTA:
            continue
        if module not in kernels:
            raise ValueError(f'{name}: the model has no {module} kernels for this LoRA.')
        depth, din, dout = kernels[module]
        for block, (a, b) in blocks.items():
            if block >= depth or a.shape[0] != din or b.shape[1] != dout:
                raise ValueError(
                    f'{name}: block {block} {module} is [{a.shape[0]} -> '
                    f'{b.shape[1]}] but the model has {depth} blocks of [{din} -> '
                    f'{dout}]; this LoRA is for another model size.'
                )


def kernel_shapes(params) -> dict[str, tuple[int, ...]]:
    """{module: stacked kernel shape [depth, in, out]} of a DiT's params (`nnx.split` state),
    what `check_fits` compares a file's adapter with before it is applied."""
    from flax import nnx

    flat = {'/'.join(map(str, p)): v for p, v in nnx.to_flat_state(params)}
    return {m: tuple(flat[_kernel(m)].shape) for m in MODULES if _kernel(m) in flat}


def merge(flat: Mapping[str, np.ndarray], adapters: Iterable[Adapter]) -> dict[str, np.ndarray]:
    """Flat DiT params ('blocks/attn1/to_q/kernel' -> [depth, in, out]) with every adapter's
    a @ b added to its kernels (float32 math, cast back to the kernel dtype)."""
    out = dict(flat)
    for adapter in adapters:
        check_fits(adapter, {m: tuple(out[_kernel(m)].shape) for m in adapter if m != DELTA})
        for (target, layer), delta in adapter.get(DELTA, {}).items():
            if target not in out:
                raise ValueError(f'LoRA: the model has no parameter {target} for this delta.')
            p = np.array(out[target], np.float32)
            slot = p if layer is None else p[layer] if layer < p.shape[0] else None
            if slot is None or slot.shape != delta.shape:
                raise ValueError(
                    f'LoRA: the delta of {target} (block {layer}) has shape {delta.shape} but the '
                    f'model has {p.shape}; this LoRA is for another model size.'
                )
            slot += delta
            out[target] = p.astype(np.asarray(flat[target]).dtype)
        for module, blocks in adapter.items():
            if module == DELTA:
                continue
            k = np.array(out[_kernel(module)], np.float32)
            for block, (a, b) in blocks.items():
                k[block] += a @ b
            out[_kernel(module)] = k.astype(np.asarray(flat[_kernel(module)]).dtype)
    return out


def stack(adapters: list[Adapter], kernels: Mapping[str, tuple[int, ...]]):
    """Adapters kept separate -> (layout for `DiTConfig.lora`, flat adapter params
    {'blocks/attn1/to_q/lora/lora_a': [depth, in, R], ...lora_b: [depth, R, out]}) where R is
    the sum over adapters of each one's largest rank on that module (lower ranks zero-padded)."""
    for i, ad in enumerate(adapters):
        check_fits(ad, kernels, f'LoRA #{i + 1}')
    layout, flat = [], {}
    for module in MODULES:
        used = [ad[module] for ad in adapters if module in ad]
        if not used:
            continue
        depth, din, dout = kernels[module]
        ranks = [max(a.shape[1] for a, _ in blocks.values()) for blocks in used]
        big_a = np.zeros((depth, din, sum(ranks)), np.float32)
        big_b = np.zeros((depth, sum(ranks), dout), np.float32)
        off = 0
        for blocks, r in zip(used, ranks):
            for block, (a, b) in blocks.items():
                big_a[block, :, off : off + a.shape[1]] = a
                big_b[block, off : off + b.shape[0]] = b
            off += r
        layout.append((module, sum(ranks), 1.0))
        flat[f'{_path(module)}/lora/lora_a'] = big_a
        flat[f'{_path(module)}/lora/lora_b'] = big_b
    return tuple(layout), flat


def from_params(flat: Mapping[str, np.ndarray], layout) -> Adapter:
    """Trained adapters (flat DiT params with 'blocks/<module>/lora/lora_{a,b}') -> an adapter,
    each module's scale (`DiTConfig.lora`) folded into b."""
    out: Adapter = {}
    for module, _, scale in layout:
        a = np.asarray(flat[f'{_path(module)}/lora/lora_a'], np.float32)
        b = np.asarray(flat[f'{_path(module)}/lora/lora_b'], np.float32) * float(scale)
        out[module] = {i: (a[i], b[i]) for i in range(a.shape[0])}
    return out


def save(path: str, adapter: Adapter) -> dict[str, np.ndarray]:
    """Writes the diffusers layout (`transformer.blocks.N.<module>.lora_A.weight` [r, in],
    `lora_B.weight` [out, r], scale already in B: no alpha); returns the tensors written."""
    from safetensors.numpy import save_file

    tensors = {}
    for module, blocks in adapter.items():
        for block, (a, b) in sorted(blocks.items()):
            key = f'transformer.blocks.{block}.{_TO_DIFFUSERS[module]}'
            tensors[f'{key}.lora_A.weight'] = np.ascontiguousarray(a.T, np.float32)
            tensors[f'{key}.lora_B.weight'] = np.ascontiguousarray(b.T, np.float32)
    save_file(tensors, path, metadata={'format': 'pt'})
    return tensors


def apply(graphdef, params, adapters: list[Adapter], merge: bool = True):
    """(graphdef, params) of a DiT (`nnx.split`, no adapters) with `adapters` merged into its
    kernels, or kept as `LoRALinear` adapters (a new graphdef); no adapters: unchanged."""
    import dataclasses

    from flax import nnx

    from sora_jax.convert.wan import apply_to_state
    from sora_jax.models.dit import DiT

    if not adapters:
        return graphdef, params
    flat = {'/'.join(map(str, p)): v[...] for p, v in nnx.to_flat_state(params)}
    if merge:
        return graphdef, apply_to_state(params, merge_flat(flat, adapters))
    deltas = [{DELTA: ad[DELTA]} for ad in adapters if DELTA in ad]
    if deltas:  # dense updates have no low-rank form: merged, the low-rank part kept separate
        flat = merge_flat(flat, deltas)
        adapters = [{m: v for m, v in ad.items() if m != DELTA} for ad in adapters]
        adapters = [ad for ad in adapters if ad]
        if not adapters:
            return graphdef, apply_to_state(params, flat)
    kernels = {m: tuple(flat[_kernel(m)].shape) for m in MODULES}
    layout, extra = stack(adapters, kernels)
    cfg = nnx.merge(graphdef, params).cfg
    abstract = nnx.eval_shape(lambda: DiT(dataclasses.replace(cfg, lora=layout), rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    return graphdef, apply_to_state(state, {**flat, **extra})


def merge_flat(flat, adapters):
    """`merge` over device arrays: only the adapted kernels go through the host."""
    touched = {_kernel(m) for ad in adapters for m in ad if m != DELTA}
    touched |= {target for ad in adapters for target, _ in ad.get(DELTA, {})}
    merged = merge({k: np.asarray(flat[k]) for k in touched}, adapters)
    return {**flat, **merged}


def _path(module: str) -> str:
    return 'blocks/' + module.replace('.', '/')


def _kernel(module: str) -> str:
    return f'{_path(module)}/kernel'
