"""objectives/flow_context.py: the Wan train step (DiT on latents + precomputed text features)
runs on CPU through the same jit as train/loop.py and learns a fixed batch."""

import jax
import numpy as np
import pytest

from configs import wan21
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.train import loop
from sora_jax.train import step as step_lib
from sora_jax.train.objectives import flow_context

pytestmark = pytest.mark.slow


def test_wan_train_step_learns_a_fixed_batch():
    c = wan21.get_config('tiny')
    c.train.learning_rate = 3e-3
    c.train.warmup_steps = 0
    c.mesh.shape = (2, 2, 1, 1)
    mesh = mesh_lib.make_mesh((2, 2, 1, 1), devices=jax.devices()[:4])
    rules = mesh_lib.rules_dict()
    graphdef, state, shardings, tx, schedule = loop.init_state(c, mesh, rules, flow_context)
    shapes = flow_context.batch_shapes(c, 4, (2, 4, 4), 8)
    assert shapes['latents'].shape == (4, 2, 4, 4, 4) and shapes['context'].shape == (4, 8, 32)
    ks = jax.random.split(jax.random.key(0), 2)
    batch = {k: jax.random.normal(kk, s.shape, s.dtype) for (k, s), kk in zip(shapes.items(), ks)}
    batch = loop.to_global({k: np.asarray(v) for k, v in batch.items()}, mesh, rules)
    step = step_lib.jit_train_step(
        step_lib.make_train_step(graphdef, flow_context.loss_fn, tx, c, schedule), shardings
    )
    losses = []
    with jax.set_mesh(mesh), mesh_lib.use_rules(rules):
        for _ in range(30):
            state, m = step(state, batch)
            losses.append(float(m['loss']))
    assert all(np.isfinite(losses)) and int(state.step) == 30
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    # params keep the fsdp sharding of the rules through the donated, jitted step
    assert any(not x.sharding.is_fully_replicated for x in jax.tree.leaves(state.params))
