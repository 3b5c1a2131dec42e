"""LoRA fine-tuning: only adapters train (base bitwise unchanged, optimizer state the adapters'
size), checkpoints hold adapters plus a pointer to the base, resume is exact, on a mesh of 8
simulated devices."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import shapes as shapes_config
from sora_jax.convert import lora_run
from sora_jax.io import checkpoint as ckpt_io
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.train import checkpoint as ckpt
from sora_jax.train import loop
from sora_jax.train import lora as lora_train
from sora_jax.train import sources as sources_lib
from sora_jax.train import step as step_lib
from sora_jax.train.objectives import flow as flow_objective
from tests.pipeline.test_pipeline_imports import fresh_to_q_kernel

MESH = (2, 2, 2, 1)


def _config(data_dir, base='', **lora):
    c = shapes_config.get_config('tiny')
    c.data.data_dir = data_dir
    c.train.init_from = base
    c.lora.update(dict(dict(rank=4, alpha=8.0), **lora))
    return c


@pytest.fixture(scope='module')
def base(tmp_path_factory):
    """A base run: a freshly initialised tiny model saved as a training checkpoint."""
    root = tmp_path_factory.mktemp('lora')
    c = shapes_config.get_config('tiny')
    mesh = mesh_lib.make_mesh((1, 1, 1, 1), devices=jax.devices()[:1])
    _, state, _, _, _ = loop.init_state(c, mesh, mesh_lib.rules_dict(), flow_objective)
    mngr = ckpt.manager(os.path.join(root, 'base', 'checkpoints'), async_save=False)
    ckpt.save(mngr, 1, state, None, c)
    mngr.wait_until_finished()
    return str(root), os.path.join(root, 'base'), state.ema_params


def _leaves(tree):
    return {
        jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)
    }


def test_only_adapters_train_base_bitwise_unchanged(base):
    """With the base held in bfloat16 (lora.base_dtype)."""
    root, base_dir, base_params = base
    c = _config(os.path.join(root, 'data'), base_dir, base_dtype='bfloat16')
    mesh = mesh_lib.make_mesh(MESH)
    rules = mesh_lib.rules_dict()
    graphdef, state, shardings, tx, sched = loop.init_state(c, mesh, rules, flow_objective)
    state, _ = lora_train.load_base(state, c)
    adapters = _leaves(state.params)
    assert adapters and all('lora' in k for k in adapters)
    n_adapt = sum(a.size for a in adapters.values())
    n_opt = sum(x.size for x in jax.tree.leaves(state.opt_state))
    assert n_adapt <= n_opt <= 2 * n_adapt + 8  # Adam moments of the adapters (+ counters)
    frozen0 = _leaves(state.frozen)
    assert not any('lora' in k for k in frozen0)
    assert all(v.dtype == jnp.bfloat16 for v in frozen0.values())
    np.testing.assert_array_equal(  # the base is the base run's EMA params, in bf16
        frozen0["['dit']['blocks']['attn1']['to_q']['kernel'].value"],
        np.asarray(base_params['dit']['blocks']['attn1']['to_q']['kernel'][...]).astype(
            jnp.bfloat16
        ),
    )
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
    fn = step_lib.make_train_step(graphdef, flow_objective.loss_fn, tx, c, sched)
    batch = next(iter(sources_lib.make_data(c, 'train', batch_size=8, shuffle=True)))
    batch = {k: batch[k] for k in ('video', 'text_ids')}
    with jax.set_mesh(mesh), mesh_lib.use_rules(rules):
        jfn = jax.jit(fn, out_shardings=(shardings, None))
        for _ in range(2):
            state, m = jfn(state, loop.to_global(batch, mesh, rules))
    assert float(m['grad_norm']) > 0
    for k, v in _leaves(state.frozen).items():
        np.testing.assert_array_equal(v, frozen0[k], err_msg=k)
    moved = [k for k, v in _leaves(state.params).items() if not np.array_equal(v, adapters[k])]
    assert len(moved) == len(adapters)  # every adapter (A and B) got an update
    # adapters are sharded by the base kernel's rule: A [layers, in, r] like kernel[:, in]
    a = state.params['dit']['blocks']['ffn']['proj_in']['lora']['lora_a'][...]
    k = state.frozen['dit']['blocks']['ffn']['proj_in']['kernel'][...]
    assert a.sharding.spec[:2] == k.sharding.spec[:2]


@pytest.mark.slow
def test_checkpoint_holds_adapters_and_resume_is_exact(base):
    root, base_dir, _ = base
    c = _config(os.path.join(root, 'data'), base_dir)
    c.mesh.shape = MESH
    c.train.keep_checkpoints = 3
    run_a, run_b = os.path.join(root, 'run_a'), os.path.join(root, 'run_b')
    loop.train_and_evaluate(c, run_a)  # 4 steps, checkpoints at 2 and 4
    # the saved state: adapters (+ their EMA and Adam moments), no base
    mngr = ckpt.manager(os.path.join(run_a, 'checkpoints'), create=False)
    saved = mngr.item_metadata(4)['state']
    saved = getattr(saved, 'tree', saved)
    keys = [
        jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(saved['params'])
    ]
    assert keys and all('lora' in k for k in keys)
    assert saved.get('frozen') in (None, {}, [])
    cfg = ckpt_io.load_config(os.path.join(run_a, 'checkpoints'))
    assert cfg.lora.base == base_dir
    assert cfg.lora.base_sha256 == lora_run.base_fingerprint(base_dir)[0]
    # resume: run B = A's step-2 checkpoint continued to step 4
    shutil.copytree(
        os.path.join(run_a, 'checkpoints', '2'), os.path.join(run_b, 'checkpoints', '2')
    )
    loop.train_and_evaluate(c, run_b)
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
        dict(params=saved['params'], ema_params=saved['ema_params']),
    )
    a, _ = ckpt_io.restore_params(os.path.join(run_a, 'checkpoints'), abstract['params'], ema=False)
    b, _ = ckpt_io.restore_params(os.path.join(run_b, 'checkpoints'), abstract['params'], ema=False)
    ea, _ = ckpt_io.restore_params(os.path.join(run_a, 'checkpoints'), abstract['ema_params'])
    eb, _ = ckpt_io.restore_params(os.path.join(run_b, 'checkpoints'), abstract['ema_params'])
    for x, y in zip(jax.tree.leaves((a, ea)), jax.tree.leaves((b, eb))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # a changed base is refused on resume
    c2 = _config(os.path.join(root, 'data'), os.path.join(root, 'base2'))
    c2.mesh.shape, c2.train.num_steps = MESH, 6
    shutil.copytree(base_dir, os.path.join(root, 'base2'))
    with open(os.path.join(root, 'base2', 'checkpoints', '1', 'extra.txt'), 'w') as f:
        f.write('changed')
    with pytest.raises(ValueError, match='changed since this run started'):
        loop.train_and_evaluate(c2, run_b)


def test_lora_run_samples_without_the_train_package(base, tmp_path):
    """A LoRA run's checkpoint (adapters + base pointer, as the loop saves it) loads for sampling
    in a fresh process that imports no sora_jax.train module; its adapters are merged in."""
    root, base_dir, base_params = base
    c = _config(os.path.join(root, 'data'), base_dir)
    mesh = mesh_lib.make_mesh((1, 1, 1, 1), devices=jax.devices()[:1])
    _, state, _, _, _ = loop.init_state(c, mesh, mesh_lib.rules_dict(), flow_objective)
    state, sha = lora_train.load_base(state, c)
    ones = lambda p, x: jnp.ones_like(x) if 'lora_b' in jax.tree_util.keystr(p) else x
    state = state.replace(ema_params=jax.tree_util.tree_map_with_path(ones, state.ema_params))
    run = str(tmp_path / 'run')
    mngr = ckpt.manager(os.path.join(run, 'checkpoints'), async_save=False)
    ckpt.save(mngr, 3, state.replace(frozen=None), None, lora_train.with_pointer(c, sha))
    mngr.wait_until_finished()
    modules, q = fresh_to_q_kernel(run, tmp_path / 'to_q.npy')
    assert modules == []
    # the base's kernel + (alpha / rank = 2) A @ B, B all ones
    lora = state.ema_params['dit']['blocks']['attn1']['to_q']['lora']
    a, b = np.asarray(lora['lora_a'][...]), np.asarray(lora['lora_b'][...])
    want = np.asarray(base_params['dit']['blocks']['attn1']['to_q']['kernel'][...]) + 2.0 * a @ b
    assert np.abs(2.0 * a @ b).max() > 0.1
    np.testing.assert_allclose(q, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    'lora, match',
    [
        (dict(targets=('attn3.q',)), 'unknown target'),
        (dict(dropout=0.1), 'dropout'),
        (dict(base_dtype='int8'), 'base_dtype'),
        (dict(rank=-1), 'rank'),
    ],
)
def test_bad_lora_configs(tmp_path, lora, match):
    c = _config(str(tmp_path), str(tmp_path), **lora)
    with pytest.raises(ValueError, match=match):
        lora_train.validate(c)


def test_lora_needs_a_base(tmp_path):
    with pytest.raises(ValueError, match='needs a base model'):
        lora_train.validate(_config(str(tmp_path)))
