"""VAE benchmark smoke test: tiny VAE, tiny frames; keys, positive figures, flat chunked memory."""

import json

import pytest

from sora_jax.evaluation import vae_bench
from sora_jax.models.vae import VAEConfig

pytestmark = pytest.mark.slow

FRAMES = (5, 33)
# Smaller than tiny_config (one down level, 2x time / space) so the 8 compiles stay quick.
MICRO = VAEConfig(
    base_dim=4,
    z_dim=4,
    dim_mult=(1, 2),
    num_res_blocks=1,
    temperal_downsample=(True,),
    latents_mean=None,
    latents_std=None,
)


@pytest.fixture(scope='module')
def result():
    return vae_bench.run(
        dict(
            vae_config=MICRO,
            vae_frames=FRAMES,
            vae_height=16,
            vae_width=16,
            vae_rounds=1,
            vae_iters=1,
        )
    )


def test_keys_and_figures(result):
    assert set(result) == {'setup', *map(str, FRAMES)}
    assert result['setup']['temporal_factor'] == 2 and result['setup']['params'] > 0
    for t in FRAMES:
        assert set(result[str(t)]) == {'chunked', 'whole'}
        for mode in ('chunked', 'whole'):
            for op in ('encode', 'decode'):
                r = result[str(t)][mode][op]
                assert r['fps'] > 0 and r['fps'] == pytest.approx(t / r['seconds'])
                assert r['peak_bytes'] == r['temp_bytes'] + r['argument_bytes'] + r['output_bytes']
                assert r['rss_growth_bytes'] >= 0
    # Decoded video [1, T, 16, 16, 3] float32 is the decode output.
    assert result['33']['chunked']['decode']['output_bytes'] == 33 * 16 * 16 * 3 * 4
    json.dumps(result)  # its own JSON
    table = vae_bench.format_table(result)
    assert len(table.splitlines()) == 2 + 2 * len(FRAMES)


def test_chunked_memory_flat_whole_memory_grows(result):
    lo, hi = str(FRAMES[0]), str(FRAMES[-1])
    c = lambda t, op: result[t]['chunked'][op]['temp_bytes']
    w = lambda t, op: result[t]['whole'][op]['temp_bytes']
    assert c(hi, 'decode') <= 1.5 * c(lo, 'decode')
    assert c(hi, 'encode') <= 1.5 * c(lo, 'encode')
    assert w(hi, 'decode') >= 2.0 * w(lo, 'decode')  # whole-video decode grows with T


def test_bad_args():
    with pytest.raises(ValueError, match='not a valid video length'):
        vae_bench.run(dict(vae_config=MICRO, vae_frames=(6,), vae_height=16, vae_width=16))
    with pytest.raises(ValueError, match="vae_config='nope'"):
        vae_bench.vae_config('nope')
