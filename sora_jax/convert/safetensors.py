"""Lazy, torch-free reader for safetensors files and sharded folders.

The header (8-byte little-endian length + JSON) is parsed directly and tensors are returned as
read-only memory-mapped numpy views, so a 14B checkpoint streams tensor by tensor without ever
being copied whole. bfloat16 / float8 map to `ml_dtypes`.
"""

from __future__ import annotations

import glob
import json
import os
import struct

import ml_dtypes
import numpy as np

_ST_DTYPES = {
    'F64': np.float64,
    'F32': np.float32,
    'F16': np.float16,
    'BF16': ml_dtypes.bfloat16,
    'F8_E4M3': ml_dtypes.float8_e4m3fn,
    'F8_E5M2': ml_dtypes.float8_e5m2,
    'I64': np.int64,
    'I32': np.int32,
    'I16': np.int16,
    'I8': np.int8,
    'U8': np.uint8,
    'BOOL': np.bool_,
}


class SafetensorsFolder:
    """Lazy reader over a folder of safetensors: one file, or shards + `*.safetensors.index.json`.

    `get(key)` returns a read-only memory-mapped view (no copy, no torch); `shape`/`dtype` come
    from the headers alone.
    """

    def __init__(self, path: str):
        if os.path.isfile(path):
            files = [path]
        elif os.path.isdir(path):
            files = sorted(glob.glob(os.path.join(path, '*.safetensors')))
        else:
            raise ValueError(
                f'{path!r} does not exist; pass a folder of *.safetensors files '
                '(e.g. <wan>/text_encoder) or one .safetensors file.'
            )
        if not files:
            raise ValueError(f'No *.safetensors in {path!r} (found: {sorted(os.listdir(path))}).')
        index = (
            glob.glob(os.path.join(path, '*.safetensors.index.json')) if os.path.isdir(path) else []
        )
        if len(index) > 1:
            raise ValueError(f'Several index files in {path!r}: {index}; keep one.')
        self._entries: dict[str, tuple[str, dict]] = {}
        for f in files:
            for key, info in _read_header(f).items():
                if key in self._entries:
                    raise ValueError(f'Tensor {key!r} is in both {self._entries[key][0]} and {f}.')
                self._entries[key] = (f, info)
        if index:
            with open(index[0]) as fh:
                weight_map = json.load(fh)['weight_map']
            base = os.path.dirname(index[0])
            missing = {
                k
                for k, f in weight_map.items()
                if k not in self._entries
                or os.path.abspath(self._entries[k][0]) != os.path.abspath(os.path.join(base, f))
            }
            if missing:
                raise ValueError(
                    f'{index[0]} lists {len(missing)} tensors not found in its shards '
                    f'(e.g. {sorted(missing)[:5]}); the download is incomplete.'
                )
        self._maps: dict[str, np.memmap] = {}

    def keys(self) -> list[str]:
        return sorted(self._entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._entries[key][1]['shape'])

    def dtype(self, key: str) -> np.dtype:
        return np.dtype(_ST_DTYPES[self._entries[key][1]['dtype']])

    def get(self, key: str) -> np.ndarray:
        fname, info = self._entries[key]
        if fname not in self._maps:
            self._maps[fname] = np.memmap(fname, dtype=np.uint8, mode='r')
        start, end = info['data_offsets']
        base = info['_base']
        raw = self._maps[fname][base + start : base + end]
        return raw.view(self.dtype(key)).reshape(self.shape(key))


def _read_header(fname: str) -> dict[str, dict]:
    with open(fname, 'rb') as f:
        (n,) = struct.unpack('<Q', f.read(8))
        header = json.loads(f.read(n))
    header.pop('__metadata__', None)
    for key, info in header.items():
        if info['dtype'] not in _ST_DTYPES:
            raise ValueError(f'{fname}: tensor {key!r} has unsupported dtype {info["dtype"]}.')
        info['_base'] = 8 + n
    return header
