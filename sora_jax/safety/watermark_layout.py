"""Where the watermark's bits live, shared by the embedder and the detector.

A frame's luma, inside a window that leaves WINDOW of each side unmarked (so crops of up to 12.5%
a side keep all of it), is box-resized to a canonical 64x64 grid; one Haar level keeps its LL
band (32x32) and a 2D DCT of LL gives the coefficients. Each of the 54 channel bits owns one
key-chosen, key-signed coefficient of the band u + v in [1, 9] (half a cycle to 4.5 cycles across
the window). So low because re-encoded small copies keep it: after a resize to half size and
H.264 at CRF 28 this band keeps about twice the share of the mark's amplitude that a band of
higher frequencies does (docs/safety.md). A bit is carried by dither modulation: its
projection (the signed mean of its coefficients) sits on the lattice STEP * Z + dither, shifted
by STEP / 2 for a 1.

The box resize is exact area averaging, so an integer nearest-upscale of a marked frame (the
CLI's `display_scale`) reads exactly as the frame it was marked at.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np
import pywt
from scipy import fft as sfft

from sora_jax.safety.watermark_code import KEY, N_BITS

CANON = 64  # canonical analysis grid (pixels)
BAND = (1, 9)  # DCT indices u + v of the LL band (32 x 32) that carry bits
STEP = 120.0  # dither-modulation step of each bit's projection (LL-DCT units)
WINDOW = 0.125  # margin left unmarked on each side, so crops up to 12.5% keep it all


@functools.lru_cache(maxsize=1)
def layout():
    """(flat LL-DCT index per band coefficient [N], bit of each [N], sign of each [N])."""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(KEY).digest()[:8], 'big'))
    u, v = np.meshgrid(np.arange(CANON // 2), np.arange(CANON // 2), indexing='ij')
    s = (u + v).ravel()
    idx = np.flatnonzero((s >= BAND[0]) & (s <= BAND[1]))
    idx = rng.permutation(idx)
    owner = np.arange(idx.size) % N_BITS
    signs = rng.choice([-1.0, 1.0], idx.size)
    return idx, owner, signs


def analysis(canon: np.ndarray) -> np.ndarray:
    """[..., 64, 64] luma -> [..., N] band coefficients (Haar LL, then orthonormal DCT)."""
    ll = pywt.dwt2(canon, 'haar', axes=(-2, -1))[0]
    d = sfft.dctn(ll, axes=(-2, -1), norm='ortho')
    return d.reshape(*d.shape[:-2], -1)[..., layout()[0]]


def synthesis(coeffs: np.ndarray) -> np.ndarray:
    """[N] band coefficients -> [64, 64] luma (the adjoint of `analysis`: both orthonormal)."""
    d = np.zeros((CANON // 2) ** 2)
    d[layout()[0]] = coeffs
    ll = sfft.idctn(d.reshape(CANON // 2, CANON // 2), norm='ortho')
    return pywt.idwt2((ll, (None, None, None)), 'haar')


def projections(coeffs: np.ndarray) -> np.ndarray:
    """[..., N] -> [..., N_BITS]: mean signed coefficient of each bit's set."""
    return coeffs @ projection_matrix()


@functools.lru_cache(maxsize=1)
def projection_matrix() -> np.ndarray:
    """[N, N_BITS]: sign / count of a band coefficient in its bit's set (0 elsewhere)."""
    _, owner, signs = layout()
    m = np.zeros((owner.size, N_BITS))
    m[np.arange(owner.size), owner] = signs
    return m / np.bincount(owner, minlength=N_BITS)


@functools.lru_cache(maxsize=1)
def dither() -> np.ndarray:
    """[N_BITS] lattice offsets: STEP / 4 or 3 STEP / 4 (key-chosen), so a projection of 0 (a
    flat, textureless window) sits halfway between a bit's two lattices and fits neither; with
    offsets anywhere in [0, STEP) flat areas would fit some bits and win the detector's search."""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(KEY + b'dither').digest()[:8], 'big'))
    return rng.choice([0.25, 0.75], N_BITS) * STEP


@functools.lru_cache(maxsize=1)
def ll_dct_matrix() -> np.ndarray:
    """[32, 64]: one axis of `analysis` (Haar LL: pairs summed / sqrt 2, then the orthonormal
    DCT-II), so the band of a [64, 64] grid X is (A X A^T) at the band indices."""
    haar = np.zeros((CANON // 2, CANON))
    haar[np.arange(CANON // 2), 2 * np.arange(CANON // 2)] = 2**-0.5
    haar[np.arange(CANON // 2), 2 * np.arange(CANON // 2) + 1] = 2**-0.5
    return sfft.dct(np.eye(CANON // 2), axis=0, norm='ortho') @ haar


def box_matrix(n_out: int, n_in: int, lo: float = 0.0, hi: float | None = None) -> np.ndarray:
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


def window(n: int) -> tuple[int, int]:
    """The marked window of an axis of n pixels: [n * WINDOW, n - n * WINDOW) rounded to pixels."""
    a = int(round(n * WINDOW))
    return a, n - a


def canon(luma: np.ndarray) -> np.ndarray:
    """[..., H, W] frame luma -> [..., 64, 64] canonical grid of its marked window."""
    h, w = luma.shape[-2:]
    my = box_matrix(CANON, h, *window(h))
    mx = box_matrix(CANON, w, *window(w))
    return my @ luma @ mx.T


def uncanon(delta: np.ndarray, h: int, w: int) -> np.ndarray:
    """[64, 64] canonical change -> [h, w] frame change (box-resized into the window)."""
    (y0, y1), (x0, x1) = window(h), window(w)
    out = np.zeros((h, w))
    my = box_matrix(y1 - y0, CANON)
    mx = box_matrix(x1 - x0, CANON)
    out[y0:y1, x0:x1] = my @ delta @ mx.T
    return out


def luma(frames: np.ndarray) -> np.ndarray:
    """[..., 3] RGB -> [...] luma (BT.601 weights), float64."""
    f = frames.astype(np.float64)
    return f[..., 0] * 0.299 + f[..., 1] * 0.587 + f[..., 2] * 0.114


def check_video(frames, name='frames') -> np.ndarray:
    """uint8 [T, H, W, 3] with T >= 1 and frames of at least 32x32, or a ValueError."""
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
