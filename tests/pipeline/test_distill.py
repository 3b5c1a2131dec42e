"""Few-step sampling of distilled models: guidance 1 runs the DiT once per step on the
conditional rows alone (no unconditional pass), the distill presets' schedules, and the checks
of `sigmas=` / `distill_preset=`."""

import jax
import numpy as np
import pytest

from configs import shapes as shapes_config
from sora_jax.models import dit as dit_lib
from sora_jax.pipeline import TextToVideo, distill


def _pipe():
    c = shapes_config.get_config('tiny')
    c.sample.num_frames, c.sample.height, c.sample.width = 4, 8, 8
    return TextToVideo.from_config(c)


def _count_dit_rows(monkeypatch):
    """Records the batch rows of every DiT forward that runs (a host callback per call)."""
    rows = []
    call = dit_lib.DiT.__call__

    def counted(self, x, *args, **kw):
        jax.debug.callback(lambda n: rows.append(int(n)), x.shape[0])
        return call(self, x, *args, **kw)

    monkeypatch.setattr(dit_lib.DiT, '__call__', counted)
    return rows


@pytest.mark.parametrize('guidance, per_step', [(1.0, 2), (3.0, 4)])
def test_guidance_one_skips_the_unconditional_pass(monkeypatch, guidance, per_step):
    """Two prompts, 4 steps: 4 DiT calls of 2 rows at guidance 1, of 4 rows (cond + uncond)
    otherwise; guidance 1 equals the conditional velocity of the CFG path."""
    rows = _count_dit_rows(monkeypatch)
    pipe = _pipe()  # a fresh pipeline: its jitted sampler traces under the counter
    kw = dict(num_inference_steps=4, progress=False, watermark=False, output_type='latent')
    out = pipe(['a red circle', 'a blue square'], guidance_scale=guidance, **kw)
    jax.effects_barrier()
    assert rows == [per_step] * 4
    assert np.all(np.isfinite(out))


@pytest.mark.slow
def test_guidance_one_equals_cfg_at_scale_one_within_interval():
    """The single pass gives the sample CFG gives with guidance 1 (v_c + 0 (v_c - v_u))."""
    pipe = _pipe()
    kw = dict(num_inference_steps=3, progress=False, watermark=False, output_type='latent')
    one = pipe('a red circle', guidance_scale=1.0, **kw)
    # guidance 1 + 1e-7 takes the CFG path (both passes): the same to float precision
    cfg = pipe('a red circle', guidance_scale=1.0 + 1e-7, **kw)
    assert np.abs(one - cfg).max() < 1e-5


def test_lightx2v_preset_schedule():
    p = distill.get('lightx2v_4step')
    assert p.num_steps == 4 and p.guidance_scale == 1.0 and p.sampler == 'euler'
    np.testing.assert_allclose(p.sigmas(), [1.0, 0.9375, 5 / 6, 0.625, 0.0], atol=1e-12)
    with pytest.raises(ValueError, match="distill_preset='nope' is not one of"):
        distill.get('nope')


def test_preset_sets_the_call_options():
    pipe = _pipe()
    opts = pipe.check_inputs(
        'a red circle',
        num_frames=None,
        height=None,
        width=None,
        num_inference_steps=None,
        guidance_scale=None,
        negative_prompt=None,
        sampler=None,
        shift=None,
        seed=0,
        mode='t2v',
        strength=0.7,
        guidance_interval=(0.0, 1.0),
        skip_guidance_scale=None,
        skip_layers=None,
        skip_guidance_interval=None,
        output_type='latent',
        progress=False,
        moderation=True,
        watermark=False,
        guidance_scale_2=None,
        distill_preset='lightx2v_4step',
    )
    assert opts.num_inference_steps == 4 and opts.guidance_scale == 1.0
    assert opts.sampler == 'euler' and opts.shift == 5.0 and opts.timestep_quantization is None
    assert opts.sigmas == distill.get('lightx2v_4step').sigmas()


@pytest.mark.parametrize(
    'kwargs, match',
    [
        (dict(distill_preset='lightx2v_4step', num_inference_steps=8), 'conflicts with'),
        (dict(distill_preset='lightx2v_4step', shift=3.0), 'shift=3.0 conflicts'),
        (dict(sigmas=(1.0, 0.5)), 'must descend strictly from <= 1 to 0'),
        (dict(sigmas=(0.5, 0.8, 0.0)), 'must descend strictly'),
        (dict(sigmas=(1.0, 0.5, 0.0), num_inference_steps=4), 'sigmas has 2 steps'),
    ],
)
def test_bad_schedules_are_clear_errors(kwargs, match):
    pipe = _pipe()
    with pytest.raises(ValueError, match=match):
        pipe('a red circle', progress=False, **kwargs)


@pytest.mark.slow
def test_sigmas_option_is_the_schedule():
    """sigmas= given explicitly equals the same schedule made by the sampler's own rule."""
    from sora_jax.diffusion import samplers

    pipe = _pipe()
    kw = dict(guidance_scale=2.0, sampler='euler', progress=False, watermark=False)
    kw.update(output_type='latent')
    sig = tuple(samplers.make_sigmas(3, 2.0))
    a = pipe('a red circle', sigmas=sig, **kw)
    b = pipe('a red circle', num_inference_steps=3, shift=2.0, **kw)
    np.testing.assert_allclose(a, b, atol=1e-6)
    c = pipe('a red circle', sigmas=(1.0, 0.6, 0.2, 0.0), **kw)
    assert np.abs(a - c).max() > 1e-3
