"""Synthetic captioned videos: coloured shapes moving, growing or resting.

A scene holds 1-3 objects, each a (shape, colour, motion) drawn over a plain or
textured dim background. Everything is deterministic from `(seed, index)`:

  scene = sample_scene(seed=0, index=7, num_frames=16, height=32, width=32)
  video = render(scene)                       # uint8 [T, H, W, 3]
  caption(scene.objects, "es")                # "un círculo rojo moviéndose hacia la izquierda"

`scene.objects` is the structured description a prompt-following judge uses:
a list of dicts with `shape`, `color`, `motion`, `centers` float32 [T, 2]
(row, col in pixels, pixel centres at i + 0.5) and `sizes` float32 [T]
(radius of the circumscribed circle / half side of the square, pixels).
Objects are drawn in list order (later ones on top).

`caption(attrs, lang)` builds a caption from attribute dicts (or
(shape, colour, motion) tuples) without a scene, so samplers can prompt for any
combination, including `holdout` combinations the generator never produces.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

# name -> (Spanish noun, grammatical gender)
SHAPES: dict[str, tuple[str, str]] = {
    'circle': ('círculo', 'm'),
    'square': ('cuadrado', 'm'),
    'triangle': ('triángulo', 'm'),
    'star': ('estrella', 'f'),
}


@dataclasses.dataclass(frozen=True)
class Color:
    rgb: tuple[int, int, int]
    es_m: str  # Spanish adjective, masculine
    es_f: str  # Spanish adjective, feminine


COLORS: dict[str, Color] = {
    'red': Color((230, 30, 30), 'rojo', 'roja'),
    'green': Color((30, 200, 50), 'verde', 'verde'),
    'blue': Color((40, 80, 240), 'azul', 'azul'),
    'yellow': Color((240, 220, 30), 'amarillo', 'amarilla'),
    'purple': Color((150, 40, 200), 'morado', 'morada'),
    'orange': Color((250, 140, 20), 'naranja', 'naranja'),
    'white': Color((245, 245, 245), 'blanco', 'blanca'),
    'pink': Color((250, 120, 190), 'rosa', 'rosa'),
}

# name -> (English phrase, Spanish phrase masculine, Spanish phrase feminine)
MOTIONS: dict[str, tuple[str, str, str]] = {
    'moving_left': (
        'moving to the left',
        'moviéndose hacia la izquierda',
        'moviéndose hacia la izquierda',
    ),
    'moving_right': (
        'moving to the right',
        'moviéndose hacia la derecha',
        'moviéndose hacia la derecha',
    ),
    'moving_up': ('moving up', 'moviéndose hacia arriba', 'moviéndose hacia arriba'),
    'moving_down': ('moving down', 'moviéndose hacia abajo', 'moviéndose hacia abajo'),
    'growing': ('growing', 'creciendo', 'creciendo'),
    'shrinking': ('shrinking', 'encogiéndose', 'encogiéndose'),
    'resting': ('standing still', 'quieto', 'quieta'),
}

# Unit displacement (d_row, d_col) of each moving motion, image coordinates.
DIRECTIONS: dict[str, tuple[int, int]] = {
    'moving_left': (0, -1),
    'moving_right': (0, 1),
    'moving_up': (-1, 0),
    'moving_down': (1, 0),
}
BACKGROUNDS = ('plain', 'horizontal_stripes', 'vertical_stripes', 'checker')
LANGS = ('en', 'es')
_ATTR_KEYS = ('shape', 'color', 'motion')
_MAX_DIM = 70  # background channels stay <= this, far from every shape colour


@dataclasses.dataclass
class Scene:
    """What `render` draws. `objects`: see the module docstring."""

    num_frames: int
    height: int
    width: int
    background: dict[str, Any]
    objects: list[dict[str, Any]]


# ----------------------------------------------------------------------------
# captions
# ----------------------------------------------------------------------------
def _as_attrs(obj: Mapping[str, Any] | Sequence[str]) -> dict[str, str]:
    if isinstance(obj, Mapping):
        attrs = {k: obj[k] for k in _ATTR_KEYS if k in obj}
    else:
        attrs = dict(zip(_ATTR_KEYS, obj))
    for key, vocab in (('shape', SHAPES), ('color', COLORS), ('motion', MOTIONS)):
        if key not in attrs:
            raise ValueError(f'Attributes {obj!r} lack {key!r}; give shape, color and motion.')
        if attrs[key] not in vocab:
            raise ValueError(f'Unknown {key} {attrs[key]!r}; choose from {sorted(vocab)}.')
    return attrs


def _phrase(attrs: dict[str, str], lang: str) -> str:
    shape, color, motion = attrs['shape'], attrs['color'], attrs['motion']
    if lang == 'en':
        article = 'an' if color[0] in 'aeiou' else 'a'
        return f'{article} {color} {shape} {MOTIONS[motion][0]}'
    noun, gender = SHAPES[shape]
    c = COLORS[color]
    if gender == 'f':
        return f'una {noun} {c.es_f} {MOTIONS[motion][2]}'
    return f'un {noun} {c.es_m} {MOTIONS[motion][1]}'


def caption(attrs: Any, lang: str = 'en') -> str:
    """Caption for one object or a list of objects, in "en" or "es".

    `attrs`: a dict with shape/color/motion (extra keys ignored), a
    (shape, color, motion) tuple, or a list of either.
    """
    if lang not in LANGS:
        raise ValueError(f'Unknown caption language {lang!r}; use one of {LANGS}.')
    if isinstance(attrs, Mapping) or (
        isinstance(attrs, (tuple, list)) and attrs and isinstance(attrs[0], str)
    ):
        items = [attrs]
    else:
        items = list(attrs)
    if not items:
        raise ValueError('caption() needs at least one object.')
    phrases = [_phrase(_as_attrs(a), lang) for a in items]
    conj = ' and ' if lang == 'en' else ' y '
    if len(phrases) == 1:
        return phrases[0]
    return ', '.join(phrases[:-1]) + conj + phrases[-1]


# ----------------------------------------------------------------------------
# holdout
# ----------------------------------------------------------------------------
def _check_holdout(holdout: Iterable[Sequence[str]]) -> tuple[frozenset[str], ...]:
    vocab = set(SHAPES) | set(COLORS) | set(MOTIONS)
    combos = []
    for combo in holdout:
        if isinstance(combo, str):
            raise ValueError(
                f'holdout entries are tuples of attribute values, got {combo!r}; '
                f"write ({combo!r},) or e.g. ('red', 'triangle')."
            )
        bad = [v for v in combo if v not in vocab]
        if bad or not combo:
            raise ValueError(
                f'holdout combination {tuple(combo)!r} has unknown values {bad}; '
                f'values come from SHAPES, COLORS and MOTIONS.'
            )
        combos.append(frozenset(combo))
    return tuple(combos)


def is_held_out(attrs: Any, holdout: Iterable[Sequence[str]]) -> bool:
    """True if the object's attributes contain every value of some holdout combo."""
    a = _as_attrs(attrs)
    values = {a['shape'], a['color'], a['motion']}
    return any(combo <= values for combo in _check_holdout(holdout))


# ----------------------------------------------------------------------------
# scene sampling
# ----------------------------------------------------------------------------
def _sample_attrs(rng: np.random.Generator, holdout: tuple[frozenset[str], ...]) -> dict:
    shapes, colors, motions = list(SHAPES), list(COLORS), list(MOTIONS)
    for _ in range(1000):
        attrs = {
            'shape': shapes[rng.integers(len(shapes))],
            'color': colors[rng.integers(len(colors))],
            'motion': motions[rng.integers(len(motions))],
        }
        if not any(c <= set(attrs.values()) for c in holdout):
            return attrs
    raise ValueError(
        f'holdout {holdout} excludes (almost) every combination; hold out fewer combinations.'
    )


def _trajectory(
    rng: np.random.Generator, motion: str, t: int, h: int, w: int, size_scale: float = 1.0
):
    """Centres [T, 2] (row, col) and radii [T] keeping the shape inside the frame."""
    m = min(h, w) * size_scale
    if motion == 'growing':
        r0, r1 = m * rng.uniform(0.09, 0.11), m * rng.uniform(0.23, 0.27)
    elif motion == 'shrinking':
        r0, r1 = m * rng.uniform(0.23, 0.27), m * rng.uniform(0.09, 0.11)
    else:
        r0 = r1 = m * rng.uniform(0.11, 0.16)
    r0, r1 = max(r0, 1.5), max(r1, 1.5)
    rmax = max(r0, r1)
    lo = np.array([rmax, rmax])
    hi = np.array([h - rmax, w - rmax])
    span = np.maximum(hi - lo, 0.0)
    start = lo + rng.uniform(0, 1, 2) * span
    end = start.copy()
    if motion in DIRECTIONS:
        axis = 0 if DIRECTIONS[motion][0] else 1
        sign = DIRECTIONS[motion][axis]
        # travel at least half of the free span along the motion axis
        a = lo[axis] + rng.uniform(0.0, 0.25) * span[axis]
        b = hi[axis] - rng.uniform(0.0, 0.25) * span[axis]
        start[axis], end[axis] = (a, b) if sign > 0 else (b, a)
    frac = np.linspace(0.0, 1.0, t) if t > 1 else np.zeros(1)
    centers = start[None] + frac[:, None] * (end - start)[None]
    sizes = r0 + frac * (r1 - r0)
    return centers.astype(np.float32), sizes.astype(np.float32)


def sample_scene(
    seed: int,
    index: int = 0,
    *,
    num_frames: int,
    height: int,
    width: int,
    holdout: Iterable[Sequence[str]] = (),
    min_objects: int = 1,
    max_objects: int = 3,
    backgrounds: Sequence[str] = BACKGROUNDS,
    size_scale: float = 1.0,
) -> Scene:
    """The scene for example `index` of the stream seeded by `seed` (pure function).

    `backgrounds`: the background kinds drawn from (a subset of BACKGROUNDS); `size_scale`
    multiplies every shape radius (1.0: radii 9-27% of the shorter side; keep it <= 1.8 so a
    growing shape still fits)."""
    if num_frames < 1 or height < 4 or width < 4:
        raise ValueError(
            f'Need num_frames >= 1 and height, width >= 4; got ({num_frames}, {height}, {width}).'
        )
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f'Need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}.')
    backgrounds = tuple(backgrounds)
    if not backgrounds or any(b not in BACKGROUNDS for b in backgrounds):
        raise ValueError(
            f'backgrounds={backgrounds!r} must be a non-empty subset of {BACKGROUNDS}.'
        )
    if not 0.2 <= size_scale <= 1.8:
        raise ValueError(
            f'size_scale={size_scale} must be in [0.2, 1.8] (shapes must fit the frame).'
        )
    combos = _check_holdout(holdout)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index)])
    n = int(rng.integers(min_objects, max_objects + 1))
    objects = []
    for _ in range(n):
        attrs = _sample_attrs(rng, combos)
        centers, sizes = _trajectory(rng, attrs['motion'], num_frames, height, width, size_scale)
        objects.append({**attrs, 'centers': centers, 'sizes': sizes})
    kind = backgrounds[rng.integers(len(backgrounds))]
    c1 = rng.integers(0, _MAX_DIM // 2, 3)
    c2 = np.minimum(c1 + rng.integers(10, _MAX_DIM // 2, 3), _MAX_DIM)
    background = {
        'kind': kind,
        'colors': (tuple(int(x) for x in c1), tuple(int(x) for x in c2)),
        'period': int(rng.integers(4, 9)),
    }
    return Scene(num_frames, height, width, background, objects)


# ----------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------
def _polygon(shape: str) -> np.ndarray | None:
    """Unit-radius vertices (row, col) around the origin; None for the circle."""
    if shape == 'triangle':  # equilateral, apex up, inscribed in the unit circle
        ang = np.deg2rad([-90.0, 30.0, 150.0])
        return np.stack([np.sin(ang), np.cos(ang)], -1)
    if shape == 'star':  # five points, inner radius 0.45
        ang = np.deg2rad(-90.0 + 36.0 * np.arange(10))
        rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([rad * np.sin(ang), rad * np.cos(ang)], -1)
    return None


def _inside(shape: str, dy: np.ndarray, dx: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Boolean mask; dy, dx: offsets from the centre [T, N]; r: radii [T, 1]."""
    if shape == 'circle':
        return dy * dy + dx * dx <= r * r
    if shape == 'square':  # half side 0.85 r: area close to the circle's
        return np.maximum(np.abs(dy), np.abs(dx)) <= 0.85 * r
    verts = _polygon(shape)
    y, x = dy / r, dx / r
    inside = np.zeros(dy.shape, bool)
    for (y0, x0), (y1, x1) in zip(verts, np.roll(verts, -1, axis=0)):  # even-odd rule
        crosses = (y0 > y) != (y1 > y)
        x_at = x0 + (y - y0) * (x1 - x0) / (y1 - y0 if y1 != y0 else 1e-12)
        inside ^= crosses & (x < x_at)
    return inside


def _background(scene: Scene) -> np.ndarray:
    h, w = scene.height, scene.width
    bg = scene.background
    c1, c2 = (np.array(c, np.float32) for c in bg['colors'])
    rows, cols = np.mgrid[0:h, 0:w]
    p = bg['period']
    if bg['kind'] == 'plain':
        sel = np.zeros((h, w), bool)
    elif bg['kind'] == 'horizontal_stripes':
        sel = (rows // p) % 2 == 1
    elif bg['kind'] == 'vertical_stripes':
        sel = (cols // p) % 2 == 1
    else:
        sel = ((rows // p) + (cols // p)) % 2 == 1
    return np.where(sel[..., None], c2, c1)  # [H, W, 3]


def render(scene: Scene, antialias: bool = True) -> np.ndarray:
    """Draws the scene: uint8 [T, H, W, 3]. Antialiasing: 3x3 supersampled coverage."""
    t, h, w = scene.num_frames, scene.height, scene.width
    ss = 3 if antialias else 1
    # sub-pixel sample positions, pixel (i, j) covers [i, i+1) x [j, j+1)
    offs = (np.arange(ss) + 0.5) / ss
    ys = (np.arange(h)[:, None] + offs[None]).reshape(-1)  # [H*ss]
    xs = (np.arange(w)[:, None] + offs[None]).reshape(-1)  # [W*ss]
    gy, gx = np.meshgrid(ys, xs, indexing='ij')
    gy, gx = gy.reshape(1, -1), gx.reshape(1, -1)  # [1, N]
    frames = np.broadcast_to(_background(scene), (t, h, w, 3)).astype(np.float32)
    for obj in scene.objects:
        c = obj['centers'].astype(np.float32)
        r = obj['sizes'].astype(np.float32)[:, None]
        mask = _inside(obj['shape'], gy - c[:, :1], gx - c[:, 1:], r)  # [T, N]
        cover = mask.reshape(t, h, ss, w, ss).mean(axis=(2, 4))[..., None]  # [T, H, W, 1]
        rgb = np.array(COLORS[obj['color']].rgb, np.float32)
        frames = frames * (1.0 - cover) + rgb * cover
    return np.clip(np.round(frames), 0, 255).astype(np.uint8)


def nearest_color(rgb: Sequence[float]) -> str:
    """Name of the vocabulary colour closest (Euclidean RGB) to `rgb`."""
    rgb = np.asarray(rgb, np.float32)
    names = list(COLORS)
    table = np.array([COLORS[n].rgb for n in names], np.float32)
    return names[int(np.argmin(((table - rgb) ** 2).sum(-1)))]


def generate(
    seed: int,
    index: int,
    *,
    num_frames: int,
    height: int,
    width: int,
    holdout: Iterable[Sequence[str]] = (),
    max_objects: int = 3,
    antialias: bool = True,
    backgrounds: Sequence[str] = BACKGROUNDS,
    size_scale: float = 1.0,
) -> dict[str, Any]:
    """One example: {video uint8 [T,H,W,3], caption_en, caption_es, scene}."""
    scene = sample_scene(
        seed,
        index,
        num_frames=num_frames,
        height=height,
        width=width,
        holdout=holdout,
        max_objects=max_objects,
        backgrounds=backgrounds,
        size_scale=size_scale,
    )
    return {
        'video': render(scene, antialias=antialias),
        'caption_en': caption(scene.objects, 'en'),
        'caption_es': caption(scene.objects, 'es'),
        'scene': scene,
    }
