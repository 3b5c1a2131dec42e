"""Causal Wan 2.1 generators as CausVid and Self-Forcing publish them -> a converted sora_jax Wan
folder whose DiT is block-causal and is sampled by the chunked rollout (pipeline/rollout.py).

The layout, as their repositories save and load it (github.com/guandeh17/Self-Forcing:
`trainer/distillation.py:save`, `inference.py`, `utils/wan_wrapper.py`,
`wan/modules/causal_model.py`; github.com/tianweiy/CausVid: `minimal_inference/
autoregressive_inference.py`, `causvid/models/wan/wan_wrapper.py`):

  a torch pickle (`torch.save`) of a dict: 'generator' (and Self-Forcing's 'generator_ema',
  'critic') -> the state dict of their wrapper module, whose `.model` is a `CausalWanModel`,
  so every key is 'model.' + the original Wan 2.1 name: model.patch_embedding.weight,
  model.text_embedding.{0,2}, model.time_embedding.{0,2}, model.time_projection.1,
  model.blocks.N.{modulation, self_attn.{q,k,v,o}, self_attn.norm_{q,k}, norm3,
  cross_attn.{q,k,v,o}, cross_attn.norm_{q,k}, ffn.{0,2}}, model.head.head,
  model.head.modulation. CausalWanModel has exactly Wan 2.1's parameters (the causal mask,
  the KV cache and the RoPE frame offset are code, not weights); the EMA copy is float32.

Their sampling, per layout (`LAYOUTS`): chunks of num_frame_per_block = 3 latent frames; a
few-step schedule where each step predicts x0 = x - sigma v and re-noises it to the next sigma
with fresh noise (`RolloutOptions.renoise`); the conditional pass alone (DMD distils the
guidance in: `guidance_scale` 1); the cache rewritten with the clean chunk at t = 0
(context_noise 0); 21 latent frames attended at most (their 32,760-token cache: the chunk and
6 past chunks; `window` 6), no sink frames (Self-Forcing's default `sink_size` 0).
  self_forcing  configs/self_forcing_dmd.yaml: denoising_step_list [1000, 750, 500, 250] with
                warp_denoising_step: sigma = shift(k / 1000) with timestep_shift 5 (their
                scheduler's timesteps[1000 - k]); the README samples `--use_ema`
                ('generator_ema').
  causvid       configs/wan_causal_dmd.yaml: [1000, 757, 522] (the trailing 0 dropped), not
                warped: the model gets t = k / 1000 (their scheduler takes the grid sigma
                nearest to it, within 5e-4); 'generator'.

`convert(src_pt, dst, layout, base=...)` writes dst/transformer/{params, config.json} (the
diffusers config, with `causal_chunk`) and dst/causal.json (the sampling settings above, read by
`rollout.sampling_defaults`), and converts the text encoder, tokenizer and VAE from `base`, a
diffusers Wan 2.1 T2V 1.3B folder (what both start from). `experiments/convert_wan.py
--causal=PT --layout=self_forcing --src=BASE --dst=DST`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Mapping

import numpy as np

from sora_jax.convert import lora, wan
from sora_jax.io.checkpoint import save_flat
from sora_jax.pipeline.distill import DistillPreset


@dataclasses.dataclass(frozen=True)
class CausalLayout:
    """How one project saves and samples its causal Wan generator (module docstring)."""

    name: str
    keys: tuple[str, ...]  # state-dict entries of the pickle, the preferred first
    denoising_step_list: tuple[int, ...]  # timesteps of the 1000-step grid, descending
    warp: bool  # sigma = shift(k / 1000) (True) or k / 1000
    shift: float
    chunk: int = 3  # num_frame_per_block, latent frames
    window: int = 6  # past chunks attended (21 latent frames with the chunk)
    sink_frames: int = 0
    guidance_scale: float = 1.0

    def sigmas(self) -> tuple[float, ...]:
        if self.warp:
            return DistillPreset(self.name, self.denoising_step_list, self.shift).sigmas()
        return tuple(k / 1000.0 for k in self.denoising_step_list) + (0.0,)

    def sampling(self) -> dict[str, Any]:
        """What causal.json holds (rollout.sampling_defaults reads it)."""
        return dict(
            layout=self.name,
            causal_chunk=self.chunk,
            sigmas=list(self.sigmas()),
            renoise=True,
            guidance_scale=self.guidance_scale,
            window=self.window,
            sink_frames=self.sink_frames,
        )


LAYOUTS = {
    'self_forcing': CausalLayout(
        'self_forcing', ('generator_ema', 'generator'), (1000, 750, 500, 250), True, 5.0
    ),
    'causvid': CausalLayout('causvid', ('generator',), (1000, 757, 522), False, 8.0),
}

# original Wan 2.1 names -> the diffusers names `wan.dit_key_map` maps (text-to-video: no img_emb)
_TOP = {k: v for k, v in lora.ORIGINAL_TOP.items() if not k.startswith('img_emb.')}
_BLOCK = {
    'self_attn.q': 'attn1.to_q',
    'self_attn.k': 'attn1.to_k',
    'self_attn.v': 'attn1.to_v',
    'self_attn.o': 'attn1.to_out.0',
    'self_attn.norm_q': 'attn1.norm_q',
    'self_attn.norm_k': 'attn1.norm_k',
    'cross_attn.q': 'attn2.to_q',
    'cross_attn.k': 'attn2.to_k',
    'cross_attn.v': 'attn2.to_v',
    'cross_attn.o': 'attn2.to_out.0',
    'cross_attn.norm_q': 'attn2.norm_q',
    'cross_attn.norm_k': 'attn2.norm_k',
    'norm3': 'norm2',  # the cross-attention LayerNorm (norm1 / norm2 have no weights)
    'ffn.0': 'ffn.net.0.proj',
    'ffn.2': 'ffn.net.2',
}
_BLOCK_KEY = re.compile(r'^blocks\.(\d+)\.(.+)\.(weight|bias)$')


def diffusers_name(key: str) -> str:
    """An original-Wan DiT key (without the 'model.' prefix) -> its diffusers name; a
    ValueError for anything else (I2V image keys included: these generators are T2V)."""
    if key == 'head.modulation':
        return 'scale_shift_table'
    m = re.match(r'^blocks\.(\d+)\.modulation$', key)
    if m:
        return f'blocks.{m.group(1)}.scale_shift_table'
    m = _BLOCK_KEY.match(key)
    if m and m.group(2) in _BLOCK:
        return f'blocks.{m.group(1)}.{_BLOCK[m.group(2)]}.{m.group(3)}'
    stem, _, leaf = key.rpartition('.')
    if stem in _TOP and leaf in ('weight', 'bias'):
        return f'{_TOP[stem]}.{leaf}'
    raise ValueError(f'{key!r} is not a Wan 2.1 text-to-video DiT parameter.')


class StateDictReader:
    """An in-memory state dict as `wan.convert` reads a safetensors folder (`keys`, `get`):
    numpy arrays, bf16 kept as ml_dtypes.bfloat16."""

    def __init__(self, tensors: Mapping[str, np.ndarray]):
        self.tensors = dict(tensors)

    def keys(self):
        return self.tensors.keys()

    def get(self, key: str) -> np.ndarray:
        return self.tensors[key]


def _to_numpy(t) -> np.ndarray:
    import torch

    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def read_generator(path: str, layout: CausalLayout, key: str | None = None):
    """(the generator's tensors under diffusers names, the pickle entry used). `key` picks the
    entry ('generator' / 'generator_ema'); by default the layout's preferred one present."""
    try:
        import torch
    except ImportError as e:
        raise ValueError(
            f'reading {path}: a torch checkpoint needs torch (pip install torch).'
        ) from e
    if not os.path.isfile(path):
        raise ValueError(f'--causal={path!r} does not exist; pass the .pt the project publishes.')
    ckpt = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
    if not isinstance(ckpt, dict):
        raise ValueError(f'{path}: expected a dict of state dicts, got {type(ckpt).__name__}.')
    if key is None:
        key = next((k for k in layout.keys if k in ckpt), None)
    if key not in ckpt:
        raise ValueError(
            f'{path} has entries {sorted(ckpt)}; the {layout.name} layout keeps its generator '
            f'under {list(layout.keys)}.'
        )
    sd = ckpt[key]
    bad = sorted(k for k in sd if not k.startswith('model.'))
    if bad:
        raise ValueError(
            f"{path}[{key!r}]: {len(bad)} keys lack the wrapper's 'model.' prefix, e.g. "
            f'{bad[:3]}; is this a {layout.name} generator checkpoint?'
        )
    return {diffusers_name(k[len('model.') :]): _to_numpy(v) for k, v in sd.items()}, key


def hf_config(tensors: Mapping[str, np.ndarray], num_heads: int | None, chunk: int) -> dict:
    """The diffusers transformer config.json of these tensors (Wan 2.1 T2V), with
    `causal_chunk`. Heads are not in the shapes: Wan's head width is 128 (1.3B: 12 heads),
    so `num_heads` defaults to dim // 128."""
    w = tensors['patch_embedding.weight']  # [dim, in, pt, ph, pw]
    dim, in_channels, patch = int(w.shape[0]), int(w.shape[1]), [int(p) for p in w.shape[2:]]
    depth = 1 + max(int(k.split('.')[1]) for k in tensors if k.startswith('blocks.'))
    heads = num_heads or dim // 128
    if not heads or dim % heads:
        raise ValueError(f'num_heads={heads} does not divide the width {dim}; pass --num_heads.')
    out = int(tensors['proj_out.weight'].shape[0]) // int(np.prod(patch))
    return {
        '_class_name': 'WanTransformer3DModel',
        'patch_size': patch,
        'num_attention_heads': heads,
        'attention_head_dim': dim // heads,
        'in_channels': in_channels,
        'out_channels': out,
        'text_dim': int(tensors['condition_embedder.text_embedder.linear_1.weight'].shape[1]),
        'freq_dim': int(tensors['condition_embedder.time_embedder.linear_1.weight'].shape[1]),
        'ffn_dim': int(tensors['blocks.0.ffn.net.0.proj.weight'].shape[0]),
        'num_layers': depth,
        'cross_attn_norm': 'blocks.0.norm2.weight' in tensors,
        'qk_norm': 'rms_norm_across_heads',
        'eps': 1e-6,
        'image_dim': None,
        'added_kv_proj_dim': None,
        'rope_max_seq_len': 1024,
        'causal_chunk': chunk,
    }


def convert_transformer(
    src: str, dst: str, layout: str = 'self_forcing', *, key: str | None = None, num_heads=None
) -> dict[str, np.ndarray]:
    """The generator of `src` (.pt) -> dst/transformer/{params, config.json} and dst/causal.json;
    returns the flat params. Strict: every tensor mapped, every DiT parameter filled."""
    from sora_jax.convert.wan import _targets

    if layout not in LAYOUTS:
        raise ValueError(f'--layout={layout!r} is not one of {sorted(LAYOUTS)}.')
    lay = LAYOUTS[layout]
    tensors, used = read_generator(src, lay, key)
    hf = hf_config(tensors, num_heads, lay.chunk)
    _, make, key_map = wan.component_spec('transformer', hf)
    flat = wan.convert(StateDictReader(tensors), key_map, _targets(make))
    out = os.path.join(dst, 'transformer')
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, 'config.json'), 'w') as f:
        json.dump(hf, f, indent=1)
    save_flat(flat, os.path.join(out, 'params'))
    sampling = dict(lay.sampling(), source=os.path.basename(src), entry=used)
    with open(os.path.join(dst, 'causal.json'), 'w') as f:
        json.dump(sampling, f, indent=1)
    return flat


def convert(
    src: str,
    dst: str,
    layout: str = 'self_forcing',
    *,
    base: str | None = None,
    key: str | None = None,
    num_heads: int | None = None,
) -> None:
    """A causal generator (.pt) plus the text encoder and VAE of `base` (a diffusers Wan 2.1
    T2V folder) -> a converted folder that `TextToVideo.from_wan` / sample.py load."""
    if base is not None:
        wan.convert_folder(base, dst, ['text_encoder', 'vae'])
    convert_transformer(src, dst, layout, key=key, num_heads=num_heads)
