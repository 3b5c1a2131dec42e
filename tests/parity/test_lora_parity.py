"""LoRA parity: a random LoRA file loaded into diffusers' WanPipeline (`load_lora_weights`, PEFT)
and into sora_jax (`convert/lora.py`, merged and kept separate) gives the same velocity, in each
layout that circulates for Wan and at two scales; a LoRA saved by sora_jax loads into diffusers
and gives the same velocity there."""

import copy
import dataclasses

import jax
import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
from flax import nnx
from safetensors.torch import save_file

from sora_jax.convert import lora as lora_files
from sora_jax.convert import wan
from sora_jax.models.dit import DiT

KW = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=4,
    out_channels=4,
    text_dim=16,
    freq_dim=32,
    ffn_dim=40,
    num_layers=2,
)
GRID, CTX_LEN, RANK = (3, 4, 6), 7, 4
# diffusers module -> original-Wan module
WAN_NAMES = {
    'attn1.to_q': 'self_attn.q',
    'attn1.to_k': 'self_attn.k',
    'attn1.to_v': 'self_attn.v',
    'attn1.to_out.0': 'self_attn.o',
    'attn2.to_q': 'cross_attn.q',
    'attn2.to_k': 'cross_attn.k',
    'attn2.to_v': 'cross_attn.v',
    'attn2.to_out.0': 'cross_attn.o',
    'ffn.net.0.proj': 'ffn.0',
    'ffn.net.2': 'ffn.2',
}


@pytest.fixture(scope='module')
def base(tmp_path_factory):
    torch.manual_seed(5)
    model = WanTransformer3DModel(**KW).eval()
    with torch.no_grad():  # randomise the zero/one-initialised parameters too
        for name, p in model.named_parameters():
            if 'norm' in name or name.endswith('bias'):
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name.endswith('weight') else 0.0))
    folder = str(tmp_path_factory.mktemp('lora_base'))
    model.save_pretrained(folder)
    dit = wan.load_dit(folder, attention='xla')
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, KW['in_channels'], *GRID)).astype(np.float32)
    ctx = rng.standard_normal((2, CTX_LEN, KW['text_dim'])).astype(np.float32)
    ts = np.array([999.0, 250.0], np.float32)
    return model, nnx.split(dit), (x, ctx, ts), tmp_path_factory.mktemp('loras')


def _random_lora(model, seed):
    """{diffusers module path of block i: (A [r, in], B [out, r])} over every target."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(KW['num_layers']):
        for name in WAN_NAMES:
            lin = model.get_submodule(f'blocks.{i}.{name}')
            a = torch.randn(RANK, lin.in_features, generator=g) * 0.3
            b = torch.randn(lin.out_features, RANK, generator=g) * 0.3
            out[f'blocks.{i}.{name}'] = (a, b)
    return out


def _write(path, lora, layout, alpha=None):
    sd = {}
    for key, (a, b) in lora.items():
        if layout == 'diffusers':
            k, down, up = f'transformer.{key}', 'lora_A', 'lora_B'
        else:
            i, name = key.split('.', 2)[1], key.split('.', 2)[2]
            k = f'diffusion_model.blocks.{i}.{WAN_NAMES[name]}'
            down, up = ('lora_A', 'lora_B') if layout == 'wan' else ('lora_down', 'lora_up')
        sd[f'{k}.{down}.weight'] = a.contiguous()
        sd[f'{k}.{up}.weight'] = b.contiguous()
        if alpha is not None:
            sd[f'{k}.alpha'] = torch.tensor(float(alpha))
    save_file(sd, path)
    return path


def _reference(model, path, scale, inputs):
    """diffusers' velocity with the LoRA file loaded through WanPipeline.load_lora_weights."""
    x, ctx, ts = inputs
    pipe = WanPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=None,
        transformer=copy.deepcopy(model),
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )
    pipe.load_lora_weights(path, adapter_name='test')
    pipe.set_adapters(['test'], [scale])
    with torch.no_grad():
        return pipe.transformer(
            torch.from_numpy(x), torch.from_numpy(ts), torch.from_numpy(ctx), return_dict=False
        )[0].numpy()


def _ours(split, adapters, inputs, merge):
    x, ctx, ts = inputs
    graphdef, params = lora_files.apply(*split, adapters, merge=merge)
    out = jax.jit(lambda p, a, b, c: nnx.merge(graphdef, p)(a, b, c))(
        params, x.transpose(0, 2, 3, 4, 1), ts / 1000.0, ctx
    )
    return np.asarray(out).transpose(0, 4, 1, 2, 3)


def _err(out, ref):
    return np.abs(out - ref).max() / max(1.0, np.abs(ref).max())


@pytest.mark.parametrize(
    'layout, alpha', [('diffusers', None), ('wan', None), ('wan', 2.0), ('wan_down_up', 8.0)]
)
@pytest.mark.parametrize('scale', [1.0, 0.6])
def test_loaded_lora_velocity_matches(base, layout, alpha, scale):
    model, split, inputs, tmp = base
    path = _write(str(tmp / f'{layout}_{alpha}.safetensors'), _random_lora(model, 1), layout, alpha)
    ref = _reference(model, path, scale, inputs)
    plain = _ours(split, [], inputs, True)
    assert _err(plain, ref) > 1e-2  # the LoRA changes the velocity
    for merge in (True, False):
        err = _err(_ours(split, [lora_files.read(path, scale)], inputs, merge), ref)
        print(f'{layout} alpha={alpha} scale={scale} merge={merge}: max err (scaled) {err:.2e}')
        assert err < 1e-4


def test_two_loras_at_once(base):
    """Two files, kept separate or merged, equal diffusers with both adapters active."""
    model, split, inputs, tmp = base
    p1 = _write(str(tmp / 'one.safetensors'), _random_lora(model, 2), 'diffusers')
    p2 = _write(str(tmp / 'two.safetensors'), _random_lora(model, 3), 'diffusers')
    x, ctx, ts = inputs
    pipe = WanPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=None,
        transformer=copy.deepcopy(model),
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )
    pipe.load_lora_weights(p1, adapter_name='one')
    pipe.load_lora_weights(p2, adapter_name='two')
    pipe.set_adapters(['one', 'two'], [0.5, 1.5])
    with torch.no_grad():
        ref = pipe.transformer(
            torch.from_numpy(x), torch.from_numpy(ts), torch.from_numpy(ctx), return_dict=False
        )[0].numpy()
    adapters = [lora_files.read(p1, 0.5), lora_files.read(p2, 1.5)]
    for merge in (True, False):
        assert _err(_ours(split, adapters, inputs, merge), ref) < 1e-4


def test_saved_lora_loads_into_diffusers(base):
    """A LoRA written by sora_jax (`convert.lora.save`, from trained-adapter params with a
    scale alpha / r = 2) gives diffusers the velocity sora_jax gives with the adapters."""
    model, split, inputs, tmp = base
    rng = np.random.default_rng(7)
    layout = (('attn1.to_q', 3, 2.0), ('attn2.to_v', 3, 2.0), ('ffn.proj_out', 3, 2.0))
    base_graphdef, base_params = split
    flat = {'/'.join(map(str, p)): v[...] for p, v in nnx.to_flat_state(base_params)}
    trained = {}
    for module, r, _ in layout:
        path = 'blocks/' + module.replace('.', '/')
        depth, din, dout = flat[f'{path}/kernel'].shape
        trained[f'{path}/lora/lora_a'] = (
            rng.standard_normal((depth, din, r)).astype(np.float32) * 0.3
        )
        trained[f'{path}/lora/lora_b'] = (
            rng.standard_normal((depth, r, dout)).astype(np.float32) * 0.3
        )
    # the model as LoRA training builds it: LoRALinear with scale alpha / r = 2
    cfg = nnx.merge(base_graphdef, base_params).cfg
    graphdef, state = nnx.split(
        nnx.eval_shape(lambda: DiT(dataclasses.replace(cfg, lora=layout), rngs=nnx.Rngs(0)))
    )
    params = wan.apply_to_state(state, {**flat, **trained})
    x, ctx, ts = inputs
    ours = np.asarray(
        jax.jit(lambda p, a, b, c: nnx.merge(graphdef, p)(a, b, c))(
            params, x.transpose(0, 2, 3, 4, 1), ts / 1000.0, ctx
        )
    ).transpose(0, 4, 1, 2, 3)
    adapter = lora_files.from_params(trained, layout)
    out_path = str(tmp / 'saved.safetensors')
    tensors = lora_files.save(out_path, adapter)
    assert all(k.startswith('transformer.blocks.') for k in tensors)
    ref = _reference(model, out_path, 1.0, inputs)
    assert _err(ours, ref) < 1e-4
    assert _err(_ours(split, [lora_files.read(out_path)], inputs, True), ref) < 1e-4


def test_unknown_keys_are_listed(base, tmp_path):
    model, _, _, _ = base
    sd = {
        'transformer.blocks.0.attn1.to_q.lora_A.weight': torch.zeros(RANK, 24),
        'transformer.blocks.0.attn1.to_q.lora_B.weight': torch.zeros(24, RANK),
        'transformer.condition_embedder.time_projx.lora_A.weight': torch.zeros(RANK, 24),
        'transformer.condition_embedder.time_projx.lora_B.weight': torch.zeros(24, RANK),
        'transformer.blocks.0.norm9.diff': torch.zeros(24),
    }
    save_file(sd, str(tmp_path / 'odd.safetensors'))
    with pytest.raises(ValueError, match=r'2 keys .*norm9\.diff.*condition_embedder\.time_projx'):
        lora_files.read(str(tmp_path / 'odd.safetensors'))
