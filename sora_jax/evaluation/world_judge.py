"""The world judge: tracks every object of a clip of the physics world (`sora_jax/data/world.py`)
from pixels and checks it against a prompt and against the world's laws.

  verdict = judge_clip(frames, world.prompt_objects(scene))   # or [{'shape', 'color', 'motion'}]
  verdict.all, verdict.binding, verdict.physics, verdict.permanence, verdict.stability
  verdict.objects[i].color_ok / .shape_ok / .motion_ok / .seen   # per prompt object
  verdict.problems                                               # why it failed, in words

`frames`: uint8 [T, H, W, 3]. The judge knows the world's vocabulary and laws (colours, the three
shapes, elastic walls, gravity along rows, a grey bar that hides objects, no object-object
collisions: two objects pass through each other, the later drawn over the other), never the
clip's truth:

1. Background: per-pixel temporal median over frames where the pixel is not object-like (chroma
   max - min channel > `OBJECT_CHROMA`, grown by 2 px); pixels that never are (an object at
   rest) are filled from their neighbours. The occluder is the static grey part of it
   (brightness > 100, chroma < 40).
2. Blobs: pixels farther than `SEG_THRESHOLD` from the background, connected components per
   frame; colour = the palette colour nearest the blob's core along its mixing line with the
   background; alpha (coverage) = projection on (colour - background). Area = sum(alpha); box
   size = sums of the row / column maxima of alpha; box centre from the same profiles.
   Two objects that overlap make one component: pixels within `PURE_TOL` of a palette colour
   (fully covered by one object) name the colours it shows (a colour that is the mixture of two
   others shown, e.g. orange between red and yellow, is their anti-aliased edge, not an
   object), and each colour with `SPLIT_MIN` px or more seeds a part of its own, every pixel
   going to the nearest seed; a blob showing two colours `touch`es another object. A blob is
   clean when it keeps 2 px away from the occluder and touches no other object (a partly
   hidden object's box is cut).
3. Shape from the fill of its box (area / box area, clean frames, median): a circle fills pi/4,
   a square 1, a triangle 1/2; thresholds halfway (`FILL_SQUARE`, `FILL_TRIANGLE`).
4. Tracking: frame-to-frame links to the prediction (last velocity, reflected at the walls) within
   3 px + half the speed (plus the object's size when a blob is not clean); a track merged with
   another object is predicted by its motion before the merge (fitted, run by the world's law),
   never by colour, so two crossing objects keep their tracks. A track that goes out of sight
   (behind the occluder, or wholly behind another object) is joined to the one that comes out
   within `MERGE_GATE` px of where its motion (fitted, reflected at the walls) says: a passage.
   Blobs merged with another object's are left out of the fit, and a passage out from behind
   another object is checked at its first blob not merged with the other's.
5. Motion and physics from the clean box centres, per axis: turning points (zigzag, 0.8 px) split
   the track into segments. Rows fit either straight segments or parabolas split at the floor
   only; parabolas with gravity > `GRAVITY_MIN` px/frame^2 that fit better mean falling. At rest:
   within `STILL_TOL` px; any turning point, or a diagonal run (the smaller displacement
   component >= `DIAGONAL` x the larger; moving objects move along an axis): bouncing; else
   moving, named by the dominant axis.
   Physics holds when every segment fits within `FIT_RMS` px, speeds agree within `SPEED_TOL`
   (relative) across every bounce and between the halves of a straight run, every bounce is at a
   wall (the segments' crossing within `WALL_TOL` px of it) with the normal velocity reversed,
   and the gravity of the parabolas agrees within `GRAVITY_TOL`.
6. Permanence: each passage comes out with the same colour and shape, within `PERMANENCE_TOL`
   px of the predicted position (at its first frame seen, rebuilt if cut by the bar; its first
   frame not merged with the other object); a track that goes out of sight and should have come
   out (predicted clear of the bar and of every other object 2 frames before the end) but does
   not fails. So an object that vanishes while crossing another, or two objects that swap
   colours as they cross, fail.
7. Stability: no track changes colour (2+ clean frames) or shape (over 25% of clean frames), none
   starts or ends in the open (clean: away from the bar and from other objects) inside the clip,
   no more tracks than prompt objects, and background flicker <= `FLICKER_MAX` (mean
   |frame[t+1] - frame[t]|, 0..255, over pixels background in both frames).

Windows of a long clip, with their drift against the first: `world_windows.judge_window`.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage

from sora_jax.data import world

SEG_THRESHOLD = 35.0  # |pixel - background| (RGB 0..255) of a foreground pixel
OBJECT_CHROMA = 60.0  # max - min channel above which a pixel may be an object
MIN_AREA = 4.0  # px of coverage; smaller blobs are noise
FILL_SQUARE = 0.89  # box fill above: square (1.0); circle pi/4 = 0.785
FILL_TRIANGLE = 0.64  # box fill below: triangle (0.5)
STILL_TOL = 1.0  # px: every clean centre within this of the median: at rest
TURN = 0.8  # px: a reversal larger than this is a turning point
FIT_RMS = 0.5  # px: residual of a segment's line / parabola fit
DIAGONAL = 0.3  # a straight run whose smaller component is this much of the larger: bouncing
SPEED_TOL = 0.2  # relative: speed kept across a bounce and along a run
WALL_TOL = 1.5  # px: a bounce's crossing point from the wall
GRAVITY_MIN = 0.06  # px/frame^2: less is no gravity
GRAVITY_TOL = 0.25  # relative: gravity agreement between arcs
MERGE_GATE = 6.0  # px: a track out of the occluder joins the one that went in
PERMANENCE_TOL = 3.0  # px: where a hidden object comes out vs its predicted position
PURE_TOL = 30.0  # |pixel - palette colour|: a pixel fully covered by an object of that colour
SPLIT_MIN = 4  # px of pure pixels of a second colour: a blob of two objects, split
FLICKER_MAX = 2.0  # mean |frame[t+1] - frame[t]| over background pixels

_NAMES = list(world.COLORS)
_TABLE = np.array([world.COLORS[n].rgb for n in _NAMES], np.float32)  # [K, 3]
_STRUCT = np.zeros((3, 3, 3), bool)
_STRUCT[1] = True  # connected within a frame, never across frames


class Blob(NamedTuple):
    frame: int
    color: str
    rgb: np.ndarray  # [3] median core colour
    center: np.ndarray  # [2] box centre (row, col)
    half: np.ndarray  # [2] box half size (row, col)
    area: float
    fill: float
    clean: bool  # away from the occluder and from any other object
    touch: bool = False  # part of two objects' merged blob (one may be drawn over the other)


@dataclasses.dataclass(eq=False)
class Track:
    """One object over the clip (clean box centres drive motion and physics). Tracks compare
    by identity: the judge grows and removes them in place, and their blobs hold arrays."""

    blobs: list[Blob]
    color: str = ''
    shape: str = ''
    motion: str = ''
    physics: bool = True
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def start(self) -> int:
        return self.blobs[0].frame

    @property
    def end(self) -> int:
        return self.blobs[-1].frame

    def clean(self) -> tuple[np.ndarray, np.ndarray]:
        """(frames [N], centres [N, 2]) of the clean blobs."""
        c = [b for b in self.blobs if b.clean]
        return np.array([b.frame for b in c], np.float64), np.array(
            [b.center for b in c], np.float64
        ).reshape(-1, 2)


@dataclasses.dataclass(frozen=True)
class ObjectVerdict:
    want: tuple[str, str, str]  # (shape, color, motion) of the prompt
    seen: tuple[str, str, str] | None  # of the track matched to it (None: none)
    color_ok: bool
    shape_ok: bool
    motion_ok: bool
    physics_ok: bool


@dataclasses.dataclass(frozen=True)
class ClipVerdict:
    objects: tuple[ObjectVerdict, ...]
    num_tracks: int
    binding: bool  # every attribute of every object right, on one object each, none extra
    physics: bool
    permanence: bool | None  # None: nothing went out of sight (behind the bar or an object)
    passages: int  # hidden passages seen (joined or failed)
    passages_failed: int  # of those, the ones that broke permanence
    stability: bool
    flicker: float
    problems: tuple[str, ...]

    @property
    def all(self) -> bool:
        return self.binding and self.physics and self.stability and self.permanence is not False


# ----------------------------------------------------------------------------- pixels
def check_frames(frames) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f'The judge takes one clip, uint8 [T, H, W, 3]; got {frames.dtype} {frames.shape}. '
            'Index a batch (video[0]) and convert to uint8.'
        )
    if frames.shape[0] < 5 or min(frames.shape[1:3]) < 16:
        raise ValueError(f'Clip {frames.shape[:3]} too small to judge; need T >= 5, H, W >= 16.')
    return frames.astype(np.float32)


def estimate_background(f: np.ndarray) -> np.ndarray:
    """float32 [H, W, 3] of a clip float [T, H, W, 3]: median of the non-object frames."""
    chroma = f.max(-1) - f.min(-1)
    obj = ndimage.binary_dilation(chroma > OBJECT_CHROMA, np.ones((1, 5, 5), bool))
    known = (~obj).any(0)
    bg = np.zeros(f.shape[1:], np.float32)
    if not known.any():
        return np.median(f, 0)
    vals = np.sort(np.where(obj[..., None], np.inf, f), axis=0)  # the kept ones first
    count = (~obj).sum(0)[..., None]  # [H, W, 1]
    lo = np.take_along_axis(vals, np.maximum(count - 1, 0)[None] // 2, 0)[0]
    hi = np.take_along_axis(vals, np.maximum(count, 1)[None] // 2, 0)[0]
    med = np.where(count % 2 == 1, lo, 0.5 * (lo + np.where(np.isinf(hi), lo, hi)))
    bg[known] = med[known]
    while not known.all():  # pixels always covered: fill from known neighbours
        num = ndimage.uniform_filter(bg * known[..., None], size=(3, 3, 1), mode='nearest')
        den = ndimage.uniform_filter(known.astype(np.float32), size=3, mode='nearest')
        new = (~known) & (den > 1e-6)
        bg[new] = num[new] / den[new][:, None]
        known = known | new
    return bg


def occluder_mask(bg: np.ndarray) -> np.ndarray:
    """bool [H, W]: the static grey bar in a background [H, W, 3]."""
    return (bg.max(-1) > 100) & (bg.max(-1) - bg.min(-1) < 40)


def _name(rgb: np.ndarray, bg: np.ndarray) -> str:
    d = rgb - bg
    v = _TABLE - bg  # [K, 3]
    a = np.clip((v @ d) / np.maximum((v * v).sum(-1), 1e-6), 0.3, 1.0)
    return _NAMES[int(np.argmin(np.linalg.norm(d[None] - a[:, None] * v, axis=-1)))]


def _mixes() -> dict[int, set[int]]:
    """Palette colour -> the pairs of other colours whose mixture passes within `PURE_TOL` of it
    (red and yellow anti-aliased into each other look orange): colour index k -> {i * K + j}."""
    k_ = len(_NAMES)
    a = np.linspace(0.0, 1.0, 101)[:, None, None]
    out: dict[int, set[int]] = {k: set() for k in range(k_)}
    for i, j in itertools.combinations(range(k_), 2):
        mix = a * _TABLE[i] + (1 - a) * _TABLE[j]  # [101, 1, 3]
        near = np.linalg.norm(mix - _TABLE[None], axis=-1).min(0)  # [K]
        for k in np.nonzero(near < PURE_TOL)[0]:
            if k not in (i, j):
                out[int(k)] |= {i * k_ + j, j * k_ + i}
    return out


_MIXES = _mixes()


def _parts(rgb: np.ndarray, comp: np.ndarray) -> tuple[list[tuple[np.ndarray, str | None]], bool]:
    """Splits a component bool [h, w] of a frame crop float [h, w, 3] by colour. Pure pixels
    are those within `PURE_TOL` of a palette colour (fully covered by an object of it); a colour
    that is the mixture of two others shown is their anti-aliased edge and is left out. Each
    colour with `SPLIT_MIN` px or more seeds a part, every pixel going to the nearest seed:
    two objects overlapping make one component, one drawn over the other. Returns ([(mask,
    colour name or None: name it from its core)], touch: a second colour shows, split or
    not)."""
    near = np.linalg.norm(rgb[..., None, :] - _TABLE, axis=-1)  # [h, w, K]
    which = np.where((near.min(-1) < PURE_TOL) & comp, np.argmin(near, -1), -1)
    counts = np.bincount(which[which >= 0], minlength=len(_NAMES))
    shown = set(np.nonzero(counts)[0].tolist())
    k_ = len(_NAMES)
    real = [k for k in shown if not any(i * k_ + j in _MIXES[k] for i in shown for j in shown)]
    seeds = sorted((k for k in real if counts[k] >= SPLIT_MIN), key=lambda k: -counts[k])
    touch = len(real) > 1
    if len(seeds) < 2:
        return [(comp, _NAMES[seeds[0]] if seeds and touch else None)], touch
    dist = np.stack([ndimage.distance_transform_edt(which != k) for k in seeds])  # [P, h, w]
    owner = np.argmin(dist, 0)
    return [(comp & (owner == p), _NAMES[k]) for p, k in enumerate(seeds)], True


def find_blobs(f: np.ndarray, bg: np.ndarray, occ: np.ndarray) -> list[list[Blob]]:
    """Per frame, the blobs of a clip float [T, H, W, 3] (see the module docstring, 2)."""
    t, h, w, _ = f.shape
    diff = f - bg[None]
    dist = np.linalg.norm(diff, axis=-1)  # [T, H, W]
    labels, n = ndimage.label(dist > SEG_THRESHOLD, structure=_STRUCT)
    near_occ = ndimage.binary_dilation(occ, iterations=2) if occ.any() else occ
    out: list[list[Blob]] = [[] for _ in range(t)]
    for j, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        i = sl[0].start
        r0, r1 = max(sl[1].start - 1, 0), min(sl[1].stop + 1, h)
        c0, c1 = max(sl[2].start - 1, 0), min(sl[2].stop + 1, w)
        lab = labels[i, r0:r1, c0:c1]
        parts, touch = _parts(f[i, r0:r1, c0:c1], lab == j)
        for comp, color in parts:
            d = dist[i, r0:r1, c0:c1]
            core = comp & (d >= 0.8 * d[comp].max())
            rgb = np.median(f[i, r0:r1, c0:c1][core], 0)
            local_bg = bg[r0:r1, c0:c1]
            color = color or _name(rgb, local_bg[core].mean(0))
            v = _TABLE[_NAMES.index(color)] - local_bg  # [h, w, 3]
            alpha = (diff[i, r0:r1, c0:c1] * v).sum(-1) / np.maximum((v * v).sum(-1), 1e-6)
            alpha = alpha / max(1.0, float(np.median(alpha[core])))
            win = ndimage.binary_dilation(comp) & ((lab == 0) | comp)
            alpha = np.where(win, np.clip(alpha, 0.0, 1.0), 0.0)
            area = float(alpha.sum())
            if area < MIN_AREA:
                continue
            rp, cp = alpha.max(1), alpha.max(0)
            size = np.array([rp.sum(), cp.sum()])
            center = np.array(
                [
                    r0 + ((np.arange(len(rp)) + 0.5) * rp).sum() / size[0],
                    c0 + ((np.arange(len(cp)) + 0.5) * cp).sum() / size[1],
                ]
            )
            clean = not touch and not near_occ[r0:r1, c0:c1][comp].any()
            fill = area / max(size[0] * size[1], 1e-6)
            out[i].append(Blob(i, color, rgb, center, size / 2, area, fill, clean, touch))
    return out


def temporal_flicker(f: np.ndarray, bg: np.ndarray) -> float:
    """Mean |frame[t+1] - frame[t]| over pixels background (1 px from any object) in both."""
    fg = np.linalg.norm(f - bg[None], axis=-1) > SEG_THRESHOLD
    fg = ndimage.binary_dilation(fg, np.ones((1, 3, 3), bool))
    both = ~fg[1:] & ~fg[:-1]
    d = np.abs(f[1:] - f[:-1]).mean(-1)
    return float(d[both].mean()) if both.any() else float(d.mean())


# ----------------------------------------------------------------------------- tracking
def _reflect(p: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    p = np.where(p < lo, 2 * lo - p, p)
    return np.where(p > hi, 2 * hi - p, p)


def _link(per_frame: list[list[Blob]], h: int, w: int, occ: np.ndarray) -> list[Track]:
    """Frame-to-frame links (module docstring, 4). A track merged with another object's blob
    is predicted by its own motion before the merge (`_predict`), not by its cut parts."""
    tracks: list[Track] = []
    size = np.array([h, w], np.float64)
    for f, blobs in enumerate(per_frame):
        active = [tr for tr in tracks if tr.end == f - 1]
        cands = []
        for k, tr in enumerate(active):
            last = tr.blobs[-1]
            prev = tr.blobs[-2] if len(tr.blobs) > 1 else None
            known = prev is not None and prev.frame == f - 2 and prev.clean and last.clean
            vel = last.center - prev.center if known else np.zeros(2)
            pred = _reflect(last.center + vel, last.half, size - last.half)
            if last.touch:
                free = [b.half for b in tr.blobs if b.clean]
                half = np.median(free, 0) if free else last.half
                pred = _predict(tr, f, half, occ, h, w)
                pred = last.center if pred is None else pred
            jolt = 0.0  # the last change of velocity (a bounce): so much less certain
            if known and len(tr.blobs) > 2 and tr.blobs[-3].frame == f - 3:
                jolt = float(np.linalg.norm(vel - (prev.center - tr.blobs[-3].center)))
            for j, b in enumerate(blobs):
                gate = 3.0 + 0.5 * np.linalg.norm(vel) + jolt
                if not (b.clean and last.clean):
                    gate += 2 * float(last.half.max())
                elif not known:
                    gate += 4.0
                d = float(np.linalg.norm(b.center - pred))
                if d < gate:
                    cands.append((d, k, j))
        used_t, used_b = set(), set()
        for d, k, j in sorted(cands):
            if k not in used_t and j not in used_b:
                active[k].blobs.append(blobs[j])
                used_t.add(k)
                used_b.add(j)
        tracks += [Track([b]) for j, b in enumerate(blobs) if j not in used_b]
    return tracks


def _fit(t: np.ndarray, x: np.ndarray, deg: int) -> tuple[np.ndarray, float]:
    """Polynomial fit (coefficients, highest first) and residual RMS."""
    c = np.polyfit(t, x, deg)
    return c, float(np.sqrt(np.mean((np.polyval(c, t) - x) ** 2)))


def _points(tr: Track, half: np.ndarray, occ: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(frames [N], box centres [N, 2]) of every blob not merged with another object's (its
    box is cut by the other object), those cut by the bar rebuilt."""
    blobs = [b for b in tr.blobs if not b.touch]
    t = np.array([b.frame for b in blobs], np.float64)
    return t, np.array([_completed(b, half, occ) for b in blobs]).reshape(-1, 2)


def _gravity(t: np.ndarray, y: np.ndarray) -> float:
    """Gravity of a row series when parabolas between floor bounces (5+ samples each) fit it
    better than straight runs between turning points; else 0."""
    arcs, lines = _arcs(t, y, np.inf, []), _lines(t, y, -np.inf, np.inf, [], 'rows')
    return arcs[0] if arcs[0] > GRAVITY_MIN and arcs[1] < lines else 0.0


def _predict(tr: Track, frame: int, half, occ, h: int, w: int) -> np.ndarray | None:
    """Where the track's own motion puts it at `frame` (after its end or before its start): its
    run nearest that frame (no turning point inside; cut blobs rebuilt), fitted under the track's
    gravity, run by the world's law (walls; backwards in time for a frame before the start).
    None: under 2 samples in that run."""
    t, x = _points(tr, half, occ)
    if len(t) < 2:
        return None
    g = _gravity(t, x[:, 0]) if len(t) >= 5 else 0.0
    if frame < t[0]:
        t, x = -t[::-1], x[::-1]
        frame = -frame
    cut = max([0] + [i + 1 for ax in (0, 1) for i in _turns(x[:, ax])])
    t, x = t[cut:][-10:], x[cut:][-10:]
    if len(t) < 2:
        return None
    y = x - np.array([0.5 * g, 0.0]) * (t - t[-1])[:, None] ** 2  # gravity taken out
    vel = np.array([_fit(t, y[:, ax], 1)[0][0] for ax in (0, 1)])
    start = np.array([np.polyval(_fit(t, y[:, ax], 1)[0], t[-1]) for ax in (0, 1)])
    lo, hi = half, np.array([h, w]) - half
    n = max(int(round(frame - t[-1])), 0) + 1
    return world.simulate(np.clip(start, lo, hi), vel, g, lo, hi, n).position[-1]


def _completed(blob: Blob, half: np.ndarray, occ: np.ndarray) -> np.ndarray:
    """Box centre of a blob cut by the occluder, rebuilt from its far edge and the object's
    half size `half` [2] (the bar cuts along one axis: the one it spans less of)."""
    if blob.clean or not occ.any():
        return blob.center
    ax = 1 if occ.all(0).any() else 0  # a vertical bar spans every row: it cuts columns
    idx = np.nonzero(occ.any(1 - ax))[0]
    mid = (idx[0] + idx[-1] + 1) / 2
    c = blob.center.copy()
    if c[ax] > mid:  # beyond the bar: the far edge is the larger one
        c[ax] = blob.center[ax] + blob.half[ax] - half[ax]
    else:
        c[ax] = blob.center[ax] - blob.half[ax] + half[ax]
    return c


def _merge_passages(tracks: list[Track], t: int, h: int, w: int, occ) -> tuple[list, list]:
    """Joins tracks across the occluder or another object that hid them; returns (tracks,
    passages [(error px, track, k)]): k is where the joined part starts in track.blobs, None for
    a track that never came out."""
    passages, done = [], set()
    while True:  # the earliest unjoined end first; a joined track may go behind again
        ends = [
            tr
            for tr in tracks
            if tr.end < t - 1 and not tr.blobs[-1].clean and (id(tr), tr.end) not in done
        ]
        if not ends:
            break
        a = min(ends, key=lambda tr: tr.end)
        done.add((id(a), a.end))
        best, err = None, MERGE_GATE
        for b in tracks:
            if b is a or b.start <= a.start or b.end <= a.end or b.blobs[0].clean:
                continue
            clean = [x.half for x in a.blobs + b.blobs if x.clean]
            half = (
                np.median(clean, 0) if clean else max(a.blobs + b.blobs, key=lambda x: x.area).half
            )
            if b.start <= a.end:  # cut in two by the bar: both parts seen at once
                b = Track([x for x in b.blobs if x.frame > a.end])
                if not b.blobs or b.blobs[0].clean:
                    continue
            e = np.inf
            for src, blob, slack in (_anchor(a, b, 0), _anchor(b, a, -1)):
                pred = _predict(src, blob.frame, half, occ, h, w)
                if pred is not None:
                    d = float(np.linalg.norm(pred - _completed(blob, half, occ)))
                    e = min(e, max(d - slack, 0.0))
            if e < MERGE_GATE and (best is None or (b.start, e) < (best.start, err)):
                best, err = b, e  # the first to come out where the motion says
        if best is not None:
            k = len(a.blobs)
            a.blobs += best.blobs
            for other in [x for x in tracks if x is not a and x.blobs[-1] is best.blobs[-1]]:
                tracks.remove(other)
            passages.append((err, a, k))
        else:
            clean = [x.half for x in a.blobs if x.clean]
            half = np.median(clean, 0) if clean else a.blobs[0].half
            pred = _predict(a, t - 3, half, occ, h, w)
            if pred is not None and _clear_of(pred, a, occ) and not _under(pred, a, tracks, t - 3):
                passages.append((np.inf, a, None))
    return tracks, passages


def _anchor(src: Track, dst: Track, end: int) -> tuple[Track, Blob, float]:
    """(src, the blob of dst nearest src's side that is not merged with another object's, 0),
    or (src, dst's blob at that end, its half size) when every blob of dst is merged: its box
    is cut by the other object, so its centre may be off by that much. `end`: 0 (dst comes
    after src) or -1 (before)."""
    blobs = dst.blobs if end == 0 else dst.blobs[::-1]
    free = next((x for x in blobs if not x.touch), None)
    return (src, free, 0.0) if free is not None else (src, blobs[0], float(blobs[0].half.max()))


def _under(center: np.ndarray, tr: Track, tracks: list[Track], frame: int) -> bool:
    """Whether track `tr`'s box at `center` overlaps another track's blob at `frame`: it may
    still be hidden behind (drawn under) that object."""
    half = np.median([b.half for b in tr.blobs], 0)
    for other in tracks:
        if other is tr:
            continue
        for b in other.blobs:
            if b.frame == frame and np.all(np.abs(b.center - center) < b.half + half + 1.0):
                return True
    return False


def _clear_of(center: np.ndarray, tr: Track, occ: np.ndarray) -> bool:
    half = np.median([b.half for b in tr.blobs], 0) + 2
    r0, c0 = np.floor(center - half).astype(int)
    r1, c1 = np.ceil(center + half).astype(int)
    win = occ[max(r0, 0) : max(r1, 0), max(c0, 0) : max(c1, 0)]
    return not win.any()


# ----------------------------------------------------------------------------- motion, physics
def _turns(x: np.ndarray) -> list[int]:
    """Indices of turning points: extremes followed by a reversal larger than TURN px."""
    out, direction, lo, hi, ext = [], 0, 0, 0, 0
    for i in range(1, len(x)):
        if direction == 0:  # not yet moving by more than TURN
            lo, hi = (i if x[i] < x[lo] else lo), (i if x[i] > x[hi] else hi)
            if x[hi] - x[lo] > TURN:
                direction, ext = (1, hi) if hi > lo else (-1, lo)
        elif direction * (x[i] - x[ext]) >= 0:
            ext = i
        elif abs(x[i] - x[ext]) > TURN:
            out.append(ext)
            direction, ext = -direction, i
    return out


def _segments(n: int, cuts: list[int]) -> list[np.ndarray]:
    """Sample indices between cuts (the cut samples themselves left out)."""
    bounds = [-1] + cuts + [n]
    return [np.arange(a + 1, b) for a, b in zip(bounds[:-1], bounds[1:])]


def _lines(t, x, lo, hi, problems, name) -> float:
    """Straight segments between turning points; checks; returns the worst RMS."""
    turns = _turns(x)
    segs = _segments(len(x), turns)
    fits = [_fit(t[s], x[s], 1) if len(s) >= 3 else None for s in segs]
    worst = max([r for _, r in filter(None, fits)], default=0.0)
    speeds = [abs(c[0]) for c, _ in filter(None, fits)]
    if speeds and max(speeds) > 0.3 and min(speeds) < (1 - SPEED_TOL) * max(speeds):
        problems.append(f'{name}: speed {min(speeds):.2f} vs {max(speeds):.2f} px/frame')
    for k, i in enumerate(turns):
        a, b = fits[k], fits[k + 1]
        if a is None or b is None:
            unseen = t[min(i + 1, len(t) - 1)] - t[max(i - 1, 0)] > 2  # it may have hit unseen
            if not unseen and min(abs(x[i] - lo), abs(x[i] - hi)) > WALL_TOL + 3.0:
                problems.append(f'{name}: turned at {x[i]:.1f}, away from the walls')
            continue
        (s1, c1), (s2, c2) = a[0], b[0]
        if s1 * s2 >= 0:
            problems.append(f'{name}: not reflected at frame {t[i]:.0f}')
            continue
        tc = (c2 - c1) / (s1 - s2)
        xc = s1 * tc + c1
        if min(abs(xc - lo), abs(xc - hi)) > WALL_TOL:
            problems.append(f'{name}: bounced at {xc:.1f}, walls at {lo:.1f} / {hi:.1f}')
    if not turns and len(t) >= 8:  # a straight run: the same speed in both halves
        m = len(t) // 2
        v1, v2 = _fit(t[:m], x[:m], 1)[0][0], _fit(t[m:], x[m:], 1)[0][0]
        if max(abs(v1), abs(v2)) > 0.3 and abs(v1 - v2) > SPEED_TOL * max(abs(v1), abs(v2)):
            problems.append(f'{name}: speed {v1:.2f} then {v2:.2f} px/frame')
    return worst


def _arcs(t, y, hi, problems) -> tuple[float, float]:
    """Parabolas between floor bounces (row maxima); returns (gravity, worst RMS)."""
    n = len(y)
    floors = [i for i in _turns(y) if y[i] >= max(y[max(i - 1, 0)], y[min(i + 1, n - 1)])]
    segs = _segments(len(y), floors)
    fits = [_fit(t[s], y[s], 2) if len(s) >= 5 else None for s in segs]
    ok = [f for f in fits if f is not None]
    if not ok:
        return 0.0, np.inf
    g = np.array([2 * c[0] for c, _ in ok])
    worst = max(r for _, r in ok)
    gm = float(np.median(g))
    if gm > GRAVITY_MIN and np.any(np.abs(g - gm) > GRAVITY_TOL * gm):
        problems.append(f'rows: gravity {np.round(g, 3).tolist()} px/frame^2')
    for k, i in enumerate(floors):
        a, b = fits[k], fits[k + 1]
        if a is None or b is None:
            if abs(y[i] - hi) > WALL_TOL + 4.0:
                problems.append(f'rows: bounced at {y[i]:.1f}, floor at {hi:.1f}')
            continue
        roots = np.roots(a[0] - b[0])
        roots = roots[np.isreal(roots)].real if len(roots) else np.array([t[i]])
        if not len(roots):
            problems.append(f'rows: no bounce near frame {t[i]:.0f}')
            continue
        tc = roots[np.argmin(np.abs(roots - t[i]))]
        yc = np.polyval(a[0], tc)
        v1, v2 = np.polyval(np.polyder(a[0]), tc), np.polyval(np.polyder(b[0]), tc)
        if abs(yc - hi) > WALL_TOL:
            problems.append(f'rows: bounced at {yc:.1f}, floor at {hi:.1f}')
        if v1 <= 0 or v2 >= 0 or abs(abs(v2) - v1) > SPEED_TOL * v1:
            problems.append(f'rows: speed {v1:.2f} in, {-v2:.2f} out of the floor bounce')
    return gm, worst


def _motion_and_physics(tr: Track, h: int, w: int) -> None:
    t, x = tr.clean()
    if len(t) < 5:
        tr.motion, tr.physics = 'unknown', False
        tr.problems.append(f'{tr.color} {tr.shape}: seen clean in {len(t)} frames')
        return
    half = np.median([b.half for b in tr.blobs if b.clean], 0)
    lo, hi = half, np.array([h, w]) - half
    if np.abs(x - np.median(x, 0)).max() <= STILL_TOL:
        tr.motion = 'still'
        return
    line_p: list[str] = []
    rms_r = _lines(t, x[:, 0], lo[0], hi[0], line_p, 'rows')
    arc_p: list[str] = []
    g, rms_a = _arcs(t, x[:, 0], hi[0], arc_p)
    cols_p: list[str] = []
    rms_c = _lines(t, x[:, 1], lo[1], hi[1], cols_p, 'columns')
    falling = g > GRAVITY_MIN and rms_a < rms_r
    rows_p, rms = (arc_p, rms_a) if falling else (line_p, rms_r)
    problems = rows_p + cols_p
    if max(rms, rms_c) > FIT_RMS:
        problems.append(f'off the law by {max(rms, rms_c):.2f} px RMS')
    if falling:
        tr.motion = 'falling'
    elif _turns(x[:, 0]) or _turns(x[:, 1]):
        tr.motion = 'bouncing'
    elif (lambda d: np.abs(d).min() >= DIAGONAL * np.abs(d).max())(x[-1] - x[0]):
        tr.motion = 'bouncing'  # a diagonal run: this world's bouncing between two bounces
    else:
        d = x[-1] - x[0]
        ax = int(np.argmax(np.abs(d)))
        tr.motion = {
            (0, True): 'moving_down',
            (0, False): 'moving_up',
            (1, True): 'moving_right',
            (1, False): 'moving_left',
        }[(ax, bool(d[ax] > 0))]
    tr.physics = not problems
    tr.problems += [f'{tr.color} {tr.shape} {tr.motion}: {p}' for p in problems]


def _shape(fill: float) -> str:
    return 'square' if fill > FILL_SQUARE else 'triangle' if fill < FILL_TRIANGLE else 'circle'


def _describe(tr: Track) -> list[str]:
    """Colour and shape of a track (majorities); returns its stability problems."""
    clean = [b for b in tr.blobs if b.clean] or tr.blobs
    colors = [b.color for b in clean]
    tr.color = max(set(colors), key=colors.count)
    shapes_ = [_shape(b.fill) for b in clean]
    tr.shape = _shape(float(np.median([b.fill for b in clean])))
    out = []
    if sum(c != tr.color for c in colors) >= 2:
        out.append(f'{tr.color} {tr.shape} changes colour ({sorted(set(colors))})')
    if sum(s != tr.shape for s in shapes_) > 0.25 * len(shapes_):
        out.append(f'{tr.color} {tr.shape} changes shape ({sorted(set(shapes_))})')
    return out


# ----------------------------------------------------------------------------- verdicts
def prompt_objects(objects: Any) -> list[tuple[str, str, str]]:
    """(shape, color, motion) per object of a Scene, ObjectTruths, dicts or tuples."""
    if isinstance(objects, world.Scene):
        objects = objects.objects
    return [world._attrs(o) for o in objects]


def track(frames) -> tuple[list[Track], list, float, np.ndarray]:
    """(tracks, passages, flicker, occluder mask) of a clip uint8 [T, H, W, 3]."""
    f = check_frames(frames)
    t, h, w, _ = f.shape
    bg = estimate_background(f)
    occ = occluder_mask(bg)
    tracks = _link(find_blobs(f, bg, occ), h, w, occ)
    tracks, passages = _merge_passages(tracks, t, h, w, occ)
    return tracks, passages, temporal_flicker(f, bg), occ


def judge_clip(frames, prompt: Any) -> ClipVerdict:
    """Judges a clip uint8 [T, H, W, 3] against prompt objects (see `prompt_objects`)."""
    want = prompt_objects(prompt)
    f = np.asarray(frames)
    t, h, w = f.shape[:3]
    tracks, passages, flicker, occ = track(f)
    problems: list[str] = []
    for tr in tracks:
        problems += _describe(tr)
        if tr.start > 0 and tr.blobs[0].clean:
            problems.append(f'{tr.color} {tr.shape} appears in the open at frame {tr.start}')
        if tr.end < t - 1 and tr.blobs[-1].clean:
            problems.append(f'{tr.color} {tr.shape} vanishes in the open at frame {tr.end + 1}')
        _motion_and_physics(tr, h, w)
    if len(tracks) > len(want):
        problems.append(f'{len(tracks)} objects for {len(want)} in the prompt')
    if flicker > FLICKER_MAX:
        problems.append(f'background flicker {flicker:.2f}')
    stability = not problems
    perm = []
    for err, tr, k in passages:
        if k is None:
            where = 'another object' if tr.blobs[-1].touch else 'the bar'
            perm.append(f'{tr.color} {tr.shape} went behind {where} and never came out')
            continue
        before, after = Track(tr.blobs[:k]), Track(tr.blobs[k:])
        _describe(before)
        _describe(after)
        if not all(any(b.clean for b in x.blobs) for x in (before, after)):
            after.shape = before.shape  # one side only seen cut by the bar: no shape to compare
        if err > PERMANENCE_TOL or (before.color, before.shape) != (after.color, after.shape):
            perm.append(
                f'{before.color} {before.shape} came out as {after.color} {after.shape}, '
                f'{err:.1f} px from where it should'
            )
    # the assignment of tracks to prompt objects: colour first, then shape and motion
    best, best_score = (), -1
    for perm_idx in itertools.permutations(range(len(tracks)), min(len(tracks), len(want))):
        score = sum(
            4 * (tracks[j].color == c) + (tracks[j].shape == s) + (tracks[j].motion == m)
            for (s, c, m), j in zip(want, perm_idx)
        )
        if score > best_score:
            best, best_score = perm_idx, score
    objs = []
    for i, (s, c, m) in enumerate(want):
        tr = tracks[best[i]] if i < len(best) else None
        seen = (tr.shape, tr.color, tr.motion) if tr else None
        objs.append(
            ObjectVerdict(
                (s, c, m), seen, bool(tr and tr.color == c), bool(tr and tr.shape == s),
                bool(tr and tr.motion == m), bool(tr and tr.physics),
            )
        )  # fmt: skip
    binding = len(tracks) == len(want) and all(
        o.color_ok and o.shape_ok and o.motion_ok for o in objs
    )
    physics = all(tr.physics for tr in tracks) and bool(tracks)
    for tr in tracks:
        problems += tr.problems
    problems += perm
    for o in objs:
        if not (o.color_ok and o.shape_ok and o.motion_ok):
            problems.append(f'wanted {" ".join(o.want[1::-1])} {o.want[2]}, saw {o.seen}')
    return ClipVerdict(
        objects=tuple(objs),
        num_tracks=len(tracks),
        binding=binding,
        physics=physics,
        permanence=(not perm) if passages else None,
        passages=len(passages),
        passages_failed=len(perm),
        stability=stability,
        flicker=flicker,
        problems=tuple(problems),
    )
