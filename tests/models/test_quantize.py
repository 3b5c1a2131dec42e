"""Weight-only quantized DiT weights (models/quantize.py, qwix): every block-stack kernel really is
int8 / fp8 (its error is above zero) and close to the full-precision DiT (error below a bound),
the bytes shrink by the expected factor, the rest of the params is untouched, the pipeline
samples with it (LoRAs merged before quantizing, both experts), and a bad --quantize is one
line before anything loads."""

import dataclasses
import functools
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import qwix
from flax import nnx

from configs import shapes as shapes_config
from sora_jax import config_files
from sora_jax.models import quantize
from sora_jax.models.dit import DiT, dit_config
from sora_jax.pipeline import ModelFamily, TextToVideo

ROOT = Path(__file__).resolve().parents[2]
# max |quantized - full| / max |full| of the tiny Wan DiT's output (measured ~0.5% int8, ~3% fp8)
BOUND = {'int8': 0.02, 'fp8': 0.08}
QDTYPE = {'int8': jnp.int8, 'fp8': jnp.float8_e4m3fn}


@functools.lru_cache(maxsize=None)
def _tiny_wan():
    """(graphdef, params) of configs/wan21.py:tiny's DiT, every parameter perturbed (zero
    tables and biases would make the output insensitive to the kernels)."""
    cfg = dit_config(config_files.load('configs/wan21.py:tiny'))
    graphdef, params = nnx.split(DiT(cfg, rngs=nnx.Rngs(0)))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [a + 0.05 * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)]
    return graphdef, jax.tree.unflatten(tree, leaves)


@functools.lru_cache(maxsize=None)
def _forward(graphdef):
    cfg = nnx.merge(graphdef, _tiny_wan()[1]).cfg
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 4, 4, 4, cfg.in_channels)), jnp.float32)
    ctx = jnp.asarray(rng.standard_normal((2, 6, cfg.text_dim)), jnp.float32)
    return jax.jit(lambda p: nnx.merge(graphdef, p)(x, jnp.array([0.9, 0.3]), ctx))


def _kernels(params):
    return {
        jax.tree_util.keystr(p): x
        for p, x in jax.tree_util.tree_leaves_with_path(params, is_leaf=quantize.is_quantized)
        if quantize.is_quantized(x)
    }


@pytest.mark.parametrize('qtype', ['int8', 'fp8'])
def test_error_is_small_and_not_zero(qtype):
    graphdef, params = _tiny_wan()
    f = _forward(graphdef)
    ref = f(params)
    out = f(quantize.quantize_params(params, qtype))
    rel = float(jnp.abs(out - ref).max() / jnp.abs(ref).max())
    print(f'tiny Wan DiT output, {qtype}: max |err| / max |ref| = {rel:.2e}')  # docs figure (-s)
    assert 1e-4 < rel < BOUND[qtype], rel


@pytest.mark.parametrize('qtype', ['int8', 'fp8'])
def test_every_block_kernel_quantized_rest_untouched(qtype):
    _, params = _tiny_wan()
    q = quantize.quantize_params(params, qtype)
    kernels = _kernels(q)
    cfg = dit_config(config_files.load('configs/wan21.py:tiny'))
    # attn1 q/k/v/out, attn2 q/k/v/out, ffn in/out: 10 per block, stacked [depth, in, out]
    assert len(kernels) == 10
    for name, k in kernels.items():
        assert 'blocks' in name and k.qvalue.dtype == QDTYPE[qtype], name
        assert k.qvalue.shape[0] == cfg.depth and k.scale.shape == (cfg.depth, 1, k.shape[2])
        full = params
        for key in jax.tree_util.tree_leaves_with_path(params):
            if jax.tree_util.keystr(key[0]) == name:
                full = key[1]
        deq = qwix.dequantize(k)
        assert deq.dtype == full.dtype
        err = float(jnp.abs(deq - full).max() / jnp.abs(full).max())
        assert 0 < err < (0.01 if qtype == 'int8' else 0.07), (name, err)
    flat_p = dict(jax.tree_util.tree_leaves_with_path(params))
    flat_q = dict(jax.tree_util.tree_leaves_with_path(q, is_leaf=quantize.is_quantized))
    for path, x in flat_q.items():
        if not quantize.is_quantized(x):
            np.testing.assert_array_equal(x, flat_p[path])  # norms, biases, embedders, head


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_weight_bytes_shrink_by_the_expected_factor(dtype):
    """f32 kernels -> 1 byte a weight + one f32 scale per (block, output channel); bf16 -> 1 byte
    + a bf16 scale; computed from shapes alone (eval_shape, nothing allocated)."""
    _, params = _tiny_wan()
    params = jax.tree.map(lambda a: a.astype(dtype), params)
    size = jnp.dtype(dtype).itemsize
    full = quantize.weight_bytes(params)
    for qtype in ('int8', 'fp8'):
        q = quantize.quantize_params(params, qtype)
        saved = sum(
            math.prod(k.shape) * (size - 1) - k.shape[0] * k.shape[2] * size
            for k in _kernels(q).values()
        )
        assert quantize.weight_bytes(q) == full - saved > 0
        abstract = jax.eval_shape(lambda: params)
        assert quantize.weight_bytes(quantize.abstract_params(abstract, qtype)) == full - saved


def test_block_kernels_are_most_of_a_wan_dit():
    """The share of weights quantization covers, from shapes: Wan 1.3B config."""
    cfg = dit_config(config_files.load('configs/wan21.py:t2v_1.3b'))
    abstract = nnx.state(nnx.eval_shape(lambda: DiT(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    full = quantize.weight_bytes(abstract)
    q = quantize.weight_bytes(quantize.abstract_params(abstract, 'int8'))
    size = jnp.dtype(cfg.param_dtype).itemsize  # bf16: 2 bytes a weight
    assert full / size < q < 1.05 * full / size  # 1 byte a weight on ~98% of them


def test_bad_value_is_an_error():
    with pytest.raises(ValueError, match=r"quantize='int4' is not one of \['fp8', 'int8'\]"):
        quantize.check('int4')
    assert quantize.check('none') is None and quantize.check(None) is None


@pytest.mark.slow
def test_bad_flag_is_one_line_before_loading(tmp_path):
    """No checkpoint exists: the --quantize error comes first (checked before loading)."""
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / 'experiments' / 'sample.py'),
            f'--checkpoint={tmp_path / "none"}',
            '--prompt=a red circle',
            f'--out={tmp_path / "a.mp4"}',
            '--quantize=int4',
        ],
        env=dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    errors = [line for line in r.stderr.splitlines() if line.startswith('ERROR: ')]
    assert r.returncode == 2 and len(errors) == 1, r.stderr[-2000:]
    assert "quantize='int4' is not one of ['fp8', 'int8']" in errors[0], errors[0]


KW = dict(
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


@pytest.mark.slow
def test_pipeline_samples_quantized_and_restores():
    """The shapes-family pipeline with int8 weights: close to, not equal to, full precision;
    two experts both quantized; set_quantize(None) gives the full-precision sample back."""
    pipe = TextToVideo.from_config(shapes_config.get_config('tiny'))
    ref = pipe('a red circle', **KW)
    pipe.set_quantize('int8')
    assert pipe.quantize == 'int8' and len(_kernels(pipe.params)) > 0
    out = pipe('a red circle', **KW)
    rel = np.abs(out - ref).max() / np.abs(ref).max()
    assert 0 < rel < 0.05, rel
    pipe.set_quantize(None)
    np.testing.assert_array_equal(pipe('a red circle', **KW), ref)
    family = dataclasses.replace(ModelFamily.of_config(pipe.config), boundary_ratio=0.5)
    experts = TextToVideo(
        pipe.config, pipe.graphdef, pipe.params, pipe.text, family=family, params_2=pipe.params
    )
    experts.set_quantize('fp8')
    assert len(_kernels(experts.params)) == len(_kernels(experts.params_2)) > 0
    rel = np.abs(experts('a red circle', **KW) - ref).max() / np.abs(ref).max()
    assert 0 < rel < 0.2, rel


@pytest.mark.slow
def test_aot_sampling_step_holds_the_quantized_weights():
    """experiments/aot.py --task=sample --quantize=int8 on the tiny Wan over fsdp 4: the compiled
    step's arguments per chip shrink with the weights (qvalues sharded like the kernels)."""
    from configs import wan21
    from sora_jax.aot import run

    c = wan21.get_config('tiny')
    c.mesh.shape = (1, 4, 1, 1)
    kw = dict(num_frames=5, height=64, width=64, batch_size=2)
    full = run.check(c, 'v5p-8', 'sample', **kw)
    q = run.check(c, 'v5p-8', 'sample', quantize='int8', **kw)
    assert full['fits'] and q['fits'] and q['quantize'] == 'int8' and full['quantize'] is None
    assert q['param_bytes'] < 0.6 * full['param_bytes']  # f32 -> int8 on the block kernels
    assert q['memory_bytes']['argument'] < full['memory_bytes']['argument']
    with pytest.raises(ValueError, match='--quantize=int8 applies to --task=sample'):
        run.check(c, 'v5p-8', 'train', quantize='int8', **kw)
