"""LoRA on a converted Wan 2.1 folder, trained on a folder of clips (configs/wan21.py:lora_tiny):
the docs/lora.md walk-through (convert -> train -> export -> sample) on a tiny random Wan. Only the
adapters train (the base stays bitwise the converted DiT), the checkpoint holds adapters plus the
base pointer, and the LoRA run and its exported file sample the same video, unlike the base's."""

import json
import os

import jax
import numpy as np
import pytest

from configs import wan21
from sora_jax.convert import checkpoint as convert_ckpt
from sora_jax.convert import wan
from sora_jax.data import shapes
from sora_jax.io import checkpoint as ckpt_io
from sora_jax.io import video as V
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.train import checkpoint as ckpt
from sora_jax.train import loop, wan_frozen
from sora_jax.train import lora as lora_train
from sora_jax.train import sources as sources_lib
from sora_jax.train.objectives import flow_context
from tests.parity.wan_fixture import SENTENCES, make_tiny_wan_folder
from tests.pipeline.test_pipeline_imports import fresh_to_q_kernel

pytestmark = pytest.mark.slow

PROMPT = SENTENCES[0]


def _config(root):
    c = wan21.get_config('lora_tiny')
    c.checkpoint = os.path.join(root, 'wan')
    c.data.folder = os.path.join(root, 'clips')
    c.data.data_dir = os.path.join(root, 'data')
    return c


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """Convert a tiny random Wan folder, write 4 captioned clips, train 4 LoRA steps."""
    root = str(tmp_path_factory.mktemp('wan_lora'))
    src = make_tiny_wan_folder(os.path.join(root, 'wan_src'))
    wan.convert_folder(src, os.path.join(root, 'wan'))
    clips = os.path.join(root, 'clips')
    rows = []
    for i in range(4):
        V.write_video(
            os.path.join(clips, f'{i}.mp4'),
            shapes.generate(3, i, num_frames=5, height=32, width=32)['video'],
        )
        rows.append(json.dumps({'file': f'{i}.mp4', 'caption': SENTENCES[i % 2]}))
    with open(os.path.join(clips, 'captions.jsonl'), 'w') as f:
        f.write('\n'.join(rows) + '\n')
    c = _config(root)
    work = os.path.join(root, 'run')
    metrics = loop.train_and_evaluate(c, work)
    return root, c, work, metrics


def _leaves(tree):
    return {
        '/'.join(map(str, p)): np.asarray(v[...])
        for p, v in __import__('flax').nnx.to_flat_state(tree)
    }


def test_only_adapters_train_base_is_the_converted_dit(run):
    root, c, work, metrics = run
    assert metrics['step'] == 4 and np.isfinite(metrics['loss'])
    mesh = mesh_lib.make_mesh((1, 1, 1, 1), devices=jax.devices()[:1])
    _, state, _, _, _ = loop.init_state(c, mesh, mesh_lib.rules_dict(), flow_context)
    state, sha = lora_train.load_base(state, c)
    assert sha == convert_ckpt.fingerprint(c.checkpoint)
    with pytest.raises(ValueError, match='changed since this run started'):  # resume, other base
        lora_train.load_base(state, c, expected_sha256='0' * 64)
    converted = ckpt_io.restore_flat(os.path.join(c.checkpoint, 'transformer', 'params'))
    frozen = _leaves(state.frozen)
    assert set(frozen) == set(converted)  # the whole DiT, and nothing else, is the base
    for k, v in converted.items():
        np.testing.assert_array_equal(frozen[k], v, err_msg=k)
    # the run's batches: Wan latents of the clips and UMT5 features of their captions
    batch = next(iter(sources_lib.make_data(c, 'train', batch_size=2, shuffle=True)))
    assert batch['latents'].shape == (2, 2, 4, 4, 4)  # 5 x 32 x 32 clips
    assert batch['context'].shape == (2, c.text.max_length, c.model.text_dim)
    from sora_jax.pipeline import TextToVideo

    text = TextToVideo.from_wan(c.checkpoint, c).text  # what sampling feeds the DiT
    want = np.asarray(text(list(SENTENCES[:2]))[0])  # [2, max_length, text_dim]
    for row in batch['context']:  # each row is the features of its clip's caption
        assert min(np.abs(row - w).max() for w in want) < 1e-5
    # what trained: every adapter (A and B) moved from its initialisation; nothing else saved
    init = _leaves(state.params)
    assert init and all('lora' in k for k in init)
    trained, _ = ckpt_io.restore_params(os.path.join(work, 'checkpoints'), state.params, ema=False)
    moved = [k for k, v in _leaves(trained).items() if not np.array_equal(v, init[k])]
    assert len(moved) == len(init)
    n_opt = sum(x.size for x in jax.tree.leaves(state.opt_state))
    n_adapt = sum(v.size for v in init.values())
    assert n_adapt <= n_opt <= 2 * n_adapt + 8  # Adam moments of the adapters only


def test_checkpoint_holds_adapters_and_the_base_pointer(run):
    _, c, work, _ = run
    mngr = ckpt.manager(os.path.join(work, 'checkpoints'), create=False)
    saved = mngr.item_metadata(4)['state']
    saved = getattr(saved, 'tree', saved)
    keys = [
        jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(saved['params'])
    ]
    assert keys and all('lora' in k for k in keys)
    assert saved.get('frozen') in (None, {}, [])
    cfg = ckpt_io.load_config(os.path.join(work, 'checkpoints'))
    assert cfg.lora.base == c.checkpoint and cfg.objective == 'flow_context'
    assert cfg.lora.base_sha256 == convert_ckpt.fingerprint(c.checkpoint)


def test_lora_run_and_exported_file_sample_the_same_video_unlike_the_base(run, tmp_path):
    from sora_jax.pipeline import TextToVideo

    root, c, work, _ = run
    info = lora_train.export(work, str(tmp_path / 'wan_lora.safetensors'))
    base_bytes = sum(
        os.path.getsize(os.path.join(d, f))
        for d, _, fs in os.walk(os.path.join(c.checkpoint, 'transformer'))
        for f in fs
    )
    assert 0 < info['bytes'] < base_bytes
    kw = dict(num_inference_steps=2, seed=0, progress=False, watermark=False)
    lora_run = TextToVideo.from_checkpoint(work)
    base = TextToVideo.from_wan(c.checkpoint, c)
    v_base, v_run = base(PROMPT, **kw), lora_run(PROMPT, **kw)
    base.set_loras([(info['file'], 1.0)])
    v_file = base(PROMPT, **kw)
    assert v_run.shape == v_base.shape == (1, 5, 32, 32, 3)
    np.testing.assert_allclose(v_file.astype(int), v_run.astype(int), atol=1)
    diff = np.abs(v_run.astype(int) - v_base.astype(int))
    assert diff.mean() > 1.0, diff.mean()


def test_lora_run_samples_without_the_train_package(run, tmp_path):
    """A fresh process loads the Wan LoRA run (converted base + merged adapters) for sampling
    without importing any sora_jax.train module, to the same weights as this process."""
    from sora_jax.pipeline import TextToVideo

    _, c, work, _ = run
    modules, q = fresh_to_q_kernel(work, tmp_path / 'to_q.npy')
    assert modules == []
    here = TextToVideo.from_checkpoint(work).params['blocks']['attn1']['to_q']['kernel'][...]
    base = TextToVideo.from_wan(c.checkpoint, c).params['blocks']['attn1']['to_q']['kernel'][...]
    np.testing.assert_array_equal(q, np.asarray(here))
    assert np.abs(q - np.asarray(base)).max() > 0  # the trained adapters merged in


def test_bad_wan_configs(run, tmp_path):
    _, c, _, _ = run
    bad = c.copy_and_resolve_references()
    bad.checkpoint = str(tmp_path)
    with pytest.raises(ValueError, match='not a converted Wan folder'):
        wan_frozen.validate(bad)
    bad = c.copy_and_resolve_references()
    bad.model.ffn_dim = 96
    with pytest.raises(ValueError, match="ffn_dim': \\(96, 48\\)"):
        wan_frozen.validate(bad)


def test_lora_base_defaults_to_the_converted_folder(tmp_path):
    c = wan21.get_config('lora_tiny')
    c.checkpoint = str(tmp_path)
    assert lora_train.base_source(c) == str(tmp_path)
    c.lora.base = str(tmp_path / 'other')  # an override changes the base only
    assert c.checkpoint == str(tmp_path) and lora_train.base_source(c) == c.lora.base
    with pytest.raises(ValueError, match='not a converted Wan folder'):
        lora_train.validate(c)  # config.checkpoint is checked first, with the convert command
