"""The synthetic shapes generator: determinism, caption/scene agreement, Spanish, holdout."""

import numpy as np
import pytest

from sora_jax.data import shapes as S

T, H, W = 12, 32, 40


def _color_mask(frame, color):
    """Pixels whose nearest vocabulary colour is `color` and that are close to it."""
    rgb = np.array(S.COLORS[color].rgb, np.float32)
    table = np.array([c.rgb for c in S.COLORS.values()], np.float32)
    d = ((frame[..., None, :].astype(np.float32) - table) ** 2).sum(-1)  # [H, W, C]
    nearest = np.array(list(S.COLORS))[d.argmin(-1)]
    return (nearest == color) & (((frame - rgb) ** 2).sum(-1) < 40.0**2)


@pytest.fixture(scope='module')
def single_object_scenes():
    out = []
    for i in range(56):
        scene = S.sample_scene(3, i, num_frames=T, height=H, width=W, max_objects=1)
        out.append((scene, S.render(scene)))
    return out


def test_deterministic_from_seed():
    a = S.generate(0, 5, num_frames=T, height=H, width=W)
    b = S.generate(0, 5, num_frames=T, height=H, width=W)
    c = S.generate(1, 5, num_frames=T, height=H, width=W)
    d = S.generate(0, 6, num_frames=T, height=H, width=W)
    assert a['video'].tobytes() == b['video'].tobytes()
    assert a['caption_en'] == b['caption_en'] and a['caption_es'] == b['caption_es']
    assert a['video'].tobytes() != c['video'].tobytes()
    assert a['video'].tobytes() != d['video'].tobytes()


@pytest.mark.parametrize('size', [(1, 4, 4), (5, 24, 40), (3, 17, 9)])
def test_any_size_renders(size):
    v = S.generate(2, 0, num_frames=size[0], height=size[1], width=size[2])['video']
    assert v.shape == (*size, 3) and v.dtype == np.uint8


def test_center_colour_matches_caption(single_object_scenes):
    for scene, video in single_object_scenes:
        obj = scene.objects[0]
        for t in (0, T // 2, T - 1):
            cy, cx = obj['centers'][t].astype(int)
            assert S.nearest_color(video[t, cy, cx]) == obj['color'], (S.caption(obj), t)
            np.testing.assert_allclose(video[t, cy, cx], S.COLORS[obj['color']].rgb, atol=2)


def test_motion_matches_caption(single_object_scenes):
    seen = set()
    for scene, video in single_object_scenes:
        obj = scene.objects[0]
        first, last = _color_mask(video[0], obj['color']), _color_mask(video[-1], obj['color'])
        assert first.sum() > 4 and last.sum() > 4
        c0 = np.argwhere(first).mean(0)  # (row, col)
        c1 = np.argwhere(last).mean(0)
        move = c1 - c0
        area_ratio = last.sum() / first.sum()
        motion = obj['motion']
        seen.add(motion)
        if motion in S.DIRECTIONS:
            axis = 0 if S.DIRECTIONS[motion][0] else 1
            sign = S.DIRECTIONS[motion][axis]
            free = (H, W)[axis] - 2 * obj['sizes'][0]
            assert sign * move[axis] > 0.4 * free, (motion, move)
            assert abs(move[1 - axis]) < 1.0, (motion, move)
            assert 0.7 < area_ratio < 1.4
        elif motion == 'growing':
            assert area_ratio > 2.5, area_ratio
        elif motion == 'shrinking':
            assert area_ratio < 0.4, area_ratio
        else:
            assert np.abs(move).max() < 0.5 and area_ratio == 1.0
    assert seen == set(S.MOTIONS)


def test_objects_stay_inside_the_frame():
    for i in range(40):
        scene = S.sample_scene(9, i, num_frames=T, height=H, width=W)
        for obj in scene.objects:
            c, r = obj['centers'], obj['sizes']
            assert c.shape == (T, 2) and r.shape == (T,)
            assert np.all(c[:, 0] - r >= -1e-4) and np.all(c[:, 0] + r <= H + 1e-4)
            assert np.all(c[:, 1] - r >= -1e-4) and np.all(c[:, 1] + r <= W + 1e-4)


def test_multi_object_captions_and_topmost_colour():
    counts = set()
    for i in range(30):
        ex = S.generate(4, i, num_frames=T, height=H, width=W)
        objs = ex['scene'].objects
        counts.add(len(objs))
        assert ex['caption_en'].count(' and ') == (len(objs) > 1)
        assert ex['caption_es'].count(' y ') == (len(objs) > 1)
        assert ex['caption_en'].count(', ') == max(len(objs) - 2, 0)
        top = objs[-1]  # drawn last, never occluded
        cy, cx = top['centers'][0].astype(int)
        assert S.nearest_color(ex['video'][0, cy, cx]) == top['color']
    assert counts == {1, 2, 3}


def test_spanish_and_english_captions():
    assert (
        S.caption({'shape': 'circle', 'color': 'red', 'motion': 'moving_left'}, 'es')
        == 'un círculo rojo moviéndose hacia la izquierda'
    )
    assert (
        S.caption({'shape': 'circle', 'color': 'red', 'motion': 'moving_left'}, 'en')
        == 'a red circle moving to the left'
    )
    assert S.caption(('star', 'white', 'resting'), 'es') == 'una estrella blanca quieta'
    assert S.caption(('star', 'yellow', 'growing'), 'es') == 'una estrella amarilla creciendo'
    assert S.caption(('square', 'orange', 'growing'), 'en') == 'an orange square growing'
    two = [('triangle', 'green', 'shrinking'), ('star', 'purple', 'moving_up')]
    assert (
        S.caption(two, 'es') == 'un triángulo verde encogiéndose y '
        'una estrella morada moviéndose hacia arriba'
    )
    assert S.caption(two, 'en') == 'a green triangle shrinking and a purple star moving up'
    with pytest.raises(ValueError, match='magenta'):
        S.caption(('circle', 'magenta', 'growing'))
    with pytest.raises(ValueError, match='fr'):
        S.caption(('circle', 'red', 'growing'), 'fr')


def test_vocabulary():
    assert {'circle', 'square', 'triangle'} <= set(S.SHAPES)
    assert len(S.COLORS) >= 6
    assert set(S.MOTIONS) == {
        'moving_left',
        'moving_right',
        'moving_up',
        'moving_down',
        'growing',
        'shrinking',
        'resting',
    }
    rgb = np.array([c.rgb for c in S.COLORS.values()], np.float32)
    dist = np.sqrt(((rgb[:, None] - rgb[None]) ** 2).sum(-1)) + 1e3 * np.eye(len(rgb))
    assert dist.min() > 70  # colours are far apart: nearest-colour judging is robust
    for name, c in S.COLORS.items():
        assert S.nearest_color(c.rgb) == name


def test_holdout_never_generated():
    holdout = [('red', 'triangle'), ('growing',), ('blue', 'star', 'moving_up')]
    seen = 0
    for i in range(300):
        scene = S.sample_scene(5, i, num_frames=2, height=8, width=8, holdout=holdout)
        for obj in scene.objects:
            seen += 1
            assert not (obj['color'] == 'red' and obj['shape'] == 'triangle')
            assert obj['motion'] != 'growing'
            assert not S.is_held_out(obj, holdout)
    assert seen > 300
    assert S.is_held_out(('triangle', 'red', 'resting'), holdout)
    assert not S.is_held_out(('triangle', 'green', 'resting'), holdout)
    with pytest.raises(ValueError, match='unknown'):
        S.sample_scene(0, num_frames=2, height=8, width=8, holdout=[('red', 'hexagon')])
    with pytest.raises(ValueError, match='tuples'):
        S.sample_scene(0, num_frames=2, height=8, width=8, holdout=['red'])


def test_background_kinds_and_size_scale():
    """`backgrounds` restricts the kinds drawn; `size_scale` multiplies radii (same draws) and the
    shapes still fit; the default draws what passing every kind draws; bad values are clear
    errors."""
    for i in range(12):
        plain = S.sample_scene(4, i, num_frames=T, height=H, width=W, backgrounds=('plain',))
        assert plain.background['kind'] == 'plain'
        video = S.render(plain)
        bg = video[0][~_color_mask(video[0], plain.objects[0]['color'])]
        assert len(np.unique(bg.reshape(-1, 3), axis=0)) <= 60  # one colour + antialiased edges
        base = S.sample_scene(4, i, num_frames=T, height=H, width=W)
        assert (
            base.background
            == S.sample_scene(
                4, i, num_frames=T, height=H, width=W, backgrounds=S.BACKGROUNDS
            ).background
        )
        big = S.sample_scene(4, i, num_frames=T, height=H, width=W, size_scale=1.5)
        for a, b in zip(base.objects, big.objects):
            assert a['motion'] == b['motion']
            np.testing.assert_allclose(b['sizes'], np.maximum(a['sizes'] * 1.5, 1.5), rtol=1e-5)
            c, r = b['centers'], b['sizes']
            assert np.all(c[:, 0] - r >= -1e-4) and np.all(c[:, 0] + r <= H + 1e-4)
            assert np.all(c[:, 1] - r >= -1e-4) and np.all(c[:, 1] + r <= W + 1e-4)
    kinds = {
        S.sample_scene(4, i, num_frames=2, height=8, width=8).background['kind'] for i in range(40)
    }
    assert kinds == set(S.BACKGROUNDS)
    with pytest.raises(ValueError, match="backgrounds=\\('dots',\\) must be a non-empty subset"):
        S.sample_scene(0, 0, num_frames=2, height=8, width=8, backgrounds=('dots',))
    with pytest.raises(ValueError, match='size_scale=3.0 must be in'):
        S.sample_scene(0, 0, num_frames=2, height=8, width=8, size_scale=3.0)
