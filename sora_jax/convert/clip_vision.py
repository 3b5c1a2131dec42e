"""transformers `CLIPVisionModel` safetensors -> `sora_jax.models.clip_vision.CLIPVisionEncoder`.

The key map of Wan 2.1 I2V's `image_encoder/` component (used by `convert/wan.py`'s
`component_spec('image_encoder', ...)`). Checkpoints written by transformers < 5 prefix every
key with `vision_model.` (Wan's hub folders); transformers 5 saves them without it. The bare
names are the rules, the prefixed ones aliases of them, so either layout converts strictly.
"""

from __future__ import annotations

from sora_jax.convert.wan import KeyMap, Rule


def clip_vision_key_map(num_layers: int) -> KeyMap:
    """`CLIPVisionModel` state dict -> `CLIPVisionEncoder` (stacked `layers/...`)."""
    rules = {
        'embeddings.class_embedding': Rule('class_embedding'),
        'embeddings.patch_embedding.weight': Rule('patch_embedding', transform='conv2d'),
        'embeddings.position_embedding.weight': Rule('position_embedding'),
    }
    for norm in ('pre_layrnorm', 'post_layernorm'):
        for p in ('weight', 'bias'):
            rules[f'{norm}.{p}'] = Rule(f'{norm}/{p}')
    for i in range(num_layers):
        src = f'encoder.layers.{i}'
        for name in ('q_proj', 'k_proj', 'v_proj', 'out_proj'):
            rules[f'{src}.self_attn.{name}.weight'] = Rule(f'layers/{name}/kernel', i, 'linear')
            rules[f'{src}.self_attn.{name}.bias'] = Rule(f'layers/{name}/bias', i)
        for name in ('fc1', 'fc2'):
            rules[f'{src}.mlp.{name}.weight'] = Rule(f'layers/{name}/kernel', i, 'linear')
            rules[f'{src}.mlp.{name}.bias'] = Rule(f'layers/{name}/bias', i)
        for name in ('layer_norm1', 'layer_norm2'):
            for p in ('weight', 'bias'):
                rules[f'{src}.{name}.{p}'] = Rule(f'layers/{name}/{p}', i)
    return KeyMap(rules, {f'vision_model.{k}': k for k in rules})
