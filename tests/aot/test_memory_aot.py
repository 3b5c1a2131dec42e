"""The train-state memory options compiled for a 4-chip TPU slice (v5p-8) on the tiny Wan config,
and the HBM-traffic count the roofline uses (`aot/hlo.hbm_traffic`, `aot/report`)."""

import math

import jax
import jax.numpy as jnp
import pytest

from configs import wan21
from sora_jax.aot import compile as compile_lib
from sora_jax.aot import hlo, report, run, topology
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.train import loop

pytestmark = pytest.mark.slow

pytest.importorskip('libtpu', reason='libtpu is in the [test] extra')


def _state_bytes(config, mesh_shape):
    """Per-chip bytes of the train state by memory kind, from its abstract shapes and shardings
    (what the compile's arguments hold besides the batch)."""
    cfg = compile_lib.train_config(config)
    devices = topology.devices(topology.resolve('v5p-8'))
    mesh = mesh_lib.make_mesh(mesh_shape, devices=devices)
    _, abstract, shardings, _, _ = loop.abstract_state(
        cfg, mesh, mesh_lib.rules_dict(), compile_lib.objective_module(cfg)
    )
    out = {'device': 0, 'pinned_host': 0}
    for a, sh in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
        out[sh.memory_kind] += math.prod(sh.shard_shape(a.shape)) * a.dtype.itemsize
    return out, abstract


@pytest.mark.parametrize(
    'train',
    [
        dict(
            mu_dtype='bfloat16',
            nu_dtype='bfloat16',
            ema='host',
            optimizer_memory='host',
            remat='offload',
        ),
        dict(mu_dtype='bfloat16', ema='off', param_dtype='bfloat16'),
    ],
    ids=['host_offloads', 'smaller_state'],
)
def test_memory_options_compile_for_v5p(train):
    c = wan21.get_config('tiny')
    c.mesh.shape = (1, 4, 1, 1)
    c.train.update(train)
    rep = run.check(c, 'v5p-8', 'train', num_frames=5, height=32, width=32, batch_size=4)
    assert rep['fits'] and rep['chips'] == 4
    assert rep['train_memory']['ema'] == train['ema']
    mem = rep['memory_bytes']
    state, abstract = _state_bytes(c, (1, 4, 1, 1))
    # (byte counts of a tiny model are dominated by the TPU's tile padding: compared loosely)
    assert mem['argument'] >= state['device']
    if train['ema'] == 'host':
        assert state['pinned_host'] > 0 and mem['host'] >= state['pinned_host']
        # EMA and moments cross the host link twice a step, the blocks' inputs out and back
        assert rep['hbm']['host_bytes'] >= 2 * state['pinned_host']
        assert rep['hbm']['host_copies'] > 0
    else:
        assert abstract.ema_params is None and state['pinned_host'] == 0
        assert mem['host'] == 0 and rep['hbm']['host_bytes'] == 0
        assert {x.dtype for x in jax.tree.leaves(abstract.opt_state[1][0].mu)} == {
            jnp.dtype('bfloat16')
        }
        p = jax.tree.leaves(abstract.params)
        assert sum(x.size for x in p if x.dtype == jnp.bfloat16) > 0.9 * sum(x.size for x in p)
    r = rep['roofline']
    assert r['step_s'] == max(r['compute_s'], r['hbm_s'], r['ici_s'], r['host_s'])
    assert r['hbm_s'] > 0 and rep['hbm']['bytes'] > 0


_HLO = """HloModule m

%cond (p: (s32[], f32[4,8], f32[4,8])) -> pred[] {
  %p = (s32[], f32[4,8], f32[4,8]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(4)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

%slice_fusion (param_0: f32[4,8], param_1: s32[]) -> f32[1,8] {
  %param_0 = f32[4,8]{1,0} parameter(0)
  %param_1 = s32[] parameter(1)
  %z = s32[] constant(0)
  ROOT %ds = f32[1,8]{1,0} dynamic-slice(%param_0, %param_1, %z), dynamic_slice_sizes={1,8}
}

%update_fusion (param_0: f32[4,8], param_1: f32[1,8], param_2: s32[]) -> f32[4,8] {
  %param_0 = f32[4,8]{1,0} parameter(0)
  %param_1 = f32[1,8]{1,0} parameter(1)
  %param_2 = s32[] parameter(2)
  %z = s32[] constant(0)
  ROOT %dus = f32[4,8]{1,0} dynamic-update-slice(%param_0, %param_1, %param_2, %z)
}

%body (p: (s32[], f32[4,8], f32[4,8])) -> (s32[], f32[4,8], f32[4,8]) {
  %p = (s32[], f32[4,8], f32[4,8]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %w = f32[4,8]{1,0} get-tuple-element(%p), index=1
  %acc = f32[4,8]{1,0} get-tuple-element(%p), index=2
  %row = f32[1,8]{1,0} fusion(%w, %i), kind=kLoop, calls=%slice_fusion
  %acc2 = f32[4,8]{1,0} fusion(%acc, %row, %i), kind=kLoop, calls=%update_fusion
  ROOT %t = (s32[], f32[4,8], f32[4,8]) tuple(%i, %w, %acc2)
}

ENTRY %main (a: f32[4,8], b: f32[4,8]) -> f32[4,8] {
  %a = f32[4,8]{1,0} parameter(0)
  %b = f32[4,8]{1,0:S(5)} parameter(1)
  %cs = (f32[4,8]{1,0}, f32[4,8]{1,0:S(5)}, u32[]{:S(2)}) copy-start(%b)
  %cd = f32[4,8]{1,0} copy-done(%cs)
  %t0 = (s32[], f32[4,8], f32[4,8]) tuple(%a, %a, %cd)
  %loop = (s32[], f32[4,8], f32[4,8]) while(%t0), condition=%cond, body=%body
  %out = f32[4,8]{1,0} get-tuple-element(%loop), index=2
  ROOT %e = f32[4,8]{1,0} exponential(%out)
}
"""


def test_hbm_traffic_counts_slices_in_place_updates_and_trips():
    t = hlo.hbm_traffic(_HLO)
    row = 8 * 4  # one f32[1,8] row
    # each of 4 trips: the slice fusion reads one row (not the [4,8] stack) and writes it; the
    # update fusion reads the row and writes it in place (the [4,8] buffer is not re-read); both
    # read the s32 loop index
    assert t.by_op['fusion'] == 4 * (2 * row + 2 * row + 2 * 4)
    assert t.by_op['exponential'] == 2 * 4 * row  # outside the loop: once
    assert t.host == 4 * row and t.host_copies == 1  # the copy from pinned host memory
    assert t.kernel == 0
    assert t.total == sum(t.by_op.values())


_OFFLOAD_HLO = """HloModule m

%cond (p: (s32[], f32[8,1,64], f32[1,64])) -> pred[] {
  %p = (s32[], f32[8,1,64], f32[1,64]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(8)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

%body (p: (s32[], f32[8,1,64], f32[1,64])) -> (s32[], f32[8,1,64], f32[1,64]) {
  %p = (s32[], f32[8,1,64]{2,1,0:S(5)}, f32[1,64]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %buf = f32[8,1,64]{2,1,0:S(5)} get-tuple-element(%p), index=1
  %x = f32[1,64]{1,0} get-tuple-element(%p), index=2
  %x3 = f32[1,1,64]{2,1,0} bitcast(%x)
  %z = s32[] constant(0)
  %us = ((f32[8,1,64]{2,1,0:S(5)}, f32[1,1,64]{2,1,0}, s32[], s32[], s32[]), f32[8,1,64]{2,1,0:S(5)}, u32[]{:S(2)}) dynamic-update-slice-start(%buf, %x3, %i, %z, %z)
  %ud = f32[8,1,64]{2,1,0:S(5)} dynamic-update-slice-done(%us)
  %ss = ((f32[8,1,64]{2,1,0:S(5)}, s32[], s32[], s32[]), f32[1,1,64]{2,1,0}, u32[]{:S(2)}) dynamic-slice-start(%ud, %i, %z, %z), dynamic_slice_sizes={1,1,64}
  %sd = f32[1,1,64]{2,1,0} dynamic-slice-done(%ss)
  %y = f32[1,64]{1,0} bitcast(%sd)
  ROOT %t = (s32[], f32[8,1,64], f32[1,64]) tuple(%i, %ud, %y)
}

ENTRY %main (a: f32[1,64]) -> f32[1,64] {
  %a = f32[1,64]{1,0} parameter(0)
  %h = f32[8,1,64]{2,1,0:S(5)} custom-call(), custom_call_target="AllocateBuffer"
  %z = s32[] constant(0)
  %t0 = (s32[], f32[8,1,64], f32[1,64]) tuple(%z, %h, %a)
  %loop = (s32[], f32[8,1,64], f32[1,64]) while(%t0), condition=%cond, body=%body
  ROOT %out = f32[1,64]{1,0} get-tuple-element(%loop), index=2
}
"""


def test_hbm_traffic_counts_remat_offload_slices_as_host_traffic():
    """remat 'offload' writes each block's input into a pinned-host buffer
    (dynamic-update-slice-start) and reads it back (dynamic-slice-start): one [1,1,64] f32 slice
    each way per trip, host-link bytes, not HBM bytes (the [8,1,64] host buffer is not read)."""
    t = hlo.hbm_traffic(_OFFLOAD_HLO)
    row = 64 * 4
    assert t.host == 8 * 2 * row and t.host_copies == 16
    assert 'dynamic-update-slice-start' not in t.by_op and 'dynamic-slice-start' not in t.by_op


def test_splash_bytes_count_tile_rereads():
    """The forward re-reads K and V once per query tile: doubling the tokens quadruples that
    part; a training step with remat is forward twice + backward."""
    m = dict(dim=256, num_heads=2, depth=3, remat='full')
    f1 = report.splash_hbm_bytes(m, 4096, 1, 0, train=False, block=512)
    f2 = report.splash_hbm_bytes(m, 8192, 1, 0, train=False, block=512)
    d, heads, depth = 128, 2, 3
    kv = lambda n: 2 * 2 * d * n * (n // 512)  # bf16 k and v, once per query tile
    io = lambda n: 2 * 2 * d * n  # q read, o written
    assert f1 == pytest.approx(heads * depth * (kv(4096) + io(4096)))
    assert f2 - heads * depth * io(8192) == pytest.approx(4 * (f1 - heads * depth * io(4096)))
    tr = report.splash_hbm_bytes(m, 4096, 1, 0, train=True, block=512)
    assert tr > 3 * f1


_NESTED = """HloModule n

%inner (param_0: f32[4,8], param_1: s32[]) -> f32[1,8] {
  %param_0 = f32[4,8]{1,0} parameter(0)
  %param_1 = s32[] parameter(1)
  %z = s32[] constant(0)
  ROOT %ds = f32[1,8]{1,0} dynamic-slice(%param_0, %param_1, %z), dynamic_slice_sizes={1,8}
}

%outer (param_0: f32[4,8], param_1: s32[]) -> f32[1,8] {
  %param_0 = f32[4,8]{1,0} parameter(0)
  %param_1 = s32[] parameter(1)
  %row = f32[1,8]{1,0} fusion(%param_0, %param_1), kind=kLoop, calls=%inner
  ROOT %e = f32[1,8]{1,0} exponential(%row)
}

ENTRY %main (a: f32[4,8], i: s32[]) -> f32[1,8] {
  %a = f32[4,8]{1,0} parameter(0)
  %i = s32[] parameter(1)
  ROOT %f = f32[1,8]{1,0} fusion(%a, %i), kind=kOutput, calls=%outer
}
"""


def test_hbm_traffic_follows_slices_into_nested_fusions():
    """The scan's saved block inputs [depth, ...] reach the backward's matmul fusions through a
    nested fusion that slices one block: one row is read, not the stack."""
    t = hlo.hbm_traffic(_NESTED)
    assert t.by_op['fusion'] == 32 + 4 + 32  # the row and the index read, the row written
