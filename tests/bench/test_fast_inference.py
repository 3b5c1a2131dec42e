"""`experiments/benchmark.py fast_inference` (sora_jax/bench/fast_inference.py) at tiny sizes, one
round: its JSON has every part's figures, the caches skip at a high threshold and move the
result, recomputing the text keys / values changes nothing, int8 / fp8 shrink the weights; and the
pieces that need no model (option checks, the AOT reports it reads)."""

import json
import os
import subprocess
import sys

import pytest

from sora_jax.bench import fast_inference

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 4


@pytest.mark.slow  # compiles a sampler per cache for the shapes model and the tiny Wan DiT
def test_benchmark_json(tmp_path):
    out = tmp_path / 'fast.json'
    env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}  # one CPU device
    env['JAX_PLATFORMS'] = 'cpu'
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, 'experiments', 'benchmark.py'),
            'fast_inference',
            f'--json={out}',
            '--rounds=1',
            '--fast_min_round_s=0.05',
            '--fast_colors=red',  # the held-out red triangle: 7 clips
            f'--fast_shapes_steps={STEPS}',
            '--fast_wan=tiny',
            '--fast_wan_steps=6',
            '--fast_wan_latent=2,4,4',
            '--fast_text_len=8',
            '--fast_firstblock=',  # one cache keeps the compiles few (the others: parity and
            '--fast_magcache=10',  # unit tests of pipeline/step_cache.py)
            '--fast_taylorseer=',
            '--fast_memory=tiny',
            '--quiet_share=-1',  # any machine counts as loaded
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    fig = json.loads(out.read_text())
    assert fig['benchmark'] == 'fast_inference' and fig['loaded'] and 'warning' in fig
    names = ['full', 'magcache 10']

    shapes = fig['shapes']
    assert shapes['clips'] == 7 and len(shapes['prompts']) == 7
    assert list(shapes['variants']) == names
    assert len(shapes['mag_ratios']) == STEPS  # calibrated: one ratio per evaluation
    for name, v in shapes['variants'].items():
        assert v['seconds_per_clip'] > 0 and v['speedup'] > 0 and v['first_call_s'] > 0
        assert v['evaluations'] == 2 * STEPS  # CFG: two branches per step
        assert all(0.0 <= v['judge'][k] <= 1.0 for k in ('shape', 'color', 'motion', 'all'))
        assert (v['skipped'] > 0) == (name != 'full'), (name, v['skipped'])
    assert shapes['variants']['full']['speedup'] == 1.0

    wan = fig['wan']['tiny']
    assert wan['params'] == 22168 and wan['video_tokens'] == 8 and wan['iters'] >= 1
    v = wan['variants']
    assert list(v) == names[:1] + ['text K/V recomputed'] + names[1:]
    assert v['full']['max_abs_diff_vs_full'] == 0.0
    assert v['text K/V recomputed']['skipped'] == 0
    assert v['text K/V recomputed']['max_abs_diff_vs_full'] < 1e-5  # the same result
    for name in names[1:]:
        assert v[name]['skipped'] > 0 and v[name]['evaluations'] == 12
        assert v[name]['max_abs_diff_vs_full'] > 1e-4  # the cache stood in for the DiT
        assert v[name]['speedup'] > 0 and v[name]['seconds'] > 0

    dit = fig['memory']['dits']['configs/wan21.py:tiny']
    assert dit['params'] == 22168
    assert 2 * dit['params'] <= dit['bf16_bytes'] < 4 * dit['params']  # a few f32 leaves stay
    assert dit['fp8_bytes'] == dit['int8_bytes'] < dit['bf16_bytes']
    assert '| full |' in proc.stdout and '| configs/wan21.py:tiny | 22,168 |' in proc.stdout


def test_aot_rows_are_the_quantized_reports(tmp_path):
    report = dict(
        topology='v5e:2x2',
        chips=4,
        task='sample',
        memory_bytes={'total': 3 * 10**9},
        hbm_bytes=16 * 10**9,
        fits=True,
        command='python experiments/aot.py ...',
    )
    (tmp_path / 'a_int8.json').write_text(
        json.dumps(dict(report, quantize='int8', param_bytes=10**9))
    )
    (tmp_path / 'a.json').write_text(json.dumps(report))  # full precision: not a row
    (tmp_path / 'broken.json').write_text('{')
    rows = fast_inference.aot_quantized_rows(str(tmp_path))
    assert [(os.path.basename(r['file']), r['quantize'], r['param_bytes']) for r in rows] == [
        ('a_int8.json', 'int8', 10**9)
    ]
    text = fast_inference.format_markdown(
        dict(
            device='cpu',
            backend='cpu',
            threads=2,
            rounds=1,
            memory=dict(dits={}, aot=rows),
        )
    )
    assert '| int8 | 1.000 GB | 3.000 GB of 16.000 GB | True |' in text


@pytest.mark.parametrize(
    'kw, match',
    [
        (dict(rounds=0), 'rounds'),
        (dict(settings=(('teacache', (0.1,)),)), 'teacache'),
        (dict(settings=(('firstblock', ()),)), 'firstblock'),
        (dict(wan_steps=1), 'wan_steps'),
        (dict(wan_dtype='float16'), 'wan_dtype'),
    ],
)
def test_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        fast_inference.FastInferenceBench(**kw).check()


def test_random_dit_in_its_dtype_with_small_init_temporaries(load_config):
    """The random Wan DiT is created in its param_dtype, with rbg keys whose init needs less
    scratch than the weights it makes (threefry's: 2.8x the tiny DiT's bytes, 4.9x a 1.3B's)."""
    import dataclasses

    import jax
    import numpy as np

    from sora_jax.models.dit import dit_config

    cfg = dataclasses.replace(
        dit_config(load_config('configs/wan21.py:tiny')), dtype='bfloat16', param_dtype='bfloat16'
    )
    mem = jax.jit(fast_inference._dit_init(cfg)).lower().compile().memory_analysis()
    assert mem.temp_size_in_bytes < mem.output_size_in_bytes / 2, mem
    _, params = fast_inference.random_dit(cfg)
    leaves = jax.tree.leaves(params)
    bf16 = sum(a.nbytes for a in leaves if a.dtype == jax.numpy.bfloat16)
    assert bf16 > 0.9 * sum(a.nbytes for a in leaves)  # a few f32 norms / tables stay
    assert all(np.isfinite(np.asarray(a, np.float32)).all() for a in leaves)
    random = [a for a in leaves if float(np.std(np.asarray(a, np.float32))) > 0]  # not 0 / 1
    assert sum(a.nbytes for a in random) > 0.5 * sum(a.nbytes for a in leaves)
