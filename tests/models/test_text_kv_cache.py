"""Text keys/values computed once (`DiT.text_kv`, `SampleOptions.text_kv_cache`): the DiT with
precomputed cross-attention K/V equals the DiT recomputing them, and so does the whole guided
sampler (max abs difference <= 1e-6 in float32), on the tiny Wan T2V and I2V configs, the shapes
family, LoRA adapters on the cross-attention projections, merged LoRAs, two experts (each with
its own K/V) and skip-layer guidance."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import shapes as shapes_config
from sora_jax import config_files
from sora_jax.models.dit import DiT, DiTConfig, dit_config
from sora_jax.pipeline import ModelFamily, TextToVideo
from sora_jax.pipeline.denoise import DiTInputs, denoise
from sora_jax.pipeline.options import DenoisePlan

TOL = 1e-6
B, L, S = 2, 6, 5  # prompts, text tokens, image tokens
LATENT = (4, 4, 4)  # (T', h, w)


def _wan(arg: str):
    return config_files.load(f'configs/wan21.py:{arg}')


def _dit_cfg(config, **kw) -> DiTConfig:
    if config.model.get('image_dim', 0):  # I2V: input wider than the output
        cfg = DiTConfig.from_config(dict(config.model.to_dict(), out_channels=4))
    else:
        cfg = dit_config(config)
    return dataclasses.replace(cfg, **kw)


def _randomized(cfg: DiTConfig, seed: int = 0):
    """(graphdef, params) with every parameter perturbed (zero-initialised tables and biases
    would hide a wrong K/V)."""
    graphdef, params = nnx.split(DiT(cfg, rngs=nnx.Rngs(seed)))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [a + 0.05 * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)]
    return graphdef, jax.tree.unflatten(tree, leaves)


def _inputs(cfg: DiTConfig, rows: int = B):
    rng = np.random.default_rng(0)
    ctx = jnp.asarray(rng.standard_normal((rows, L, cfg.text_dim)), jnp.float32)
    lengths = L - 2 * (np.arange(rows)[:, None] % 2)  # every other row padded
    mask = jnp.asarray(np.arange(L)[None] < lengths, jnp.int32)
    img = None
    if cfg.image_dim:
        img = jnp.asarray(rng.standard_normal((rows, S, cfg.image_dim)), jnp.float32)
    return ctx, mask, img


@functools.lru_cache(maxsize=None)
def _forward(graphdef):
    def f(params, x, t, ctx, mask, img, cached: bool):
        dit = nnx.merge(graphdef, params)
        kv = dit.text_kv(ctx, img) if cached else None
        return dit(x, t, ctx, mask, image=img, text_kv=kv)

    return jax.jit(f, static_argnames='cached')


def _dit_diff(graphdef, params, cfg):
    ctx, mask, img = _inputs(cfg)
    x = jax.random.normal(jax.random.key(3), (B, *LATENT, cfg.in_channels))
    t = jnp.array([0.9, 0.35])
    f = _forward(graphdef)
    ref = f(params, x, t, ctx, mask, img, cached=False)
    out = f(params, x, t, ctx, mask, img, cached=True)
    assert float(jnp.abs(ref).max()) > 0.1  # a real output, not zeros
    return float(jnp.abs(out - ref).max())


@pytest.mark.parametrize('arg', ['tiny', 'tiny_i2v'])
def test_text_kv_shapes(arg):
    cfg = _dit_cfg(_wan(arg))
    graphdef, params = _randomized(cfg)
    ctx, _, img = _inputs(cfg)
    kv = jax.jit(lambda p: nnx.merge(graphdef, p).text_kv(ctx, img))(params)
    hd = cfg.dim // cfg.num_heads
    assert kv.k.shape == kv.v.shape == (cfg.depth, B, L, cfg.num_heads, hd)
    if cfg.image_dim:
        assert kv.k_img.shape == kv.v_img.shape == (cfg.depth, B, S, cfg.num_heads, hd)
    else:
        assert kv.k_img is None and kv.v_img is None
    assert float(jnp.abs(kv.k[0] - kv.k[1]).max()) > 1e-3  # each block its own projections


@pytest.mark.parametrize(
    'arg,kw',
    [
        ('tiny', {}),
        ('tiny', dict(scan_layers=False)),
        ('tiny_i2v', {}),
        # adapters kept separate on the projections text_kv runs (LoRALinear)
        ('tiny', dict(lora=(('attn2.to_k', 2, 1.0), ('attn2.to_v', 2, 0.5)))),
    ],
)
def test_dit_cached_equals_recomputed(arg, kw):
    cfg = _dit_cfg(_wan(arg), **kw)
    graphdef, params = _randomized(cfg)
    assert _dit_diff(graphdef, params, cfg) <= TOL


@pytest.mark.slow
def test_shapes_family_dit():
    cfg = dit_config(shapes_config.get_config('tiny'))
    graphdef, params = _randomized(cfg)
    assert _dit_diff(graphdef, params, cfg) <= TOL


def test_wrong_rows_are_refused():
    cfg = _dit_cfg(_wan('tiny'))
    graphdef, params = _randomized(cfg)
    ctx, mask, _ = _inputs(cfg)
    dit = nnx.merge(graphdef, params)
    kv = dit.text_kv(ctx[:1])
    x = jnp.zeros((B, *LATENT, cfg.in_channels))
    with pytest.raises(ValueError, match=r'text_kv keys have shape .* expected \[depth=2, batch=2'):
        dit(x, jnp.array([0.5, 0.5]), ctx, mask, text_kv=kv)


def _plan(family, cached: bool, **kw) -> DenoisePlan:
    base = dict(
        family=family,
        sampler='unipc',
        num_steps=4,
        shift=3.0,
        guidance_scale=5.0,
        guidance_scale_2=3.0,
        guidance_interval=(0.0, 1.0),
        t_start=1.0,
        timestep_quantization=1000,
        replace_known=False,
        expand_timesteps=False,
        skip_guidance_scale=0.0,
        skip_layers=(),
        skip_guidance_interval=(0.0, 1.0),
        progress=False,
        text_kv_cache=cached,
    )
    return DenoisePlan(**{**base, **kw})


_denoise = jax.jit(denoise, static_argnames=('graphdef', 'plan'))


def _sampler_diff(config, cfg, graphdef, params, params_2=None, **plan_kw):
    family = ModelFamily.of_config(
        config,
        image_channels=bool(cfg.image_dim),
        boundary_ratio=0.6 if params_2 is not None else None,
    )
    ctx, mask, img = _inputs(cfg, 2 * B)  # conditional rows, then unconditional
    c = cfg.out_channels
    noise = jax.random.normal(jax.random.key(5), (B, *LATENT, c))
    mask_t = jnp.zeros((B, LATENT[0]))
    known = jnp.zeros((B, *LATENT, c))
    latents = None
    if cfg.image_dim:  # [mask channels, image latents]: what the DiT input adds to x_t
        latents = jax.random.normal(jax.random.key(6), (B, *LATENT, cfg.in_channels - c))
    inputs = DiTInputs(mask_t, known, ctx, mask, latents, None if img is None else img[:B])
    run = lambda cached: _denoise(
        params, params_2, noise, inputs, graphdef=graphdef, plan=_plan(family, cached, **plan_kw)
    )
    ref, out = run(False)[0], run(True)[0]  # (latents, step-cache carry)
    assert float(jnp.abs(ref - noise).max()) > 0.1
    return float(jnp.abs(out - ref).max())


@pytest.mark.slow
@pytest.mark.parametrize('arg', ['tiny', 'tiny_i2v'])
def test_sampler_cached_equals_recomputed(arg):
    config = _wan(arg)
    cfg = _dit_cfg(config)
    graphdef, params = _randomized(cfg)
    assert _sampler_diff(config, cfg, graphdef, params) <= TOL


@pytest.mark.slow
def test_sampler_two_experts_each_own_kv():
    """Wan 2.2 A14B: two experts, K/V of each from its own weights (sharing them would differ)."""
    config = _wan('tiny')
    cfg = _dit_cfg(config)
    graphdef, params = _randomized(cfg, 0)
    _, params_2 = _randomized(cfg, 7)
    assert _sampler_diff(config, cfg, graphdef, params, params_2) <= TOL


@pytest.mark.slow
def test_sampler_skip_layer_guidance():
    """Three row groups (cond, uncond, weakened cond) and the conditional rows alone outside the
    guidance interval: each reads its slice of the one K/V computation."""
    config = _wan('tiny')
    cfg = _dit_cfg(config)
    graphdef, params = _randomized(cfg)
    d = _sampler_diff(
        config,
        cfg,
        graphdef,
        params,
        skip_guidance_scale=1.5,
        skip_layers=(1,),
        guidance_interval=(0.0, 0.7),
    )
    assert d <= TOL


def _lora_file(path, cfg, seed=1, rank=2):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    sd = {}
    for i in range(cfg.depth):
        for name in ('attn2.to_k', 'attn2.to_v', 'attn1.to_q'):
            sd[f'transformer.blocks.{i}.{name}.lora_A.weight'] = rng.standard_normal(
                (rank, cfg.dim)
            ).astype(np.float32)
            sd[f'transformer.blocks.{i}.{name}.lora_B.weight'] = rng.standard_normal(
                (cfg.dim, rank)
            ).astype(np.float32)
    save_file(sd, path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize('merge', [True, False])
def test_pipeline_with_lora(tmp_path, merge):
    """The whole TextToVideo call (shapes family), LoRAs on the cross-attention projections
    merged into the kernels or kept apart: text_kv_cache on == off."""
    pipe = TextToVideo.from_config(shapes_config.get_config('tiny'))
    f = _lora_file(str(tmp_path / 'a.safetensors'), dit_config(pipe.config))
    pipe.set_loras([(f, 0.5)], merge=merge)
    kw = dict(
        num_inference_steps=3,
        guidance_scale=3.0,
        num_frames=4,
        height=8,
        width=8,
        progress=False,
        output_type='latent',
        moderation=False,
        watermark=False,
    )
    ref = pipe(['a red circle', 'un cuadrado azul'], text_kv_cache=False, **kw)
    out = pipe(['a red circle', 'un cuadrado azul'], **kw)  # on by default (config.sample)
    assert np.abs(ref).max() > 0.1
    assert np.abs(out - ref).max() <= TOL
