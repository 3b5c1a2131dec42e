"""experiments/aot.py --task=rollout: one chunk of a causal Wan DiT's chunked rollout
(`pipeline/rollout.chunk_step`) compiled for a TPU slice with an abstract key/value cache, on the
tiny Wan config: it reports memory, and the program does not depend on the video's length."""

import pytest

from configs import wan21
from sora_jax.aot import compile as compile_lib
from sora_jax.aot import report, run

pytestmark = pytest.mark.slow

pytest.importorskip('libtpu', reason='libtpu is in the [test] extra')

WINDOW = 2


def _causal(chunk=3):
    c = wan21.get_config('tiny')
    c.mesh.shape = (1, 1, 1, 4)
    c.model.causal_chunk = chunk
    return c


def _check(num_frames):
    return run.check(
        _causal(),
        'v5p-8',
        'rollout',
        num_frames=num_frames,
        height=64,
        width=64,
        batch_size=1,
        rollout=compile_lib.RolloutShape(window=WINDOW, steps=1, sampler='euler'),
    )


@pytest.fixture(scope='module')
def reports():
    return _check(49), _check(961)  # 5 chunks (3 s at 16 fps) and 81 chunks (60 s)


def test_rollout_chunk_compiles_with_its_cache(reports):
    rep = reports[0]
    assert rep['task'] == 'rollout' and rep['fits'] and rep['attention'] == 'splash'
    assert rep['kernels'].get('splash_mha_fwd', 0) >= 1
    ro = rep['rollout']
    c = _causal()
    # 64x64 pixels: an 8x8 latent, 4x4 tokens a frame (2x2 patches); 3 frames a chunk
    assert ro['chunk_tokens'] == 3 * 16 and rep['tokens_per_clip'] == 48
    assert ro['cache_tokens'] == WINDOW * 48 and ro['evaluations'] == 1 + 1
    assert rep['inputs']['cache_k'] == [
        c.model.depth,
        2,  # the CFG rows: conditional and unconditional each keep their cache rows
        WINDOW * 48,
        c.model.num_heads,
        c.model.dim // c.model.num_heads,
    ]
    # k and v, float32, the slots split over the 4 sequence chips
    full = 2 * c.model.depth * 2 * WINDOW * 48 * c.model.dim * 4
    assert ro['cache_bytes_per_chip'] == full // 4
    mem = rep['memory_bytes']
    assert mem['argument'] >= ro['cache_bytes_per_chip']  # the cache is an input...
    assert mem['output'] >= ro['cache_bytes_per_chip']  # ...and, written, an output
    assert 0 < mem['total'] < rep['hbm_bytes']
    assert rep['executed_flops_per_device'] > 0 and rep['roofline']['step_s'] > 0
    assert 'cache of 2 chunks' in report.text(rep)


def test_rollout_memory_does_not_grow_with_the_video(reports):
    short, long = reports
    assert (short['rollout']['chunks'], long['rollout']['chunks']) == (5, 81)
    assert short['memory_bytes'] == long['memory_bytes']
    assert short['collectives'] == long['collectives']


def test_rollout_needs_a_causal_model():
    with pytest.raises(ValueError, match='causal_chunk'):
        run.check(
            _causal(chunk=0), 'v5p-8', 'rollout', num_frames=49, height=64, width=64, batch_size=1
        )


def test_rollout_advice_names_the_tensor_axis_and_the_window():
    """A rollout whose temporaries overflow (XLA's figure for Wan 1.3B at 720p on v5e-8 with the
    cache's slots over 8 sequence chips: 17.49 GiB) is told to split heads, not sequence."""
    g = 2**30
    mesh = {'data': 1, 'fsdp': 1, 'tensor': 1, 'sequence': 8}
    out = report.advice('rollout', False, {'temp': 17.49 * g}, 14.9 * g, {}, mesh, 'splash', 2)
    assert any("'tensor'" in a for a in out) and any('--rollout_window' in a for a in out)
    assert not any('batch' in a for a in out)
    # heads already over all 8 chips (14B at 720p on v5e-8): only the window or a larger slice
    tp = dict(mesh, tensor=8, sequence=1)
    out = report.advice('rollout', False, {'temp': 22.65 * g}, 14.9 * g, {}, tp, 'splash', 2)
    assert out and not any("'tensor' axis" in a for a in out)
    assert any('--rollout_window' in a for a in out)
