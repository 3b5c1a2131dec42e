"""Smoke test of experiments/benchmark.py (the CLI of sora_jax/bench/) at tiny configs: the JSON
has the figures, all positive, and (with torch) the first train-step losses of sora_jax and
diffusers agree; the bench machinery's pieces on their own; the library imports from anywhere."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HAVE_TORCH = all(importlib.util.find_spec(m) for m in ('torch', 'diffusers'))


def _run(args, tmp_path, timeout=600):
    out = tmp_path / 'bench.json'
    env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}  # one CPU device
    env['JAX_PLATFORMS'] = 'cpu'
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, 'experiments', 'benchmark.py'),
            *args,
            f'--json={out}',
            '--threads=1',
            '--rounds=1',
            '--iters=1',
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_dit_benchmark_json(tmp_path):
    fig, stdout = _run(
        [
            'dit',
            '--dim=32',
            '--heads=2',
            '--ffn_dim=64',
            '--depth=2',
            '--text_dim=16',
            '--text_len=4',
            '--latent=2,4,4',
            '--channels=4',
            '--batch=2',
            '--compile_depths=1,2',
            '--matmul_size=256',
            '--quiet_share=-1',
            '--quiet_load=-1',  # any machine counts as loaded
            f'--torch={HAVE_TORCH}',
        ],
        tmp_path,
    )
    keys = [
        'tokens_per_s',
        'step_s',
        'achieved_flops',
        'matmul_peak_flops',
        'mfu',
        'compile_s',
        'model_flops_per_step',
        'params',
        'rss_peak_bytes',
        'compile_s_depth1',
        'compile_s_depth2',
        'compile_ratio',
    ]
    keys += ['forward_s']
    if HAVE_TORCH:
        keys += [
            'speed_ratio_vs_torch',
            'torch_step_s',
            'torch_tokens_per_s',
            'torch_mfu',
            'torch_forward_s',
            'forward_speed_ratio_vs_torch',
        ]
    for k in keys:
        assert isinstance(fig[k], (int, float)) and fig[k] > 0, (k, fig.get(k))
    assert fig['tokens_per_step'] == 2 * 2 * 2 * 2  # batch * T * (H/2) * (W/2)
    assert fig['mfu'] < 1.5  # sane: model FLOP/s cannot be far above the measured matmul peak
    assert abs(fig['tokens_per_s'] * fig['step_s'] - fig['tokens_per_step']) < 1e-6 * 16
    assert 'mfu' in stdout and 'benchmark dit' in stdout  # the table is printed
    # medians over interleaved rounds, with their range; the load is recorded and judged
    assert fig['rounds'] == 1 and fig['forward_batch'] == 4
    lo, hi = fig['step_s_range']
    assert lo <= fig['step_s'] <= hi
    assert fig['load_before'] >= 0 and fig['load_after'] >= 0
    assert fig['other_cpu_share'] is None or 0 <= fig['other_cpu_share'] <= 1.5
    assert fig['loaded'] is True and 'LOADED MACHINE' in fig['warning'] and 'LOADED' in stdout
    if HAVE_TORCH:
        assert fig['torch_threads'] == fig['threads'] == 1
        assert abs(fig['first_loss_jax'] - fig['first_loss_torch']) < 1e-4 * fig['first_loss_torch']
        lo, hi = fig['speed_ratio_range']
        assert lo <= fig['speed_ratio_vs_torch'] <= hi


def test_quiet_machine_has_no_warning(tmp_path):
    fig, stdout = _run(
        [
            'dit',
            '--dim=32',
            '--heads=2',
            '--ffn_dim=64',
            '--depth=1',
            '--text_dim=16',
            '--text_len=4',
            '--latent=2,4,4',
            '--channels=4',
            '--batch=1',
            '--compile_depths=',
            '--matmul_size=64',
            '--noforward',
            '--torch=false',
            '--quiet_share=1e9',
            '--quiet_load=1e9',
        ],
        tmp_path,
    )
    assert fig['loaded'] is False and 'warning' not in fig and 'LOADED' not in stdout
    assert 'forward_s' not in fig and 'torch_step_s' not in fig


def test_sample_benchmark_json(tmp_path):
    fig, _ = _run(
        [
            'sample',
            '--sample_config=tiny',
            '--sample_steps=2',
            '--sample_frames=4',
            '--sample_size=8',
        ],
        tmp_path,
    )
    assert fig['output_shape'] == [1, 4, 8, 8, 3]
    for k in ('seconds_per_clip', 'seconds_per_step', 'first_call_s', 'params'):
        assert fig[k] > 0, k
    assert abs(fig['seconds_per_step'] * 2 - fig['seconds_per_clip']) < 1e-9


def test_unknown_subcommand_is_an_error(tmp_path):
    with pytest.raises(AssertionError, match='usage'):
        _run(['vea'], tmp_path, timeout=300)


def test_load_verdict_and_timing_pieces():
    from sora_jax.bench import machine, profile, timing

    assert machine.load_verdict(0.05, 99.0, quiet_share=0.1, quiet_load=None) is None
    assert 'other processes used 30%' in machine.load_verdict(0.3, 0.0, 0.1, None)
    # without /proc/stat the load average before the run decides
    assert machine.load_verdict(None, 3.0, 0.1, quiet_load=2.0).startswith('LOADED MACHINE')
    assert machine.load_verdict(None, 1.0, 0.1, quiet_load=2.0) is None
    assert profile.op_kind('ynn_fusion.63') == 'ynn_fusion'
    assert profile.op_kind('dot.1.2') == 'dot' and profile.op_kind('copy') == 'copy'
    s = timing.spread([1.0, 3.0, 2.0])
    assert s == dict(median=2.0, min=1.0, max=3.0, spread=1.0)


def test_library_imports_outside_the_repository(tmp_path):
    """What the CLIs, tests and notebooks import lives in the installed package: importable with
    the working directory outside the checkout (no sys.path insert), configs/ found from there."""
    code = (
        'import sora_jax.bench.dit, sora_jax.bench.sample, sora_jax.convert.repatch, '
        'sora_jax.evaluation.shapes_eval, sora_jax.evaluation.capabilities, '
        'sora_jax.safety.watermark_eval, sora_jax.aot.table, sora_jax.models.flops\n'
        'from sora_jax import config_files\n'
        "print(config_files.load('configs/shapes.py:tiny').model.depth)\n"
        'print(len(sora_jax.evaluation.shapes_eval.default_holdout()))'
    )
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    proc = subprocess.run(
        [sys.executable, '-c', code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    from configs import shapes as shapes_config

    depth, holdout = proc.stdout.split()
    assert int(depth) == shapes_config.get_config('tiny').model.depth
    assert int(holdout) == len(shapes_config.HOLDOUT)
