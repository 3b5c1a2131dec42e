"""The physics world (sora_jax/data/world.py): determinism, ground truth against pixels, the law
in the stored trajectories, captions in English and Spanish, the held-out split, the builder."""

import numpy as np
import pytest

from sora_jax.data import world

SCENES = [world.sample_scene(3, i) for i in range(40)]


def test_deterministic_from_seed_and_index():
    a, b = world.generate(3, 5), world.generate(3, 5)
    np.testing.assert_array_equal(a['video'], b['video'])
    assert a['caption_es'] == b['caption_es']
    for x, y in zip(a['scene'].objects, b['scene'].objects):
        np.testing.assert_array_equal(x.position, y.position)
    assert not np.array_equal(a['video'], world.generate(3, 6)['video'])
    assert not np.array_equal(a['video'], world.generate(4, 5)['video'])


def test_shapes_and_ranges():
    for s in SCENES:
        assert (s.num_frames, s.height, s.width) == (33, 64, 64)
        assert 1 <= len(s.objects) <= 2 and len({o.color for o in s.objects}) == len(s.objects)
        assert s.background_rgb.max() <= 70
        for o in s.objects:
            lo, hi = world.walls(o.shape, o.size, 64, 64)
            assert o.position.shape == o.velocity.shape == (33, 2) and o.visibility.shape == (33,)
            assert np.all(o.position >= lo - 1e-4) and np.all(o.position <= hi + 1e-4)
    assert {s.background for s in SCENES} == set(world.BACKGROUNDS)
    assert {o.motion for s in SCENES for o in s.objects} == set(world.MOTIONS)
    assert any(s.occluder for s in SCENES) and not all(s.occluder for s in SCENES)


def test_ground_truth_matches_pixels():
    """Where an object is fully visible, the centroid of its coverage (the projection of pixel -
    background on colour - background, in a window 1.5 px beyond its stored box) is where its
    stored position puts it within 0.2 px (3x3 supersampling moves edges in 1/3 px steps), and
    its centre pixel is its colour; where it is
    hidden, no pixel near its colour shows anywhere."""
    checked = hidden = 0
    for s in SCENES[:16]:
        video = world.render(s).astype(np.float32)
        bg = s.background_rgb
        for o in s.objects:
            rgb = np.float32(world.COLORS[o.color].rgb)
            v = rgb - bg  # [H, W, 3]
            alpha = np.clip(((video - bg) * v).sum(-1) / (v * v).sum(-1), 0, 1)  # [T, H, W]
            if s.occluder is not None:  # the grey bar is not the object
                alpha[:, s.occluder.mask(s.height, s.width)] = 0
            near = np.linalg.norm(video - rgb, axis=-1) < 40
            for f in range(s.num_frames):
                if o.visibility[f] > 0.999:
                    lo = np.floor(o.position[f] - o.extent - 1.5).astype(int).clip(0)
                    hi = np.ceil(o.position[f] + o.extent + 1.5).astype(int)
                    win = alpha[f, lo[0] : hi[0], lo[1] : hi[1]]
                    rows, cols = np.mgrid[0 : win.shape[0], 0 : win.shape[1]] + 0.5
                    centroid = lo + np.array([(rows * win).sum(), (cols * win).sum()]) / win.sum()
                    # a triangle's centroid sits a third of its half height below its box centre
                    drop = o.size / 3 if o.shape == 'triangle' else 0.0
                    np.testing.assert_allclose(centroid - (drop, 0), o.position[f], atol=0.2)
                    r, c = np.floor(o.position[f]).astype(int)
                    assert near[f, r, c]
                    checked += 1
                elif o.visibility[f] == 0:
                    assert not near[f].any()
                    hidden += 1
    assert checked > 300 and hidden > 0


def test_stored_trajectories_obey_the_law():
    n = {'bouncing': 0, 'falling': 0}
    for s in SCENES:
        for o in s.objects:
            p, v = o.position.astype(np.float64), o.velocity.astype(np.float64)
            if o.motion == 'still':
                assert np.all(v == 0) and np.ptp(p, 0).max() == 0
            elif o.motion in world.DIRECTIONS:
                d = np.array(world.DIRECTIONS[o.motion])
                np.testing.assert_allclose(v, np.broadcast_to(v[0], v.shape), atol=1e-6)
                assert np.all(np.sign(v[0]) == d) and not o.bounce_times
                np.testing.assert_allclose(np.diff(p, axis=0), v[:-1], atol=1e-4)
            elif o.motion == 'bouncing':  # speed constant, every bounce reverses one component
                speed = np.linalg.norm(v, axis=-1)
                np.testing.assert_allclose(speed, speed[0], rtol=1e-5)
                assert any(4 <= b <= 28 for b in o.bounce_times)
                n['bouncing'] += 1
            else:  # falling: energy kept, gravity between frames, a floor bounce
                lo, hi = world.walls(o.shape, o.size, 64, 64)
                energy = 0.5 * v[:, 0] ** 2 + o.gravity * (hi[0] - p[:, 0])
                np.testing.assert_allclose(energy, energy[0], atol=1e-3)
                assert 0.15 <= o.gravity <= 0.25 and 0 in o.bounce_axes
                free = [f for f in range(32) if not any(f < b <= f + 1 for b in o.bounce_times)]
                np.testing.assert_allclose(
                    np.diff(v[:, 0])[free], o.gravity, atol=1e-4
                )  # fmt: skip
                n['falling'] += 1
    assert min(n.values()) >= 3


def test_simulate_reflects_exactly():
    # 1 px/frame to the right from col 10 between walls 5 and 20: hits 20 at t=10, back by 22
    tr = world.simulate((10.0, 10.0), (0.0, 1.0), 0.0, (5.0, 5.0), (20.0, 20.0), 24)
    assert tr.bounce_times == (10.0,) and tr.bounce_axes == (1,)
    np.testing.assert_allclose(tr.position[22], (10.0, 8.0))
    np.testing.assert_allclose(tr.velocity[22], (0.0, -1.0))
    # half the speed at the first bounce (a corrupted bounce)
    tr = world.simulate((10.0, 10.0), (0.0, 1.0), 0.0, (5, 5), (20, 20), 24, restitution=[0.5])
    np.testing.assert_allclose(tr.position[22], (10.0, 14.0))


def test_captions_en_es():
    objs = [('circle', 'red', 'bouncing'), ('square', 'blue', 'falling')]
    assert world.caption(objs, 'en') == 'a red circle bouncing and a blue square falling'
    assert world.caption(objs, 'es') == 'un círculo rojo rebotando y un cuadrado azul cayendo'
    one = [{'shape': 'triangle', 'color': 'orange', 'motion': 'moving_left'}]
    assert world.caption(one, 'en', 'vertical') == (
        'an orange triangle moving to the left, behind a grey vertical bar'
    )
    assert world.caption(one, 'es', 'horizontal') == (
        'un triángulo naranja moviéndose hacia la izquierda, detrás de una barra gris horizontal'
    )
    for s in SCENES:
        en, es = world.caption(s, 'en'), world.caption(s, 'es')
        for o in s.objects:
            assert f'{o.color} {o.shape} {world.MOTIONS[o.motion][0]}' in en
            assert f'{world.SHAPES[o.shape]} {world.COLORS[o.color].es_m}' in es
            assert world.MOTIONS[o.motion][1] in es
        assert ('bar' in en) == (s.occluder is not None) == ('barra' in es)
    with pytest.raises(ValueError, match='Unknown color'):
        world.caption([('circle', 'teal', 'still')])


def test_world_text_encoder_holds_the_longest_caption():
    """configs/world.py's byte tokenizer keeps every caption whole: the longest is two of the
    longest objects behind a bar, in Spanish (accents are two bytes)."""
    from sora_jax import config_files
    from sora_jax.models.text import ByteTokenizer

    objs = [(s, c, m) for s in world.SHAPES for c in world.COLORS for m in world.MOTIONS]
    longest = max(
        len(world.caption([o, o], lang, bar).encode())
        for o in objs
        for lang in world.LANGS
        for bar in world.OCCLUDER_WORDS
    )
    room = ByteTokenizer(config_files.load('configs/world.py:dit').text.max_length).max_length - 1
    assert longest <= room, f'{longest} bytes > {room}: raise text.max_length in configs/world.py'


def test_held_out_split_is_seeded_and_kept_out():
    assert world.holdout_split(0) == world.HOLDOUT
    assert world.holdout_split(1) != world.HOLDOUT
    assert len(world.HOLDOUT.pairs) == 6 and len(world.HOLDOUT.combos) == 12
    train = [world.sample_scene(9, i) for i in range(150)]
    held = [world.sample_scene(9, i, subset='held_out') for i in range(60)]
    assert not any(world.HOLDOUT.held_out(s.objects) for s in train)
    assert all(world.HOLDOUT.held_out(s.objects) for s in held)
    # both kinds are drawn: a held-out pair on one object, a held-out two-object combination
    assert any(any(world.HOLDOUT.object_held_out(o) for o in s.objects) for s in held)
    assert any(len(s.objects) == 2 and world.HOLDOUT.combo_held_out(*s.objects) for s in held)
    # every held-out value still appears in training with other partners
    seen = {v for s in train for o in s.objects for v in (o.shape, o.color, o.motion)}
    assert {v for p in world.HOLDOUT.pairs for v in p} <= seen


def test_corruptions_change_the_clip():
    s = next(x for x in SCENES if len(x.objects) == 2 and x.occluder is None)
    base = world.render(s)
    for kind in ('color_swap', 'teleport', 'vanish'):
        bad = world.corrupt(s, kind, seed=1)
        assert bad is not None and bad.shape == base.shape
        assert not np.array_equal(bad, base)
        k = np.nonzero(np.any(bad != base, axis=(1, 2, 3)))[0][0]
        assert 5 <= k <= 27  # the clip starts right and breaks in its middle


def test_builder_stores_video_captions_and_truth(tmp_path):
    from sora_jax.data.builders.world import WorldConfig, build_world, make_example

    cfg = WorldConfig(num_train=6, num_validation=2, num_held_out=2, sizes=((9, 64, 64),))
    src = build_world(tmp_path, cfg)
    assert {k: len(v) for k, v in src.items()} == {'train': 6, 'validation': 2, 'held_out': 2}
    ex = src['train'][3]
    ref = make_example(cfg, 'train', 3)
    np.testing.assert_array_equal(ex['video'], ref['video'])
    assert ex['video'].shape == (9, 64, 64, 3)
    n = int(ex['num_objects'])
    assert ex['position'].shape == (n, 9, 2) and ex['visibility'].shape == (n, 9)
    assert ex['caption_en'].decode() == ref['caption_en']
