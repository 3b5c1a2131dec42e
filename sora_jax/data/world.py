"""A synthetic world with physics: one or two objects that move, bounce, fall or rest, an
optional occluder they pass behind, and the exact ground truth of every frame.

  scene = sample_scene(seed=0, index=7)          # 33 frames of 64x64 by default
  video = render(scene)                           # uint8 [T, H, W, 3]
  caption(scene, 'es')   # 'un círculo rojo rebotando y un cuadrado azul cayendo, detrás de ...'
  scene.objects[0].position, .velocity, .visibility    # float32 [T, 2], [T, 2], [T]

Objects: circle, square or triangle (apex up) of half-size `size` (circle radius; square half
side 0.9 x size; triangle height and base 2 x size), in one of `COLORS`; two objects of a clip
have different colours and never touch (a scene whose objects would is redrawn: the world has
no object-object collisions). `position` is the centre of the object's bounding box (row, col;
pixel i covers [i, i + 1)); velocity in px/frame at the frame; visibility the fraction of the
object's area not behind the occluder (objects never leave the frame). Motions:

  moving_left/right/up/down   constant velocity along the axis, 0.8-1.4 px/frame, no wall hit
  bouncing                    constant speed 1.6-2.6 px/frame on a diagonal (each component
                              >= 0.6), elastic reflection off the four walls, >= 1 bounce
  falling                     dropped from rest under gravity 0.15-0.25 px/frame^2 (rows grow
                              downwards), elastic bounce on the floor within frames 6..T-7,
                              horizontal drift 0 or 0.3-0.8 px/frame (reflected at the walls)
  still                       at rest

The occluder (`Occluder`) is a grey bar (vertical or horizontal, 8-12 px wide, 16 px or more
from the walls) drawn over the objects, placed across a moving object's path; every object is in
the open (3 px or more clear of the bar) in at least 40% of the frames. Backgrounds are dim (channels <= 70, chroma <= 40):
plain, a linear gradient, or a smooth texture (three random gratings), so every object colour
stands out from them and from the grey occluder.

Held-out split (`holdout_split(seed)`, `HOLDOUT = holdout_split(0)`): attribute pairs (colour +
shape, colour + motion, shape + motion) that no training object has, and two-object combinations
of (colour, shape) identities that no training clip holds together; `subset='held_out'` draws
only scenes holding one of them (evaluation), `subset='train'` none. Everything is a pure
function of (seed, index). `simulate` is the world's law (event-driven, exact between frames);
`corrupt` makes the broken clips the judge must catch.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from sora_jax.data import shapes as _shapes

SHAPES = {'circle': 'círculo', 'square': 'cuadrado', 'triangle': 'triángulo'}  # all masculine
COLORS = {k: _shapes.COLORS[k] for k in ('red', 'green', 'blue', 'yellow', 'purple', 'orange')}
MOTIONS = {  # name -> (English, Spanish)
    'moving_left': ('moving to the left', 'moviéndose hacia la izquierda'),
    'moving_right': ('moving to the right', 'moviéndose hacia la derecha'),
    'moving_up': ('moving up', 'moviéndose hacia arriba'),
    'moving_down': ('moving down', 'moviéndose hacia abajo'),
    'bouncing': ('bouncing', 'rebotando'),
    'falling': ('falling', 'cayendo'),
    'still': ('standing still', 'quieto'),
}
DIRECTIONS = {'moving_left': (0, -1), 'moving_right': (0, 1), 'moving_up': (-1, 0)}
DIRECTIONS['moving_down'] = (1, 0)
EXTENT = {'circle': 1.0, 'square': 0.9, 'triangle': 1.0}  # bounding-box half side / size
BACKGROUNDS = ('plain', 'gradient', 'textured')
OCCLUDER_RGB = (150, 150, 150)
OCCLUDER_WORDS = {  # orientation -> (English, Spanish)
    'vertical': ('behind a grey vertical bar', 'detrás de una barra gris vertical'),
    'horizontal': ('behind a grey horizontal bar', 'detrás de una barra gris horizontal'),
}
LANGS = ('en', 'es')
SIZE_RANGE = (4.5, 6.5)  # object half-size, px (64x64 frames)


# ----------------------------------------------------------------------------- the truth
@dataclasses.dataclass(frozen=True, eq=False)
class ObjectTruth:
    """One object: its attributes and its state at every frame."""

    shape: str
    color: str
    motion: str
    size: float  # half-size (px)
    gravity: float  # px/frame^2 along rows (falling), 0 otherwise
    position: np.ndarray  # float32 [T, 2] bounding-box centre (row, col)
    velocity: np.ndarray  # float32 [T, 2] px/frame
    visibility: np.ndarray  # float32 [T] in [0, 1]: the part not behind the occluder
    bounce_times: tuple[float, ...] = ()  # when it hit a wall (frames, fractional)
    bounce_axes: tuple[int, ...] = ()  # 0: floor / ceiling, 1: a side wall

    @property
    def extent(self) -> float:
        return self.size * EXTENT[self.shape]


@dataclasses.dataclass(frozen=True)
class Occluder:
    orientation: str  # 'vertical' (columns start..stop) or 'horizontal' (rows start..stop)
    start: int
    stop: int

    def mask(self, height: int, width: int) -> np.ndarray:
        """bool [H, W]: where the bar is."""
        m = np.zeros((height, width), bool)
        if self.orientation == 'vertical':
            m[:, self.start : self.stop] = True
        else:
            m[self.start : self.stop] = True
        return m


@dataclasses.dataclass(frozen=True)
class Scene:
    num_frames: int
    height: int
    width: int
    background: str  # one of BACKGROUNDS
    background_rgb: np.ndarray  # float32 [H, W, 3]
    objects: tuple[ObjectTruth, ...]
    occluder: Occluder | None


class Trajectory(NamedTuple):
    position: np.ndarray  # float64 [T, 2]
    velocity: np.ndarray  # float64 [T, 2]
    bounce_times: tuple[float, ...]
    bounce_axes: tuple[int, ...]


# ----------------------------------------------------------------------------- captions
def _attrs(obj: Any) -> tuple[str, str, str]:
    if isinstance(obj, ObjectTruth):
        a = (obj.shape, obj.color, obj.motion)
    elif isinstance(obj, Mapping):
        a = (obj['shape'], obj['color'], obj['motion'])
    else:
        a = tuple(obj)
    for v, vocab, name in zip(a, (SHAPES, COLORS, MOTIONS), ('shape', 'color', 'motion')):
        if v not in vocab:
            raise ValueError(f'Unknown {name} {v!r}; choose from {sorted(vocab)}.')
    return a


def caption(objects: Any, lang: str = 'en', occluder: str | None = None) -> str:
    """Caption naming every object's colour, shape and motion (and the occluder, if any).

    `objects`: a Scene (its occluder is used), or a list of ObjectTruth / {shape, color, motion}
    dicts / (shape, color, motion) tuples; `occluder`: None, 'vertical' or 'horizontal'."""
    if lang not in LANGS:
        raise ValueError(f'Unknown caption language {lang!r}; use one of {LANGS}.')
    if isinstance(objects, Scene):
        occluder = objects.occluder.orientation if objects.occluder else None
        objects = objects.objects
    phrases = []
    for shape, color, motion in (_attrs(o) for o in objects):
        if lang == 'en':
            article = 'an' if color[0] in 'aeiou' else 'a'
            phrases.append(f'{article} {color} {shape} {MOTIONS[motion][0]}')
        else:
            phrases.append(f'un {SHAPES[shape]} {COLORS[color].es_m} {MOTIONS[motion][1]}')
    if not phrases:
        raise ValueError('caption() needs at least one object.')
    text = (' and ' if lang == 'en' else ' y ').join(phrases)
    if occluder is not None:
        if occluder not in OCCLUDER_WORDS:
            raise ValueError(f'Unknown occluder {occluder!r}; use one of {list(OCCLUDER_WORDS)}.')
        text += ', ' + OCCLUDER_WORDS[occluder][LANGS.index(lang)]
    return text


# ----------------------------------------------------------------------------- held-out split
@dataclasses.dataclass(frozen=True)
class Split:
    """What training never shows. `pairs`: attribute values never on one training object;
    `combos`: two (colour, shape) identities never together in a training clip."""

    seed: int
    pairs: tuple[tuple[str, str], ...]
    combos: tuple[tuple[tuple[str, str], tuple[str, str]], ...]

    def object_held_out(self, obj: Any) -> bool:
        values = set(_attrs(obj))
        return any(set(p) <= values for p in self.pairs)

    def combo_held_out(self, a: Any, b: Any) -> bool:
        ia, ib = _attrs(a)[1::-1], _attrs(b)[1::-1]  # (color, shape)
        return any({ia, ib} == set(c) for c in self.combos)

    def held_out(self, objects: Sequence[Any]) -> bool:
        """True when the clip holds a held-out pair or combination."""
        objs = list(objects)
        if any(self.object_held_out(o) for o in objs):
            return True
        return any(self.combo_held_out(a, b) for a, b in itertools.combinations(objs, 2))


def holdout_split(seed: int = 0, num_pairs: int = 2, num_combos: int = 12) -> Split:
    """The seeded split: `num_pairs` each of (colour, shape), (colour, motion), (shape, motion)
    pairs, and `num_combos` two-object (colour, shape) combinations of distinct colours built
    from identities that are not themselves held out."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 31])
    pairs = []
    for va, vb in ((COLORS, SHAPES), (COLORS, MOTIONS), (SHAPES, MOTIONS)):
        # no value twice within a kind of pair: every value keeps most of its partners
        a = rng.choice(list(va), num_pairs, replace=False)
        b = rng.choice(list(vb), num_pairs, replace=False)
        pairs += [(str(x), str(y)) for x, y in zip(a, b)]
    held = {p for p in pairs if p[0] in COLORS and p[1] in SHAPES}
    idents = [(c, s) for c, s in itertools.product(COLORS, SHAPES) if (c, s) not in held]
    cands = [(a, b) for a, b in itertools.combinations(idents, 2) if a[0] != b[0]]
    combos = [cands[int(i)] for i in sorted(rng.choice(len(cands), num_combos, replace=False))]
    return Split(int(seed), tuple(pairs), tuple(combos))


HOLDOUT = holdout_split(0)


# ----------------------------------------------------------------------------- the law
def _hit_time(p: float, v: float, a: float, wall: float, rem: float) -> float:
    """Smallest s in (0, rem] with p + v s + a s^2 / 2 = wall, else inf."""
    c = p - wall
    if a == 0.0:
        if v == 0.0:
            return np.inf
        s = -c / v
        return s if 1e-9 < s <= rem else np.inf
    disc = v * v - 2.0 * a * c
    if disc < 0:
        return np.inf
    r = np.sqrt(disc)
    roots = sorted(((-v - r) / a, (-v + r) / a))
    for s in roots:
        if 1e-9 < s <= rem:
            return s
    return np.inf


def simulate(
    position: Sequence[float],
    velocity: Sequence[float],
    gravity: float,
    lo: Sequence[float],
    hi: Sequence[float],
    num_frames: int,
    restitution: Sequence[float] = (),
) -> Trajectory:
    """The world's law: free flight under `gravity` (rows) between walls, elastic reflection of
    the normal velocity at `lo` / `hi` (the centre's range per axis). `restitution[k]` scales the
    whole velocity at the k-th bounce (default 1: elastic; 0.5 makes a corrupted bounce). Exact
    at every frame (events are solved, not stepped)."""
    if num_frames < 1:
        raise ValueError(f'simulate needs num_frames >= 1, got {num_frames}.')
    p = np.array(position, np.float64)
    v = np.array(velocity, np.float64)
    acc = np.array([gravity, 0.0])
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    pos, vel = np.zeros((num_frames, 2)), np.zeros((num_frames, 2))
    pos[0], vel[0] = p, v
    times, axes = [], []
    for f in range(1, num_frames):
        rem = 1.0
        while rem > 1e-12:
            best, hit = np.inf, None
            for ax in (0, 1):
                for wall in (lo[ax], hi[ax]):
                    s = _hit_time(p[ax], v[ax], acc[ax], wall, rem)
                    if s < best:
                        best, hit = s, (ax, wall)
            best = min(best, rem)
            p = p + v * best + 0.5 * acc * best * best
            v = v + acc * best
            rem -= best
            if hit is not None:
                ax, wall = hit
                p[ax] = wall
                v[ax] = -v[ax]
                k = len(times)
                v = v * (restitution[k] if k < len(restitution) else 1.0)
                times.append(f - rem)
                axes.append(ax)
        pos[f], vel[f] = p, v
    return Trajectory(pos, vel, tuple(times), tuple(axes))


def walls(shape: str, size: float, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) [2] (row, col): the range of the centre of an object that stays inside."""
    e = size * EXTENT[shape]
    return np.array([e, e]), np.array([height - e, width - e])


# ----------------------------------------------------------------------------- sampling
def _draw_attrs(rng, split: Split, subset: str, n: int, motions: Sequence[str]) -> list[tuple]:
    colors, shapes_ = list(COLORS), list(SHAPES)
    for _ in range(10000):
        if subset == 'held_out' and rng.random() < (0.5 if n == 2 else 1.0):
            pair = split.pairs[int(rng.integers(len(split.pairs)))]
            a = {'color': rng.choice(colors), 'shape': rng.choice(shapes_)}
            a['motion'] = rng.choice(list(motions))
            for v in pair:
                a['color' if v in COLORS else 'shape' if v in SHAPES else 'motion'] = v
            objs = [(a['shape'], a['color'], a['motion'])]
            while len(objs) < n:
                objs.append((rng.choice(shapes_), rng.choice(colors), rng.choice(list(motions))))
            objs = [tuple(str(x) for x in o) for o in objs]
            rng.shuffle(objs)
        elif subset == 'held_out':
            (c0, s0), (c1, s1) = split.combos[int(rng.integers(len(split.combos)))]
            ms = rng.choice(list(motions), 2)
            objs = [(s0, c0, str(ms[0])), (s1, c1, str(ms[1]))]
            rng.shuffle(objs)
        else:
            objs = [
                (str(rng.choice(shapes_)), str(rng.choice(colors)), str(rng.choice(list(motions))))
                for _ in range(n)
            ]
        if any(m not in motions for _, _, m in objs):
            continue
        if len({c for _, c, _ in objs}) < len(objs):
            continue
        if split.held_out(objs) == (subset == 'held_out'):
            return objs
    raise ValueError(f'No {subset} scene with motions {motions} under {split}; widen the draw.')


def _initial_state(rng, motion: str, shape: str, size: float, t: int, h: int, w: int):
    """(position, velocity, gravity) of a fresh object, or None when its motion cannot fit."""
    lo, hi = walls(shape, size, h, w)
    p = lo + rng.uniform(0, 1, 2) * (hi - lo)
    if motion == 'still':
        return p, np.zeros(2), 0.0
    if motion in DIRECTIONS:
        d = np.array(DIRECTIONS[motion], np.float64)
        ax = 0 if d[0] else 1
        speed = min(rng.uniform(0.8, 1.4), (hi[ax] - lo[ax] - 1.0) / (t - 1))
        travel = speed * (t - 1)
        start = lo[ax] + rng.uniform(0, 1) * (hi[ax] - lo[ax] - travel)
        p[ax] = start if d[ax] > 0 else start + travel
        return p, d * speed, 0.0
    if motion == 'bouncing':
        speed, ang = rng.uniform(1.6, 2.6), np.deg2rad(rng.uniform(25.0, 65.0))
        sign = rng.choice([-1.0, 1.0], 2)
        return p, sign * speed * np.array([np.sin(ang), np.cos(ang)]), 0.0
    g = rng.uniform(0.15, 0.25)  # falling
    p[0] = lo[0] + rng.uniform(0.0, 0.4) * (hi[0] - lo[0])
    vx = 0.0 if rng.random() < 0.5 else rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.8)
    return p, np.array([0.0, vx]), g


def _motion_ok(motion: str, traj: Trajectory, t: int) -> bool:
    if motion == 'bouncing':
        return any(4 <= b <= t - 5 for b in traj.bounce_times)
    if motion == 'falling':
        floor = [b for b, a in zip(traj.bounce_times, traj.bounce_axes) if a == 0]
        return bool(floor) and 6 <= floor[0] <= t - 7
    return not traj.bounce_times


def _apart(a: ObjectTruth, b: ObjectTruth, gap: float = 2.0) -> bool:
    d = np.abs(a.position - b.position)  # [T, 2]
    need = a.extent + b.extent + gap
    return bool(np.all((d[:, 0] >= need) | (d[:, 1] >= need)))


def _background(rng, kind: str, h: int, w: int) -> np.ndarray:
    base = rng.uniform(8, 45) + rng.uniform(-15, 15, 3)
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    if kind == 'plain':
        bg = np.broadcast_to(base, (h, w, 3))
    elif kind == 'gradient':
        ang = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(ang) * rows / h + np.sin(ang) * cols / w)[..., None]
        bg = base + (ramp - ramp.mean()) * rng.uniform(15, 30, 3)
    else:
        bg = np.broadcast_to(base, (h, w, 3)).copy()
        for _ in range(3):
            k = rng.uniform(0.1, 0.5, 2) * rng.choice([-1, 1], 2)
            phase = rng.uniform(0, 2 * np.pi)
            bg = bg + rng.uniform(4, 8) * np.sin(k[0] * rows + k[1] * cols + phase)[..., None]
    bg = np.clip(bg, 0, 70)
    mean = bg.mean(-1, keepdims=True)
    bg = mean + np.clip(bg - mean, -20, 20)  # chroma <= 40
    return bg.astype(np.float32)


_PAD = 24  # canvas margin (px): every coverage window fits inside it


def _windows(shape: str, size: float, position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Anti-aliased (3x3 supersampled) coverage of one object in a k x k window per frame:
    (coverage float32 [T, k, k], window origins int [T, 2] (row, col) in frame pixels)."""
    t = position.shape[0]
    k = int(np.ceil(size)) * 2 + 4  # window side (px)
    ss = 3
    org = np.floor(position).astype(int) - k // 2  # [T, 2]
    offs = (np.arange(k * ss) + 0.5) / ss  # sample offsets inside the window
    dy = org[:, 0, None] + offs[None] - position[:, 0, None]  # [T, k*ss]
    dx = org[:, 1, None] + offs[None] - position[:, 1, None]
    dy, dx = dy[:, :, None], dx[:, None, :]
    if shape == 'circle':
        inside = dy * dy + dx * dx <= size * size
    elif shape == 'square':
        inside = (np.abs(dy) <= 0.9 * size) & (np.abs(dx) <= 0.9 * size)
    else:  # apex up at -size, base at +size, base half-width size
        inside = (np.abs(dy) <= size) & (np.abs(dx) <= 0.5 * (dy + size))
    return inside.reshape(t, k, ss, k, ss).mean(axis=(2, 4), dtype=np.float32), org


def _coverage(shape: str, size: float, position: np.ndarray, h: int, w: int) -> np.ndarray:
    """Coverage float32 [T, H, W] of one object (see `_windows`)."""
    cov, org = _windows(shape, size, position)
    t, k = cov.shape[:2]
    out = np.zeros((t, h + 2 * _PAD, w + 2 * _PAD), np.float32)
    for f in range(t):
        r, c = org[f] + _PAD
        out[f, r : r + k, c : c + k] = cov[f]
    return out[:, _PAD : _PAD + h, _PAD : _PAD + w]


class Layer(NamedTuple):
    """What `draw` paints for one object: shape, colour per frame, where, when."""

    shape: str
    size: float
    rgb: np.ndarray  # float32 [T, 3]
    position: np.ndarray  # [T, 2]
    drawn: np.ndarray  # bool [T]


def draw(
    background: np.ndarray, layers: Sequence[Layer], occluder: Occluder | None, t: int
) -> np.ndarray:
    """Paints layers (in order) then the occluder over `background` [H, W, 3]: uint8 [T,H,W,3]."""
    h, w = background.shape[:2]
    canvas = np.zeros((t, h + 2 * _PAD, w + 2 * _PAD, 3), np.float32)
    canvas[:, _PAD : _PAD + h, _PAD : _PAD + w] = background
    for la in layers:
        cov, org = _windows(la.shape, la.size, np.asarray(la.position, np.float64))
        k = cov.shape[1]
        for f in np.nonzero(la.drawn)[0]:
            r, c = org[f] + _PAD
            win = canvas[f, r : r + k, c : c + k]
            win += cov[f, :, :, None] * (la.rgb[f] - win)
    frames = canvas[:, _PAD : _PAD + h, _PAD : _PAD + w]
    if occluder is not None:
        frames[:, occluder.mask(h, w)] = np.float32(OCCLUDER_RGB)
    return np.clip(np.round(frames), 0, 255).astype(np.uint8)


def _rgb(color: str, t: int) -> np.ndarray:
    return np.broadcast_to(np.float32(COLORS[color].rgb), (t, 3))


def render(scene: Scene) -> np.ndarray:
    """The clip: uint8 [T, H, W, 3]."""
    t = scene.num_frames
    layers = [
        Layer(o.shape, o.size, _rgb(o.color, t), o.position, np.ones(t, bool))
        for o in scene.objects
    ]
    return draw(scene.background_rgb, layers, scene.occluder, t)


def _visibility(
    o: ObjectTruth, occ: Occluder | None, h: int, w: int, margin: int = 0
) -> np.ndarray:
    """float32 [T]: the part of the object not behind the bar (grown by `margin` px)."""
    if occ is None:
        return np.ones(o.position.shape[0], np.float32)
    cov, org = _windows(o.shape, o.size, o.position.astype(np.float64))  # [T, k, k]
    t, k = cov.shape[:2]
    grown = Occluder(occ.orientation, occ.start - margin, occ.stop + margin)
    mask = np.pad(grown.mask(h, w), _PAD).astype(np.float32)
    hidden = np.array([(cov[f] * mask[r : r + k, c : c + k]).sum() for f, (r, c) in
                       enumerate(org + _PAD)])  # fmt: skip
    return (1.0 - hidden / np.maximum(cov.sum((1, 2)), 1e-6)).astype(np.float32)


def sample_scene(
    seed: int,
    index: int = 0,
    *,
    num_frames: int = 33,
    height: int = 64,
    width: int = 64,
    split: Split = HOLDOUT,
    subset: str = 'train',
    num_objects: Sequence[int] = (1, 2),
    occluder_prob: float = 0.4,
    motions: Sequence[str] = tuple(MOTIONS),
    backgrounds: Sequence[str] = BACKGROUNDS,
) -> Scene:
    """Scene `index` of the stream `seed` (pure function). `subset`: 'train' (no held-out pair
    or combination) or 'held_out' (at least one); `num_objects`: the counts drawn from;
    `occluder_prob`: chance of a bar; `motions`, `backgrounds`: the kinds drawn from."""
    if subset not in ('train', 'held_out'):
        raise ValueError(f"subset={subset!r}; use 'train' or 'held_out'.")
    if num_frames < 17 or min(height, width) < 48:
        raise ValueError(
            f'The world needs num_frames >= 17 and H, W >= 48; got {num_frames}x{height}x{width}.'
        )
    if not set(num_objects) <= {1, 2} or not set(motions) <= set(MOTIONS) or not motions:
        raise ValueError(
            f'num_objects {tuple(num_objects)} must be in (1, 2) and motions {tuple(motions)} '
            f'in {tuple(MOTIONS)}.'
        )
    if not backgrounds or not set(backgrounds) <= set(BACKGROUNDS):
        raise ValueError(f'backgrounds {tuple(backgrounds)} must be a subset of {BACKGROUNDS}.')
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index), 24])
    t, h, w = num_frames, height, width
    n = int(rng.choice(list(num_objects)))
    attrs = _draw_attrs(rng, split, subset, n, tuple(motions))
    kind = str(rng.choice(list(backgrounds)))
    bg = _background(rng, kind, h, w)
    want_occ = rng.random() < occluder_prob
    for attempt in range(400):
        want_occ = want_occ and attempt < 200  # a bar no path fits: the scene goes without
        objs = []
        for shape, color, motion in attrs:
            for _ in range(100):
                size = rng.uniform(*SIZE_RANGE)
                p, v, g = _initial_state(rng, motion, shape, size, t, h, w)
                lo, hi = walls(shape, size, h, w)
                tr = simulate(p, v, g, lo, hi, t)
                if _motion_ok(motion, tr, t):
                    break
            else:
                raise ValueError(f'could not draw a {motion} trajectory in {t}x{h}x{w}.')
            objs.append(
                ObjectTruth(
                    shape, color, motion, float(size), float(g), tr.position.astype(np.float32),
                    tr.velocity.astype(np.float32), np.ones(t, np.float32),
                    tr.bounce_times, tr.bounce_axes,
                )
            )  # fmt: skip
        if len(objs) == 2 and not _apart(*objs):
            continue
        occ = _place_occluder(rng, objs, t, h, w) if want_occ else None
        objs = [dataclasses.replace(o, visibility=_visibility(o, occ, h, w)) for o in objs]
        # in the open (3 px clear of the bar) in at least 40% of the frames
        if all((_visibility(o, occ, h, w, 3) > 0.999).mean() >= 0.4 for o in objs):
            return Scene(t, h, w, kind, bg, tuple(objs), occ)
    raise ValueError(f'could not draw scene {index} of seed {seed}: try other sizes or counts.')


def _place_occluder(rng, objs: list[ObjectTruth], t: int, h: int, w: int) -> Occluder | None:
    """A bar across the path of a moving object (at its position in a middle frame)."""
    movers = [o for o in objs if o.motion != 'still']
    width = int(rng.integers(8, 13))
    if movers:
        o = movers[int(rng.integers(len(movers)))]
        p = o.position[int(rng.integers(t // 4, 3 * t // 4))]
        ax = 1 if abs(o.velocity[:, 1]).mean() >= abs(o.velocity[:, 0]).mean() else 0
    else:
        ax = int(rng.integers(2))
        p = np.array([h, w]) / 2
    side = (h, w)[ax]
    start = int(np.clip(round(p[ax] - width / 2), 16, side - 16 - width))
    return Occluder('vertical' if ax == 1 else 'horizontal', start, start + width)


# ----------------------------------------------------------------------------- records
def truth_arrays(scene: Scene) -> dict[str, Any]:
    """The ground truth as arrays (what the tfds builder stores): position / velocity float32
    [N, T, 2], visibility [N, T], size / gravity [N], and the attributes as lists."""
    objs = scene.objects
    return {
        'position': np.stack([o.position for o in objs]).astype(np.float32),
        'velocity': np.stack([o.velocity for o in objs]).astype(np.float32),
        'visibility': np.stack([o.visibility for o in objs]).astype(np.float32),
        'size': np.array([o.size for o in objs], np.float32),
        'gravity': np.array([o.gravity for o in objs], np.float32),
        'shape': [o.shape for o in objs],
        'color': [o.color for o in objs],
        'motion': [o.motion for o in objs],
        'occluder': (
            [scene.occluder.orientation, scene.occluder.start, scene.occluder.stop]
            if scene.occluder
            else []
        ),
        'background': scene.background,
    }


def generate(seed: int, index: int, **kwargs) -> dict[str, Any]:
    """One example: {video uint8 [T,H,W,3], caption_en, caption_es, scene}."""
    scene = sample_scene(seed, index, **kwargs)
    return {
        'video': render(scene),
        'caption_en': caption(scene, 'en'),
        'caption_es': caption(scene, 'es'),
        'scene': scene,
    }


# ----------------------------------------------------------------------------- corruptions
CORRUPTIONS = ('color_swap', 'teleport', 'vanish', 'half_bounce')


def corrupt(scene: Scene, kind: str, seed: int = 0) -> np.ndarray | None:
    """The scene's clip broken in one way the judge must catch, uint8 [T, H, W, 3], or None when
    the scene cannot show it (e.g. no bounce to damp):

      color_swap   from a middle frame on, the two objects swap colours (one object: it takes
                   another colour)
      teleport     an object in the open jumps 12-20 px at a middle frame and moves on from there
      vanish       an object disappears in the open (fully visible, away from the bar) for the
                   rest of the clip, at least 6 frames
      half_bounce  the first bounce with 6 frames on each side, 4 of each in the open, keeps
                   half the speed (of both components)
    """
    if kind not in CORRUPTIONS:
        raise ValueError(f'Unknown corruption {kind!r}; use one of {CORRUPTIONS}.')
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 97, CORRUPTIONS.index(kind)])
    t, h, w = scene.num_frames, scene.height, scene.width
    objs = scene.objects
    layers = [
        Layer(o.shape, o.size, _rgb(o.color, t).copy(), o.position, np.ones(t, bool)) for o in objs
    ]
    k = int(rng.integers(t // 3, 2 * t // 3))
    if kind == 'color_swap':
        if len(objs) == 2:
            layers[0].rgb[k:], layers[1].rgb[k:] = _rgb(objs[1].color, 1), _rgb(objs[0].color, 1)
        else:
            other = [c for c in COLORS if c != objs[0].color]
            layers[0].rgb[k:] = _rgb(other[int(rng.integers(len(other)))], 1)
        return draw(scene.background_rgb, layers, scene.occluder, t)
    for i in rng.permutation(len(objs)):
        o = objs[int(i)]
        lo, hi = walls(o.shape, o.size, h, w)
        if kind == 'vanish':
            open_ = np.nonzero(o.visibility[: t - 6] > 0.999)[0]
            open_ = open_[open_ >= 4]
            if not len(open_):
                continue
            k = int(open_[rng.integers(len(open_))])
            layers[int(i)] = layers[int(i)]._replace(drawn=np.arange(t) < k)
        elif kind == 'teleport':
            for _ in range(50):
                k = int(rng.integers(6, t - 6))
                ang = rng.uniform(0, 2 * np.pi)
                jump = rng.uniform(12, 20) * np.array([np.sin(ang), np.cos(ang)])
                start = o.position[k].astype(np.float64) + jump
                if np.any(start < lo) or np.any(start > hi):
                    continue
                tail = simulate(start, o.velocity[k], o.gravity, lo, hi, t - k)
                pos = np.concatenate([o.position[:k], tail.position.astype(np.float32)])
                moved = dataclasses.replace(o, position=pos)
                others = [x for j, x in enumerate(objs) if j != int(i)]
                vis = _visibility(moved, scene.occluder, h, w)
                if vis[k - 1] > 0.999 and vis[k] > 0.999 and all(_apart(moved, x) for x in others):
                    layers[int(i)] = layers[int(i)]._replace(position=pos)
                    break
            else:
                continue
        else:  # half_bounce
            for j, b in enumerate(o.bounce_times):
                if not 6 <= b <= t - 7:
                    continue
                e = [1.0] * j + [0.5]
                tr = simulate(o.position[0], o.velocity[0], o.gravity, lo, hi, t, restitution=e)
                moved = dataclasses.replace(o, position=tr.position.astype(np.float32))
                clear = _visibility(moved, scene.occluder, h, w, 3) > 0.999
                f = int(np.ceil(b))
                if clear[f - 6 : f].sum() >= 4 and clear[f : f + 6].sum() >= 4:
                    layers[int(i)] = layers[int(i)]._replace(position=tr.position)
                    break
            else:
                continue
        return draw(scene.background_rgb, layers, scene.occluder, t)
    return None
