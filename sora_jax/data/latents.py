"""Pre-encoded latents: encode a dataset once with a frozen VAE, train the DiT on the result.

`encode_dataset` writes, per split, one array_record shard per JAX process (process i of n
encodes records i, i + n, ... of the split: the work is split, not repeated). A record is
plain data, never a pickle, so a cache shared in a bucket cannot run code when read:

  MAGIC (8 bytes) | header length (uint32 LE) | header (UTF-8 JSON) | latents (raw bytes, C order)
  header = {"shape": [T', h, w, C], "dtype": "<f4", "id": int, "caption_en": str, "caption_es": str}

`LatentSource` reads a split back (all its shards) as a random-access source for
`data/pipeline.py` (which then yields `latents` instead of `video`); it also lists every
record's latent size (`record_sizes`, from the shards' JSON index) so the pipeline forms its
size buckets without reading records. Per-channel statistics of the train latents (merged
from per-shard sums) are stored beside the records (`stats.json`) and used to normalise
latents to unit variance for the DiT.

  out_dir/manifest.json                     {"format": 2, "num_shards": n, "splits": [...]}
  out_dir/<split>-<i>-of-<n>.array_record   records of process i
  out_dir/<split>-<i>-of-<n>.json           {"sizes": [[T', h, w], ...], "sum", "sumsq", "vectors"}
  out_dir/stats.json, out_dir/DONE

The cache directory is keyed by the dataset's identity and the VAE checkpoint, so changing
either re-encodes. A half-written cache (no `DONE` marker) or one in the old pickled format is
rebuilt with a warning; reading an old pickled record file directly is a ValueError. Process 0
writes `DONE` after a barrier (`jax.experimental.multihost_utils.sync_global_devices`), once
every process has written its shard.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import shutil
import struct
from typing import Any, Callable, Sequence

import numpy as np
from absl import logging
from array_record.python import array_record_data_source, array_record_module
from etils import epath
from tqdm import tqdm

from sora_jax.io.video import to_float

FORMAT = 2  # 1: pickled dicts in one file per split (no manifest)
MAGIC = b'\x00SJLAT2\n'  # not a pickle opcode: pickle.loads fails on the first byte
_HEADER_LEN = struct.Struct('<I')


def encode_record(
    latents: np.ndarray, example_id: int, caption_en: Any = b'', caption_es: Any = b''
) -> bytes:
    """One latent record (see the module docstring): float32 latents [T', h, w, C] + metadata."""
    z = np.ascontiguousarray(latents, dtype='<f4')
    header = json.dumps(
        {
            'shape': list(z.shape),
            'dtype': '<f4',
            'id': int(example_id),
            'caption_en': _text(caption_en),
            'caption_es': _text(caption_es),
        }
    )
    header = header.encode('utf-8')
    return MAGIC + _HEADER_LEN.pack(len(header)) + header + z.tobytes()


def decode_record(raw: bytes, where: str = 'record') -> dict:
    """The inverse of `encode_record`: {'latents' f32 [T',h,w,C], 'id', 'caption_en/es' bytes}."""
    if not raw.startswith(MAGIC):
        old = raw[:1] == b'\x80'  # pickle protocol >= 2
        raise ValueError(
            f'{where} is not a sora_jax latent record'
            + (
                ' (it is a pickled dict from an older version of the latent cache; it is not '
                'unpickled, since a pickle read from a shared directory can run code)'
                if old
                else ''
            )
            + '. Delete the cache directory and rerun: it is encoded again.'
        )
    start = len(MAGIC) + _HEADER_LEN.size
    (n,) = _HEADER_LEN.unpack_from(raw, len(MAGIC))
    header = json.loads(raw[start : start + n].decode('utf-8'))
    z = np.frombuffer(raw, np.dtype(header['dtype']), offset=start + n)
    return {
        'latents': z.reshape(header['shape']).astype(np.float32),  # a writable copy
        'id': np.int64(header['id']),
        'caption_en': header['caption_en'].encode('utf-8'),
        'caption_es': header['caption_es'].encode('utf-8'),
    }


def _text(value: Any) -> str:
    if isinstance(value, np.ndarray):
        value = value.item()
    return value.decode('utf-8') if isinstance(value, bytes) else str(value)


class LatentSource:
    """Random-access source over an encoded split (len / getitem -> dict), all shards in order.

    With `mean`/`std` (per channel), latents come back normalised: (z - mean) / std.
    `sizes` ([T', h, w] per record, from the shard indexes) serves `record_sizes()`.
    """

    def __init__(self, paths: str | Sequence[str], mean=None, std=None, sizes=None):
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        for p in paths:
            if not os.path.isfile(p):
                raise ValueError(f'latent records {p!r} do not exist; encode the dataset first.')
        self.paths = [os.fspath(p) for p in paths]
        self.mean = None if mean is None else np.asarray(mean, np.float32)
        self.std = None if std is None else np.asarray(std, np.float32)
        self.sizes = None if sizes is None else [tuple(int(d) for d in s) for s in sizes]
        self._src = array_record_data_source.ArrayRecordDataSource(self.paths)
        if len(self._src):  # fail at open, not mid-training, on an old pickled file
            decode_record(self._src[0], f'record 0 of {self.paths}')

    def __len__(self) -> int:
        return len(self._src)

    def __getitem__(self, i: int) -> dict:
        rec = decode_record(self._src[i], f'record {i} of {self.paths}')
        if self.mean is not None:
            rec['latents'] = (rec['latents'] - self.mean) / self.std
        return rec

    def record_sizes(self) -> list[tuple[int, ...]]:
        """(T', h, w) of every record, in order (read from the shard indexes)."""
        if self.sizes is None:
            return [tuple(self[i]['latents'].shape[:3]) for i in range(len(self))]
        return self.sizes

    def __getstate__(self):  # picklable for grain worker processes
        return {'paths': self.paths, 'mean': self.mean, 'std': self.std, 'sizes': self.sizes}

    def __setstate__(self, state):
        self.__init__(state['paths'], state['mean'], state['std'], state['sizes'])


def cache_dir(root: str, data_key: Any, vae_path: str, vae_step: int) -> str:
    """Directory for the latents of (dataset identity, VAE checkpoint)."""
    if isinstance(data_key, dict) and data_key.get('exclude'):  # opt-outs edited in place re-encode
        text = epath.Path(data_key['exclude']).read_bytes()
        data_key = {**data_key, 'exclude_sha256': hashlib.sha256(text).hexdigest()}
    vae = os.fspath(vae_path)  # a gs:// checkpoint as it is; a local one made absolute
    ident = json.dumps(
        [data_key, vae if '://' in vae else os.path.abspath(vae), int(vae_step)],
        sort_keys=True,
        default=str,
    )
    return os.path.join(root, 'latents', hashlib.sha1(ident.encode()).hexdigest()[:16])


def _sync_processes(name: str) -> None:
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _complete(out_dir: str) -> bool:
    try:
        with open(os.path.join(out_dir, 'manifest.json')) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    return manifest.get('format') == FORMAT and os.path.isfile(os.path.join(out_dir, 'DONE'))


def _shard_name(split: str, index: int, count: int) -> str:
    return f'{split}-{index:05d}-of-{count:05d}'


def encode_dataset(
    sources: dict[str, Any],
    encode: Callable[[np.ndarray], np.ndarray],
    out_dir: str,
    *,
    batch_size: int = 8,
    process_index: int | None = None,
    process_count: int | None = None,
    barrier: Callable[[str], None] | None = None,
) -> str:
    """Encodes every split (batches of same-size clips) unless `out_dir` is already complete.

    Every process calls it: process i of n (default `jax.process_index()` / `process_count()`)
    encodes records i, i + n, ... of each split into its own shard; `barrier(name)` (default
    `sync_global_devices` when n > 1) orders the steps; process 0 merges the statistics, writes
    `DONE` and moves the finished directory into place. `out_dir` must be on a filesystem all
    processes share. Returns out_dir; open splits with `open_split(out_dir, split, mean, std)`.
    """
    import jax

    index = jax.process_index() if process_index is None else int(process_index)
    count = jax.process_count() if process_count is None else int(process_count)
    if not 0 <= index < count:
        raise ValueError(f'process_index {index} must be in [0, process_count={count}).')
    sync = barrier or _sync_processes
    tmp = out_dir + '.tmp'
    sync('latents:check')  # every process decides before any process changes the directory
    if _complete(out_dir):
        return out_dir
    if index == 0:
        if os.path.isdir(out_dir):
            old = os.path.isfile(os.path.join(out_dir, 'DONE'))
            logging.warning(
                'Rebuilding latent cache %s: %s',
                out_dir,
                'written by an older version (pickled records, not read)'
                if old
                else 'incomplete (no DONE marker)',
            )
            shutil.rmtree(out_dir)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    sync('latents:tmp_ready')
    for split, src in sources.items():
        name = _shard_name(split, index, count)
        index_data = _encode_split(
            src,
            encode,
            os.path.join(tmp, name + '.array_record'),
            range(index, len(src), count),
            batch_size,
            desc=f'encoding {split} ({index + 1}/{count})',
        )
        with open(os.path.join(tmp, name + '.json'), 'w') as f:
            json.dump(index_data, f)
    sync('latents:shards_written')
    if index == 0:
        stats = None
        if 'train' in sources:
            stats = _merge_stats(
                [
                    _read_json(os.path.join(tmp, _shard_name('train', i, count) + '.json'))
                    for i in range(count)
                ]
            )
        with open(os.path.join(tmp, 'stats.json'), 'w') as f:
            json.dump(stats, f)
        with open(os.path.join(tmp, 'manifest.json'), 'w') as f:
            json.dump({'format': FORMAT, 'num_shards': count, 'splits': sorted(sources)}, f)
        open(os.path.join(tmp, 'DONE'), 'w').close()
        os.replace(tmp, out_dir)  # atomic: a cache directory is complete or absent
    sync('latents:done')
    return out_dir


def load_stats(out_dir: str) -> dict[str, list[float]]:
    """Per-channel {'mean': [...], 'std': [...]} of the raw train latents."""
    return _read_json(os.path.join(out_dir, 'stats.json'))


def open_split(out_dir: str, split: str, mean=None, std=None) -> LatentSource:
    """All shards of `split` in a complete cache, as one LatentSource."""
    if not _complete(out_dir):
        raise ValueError(
            f'{out_dir!r} is not a complete latent cache of format {FORMAT} (no '
            'manifest.json / DONE, or an older pickled cache); encode it with '
            'encode_dataset (training does this on its own).'
        )
    manifest = _read_json(os.path.join(out_dir, 'manifest.json'))
    if split not in manifest['splits']:
        raise ValueError(
            f'latent cache {out_dir!r} has no split {split!r} (splits: {manifest["splits"]}).'
        )
    names = [_shard_name(split, i, manifest['num_shards']) for i in range(manifest['num_shards'])]
    sizes = [s for n in names for s in _read_json(os.path.join(out_dir, n + '.json'))['sizes']]
    return LatentSource(
        [os.path.join(out_dir, n + '.array_record') for n in names], mean, std, sizes
    )


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def _merge_stats(shards: list[dict]) -> dict[str, list[float]]:
    """Per-channel mean/std of all latent vectors from per-shard sums (float64)."""
    parts = [s for s in shards if s['vectors']]
    n = sum(s['vectors'] for s in parts)
    s1 = sum(np.asarray(s['sum'], np.float64) for s in parts)
    s2 = sum(np.asarray(s['sumsq'], np.float64) for s in parts)
    mean = s1 / max(n, 1)
    std = np.sqrt(np.maximum(s2 / max(n, 1) - mean**2, 1e-12))
    return {'mean': np.atleast_1d(mean).tolist(), 'std': np.atleast_1d(std).tolist()}


def _encode_split(src, encode, path: str, indices, batch_size: int, desc: str) -> dict:
    """Encodes src[i] for i in `indices` into the array_record file `path`; returns its index:
    {'sizes': [[T', h, w] per record], 'sum', 'sumsq' (per channel), 'vectors'}."""
    writer = array_record_module.ArrayRecordWriter(path, 'group_size:1')
    pending: dict[tuple, list] = collections.OrderedDict()
    s1 = s2 = 0.0
    vectors = 0
    sizes: list[list[int]] = []

    def flush(key):
        nonlocal s1, s2, vectors
        items = pending.pop(key)
        lat = np.asarray(
            encode(np.stack([to_float(np.asarray(e['video'])) for e in items])), np.float32
        )
        flat = lat.reshape(-1, lat.shape[-1]).astype(np.float64)
        s1 = s1 + flat.sum(0)
        s2 = s2 + (flat**2).sum(0)
        vectors += flat.shape[0]
        for e, z in zip(items, lat):
            writer.write(
                encode_record(z, int(e['id']), e.get('caption_en', b''), e.get('caption_es', b''))
            )
            sizes.append(list(z.shape[:3]))

    for i in tqdm(indices, desc=desc):
        e = src[i]
        key = tuple(np.shape(e['video']))
        pending.setdefault(key, []).append(e)
        if len(pending[key]) == batch_size:
            flush(key)
    for key in list(pending):
        flush(key)
    writer.close()
    return {
        'sizes': sizes,
        'sum': np.atleast_1d(s1).tolist(),
        'sumsq': np.atleast_1d(s2).tolist(),
        'vectors': vectors,
    }
