"""sora_jax/export.py (experiments/export.py): a training workdir -> an inference bundle of EMA
(or raw) weights in float16 that TextToVideo loads; --dst is never a user's folder or a source,
and an old bundle is replaced by an atomic swap."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import shapes as shapes_config
from sora_jax import export
from sora_jax.io import checkpoint as ckpt_io
from sora_jax.models import quantize as quantize_lib
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.pipeline import TextToVideo
from sora_jax.train import checkpoint as ckpt
from sora_jax.train import loop
from sora_jax.train.objectives import flow as flow_objective

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize('ema', [True, False])
def test_export_ema_or_raw_weights(tmp_path, ema):
    c = shapes_config.get_config('tiny')
    mesh = mesh_lib.make_mesh((1, 1, 1, 1), devices=jax.devices()[:1])
    _, state, *_ = loop.init_state(c, mesh, mesh_lib.rules_dict(), flow_objective)
    state = state.replace(ema_params=jax.tree.map(lambda x: x * 0.5, state.ema_params))
    mngr = ckpt.manager(tmp_path / 'run' / 'checkpoints')
    ckpt.save(mngr, 3, state, config=c)
    mngr.wait_until_finished()
    step, n = export.export_params(
        str(tmp_path / 'run'),
        str(tmp_path / 'bundle'),
        flow_objective.build_model,
        'float16',
        ema=ema,
    )
    assert step == 3 and n == sum(x.size for x in jax.tree.leaves(state.params))
    pipe = TextToVideo.from_checkpoint(tmp_path / 'bundle')
    src = state.ema_params if ema else state.params
    for got, want in zip(jax.tree.leaves(pipe.params), jax.tree.leaves(src['dit'])):
        np.testing.assert_array_equal(
            np.asarray(got), np.asarray(jnp.asarray(want, jnp.float16), np.float32)
        )


def test_int8_bundle_samples_as_the_float16_bundle_quantized(tmp_path):
    """--dtype=int8 stores the DiT's block kernels as int8 + per-channel scales: loading it gives
    exactly the QArrays `--quantize=int8` makes of the float16 bundle, the same samples, in less
    space; set_quantize(None) samples its dequantized weights (the same numbers)."""
    c = shapes_config.get_config('tiny')
    mesh = mesh_lib.make_mesh((1, 1, 1, 1), devices=jax.devices()[:1])
    _, state, *_ = loop.init_state(c, mesh, mesh_lib.rules_dict(), flow_objective)
    leaves, tree = jax.tree.flatten(state.ema_params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [a + 0.05 * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)]
    state = state.replace(ema_params=jax.tree.unflatten(tree, leaves))
    mngr = ckpt.manager(tmp_path / 'run' / 'checkpoints', async_save=False)
    ckpt.save(mngr, 3, state, config=c)
    mngr.wait_until_finished()
    for dtype in ('float16', 'int8'):
        export.export_params(
            str(tmp_path / 'run'), str(tmp_path / dtype), flow_objective.build_model, dtype
        )
    p8 = TextToVideo.from_checkpoint(tmp_path / 'int8')
    p16 = TextToVideo.from_checkpoint(tmp_path / 'float16', quantize='int8')
    assert p8.quantize == 'int8'
    flat = lambda p: dict(  # noqa: E731
        jax.tree_util.tree_leaves_with_path(p, is_leaf=quantize_lib.is_quantized)
    )
    f8, f16 = flat(p8.params), flat(p16.params)
    assert f8.keys() == f16.keys()
    q = [k for k, x in f8.items() if quantize_lib.is_quantized(x)]
    assert q and all(quantize_lib.is_quantized(f16[k]) for k in q)
    for k, x in f8.items():
        if k in q:
            assert x.qvalue.dtype == jnp.int8
            np.testing.assert_array_equal(np.asarray(x.qvalue), np.asarray(f16[k].qvalue))
            np.testing.assert_array_equal(np.asarray(x.scale), np.asarray(f16[k].scale))
        else:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(f16[k]))
    kw = dict(num_inference_steps=2, seed=0, progress=False, moderation=False, watermark=False)
    kw.update(output_type='latent')
    out8 = np.asarray(p8('a red circle', **kw))
    np.testing.assert_array_equal(out8, np.asarray(p16('a red circle', **kw)))
    p8.set_quantize(None)  # its dequantized weights at full precision: the same numbers
    np.testing.assert_allclose(np.asarray(p8('a red circle', **kw)), out8, rtol=0, atol=1e-5)
    p16.set_quantize(None)  # the float16 weights themselves: quantizing changed the sample
    err = np.abs(np.asarray(p16('a red circle', **kw)) - out8).max() / np.abs(out8).max()
    assert 1e-5 < err < 0.05, err
    # As stored: the kernels int8, the rest float16, one float32 scale per block and channel.
    saved = ckpt_io.restore_tree(tmp_path / 'int8' / 'checkpoints', 'ema_params', 3)
    dtypes = [str(x.dtype) for x in jax.tree.leaves(saved)]
    assert dtypes.count('int8') == len(q) and set(dtypes) == {'int8', 'float16'}
    scales = jax.tree.leaves(
        ckpt_io.restore_tree(tmp_path / 'int8' / 'checkpoints', 'ema_scales', 3)
    )
    assert len(scales) == len(q) and all(x.dtype == jnp.float32 for x in scales)


def test_export_picks_a_step_and_names_the_saved_ones(tmp_path):
    c = shapes_config.get_config('tiny')
    mesh = mesh_lib.make_mesh((1, 1, 1, 1), devices=jax.devices()[:1])
    _, state, *_ = loop.init_state(c, mesh, mesh_lib.rules_dict(), flow_objective)
    mngr = ckpt.manager(tmp_path / 'run' / 'checkpoints', async_save=False)
    for step, scale in ((2, 0.5), (4, 2.0)):
        ckpt.save(
            mngr,
            step,
            state.replace(ema_params=jax.tree.map(lambda x: x * scale, state.ema_params)),
            config=c,
        )
    mngr.wait_until_finished()
    step, _ = export.export_params(
        str(tmp_path / 'run'), str(tmp_path / 'b2'), flow_objective.build_model, 'float32', step=2
    )
    assert step == 2
    pipe = TextToVideo.from_checkpoint(tmp_path / 'b2')
    for got, want in zip(jax.tree.leaves(pipe.params), jax.tree.leaves(state.ema_params['dit'])):
        np.testing.assert_allclose(np.asarray(got), 0.5 * np.asarray(want), rtol=1e-6)
    with pytest.raises(ValueError, match=r'no checkpoint at step 3.*\[2, 4\]'):
        export.export_params(
            str(tmp_path / 'run'),
            str(tmp_path / 'b3'),
            flow_objective.build_model,
            'float32',
            step=3,
        )


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """A tiny DiT workdir with one checkpoint (step 3)."""
    root = tmp_path_factory.mktemp('export_run')
    c = shapes_config.get_config('tiny')
    mesh = mesh_lib.make_mesh((1, 1, 1, 1), devices=jax.devices()[:1])
    _, state, *_ = loop.init_state(c, mesh, mesh_lib.rules_dict(), flow_objective)
    mngr = ckpt.manager(root / 'run' / 'checkpoints', async_save=False)
    ckpt.save(mngr, 3, state, config=c)
    mngr.wait_until_finished()
    return root / 'run'


def _export_cli(dit, dst):
    return subprocess.run(
        [sys.executable, str(REPO / 'experiments' / 'export.py'), f'--dit={dit}', f'--dst={dst}'],
        env=dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu'),
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_users_folder_is_refused_and_kept(run, tmp_path):
    dst = tmp_path / 'mine'
    dst.mkdir()
    (dst / 'thesis.txt').write_text('years of work')
    r = _export_cli(run, dst)
    assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr[-3000:]
    assert 'is not empty and is not a bundle export wrote' in r.stderr
    assert (dst / 'thesis.txt').read_text() == 'years of work'
    assert sorted(os.listdir(tmp_path)) == ['mine']  # no temporary directory left


@pytest.mark.parametrize('where', ['same', 'inside', 'around'])
def test_dst_equal_inside_or_around_the_source_is_refused(run, where):
    dst = {'same': run, 'inside': run / 'bundle', 'around': run.parent}[where]
    before = sorted(p.relative_to(run) for p in run.rglob('*'))
    with pytest.raises(ValueError, match='is, contains or lies inside the source'):
        export.export_bundle(str(run), str(dst))
    assert sorted(p.relative_to(run) for p in run.rglob('*')) == before


def test_an_old_bundle_is_replaced_by_a_swap(run, tmp_path, monkeypatch):
    dst = tmp_path / 'bundle'
    export.export_bundle(str(run), str(dst))
    assert json_of(dst / export.MARKER)['step'] == 3 and export.is_bundle(str(dst))
    (dst / 'old_extra').write_text('from the old bundle')
    renames = []
    real_rename = os.rename
    monkeypatch.setattr(os, 'rename', lambda a, b: (renames.append((a, b)), real_rename(a, b)))
    size = export.export_bundle(str(run), str(dst), dtype='float32')
    old_aside, new_in = [r for r in renames if str(dst) in r]  # (Orbax renames too)
    assert old_aside[0] == str(dst) and new_in[1] == str(dst)  # old aside, then new in
    assert not (dst / 'old_extra').exists() and json_of(dst / export.MARKER)['dtype'] == 'float32'
    assert sorted(os.listdir(tmp_path)) == ['bundle']  # the old one and the temporary removed
    assert size == sum(p.stat().st_size for p in dst.rglob('*') if p.is_file())
    TextToVideo.from_checkpoint(dst)


def json_of(path):
    import json

    return json.loads(Path(path).read_text())


def test_export_vae_alone(tmp_path):
    """export.py --vae: the VAE's parameters alone, loadable as config.autoencoder, equal to the
    source's; the same rules for --dst (a user's folder refused, an earlier export replaced)."""
    from sora_jax.models import frozen_vae

    src = str(REPO / 'checkpoints' / 'shapes' / 'vae')
    dst = tmp_path / 'world_vae'
    size = export.export_vae(src, str(dst))
    assert 0 < size < 4 << 20 and export.is_bundle(str(dst))
    plain = tmp_path / 'plain'
    plain.mkdir()
    assert dst.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777  # not mkdtemp's 0700
    a, b = frozen_vae.load(src), frozen_vae.load(str(dst))
    assert a.step == b.step
    for x, y in zip(jax.tree.leaves(a.state), jax.tree.leaves(b.state)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert abs(export.export_vae(src, str(dst)) - size) < 64 << 10  # the earlier one replaced
    assert frozen_vae.load(str(dst)).step == a.step
    mine = tmp_path / 'mine'
    mine.mkdir()
    (mine / 'notes.txt').write_text('keep')
    with pytest.raises(ValueError, match='is not a bundle export wrote'):
        export.export_vae(src, str(mine))
    assert (mine / 'notes.txt').read_text() == 'keep'
