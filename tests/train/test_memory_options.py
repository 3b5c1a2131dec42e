"""Train-state memory options (config.train.mu_dtype / nu_dtype / ema / optimizer_memory,
model.remat='offload', model.param_dtype='bfloat16'; `train/state.py`) on the tiny shapes config:
what each stores, that a run with it trains like the default (bit for bit where the option only
moves bytes), and that its checkpoint restores into the same next step."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import shapes as shapes_config
from sora_jax.io import checkpoint as ckpt_io
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.train import checkpoint as ckpt
from sora_jax.train import loop
from sora_jax.train import state as state_lib
from sora_jax.train import step as step_lib
from sora_jax.train.objectives import flow as flow_objective
from sora_jax.train.validate import validate_config

pytestmark = pytest.mark.slow

STEPS = 30


def _config(model=None, **train):
    c = shapes_config.get_config('tiny')
    c.train.num_steps = STEPS
    c.train.update(train)
    c.model.update(model or {})
    return c


def _batch(config, b=8):
    rng = np.random.default_rng(0)
    d = config.data
    video = rng.uniform(-1, 1, (b, d.num_frames, d.height, d.width, 3)).astype(np.float32)
    ids = rng.integers(1, 257, (b, config.text.max_length)).astype(np.int32)
    ids[:, 0] = 257
    ids[:, 20:] = 0
    return {'video': video, 'text_ids': ids}


def _setup(config):
    mesh = mesh_lib.make_mesh((1, 1, 1, 1), devices=jax.devices()[:1])
    rules = mesh_lib.rules_dict()
    graphdef, state, shardings, tx, sched = loop.init_state(config, mesh, rules, flow_objective)
    fn = step_lib.make_train_step(graphdef, flow_objective.loss_fn, tx, config, sched)
    return mesh, rules, state, shardings, step_lib.jit_train_step(fn, shardings)


def _train(config, steps=STEPS):
    mesh, rules, state, shardings, jfn = _setup(config)
    batch = _batch(config)
    losses = []
    with jax.set_mesh(mesh), mesh_lib.use_rules(rules):
        for _ in range(steps):
            state, m = jfn(state, batch)
            losses.append(float(m['loss']))
    return np.array(losses), state


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.fixture(scope='module')
def default_run():
    return _train(_config())


def test_state_layout_of_each_option():
    """What the train state holds: moment dtypes, no EMA, host memory kinds; the default keeps
    16 bytes a float32 parameter."""
    mesh = mesh_lib.make_mesh((1, 1, 1, 1), devices=jax.devices()[:1])
    rules = mesh_lib.rules_dict()

    def layout(**train):
        _, abstract, shardings, _, _ = loop.abstract_state(
            _config(**train), mesh, rules, flow_objective
        )
        return abstract, shardings

    nbytes = lambda t: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(t))
    a, s = layout()
    n = sum(x.size for x in jax.tree.leaves(a.params))
    assert nbytes(a.params) + nbytes(a.ema_params) + nbytes(a.opt_state) == pytest.approx(
        16 * n, abs=64
    )
    adam = a.opt_state[1][0]
    assert {x.dtype for x in jax.tree.leaves((adam.mu, adam.nu))} == {jnp.dtype('float32')}

    a, _ = layout(mu_dtype='bfloat16')
    adam = a.opt_state[1][0]
    assert {x.dtype for x in jax.tree.leaves(adam.mu)} == {jnp.dtype('bfloat16')}
    assert {x.dtype for x in jax.tree.leaves(adam.nu)} == {jnp.dtype('float32')}
    a, _ = layout(mu_dtype='bfloat16', nu_dtype='bfloat16')
    assert nbytes(a.opt_state) == pytest.approx(4 * n, abs=64)

    a, s = layout(ema='off')
    assert a.ema_params is None and s.ema_params is None

    a, s = layout(ema='host', optimizer_memory='host')
    kinds = lambda t: {x.memory_kind for x in jax.tree.leaves(t)}
    assert kinds(s.ema_params) == {'pinned_host'} and kinds(s.opt_state) == {'pinned_host'}
    assert kinds(s.params) == {'device'}


@pytest.mark.parametrize(
    'train', [dict(ema='host'), dict(optimizer_memory='host'), dict(ema='off')], ids=str
)
def test_moving_bytes_changes_no_value(default_run, train):
    """EMA / optimizer state in host memory: the same losses and params, bit for bit; the EMA
    equal too, and the state stays where the config put it. No EMA: a step program without the
    EMA's ops, which XLA may fuse differently (sum orders): the losses equal to float32 rounding,
    the weights within what that rounding grows to over the run's Adam steps (2.7e-5 seen; an
    EMA's lag would be orders larger)."""
    losses, state = _train(_config(**train))
    ref_losses, ref = default_run
    if train.get('ema') == 'off':
        np.testing.assert_allclose(losses, ref_losses, rtol=2e-6)
        equal = functools.partial(np.testing.assert_allclose, rtol=1e-3, atol=2e-4)
    else:
        np.testing.assert_array_equal(losses, ref_losses)
        equal = np.testing.assert_array_equal
    for a, b in zip(_leaves(state.params), _leaves(ref.params)):
        equal(a, b)
    for a, b in zip(_leaves(state.opt_state), _leaves(ref.opt_state)):
        equal(a, b)
    if train.get('ema') == 'off':
        assert state.ema_params is None
        assert state.eval_params is state.params
    else:
        for a, b in zip(_leaves(state.ema_params), _leaves(ref.ema_params)):
            np.testing.assert_array_equal(a, b)
    if train.get('ema') == 'host':
        assert {x.sharding.memory_kind for x in jax.tree.leaves(state.ema_params)} == {
            'pinned_host'
        }
    if train.get('optimizer_memory') == 'host':
        assert {x.sharding.memory_kind for x in jax.tree.leaves(state.opt_state)} == {'pinned_host'}


@pytest.mark.parametrize(
    'model,train,tol',
    [
        ({}, dict(mu_dtype='bfloat16'), 0.02),
        ({}, dict(mu_dtype='bfloat16', nu_dtype='bfloat16'), 0.02),
        ({'remat': 'offload'}, {}, 1e-5),
    ],
    ids=['mu_bf16', 'mu_nu_bf16', 'remat_offload'],
)
def test_lower_precision_trains_like_float32(default_run, model, train, tol):
    """bf16 moments: the loss curve of 30 steps within `tol` of the float32 run's, step by step
    on average and at the end (the step-to-step spread of the loss here is ~0.1); remat
    'offload' recomputes the same numbers."""
    losses, state = _train(_config(model, **train))
    ref_losses, _ = default_run
    assert losses[-10:].mean() < 0.8 * losses[:3].mean()  # it trains
    assert abs(losses - ref_losses).mean() < tol
    assert abs(losses[-10:].mean() - ref_losses[-10:].mean()) < tol


def test_bf16_master_weights_train_and_drop_small_updates(default_run):
    """model.param_dtype='bfloat16' trains (the loss falls as far as float32's), and shows its
    trade: a fine-tuning step (AdamW at lr 1e-5 moves each weight by ~1e-5) leaves most bf16
    weights of size ~0.02 unchanged (their half-ulp is 2^-9 of the value, ~4e-5), where every
    float32 weight moves."""
    losses, state = _train(_config({'param_dtype': 'bfloat16'}))
    leaves = jax.tree.leaves(state.params)
    bf16 = sum(x.size for x in leaves if x.dtype == jnp.bfloat16)
    assert bf16 > 0.5 * sum(x.size for x in leaves)  # the weights (the text tables stay f32)
    assert losses[-10:].mean() < 0.8 * losses[:3].mean()
    assert losses[-10:].mean() < default_run[0][-10:].mean() + 0.1
    c = _config(learning_rate=1e-5, warmup_steps=0, weight_decay=0.0)
    tx, _ = state_lib.make_optimizer(c)
    k1, k2 = jax.random.split(jax.random.key(0))
    w = 0.02 * jax.random.normal(k1, (256, 256))
    g = jax.random.normal(k2, (256, 256))
    unchanged = {}
    for dt in (jnp.float32, jnp.bfloat16):
        p = {'w': w.astype(dt)}
        upd, _ = tx.update({'w': g.astype(dt)}, tx.init(p), p)
        unchanged[dt] = float(jnp.mean(optax.apply_updates(p, upd)['w'] == p['w']))
    assert unchanged[jnp.float32] < 0.01 and unchanged[jnp.bfloat16] > 0.5


def test_checkpoint_with_options_restores_the_next_step(tmp_path):
    """bf16 moments, no EMA, optimizer state in host memory: save, restore into the abstract
    state (memory kinds included), and the next step is identical; a sampler reading the EMA
    of a run without one gets its params."""
    c = _config(mu_dtype='bfloat16', ema='off', optimizer_memory='host')
    validate_config(c)
    mesh, rules, state, shardings, jfn = _setup(c)
    b = _batch(c)
    with jax.set_mesh(mesh), mesh_lib.use_rules(rules):
        state, _ = jfn(state, b)
        mngr = ckpt.manager(tmp_path / 'checkpoints')
        ckpt.save(mngr, 1, state, config=c)
        mngr.wait_until_finished()
        saved = _leaves(state.params)  # the step donates the state
        abstract = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, shardings
        )
        restored, step = ckpt.restore_state(ckpt.manager(tmp_path / 'checkpoints'), abstract)
        assert step == 1 and restored.ema_params is None
        assert {x.sharding.memory_kind for x in jax.tree.leaves(restored.opt_state)} == {
            'pinned_host'
        }
        s_a, m_a = jfn(state, b)
        s_b, m_b = jfn(restored, b)
    assert float(m_a['loss']) == float(m_b['loss'])
    for x, y in zip(jax.tree.leaves(s_a), jax.tree.leaves(s_b)):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    want = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), abstract.params)
    params, _ = ckpt_io.restore_params(tmp_path / 'checkpoints', want, ema=True)
    for a, p in zip(_leaves(params), saved):
        np.testing.assert_array_equal(a, p)


@pytest.mark.parametrize(
    'key,value,match',
    [
        ('mu_dtype', 'float16', 'mu_dtype'),
        ('ema', 'cpu', "'device', 'host' or 'off'"),
        ('optimizer_memory', 'disk', "'device' or 'host'"),
    ],
)
def test_bad_option_values(key, value, match):
    with pytest.raises(ValueError, match=match):
        validate_config(_config(**{key: value}))


def test_on_device_copies_host_leaves_only():
    """Evaluation and previews read the EMA through state.on_device: a leaf in pinned host
    memory comes back in device memory with the same values; a device leaf is returned as is."""
    dev = jax.devices()[0]
    host = jax.device_put(
        jnp.arange(3.0), jax.sharding.SingleDeviceSharding(dev, memory_kind='pinned_host')
    )
    on_dev = jnp.zeros(2)
    out = state_lib.on_device({'a': host, 'b': on_dev})
    assert out['a'].sharding.memory_kind == 'device' and out['b'] is on_dev
    np.testing.assert_array_equal(np.asarray(out['a']), [0.0, 1.0, 2.0])
