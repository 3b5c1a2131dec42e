"""Watermark: PSNR, bit accuracy after each transform on shapes clips (marked at 32x32, written
4x upscaled as sample.py writes them) and natural pans/zooms, false positives on unmarked clips.
The full measurement (more clips, 800 unmarked) is experiments/watermark_eval.py."""
import numpy as np
import pytest

from sora_jax.data import shapes
from sora_jax.safety import robustness, watermark as wm

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
    psnrs = [wm.psnr(wm.embed(clip, MID, KEY), clip),
             wm.psnr(wm.embed(robustness.natural_clip(0), MID, KEY), robustness.natural_clip(0))]
    print(f'\nPSNR {psnrs}')
    assert min(psnrs) >= 40.0


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


def test_combination_reads_most_bits():
    """Crop 10% + half size + middle half + CRF 28 on 4 shapes + 4 natural clips: these read
    1.00 1.00 0.97 0.47 | 0.53 1.00 0.94 1.00 (mean 0.86; 0.88 before the detector weighted the
    frames, which gained on watermark_eval.py's clips: README). The >= 0.95 target is NOT met: a weak
    mark (compression keeps 35-70% of it at this size) sometimes loses the crop search to the
    host (the 0.53s; at the true crop they read >= 0.85). experiments/watermark_eval.py: README."""
    truth = wm.payload_bits(MID, KEY)
    clips = [(_shapes(i, seed=9), 4) for i in range(4)]
    clips += [(robustness.natural_clip(300 + i), 1) for i in range(4)]
    accs = []
    for clip, k in clips:
        written = robustness.reencode(wm.embed(clip, MID, KEY).repeat(k, 1).repeat(k, 2), 18)
        d = wm.detect(robustness.combination(written))
        accs.append(float(np.mean(wm.payload_bits(d.model_id, d.user_key) == truth)) if d.found
                    else float(np.mean(d.bits == truth)))
    print(f'\ncombination: bit accuracy {np.round(accs, 3).tolist()}')
    assert np.mean(accs) >= 0.85 and sum(a >= 0.95 for a in accs) >= 5


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
    a = wm._ll_dct_matrix()
    fast = (a @ x @ a.T).reshape(2, -1)[:, wm._layout()[0]]
    np.testing.assert_allclose(fast, wm._analysis(x), atol=1e-9)


def test_unmarked_clips_are_not_found():
    clips = [_shapes(i, seed=5).repeat(4, 1).repeat(4, 2) for i in range(3)]
    clips += [robustness.natural_clip(500 + i) for i in range(3)]
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
