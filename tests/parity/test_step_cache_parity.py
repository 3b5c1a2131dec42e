"""Step caches against diffusers' hooks: on the tiny random Wan folder (tests/parity/wan_fixture.py)
`TextToVideo(..., cache=...)` skips the same DiT evaluations as `WanPipeline` with
`transformer.enable_cache(...)` of the same kind and settings, and samples the same latents.

* First-Block Cache: `FirstBlockCacheConfig(threshold)`.
* MagCache: diffusers' calibration mode (`MagCacheConfig(calibrate=True)`) records the magnitude
  ratios of the tiny model (ours records the same ratios), then both run with those ratios.
* TaylorSeer: `TaylorSeerCacheConfig(use_lite_mode=True)` (the DiT output predicted between
  full evaluations), factors in float32.

Which evaluations diffusers skipped is read from its last block's FFN: it runs only in the
evaluations the cache computes. CFG's two passes are separate contexts there, separate branches
here; both lists are compared.
"""

import ast
import contextlib
import io

import numpy as np
import pytest
import torch

from sora_jax.convert import wan
from sora_jax.pipeline.step_cache import StepCache
from tests.parity.wan_fixture import load_reference_pipeline, make_tiny_wan_folder, tiny_config

pytestmark = pytest.mark.slow

LATENT_ATOL = 1e-4  # max |ours - diffusers| over the sampled latents
STEPS, FRAMES, SIZE, GUIDANCE = 8, 5, 32, 5.0
PROMPT = 'A red circle moves to the left across a blue background.'
NEG = 'static, blurred details'


@pytest.fixture(scope='module')
def wan_pair(tmp_path_factory):
    """(reference WanPipeline, our TextToVideo) over the same tiny random weights."""
    torch.set_num_threads(1)
    from sora_jax.pipeline import TextToVideo

    src = make_tiny_wan_folder(str(tmp_path_factory.mktemp('wan_src')))
    dst = str(tmp_path_factory.mktemp('wan_dst'))
    wan.convert_folder(src, dst)
    return load_reference_pipeline(src), TextToVideo.from_wan(dst, tiny_config())


@pytest.fixture(scope='module')
def noise():
    c = tiny_config()
    gen = torch.Generator().manual_seed(1)
    lat_t = 1 + (FRAMES - 1) // 4
    return torch.randn(1, c.model.in_channels, lat_t, SIZE // 8, SIZE // 8, generator=gen)


def _reference(ref_pipe, noise, config):
    """(latents [B, T', h, w, C], skipped evaluation indices per branch (cond, uncond), stdout)
    of diffusers with `config` on its transformer (None: no cache)."""
    transformer = ref_pipe.transformer
    calls = []  # per transformer call: did the last block's FFN run?
    pre = transformer.register_forward_pre_hook(lambda *_: calls.append(False))
    ran = transformer.blocks[-1].ffn.register_forward_hook(lambda *_: calls.__setitem__(-1, True))
    if config is not None:
        transformer.enable_cache(config)
    out = io.StringIO()
    try:
        with torch.no_grad(), contextlib.redirect_stdout(out):
            lat = ref_pipe(
                prompt=[PROMPT],
                negative_prompt=[NEG],
                num_frames=FRAMES,
                height=SIZE,
                width=SIZE,
                num_inference_steps=STEPS,
                guidance_scale=GUIDANCE,
                latents=noise,
                output_type='latent',
                max_sequence_length=tiny_config().text.max_length,
            ).frames.numpy()
    finally:
        pre.remove()
        ran.remove()
        if config is not None:
            transformer.disable_cache()
    assert len(calls) == 2 * STEPS  # cond, uncond per step
    skipped = tuple(tuple(i for i in range(STEPS) if not calls[2 * i + g]) for g in (0, 1))
    return lat.transpose(0, 2, 3, 4, 1), skipped, out.getvalue()


def _ours(pipe, noise, cache):
    lat = pipe(
        PROMPT,
        negative_prompt=NEG,
        num_frames=FRAMES,
        height=SIZE,
        width=SIZE,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        sampler='unipc',
        latents=noise.permute(0, 2, 3, 4, 1).numpy(),
        output_type='latent',
        progress=False,
        watermark=False,
        cache=cache,
    )
    return lat, pipe.last_cache_stats


def _compare(name, wan_pair, noise, ref_config, cache):
    ref_pipe, pipe = wan_pair
    ref_lat, ref_skipped, _ = _reference(ref_pipe, noise, ref_config)
    lat, stats = _ours(pipe, noise, cache)
    err = float(np.abs(lat - ref_lat).max())
    full_lat, _, _ = _reference(ref_pipe, noise, None)
    moved = float(np.abs(full_lat - ref_lat).max())
    print(
        f'{name}: skipped {stats.skipped_steps} (diffusers {ref_skipped}); latents max|err| '
        f'{err:.2e}; the cache moved diffusers by {moved:.2e}'
    )
    assert stats.skipped_steps == ref_skipped
    assert 0 < stats.skipped < stats.evaluations  # some skipped, not all
    assert stats.skipped == sum(len(s) for s in ref_skipped)
    assert moved > 10 * LATENT_ATOL  # skipping changed the result: the comparison is sharp
    assert err < LATENT_ATOL


@pytest.mark.parametrize('threshold', [0.1, 0.3])
def test_first_block_cache_matches_diffusers(wan_pair, noise, threshold):
    from diffusers.hooks import FirstBlockCacheConfig

    _compare(
        f'firstblock {threshold}',
        wan_pair,
        noise,
        FirstBlockCacheConfig(threshold=threshold),
        StepCache('firstblock', threshold=threshold),
    )


@pytest.fixture(scope='module')
def mag_ratios(wan_pair, noise):
    """diffusers' calibrated magnitude ratios of the tiny model, (cond, uncond); ours agree."""
    from diffusers.hooks import MagCacheConfig

    ref_pipe, pipe = wan_pair
    _, _, printed = _reference(
        ref_pipe, noise, MagCacheConfig(calibrate=True, num_inference_steps=STEPS)
    )
    lines = printed.splitlines()
    ref_ratios = [ast.literal_eval(x) for x in lines if x.startswith('[') and x.endswith(']')]
    assert len(ref_ratios) == 2  # cond, then uncond
    _, stats = _ours(pipe, noise, StepCache('magcache', calibrate=True))
    assert stats.skipped == 0
    ratio_err = np.abs(np.asarray(stats.mag_ratios) - np.asarray(ref_ratios)).max()
    print(f'magcache ratios {ref_ratios[0]}: max|ours - diffusers| {ratio_err:.2e}')
    assert ratio_err < 1e-4
    return tuple(ref_ratios[0])


@pytest.mark.parametrize('threshold,max_skip', [(0.2, 2), (0.012, 3)])
def test_magcache_matches_diffusers(wan_pair, noise, mag_ratios, threshold, max_skip):
    from diffusers.hooks import MagCacheConfig

    _compare(
        f'magcache {threshold} K={max_skip}',
        wan_pair,
        noise,
        MagCacheConfig(
            threshold=threshold,
            max_skip_steps=max_skip,
            retention_ratio=0.2,
            mag_ratios=list(mag_ratios),
            num_inference_steps=STEPS,
        ),
        StepCache(
            'magcache',
            threshold=threshold,
            max_skip=max_skip,
            retention_ratio=0.2,
            mag_ratios=mag_ratios,
        ),
    )


def test_taylorseer_matches_diffusers_lite_mode(wan_pair, noise):
    from diffusers.hooks import TaylorSeerCacheConfig

    _compare(
        'taylorseer',
        wan_pair,
        noise,
        TaylorSeerCacheConfig(
            cache_interval=3,
            disable_cache_before_step=2,
            max_order=1,
            taylor_factors_dtype=torch.float32,
            use_lite_mode=True,
        ),
        StepCache('taylorseer', interval=3, warmup=2, order=1),
    )
