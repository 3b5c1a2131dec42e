"""sora_jax/evaluation/world_long.py and `evaluate.py --suite=world_long`: a long world video cut
into consecutive windows and judged; the window count, the aggregates against the per-window
verdicts, the JSON round trip, the chained extend's bookkeeping, the truth run on by the world's
law (its first window is the scene's own clip and passes; a corrupted one fails), tiny random
world models (configs/world.py:tiny, :tiny_causal) through both methods, and the CLI's one-line
errors before any model loads."""

import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from sora_jax.data import world
from sora_jax.evaluation import world_eval, world_judge
from sora_jax.evaluation import world_long as wl
from sora_jax.evaluation import world_long_report as report

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHIPPED = os.path.join(ROOT, 'checkpoints', 'shapes')  # a full-attention DiT


def _window(index, ok, drift=1.0, fps=16.0, window=33, **kw):
    """A window record as `window_record` writes it."""
    rec = {
        'index': index, 'start': index * window, 'stop': (index + 1) * window,
        'seconds': index * window / fps, 'ok': ok, 'color': ok, 'shape': True, 'motion': ok,
        'binding': ok, 'physics': True, 'permanence': None, 'stability': ok, 'seen': [],
        'sharpness_ratio': 1.0, 'color_drift': drift, 'background_drift': 0.5, 'problems': [],
    }  # fmt: skip
    rec.update(kw)
    return rec


def test_aggregate_on_synthetic_verdicts():
    a = [_window(i, ok) for i, ok in enumerate([1, 1, 1, 1, 1, 0, 0, 0, 0, 0])]
    b = [_window(i, ok, drift=None if i == 0 else 3.0) for i, ok in enumerate([1, 0] * 5)]
    s = wl.aggregate([a, b], fps=16.0, window=33)  # k = round(160 / 33) = 5 windows of 10 s
    assert s['windows_per_prompt'] == 10 and s['edge_windows'] == 5
    assert [w['pass_rate'] for w in s['per_window']] == [1, 0.5, 1, 0.5, 1, 0, 0.5, 0, 0.5, 0]
    assert [w['n'] for w in s['per_window']] == [2] * 10
    assert s['first']['pass_rate'] == pytest.approx(8 / 10)
    assert s['last']['pass_rate'] == pytest.approx(2 / 10)
    assert s['overall']['pass_rate'] == pytest.approx(10 / 20) and s['overall']['n'] == 20
    # drift: None (no object in both windows) is left out of the mean
    assert s['per_window'][0]['color_drift'] == 1.0
    assert s['per_window'][1]['color_drift'] == 2.0
    assert s['overall']['color_drift'] == pytest.approx((10 * 1.0 + 9 * 3.0) / 19)
    # 10-s buckets by window start: windows 0-4 start before 10 s (8.25 s), 5-9 after
    assert [(r['start_s'], r['n'], r['pass_rate']) for r in s['buckets']] == [
        (0.0, 10, 0.8),
        (10.0, 10, 0.2),
    ]
    assert s['criteria']['physics'] == 1.0 and s['criteria']['permanence'] is None
    assert s['apart'] is None and s['touching'] is None  # contact is known for the truth only
    for w, touch in zip(a, [1, 1, 0, 0, 0, 1, 1, 1, 1, 1]):
        w['contact'] = bool(touch)
    s = wl.aggregate([a], fps=16.0, window=33)
    assert (s['apart']['n'], s['apart']['pass_rate']) == (3, 1.0)
    assert (s['touching']['n'], s['touching']['pass_rate']) == (7, 2 / 7)
    assert s['criteria']['binding'] == pytest.approx(0.5)
    # a video shorter than 2k windows: first and last overlap, k is capped at the count
    short = wl.aggregate([a[:3]], fps=16.0, window=33)
    assert short['edge_windows'] == 3 and short['first'] == short['last'] == short['overall']


def test_plan_and_checks():
    assert wl.span_frames(60, 16) == 961 and wl.span_frames(2, 16) == 33
    frames, window = wl.plan(wl.LongOptions(seconds=60), 16.0)
    assert (frames, window, frames // window) == (961, 33, 29)
    assert wl.plan(wl.LongOptions(seconds=1, window_frames=5), 16.0) == (17, 5)
    with pytest.raises(ValueError, match='less than one window of 33 frames'):
        wl.plan(wl.LongOptions(seconds=1), 16.0)
    with pytest.raises(ValueError, match='too short'):
        wl.plan(wl.LongOptions(window_frames=2), 16.0)
    with pytest.raises(ValueError, match='num_prompts=0'):
        wl.plan(wl.LongOptions(num_prompts=0), 16.0)
    wl.check_method('rollout', 3)
    wl.check_method('extend', 0)
    with pytest.raises(ValueError, match='needs a causal checkpoint'):
        wl.check_method('rollout', 0)
    with pytest.raises(ValueError, match='full-attention baseline'):
        wl.check_method('extend', 3)
    assert wl.default_overlap(33, 4) == 9 and wl.default_overlap(5, 1) == 1
    assert wl.default_overlap(33, 1, 3) == 9  # frames alone, (3, 4, 4) patches: 3 of 11
    assert wl.default_overlap(33, 1) == 11
    assert wl.check_overlap(5, 33, 4) == 5
    for bad in (4, 0, 33):
        with pytest.raises(ValueError, match='whole latent frames'):
            wl.check_overlap(bad, 33, 4)


def test_prompts_are_two_object_physics_scenes_of_the_held_out_streams():
    jobs = wl.prompts(4)
    assert [j.lang for j in jobs] == ['en', 'es', 'en', 'es']
    for j in jobs:
        assert len(j.scene.objects) == 2 and j.scene.occluder is None
        assert {o.motion for o in j.scene.objects} <= {'bouncing', 'falling'}
        assert world.HOLDOUT.held_out(j.scene.objects)
        assert j.prompt == world.caption(j.scene, j.lang)
    assert jobs[0].prompt != jobs[2].prompt
    # the first two-object scene of the physics stream --suite=world draws for English
    first = next(
        s for k in range(100) if len((s := world_eval.held_out_scene('physics', 0, k)).objects) == 2
    )
    assert jobs[0].prompt == world.caption(first, 'en')


@pytest.fixture(scope='module')
def scene():
    return wl.prompts(1)[0].scene


def test_truth_first_window_is_the_scene_and_passes(scene):
    """The truth run on for 3 windows: its first 33 frames are the scene's own clip; judged in
    pieces of any size the windows are the same; the first passes with no drift; a clip with
    its colours swapped half way fails its window."""
    paths = wl.truth_paths(scene, 99)
    assert not wl.truth_contact(scene, paths)[:33].any()  # a world scene keeps them apart
    assert wl.truth_contact(scene, [paths[0], paths[0] + 1.0]).all()
    pieces = list(wl.truth_frames(scene, 99, piece=7))
    assert sum(len(p) for p in pieces) == 99
    video = np.concatenate(pieces)
    assert np.abs(video[:33].astype(int) - world.render(scene)).max() <= 1
    objects = world_judge.prompt_objects(scene)
    ws = list(wl.judge_windows(iter(pieces), objects, 33, 16.0))
    assert [(w['index'], w['start'], w['stop']) for w in ws] == [
        (0, 0, 33),
        (1, 33, 66),
        (2, 66, 99),
    ]
    assert ws[0]['ok'] and ws[0]['color_drift'] == 0.0 and ws[0]['sharpness_ratio'] == 1.0
    assert ws == list(wl.judge_windows(iter([video]), objects, 33, 16.0))
    swapped = world.corrupt(scene, 'color_swap', seed=0)
    bad = list(wl.judge_windows(iter([swapped]), objects, 33, 16.0))
    assert len(bad) == 1 and not bad[0]['ok'] and not bad[0]['stability']


def test_truth_evaluation_and_json_round_trip():
    r = wl.evaluate_long(None, 'truth', wl.LongOptions(seconds=6, num_prompts=2, progress=False))
    assert (r.num_frames, r.window, r.fps) == (97, 33, 16.0)
    assert [len(p['windows']) for p in r.prompts] == [97 // 33] * 2
    oks = [w['ok'] for p in r.prompts for w in p['windows']]
    assert r.summary['overall']['pass_rate'] == pytest.approx(np.mean(oks))
    assert r.prompts[0]['windows'][0]['ok']  # the scene's own clip
    assert all(isinstance(w['contact'], bool) for p in r.prompts for w in p['windows'])
    assert r.summary['apart']['n'] + r.summary['touching']['n'] == r.summary['overall']['n']
    text = json.dumps(r.to_json(), allow_nan=False)  # strict JSON: no NaN
    back = wl.LongResult.from_json(json.loads(text))
    assert back == r and back.label == 'truth'
    table = report.table(r)
    assert '| 0-10 | 4 |' in table and '| all | 4 |' in table and '| objects touch |' in table
    with pytest.raises(ValueError, match='runs no model'):
        wl.evaluate_long(object(), 'truth')


class _RecordingPipe:
    """A stand-in for TextToVideo that returns clips whose pixels say (call, frame) and records
    what each call was given: the chaining arithmetic of `extend_frames` is what is tested."""

    def __init__(self, clip: int, temporal_factor: int):
        self.config = types.SimpleNamespace(sample=types.SimpleNamespace(num_frames=clip))
        self.temporal_factor = temporal_factor
        self.calls = []

    def __call__(self, prompt, *, num_frames, seed, mode='t2v', video=None, **kw):
        self.calls.append({'mode': mode, 'seed': seed, 'video': video, **kw})
        k = len(self.calls) - 1
        clip = np.zeros((1, num_frames, 4, 4, 3), np.uint8)
        clip[0, :, 0, 0, 0] = k
        clip[0, :, 0, 0, 1] = np.arange(num_frames)
        return clip


def test_extend_chain_conditions_each_clip_on_the_last_frames():
    pipe = _RecordingPipe(clip=9, temporal_factor=4)
    pieces = list(wl.extend_frames(pipe, 'p', 30, overlap=5, seed=7, guidance_scale=2.0))
    video = np.concatenate(pieces)
    assert len(video) == 30
    # 9 frames, then 4 new frames per call: 9 + 4 + 4 + 4 + 4 + 4 + (1 of 4)
    assert [len(p) for p in pieces] == [9, 4, 4, 4, 4, 4, 1]
    assert [c['mode'] for c in pipe.calls] == ['t2v'] + ['extend'] * 6
    assert [c['seed'] for c in pipe.calls] == list(range(7, 14))
    assert all(c['guidance_scale'] == 2.0 and c['progress'] is False for c in pipe.calls)
    for k, c in enumerate(pipe.calls[1:], 1):  # given the previous clip's last 5 frames
        np.testing.assert_array_equal(c['video'][:, 0, 0, 0], k - 1)
        np.testing.assert_array_equal(c['video'][:, 0, 0, 1], [4, 5, 6, 7, 8])
    # the output: clip 0 whole, then frames 5..8 of each later clip
    np.testing.assert_array_equal(video[:9, 0, 0, 1], np.arange(9))
    np.testing.assert_array_equal(video[9:13, 0, 0], [[1, 5, 0], [1, 6, 0], [1, 7, 0], [1, 8, 0]])
    assert len(np.concatenate(list(wl.extend_frames(pipe, 'p', 5)))) == 5  # one clip, cut
    with pytest.raises(ValueError, match='whole latent frames'):
        next(wl.extend_frames(pipe, 'p', 30, overlap=3))


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip('matplotlib')
    from PIL import Image

    a = [_window(i, ok) for i, ok in enumerate([1, 0, 1])]
    r = wl.LongResult('rollout', '/x/causal', 16.0, 33, 99, {}, [{'windows': a}],
                      wl.aggregate([a], 16.0, 33))  # fmt: skip
    path = report.plot([r, wl.LongResult.from_json(r.to_json())], str(tmp_path / 'p' / 'long.png'))
    with Image.open(path) as im:
        assert im.format == 'PNG' and im.size[0] > 300
    assert r.label == 'rollout (causal)'


def _evaluate(*args):
    env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, 'experiments', 'evaluate.py'), '--suite=world_long',
         *args],
        env=env, capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip


def _error_line(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, r.stderr[-2000:]
    assert 'Traceback' not in r.stderr and lines[-1].startswith('ERROR: '), r.stderr[-2000:]
    return lines[-1]


@pytest.mark.slow  # two CLI processes (imports, a config read): ~40 s on the shared CPU
def test_cli_bad_flags_are_one_line_before_loading():
    assert 'needs a causal checkpoint' in _error_line(
        _evaluate(f'--checkpoint={SHIPPED}', '--method=rollout')
    )
    assert 'less than one window of 33 frames' in _error_line(_evaluate('--seconds=1'))


def test_plan_runs():
    opts = wl.LongOptions()
    assert wl.plan_runs(None, None, None, opts) == [(None, 'truth')]
    assert wl.plan_runs(SHIPPED, None, SHIPPED, opts) == [(SHIPPED, 'extend'), (SHIPPED, 'extend')]
    for args, match in [
        ((None, 'extend', None), 'needs a checkpoint'),
        ((SHIPPED, 'truth', None), 'runs no model'),
        (('/nonexistent/run', None, None), 'is not a checkpoint'),
        ((None, None, '/nonexistent/run'), 'is not a checkpoint'),
    ]:
        with pytest.raises(ValueError, match=match):
            wl.plan_runs(*args, opts)
    with pytest.raises(ValueError, match='less than one window'):  # shapes: 8 fps
        wl.plan_runs(SHIPPED, None, None, wl.LongOptions(seconds=1))


# ----------------------------------------------------------------------------- tiny models
def _write_random(arg: str, work: str) -> str:
    """A randomly initialised configs/world.py:ARG model saved as a one-step checkpoint (what
    `export.export_params` writes): the pipeline loads it as it loads a trained run."""
    from flax import nnx

    from configs import world as world_config
    from sora_jax.models import denoiser
    from sora_jax.train import checkpoint as ckpt

    c = world_config.get_config(arg)
    params = nnx.state(denoiser.build_model(c, nnx.Rngs(0)), nnx.Param)
    mngr = ckpt.manager(os.path.join(work, 'checkpoints'), keep=1, async_save=False)
    ckpt.save(mngr, 0, {'ema_params': params}, config=c, force=True)
    mngr.wait_until_finished()
    mngr.close()
    return work


@pytest.fixture(scope='module')
def tiny_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp('world_long')
    return {a: _write_random(a, str(root / a)) for a in ('tiny', 'tiny_causal')}


def _consistent(r: wl.LongResult):
    n = r.num_frames // r.window
    assert [len(p['windows']) for p in r.prompts] == [n] * len(r.prompts)
    for i, w in enumerate(r.summary['per_window']):
        oks = [p['windows'][i]['ok'] for p in r.prompts]
        assert w['pass_rate'] == pytest.approx(np.mean(oks)) and w['n'] == len(oks)
    flat = [w for p in r.prompts for w in p['windows']]
    assert r.summary['overall']['pass_rate'] == pytest.approx(np.mean([w['ok'] for w in flat]))
    assert all(w['ok'] == (w['binding'] and w['stability'] and w['permanence'] is not False)
               for w in flat)  # fmt: skip
    assert wl.LongResult.from_json(json.loads(json.dumps(r.to_json(), allow_nan=False))) == r


@pytest.mark.slow
def test_tiny_world_models_rollout_and_extend(tiny_runs):
    """configs/world.py:tiny_causal by rollout and :tiny by chained extend (random weights:
    every window may fail the judge), 1 s = 17 frames in windows of 5: 3 windows each."""
    from sora_jax.pipeline import TextToVideo

    opts = wl.LongOptions(seconds=1, num_prompts=2, window_frames=5, steps=2, progress=False)
    causal = TextToVideo.from_checkpoint(tiny_runs['tiny_causal'])
    full = TextToVideo.from_checkpoint(tiny_runs['tiny'])
    assert wl.checkpoint_clock(tiny_runs['tiny_causal']) == (2, 16.0)
    for pipe, method, path in ((causal, 'rollout', 'tiny_causal'), (full, 'extend', 'tiny')):
        r = wl.evaluate_long(pipe, method, opts, checkpoint=tiny_runs[path])
        assert (r.num_frames, r.window, r.method) == (17, 5, method)
        _consistent(r)
        if method == 'extend':
            assert r.settings['overlap'] == 1  # a third of 5 pixel-space latent frames
    with pytest.raises(ValueError, match='needs a causal checkpoint'):
        wl.evaluate_long(full, 'rollout', opts)
    with pytest.raises(ValueError, match='full-attention baseline'):
        wl.evaluate_long(causal, 'extend', opts)


@pytest.mark.slow
def test_cli_causal_beside_the_extend_baseline(tiny_runs, tmp_path):
    out, png = tmp_path / 'long.json', tmp_path / 'long.png'
    r = _evaluate(
        f'--checkpoint={tiny_runs["tiny_causal"]}', f'--baseline={tiny_runs["tiny"]}',
        '--seconds=1', '--window_frames=5', '--num_prompts=2', '--steps=2',
        f'--json={out}', f'--plot={png}',
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(out.read_text())
    results = [wl.LongResult.from_json(d) for d in summary['results']]
    assert [x.method for x in results] == ['rollout', 'extend']
    for x in results:
        _consistent(x)
    assert png.stat().st_size > 1000
    assert 'rollout (tiny_causal)' in r.stdout and 'extend (tiny)' in r.stdout
    assert _error_line(
        _evaluate(f'--checkpoint={tiny_runs["tiny_causal"]}', f'--baseline={tiny_runs["tiny"]}',
                  '--method=extend')
    ).endswith('use method=rollout for it.')  # fmt: skip
