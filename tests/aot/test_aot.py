"""experiments/aot.py's code path: compile real steps for TPU topologies on this CPU host."""

import pytest

from configs import wan21
from sora_jax.aot import compile as compile_lib
from sora_jax.aot import hlo, report, run, topology
from sora_jax.train import perf

pytestmark = pytest.mark.slow

pytest.importorskip('libtpu', reason='libtpu is in the [test] extra')


def _tiny(mesh_shape, **model):
    c = wan21.get_config('tiny')
    c.mesh.shape = mesh_shape
    for k, v in model.items():
        c.model[k] = v
    return c


@pytest.mark.parametrize(
    'name,chip,chips,topo',
    [
        ('v5p-64', 'v5p', 32, 'v5p:2x4x4'),  # v5p names count TensorCores (2 per chip)
        ('v5p-8', 'v5p', 4, 'v5p:2x2x1'),
        ('v5e-8', 'v5e', 8, 'v5e:2x4'),  # v5e / v6e names count chips
        ('v6e-256', 'v6e', 256, 'v6e:16x16'),
        ('v5p:4x4x2', 'v5p', 32, 'v5p:4x4x2'),
        ('v5litepod-16', 'v5e', 16, 'v5e:4x4'),
    ],
)
def test_slice_names(name, chip, chips, topo):
    sl = topology.resolve(name)
    assert (sl.chip, sl.chips, sl.topology) == (chip, chips, topo)


@pytest.mark.parametrize(
    'bad,match',
    [
        ('v5p-7', 'TensorCores'),
        ('tpu-8', 'slice name'),
        ('v5e:2x2x2', '2 dimensions'),
        ('v5e-12', 'power of two'),
    ],
)
def test_bad_slice_names(bad, match):
    with pytest.raises(ValueError, match=match):
        topology.resolve(bad)


@pytest.fixture(scope='module')
def tiny_train_report():
    c = _tiny((1, 4, 1, 1))
    return run.check(c, 'v5p-8', 'train', num_frames=5, height=32, width=32, batch_size=4)


def test_tiny_train_step_compiles_for_v5p(tiny_train_report):
    rep = tiny_train_report
    assert rep['topology'] == 'v5p:2x2x1' and rep['chips'] == 4
    assert rep['attention'] == 'splash'  # 'auto' follows the compile target
    assert rep['kernels'].get('splash_mha_fwd', 0) >= 1  # the Pallas kernel is in the HLO
    assert any(
        k.startswith('splash_mha_dq') or k.startswith('splash_mha_dkv') for k in rep['kernels']
    )  # and its backward
    mem = rep['memory_bytes']
    assert 0 < mem['argument'] and 0 < mem['temp'] < rep['hbm_bytes'] and rep['fits']
    # f32 params + AdamW (mu, nu) + EMA sharded 4 ways, plus a small batch
    assert mem['argument'] >= 4 * 4 * rep['params'] / 4
    # fsdp over 4 chips: weights are gathered, gradients reduced
    assert rep['collectives']['all-gather']['executed'] >= 1
    assert rep['collectives']['all-gather']['bytes'] > 0
    r = rep['roofline']
    assert r['step_s'] == pytest.approx(max(r['compute_s'], r['hbm_s'], r['ici_s'], r['host_s']))
    assert r['bound'] in ('compute', 'hbm', 'ici') and r['hbm_s'] > 0
    assert 0 < r['mfu'] <= 1
    assert rep['executed_flops_per_device'] > rep['model_flops_per_device'] > 0  # remat 'full'
    assert rep['remat'] == 'full' and rep['param_dtype'] == 'float32'
    assert 'fits' in report.text(rep)


def test_report_flops_are_the_training_logs(tiny_train_report):
    """MFU's numerator is one count (models/flops.py): the report's model + attention FLOPs over
    all chips equal what train/perf.py logs for the same config and batch."""
    rep = tiny_train_report
    c = compile_lib.train_config(_tiny((1, 4, 1, 1)))
    logged = perf.Throughput(c, rep['params']).flops_per_step((4, *rep['latent'], 1))
    total = (rep['model_flops_per_device'] + rep['attention_flops_per_device']) * rep['chips']
    assert total == pytest.approx(logged, rel=1e-12) and logged > 0


def test_sampling_step_compiles_with_sequence_sharding():
    c = _tiny((1, 1, 1, 4))
    rep = run.check(c, 'v5p-8', 'sample', num_frames=17, height=64, width=64, batch_size=1)
    assert rep['fits'] and rep['attention'] == 'splash'
    assert rep['tokens_per_clip'] == 5 * 4 * 4
    # forward only: 2N tokens for the CFG batch of 2 clips
    assert rep['model_flops_per_device'] == pytest.approx(
        rep['executed_flops_per_device'] - rep['attention_flops_per_device']
    )


def test_state_larger_than_hbm_is_reported_without_compiling():
    c = wan21.get_config('t2v_1.3b')
    c.mesh.shape = (1, 1, 1, 8)  # parameters replicated: 1.4B x 16 bytes on each 16 GB chip
    rep = run.check(c, 'v5e-8', 'train', num_frames=5, height=64, width=64, batch_size=1)
    assert rep['fits'] is False
    assert rep['memory_bytes']['argument'] > rep['hbm_bytes']
    assert any('fsdp' in a for a in rep['advice'])


def test_xla_refusal_is_reported_as_not_fitting():
    # XLA attention materialises [heads, N, N] scores: 20,160 tokens -> ~3 GiB per clip; 32
    # clips on one chip's 16 GB is refused by the compiler itself.
    c = _tiny((8, 1, 1, 1), attention='xla')
    rep = run.check(c, 'v5e-8', 'sample', num_frames=33, height=448, width=448, batch_size=128)
    assert rep['fits'] is False and 'RESOURCE_EXHAUSTED' in rep['error']
    assert rep['memory_bytes']['needed'] > rep['memory_bytes']['available']
    assert any('splash' in a for a in rep['advice'])


def test_bad_sizes_fail_before_compiling():
    c = _tiny((1, 4, 1, 1))
    with pytest.raises(ValueError, match='1 \\+ 4k'):
        run.check(c, 'v5p-8', 'train', num_frames=6, height=32, width=32, batch_size=4)
    with pytest.raises(ValueError, match='multiple of 16'):
        run.check(c, 'v5p-8', 'train', num_frames=5, height=40, width=32, batch_size=4)
    with pytest.raises(ValueError, match='not divisible by the data x fsdp'):
        run.check(c, 'v5p-8', 'train', num_frames=5, height=32, width=32, batch_size=3)


_HLO = """HloModule m

%cond (p: (s32[], f32[8])) -> pred[] {
  %p = (s32[], f32[8]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[]{:T(128)} constant(40)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p = (s32[], f32[8]) parameter(0)
  %x = f32[8] get-tuple-element(%p), index=1
  %ag = f32[32]{0} all-gather(%x), replica_groups=[1,4]<=[4], dimensions={0}
  %ar-start = f32[8]{0} all-reduce-start(%x), replica_groups={{0,1,2,3}}, to_apply=%add
  %ar-done = f32[8]{0} all-reduce-done(%ar-start)
  ROOT %t = (s32[], f32[8]) tuple(%i, %x)
}

ENTRY %main (a: f32[8]) -> f32[8] {
  %a = f32[8] parameter(0)
  %w = (s32[], f32[8]) while(%t0), condition=%cond, body=%body
  %cp = bf16[16]{0} collective-permute(%a), source_target_pairs={{0,1},{1,0}}
  ROOT %r = f32[8] get-tuple-element(%w), index=1
}
"""


def test_collectives_count_loop_trips():
    c = hlo.collectives(_HLO, 4)
    assert c['all-gather']['ops'] == 1 and c['all-gather']['executed'] == 40
    assert c['all-gather']['bytes'] == 40 * 32 * 4
    assert c['all-gather']['traffic'] == pytest.approx(40 * 128 * 3 / 4)
    assert c['all-reduce']['executed'] == 40 and c['all-reduce']['bytes'] == 40 * 32
    assert c['collective-permute']['executed'] == 1 and c['collective-permute']['bytes'] == 32
    assert c['reduce-scatter']['ops'] == 0 and c['all-to-all']['ops'] == 0


def test_oom_message_parsing():
    msg = (
        'RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory space '
        'hbm. Used 399.19G of 95.74G hbm. Exceeded hbm capacity by 303.45G. ... HLO '
        'temporaries (399.19G) exceeds available HBM (95.74G)'
    )
    m = report.oom_from_error(msg)
    assert m['needed'] == pytest.approx(399.19 * 2**30) and m['temp'] == m['needed']
    assert report.oom_from_error('some other failure') is None


def test_splash_under_ulysses_context_parallelism():
    c = _tiny((2, 1, 1, 2), context_parallel='ulysses')  # 2 heads over a sequence axis of 2
    rep = run.check(c, 'v5p-8', 'sample', num_frames=5, height=64, width=64, batch_size=1)
    assert rep['attention'] == 'splash' and rep['kernels'].get('splash_mha_fwd', 0) >= 1
    assert rep['collectives']['all-to-all']['executed'] >= 4  # q, k, v in, output back


def test_vae_chunked_decode_compiles():
    c = _tiny((1, 1, 1, 4))
    rep = run.check(c, 'v5p-8', 'decode', num_frames=17, height=64, width=64, batch_size=1)
    assert rep['fits'] and rep['attention'] is None
    # the VAE's weights (replicated, float32) are the arguments, plus the latents
    assert rep['memory_bytes']['argument'] >= 4 * rep['params']
    assert rep['latent'] == [5, 8, 8]
    # the roofline's flops are the convolutions with the chunk scan's trips (the first latent
    # frame, then a lax.scan over the other 4): well above XLA's count of the body once
    r = rep['roofline']
    assert rep['executed_flops_per_device'] == rep['hlo_flops'] > 2 * rep['xla_flops'] > 0
    assert r['compute_s'] == pytest.approx(rep['hlo_flops'] / rep['chip_figures']['bf16_flops'])
    assert r['hbm_s'] > 0 and r['step_s'] == max(r['compute_s'], r['hbm_s'], r['ici_s'])
    assert 'convolutions with loop trip counts' in report.text(rep)


def test_matmul_flops_count_loop_trips():
    """A scan of 6 trips, each a 3x3 convolution and a dot, compiled for a v5p chip: the HLO
    count is 6 x the count of one trip (which XLA's cost analysis agrees with, its elementwise
    flops aside), while XLA's cost analysis of the scan sees its body once."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    dev = topology.devices(topology.resolve('v5p-8'))[:1]
    sh = NamedSharding(jax.sharding.Mesh(dev, ('x',)), PartitionSpec())
    args = [
        jax.ShapeDtypeStruct(s, jnp.bfloat16, sharding=sh)
        for s in ((1, 32, 32, 128), (3, 3, 128, 128), (512, 384), (384, 384))
    ]

    def compiled(n):
        def f(x, w, a, b):
            def body(c, _):
                y = jax.lax.conv_general_dilated(
                    c[0], w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
                )
                return (jnp.tanh(y), jnp.tanh(c[1] @ b)), None

            return jax.lax.scan(body, (x, a), None, length=n)[0]

        c = jax.jit(f).lower(*args).compile()
        ca = c.cost_analysis()
        return hlo.matmul_flops(c.as_text()), (ca[0] if isinstance(ca, (list, tuple)) else ca)

    one, ca1 = compiled(1)
    six, ca6 = compiled(6)
    assert one == pytest.approx(ca1['flops'], rel=0.02) and one > 1e8
    assert six == pytest.approx(6 * one, rel=1e-6)
    assert ca6['flops'] < 2 * one


def test_wan_i2v_sample_compiles():
    """configs/wan21.py:tiny_i2v: the DiT input is the I2V width (noise, 4 mask channels, image
    latents) and the CLIP image tokens are an input, as the pipeline feeds them every step."""
    c = wan21.get_config('tiny_i2v')
    c.mesh.shape = (1, 1, 1, 4)
    rep = run.check(c, 'v5p-8', 'sample', num_frames=5, height=64, width=64, batch_size=1)
    assert rep['fits'] and rep['latent'] == [2, 8, 8]
    enc = c.image_encoder
    assert rep['inputs'] == {
        'latents': [2, 2, 8, 8, c.model.in_channels],
        'timesteps': [2],
        'context': [2, rep['inputs']['context'][1], c.model.text_dim],
        'image': [2, (enc.image_size // enc.patch_size) ** 2 + 1, c.model.image_dim],
    }
    assert c.model.in_channels == 2 * c.latent_channels + 4
