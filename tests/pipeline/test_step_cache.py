"""Step caches (sora_jax/pipeline/step_cache.py) on a tiny shapes-family DiT: no skip is exactly
no cache, the skip rules on known schedules, the reset at Wan 2.2's expert switch, one branch
with guidance 1, the checks, and on a mesh of 8 simulated devices the same skips and latents as
on one device. Parity with diffusers' hooks: tests/parity/test_step_cache_parity.py."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from configs import shapes as shapes_config
from sora_jax.pipeline import ModelFamily, TextToVideo
from sora_jax.pipeline.step_cache import StepCache
from tests.xla import xla_flags

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
STEPS = 8
KW = dict(
    num_inference_steps=STEPS,
    guidance_scale=3.0,
    sampler='euler',
    shift=1.0,
    output_type='latent',
    progress=False,
    watermark=False,
)


def _config():
    c = shapes_config.get_config('tiny')
    c.model.patch_size = (1, 2, 2)
    c.sample.num_frames, c.sample.height, c.sample.width = 2, 8, 8
    return c


@pytest.fixture(scope='module')
def pipe():
    return TextToVideo.from_config(_config())


@pytest.fixture(scope='module')
def plain(pipe):
    """Latents without a cache."""
    return pipe('a red circle', **KW)


@pytest.fixture(scope='module')
def experts(pipe):
    """The same tiny DiT as two experts: the second's weights scaled, the boundary at t = 0.5
    (Euler, shift 1, 8 steps: evaluations 0-4 high noise, 5-7 low)."""
    family = ModelFamily.of_config(pipe.config, boundary_ratio=0.5)
    params_2 = jax.tree.map(lambda x: 1.5 * x, pipe.params)
    return TextToVideo(
        pipe.config, pipe.graphdef, pipe.params, pipe.text, family=family, params_2=params_2
    )


@pytest.mark.parametrize(
    'cache',
    [
        StepCache('firstblock', threshold=0.0),
        pytest.param(
            StepCache('magcache', threshold=0.0, mag_ratios=(1.05,) * STEPS),
            marks=pytest.mark.slow,
        ),
    ],
    ids=['firstblock', 'magcache'],
)
def test_threshold_zero_is_no_cache(pipe, plain, cache):
    lat = pipe('a red circle', cache=cache, **KW)
    assert pipe.last_cache_stats.skipped == 0
    assert pipe.last_cache_stats.evaluations == 2 * STEPS  # cond + uncond per step
    np.testing.assert_array_equal(lat, plain)  # bit for bit


@pytest.mark.slow  # compiles a sampler per cache
def test_high_thresholds_skip_and_report(pipe, plain):
    # First-Block Cache: every evaluation after the first falls under a threshold of 10.
    lat = pipe('a red circle', cache=StepCache('firstblock', threshold=10.0), **KW)
    stats = pipe.last_cache_stats
    assert stats.skipped_steps == (tuple(range(1, STEPS)),) * 2
    assert stats.skipped == 2 * (STEPS - 1) and 'skipped' in str(stats)
    assert np.abs(lat - plain).max() > 1e-3  # the cache stood in for the DiT
    # MagCache: round(0.2 * 8) = 2 evaluations kept, then 2 skipped (max_skip) and 1 computed.
    magcache = StepCache('magcache', threshold=10.0, max_skip=2, mag_ratios=(1.0,) * STEPS)
    pipe('a red circle', cache=magcache, **KW)
    assert pipe.last_cache_stats.skipped_steps == ((2, 3, 5, 6),) * 2
    # TaylorSeer: computed at 0, 1 (warmup), then every 3rd: 3, 6.
    taylor = StepCache('taylorseer', interval=3, warmup=2)
    lat = pipe('a red circle', cache=taylor, **KW)
    assert pipe.last_cache_stats.skipped_steps == ((2, 4, 5, 7),) * 2
    assert np.isfinite(lat).all()


@pytest.mark.slow  # compiles a sampler per cache
def test_state_is_fresh_at_the_expert_switch(experts):
    """Each expert's first evaluation is computed, and TaylorSeer's schedule restarts there."""
    experts('a red circle', cache=StepCache('firstblock', threshold=10.0), **KW)
    assert experts.last_cache_stats.skipped_steps == ((1, 2, 3, 4, 6, 7),) * 2
    experts('a red circle', cache=StepCache('taylorseer', interval=3, warmup=2), **KW)
    assert experts.last_cache_stats.skipped_steps == ((2, 4, 7),) * 2
    # the expert switch resets MagCache's step count too: retention again at the low expert
    magcache = StepCache('magcache', threshold=10.0, max_skip=8, mag_ratios=(1.0,) * STEPS)
    experts('a red circle', cache=magcache, **KW)
    assert experts.last_cache_stats.skipped_steps == ((2, 3, 4, 7),) * 2


@pytest.mark.slow  # compiles a sampler per cache
def test_guidance_one_is_one_branch(pipe):
    kw = dict(KW, guidance_scale=1.0)
    plain1 = pipe('a red circle', **kw)
    lat = pipe('a red circle', cache=StepCache('firstblock', threshold=0.0), **kw)
    assert pipe.last_cache_stats.evaluations == STEPS
    np.testing.assert_array_equal(lat, plain1)


@pytest.mark.parametrize(
    'kwargs,match',
    [
        (dict(cache='bogus'), r"cache='bogus' is not one of"),
        (dict(cache='magcache'), r'cache=magcache needs mag_ratios'),
        (dict(cache=StepCache('firstblock', threshold=-1.0)), r'cache_threshold=-1.0'),
        (dict(cache=StepCache('taylorseer', warmup=0)), r'warmup=0 must be >= 1'),
        (
            dict(cache='firstblock', skip_guidance_scale=1.0, skip_layers=(1,)),
            r'runs without skip-layer guidance',
        ),
    ],
)
def test_bad_cache_options_are_errors(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipe('a red circle', **dict(KW, **kwargs))


def test_config_default_is_none(pipe, plain):
    assert pipe.config.sample.cache == 'none'
    pipe('a red circle', **KW)
    assert pipe.last_cache_stats is None


_MESH_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    from sora_jax.parallel import mesh as mesh_lib
    from sora_jax.pipeline import TextToVideo
    from sora_jax.pipeline.step_cache import StepCache
    from tests.pipeline.test_step_cache import KW, STEPS, _config

    assert jax.device_count() == 8
    pipe = TextToVideo.from_config(_config())
    prompts = ['a red circle', 'a blue square']
    caches = {
        'firstblock': StepCache('firstblock', threshold=0.3),
        'magcache': StepCache('magcache', threshold=10.0, max_skip=2, mag_ratios=(1.0,) * STEPS),
        'taylorseer': StepCache('taylorseer', interval=3, warmup=2),
    }
    one = {}
    for name, cache in caches.items():
        one[name] = (pipe(prompts, cache=cache, **KW), pipe.last_cache_stats.skipped_steps)
    mesh = mesh_lib.make_mesh((2, 2, 1, 2))  # data, fsdp, tensor, sequence
    out = {}
    with jax.set_mesh(mesh), mesh_lib.use_rules(None):
        pipe.params = jax.device_put(pipe.params, mesh_lib.state_shardings(pipe.params, mesh))
        for name, cache in caches.items():
            lat = pipe(prompts, cache=cache, **KW)
            out[name] = dict(
                err=float(np.abs(lat - one[name][0]).max()),
                skipped=pipe.last_cache_stats.skipped_steps,
                skipped_one=one[name][1],
            )
    print('RESULT ' + json.dumps(out))
    """
)


@pytest.mark.slow
def test_mesh_of_8_devices_equals_one_device():
    env = dict(os.environ, XLA_FLAGS=xla_flags(8), PYTHONPATH=REPO)
    proc = subprocess.run(
        [sys.executable, '-c', _MESH_SCRIPT],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith('RESULT ')][-1]
    res = json.loads(line[len('RESULT ') :])
    for name, r in res.items():
        print(name, r)
        assert r['skipped'] == r['skipped_one'] and any(r['skipped'])
        assert r['err'] < 1e-5
