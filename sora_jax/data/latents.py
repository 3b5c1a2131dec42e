"""Pre-encoded latents: encode a dataset once with a frozen VAE, train the DiT on the result.

`encode_dataset` writes one array_record file per split, each record a pickled dict
{latents f32 [T', h, w, C], caption_en, caption_es, id}; `LatentSource` reads it back as a
random-access source for `data/pipeline.py` (which then yields `latents` instead of `video`).
Per-channel statistics of the train latents are stored beside the records (`stats.json`) and
used to normalise latents to unit variance for the DiT.

The cache directory is keyed by the dataset's identity and the VAE checkpoint, so changing
either re-encodes; a half-written cache (no `DONE` marker) is rebuilt.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import pickle
import shutil
from typing import Any, Callable

import numpy as np
from absl import logging
from array_record.python import array_record_data_source, array_record_module
from tqdm import tqdm

from sora_jax.io.video import to_float


class LatentSource:
    """Random-access source over an encoded split (len / getitem -> dict).

    With `mean`/`std` (per channel), latents come back normalised: (z - mean) / std.
    """

    def __init__(self, path: str, mean=None, std=None):
        if not os.path.isfile(path):
            raise ValueError(f'latent records {path!r} do not exist; encode the dataset first.')
        self.path = path
        self.mean = None if mean is None else np.asarray(mean, np.float32)
        self.std = None if std is None else np.asarray(std, np.float32)
        self._src = array_record_data_source.ArrayRecordDataSource([path])

    def __len__(self) -> int:
        return len(self._src)

    def __getitem__(self, i: int) -> dict:
        rec = pickle.loads(self._src[i])
        if self.mean is not None:
            rec['latents'] = (rec['latents'] - self.mean) / self.std
        return rec

    def __getstate__(self):  # picklable for grain worker processes
        return {'path': self.path, 'mean': self.mean, 'std': self.std}

    def __setstate__(self, state):
        self.__init__(state['path'], state['mean'], state['std'])


def cache_dir(root: str, data_key: Any, vae_path: str, vae_step: int) -> str:
    """Directory for the latents of (dataset identity, VAE checkpoint)."""
    ident = json.dumps([data_key, os.path.abspath(vae_path), int(vae_step)], sort_keys=True,
                       default=str)
    return os.path.join(root, 'latents', hashlib.sha1(ident.encode()).hexdigest()[:16])


def encode_dataset(sources: dict[str, Any], encode: Callable[[np.ndarray], np.ndarray],
                   out_dir: str, *, batch_size: int = 8) -> str:
    """Encodes every split (batches of same-size clips) unless `out_dir` is already complete.

    Returns out_dir; open splits with `open_split(out_dir, split, normalize=True)`."""
    done = os.path.join(out_dir, 'DONE')
    if not os.path.isfile(done):
        if os.path.isdir(out_dir):
            logging.warning('Rebuilding incomplete latent cache %s', out_dir)
            shutil.rmtree(out_dir)
        tmp = out_dir + '.tmp'
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        stats = None
        for split, src in sources.items():
            moments = _encode_split(src, encode, os.path.join(tmp, f'{split}.array_record'),
                                    batch_size, desc=f'encoding {split}')
            if split == 'train':
                stats = moments
        with open(os.path.join(tmp, 'stats.json'), 'w') as f:
            json.dump(stats, f)
        open(os.path.join(tmp, 'DONE'), 'w').close()
        os.replace(tmp, out_dir)  # atomic: a cache directory is complete or absent
    return out_dir


def load_stats(out_dir: str) -> dict[str, list[float]]:
    """Per-channel {'mean': [...], 'std': [...]} of the raw train latents."""
    with open(os.path.join(out_dir, 'stats.json')) as f:
        return json.load(f)


def open_split(out_dir: str, split: str, mean=None, std=None) -> LatentSource:
    return LatentSource(os.path.join(out_dir, f'{split}.array_record'), mean, std)


def _encode_split(src, encode, path: str, batch_size: int, desc: str) -> dict[str, list[float]]:
    writer = array_record_module.ArrayRecordWriter(path, 'group_size:1')
    pending: dict[tuple, list] = collections.OrderedDict()
    s1 = s2 = None
    count = 0

    def flush(key):
        nonlocal s1, s2, count
        items = pending.pop(key)
        lat = np.asarray(encode(np.stack([to_float(np.asarray(e['video'])) for e in items])),
                         np.float32)
        flat = lat.reshape(-1, lat.shape[-1]).astype(np.float64)
        s1 = flat.sum(0) if s1 is None else s1 + flat.sum(0)
        s2 = (flat ** 2).sum(0) if s2 is None else s2 + (flat ** 2).sum(0)
        count += flat.shape[0]
        for e, z in zip(items, lat):
            rec = {'latents': z, 'id': np.int64(e['id']),
                   'caption_en': e.get('caption_en', b''), 'caption_es': e.get('caption_es', b'')}
            writer.write(pickle.dumps(rec, protocol=pickle.HIGHEST_PROTOCOL))

    for i in tqdm(range(len(src)), desc=desc):
        e = src[i]
        key = tuple(np.shape(e['video']))
        pending.setdefault(key, []).append(e)
        if len(pending[key]) == batch_size:
            flush(key)
    for key in list(pending):
        flush(key)
    writer.close()
    mean = s1 / max(count, 1)
    std = np.sqrt(np.maximum(s2 / max(count, 1) - mean ** 2, 1e-12))
    return {'mean': mean.tolist(), 'std': std.tolist()}
