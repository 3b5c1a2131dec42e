"""Tracking and profiling of one tiny training run (in process, 4 steps, evaluation at step 4):
TensorBoard event files read back with tensorboard's own reader hold the training scalars
(loss, lr, grad norm, skipped counts, steps/s, tokens/s, model TFLOP/s, MFU, memory), the
evaluation loss, the judge's scores, the fixed-prompt videos as animated GIFs, the config text and
the hparams; wandb (offline) got the same scalars; the profiler trace of steps 2-3 exists."""

import json

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from configs import shapes as shapes_config
from sora_jax.models import flops
from sora_jax.train import loop, perf, tracking

pytestmark = pytest.mark.slow

TRAIN_KEYS = {
    'loss',
    'lr',
    'grad_norm',
    'skipped',
    'skipped_total',
    'steps_per_sec',
    'perf/steps_per_sec',
    'perf/tokens_per_sec',
    'perf/model_tflops_per_sec',
    'perf/mfu',
    'memory/host_rss_bytes',
}


@pytest.fixture(scope='module')
def run(tmp_path_factory, monkeypatch_module):
    base = tmp_path_factory.mktemp('tracking')
    monkeypatch_module.setenv('WANDB_MODE', 'offline')
    monkeypatch_module.setenv('WANDB_DIR', str(base / 'wandb_home'))
    monkeypatch_module.setenv('WANDB_SILENT', 'true')
    c = shapes_config.get_config('tiny')
    c.data.data_dir = str(base / 'data')
    c.train.eval_every = 4
    c.train.profile_steps = (2, 3)
    c.train.peak_tflops_per_device = 2.0
    c.train.log_to = ('tensorboard', 'wandb')
    work = base / 'run'
    metrics = loop.train_and_evaluate(c, str(work))
    ea = EventAccumulator(str(work / 'tb'), size_guidance={'images': 0, 'scalars': 0, 'tensors': 0})
    ea.Reload()
    return c, work, metrics, ea


@pytest.fixture(scope='module')
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_scalars_read_back(run):
    c, work, metrics, ea = run
    tags = set(ea.Tags()['scalars'])
    assert TRAIN_KEYS <= tags, TRAIN_KEYS - tags
    assert {'eval/loss', 'judge/color', 'judge/shape', 'judge/motion', 'judge/all'} <= tags
    assert [e.step for e in ea.Scalars('loss')] == [2, 4]
    assert ea.Scalars('loss')[-1].value == pytest.approx(metrics['loss'])
    # 4 steps of 8 clips, 4x8x8 pixels in (2, 2, 2) patches: 32 tokens a clip
    tokens = [
        e.value / s.value
        for e, s in zip(ea.Scalars('perf/tokens_per_sec'), ea.Scalars('perf/steps_per_sec'))
    ]
    np.testing.assert_allclose(tokens, 8 * 32, rtol=1e-5)
    mfu = ea.Scalars('perf/mfu')[-1].value
    tflops = ea.Scalars('perf/model_tflops_per_sec')[-1].value
    assert mfu == pytest.approx(tflops / (2.0 * 8), rel=1e-5)  # 8 simulated devices
    assert ea.Scalars('memory/host_rss_bytes')[-1].value > 1e8
    assert 0.0 <= ea.Scalars('judge/all')[-1].value <= 1.0
    lines = tracking.read_metrics(work)
    assert [m['step'] for m in lines if 'loss' in m] == [2, 4]


def test_videos_config_and_hparams(run):
    c, work, _, ea = run
    assert ea.Tags()['images'] == ['samples/00', 'samples/01']
    img = ea.Images('samples/00')[0]
    assert img.step == 4 and img.encoded_image_string[:6] == b'GIF89a'
    scale = c.sample.display_scale
    assert (img.height, img.width) == (8 * scale, 8 * scale)
    from PIL import Image

    gif = Image.open(work / 'samples' / '4' / 'samples_00.gif')
    assert gif.n_frames == 4 and gif.size == (8 * scale, 8 * scale)
    assert 'config/text_summary' in ea.Tags()['tensors']
    hp = ea.PluginTagToContent('hparams')
    assert {'_hparams_/experiment', '_hparams_/session_start_info'} <= set(hp)
    from tensorboard.plugins.hparams import plugin_data_pb2

    ssi = plugin_data_pb2.HParamsPluginData.FromString(hp['_hparams_/session_start_info'])
    assert ssi.session_start_info.hparams['train.eval_every'].number_value == 4
    assert ssi.session_start_info.hparams['train.log_to'].string_value == "('tensorboard', 'wandb')"


def test_wandb_offline_run(run):
    _, work, _, _ = run
    runs = list((work / 'wandb').glob('offline-run-*'))
    assert len(runs) == 1 and list(runs[0].glob('run-*.wandb'))
    assert (work / 'wandb' / 'run_id').read_text().strip() in runs[0].name


def test_profile_trace_written(run):
    _, work, _, _ = run
    traces = list((work / 'profile').glob('plugins/profile/*/*.xplane.pb'))
    assert len(traces) == 1 and traces[0].stat().st_size > 1000


def test_flops_estimate_and_bad_keys():
    c = shapes_config.get_config('tiny')
    # the DiT count of models/flops.py (tests/models/test_flops.py) for B=2 clips [T, H, W, C]
    seq = perf.tokens_per_example(c, (4, 8, 8, 3))
    fl = flops.dit_flops(c.model, seq, 2, c.text.max_length)
    assert perf.Throughput(c, 1000).flops_per_step((2, 4, 8, 8, 3)) == fl.model + fl.attention > 0
    c.train.log_to = ('tensorboard', 'mlflow')
    with pytest.raises(ValueError, match='train.log_to'):
        tracking.backends_of(c)
    c.train.log_to = ('tensorboard',)
    c.train.profile_steps = (3, 2)
    from sora_jax.train.validate import validate_config

    with pytest.raises(ValueError, match='train.profile_steps'):
        validate_config(c)


def test_gif_bytes_roundtrip():
    frames = np.random.default_rng(0).integers(0, 255, (3, 4, 5, 3), dtype=np.uint8)
    import io

    from PIL import Image

    gif = Image.open(io.BytesIO(tracking.gif_bytes(frames, scale=2)))
    assert gif.n_frames == 3 and gif.size == (10, 8)
    with pytest.raises(ValueError, match='uint8'):
        tracking.gif_bytes(frames.astype(np.float32))
    assert json.loads(json.dumps(tracking.flat_config(shapes_config.get_config('tiny'))))


def test_fixed_prompts_are_fixed_and_held_out_first():
    from sora_jax.data import shapes
    from sora_jax.train import previews

    c = shapes_config.get_config('tiny')
    items = previews.shapes_prompts(c, 5)
    assert items == previews.shapes_prompts(c, 5)  # the same at every evaluation and run
    held = [shapes.is_held_out(a, c.data.holdout) for _, a in items]
    assert held[0] and held == sorted(held, reverse=True)
    assert items[0][0] == shapes.caption(items[0][1], 'en')
    assert not previews.Previews(c).enabled  # tiny: eval_every=0, nothing built
    c.train.eval_every, c.train.eval_prompts = 4, ('a red circle',)
    assert previews.Previews(c).items == [('a red circle', None)]
