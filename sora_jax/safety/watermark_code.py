"""The watermark's payload and its code: 32 payload bits (16-bit model id, 16-bit user key) and
22 check bits of a key-chosen affine binary code, 54 channel bits in all; and the list decoder
that recovers a codeword from a noisy reading.

A random affine code rather than a CRC: with 22 check bits a word that is not a mark passes with
probability 2^-22 per try, low enough for the detector to try a list of flip patterns at several
crop hypotheses and still keep false positives near 0.04% (`watermark_detect.detect`).
"""

from __future__ import annotations

import functools
import hashlib
import heapq

import numpy as np

N_PAYLOAD, N_CHECK = 32, 22
N_BITS = N_PAYLOAD + N_CHECK  # 54 channel bits
KEY = b'sora_jax watermark v1'  # seeds the code, the layout and the dither
LIST_FLIPS = 4  # channel bits a flip pattern of the list decoder changes at most
LIST = 600  # flip patterns the list decoder tries by default


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


def check_bits(payload: np.ndarray) -> np.ndarray:
    """[N_PAYLOAD] bits -> [N_CHECK] check bits."""
    g, c = _code()
    return ((payload.astype(np.int64) @ g + c) % 2).astype(np.uint8)


def _int_bits(value: int, n: int) -> np.ndarray:
    return np.array([(value >> (n - 1 - i)) & 1 for i in range(n)], np.uint8)


def bits_int(bits) -> int:
    """Bits, most significant first -> int."""
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


def codeword(model_id: int, user_key: int) -> np.ndarray:
    """[N_BITS] in {-1, +1}: payload, then check bits."""
    p = payload_bits(model_id, user_key)
    bits = np.concatenate([p, check_bits(p)])
    return bits.astype(np.float64) * 2 - 1


def cheapest_flips(weights: np.ndarray, n: int) -> list:
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
    return np.array([bits_int(c) for c in cols], np.int64)


def list_decode(hard: np.ndarray, reliability: np.ndarray, size: int = LIST):
    """(payload+check bits of a codeword, flips) or (None, 0): the first of the `size` most likely
    flip patterns that makes the check bits match. Patterns are sets of at most LIST_FLIPS channel
    bits, least total reliability first rather than the flips of the few least reliable bits:
    after a re-encode one wrong bit is often of middling reliability, which only a cost-ordered
    list reaches. An unmarked reading passes with probability about size / 2^N_CHECK."""
    syn = bits_int(check_bits(hard[:N_PAYLOAD]) ^ hard[N_PAYLOAD:])
    order = np.argsort(reliability, kind='stable')
    cols = _syndrome_columns()[order]
    for pat in cheapest_flips(reliability[order], size):
        x = 0
        for j in pat:
            x ^= int(cols[j])
        if x == syn:
            fixed = hard.copy()
            fixed[order[list(pat)]] ^= 1
            return fixed, len(pat)
    return None, 0
