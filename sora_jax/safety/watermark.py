"""Invisible video watermark: 32 payload bits (16-bit model id, 16-bit user key) in every frame.

    marked = embed(frames, model_id=0x1234, user_key=7)    # uint8 [T, H, W, 3] -> same
    det = detect(read_video('out.mp4'))                     # Detection(found, model_id, ...)

Where it lives: the luma of each frame, box-resized to a canonical 64x64 grid, one Haar level
(PyWavelets; the LL band, 32x32, which compression and resizing barely touch), then a 2D DCT of
LL (scipy). 54 channel bits (32 payload, 22 check bits of a key-chosen affine binary code) each
own one key-chosen, key-signed DCT coefficient of the 54 in the band u + v in [1, 9]: half a
cycle to 4.5 cycles across the marked window. So low because of re-encoded small copies: after a
resize to half and H.264 at CRF 28 a band u + v in [3, 20] kept 20-40% of the mark's amplitude;
the low band keeps 35-70%. A bit is carried by dither modulation: its projection is moved to the
nearest point of that bit's lattice STEP * Z + dither (+ STEP / 2 for a 1).

Embedding re-measures: per frame, 3 passes quantise the projections of the uint8 result
(rounding, clipping, the box resize back to the frame size) and correct them. The change is a
luma change made along (R, G, B) ~ (0.299, 0.587, 0.114), the luma weights: per unit of RGB
squared error that moves the luma 1.157x as far as an equal change to R, G and B, and the lattice
step was raised from 100 to STEP = 120 to spend it (at 100 the PSNR sat near 41 dB, unused; 110
to 130 read alike, 140 worse: the cap binds; measured with a cap on every frame, as then). The
budget is an RMS change of MAX_RMS = 2.5 per pixel and channel over the video, counted on the
frames as written (rounded, clipped to [0, 255]), so PSNR >= 40.16 dB against the unmarked
video. Counted as written, a darkening of black pixels that clipping cancels costs nothing: a
budget on the intended change had left dark clips near 41 dB. It is a budget per video, not per
frame: most frames need about the cap or a little more, some less, and what those leave goes to
the frames that need more, under one common per-frame cap (`_frame_caps`; at most FRAME_OVER =
1.25x the budget, so no frame below 38.2 dB; the test's shapes clip has frames at 40.07-40.61
dB). On the combination, over the 168 shapes clips of 21 `watermark_eval.py --sets` sets
(README): a cap on every frame's intended change 0.927 (104 of them), per video 0.940, counted
as written 0.953. Every frame carries the same bits.

Detection averages each bit's soft decision (the cosine of its projection's phase on its bit's
lattice) over the frames and scores crop hypotheses (the frame is an 87.5-100% window of the
marked one) by how close every bit sits to one of its two lattices. The score's peak is only
about 0.5% wide in coverage and offset (the host's large low-frequency coefficients move with
the window), so each axis is searched on a 0.25% grid (FINE) against 13 coarse hypotheses of the
other (left / centre / right crops of 0-12.5%); the TOP_K best, at least 1% apart, are refined
in 0.25% steps with the frames weighted by how well they fit the best one (a re-encode's first
frame, an I-frame, has about half the error of its P- and B-frames; weights are held fixed
during a search: re-weighting each hypothesis let noise win it). A host pattern can fit better
than a mark weakened by compression, so the list decoder tries the CANDIDATES best hypotheses in
turn, at each the LIST cheapest flip patterns (sets of up to LIST_FLIPS channel bits, least
total reliability first), and the first codeword found is the mark (a cheaper coarse-only pass
goes first, see `detect`). Cheapest first rather than the flips of the few least reliable bits:
after a re-encode one wrong bit is often of middling reliability (the 25th least reliable of
54, say), which a short list of the least reliable bits never reaches. The patterns went from
12 candidates x 93 to 2 x 600, the same false-positive chance: on the 80 clips of
`watermark_eval.py --sets` (README) the combination's shapes / natural clips found went from 26 /
39 to 30 / 40 of 40. An unmarked video passes with probability about (4 x 93 + 2 x 600) / 2^22 =
0.037% (measured rate: experiments/watermark_eval.py, README). Only gain 1 is tried: searching
contrast too gave the noise more hypotheses to win with. The previous format (48 bits: a CRC-16,
one best crop and a 4-bit Chase search) read the combination in robustness.py at 0.80 / 0.92 on
5 + 5 sets of 8 shapes / natural clips where this one reads 0.94 / 1.00 (0.86 / 0.97 before the
change along the luma weights; watermark_eval.py --sets; README).

Frame size: the box resize makes a mark applied at 32x32 and nearest-upscaled (the CLI's
`display_scale`) read exactly as at 32x32; any other written size is resampled to 64x64. The
detector first area-resamples frames larger than DETECT_SIZE = 64 px (longer side) down to it
(the band has 4.5 cycles at most), its grids read SEARCH_FRAMES = 8 evenly spaced frames and
its phases are computed in float32: a 16-frame 128x128 clip takes about 1-2 s on one core.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import heapq

import numpy as np
import pywt
from PIL import Image
from scipy import fft as sfft

CANON = 64  # canonical analysis grid (pixels)
BAND = (1, 9)  # DCT indices u + v of the LL band (32 x 32) that carry bits
N_PAYLOAD, N_CHECK = 32, 22
N_BITS = N_PAYLOAD + N_CHECK  # 54 channel bits, one band coefficient each
STEP = 120.0  # dither-modulation step of each bit's projection (LL-DCT units)
GAINS = (1.0,)  # contrast gains the detector tries (see above)
LIST_FLIPS = 4  # channel bits a flip pattern of the list decoder changes at most
CANDIDATES, LIST = 2, 600  # crop hypotheses the list decoder tries (best fit first), patterns each
QUICK_TOP_K, QUICK_CANDIDATES, QUICK_LIST = 6, 4, 93  # the same, coarse grid alone (first)
MAX_RMS = 2.5  # budget: RMS change per pixel and channel over a video, as written
FRAME_OVER = 1.25  # a frame may take up to this x MAX_RMS (>= 38.2 dB; see embed)
_FRAME_TOP = MAX_RMS * FRAME_OVER  # ... that is, this RMS
# The change's direction in (R, G, B) per unit of luma: along the luma weights, the most luma per
# unit of RGB squared error (1.157x the luma of an equal change to R, G and B at the same PSNR).
_COLOR = np.array([0.299, 0.587, 0.114]) / (0.299**2 + 0.587**2 + 0.114**2)
PASSES = 3
KEY = b'sora_jax watermark v1'
_CROPS = (1.0, 0.975, 0.95, 0.925, 0.9, 0.875)
TOP_K = 24  # crop hypotheses the detector refines ...
SEPARATION = 0.01  # ... at least this far apart (coverage or offset, either axis)
FINE = 0.0025  # step of the fine grid of one axis (coverage and offset)
SEARCH_FRAMES = 8  # frames (evenly spaced) the grids read; refinement reads them all
DETECT_SIZE = 64  # larger frames are area-resampled to this longer side to be read
UNIFORM_DITHER = False
REFINE = 4  # refinement range: +-REFINE steps of 0.25% in coverage and offset
FRAME_ITERS = 3  # re-decisions of the frame weights (_frame_weights)
WINDOW = 0.125  # margin left unmarked on each side, so crops up to 12.5% keep it all


@dataclasses.dataclass(frozen=True)
class Detection:
    found: bool  # a codeword was decoded at one of the crop hypotheses tried
    model_id: int | None  # 16-bit model id (None when not found)
    user_key: int | None  # 16-bit user key
    bits: np.ndarray  # the 32 payload bits as read (hard decisions, before any flip)
    confidence: float  # mean |soft decision| of the 54 bits (1 = every bit on its lattice)
    score: float  # the search's fit score (the same statistic at the best hypothesis)
    corrected: int  # channel bits flipped by the list decoder
    crop: tuple  # (coverage y, offset y, coverage x, offset x, gain) found there

    def summary(self) -> str:
        if not self.found:
            return f'no watermark found (reliability {self.confidence:.2f})'
        return (
            f'watermark found: model id 0x{self.model_id:04x}, user key {self.user_key} '
            f'(reliability {self.confidence:.2f}, '
            f'{self.corrected} bits corrected)'
        )


# ---------------------------------------------------------------- payload
def model_id_from(text: str | bytes) -> int:
    """16-bit model id from a checkpoint hash (or any identifying string)."""
    data = text.encode() if isinstance(text, str) else bytes(text)
    return int.from_bytes(hashlib.sha256(data).digest()[:2], 'big')


@functools.lru_cache(maxsize=1)
def _code():
    """(G [N_PAYLOAD, N_CHECK], c [N_CHECK]) of the key's affine code: check = payload G + c (mod
    2). A random linear code, so a word that is not a mark passes with probability 2^-N_CHECK; the
    offset c keeps an all-zero reading from passing."""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(KEY + b'code').digest()[:8], 'big'))
    return (
        rng.integers(0, 2, (N_PAYLOAD, N_CHECK)).astype(np.uint8),
        rng.integers(0, 2, N_CHECK).astype(np.uint8),
    )


def _check_bits(payload: np.ndarray) -> np.ndarray:
    """[N_PAYLOAD] bits -> [N_CHECK] check bits."""
    g, c = _code()
    return ((payload.astype(np.int64) @ g + c) % 2).astype(np.uint8)


def _int_bits(value: int, n: int) -> np.ndarray:
    return np.array([(value >> (n - 1 - i)) & 1 for i in range(n)], np.uint8)


def _bits_int(bits) -> int:
    return int(''.join(str(int(b)) for b in bits), 2)


def payload_bits(model_id: int, user_key: int) -> np.ndarray:
    """The 32 payload bits: model id (16) then user key (16)."""
    for name, v in (('model_id', model_id), ('user_key', user_key)):
        if not isinstance(v, (int, np.integer)) or not 0 <= v < 2**16:
            raise ValueError(
                f'{name}={v!r} must be an int in [0, 65535] (16 bits); derive a model '
                'id with watermark.model_id_from(checkpoint_hash).'
            )
    return np.concatenate([_int_bits(model_id, 16), _int_bits(user_key, 16)])


def _codeword(model_id: int, user_key: int) -> np.ndarray:
    """[N_BITS] in {-1, +1}: payload, then check bits."""
    p = payload_bits(model_id, user_key)
    bits = np.concatenate([p, _check_bits(p)])
    return bits.astype(np.float64) * 2 - 1


# ---------------------------------------------------------------- transform and layout
@functools.lru_cache(maxsize=1)
def _layout():
    """(flat LL-DCT index per band coefficient [N], bit of each [N], sign of each [N])."""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(KEY).digest()[:8], 'big'))
    u, v = np.meshgrid(np.arange(CANON // 2), np.arange(CANON // 2), indexing='ij')
    s = (u + v).ravel()
    idx = np.flatnonzero((s >= BAND[0]) & (s <= BAND[1]))
    idx = rng.permutation(idx)
    owner = np.arange(idx.size) % N_BITS
    signs = rng.choice([-1.0, 1.0], idx.size)
    return idx, owner, signs


def _analysis(canon: np.ndarray) -> np.ndarray:
    """[..., 64, 64] luma -> [..., N] band coefficients (Haar LL, then orthonormal DCT)."""
    ll = pywt.dwt2(canon, 'haar', axes=(-2, -1))[0]
    d = sfft.dctn(ll, axes=(-2, -1), norm='ortho')
    return d.reshape(*d.shape[:-2], -1)[..., _layout()[0]]


def _synthesis(coeffs: np.ndarray) -> np.ndarray:
    """[N] band coefficients -> [64, 64] luma (the adjoint of `_analysis`: both orthonormal)."""
    d = np.zeros((CANON // 2) ** 2)
    d[_layout()[0]] = coeffs
    ll = sfft.idctn(d.reshape(CANON // 2, CANON // 2), norm='ortho')
    return pywt.idwt2((ll, (None, None, None)), 'haar')


def _projections(coeffs: np.ndarray) -> np.ndarray:
    """[..., N] -> [..., N_BITS]: mean signed coefficient of each bit's set."""
    return coeffs @ _projection_matrix()


@functools.lru_cache(maxsize=1)
def _projection_matrix() -> np.ndarray:
    """[N, N_BITS]: sign / count of a band coefficient in its bit's set (0 elsewhere)."""
    _, owner, signs = _layout()
    m = np.zeros((owner.size, N_BITS))
    m[np.arange(owner.size), owner] = signs
    return m / np.bincount(owner, minlength=N_BITS)


@functools.lru_cache(maxsize=1)
def _ll_dct_matrix() -> np.ndarray:
    """[32, 64]: one axis of `_analysis` (Haar LL: pairs summed / sqrt 2, then the orthonormal
    DCT-II), so the band of a [64, 64] grid X is (A X A^T) at the band indices."""
    haar = np.zeros((CANON // 2, CANON))
    haar[np.arange(CANON // 2), 2 * np.arange(CANON // 2)] = 2**-0.5
    haar[np.arange(CANON // 2), 2 * np.arange(CANON // 2) + 1] = 2**-0.5
    return sfft.dct(np.eye(CANON // 2), axis=0, norm='ortho') @ haar


def _box_matrix(n_out: int, n_in: int, lo: float = 0.0, hi: float | None = None) -> np.ndarray:
    """[n_out, n_in] area-average resampling of the interval [lo, hi) (input pixel units) onto
    n_out equal cells: exact box filtering, so an integer nearest-upscale of the input changes
    nothing (a mark made at 32x32 reads the same from the CLI's 128x128 file)."""
    hi = float(n_in) if hi is None else hi
    edges = np.linspace(lo, hi, n_out + 1)
    px = np.arange(n_in)
    left = np.maximum(edges[:-1, None], px[None])
    right = np.minimum(edges[1:, None], px[None] + 1)
    m = np.clip(right - left, 0, None)
    return m / np.maximum(m.sum(1, keepdims=True), 1e-12)


def _window(n: int) -> tuple[int, int]:
    """The marked window of an axis of n pixels: [n * WINDOW, n - n * WINDOW) rounded to pixels."""
    a = int(round(n * WINDOW))
    return a, n - a


def _canon(luma: np.ndarray) -> np.ndarray:
    """[..., H, W] frame luma -> [..., 64, 64] canonical grid of its marked window."""
    h, w = luma.shape[-2:]
    my = _box_matrix(CANON, h, *_window(h))
    mx = _box_matrix(CANON, w, *_window(w))
    return my @ luma @ mx.T


def _uncanon(delta: np.ndarray, h: int, w: int) -> np.ndarray:
    """[64, 64] canonical change -> [h, w] frame change (box-resized into the window)."""
    (y0, y1), (x0, x1) = _window(h), _window(w)
    out = np.zeros((h, w))
    my = _box_matrix(y1 - y0, CANON)
    mx = _box_matrix(x1 - x0, CANON)
    out[y0:y1, x0:x1] = my @ delta @ mx.T
    return out


def _luma(frames: np.ndarray) -> np.ndarray:
    f = frames.astype(np.float64)
    return f[..., 0] * 0.299 + f[..., 1] * 0.587 + f[..., 2] * 0.114


def _check_video(frames, name='frames') -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not frames.shape[0]:
        raise ValueError(
            f'{name} must be uint8 [T, H, W, 3] with T >= 1, got {frames.dtype} '
            f'{frames.shape}; convert float [-1, 1] frames with io.video.to_uint8.'
        )
    if min(frames.shape[1:3]) < 32:
        raise ValueError(
            f'{name} are {frames.shape[1]}x{frames.shape[2]}; the watermark needs '
            'frames of at least 32x32 (upscale first).'
        )
    return frames


# ---------------------------------------------------------------- embed
def _dither() -> np.ndarray:
    """[N_BITS] lattice offsets: STEP / 4 or 3 STEP / 4 (key-chosen), so a projection of 0 (a
    flat, textureless window) sits halfway between a bit's two lattices and fits neither. A
    uniform dither let flat areas fit ~2/pi of every bit and win the crop search."""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(KEY + b'dither').digest()[:8], 'big'))
    if not UNIFORM_DITHER:
        return rng.choice([0.25, 0.75], N_BITS) * STEP
    return rng.uniform(0, STEP, N_BITS)


def _quantize(p: np.ndarray, bits01: np.ndarray) -> np.ndarray:
    """Nearest point of bit b's lattice STEP * Z + dither + b * STEP / 2 (dither modulation)."""
    off = _dither() + bits01 * STEP / 2
    return np.round((p - off) / STEP) * STEP + off


def embed(frames, model_id: int, user_key: int = 0) -> np.ndarray:
    """uint8 [T, H, W, 3] (or [B, T, H, W, 3]) -> the same frames carrying the mark. The change
    has a budget per video, not per frame: frames whose projections sit near their lattice need
    less than the cap, and what they leave goes to the frames that need more (`_frame_caps`)."""
    frames = np.asarray(frames)
    if frames.ndim == 5:
        return np.stack([embed(v, model_id, user_key) for v in frames])
    frames = _check_video(frames)
    bits01 = (_codeword(model_id, user_key) > 0).astype(np.float64)
    first = [_embed_frame(f, bits01, _FRAME_TOP) for f in frames]
    cap = _frame_caps(np.array([r for _, r, _ in first]))
    out = np.empty_like(frames)
    for i, (marked, _, peak) in enumerate(first):
        # A frame whose change never passed the cap is what embedding under the cap gives.
        out[i] = (
            marked if peak <= cap or cap >= _FRAME_TOP else _embed_frame(frames[i], bits01, cap)[0]
        )
    return out


def _frame_caps(need: np.ndarray) -> float:
    """The common cap c on each frame's RMS change (RGB, as written) such that the video's mean
    square change, mean(min(need, c)^2), is the budget MAX_RMS^2 (c at most FRAME_OVER x
    MAX_RMS), where need [T] is the RMS each frame's change took under that ceiling."""
    if np.mean(need**2) <= MAX_RMS**2:
        return _FRAME_TOP
    n = np.sort(need)
    total = len(n) * MAX_RMS**2
    below = 0.0  # sum of squares of the frames kept under c
    for k in range(len(n)):
        c = np.sqrt((total - below) / (len(n) - k))
        if c <= n[k]:
            return float(min(c, _FRAME_TOP))
        below += n[k] ** 2
    return _FRAME_TOP


def _embed_frame(frame: np.ndarray, bits01: np.ndarray, cap: float):
    """One frame: (uint8 [H, W, 3] marked, RMS of its change, the largest RMS any pass reached
    before capping), RMS over pixels and channels of the frame as written (after rounding and
    clipping to [0, 255]). PASSES passes re-measure that result and move the projections the rest
    of the way; the change is scaled back until its RMS is at most `cap`. Measured as written, a
    change that clipping cancels (a darkening of black pixels) costs nothing, so dark frames can
    spend it elsewhere; a cap on the intended change left their PSNR near 41 dB."""
    _, owner, signs = _layout()
    h, w, _ = frame.shape
    base = frame.astype(np.float64)

    def written(res):
        """The frame as written with the luma change res, and the RMS of its change."""
        cur = np.clip(np.round(base + res[..., None] * _COLOR), 0, 255)
        return cur, float(np.sqrt(np.mean((cur - base) ** 2)))

    res = np.zeros((h, w))
    cur, rms, peak = base, 0.0, 0.0  # (no change: the frame itself)
    for _ in range(PASSES):
        proj = _projections(_analysis(_canon(_luma(cur))))
        move = _quantize(proj, bits01) - proj  # [N_BITS], |move| <= STEP / 2
        if np.abs(move).max() < 0.05 * STEP:
            break
        res += _uncanon(_synthesis(signs * move[owner]), h, w)
        cur, rms = written(res)
        peak = max(peak, rms)
        for _ in range(8):  # clipped pixels do not shrink with res: scale until under
            if rms <= cap * 1.001:
                break
            res *= cap / rms
            cur, rms = written(res)
    return cur.astype(np.uint8), rms, peak


# ---------------------------------------------------------------- detect
def _hypotheses(n: int):
    """[(coverage, offset)] of one axis: the observed n pixels are the window [offset, offset +
    coverage) of the marked frame (crops of up to WINDOW per side); identity first."""
    hyps = [(1.0, 0.0)]
    for c in _CROPS[1:]:
        hyps += [(c, o) for o in ((1 - c) / 2, 0.0, 1 - c)]
    return hyps


def _axis_matrices(n: int, hyps=None):
    """[H, K, n]: the first K = BAND[1] + 1 rows of the LL-DCT axis (`_ll_dct_matrix`; the band
    needs no more) of the box matrix reading the marked window under each hypothesis of an axis."""
    mats = []
    for c, o in _hypotheses(n) if hyps is None else hyps:
        full = n / c  # the marked frame's size in observed pixels
        a = int(round(full * WINDOW))
        lo, hi = a - o * full, full - a - o * full
        lo, hi = max(lo, 0.0), min(hi, float(n))  # (clamped: the window is inside by design)
        mats.append(_ll_dct_matrix()[: BAND[1] + 1] @ _box_matrix(CANON, n, lo, hi))
    return np.stack(mats)


@functools.lru_cache(maxsize=1)
def _band_projection() -> np.ndarray:
    """[K, K, N_BITS]: `_projections` of the band read from the first K x K LL-DCT coefficients."""
    k = BAND[1] + 1
    m = np.zeros((CANON // 2, CANON // 2, N_BITS))
    u, v = np.divmod(_layout()[0], CANON // 2)
    m[u, v] = _projection_matrix()
    return m[:k, :k]


def _phases(luma: np.ndarray, my: np.ndarray, mx: np.ndarray) -> np.ndarray:
    """Per-frame soft bits of every (gain, y hypothesis, x hypothesis): [G, T, Hy, Hx, N_BITS] in
    [-1, 1], + = bit 0 (the cosine of each projection's phase on its bit's lattice)."""
    luma, my, mx = (np.asarray(a, np.float32) for a in (luma, my, mx))  # (ample: STEP = 100)
    half = np.einsum('thw,bkw->tbhk', luma, mx, optimize=True)  # [T, Hx, H, K]
    t, hx, h, k = half.shape
    d = my.reshape(-1, h) @ np.moveaxis(half, 2, 0).reshape(h, -1)  # [Hy K, T Hx K] LL-DCT rows
    d = np.moveaxis(d.reshape(-1, k, t, hx, k), 2, 0)  # [T, Hy, K, Hx, K]
    d = np.ascontiguousarray(np.swapaxes(d, 2, 3)).reshape(t, -1, hx, k * k)
    proj = d @ _band_projection().reshape(k * k, N_BITS).astype(np.float32)  # [T, Hy, Hx, NB]
    gains = np.asarray(GAINS, np.float32)[:, None, None, None, None]
    phase = (proj[None] / gains - _dither().astype(np.float32)) * np.float32(2 * np.pi / STEP)
    return np.cos(phase).astype(np.float64)


def _fit(luma: np.ndarray, my: np.ndarray, mx: np.ndarray, frame_w: np.ndarray | None = None):
    """Soft bits and fit score of every (gain, y hypothesis, x hypothesis):
    ([G, Hy, Hx, N_BITS] in [-1, 1] with + = bit 0, [G, Hy, Hx]). The frames' soft bits are
    averaged with weights frame_w [T] (None: equal)."""
    phase = _phases(luma, my, mx)
    w = np.full(phase.shape[1], 1.0) if frame_w is None else np.asarray(frame_w, np.float64)
    soft = np.einsum('gtabn,t->gabn', phase, w / w.sum())
    score = np.abs(soft).mean(-1)  # every bit close to one of its two lattices
    return soft, score


def _frame_weights(phase: np.ndarray) -> np.ndarray:
    """[T, N_BITS] per-frame soft bits at one crop hypothesis -> [T] frame weights: the von Mises
    concentration kappa_t of each frame's phases about the decided bits (rho_t = their mean
    cosine, kappa ~ A1^-1(rho)), re-deciding the bits with the new weights FRAME_ITERS times.
    A re-encode's frames differ in quality (the first, an I-frame, has half the error of the P-
    and B-frames after the combination in robustness.py), so equal weights waste the best frame."""
    soft = phase.mean(0)
    kappa = np.ones(phase.shape[0])
    for _ in range(FRAME_ITERS):
        rho = np.clip((phase * np.sign(soft)).mean(-1), 0.05, 0.95)
        kappa = rho * (2 - rho**2) / (1 - rho**2)
        soft = kappa @ phase / kappa.sum()
    return kappa


def _refine(luma: np.ndarray, start, frame_w: np.ndarray | None = None):
    """Coordinate refinement (y, x, y, x) of one crop hypothesis in steps of 0.25% of the frame:
    start and result are (score, soft [N_BITS], gain, (cy, oy), (cx, ox))."""
    h, w = luma.shape[1:]
    best = start
    fine = np.arange(-REFINE, REFINE + 1) * 0.0025
    for axis in (0, 1, 0, 1):
        (c0, o0) = best[3 + axis]
        local = [
            (min(1.0, c0 + dc), o0 + do)
            for dc in fine
            for do in fine
            if 0.8 <= c0 + dc <= 1.0 and 0 <= o0 + do <= 1 - min(1.0, c0 + dc) + 1e-9
        ]
        if axis == 0:
            soft, score = _fit(
                luma, _axis_matrices(h, local), _axis_matrices(w, [best[4]]), frame_w
            )
        else:
            soft, score = _fit(
                luma, _axis_matrices(h, [best[3]]), _axis_matrices(w, local), frame_w
            )
        g, a, b = np.unravel_index(np.argmax(score), score.shape)
        if score[g, a, b] > best[0]:
            hyp = local[a if axis == 0 else b]
            best = (
                float(score[g, a, b]),
                soft[g, a, b],
                GAINS[g],
                hyp if axis == 0 else best[3],
                best[4] if axis == 0 else hyp,
            )
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
    return np.concatenate([p[0] for p in parts], 2), np.concatenate([p[1] for p in parts], 2)


def _search(luma: np.ndarray, fine: bool = True, top_k: int = TOP_K) -> list:
    """Crop hypotheses (score, soft [N_BITS], gain, (cy, oy), (cx, ox)), best fit first. The
    score's peak is about 0.5% wide in each parameter (the host's large low-frequency
    coefficients move with the window), so a grid coarse in both axes misses it: each axis is
    searched on the FINE grid against the coarse grid of the other, and the TOP_K best of those,
    at least SEPARATION apart, are refined (`_refine`), frames equally weighted."""
    h, w = luma.shape[1:]
    coarse_y, coarse_x = _hypotheses(h), _hypotheses(w)
    fine_h = _fine_hypotheses() if fine else None
    axis = {(h, 'coarse'): _axis_matrices(h), (w, 'coarse'): _axis_matrices(w)}
    if fine:
        axis.update({(h, 'fine'): _fine_axis_matrices(h), (w, 'fine'): _fine_axis_matrices(w)})
    entries = []  # (score, g, hyp_y, hyp_x, soft)
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
            soft, score = np.swapaxes(soft, 1, 2), np.swapaxes(score, 1, 2)
        per_geom = score.max(0)
        for flat in np.argsort(per_geom.ravel())[::-1][: top_k * 64]:
            a, b = np.unravel_index(flat, per_geom.shape)
            g = int(np.argmax(score[:, a, b]))
            entries.append((float(score[g, a, b]), g, ys[a], xs[b], soft[g, a, b]))
    entries.sort(key=lambda e: -e[0])
    out, starts = [], np.zeros((0, 4))
    for sc, g, hyp_y, hyp_x, soft_ab in entries:
        if len(out) == top_k:
            break
        geom = np.array([*hyp_y, *hyp_x])
        if len(starts) and (np.abs(starts - geom).max(1) < SEPARATION).any():
            continue  # a neighbour of a better start: refines to the same place
        starts = np.vstack([starts, geom])
        start = (sc, soft_ab, GAINS[g], hyp_y, hyp_x)
        out.append(_refine(luma, _rescored(luma, start, None) if len(sub) < len(luma) else start))
    return sorted(out, key=lambda c: -c[0])


def _rescored(luma: np.ndarray, cand, frame_w: np.ndarray):
    """A hypothesis with its score and soft bits under the frame weights frame_w."""
    h, w = luma.shape[1:]
    soft, score = _fit(luma, _axis_matrices(h, [cand[3]]), _axis_matrices(w, [cand[4]]), frame_w)
    g = GAINS.index(cand[2])
    return (float(score[g, 0, 0]), soft[g, 0, 0], cand[2], cand[3], cand[4])


def _weights_at(luma: np.ndarray, best) -> np.ndarray:
    """[T] frame weights (`_frame_weights`) at the crop hypothesis `best`."""
    h, w = luma.shape[1:]
    g = GAINS.index(best[2])
    phase = _phases(luma, _axis_matrices(h, [best[3]]), _axis_matrices(w, [best[4]]))
    return _frame_weights(phase[g, :, 0, 0])


def _soft_at(luma: np.ndarray, cand) -> np.ndarray:
    """[N_BITS] soft bits at one crop hypothesis, frames weighted by their fit there."""
    return _rescored(luma, cand, _weights_at(luma, cand))[1]


def detect(frames) -> Detection:
    """Reads the mark from uint8 [T, H, W, 3] frames (any size, any number of frames). First the
    coarse grid alone (13 x 13 crops, its QUICK_TOP_K best refined, QUICK_CANDIDATES decoded:
    enough for every single transform in robustness.py; QUICK_LIST flip patterns each); if no
    codeword is found, the fine search (`_search`) and the list decoder over its CANDIDATES best
    hypotheses (LIST patterns each). An unmarked video runs both: QUICK_CANDIDATES x QUICK_LIST +
    CANDIDATES x LIST = 1572 chances in 2^22 of a false codeword (0.037%)."""
    frames = _check_video(frames)
    luma = _luma(frames)  # [T, H, W]
    h, w = luma.shape[1:]
    if max(h, w) > DETECT_SIZE:  # the band is 4.5 cycles at most: area-resample it down
        scale = DETECT_SIZE / max(h, w)
        hs, ws = max(32, round(h * scale)), max(32, round(w * scale))
        luma = _box_matrix(hs, h) @ luma @ _box_matrix(ws, w).T
    # Most transforms leave the mark strong enough for the coarse grid: try it first (cheap).
    hit = _decode_first(
        luma, _candidates(luma, fine=False, top_k=QUICK_TOP_K), QUICK_CANDIDATES, QUICK_LIST
    )
    if hit is None:
        cands = _candidates(luma, fine=True, top_k=TOP_K)
        hit = _decode_first(luma, cands, CANDIDATES, LIST)
    if hit is not None:
        best, s_best, fixed, flips = hit
    else:
        best, s_best, fixed, flips = cands[0], _soft_at(luma, cands[0]), None, 0
    sc, _, gain, (cy, oy), (cx, ox) = best
    hard = (s_best < 0).astype(np.uint8)  # payload + check bits
    found = fixed is not None
    payload = fixed[:N_PAYLOAD] if found else None
    return Detection(
        found=found,
        model_id=_bits_int(payload[:16]) if found else None,
        user_key=_bits_int(payload[16:]) if found else None,
        bits=hard[:N_PAYLOAD],
        confidence=float(np.mean(np.abs(s_best))),
        score=sc,
        corrected=flips,
        crop=tuple(round(float(x), 4) for x in (cy, oy, cx, ox, gain)),
    )


def _candidates(luma: np.ndarray, fine: bool, top_k: int) -> list:
    """Crop hypotheses for the list decoder, best first: those of `_search`, then the same
    refined again with the frames weighted by how well they fit the best one (the weights are
    fixed during a search: re-weighting each hypothesis lets noise win it)."""
    first = _search(luma, fine=fine, top_k=top_k)
    fw = _weights_at(luma, first[0])
    second = sorted((_refine(luma, _rescored(luma, c, fw), fw) for c in first), key=lambda c: -c[0])
    cands, seen = [], set()
    for c in second + first:  # distinct crops only (refinements often meet at one point)
        key = tuple(int(round(float(x) / (FINE / 2))) for x in (*c[3], *c[4]))
        if key not in seen:
            seen.add(key)
            cands.append(c)
    return cands


def _decode_first(luma: np.ndarray, cands: list, n: int, size: int):
    """(hypothesis, soft bits, codeword, flips) of the first of n hypotheses whose bits decode
    with a list of `size` flip patterns (`_list_decode`), or None."""
    for cand in cands[:n]:
        s = _soft_at(luma, cand)
        fixed, flips = _list_decode((s < 0).astype(np.uint8), np.abs(s), size)
        if fixed is not None:
            return cand, s, fixed, flips
    return None


def _cheapest_flips(weights: np.ndarray, n: int) -> list:
    """The n cheapest sets of at most LIST_FLIPS indices into the ascending `weights`, cheapest
    total first, the empty set first: a best-first walk in which a set whose largest index is i
    has two successors (i + 1 added; i moved to i + 1), so each set is reached exactly once and
    never before a cheaper one."""
    out, heap = [()], [(float(weights[0]), (0,))]
    while heap and len(out) < n:
        cost, idx = heapq.heappop(heap)
        out.append(idx)
        i = idx[-1]
        if i + 1 < len(weights):
            if len(idx) < LIST_FLIPS:
                heapq.heappush(heap, (cost + weights[i + 1], idx + (i + 1,)))
            heapq.heappush(heap, (cost - weights[i] + weights[i + 1], idx[:-1] + (i + 1,)))
    return out


@functools.lru_cache(maxsize=1)
def _syndrome_columns() -> np.ndarray:
    """[N_BITS] int: the syndrome (N_CHECK bits as an int) a flip of each channel bit adds."""
    g, _ = _code()
    cols = [g[i] for i in range(N_PAYLOAD)] + list(np.eye(N_CHECK, dtype=np.uint8))
    return np.array([_bits_int(c) for c in cols], np.int64)


def _list_decode(hard: np.ndarray, reliability: np.ndarray, size: int = LIST):
    """(payload+check bits of a codeword, flips) or (None, 0): the first of the `size` most likely
    flip patterns (sets of at most LIST_FLIPS channel bits, least total reliability first: a
    wrong bit need not be among the least reliable few, only cheap) that makes the check bits
    match. An unmarked reading passes with probability about size / 2^N_CHECK."""
    syn = _bits_int(_check_bits(hard[:N_PAYLOAD]) ^ hard[N_PAYLOAD:])
    order = np.argsort(reliability, kind='stable')
    cols = _syndrome_columns()[order]
    for pat in _cheapest_flips(reliability[order], size):
        x = 0
        for j in pat:
            x ^= int(cols[j])
        if x == syn:
            fixed = hard.copy()
            fixed[order[list(pat)]] ^= 1
            return fixed, len(pat)
    return None, 0


def detect_file(path) -> Detection:
    """Reads a video (or image) file and detects the mark."""
    from sora_jax.io import video as video_io

    path = str(path)
    if path.lower().endswith(('.png', '.jpg', '.jpeg', '.webp')):
        return detect(np.asarray(Image.open(path).convert('RGB'))[None])
    return detect(video_io.read_video(path))


def psnr(a, b) -> float:
    """PSNR (dB) between two uint8 videos."""
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float('inf') if mse == 0 else float(10 * np.log10(255.0**2 / mse))
