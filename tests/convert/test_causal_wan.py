"""Causal Wan generators in the layout CausVid and Self-Forcing publish (convert/causal_wan.py):
a tiny random checkpoint written as they write theirs (torch.save of {'generator',
'generator_ema', 'critic'}, keys `model.<original Wan name>`) converts to the parameters that
diffusers' own original-Wan key conversion gives, through experiments/convert_wan.py --causal,
into a causal folder that loads and samples with the chunked rollout at their schedule."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs import wan21
from sora_jax.convert import causal_wan, wan
from tests.parity.wan_fixture import make_tiny_wan_folder

pytestmark = pytest.mark.slow

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
HEADS = 2  # configs/wan21.py:tiny (dim 24): not in the weights' shapes


def original_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """Random tensors under CausalWanModel's parameter names (Wan 2.1 T2V: nn.Linear [out, in],
    the patch Conv3d, WanRMSNorm / LayerNorm gains, modulation tables [1, 6 | 2, dim]), at the
    sizes of configs/wan21.py:tiny, prefixed 'model.' as their wrapper's state dict is."""
    c = wan21.get_config('tiny').model
    d, f, pt = c.dim, c.ffn_dim, tuple(c.patch_size)
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def rand(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    def lin(name, out, inp):
        sd[f'{name}.weight'], sd[f'{name}.bias'] = rand(out, inp), rand(out, scale=0.05)

    sd['patch_embedding.weight'] = rand(d, c.in_channels, *pt)
    sd['patch_embedding.bias'] = rand(d, scale=0.05)
    lin('text_embedding.0', d, c.text_dim)
    lin('text_embedding.2', d, d)
    lin('time_embedding.0', d, c.freq_dim)
    lin('time_embedding.2', d, d)
    lin('time_projection.1', 6 * d, d)
    for i in range(c.depth):
        b = f'blocks.{i}'
        sd[f'{b}.modulation'] = rand(1, 6, d, scale=d**-0.5)
        for a in ('self_attn', 'cross_attn'):
            for m in 'qkvo':
                lin(f'{b}.{a}.{m}', d, d)
            sd[f'{b}.{a}.norm_q.weight'] = 1 + rand(d, scale=0.1)
            sd[f'{b}.{a}.norm_k.weight'] = 1 + rand(d, scale=0.1)
        sd[f'{b}.norm3.weight'], sd[f'{b}.norm3.bias'] = 1 + rand(d, scale=0.1), rand(d)
        lin(f'{b}.ffn.0', f, d)
        lin(f'{b}.ffn.2', d, f)
    lin('head.head', c.out_channels * int(np.prod(pt)), d)
    sd['head.modulation'] = rand(1, 2, d, scale=d**-0.5)
    return {f'model.{k}': v for k, v in sd.items()}


@pytest.fixture(scope='module')
def self_forcing_pt(tmp_path_factory):
    path = str(tmp_path_factory.mktemp('sf') / 'self_forcing_dmd.pt')
    torch.save(
        {
            'generator': original_state_dict(0),
            'critic': {'model.patch_embedding.weight': torch.zeros(1)},
            'generator_ema': original_state_dict(1),
        },
        path,
    )
    return path


@pytest.mark.parity
def test_params_equal_diffusers_original_wan_conversion(self_forcing_pt, tmp_path):
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    flat = causal_wan.convert_transformer(self_forcing_pt, str(tmp_path), num_heads=HEADS)
    ema = torch.load(self_forcing_pt, weights_only=True)['generator_ema']  # the README's entry
    ref_sd = convert_wan_transformer_to_diffusers({k[len('model.') :]: v for k, v in ema.items()})
    hf = causal_wan.hf_config(ref_sd, HEADS, 3)
    _, make, key_map = wan.component_spec('transformer', hf)
    reader = causal_wan.StateDictReader({k: v.numpy() for k, v in ref_sd.items()})
    ref = wan.convert(reader, key_map, wan._targets(make))
    assert sorted(flat) == sorted(ref)
    for k in ref:
        np.testing.assert_array_equal(flat[k], ref[k], err_msg=k)
    # one spot check against the torch layout: nn.Linear [out, in] -> kernel [in, out]
    np.testing.assert_array_equal(
        flat['blocks/attn1/to_q/kernel'][1], ema['model.blocks.1.self_attn.q.weight'].numpy().T
    )
    with open(tmp_path / 'transformer' / 'config.json') as f:
        assert json.load(f)['causal_chunk'] == 3
    with open(tmp_path / 'causal.json') as f:
        sampling = json.load(f)
    assert sampling['entry'] == 'generator_ema' and sampling['renoise']
    np.testing.assert_allclose(sampling['sigmas'], [1.0, 0.9375, 5 / 6, 0.625, 0.0], atol=1e-12)
    assert sampling['guidance_scale'] == 1.0 and sampling['window'] == 6


def test_layouts_and_refusals(tmp_path):
    assert causal_wan.LAYOUTS['causvid'].sigmas() == (1.0, 0.757, 0.522, 0.0)
    assert causal_wan.LAYOUTS['causvid'].keys == ('generator',)
    assert causal_wan.diffusers_name('blocks.3.self_attn.o.bias') == 'blocks.3.attn1.to_out.0.bias'
    assert causal_wan.diffusers_name('head.modulation') == 'scale_shift_table'
    with pytest.raises(ValueError, match='not a Wan 2.1 text-to-video DiT parameter'):
        causal_wan.diffusers_name('blocks.0.cross_attn.k_img.weight')
    bare = str(tmp_path / 'bare.pt')
    torch.save({'generator': {'blocks.0.modulation': torch.zeros(1, 6, 4)}}, bare)
    with pytest.raises(ValueError, match="lack the wrapper's 'model.' prefix"):
        causal_wan.read_generator(bare, causal_wan.LAYOUTS['causvid'])
    with pytest.raises(ValueError, match="keeps its generator under \\['generator_ema'"):
        causal_wan.read_generator(bare, causal_wan.LAYOUTS['self_forcing'], key='generator_ema')


def test_cli_converts_and_the_rollout_samples_at_their_schedule(self_forcing_pt, tmp_path):
    """convert_wan.py --causal with the tiny Wan folder as --src; the folder loads as a causal
    Wan pipeline; its rollout takes causal.json's settings, and its first chunk equals their
    sampler written out by hand (x0 = x - t v, re-noised to the next t, conditional pass only)
    with the DiT run uncached over the chunk."""
    from flax import nnx

    from sora_jax.pipeline import TextToVideo
    from sora_jax.pipeline import rollout as rollout_lib

    src = make_tiny_wan_folder(str(tmp_path / 'src'))
    dst = str(tmp_path / 'dst')
    proc = subprocess.run(
        [
            sys.executable,
            'experiments/convert_wan.py',
            f'--src={src}',
            f'--causal={self_forcing_pt}',
            '--layout=self_forcing',
            f'--num_heads={HEADS}',
            f'--dst={dst}',
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(os.listdir(dst)) == [
        'causal.json',
        'model_index.json',
        'text_encoder',
        'tokenizer',
        'transformer',
        'vae',
    ]
    pipe = TextToVideo.from_wan(dst, wan21.get_config('tiny'))
    assert rollout_lib.causal_chunk(pipe) == 3
    assert rollout_lib.causal_clip(dst, wan21.get_config('tiny')) == (3, 5)
    opts = rollout_lib.options_for(pipe, progress=False, moderation=False, watermark=False)
    assert opts.renoise and opts.window == 6 and opts.guidance_scale == 1.0
    assert opts.sigmas == pytest.approx((1.0, 0.9375, 5 / 6, 0.625, 0.0))
    chunks = list(
        rollout_lib.rollout(pipe, 'a red circle', dataclasses.replace(opts, num_chunks=2))
    )
    assert [c.frames.shape[1] for c in chunks] == [9, 12]  # 1 + 2 x 4, then 3 x 4
    # chunk 0 by hand
    dit = nnx.merge(pipe.graphdef, pipe.params)
    ctx, mask = pipe.text(['a red circle'])
    key = jax.random.key(0)
    x = jax.random.normal(jax.random.fold_in(key, 0), chunks[0].latents.shape, jnp.float32)
    draws = jax.random.fold_in(jax.random.fold_in(key, 0), 1 << 20)
    s = opts.sigmas
    for i in range(4):
        v = dit(x, jnp.full((1,), s[i], jnp.float32), ctx, mask)
        x0 = x - s[i] * v
        if s[i + 1] == 0:
            break
        eps = jax.random.normal(jax.random.fold_in(draws, i), x.shape, jnp.float32)
        x = (1 - s[i + 1]) * x0 + s[i + 1] * eps
    err = float(jnp.abs(x0 - chunks[0].latents).max())
    assert err < 1e-4, err
