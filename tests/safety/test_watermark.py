"""Watermark: PSNR, bit accuracy after each transform on shapes clips (marked at 32x32, written
4x upscaled as sample.py writes them) and natural pans/zooms, false positives on unmarked clips.
The full measurement (more clips, 800 unmarked) is experiments/watermark_eval.py."""

import numpy as np
import pytest

from sora_jax.data import shapes
from sora_jax.safety import robustness
from sora_jax.safety import watermark as wm
from sora_jax.safety import watermark_code as wm_code
from sora_jax.safety import watermark_embed as wm_embed
from sora_jax.safety import watermark_layout as wm_layout

MID, KEY = 0xBEEF, 4242


def _shapes(i, seed=1):
    return shapes.render(shapes.sample_scene(seed, i, num_frames=16, height=32, width=32))


@pytest.fixture(scope='module')
def marked():
    clips = [(_shapes(0), 4), (robustness.natural_clip(0), 1)]
    out = []
    for clip, k in clips:
        m = wm.embed(clip, MID, KEY)
        up = lambda v: v.repeat(k, 1).repeat(k, 2)  # noqa: E731
        out.append((up(clip), robustness.reencode(up(m), 18)))  # written as sample.py does
    return out


def test_psnr_and_payload(marked):
    truth = wm.payload_bits(MID, KEY)
    assert truth.size == 32
    clip = _shapes(0)
    psnrs = [
        wm.psnr(wm.embed(clip, MID, KEY), clip),
        wm.psnr(wm.embed(robustness.natural_clip(0), MID, KEY), robustness.natural_clip(0)),
    ]
    print(f'\nPSNR {psnrs}')
    assert min(psnrs) >= 40.0


def test_budget_is_per_video():
    """Frames that need less than the cap leave the rest to those that need more: the video's
    PSNR stays >= 40 dB while some frames go below the 40.16 dB a cap on every frame gives (none
    below the FRAME_OVER ceiling, 38.2 dB); the common cap solves mean(min(need, c)^2) =
    budget^2. The RMS is of the frames as written (rounded, clipped)."""
    clip = _shapes(1)
    m = wm.embed(clip, MID, KEY)
    frames = [wm.psnr(m[i : i + 1], clip[i : i + 1]) for i in range(len(clip))]
    print(f'\nvideo PSNR {wm.psnr(m, clip):.2f}, frames {min(frames):.2f}-{max(frames):.2f}')
    assert wm.psnr(m, clip) >= 40.0 and min(frames) < 40.15
    assert min(frames) >= 40.1 - 20 * np.log10(wm.FRAME_OVER) - 0.05
    cap = wm.MAX_RMS
    need = np.array([0.5, 0.9, 1.1, 1.2, 1.25, 1.25]) * cap
    c = wm_embed.frame_cap(need)
    assert 1.0 * cap < c < 1.25 * cap
    np.testing.assert_allclose(np.mean(np.minimum(need, c) ** 2), cap**2)
    assert wm_embed.frame_cap(need * 0.5) == cap * wm.FRAME_OVER  # nothing binds
    assert wm_embed.frame_cap(np.full(4, 3.0) * cap) == pytest.approx(cap)  # all need more: the cap


def test_change_is_along_the_luma_weights():
    """The change moves the luma 1.157x as far per unit of RGB squared error as an equal change
    to R, G and B would (ratio 1.0): it is made along (0.299, 0.587, 0.114)."""
    for clip in (robustness.natural_clip(0)[:4], _shapes(0)[:4]):
        d = wm.embed(clip, MID, KEY).astype(np.float64) - clip
        ratio = np.sqrt(np.mean(wm_layout.luma(d) ** 2) / np.mean(d**2))
        per_channel = np.abs(d).reshape(-1, 3).mean(0)
        print(f'\nluma per unit RMS {ratio:.3f}, mean |change| R G B {per_channel.round(2)}')
        assert 1.12 <= ratio <= 1.16
        assert per_channel[1] > per_channel[0] > per_channel[2] > 0


@pytest.mark.parametrize('name', [t for t in robustness.TRANSFORMS if t != 'combination'])
def test_bit_accuracy_after_transform(marked, name):
    truth = wm.payload_bits(MID, KEY)
    accs, found = [], []
    for _, written in marked:
        d = wm.detect(robustness.TRANSFORMS[name](written))
        accs.append(float(np.mean(d.bits == truth)))
        found.append(d.found and (d.model_id, d.user_key) == (MID, KEY))
    print(f'\n{name}: raw bit accuracy {accs}, found {found}')
    assert np.mean(accs) >= 0.99 and all(found)


@pytest.mark.slow
def test_combination_sets_script(tmp_path):
    """experiments/watermark_eval.py --sets, --fpr_only and --timing_clips. The combination (crop
    10% + half size + middle half + CRF 28) on 8 shapes clips of seed 9 and 8 natural clips
    300-307, written as sample.py writes them. Natural clips meet the >= 0.95 bit-accuracy target
    set by set; the shapes generator's clips meet it on average over many sets (docs/safety.md),
    not on every 8-clip set such as this one, hence its lower bound here."""
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = tmp_path / 'sets.json'

    script = os.path.join(root, 'experiments', 'watermark_eval.py')

    def run(*flags, timeout):
        return subprocess.run(
            [sys.executable, script, *flags, f'--json={out}'],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def result(*flags, timeout=600):
        r = run(*flags, timeout=timeout)
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads(out.read_text())

    sets = result('--sets=shapes:9,natural:300', timeout=900)['combination_sets']
    print(f'\ncombination: {sets}')
    assert sets['shapes:9']['bit_accuracy'] >= 0.90 and sets['shapes:9']['found'] >= 6
    assert sets['natural:300']['bit_accuracy'] >= 0.95 and sets['natural:300']['found'] >= 7
    fp = result('--fpr_only', '--fpr_clips=2', '--fpr_start=400')['false_positive']
    assert fp['clips'] == 2 and fp['start'] == 400 and fp['false_positives'] == 0
    t = result('--timing_clips=1')['detection_time']
    assert t['unmarked']['found'] == 0 and t['marked']['found'] == 2
    assert all(len(t[k]['seconds']) == 2 and t[k]['median'] > 0 for k in t)
    bad = run('--sets=shapes9', timeout=300)
    assert bad.returncode != 0 and 'must be shapes:SEED or natural:START' in bad.stderr


def test_t2i_image_written_as_png(tmp_path):
    """A single marked frame (mode='t2i'), upscaled 4x and written as sample.py writes it."""
    from sora_jax.io import video as video_io

    for i, (frame, k) in enumerate([(_shapes(3)[:1], 4), (robustness.natural_clip(7)[:1], 1)]):
        marked = wm.embed(frame, MID, KEY).repeat(k, 1).repeat(k, 2)
        d = wm.detect_file(video_io.write_image(tmp_path / f'{i}.png', marked[0]))
        assert d.found and (d.model_id, d.user_key) == (MID, KEY), d.summary()


def test_fast_analysis_matches_pywt_dct():
    """The detector's separable matrices equal the Haar-LL + DCT analysis the embedder uses."""
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64))
    a = wm_layout.ll_dct_matrix()
    fast = (a @ x @ a.T).reshape(2, -1)[:, wm_layout.layout()[0]]
    np.testing.assert_allclose(fast, wm_layout.analysis(x), atol=1e-9)


def test_cheapest_flips_in_cost_order():
    """The list's patterns are the n cheapest sets of at most LIST_FLIPS bits (brute force)."""
    import itertools

    w = np.sort(np.random.default_rng(1).uniform(0, 1, 12))
    every = [c for k in range(wm.LIST_FLIPS + 1) for c in itertools.combinations(range(12), k)]
    brute = sorted(w[list(c)].sum() for c in every)
    got = wm_code.cheapest_flips(w, 300)
    assert len(got) == len(set(got)) == 300 and got[0] == ()
    assert max(len(c) for c in got) == wm.LIST_FLIPS
    np.testing.assert_allclose([w[list(c)].sum() for c in got], brute[:300], atol=1e-12)


def test_list_decoder_flips_a_cheap_bit_outside_the_least_reliable_few():
    """Two wrong bits, the least reliable and the 25th least reliable of 54: the list tries the
    flip patterns cheapest first, so it decodes exactly when it is longer than the number of
    cheaper patterns (436 here, brute force; a list of the flips of the few least reliable bits
    would never reach the 25th). Random readings pass about LIST / 2^22 of the time."""
    import itertools

    rng = np.random.default_rng(3)
    bits = (wm_code.codeword(MID, KEY) > 0).astype(np.uint8)
    rel = np.sort(rng.uniform(0.05, 1.0, wm.N_BITS))[rng.permutation(wm.N_BITS)]
    order = np.argsort(rel)
    hard = bits.copy()
    hard[order[[0, 24]]] ^= 1
    cost, srt = rel[order[[0, 24]]].sum(), rel[order]
    cheaper = sum(
        srt[list(c)].sum() < cost
        for k in range(wm.LIST_FLIPS + 1)
        for c in itertools.combinations(range(wm.N_BITS), k)
    )
    assert cheaper == 436 < wm.LIST
    fixed, flips = wm_code.list_decode(hard, rel)
    assert fixed is not None and (fixed == bits).all() and flips == 2
    assert wm_code.list_decode(hard, rel, size=cheaper)[0] is None
    assert (wm_code.list_decode(hard, rel, size=cheaper + 1)[0] == bits).all()
    passes = sum(
        wm_code.list_decode(
            rng.integers(0, 2, wm.N_BITS).astype(np.uint8), rng.uniform(0, 1, wm.N_BITS)
        )[0]
        is not None
        for _ in range(200)
    )
    assert passes == 0


@pytest.mark.slow
def test_unmarked_clips_are_not_found():
    clips = [_shapes(i, seed=5).repeat(4, 1).repeat(4, 2) for i in range(2)]
    clips += [robustness.natural_clip(500 + i) for i in range(2)]
    dets = [wm.detect(robustness.reencode(c, 18)) for c in clips]
    assert sum(d.found for d in dets) == 0
    assert all(d.model_id is None for d in dets)
    assert 'no watermark found' in dets[0].summary()


def test_bad_input():
    with pytest.raises(ValueError, match='16 bits'):
        wm.payload_bits(70000, 0)
    with pytest.raises(ValueError, match='uint8'):
        wm.embed(np.zeros((2, 32, 32, 3), np.float32), 1, 2)
    with pytest.raises(ValueError, match='at least 32x32'):
        wm.detect(np.zeros((2, 16, 16, 3), np.uint8))
