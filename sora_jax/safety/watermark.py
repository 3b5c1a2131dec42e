"""Invisible video watermark: 32 payload bits (16-bit model id, 16-bit user key) in every frame.

    marked = embed(frames, model_id=0x1234, user_key=7)    # uint8 [T, H, W, 3] -> same
    det = detect(read_video('out.mp4'))                     # Detection(found, model_id, ...)

Where it lives: the luma of each frame, box-resized to a canonical 64x64 grid, one Haar level
(PyWavelets; the LL band, 32x32, which compression and resizing barely touch), then a 2D DCT of
LL (scipy). 48 bits (32 payload, 16 CRC) each own one or two key-chosen, key-signed DCT
coefficients of the 54 in the band u + v in [1, 9]: half a cycle to 4.5 cycles across the
marked window. So low because of re-encoded small copies: after a resize to half and H.264 at
CRF 28 a band u + v in [3, 20] kept 20-40% of the mark's amplitude; the low band keeps 35-70%
(a low-frequency mark also survives P-frames, whose motion-compensated prediction carries it
over). There are no sync bits: with the energy fixed by the PSNR budget, 48 channel bits instead
of 64 give each bit a third more energy (with the larger cap and the search below, the
combination in robustness.py went from 0.72 / 0.86 / 0.81 to 0.80 / 0.93 / 0.88 bit accuracy on
experiments/watermark_eval.py's shapes / natural / model clips; README).
A bit is carried by dither modulation: its projection is moved to the nearest point of that
bit's lattice STEP * Z + dither (+ STEP / 2 for a 1).

Embedding re-measures: per frame, 3 passes quantise the projections of the uint8 result
(rounding, clipping, the box resize back to the frame size) and correct them. The change is
added equally to R, G and B (luma only) and capped at an RMS of MAX_RMS = 2.5 grey levels, so
PSNR >= 40 dB against the unmarked frames (40.1 at the cap). Every frame carries the same mark.

Detection averages each bit's soft decision over all frames (the mark adds up), scores 13 x 13
crop hypotheses (the frame is a 80-100% window of the marked one at its left, centre or right /
top, centre or bottom) by how close every bit sits to one of its two lattices, refines the
TOP_K = 6 best in 0.25% steps and keeps the best fit. Then each frame is weighted by how well it
fits there (the concentration of its phases about the decided bits: a re-encode's first frame, an
I-frame, has about half the error of its P- and B-frames) and the search runs again with those
weights held fixed (re-weighting inside each hypothesis let noise win the search); the bits are
read at its best crop with the weights re-estimated there. Measured on the combination in
robustness.py (watermark_eval.py's 8 + 8 clips): shapes 0.80 -> 0.81, natural 0.93 -> 0.98;
8 + 8 other clips (shapes seed 9, natural 300-307): 0.79 -> 0.79, 0.91 -> 0.98; shapes seed 5,
natural 600-607: 0.79 -> 0.81, 0.88 -> 0.92 (README). Only
gain 1 is tried: searching contrast too (0.85-1.05) gave the noise more hypotheses to win with
(combination 0.79 / 0.77 -> 0.86 / 0.83 without it, 8 + 8 clips). If the CRC-16 fails it flips
up to the CHASE = 4 least reliable bits; `found` needs the CRC to match, which an unmarked video
does with probability ~2^CHASE / 2^16 (measured rate: experiments/watermark_eval.py, README).

Frame size: the box resize makes a mark applied at 32x32 and nearest-upscaled (the CLI's
`display_scale`) read exactly as at 32x32; any other written size is resampled to 64x64.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib

import numpy as np
import pywt
from PIL import Image
from scipy import fft as sfft

CANON = 64                  # canonical analysis grid (pixels)
BAND = (1, 9)               # DCT indices u + v of the LL band (32 x 32) that carry bits
N_PAYLOAD, N_CRC = 32, 16
N_BITS = N_PAYLOAD + N_CRC  # 48 channel bits
STEP = 100.0                # dither-modulation step of each bit's projection (LL-DCT units)
GAINS = (1.0,)              # contrast gains the detector tries (see above)
CHASE = 4                   # least reliable bits the CRC-checked decoder may flip
MAX_RMS = 2.5               # cap on the RMS change per pixel (grey levels): PSNR >= 40.1 dB
PASSES = 3
KEY = b'sora_jax watermark v1'
_CROPS = (1.0, 0.975, 0.95, 0.925, 0.9, 0.875)
TOP_K = 6                   # coarse crop hypotheses the detector refines
UNIFORM_DITHER = False
REFINE = 4                  # refinement range: +-REFINE steps of 0.25% in coverage and offset
FRAME_ITERS = 3             # re-decisions of the frame weights (_frame_weights)
WINDOW = 0.125              # margin left unmarked on each side, so crops up to 12.5% keep it all


@dataclasses.dataclass(frozen=True)
class Detection:
    found: bool                # CRC matched at the best crop hypothesis
    model_id: int | None       # 16-bit model id (None when not found)
    user_key: int | None       # 16-bit user key
    bits: np.ndarray           # the 32 payload bits as decoded (hard decisions, before Chase)
    confidence: float          # mean |soft decision| of the 48 bits (1 = every bit on its lattice)
    score: float               # the search's fit score (the same statistic at the best hypothesis)
    corrected: int             # payload/CRC bits flipped by the Chase decoder
    crop: tuple                # (coverage y, offset y, coverage x, offset x) of the best hypothesis

    def summary(self) -> str:
        if not self.found:
            return (f'no watermark found (reliability {self.confidence:.2f})')
        return (f'watermark found: model id 0x{self.model_id:04x}, user key {self.user_key} '
                f'(reliability {self.confidence:.2f}, '
                f'{self.corrected} bits corrected)')


# ---------------------------------------------------------------- payload
def model_id_from(text: str | bytes) -> int:
    """16-bit model id from a checkpoint hash (or any identifying string)."""
    data = text.encode() if isinstance(text, str) else bytes(text)
    return int.from_bytes(hashlib.sha256(data).digest()[:2], 'big')


def _crc16(bits: np.ndarray) -> np.ndarray:
    """CRC-16/CCITT of a bit array (MSB first) -> 16 bits."""
    reg = 0xFFFF
    for b in bits:
        top = ((reg >> 15) & 1) ^ int(b)
        reg = (reg << 1) & 0xFFFF
        if top:
            reg ^= 0x1021
    return np.array([(reg >> (15 - i)) & 1 for i in range(16)], np.uint8)


def _int_bits(value: int, n: int) -> np.ndarray:
    return np.array([(value >> (n - 1 - i)) & 1 for i in range(n)], np.uint8)


def _bits_int(bits) -> int:
    return int(''.join(str(int(b)) for b in bits), 2)


def payload_bits(model_id: int, user_key: int) -> np.ndarray:
    """The 32 payload bits: model id (16) then user key (16)."""
    for name, v in (('model_id', model_id), ('user_key', user_key)):
        if not isinstance(v, (int, np.integer)) or not 0 <= v < 2 ** 16:
            raise ValueError(f'{name}={v!r} must be an int in [0, 65535] (16 bits); derive a model '
                             'id with watermark.model_id_from(checkpoint_hash).')
    return np.concatenate([_int_bits(model_id, 16), _int_bits(user_key, 16)])


def _codeword(model_id: int, user_key: int) -> np.ndarray:
    """[N_BITS] in {-1, +1}: payload, CRC."""
    p = payload_bits(model_id, user_key)
    bits = np.concatenate([p, _crc16(p)])
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
    haar[np.arange(CANON // 2), 2 * np.arange(CANON // 2)] = 2 ** -0.5
    haar[np.arange(CANON // 2), 2 * np.arange(CANON // 2) + 1] = 2 ** -0.5
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
        raise ValueError(f'{name} must be uint8 [T, H, W, 3] with T >= 1, got {frames.dtype} '
                         f'{frames.shape}; convert float [-1, 1] frames with io.video.to_uint8.')
    if min(frames.shape[1:3]) < 32:
        raise ValueError(f'{name} are {frames.shape[1]}x{frames.shape[2]}; the watermark needs '
                         'frames of at least 32x32 (upscale first).')
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
    """uint8 [T, H, W, 3] (or [B, T, H, W, 3]) -> the same frames carrying the mark."""
    frames = np.asarray(frames)
    if frames.ndim == 5:
        return np.stack([embed(v, model_id, user_key) for v in frames])
    frames = _check_video(frames)
    bits01 = (_codeword(model_id, user_key) > 0).astype(np.float64)
    _, owner, signs = _layout()
    t, h, w, _ = frames.shape
    out = np.empty_like(frames)
    for i in range(t):
        base = frames[i].astype(np.float64)
        res = np.zeros((h, w))
        for _ in range(PASSES):
            cur = np.clip(np.round(base + res[..., None]), 0, 255)
            proj = _projections(_analysis(_canon(_luma(cur))))
            move = _quantize(proj, bits01) - proj            # [N_BITS], |move| <= STEP / 2
            if np.abs(move).max() < 0.05 * STEP:
                break
            res += _uncanon(_synthesis(signs * move[owner]), h, w)
            rms = np.sqrt(np.mean(res ** 2))
            if rms > MAX_RMS:
                res *= MAX_RMS / rms
        out[i] = np.clip(np.round(base + res[..., None]), 0, 255).astype(np.uint8)
    return out


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
    for c, o in (_hypotheses(n) if hyps is None else hyps):
        full = n / c                              # the marked frame's size in observed pixels
        a = int(round(full * WINDOW))
        lo, hi = a - o * full, full - a - o * full
        lo, hi = max(lo, 0.0), min(hi, float(n))  # (clamped: the window is inside by design)
        mats.append(_ll_dct_matrix()[:BAND[1] + 1] @ _box_matrix(CANON, n, lo, hi))
    return np.stack(mats)


def _phases(luma: np.ndarray, my: np.ndarray, mx: np.ndarray) -> np.ndarray:
    """Per-frame soft bits of every (gain, y hypothesis, x hypothesis): [G, T, Hy, Hx, N_BITS] in
    [-1, 1], + = bit 0 (the cosine of each projection's phase on its bit's lattice)."""
    half = luma[:, None] @ np.swapaxes(mx, 1, 2)[None]           # [T, Hx, H, K]
    d = my[None, :, None] @ half[:, None]                        # [T, Hy, Hx, K, K] LL-DCT
    u, v = np.divmod(_layout()[0], CANON // 2)
    d = d[..., u, v]                                             # [T, Hy, Hx, N] band
    proj = _projections(d)                                       # [T, Hy, Hx, N_BITS]
    gains = np.asarray(GAINS)[:, None, None, None, None]
    return np.cos(2 * np.pi * (proj[None] / gains - _dither()) / STEP)


def _fit(luma: np.ndarray, my: np.ndarray, mx: np.ndarray, frame_w: np.ndarray | None = None):
    """Soft bits and fit score of every (gain, y hypothesis, x hypothesis):
    ([G, Hy, Hx, N_BITS] in [-1, 1] with + = bit 0, [G, Hy, Hx]). The frames' soft bits are
    averaged with weights frame_w [T] (None: equal)."""
    phase = _phases(luma, my, mx)
    w = np.full(phase.shape[1], 1.0) if frame_w is None else np.asarray(frame_w, np.float64)
    soft = np.einsum('gtabn,t->gabn', phase, w / w.sum())
    score = np.abs(soft).mean(-1)       # every bit close to one of its two lattices
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
        kappa = rho * (2 - rho ** 2) / (1 - rho ** 2)
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
        local = [(min(1.0, c0 + dc), o0 + do) for dc in fine for do in fine
                 if 0.8 <= c0 + dc <= 1.0 and 0 <= o0 + do <= 1 - min(1.0, c0 + dc) + 1e-9]
        if axis == 0:
            soft, score = _fit(luma, _axis_matrices(h, local), _axis_matrices(w, [best[4]]),
                               frame_w)
        else:
            soft, score = _fit(luma, _axis_matrices(h, [best[3]]), _axis_matrices(w, local),
                               frame_w)
        g, a, b = np.unravel_index(np.argmax(score), score.shape)
        if score[g, a, b] > best[0]:
            hyp = local[a if axis == 0 else b]
            best = (float(score[g, a, b]), soft[g, a, b], GAINS[g],
                    hyp if axis == 0 else best[3], best[4] if axis == 0 else hyp)
    return best


def _search(luma: np.ndarray, frame_w: np.ndarray | None = None):
    """The best crop hypothesis (score, soft [N_BITS], gain, (cy, oy), (cx, ox)): the coarse grid,
    then `_refine` of its TOP_K best, frames averaged with weights frame_w."""
    h, w = luma.shape[1:]
    hy, hx = _hypotheses(h), _hypotheses(w)
    soft, score = _fit(luma, _axis_matrices(h), _axis_matrices(w), frame_w)   # [G, Hy, Hx, ...]
    per_geom = score.max(0)                                  # [Hy, Hx]
    best = None
    for flat in np.argsort(per_geom.ravel())[::-1][:TOP_K]:
        a, b = np.unravel_index(flat, per_geom.shape)
        g = int(np.argmax(score[:, a, b]))
        cand = _refine(luma, (float(score[g, a, b]), soft[g, a, b], GAINS[g], hy[a], hx[b]),
                       frame_w)
        if best is None or cand[0] > best[0]:
            best = cand
    return best


def _weights_at(luma: np.ndarray, best) -> np.ndarray:
    """[T] frame weights (`_frame_weights`) at the crop hypothesis `best`."""
    h, w = luma.shape[1:]
    g = GAINS.index(best[2])
    phase = _phases(luma, _axis_matrices(h, [best[3]]), _axis_matrices(w, [best[4]]))
    return _frame_weights(phase[g, :, 0, 0])


def detect(frames) -> Detection:
    """Reads the mark from uint8 [T, H, W, 3] frames (any size, any number of frames): a coarse
    search over crop hypotheses and contrast gains, then a finer one around each of the TOP_K best
    coarse hypotheses (one refined alone locks onto noise when the mark is weak); then the frames
    are weighted by how well they fit there and the search is run again with those weights (the
    weights are fixed during a search: re-weighting each hypothesis lets noise win it)."""
    frames = _check_video(frames)
    luma = _luma(frames)                                    # [T, H, W]
    h, w = luma.shape[1:]
    best = _search(luma)
    fw = _weights_at(luma, best)
    best = _search(luma, fw)
    fw = _weights_at(luma, best)
    sc, _, gain, (cy, oy), (cx, ox) = best
    s = _fit(luma, _axis_matrices(h, [(cy, oy)]), _axis_matrices(w, [(cx, ox)]), fw)[0][
        GAINS.index(gain), 0, 0]
    hard = (s < 0).astype(np.uint8)                          # payload + CRC
    fixed, flips = _chase(hard, np.abs(s))
    found = fixed is not None
    payload = fixed[:N_PAYLOAD] if found else None
    return Detection(found=found,
                     model_id=_bits_int(payload[:16]) if found else None,
                     user_key=_bits_int(payload[16:]) if found else None,
                     bits=hard[:N_PAYLOAD], confidence=float(np.mean(np.abs(s))), score=sc,
                     corrected=flips,
                     crop=tuple(round(float(x), 4) for x in (cy, oy, cx, ox, gain)))


def _chase(hard: np.ndarray, reliability: np.ndarray, weakest: int = CHASE):
    """(payload+CRC bits whose CRC matches, flips) trying all flips of the `weakest` bits."""
    order = np.argsort(reliability)[:weakest]
    best = None
    for m in range(2 ** weakest):
        cand = hard.copy()
        flips = [order[k] for k in range(weakest) if (m >> k) & 1]
        cand[flips] ^= 1
        if np.array_equal(_crc16(cand[:N_PAYLOAD]), cand[N_PAYLOAD:]):
            if best is None or len(flips) < best[1]:
                best = (cand, len(flips))
    return best if best is not None else (None, 0)


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
    return float('inf') if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))
