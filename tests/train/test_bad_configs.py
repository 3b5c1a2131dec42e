"""Bad configs fail before anything is built, with a ValueError naming the key, the value and
the fix; unknown keys and wrong types are refused by the command line; over-long prompts are
truncated with a warning."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import shapes as shapes_config
from sora_jax.models.text import ByteTokenizer
from sora_jax.train import loop
from sora_jax.train.validate import validate_config

REPO = Path(__file__).resolve().parents[2]
N = jax.device_count()  # 8 simulated CPU devices (tests/conftest.py)

# (config arg, {dotted key: value}, substrings of the message: key=value first, then the fix)
CASES = [
    ('tiny', {'train.num_steps': 0}, ['config.train.num_steps=0', 'positive integer']),
    (
        'tiny',
        {'train.checkpoint_every': -2},
        ['config.train.checkpoint_every=-2', 'positive integer'],
    ),
    (
        'tiny',
        {'train.keep_checkpoints': 0},
        ['config.train.keep_checkpoints=0', 'positive integer'],
    ),
    ('tiny', {'train.max_nonfinite': 0}, ['config.train.max_nonfinite=0', 'positive integer']),
    ('tiny', {'train.eval_every': -1}, ['config.train.eval_every=-1', '>= 0']),
    (
        'tiny',
        {'train.grad_accum_steps': 3},
        ['config.train.batch_size=8', 'divisible by train.grad_accum_steps=3'],
    ),
    ('tiny', {'train.batch_size': 4}, ['config.train.batch_size=4', f'data*fsdp={N}']),
    ('tiny', {'train.learning_rate': -1e-3}, ['config.train.learning_rate=-0.001', '> 0']),
    ('tiny', {'train.ema_decay': 1.0}, ['config.train.ema_decay=1.0', '[0, 1)']),
    (
        'tiny',
        {'mesh.shape': (3, 1, 1, 1)},
        ['config.mesh.shape=(3, 1, 1, 1)', f'multiply to the {N} devices'],
    ),
    ('tiny', {'mesh.shape': (-1, -1, 1, 1)}, ['config.mesh.shape=(-1, -1, 1, 1)', 'one -1']),
    ('tiny', {'mesh.shape': (8, 1)}, ['config.mesh.shape=(8, 1)', '4 entries']),
    (
        'tiny',
        {'model.patch_size': (3, 2, 2)},
        ['config.model.patch_size=(3, 2, 2)', 'latent frames=4', 'not divisible by 3'],
    ),
    ('tiny', {'data.height': 9}, ['config.model.patch_size=(2, 2, 2)', 'latent height=9']),
    (
        'tiny',
        {'data.sizes': ((4, 8, 8), (4, 8, 6, 2))},
        ['config.data.sizes=(4, 8, 6, 2)', '(T, H, W)'],
    ),
    ('tiny', {'model.dtype': 'float64'}, ["config.model.dtype='float64'", 'bfloat16']),
    ('tiny', {'text.dtype': 'fp16'}, ["config.text.dtype='fp16'", 'float16']),
    ('tiny', {'model.num_heads': 3}, ['config.model.num_heads=3', 'model.dim=32']),
    ('tiny', {'model.text_dim': 16}, ['config.model.text_dim=16', 'text.dim=32']),
    (
        'tiny',
        {'autoencoder': '/no/such/vae'},
        ["config.autoencoder='/no/such/vae'", 'does not exist', 'train a VAE first'],
    ),
    ('tiny', {'latent_channels': 4}, ['config.latent_channels=4', "autoencoder='none'"]),
    ('tiny', {'objective': 'diffusion'}, ["config.objective='diffusion'", 'flow, vae']),
    ('tiny', {'data.name': 'webdataset'}, ["config.data.name='webdataset'", "'folder'"]),
    ('tiny', {'data.name': 'folder'}, ["config.data.folder=''", 'is not a directory']),
    ('tiny', {'data.spanish_prob': 1.5}, ['config.data.spanish_prob=1.5', '[0, 1]']),
    ('tiny', {'flow.prediction': 'eps'}, ["config.flow.prediction='eps'", "'velocity' or 'data'"]),
    (
        'tiny_vae',
        {'data.num_frames': 6, 'train.batch_size': 8},
        ['config.data.num_frames=6', '1 + 4k', 'e.g. 5'],
    ),
    (
        'tiny_vae',
        {'data.height': 18, 'train.batch_size': 8},
        ['config.data.height/width=(18, 16)', 'VAE factor 4'],
    ),
]


def _config(arg, overrides):
    c = shapes_config.get_config(arg)
    for key, value in overrides.items():
        *path, leaf = key.split('.')
        node = c
        for p in path:
            node = node[p]
        if leaf not in node:  # keys a config may leave out (read with .get)
            node[leaf] = value
        else:
            setattr(node, leaf, value)
    return c


@pytest.mark.parametrize(
    'arg,overrides,expected', CASES, ids=[f'{a}:{",".join(o)}' for a, o, _ in CASES]
)
def test_bad_config_names_key_value_and_fix(arg, overrides, expected):
    with pytest.raises(ValueError) as e:
        validate_config(_config(arg, overrides))
    msg = str(e.value)
    assert msg.startswith(expected[0]), msg
    for part in expected[1:]:
        assert part in msg, msg


def test_wrong_type_in_code_is_refused_by_the_config():
    c = shapes_config.get_config('tiny')
    with pytest.raises(TypeError, match="Could not override field 'num_steps'"):
        c.train.num_steps = 2.5


def test_good_configs_pass():
    for arg in ('tiny', 'vae_image'):
        validate_config(shapes_config.get_config(arg))
    stage2 = shapes_config.get_config('vae')
    stage2.mesh.shape = (4, 1, 1, 2)  # its batch of 4 over the 8 test devices: data=4
    validate_config(stage2)
    dit = shapes_config.get_config('dit')
    # the recipe reads its VAE from workdirs/shapes_vae; the shipped bundle holds the same VAE
    dit.autoencoder = str(REPO / 'checkpoints/shapes/vae')
    validate_config(dit)
    p2 = shapes_config.get_config('dit_p2')  # the same model re-cut to (2, 2, 2) patches
    p2.autoencoder = dit.autoencoder
    validate_config(p2)
    assert tuple(p2.model.patch_size) == (2, 2, 2) and p2.train.init_from
    p3 = shapes_config.get_config('dit_p3')  # dit_p2 trained on, t2v-heavy
    p3.autoencoder = dit.autoencoder
    validate_config(p3)
    assert (
        p3.train.init_from == 'workdirs/shapes_dit_p2'
        and p3.model.patch_size == p2.model.patch_size
    )
    vae = shapes_config.get_config('tiny_vae')
    vae.mesh.shape = (4, 1, 1, 2)  # batch 4 over data=4
    validate_config(vae)


def test_non_training_config_is_a_clear_error():
    from configs import wan21

    # configs/wan21.py has train settings (for experiments/aot.py) but no data pipeline feeds it
    with pytest.raises(ValueError, match=r"config.data=None: a training config needs a 'data'"):
        validate_config(wan21.get_config('tiny'))


def test_validation_runs_before_anything_is_built(tmp_path):
    """train_and_evaluate fails on the config before it creates the workdir or builds data."""
    c = _config('tiny', {'mesh.shape': (3, 1, 1, 1)})
    c.data.data_dir = str(tmp_path / 'never_built')
    with pytest.raises(ValueError, match=r'config.mesh.shape=\(3, 1, 1, 1\)'):
        loop.train_and_evaluate(c, str(tmp_path / 'work'))
    assert sorted(os.listdir(tmp_path)) == []


def test_missing_init_from_fails_before_data_is_built(tmp_path):
    c = _config('tiny', {'train.init_from': str(tmp_path / 'no_such_run')})
    c.data.data_dir = str(tmp_path / 'never_built')
    with pytest.raises(
        ValueError,
        match=r"config.train.init_from='.*no_such_run': is not a "
        r'directory.*from scratch',
    ):
        loop.train_and_evaluate(c, str(tmp_path / 'work'))
    assert not (tmp_path / 'never_built').exists()


def test_command_line_refuses_unknown_keys_and_wrong_types(tmp_path):
    """An unknown `--config.x.y` key, a value of the wrong type and a config the validator
    refuses are each one ERROR line (exit status 2, sora_jax/cli.py), no traceback: the unknown
    key with its closest match, before train.py imports JAX or creates the workdir."""
    env = dict(os.environ, JAX_PLATFORMS='cpu')

    def start(*flags):
        return subprocess.Popen(
            [
                sys.executable,
                'experiments/train.py',
                '--config=configs/shapes.py:tiny',
                f'--workdir={tmp_path / "w"}',
                *flags,
            ],
            cwd=REPO,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    procs = [
        start('--config.train.num_stepz=3'),
        start('--config.train.num_steps=abc'),
        start('--config.mesh.shape=(3,1,1,1)'),
        start('--config.trian.num_steps=3'),
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [2, 2, 2, 2], outs
    for out in outs:
        assert 'Traceback' not in out and out.count('ERROR:') == 1, out
    unknown, wrong_type, bad_mesh, section = outs
    assert (
        'ERROR: --config.train.num_stepz: the config has no key train.num_stepz; did you mean '
        '--config.train.num_steps?' in unknown
    )
    assert 'did you mean --config.train?' in section
    assert 'flag --config.train.num_steps=abc: invalid literal for int()' in wrong_type
    assert f'ERROR: config.mesh.shape=(3, 1, 1, 1): must multiply to the {N} devices' in bad_mesh
    assert not (tmp_path / 'w').exists()


def test_long_prompt_warns_and_truncates(caplog):
    tok = ByteTokenizer(16)
    with caplog.at_level(logging.WARNING):
        ids = tok.encode_one('a red circle moving to the left')  # 31 bytes > 15
    assert any(
        'truncated' in r.getMessage() and 'max_length=15' in r.getMessage() for r in caplog.records
    ), [r.getMessage() for r in caplog.records]
    np.testing.assert_array_equal(ids, tok.encode_one('a red circle mo', warn=False))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        tok.encode_one('a red circle mo')  # fits: no warning
    assert not caplog.records


def test_a_velocity_dit_no_wider_than_its_patches_warns(caplog, load_config):
    """The world DiT's (3, 4, 4) patches of 8 latent channels hold 384 values. It predicts x0
    (flow.prediction='data'): no warning. Predicting velocity, 384 wide (sampled noise) and 256
    wide (the first world DiT, loss stuck at 0.6) warn, the narrower with its floor; the shapes
    DiT, 256 wide for 128 values, does not."""
    from sora_jax.train.validate import too_narrow_for_velocity

    world = load_config('configs/world.py:dit')
    assert world.flow.prediction == 'data'
    assert too_narrow_for_velocity(world) is None
    world.flow.prediction = 'velocity'
    msg = too_narrow_for_velocity(world)
    assert msg.startswith('config.model.dim=384 is no wider than the 384 values'), msg
    assert 'below' not in msg and "set flow.prediction='data'" in msg
    world.model.dim, world.model.num_heads = 256, 4
    msg = too_narrow_for_velocity(world)
    assert msg.startswith('config.model.dim=256 is no wider than the 384 values'), msg
    assert 'below 0.33' in msg and 'model.dim > 384' in msg
    with caplog.at_level(logging.WARNING):
        validate_config(world)
    assert any('no wider than the 384 values' in r.getMessage() for r in caplog.records)
    dit = shapes_config.get_config('dit')  # (4, 2, 2) x 8 = 128 values, 256 wide
    assert too_narrow_for_velocity(dit) is None
