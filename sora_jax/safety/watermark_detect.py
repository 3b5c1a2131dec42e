"""Detecting the watermark: a search over crop hypotheses, then the list decoder at the best.

The observed frame may be any 87.5-100% window of the marked one, so the detector scores crop
hypotheses (coverage and offset of each axis) by how close every bit's projection sits to one of
its two lattices: the mean |soft bit| over the 54 bits, a soft bit being the cosine of the
projection's phase on its bit's lattice, averaged over the frames. The score's peak is only a
fraction of a percent wide in coverage and offset (the host's large low-frequency coefficients
move with the window), so a grid coarse in both axes misses it: each axis is searched on a FINE
grid against the 13 coarse hypotheses of the other (left / centre / right crops of 0-12.5%), and
the TOP_K best, at least SEPARATION apart, are refined in FINE steps. They are refined once more
with the frames weighted by how well they fit the best hypothesis (a re-encode's I-frame carries
less error than its P- and B-frames); the weights stay fixed during a search, as re-weighting
each hypothesis lets noise win it.

A host pattern can fit better than a mark weakened by compression, so the list decoder
(`watermark_code.list_decode`) tries the CANDIDATES best hypotheses in turn, LIST flip patterns
each, and the first codeword found is the mark. A cheaper pass over the coarse grid alone goes
first (enough for most single transforms). An unmarked video runs both passes and yields a false
codeword with probability about (QUICK_CANDIDATES x QUICK_LIST + CANDIDATES x LIST) / 2^22 =
0.037%. No contrast gain is searched: more hypotheses give noise more chances to win.

For speed, frames larger than DETECT_SIZE (longer side) are area-resampled down to it first (the
band has 4.5 cycles at most), the grids read SEARCH_FRAMES evenly spaced frames (refinement
reads them all) and phases are computed in float32.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import numpy as np
from PIL import Image

from sora_jax.safety import watermark_layout as lay
from sora_jax.safety.watermark_code import LIST, N_BITS, N_PAYLOAD, bits_int, list_decode

CANDIDATES = 2  # crop hypotheses the list decoder tries (best fit first) ...
QUICK_TOP_K, QUICK_CANDIDATES, QUICK_LIST = 6, 4, 93  # refined, decoded, patterns: coarse pass
_CROPS = (1.0, 0.975, 0.95, 0.925, 0.9, 0.875)  # coverages of the coarse grid
TOP_K = 24  # crop hypotheses the detector refines ...
SEPARATION = 0.01  # ... at least this far apart (coverage or offset, either axis)
FINE = 0.0025  # step of the fine grid of one axis (coverage and offset)
SEARCH_FRAMES = 8  # frames (evenly spaced) the grids read; refinement reads them all
DETECT_SIZE = 64  # larger frames are area-resampled to this longer side to be read
REFINE = 4  # refinement range: +-REFINE steps of FINE in coverage and offset
FRAME_ITERS = 3  # re-decisions of the frame weights (_frame_weights)


@dataclasses.dataclass(frozen=True)
class Detection:
    found: bool  # a codeword was decoded at one of the crop hypotheses tried
    model_id: int | None  # 16-bit model id (None when not found)
    user_key: int | None  # 16-bit user key
    bits: np.ndarray  # the 32 payload bits as read (hard decisions, before any flip)
    confidence: float  # mean |soft decision| of the 54 bits (1 = every bit on its lattice)
    score: float  # the search's fit score (the same statistic at the best hypothesis)
    corrected: int  # channel bits flipped by the list decoder
    crop: tuple  # (coverage y, offset y, coverage x, offset x) of the hypothesis read

    def summary(self) -> str:
        if not self.found:
            return f'no watermark found (reliability {self.confidence:.2f})'
        return (
            f'watermark found: model id 0x{self.model_id:04x}, user key {self.user_key} '
            f'(reliability {self.confidence:.2f}, '
            f'{self.corrected} bits corrected)'
        )


class Candidate(NamedTuple):
    """A crop hypothesis and its fit: the observed frame is the window [offset, offset +
    coverage) of the marked frame along each axis."""

    score: float  # mean |soft| over the bits
    soft: np.ndarray  # [N_BITS] soft bits in [-1, 1], + = bit 0
    y: tuple[float, float]  # (coverage, offset) of the vertical axis
    x: tuple[float, float]  # (coverage, offset) of the horizontal axis


class _Reading(NamedTuple):
    candidate: Candidate  # the hypothesis read
    soft: np.ndarray  # [N_BITS] its soft bits, frames weighted by their fit there
    codeword: np.ndarray | None  # [N_BITS] decoded payload + check bits (None: no codeword)
    flips: int  # channel bits the list decoder flipped


def _hypotheses(n: int):
    """[(coverage, offset)] of one axis: the observed n pixels are the window [offset, offset +
    coverage) of the marked frame (crops of up to WINDOW per side); identity first."""
    hyps = [(1.0, 0.0)]
    for c in _CROPS[1:]:
        hyps += [(c, o) for o in ((1 - c) / 2, 0.0, 1 - c)]
    return hyps


def _axis_matrices(n: int, hyps=None):
    """[H, K, n]: the first K = BAND[1] + 1 rows of the LL-DCT axis (`ll_dct_matrix`; the band
    needs no more) of the box matrix reading the marked window under each hypothesis of an axis."""
    mats = []
    for c, o in _hypotheses(n) if hyps is None else hyps:
        full = n / c  # the marked frame's size in observed pixels
        a = int(round(full * lay.WINDOW))
        lo, hi = a - o * full, full - a - o * full
        lo, hi = max(lo, 0.0), min(hi, float(n))  # (clamped: the window is inside by design)
        mats.append(lay.ll_dct_matrix()[: lay.BAND[1] + 1] @ lay.box_matrix(lay.CANON, n, lo, hi))
    return np.stack(mats)


@functools.lru_cache(maxsize=1)
def _band_projection() -> np.ndarray:
    """[K, K, N_BITS]: `projections` of the band read from the first K x K LL-DCT coefficients."""
    k = lay.BAND[1] + 1
    m = np.zeros((lay.CANON // 2, lay.CANON // 2, N_BITS))
    u, v = np.divmod(lay.layout()[0], lay.CANON // 2)
    m[u, v] = lay.projection_matrix()
    return m[:k, :k]


def _phases(luma: np.ndarray, my: np.ndarray, mx: np.ndarray) -> np.ndarray:
    """Per-frame soft bits of every (y hypothesis, x hypothesis): [T, Hy, Hx, N_BITS] in [-1, 1],
    + = bit 0 (the cosine of each projection's phase on its bit's lattice)."""
    luma, my, mx = (np.asarray(a, np.float32) for a in (luma, my, mx))  # float32 suffices here
    half = np.einsum('thw,bkw->tbhk', luma, mx, optimize=True)  # [T, Hx, H, K]
    t, hx, h, k = half.shape
    d = my.reshape(-1, h) @ np.moveaxis(half, 2, 0).reshape(h, -1)  # [Hy K, T Hx K] LL-DCT rows
    d = np.moveaxis(d.reshape(-1, k, t, hx, k), 2, 0)  # [T, Hy, K, Hx, K]
    d = np.ascontiguousarray(np.swapaxes(d, 2, 3)).reshape(t, -1, hx, k * k)
    proj = d @ _band_projection().reshape(k * k, N_BITS).astype(np.float32)  # [T, Hy, Hx, NB]
    phase = (proj - lay.dither().astype(np.float32)) * np.float32(2 * np.pi / lay.STEP)
    return np.cos(phase).astype(np.float64)


def _fit(luma: np.ndarray, my: np.ndarray, mx: np.ndarray, frame_w: np.ndarray | None = None):
    """Soft bits and fit score of every (y hypothesis, x hypothesis): ([Hy, Hx, N_BITS] in
    [-1, 1] with + = bit 0, [Hy, Hx]). The frames' soft bits are averaged with weights frame_w
    [T] (None: equal)."""
    phase = _phases(luma, my, mx)
    w = np.full(phase.shape[0], 1.0) if frame_w is None else np.asarray(frame_w, np.float64)
    soft = np.einsum('tabn,t->abn', phase, w / w.sum())
    score = np.abs(soft).mean(-1)  # every bit close to one of its two lattices
    return soft, score


def _frame_weights(phase: np.ndarray) -> np.ndarray:
    """[T, N_BITS] per-frame soft bits at one crop hypothesis -> [T] frame weights: the von Mises
    concentration kappa_t of each frame's phases about the decided bits (rho_t = their mean
    cosine, kappa ~ A1^-1(rho)), re-deciding the bits with the new weights FRAME_ITERS times.
    A re-encode's frames differ in quality (its I-frame has less error than its P- and
    B-frames), so equal weights waste the best frames."""
    soft = phase.mean(0)
    kappa = np.ones(phase.shape[0])
    for _ in range(FRAME_ITERS):
        rho = np.clip((phase * np.sign(soft)).mean(-1), 0.05, 0.95)
        kappa = rho * (2 - rho**2) / (1 - rho**2)
        soft = kappa @ phase / kappa.sum()
    return kappa


def _refine(luma: np.ndarray, start: Candidate, frame_w: np.ndarray | None = None) -> Candidate:
    """Coordinate refinement (y, x, y, x) of one crop hypothesis in FINE steps."""
    h, w = luma.shape[1:]
    best = start
    fine = np.arange(-REFINE, REFINE + 1) * FINE
    for axis in (0, 1, 0, 1):
        c0, o0 = best.y if axis == 0 else best.x
        local = [
            (min(1.0, c0 + dc), o0 + do)
            for dc in fine
            for do in fine
            if 0.8 <= c0 + dc <= 1.0 and 0 <= o0 + do <= 1 - min(1.0, c0 + dc) + 1e-9
        ]
        if axis == 0:
            my, mx = _axis_matrices(h, local), _axis_matrices(w, [best.x])
        else:
            my, mx = _axis_matrices(h, [best.y]), _axis_matrices(w, local)
        soft, score = _fit(luma, my, mx, frame_w)
        a, b = np.unravel_index(np.argmax(score), score.shape)
        if score[a, b] > best.score:
            if axis == 0:
                best = Candidate(float(score[a, b]), soft[a, b], local[a], best.x)
            else:
                best = Candidate(float(score[a, b]), soft[a, b], best.y, local[b])
    return best


def _fine_hypotheses() -> list:
    """Every (coverage, offset) of an axis on a FINE grid: coverage 1 down to the smallest of
    _CROPS, every offset that keeps the observed part inside the marked frame."""
    out = []
    for c in np.arange(1.0, min(_CROPS) - 1e-9, -FINE):
        out += [(float(c), float(o)) for o in np.arange(0.0, 1.0 - c + 1e-9, FINE)]
    return out


@functools.lru_cache(maxsize=8)
def _fine_axis_matrices(n: int) -> np.ndarray:
    """`_axis_matrices` of every `_fine_hypotheses` hypothesis of an n-pixel axis (cached)."""
    return _axis_matrices(n, _fine_hypotheses())


def _fit_chunked(luma, my, mx):
    """`_fit` over many x hypotheses, a chunk at a time (about 20M values of the largest
    intermediate, [T, chunk, H, K], so long videos fit in memory)."""
    chunk = max(1, int(2e7 // (luma.shape[0] * luma.shape[1] * my.shape[1])))
    parts = [_fit(luma, my, mx[i : i + chunk]) for i in range(0, len(mx), chunk)]
    return np.concatenate([p[0] for p in parts], 1), np.concatenate([p[1] for p in parts], 1)


def _search(luma: np.ndarray, fine: bool = True, top_k: int = TOP_K) -> list[Candidate]:
    """Crop hypotheses, best fit first: each axis on the FINE grid against the coarse grid of the
    other (`fine`), or the coarse grid of both; the top_k best, at least SEPARATION apart, refined
    (`_refine`), frames equally weighted."""
    h, w = luma.shape[1:]
    coarse_y, coarse_x = _hypotheses(h), _hypotheses(w)
    fine_h = _fine_hypotheses() if fine else None
    axis = {(h, 'coarse'): _axis_matrices(h), (w, 'coarse'): _axis_matrices(w)}
    if fine:
        axis.update({(h, 'fine'): _fine_axis_matrices(h), (w, 'fine'): _fine_axis_matrices(w)})
    entries = []  # (score, hyp_y, hyp_x, soft)
    keep = np.unique(np.linspace(0, len(luma) - 1, min(len(luma), SEARCH_FRAMES)).round())
    sub = luma[keep.astype(int)]  # the grids read SEARCH_FRAMES frames
    passes = (
        ((coarse_y, fine_h, 'coarse', 'fine'), (fine_h, coarse_x, 'fine', 'coarse'))
        if fine
        else ((coarse_y, coarse_x, 'coarse', 'coarse'),)
    )
    for ys, xs, ky, kx in passes:
        if len(xs) >= len(ys):
            soft, score = _fit_chunked(sub, axis[h, ky], axis[w, kx])
        else:  # the same, transposed
            soft, score = _fit_chunked(np.swapaxes(sub, 1, 2), axis[w, kx], axis[h, ky])
            soft, score = np.swapaxes(soft, 0, 1), score.T
        for flat in np.argsort(score.ravel())[::-1][: top_k * 64]:
            a, b = np.unravel_index(flat, score.shape)
            entries.append((float(score[a, b]), ys[a], xs[b], soft[a, b]))
    entries.sort(key=lambda e: -e[0])
    out, starts = [], np.zeros((0, 4))
    for sc, hyp_y, hyp_x, soft_ab in entries:
        if len(out) == top_k:
            break
        geom = np.array([*hyp_y, *hyp_x])
        if len(starts) and (np.abs(starts - geom).max(1) < SEPARATION).any():
            continue  # a neighbour of a better start: refines to the same place
        starts = np.vstack([starts, geom])
        start = Candidate(sc, soft_ab, hyp_y, hyp_x)
        out.append(_refine(luma, _rescored(luma, start, None) if len(sub) < len(luma) else start))
    return sorted(out, key=lambda c: -c.score)


def _rescored(luma: np.ndarray, cand: Candidate, frame_w: np.ndarray | None) -> Candidate:
    """A hypothesis with its score and soft bits under the frame weights frame_w."""
    h, w = luma.shape[1:]
    soft, score = _fit(luma, _axis_matrices(h, [cand.y]), _axis_matrices(w, [cand.x]), frame_w)
    return Candidate(float(score[0, 0]), soft[0, 0], cand.y, cand.x)


def _weights_at(luma: np.ndarray, cand: Candidate) -> np.ndarray:
    """[T] frame weights (`_frame_weights`) at one crop hypothesis."""
    h, w = luma.shape[1:]
    phase = _phases(luma, _axis_matrices(h, [cand.y]), _axis_matrices(w, [cand.x]))
    return _frame_weights(phase[:, 0, 0])


def _soft_at(luma: np.ndarray, cand: Candidate) -> np.ndarray:
    """[N_BITS] soft bits at one crop hypothesis, frames weighted by their fit there."""
    return _rescored(luma, cand, _weights_at(luma, cand)).soft


def detect(frames) -> Detection:
    """Reads the mark from uint8 [T, H, W, 3] frames (any size, any number of frames): the coarse
    grid first (its QUICK_TOP_K best refined, QUICK_CANDIDATES decoded with QUICK_LIST flip
    patterns each); if no codeword is found, the fine search (`_search`) and the list decoder
    over its CANDIDATES best hypotheses (LIST patterns each)."""
    frames = lay.check_video(frames)
    luma = lay.luma(frames)  # [T, H, W]
    h, w = luma.shape[1:]
    if max(h, w) > DETECT_SIZE:  # the band is 4.5 cycles at most: area-resample it down
        scale = DETECT_SIZE / max(h, w)
        hs, ws = max(32, round(h * scale)), max(32, round(w * scale))
        luma = lay.box_matrix(hs, h) @ luma @ lay.box_matrix(ws, w).T
    # Most transforms leave the mark strong enough for the coarse grid: try it first (cheap).
    hit = _decode_first(
        luma, _candidates(luma, fine=False, top_k=QUICK_TOP_K), QUICK_CANDIDATES, QUICK_LIST
    )
    if hit is None:
        cands = _candidates(luma, fine=True, top_k=TOP_K)
        hit = _decode_first(luma, cands, CANDIDATES, LIST)
    if hit is None:
        hit = _Reading(cands[0], _soft_at(luma, cands[0]), None, 0)
    best = hit.candidate
    hard = (hit.soft < 0).astype(np.uint8)  # payload + check bits
    found = hit.codeword is not None
    payload = hit.codeword[:N_PAYLOAD] if found else None
    return Detection(
        found=found,
        model_id=bits_int(payload[:16]) if found else None,
        user_key=bits_int(payload[16:]) if found else None,
        bits=hard[:N_PAYLOAD],
        confidence=float(np.mean(np.abs(hit.soft))),
        score=best.score,
        corrected=hit.flips,
        crop=tuple(round(float(v), 4) for v in (*best.y, *best.x)),
    )


def _candidates(luma: np.ndarray, fine: bool, top_k: int) -> list[Candidate]:
    """Crop hypotheses for the list decoder, best first: those of `_search`, then the same
    refined again with the frames weighted by how well they fit the best one."""
    first = _search(luma, fine=fine, top_k=top_k)
    fw = _weights_at(luma, first[0])
    second = sorted(
        (_refine(luma, _rescored(luma, c, fw), fw) for c in first), key=lambda c: -c.score
    )
    cands, seen = [], set()
    for c in second + first:  # distinct crops only (refinements often meet at one point)
        key = tuple(int(round(float(v) / (FINE / 2))) for v in (*c.y, *c.x))
        if key not in seen:
            seen.add(key)
            cands.append(c)
    return cands


def _decode_first(luma: np.ndarray, cands: list[Candidate], n: int, size: int):
    """The `_Reading` of the first of n hypotheses whose bits decode with a list of `size` flip
    patterns (`list_decode`), or None."""
    for cand in cands[:n]:
        s = _soft_at(luma, cand)
        fixed, flips = list_decode((s < 0).astype(np.uint8), np.abs(s), size)
        if fixed is not None:
            return _Reading(cand, s, fixed, flips)
    return None


def detect_file(path) -> Detection:
    """Reads a video (or image) file and detects the mark."""
    from sora_jax.io import video as video_io

    path = str(path)
    if path.lower().endswith(('.png', '.jpg', '.jpeg', '.webp')):
        return detect(np.asarray(Image.open(path).convert('RGB'))[None])
    return detect(video_io.read_video(path))
