"""Latent cache: split across 2 processes (threads with a barrier stand in for them) it holds the
same records and statistics as one process; records are plain bytes, never pickles; an old
pickled cache is refused when read directly and rebuilt by encode_dataset."""

import json
import os
import pickle
import threading

import numpy as np
import pytest
from array_record.python import array_record_data_source, array_record_module

from sora_jax.data import latents as L
from sora_jax.data import pipeline as P
from sora_jax.data.builders import shapes as B

CONFIG = B.ShapesConfig(num_train=21, num_validation=5, sizes=((2, 8, 8), (1, 8, 12)))


def encode(video):
    """Stand-in VAE: [B, T, H, W, 3] -> [B, T, H/2, W/2, 4] (2x2 means + their square)."""
    b, t, h, w, _ = video.shape
    z = video.reshape(b, t, h // 2, 2, w // 2, 2, 3).mean((3, 5))
    return np.concatenate([z, z[..., :1] ** 2], -1)


@pytest.fixture(scope='module')
def caches(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('latents')
    sources = B.build_shapes(tmp / 'tfds', CONFIG)
    one = L.encode_dataset(sources, encode, str(tmp / 'one'), batch_size=4)
    barrier = threading.Barrier(2)
    names = []

    def process(i):
        def sync(name):
            names.append((i, name))
            barrier.wait(timeout=60)

        L.encode_dataset(
            sources,
            encode,
            str(tmp / 'two'),
            batch_size=4,
            process_index=i,
            process_count=2,
            barrier=sync,
        )

    threads = [threading.Thread(target=process, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return sources, one, str(tmp / 'two'), names


def _by_id(src):
    return {int(src[i]['id']): src[i] for i in range(len(src))}


def test_two_processes_write_the_records_and_stats_of_one(caches):
    sources, one, two, names = caches
    assert sorted(n for i, n in names if i == 0) == sorted(n for i, n in names if i == 1)
    assert json.load(open(os.path.join(two, 'manifest.json')))['num_shards'] == 2
    for split, n in (('train', 21), ('validation', 5)):
        a, b = L.open_split(one, split), L.open_split(two, split)
        assert len(a) == len(b) == n
        ra, rb = _by_id(a), _by_id(b)
        assert sorted(ra) == sorted(rb) == sorted(int(sources[split][i]['id']) for i in range(n))
        for k in ra:
            np.testing.assert_array_equal(ra[k]['latents'], rb[k]['latents'])
            assert ra[k]['caption_en'] == rb[k]['caption_en'] != b''
            assert ra[k]['latents'].shape[:3] in ((2, 4, 4), (1, 4, 6))
        assert sorted(map(tuple, b.record_sizes())) == sorted(
            tuple(rb[k]['latents'].shape[:3]) for k in rb
        )
    # each process encoded its own half: records i, i + 2, ... of the split
    shard0 = L.LatentSource(os.path.join(two, 'train-00000-of-00002.array_record'))
    assert len(shard0) == 11
    sa, sb = L.load_stats(one), L.load_stats(two)
    np.testing.assert_allclose(sb['mean'], sa['mean'], rtol=1e-12)
    np.testing.assert_allclose(sb['std'], sa['std'], rtol=1e-12)
    z = np.concatenate(
        [r['latents'].reshape(-1, 4) for r in _by_id(L.open_split(one, 'train')).values()]
    )
    np.testing.assert_allclose(sa['mean'], z.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sa['std'], z.std(0), rtol=1e-4, atol=1e-6)


def test_records_are_not_pickles(caches):
    _, _, two, _ = caches
    path = os.path.join(two, 'train-00001-of-00002.array_record')
    raw = array_record_data_source.ArrayRecordDataSource([path])
    for i in range(len(raw)):
        assert raw[i].startswith(L.MAGIC)
        with pytest.raises(pickle.UnpicklingError):
            pickle.loads(raw[i])
    rec = L.decode_record(L.encode_record(np.arange(6.0).reshape(1, 1, 2, 3), 7, b'hola', 'x'))
    assert rec['id'] == 7 and rec['caption_en'] == b'hola' and rec['caption_es'] == b'x'
    np.testing.assert_array_equal(rec['latents'], np.arange(6.0).reshape(1, 1, 2, 3))


def test_old_pickled_cache_is_refused_and_rebuilt(caches, tmp_path):
    sources, one, _, _ = caches
    old = tmp_path / 'old'
    old.mkdir()
    writer = array_record_module.ArrayRecordWriter(str(old / 'train.array_record'), 'group_size:1')
    writer.write(pickle.dumps({'latents': np.zeros((1, 4, 4, 4), np.float32), 'id': 0}))
    writer.close()
    (old / 'stats.json').write_text('{"mean": [0], "std": [1]}')
    (old / 'DONE').write_text('')
    with pytest.raises(ValueError, match='pickled dict from an older version'):
        L.LatentSource(str(old / 'train.array_record'))
    with pytest.raises(ValueError, match='not a complete latent cache'):
        L.open_split(str(old), 'train')
    L.encode_dataset(sources, encode, str(old), batch_size=4)
    assert not (old / 'train.array_record').exists()
    assert L.load_stats(str(old)) == L.load_stats(one)


def test_pipeline_buckets_latents_from_the_index(caches):
    _, _, two, _ = caches

    class IndexOnly(L.LatentSource):  # the plan must come from the index, not the records
        def __getitem__(self, i):
            raise AssertionError('read a record')

    src = L.open_split(two, 'train')
    plan = P.bucket_plan(IndexOnly(src.paths, sizes=src.sizes), 1, 2)
    assert plan.sizes == ((1, 4, 6), (2, 4, 4)) and sum(plan.counts) == 21
    assert sum(len(l) for l in plan.local) == 10
