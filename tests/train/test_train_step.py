"""Train step: sharded == unsharded, grad accumulation == big batch, non-finite steps skipped,
checkpoint save -> restore -> identical next step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import shapes as shapes_config
from sora_jax.io import checkpoint as ckpt_io
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.train import checkpoint as ckpt
from sora_jax.train import loop
from sora_jax.train import step as step_lib
from sora_jax.train.objectives import flow as flow_objective

pytestmark = pytest.mark.slow


def _config(**train):
    c = shapes_config.get_config('tiny')
    c.train.update(train)
    return c


def _batch(config, b=8):
    rng = np.random.default_rng(0)
    d = config.data
    video = rng.uniform(-1, 1, (b, d.num_frames, d.height, d.width, 3)).astype(np.float32)
    ids = rng.integers(1, 257, (b, config.text.max_length)).astype(np.int32)
    ids[:, 0] = 257
    ids[:, 20:] = 0
    return {'video': video, 'text_ids': ids}


def _run(config, mesh_shape, batch, steps=2):
    devices = jax.devices()[: int(np.prod(mesh_shape))]
    mesh = mesh_lib.make_mesh(mesh_shape, devices=devices)
    rules = mesh_lib.rules_dict()
    graphdef, state, shardings, tx, sched = loop.init_state(config, mesh, rules, flow_objective)
    fn = step_lib.make_train_step(graphdef, flow_objective.loss_fn, tx, config, sched)
    losses = []
    with jax.set_mesh(mesh), mesh_lib.use_rules(rules):
        jfn = jax.jit(fn, out_shardings=(shardings, None))
        for _ in range(steps):
            state, m = jfn(state, loop.to_global(batch, mesh, rules))
            losses.append(float(m['loss']))
    return losses, state


@pytest.fixture(scope='module')
def reference():
    c = _config()
    return _run(c, (1, 1, 1, 1), _batch(c))


@pytest.mark.parametrize('mesh_shape', [(2, 2, 2, 1), (1, 2, 2, 2)])
def test_sharded_equals_unsharded(reference, mesh_shape):
    c = _config()
    losses, state = _run(c, mesh_shape, _batch(c))
    np.testing.assert_allclose(losses, reference[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(reference[1].params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)


def test_params_really_sharded():
    c = _config()
    mesh = mesh_lib.make_mesh((2, 2, 2, 1))
    _, state, _, _, _ = loop.init_state(c, mesh, mesh_lib.rules_dict(), flow_objective)
    q = state.params['dit']['blocks']['attn1']['to_q']['kernel']
    assert q[...].sharding.spec == jax.sharding.PartitionSpec(None, 'fsdp', 'tensor')
    assert q[...].addressable_shards[0].data.shape == (2, 16, 16)


def test_grad_accumulation_matches_full_batch():
    """With a deterministic loss, 2 micro-batches of 4 == one batch of 8 (same update)."""

    def det_loss(model, batch, rng, config):
        del rng, config
        t = jnp.full((batch['video'].shape[0],), 0.5)
        loss = jnp.mean(model(batch['video'], t, batch['text_ids']) ** 2)
        return loss, {}

    b = _batch(_config())
    results = []
    for accum in (1, 2):
        c = _config(grad_accum_steps=accum)
        mesh = mesh_lib.make_mesh((1, 1, 1, 1), devices=jax.devices()[:1])
        graphdef, state, _, tx, _ = loop.init_state(c, mesh, mesh_lib.rules_dict(), flow_objective)
        state, m = jax.jit(step_lib.make_train_step(graphdef, det_loss, tx, c))(state, b)
        results.append((float(m['loss']), float(m['grad_norm']), state.params))
    (l1, g1, p1), (l2, g2, p2) = results
    # equal up to float32 summation order (a loss near 2: a few ulps; tests/xla.py's unoptimised
    # build sums in another order than XLA's default one)
    assert abs(l1 - l2) < 1e-5 * max(1.0, abs(l1)) and abs(g1 - g2) < 1e-5 * max(1.0, g1)
    for a, b_ in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b_), atol=1e-6)


def test_nonfinite_step_is_skipped():
    c = _config()
    b = _batch(c)
    b['video'][0, 0, 0, 0, 0] = np.nan
    losses, state = _run(c, (1, 1, 1, 1), b, steps=2)
    assert all(np.isnan(losses))
    assert int(state.nonfinite_total) == 2 and int(state.nonfinite_streak) == 2
    _, fresh = _run(c, (1, 1, 1, 1), _batch(c), steps=0)
    for a, f in zip(jax.tree.leaves(state.params), jax.tree.leaves(fresh.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(f))


def test_checkpoint_restore_identical_next_step(tmp_path):
    c = _config()
    b = _batch(c)
    mesh = mesh_lib.make_mesh((1, 1, 1, 1), devices=jax.devices()[:1])
    rules = mesh_lib.rules_dict()
    graphdef, state, shardings, tx, sched = loop.init_state(c, mesh, rules, flow_objective)
    fn = jax.jit(step_lib.make_train_step(graphdef, flow_objective.loss_fn, tx, c, sched))
    state, _ = fn(state, b)
    mngr = ckpt.manager(tmp_path / 'ck')
    ckpt.save(mngr, 1, state, config=c)
    mngr.wait_until_finished()
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state
    )
    restored, step = ckpt.restore_state(ckpt.manager(tmp_path / 'ck'), abstract)
    assert step == 1
    s_a, m_a = fn(state, b)
    s_b, m_b = fn(restored, b)
    assert float(m_a['loss']) == float(m_b['loss'])
    for x, y in zip(jax.tree.leaves(s_a), jax.tree.leaves(s_b)):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert ckpt_io.load_config(tmp_path / 'ck').model.dim == c.model.dim


def test_warm_start_takes_the_source_ema_params(tmp_path):
    """train.init_from: params and EMA start from another run's EMA params (cast to the
    model's dtype), or its raw params with init_from_ema=False; step and optimizer start fresh;
    a different model is a clear error; the prediction parameterisation ('data') trains from the
    same weights."""
    c = _config()
    mesh = mesh_lib.make_mesh((1, 1, 1, 1), devices=jax.devices()[:1])
    rules = mesh_lib.rules_dict()
    graphdef, state, shardings, tx, sched = loop.init_state(c, mesh, rules, flow_objective)
    fn = jax.jit(step_lib.make_train_step(graphdef, flow_objective.loss_fn, tx, c, sched))
    state, _ = fn(state, _batch(c))
    src = state.replace(
        ema_params=jax.tree.map(lambda x: (x * 0.5).astype(jnp.float16), state.ema_params)
    )
    mngr = ckpt.manager(tmp_path / 'src' / 'checkpoints')
    ckpt.save(mngr, 7, src, config=c)
    mngr.wait_until_finished()

    c2 = _config()
    c2.seed = 1
    c2.flow.prediction = 'data'
    _, fresh, *_ = loop.init_state(c2, mesh, rules, flow_objective)
    warm = loop.warm_start(fresh, str(tmp_path / 'src'))
    assert int(warm.step) == 0
    for w, e, s in zip(
        jax.tree.leaves(warm.params),
        jax.tree.leaves(warm.ema_params),
        jax.tree.leaves(src.ema_params),
    ):
        assert w.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(w), np.asarray(s, np.float32))
        np.testing.assert_array_equal(np.asarray(e), np.asarray(w))
    raw = loop.warm_start(fresh, str(tmp_path / 'src'), ema=False)  # train.init_from_ema=False
    for w, e, s in zip(
        jax.tree.leaves(raw.params), jax.tree.leaves(raw.ema_params), jax.tree.leaves(src.params)
    ):
        np.testing.assert_array_equal(np.asarray(w), np.asarray(s, np.float32))
        np.testing.assert_array_equal(np.asarray(e), np.asarray(w))
    assert any(
        not np.array_equal(np.asarray(r), np.asarray(w))
        for r, w in zip(jax.tree.leaves(raw.params), jax.tree.leaves(warm.params))
    )  # not the EMA params
    fn2 = jax.jit(step_lib.make_train_step(graphdef, flow_objective.loss_fn, tx, c2, sched))
    warm, m = fn2(warm, _batch(c2))
    assert np.isfinite(float(m['loss'])) and int(warm.step) == 1

    c4 = _config()
    c4.model.pooled_text = True  # a module the source lacks keeps its (zero) initialisation
    _, fresh4, *_ = loop.init_state(c4, mesh, rules, flow_objective)
    warm4 = loop.warm_start(fresh4, str(tmp_path / 'src'))
    ce = warm4.params['dit']['condition_embedder']
    np.testing.assert_array_equal(np.asarray(ce['pooled_text_2']['kernel'][...]), 0.0)
    np.testing.assert_array_equal(
        np.asarray(ce['pooled_text_1']['kernel'][...]),
        np.asarray(fresh4.params['dit']['condition_embedder']['pooled_text_1']['kernel'][...]),
    )
    np.testing.assert_array_equal(
        np.asarray(ce['time_proj']['kernel'][...]),
        np.asarray(
            src.ema_params['dit']['condition_embedder']['time_proj']['kernel'][...], np.float32
        ),
    )

    c3 = _config()
    c3.model.ffn_dim = 48
    _, other, *_ = loop.init_state(c3, mesh, rules, flow_objective)
    with pytest.raises(ValueError, match='train.init_from=.*the model config must match'):
        loop.warm_start(other, str(tmp_path / 'src'))
