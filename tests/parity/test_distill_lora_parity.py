"""Few-step distilled LoRAs vs diffusers 0.42: a tiny random file in each published key layout
(LightX2V's step-distill LoRAs, Kijai's CausVid extraction; original-Wan names under
`diffusion_model.`, low-rank pairs on every linear incl. the embedders and the head, `.alpha`,
`.diff_b` bias deltas and the norms' `.diff` / `.diff_b`), loaded by `WanPipeline.
load_lora_weights` and by sora_jax (`convert/lora.py`, merged and kept separate), sampled on
the tiny random Wan folder (tests/parity/wan_fixture.py) with the schedule LightX2V distils for
(`distill_preset='lightx2v_4step'`: timesteps 1000/750/500/250 shifted by 5, Euler, guidance 1,
no unconditional pass) against diffusers' `FlowMatchEulerDiscreteScheduler(shift=5)` given the
same sigmas, at guidance 1.

The norms' deltas are zero here as in the published files: diffusers drops them (its converter
says so), sora_jax adds them (tests/convert/test_lora_distill_layouts.py checks non-zero ones).
"""

import functools

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from safetensors.torch import save_file

from sora_jax.convert import wan
from sora_jax.pipeline import distill
from tests.parity.test_wan_pipeline_parity import LATENT_ATOL
from tests.parity.wan_fixture import load_reference_pipeline, make_tiny_wan_folder, tiny_config

LINEARS = {  # original-Wan module -> diffusers module, inside a block
    'self_attn.q': 'attn1.to_q',
    'self_attn.k': 'attn1.to_k',
    'self_attn.v': 'attn1.to_v',
    'self_attn.o': 'attn1.to_out.0',
    'cross_attn.q': 'attn2.to_q',
    'cross_attn.k': 'attn2.to_k',
    'cross_attn.v': 'attn2.to_v',
    'cross_attn.o': 'attn2.to_out.0',
    'ffn.0': 'ffn.net.0.proj',
    'ffn.2': 'ffn.net.2',
}
TOP = {  # outside the blocks
    'text_embedding.0': 'condition_embedder.text_embedder.linear_1',
    'text_embedding.2': 'condition_embedder.text_embedder.linear_2',
    'time_embedding.0': 'condition_embedder.time_embedder.linear_1',
    'time_embedding.2': 'condition_embedder.time_embedder.linear_2',
    'time_projection.1': 'condition_embedder.time_proj',
    'head.head': 'proj_out',
}
PROMPT = 'A red circle moves to the left across a blue background.'


def write_layout(path, transformer, layout: str, rank: int = 4, seed: int = 0) -> str:
    """A random LoRA over `transformer` (diffusers WanTransformer3DModel) in a published layout:
    'lightx2v' (lora_down / lora_up + diff_b on every linear, the embedders and the head; an
    alpha on the blocks' ones; zero norm deltas) or 'causvid' (lora_down / lora_up without alpha, diff_b)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def pair(key, module, alpha=None):
        a = torch.randn(rank, module.in_features, generator=g) * 0.2
        b = torch.randn(module.out_features, rank, generator=g) * 0.2
        sd[f'diffusion_model.{key}.lora_down.weight'] = a
        sd[f'diffusion_model.{key}.lora_up.weight'] = b
        if alpha is not None:
            sd[f'diffusion_model.{key}.alpha'] = torch.tensor(float(alpha))
        sd[f'diffusion_model.{key}.diff_b'] = torch.randn(module.out_features, generator=g) * 0.05

    alpha = 2.0 * rank if layout == 'lightx2v' else None
    for i, block in enumerate(transformer.blocks):
        for wan_name, name in LINEARS.items():
            pair(f'blocks.{i}.{wan_name}', block.get_submodule(name), alpha)
        if layout == 'lightx2v':
            for n, w in (
                ('self_attn.norm_q', 'attn1.norm_q'),
                ('cross_attn.norm_k', 'attn2.norm_k'),
            ):
                shape = block.get_submodule(w).weight.shape
                sd[f'diffusion_model.blocks.{i}.{n}.diff'] = torch.zeros(shape)
            sd[f'diffusion_model.blocks.{i}.norm3.diff'] = torch.zeros(block.norm2.weight.shape)
            sd[f'diffusion_model.blocks.{i}.norm3.diff_b'] = torch.zeros(block.norm2.bias.shape)
    for wan_name, name in TOP.items():
        if layout == 'causvid' and 'embedding' in wan_name:
            continue
        pair(wan_name, transformer.get_submodule(name))  # diffusers takes no alpha here
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return str(path)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """(diffusers folder, our TextToVideo, reference WanPipeline with FlowMatchEuler)."""
    torch.set_num_threads(1)
    from sora_jax.pipeline import TextToVideo

    src = make_tiny_wan_folder(str(tmp_path_factory.mktemp('distill_src')))
    dst = str(tmp_path_factory.mktemp('distill_dst'))
    wan.convert_folder(src, dst, wan.COMPONENTS)
    preset = distill.get('lightx2v_4step')
    ref = load_reference_pipeline(src)
    sched = FlowMatchEulerDiscreteScheduler(shift=preset.shift)
    # the distilled times: LightX2V's step list over 1000, which the scheduler shifts itself
    unshifted = [k / 1000 for k in preset.denoising_step_list]
    sched.set_timesteps = functools.partial(sched.set_timesteps, sigmas=unshifted)
    ref.scheduler = sched
    return src, TextToVideo.from_wan(dst, tiny_config()), ref, tmp_path_factory.mktemp('loras')


def test_diffusers_schedule_is_the_preset(tiny):
    _, _, ref, _ = tiny
    ref.scheduler.set_timesteps(4)
    want = np.asarray(distill.get('lightx2v_4step').sigmas())
    np.testing.assert_allclose(ref.scheduler.sigmas.numpy(), want, atol=1e-6)
    np.testing.assert_allclose(ref.scheduler.timesteps.numpy(), 1000 * want[:-1], atol=1e-3)
    np.testing.assert_allclose(want, [1.0, 0.9375, 5 / 6, 0.625, 0.0], atol=1e-12)


@pytest.mark.parametrize('layout', ['lightx2v', 'causvid'])
def test_distilled_lora_sample_matches_diffusers(tiny, layout):
    _, pipe, ref, folder = tiny
    path = write_layout(folder / f'{layout}.safetensors', ref.transformer, layout)
    c = tiny_config()
    noise = torch.randn(1, 4, 2, 4, 6, generator=torch.Generator().manual_seed(3))
    kw = dict(prompt=[PROMPT], num_frames=5, height=32, width=48, num_inference_steps=4)
    with torch.no_grad():
        base = ref(
            **kw,
            guidance_scale=1.0,
            latents=noise,
            output_type='latent',
            max_sequence_length=c.text.max_length,
        ).frames.numpy()
        ref.load_lora_weights(path, adapter_name='distill')
        try:
            want = ref(
                **kw,
                guidance_scale=1.0,
                latents=noise,
                output_type='latent',
                max_sequence_length=c.text.max_length,
            ).frames.numpy()
        finally:
            ref.unload_lora_weights()
    want = want.transpose(0, 2, 3, 4, 1)
    ours_kw = dict(
        num_frames=5,
        height=32,
        width=48,
        distill_preset='lightx2v_4step',
        latents=noise.permute(0, 2, 3, 4, 1).numpy(),
        progress=False,
        watermark=False,
        output_type='latent',
    )
    for merge in (True, False):
        pipe.set_loras([(path, 1.0)], merge=merge)
        try:
            lat = pipe(PROMPT, **ours_kw)
        finally:
            pipe.set_loras([])
        err = np.abs(lat - want).max()
        moved = np.abs(want - base.transpose(0, 2, 3, 4, 1)).max()
        print(
            f'{layout} merge={merge}: latents max|err| {err:.2e} (the LoRA moved them {moved:.2f})'
        )
        assert moved > 0.1  # the LoRA changes the sample: the comparison is not vacuous
        assert err < LATENT_ATOL
