"""Two objects crossing (sora_jax/evaluation/world_judge.py): the world has no object-object
collisions, so over a long clip two objects pass through each other, one drawn over the other.
The judge treats the crossing as a passage: the truth of long two-object scenes, run on by the
world's law, passes in windows where the objects touch (both partly seen, or one wholly hidden
by the other); a crossing where the objects swap colours (an identity swap) fails, and so does
one where an object vanishes at the crossing."""

import numpy as np
import pytest

from sora_jax.data import world
from sora_jax.evaluation import world_judge as J
from sora_jax.evaluation import world_long as wl

WINDOW = 33


def _draw(scene, pos, rgb=None, drawn=None) -> np.ndarray:
    """uint8 [WINDOW, H, W, 3]: the scene's objects at `pos` [2, WINDOW, 2], `rgb` [2, WINDOW, 3]
    and `drawn` bool [2, WINDOW] overriding their colours and presence (world.draw paints
    objects in order: the second over the first)."""
    layers = []
    for k, o in enumerate(scene.objects):
        c = np.broadcast_to(np.float32(world.COLORS[o.color].rgb), (WINDOW, 3))
        layers.append(
            world.Layer(
                o.shape, o.size, c if rgb is None else rgb[k], pos[k],
                np.ones(WINDOW, bool) if drawn is None else drawn[k],
            )
        )  # fmt: skip
    return world.draw(scene.background_rgb, layers, None, WINDOW)


def _alone(scene, pos, k: int) -> np.ndarray:
    """bool [WINDOW, H, W]: the pixels object k covers, drawn alone."""
    drawn = np.zeros((2, WINDOW), bool)
    drawn[k] = True
    bg = _draw(scene, pos, drawn=np.zeros((2, WINDOW), bool))
    return np.any(_draw(scene, pos, drawn=drawn) != bg, axis=-1)


def _crossings(scenes, per_scene: int, hidden_only: bool = False, num_frames: int = 961) -> list:
    """Windows of WINDOW frames around crossings of the long truth of `scenes` (their objects
    run on by the world's law, `world_long.truth_paths`), up to `per_scene` each: (scene,
    positions [2, WINDOW, 2], the frame of largest overlap, whether the object drawn under is
    wholly hidden in some frame). Each crossing (a run of touching frames) lies wholly inside
    frames 8..24 of its window, and the two objects overlap by 8 px or more."""
    out = []
    for scene in scenes:
        paths = wl.truth_paths(scene, num_frames)
        touch = wl.truth_contact(scene, paths)
        edges = np.flatnonzero(np.diff(touch.astype(int))) + 1  # run starts / stops
        found = 0
        for a, b in zip(edges[:-1], edges[1:]):
            start = a - 8 - (16 - (b - a)) // 2
            inside = 0 <= start <= num_frames - WINDOW
            if not touch[a] or b - a > 16 or not inside or found == per_scene:
                continue
            pos = np.stack([p[start : start + WINDOW] for p in paths])
            under, over = _alone(scene, pos, 0), _alone(scene, pos, 1)
            overlap = (under & over).sum((1, 2))
            hidden = bool(np.any((under & ~over).sum((1, 2)) == 0))
            if overlap.max() >= 8 and (hidden or not hidden_only):
                out.append((scene, pos, int(np.argmax(overlap)), hidden))
                found += 1
    return out


def _ok(v: J.ClipVerdict) -> bool:
    """`world_windows.WindowVerdict.ok`: a window of a long clip passes."""
    return v.binding and v.stability and v.permanence is not False


@pytest.fixture(scope='module')
def crossings():
    """Two crossings of each of the 8 prompts `evaluate.py --suite=world_long` runs, and two of
    a scene whose larger square hides the smaller one wholly for some frames."""
    prompts = [job.scene for job in wl.prompts(8)]
    hides = world.sample_scene(0, 281, num_objects=(2,), occluder_prob=0.0,
                               motions=('bouncing', 'falling'))  # fmt: skip
    return _crossings(prompts, 2) + _crossings([hides], 2, hidden_only=True)


def test_the_truth_passes_where_objects_cross(crossings):
    assert len(crossings) >= 8
    for scene, pos, _, _ in crossings:
        video = _draw(scene, pos)
        v = J.judge_clip(video, scene)
        assert _ok(v), (world.caption(scene), v.problems)
        tracks, passages = J.track(video)[:2]
        assert len(tracks) == 2 and all(k is not None for _, _, k in passages)
        # while they overlap, one blob of two colours is split into parts that are not clean
        assert any(b.touch and not b.clean for tr in tracks for b in tr.blobs)
    # some crossings hide one object wholly behind the other: a passage, joined by its motion
    assert any(hidden for *_, hidden in crossings)
    joined = [J.track(_draw(s, p))[1] for s, p, _, hidden in crossings if hidden]
    assert any(len(ps) for ps in joined)


def test_an_identity_swap_at_a_crossing_fails(crossings):
    for scene, pos, k, _ in crossings:
        a, b = (np.float32(world.COLORS[o.color].rgb) for o in scene.objects)
        rgb = np.stack([np.broadcast_to(a, (WINDOW, 3)), np.broadcast_to(b, (WINDOW, 3))]).copy()
        rgb[0, k:], rgb[1, k:] = b, a  # from the closest approach on, colours swapped
        v = J.judge_clip(_draw(scene, pos, rgb=rgb), scene)
        assert not _ok(v), world.caption(scene)


@pytest.mark.parametrize('which', [0, 1])  # the object drawn under, or over
def test_an_object_vanishing_at_a_crossing_fails(crossings, which):
    for scene, pos, k, _ in crossings:
        drawn = np.ones((2, WINDOW), bool)
        drawn[which, k:] = False
        v = J.judge_clip(_draw(scene, pos, drawn=drawn), scene)
        assert not _ok(v), (world.caption(scene), v.problems)


def test_tracks_are_removed_by_identity():
    """Joining a passage removes the other tracks that end on the joined blob (`tracks.remove`):
    tracks holding array-valued blobs must compare by identity, not field by field."""
    blob = lambda f, c: J.Blob(
        f, 'red', np.zeros(3), np.array([c, c], float), np.ones(2), 9.0, 0.8, True
    )
    a, b = J.Track([blob(0, 5.0)]), J.Track([blob(1, 6.0)])
    tracks = [a, b]
    tracks.remove(b)
    assert tracks == [a] and a != J.Track(list(a.blobs))
