"""tfds shapes builder + grain pipeline: round trip, batches, shards, buckets, resume."""

import collections
import json
import sys

import cloudpickle
import grain
import numpy as np
import pytest

from sora_jax.data import pipeline as P
from sora_jax.data import shapes
from sora_jax.data.builders import shapes as B
from sora_jax.io.video import to_float

L = 256  # text length of the test tokenizer (longest caption ~170 bytes)


def byte_tokenize(text: str) -> np.ndarray:
    """UTF-8 bytes + 1, zero padded to L (module level: picklable for workers)."""
    ids = np.frombuffer(text.encode('utf-8')[:L], np.uint8).astype(np.int32) + 1
    return np.pad(ids, (0, L - len(ids)))


def detokenize(ids: np.ndarray) -> str:
    return bytes((ids[ids > 0] - 1).astype(np.uint8).tolist()).decode('utf-8')


ONE_SIZE = B.ShapesConfig(num_train=48, num_validation=8, num_frames=4, height=16, width=16)
BUCKETS = B.ShapesConfig(
    num_train=60,
    num_validation=6,
    sizes=((4, 16, 16), (2, 8, 12), (6, 16, 8)),
    size_weights=(2, 1, 1),
)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp('tfds')


@pytest.fixture(scope='module')
def one_size(data_dir):
    return B.build_shapes(data_dir, ONE_SIZE)


@pytest.fixture(scope='module')
def buckets(data_dir):
    return B.build_shapes(data_dir, BUCKETS)


def _epoch(source, **kw):
    kw = {
        'batch_size': 4,
        'seed': 0,
        'tokenize': byte_tokenize,
        'num_epochs': 1,
        'shard_index': 0,
        'shard_count': 1,
        **kw,
    }
    return list(P.make_iterator(source, **kw))


def test_tfds_round_trip(one_size):
    train, val = one_size['train'], one_size['validation']
    assert len(train) == 48 and len(val) == 8
    ids = sorted(int(train[i]['id']) for i in range(len(train)))
    assert ids == list(range(48))
    for i in (0, 17, 47):
        ex = train[i]
        ref = B.make_example(ONE_SIZE, 'train', int(ex['id']))
        assert ex['video'].shape == (4, 16, 16, 3) and ex['video'].dtype == np.uint8
        assert ex['video'].tobytes() == ref['video'].tobytes()
        assert ex['caption_en'].decode() == ref['caption_en']
        assert ex['caption_es'].decode('utf-8') == ref['caption_es']
        assert ex['shape'].decode() in shapes.SHAPES and ex['motion'].decode() in shapes.MOTIONS
        assert ref['caption_en'].startswith(
            f'a {ex["color"].decode()} {ex["shape"].decode()}'
        ) or ref['caption_en'].startswith(f'an {ex["color"].decode()} {ex["shape"].decode()}')
    # validation is its own stream, not a copy of train
    v0 = [e for e in (val[i] for i in range(len(val))) if int(e['id']) == 0][0]
    t0 = [e for e in (train[i] for i in range(len(train))) if int(e['id']) == 0][0]
    assert v0['video'].tobytes() != t0['video'].tobytes()


def test_build_is_deterministic(one_size, tmp_path):
    again = B.build_shapes(tmp_path, ONE_SIZE)['train']
    other = B.build_shapes(
        tmp_path,
        B.ShapesConfig(num_train=48, num_validation=8, num_frames=4, height=16, width=16, seed=1),
    )['train']
    by_id = lambda src: {int(src[i]['id']): src[i]['video'].tobytes() for i in range(len(src))}
    first, second, third = by_id(one_size['train']), by_id(again), by_id(other)
    assert first == second
    assert sum(first[i] != third[i] for i in first) >= 46


def test_holdout_in_builder(tmp_path):
    cfg = B.ShapesConfig(
        num_train=80,
        num_validation=0,
        num_frames=1,
        height=8,
        width=8,
        holdout=(('red', 'circle'), ('shrinking',)),
        max_objects=1,
    )
    src = B.build_shapes(tmp_path, cfg)['train']
    combos = {
        (src[i]['color'].decode(), src[i]['shape'].decode(), src[i]['motion'].decode())
        for i in range(len(src))
    }
    assert len(src) == 80 and len(combos) > 30
    assert not any(c == 'red' and s == 'circle' or m == 'shrinking' for c, s, m in combos)


def test_batches_shapes_dtypes_and_content(one_size):
    it = P.make_iterator(one_size['train'], batch_size=4, seed=0, tokenize=byte_tokenize)
    batch = next(it)
    assert set(batch) == {'video', 'text_ids', 'id'}
    assert batch['video'].shape == (4, 4, 16, 16, 3) and batch['video'].dtype == np.float32
    assert batch['text_ids'].shape == (4, L) and batch['text_ids'].dtype == np.int32
    assert batch['id'].shape == (4,) and batch['id'].dtype == np.int64
    assert -1.0 <= batch['video'].min() and batch['video'].max() <= 1.0
    for k in range(4):
        ref = B.make_example(ONE_SIZE, 'train', int(batch['id'][k]))
        np.testing.assert_array_equal(batch['video'][k], to_float(ref['video']))
        assert detokenize(batch['text_ids'][k]) in (ref['caption_en'], ref['caption_es'])


def test_caption_language(one_size):
    def captions(prob, seed=0):
        out = {}
        for b in _epoch(one_size['train'], spanish_prob=prob, seed=seed):
            for i, ids in zip(b['id'], b['text_ids']):
                ref = B.make_example(ONE_SIZE, 'train', int(i))
                out[int(i)] = 'es' if detokenize(ids) == ref['caption_es'] else 'en'
        return out

    assert set(captions(0.0).values()) == {'en'}
    assert set(captions(1.0).values()) == {'es'}
    mixed = captions(0.5)
    assert 10 < sum(v == 'es' for v in mixed.values()) < 38
    assert captions(0.5) == mixed  # deterministic from (seed, id)
    assert all(mixed[i] == ('es' if P.choose_language(0, i, 0.5) else 'en') for i in mixed)


def test_shuffle_seeded_and_epoch_complete(one_size):
    a = np.concatenate([b['id'] for b in _epoch(one_size['train'], seed=0)])
    b = np.concatenate([b['id'] for b in _epoch(one_size['train'], seed=0)])
    c = np.concatenate([b['id'] for b in _epoch(one_size['train'], seed=1)])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert sorted(a.tolist()) == list(range(48)) and sorted(c.tolist()) == list(range(48))
    two = np.concatenate([b['id'] for b in _epoch(one_size['train'], num_epochs=2)])
    assert len(two) == 96 and not np.array_equal(two[:48], two[48:])  # reshuffled per epoch


def test_host_shards_disjoint_and_covering(buckets):
    shards = []
    for host in range(3):
        ids = [
            i
            for b in _epoch(buckets['train'], shard_index=host, shard_count=3, drop_remainder=False)
            for i in b['id'].tolist()
        ]
        assert len(ids) == len(set(ids)) == 20
        shards.append(set(ids))
    assert not (shards[0] & shards[1] or shards[0] & shards[2] or shards[1] & shards[2])
    assert set.union(*shards) == set(range(60))
    with pytest.raises(ValueError, match='shard_index'):
        P.make_dataset(
            buckets['train'],
            batch_size=2,
            seed=0,
            tokenize=byte_tokenize,
            shard_index=3,
            shard_count=3,
        )


def test_bucketed_batches_hold_one_size(buckets):
    src = buckets['train']
    sizes = collections.Counter(B.size_for_index(BUCKETS, 'train', i) for i in range(60))
    assert len(sizes) == 3
    full = _epoch(src, batch_size=4, drop_remainder=True)
    kept = _epoch(src, batch_size=4, drop_remainder=False)
    for b in full + kept:
        t, h, w = b['video'].shape[1:4]
        assert all(B.size_for_index(BUCKETS, 'train', int(i)) == (t, h, w) for i in b['id'])
    assert all(len(b['id']) == 4 for b in full)
    assert len(full) == sum(n // 4 for n in sizes.values())
    assert {tuple(b['video'].shape[1:4]) for b in full} == set(sizes)
    ids = sorted(i for b in kept for i in b['id'].tolist())
    assert ids == list(range(60))  # drop_remainder=False flushes the partial buckets
    assert sorted(len(b['id']) for b in kept if len(b['id']) < 4) == sorted(
        n % 4 for n in sizes.values() if n % 4
    )


def _assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_iterator_state_restores_exactly(buckets, tmp_path):
    kw = dict(batch_size=4, seed=3, tokenize=byte_tokenize, shard_index=0, shard_count=1)
    it = P.make_iterator(buckets['train'], **kw)
    for _ in range(3):
        next(it)
    state = it.get_state()
    assert state['step'] == 3 and sum(state['consumed']) == 12  # 3 batches, any sizes
    expected = [next(it) for _ in range(20)]  # crosses an epoch boundary (60 examples)

    resumed = P.make_iterator(buckets['train'], **kw)
    resumed.set_state(json.loads(json.dumps(state)))
    _assert_same(expected, [next(resumed) for _ in range(20)])

    # The orbax-facing grain handler writes the same state as JSON and restores it.
    handler = grain.checkpoint.CheckpointHandler()
    it2 = P.make_iterator(buckets['train'], **kw)
    for _ in range(3):
        next(it2)
    handler.save(tmp_path, item=it2)
    restored = handler.restore(tmp_path, item=P.make_iterator(buckets['train'], **kw))
    _assert_same(expected[:5], [next(restored) for _ in range(5)])

    with pytest.raises(ValueError, match='next_index'):  # the per-host bucketing's old state
        P.make_iterator(buckets['train'], **kw).set_state({'next_index': 10**20, 'pending': []})


def test_finite_iterator_state_near_the_end(buckets):
    kw = dict(
        batch_size=4,
        seed=0,
        tokenize=byte_tokenize,
        num_epochs=1,
        drop_remainder=False,
        shard_index=0,
        shard_count=1,
    )
    full = list(P.make_iterator(buckets['train'], **kw))
    it = P.make_iterator(buckets['train'], **kw)
    head = [next(it) for _ in range(len(full) - 2)]
    state = it.get_state()
    tail = list(it)
    resumed = P.make_iterator(buckets['train'], **kw)
    resumed.set_state(state)
    _assert_same(tail, list(resumed))
    _assert_same(full, head + tail)


@pytest.fixture
def tokenizer_picklable_by_value():
    """Worker processes are spawned: ship this module's tokenizer by value, so the
    test does not depend on how pytest named/imported this module."""
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    yield
    cloudpickle.unregister_pickle_by_value(module)


@pytest.mark.slow
def test_worker_processes_match_and_resume(one_size, tokenizer_picklable_by_value):
    del tokenizer_picklable_by_value
    kw = dict(
        batch_size=4,
        seed=0,
        tokenize=byte_tokenize,
        num_epochs=1,
        shard_index=0,
        shard_count=1,
        worker_count=2,
    )
    it = P.make_iterator(one_size['train'], **kw)
    batches = [next(it) for _ in range(4)]
    state = it.get_state()
    rest = list(it)
    it.close()
    ids = sorted(i for b in batches + rest for i in b['id'].tolist())
    assert ids == list(range(48))
    assert all(
        type(b['video']) is np.ndarray and b['video'].shape == (4, 4, 16, 16, 3) for b in batches
    )
    resumed = P.make_iterator(one_size['train'], **kw)
    resumed.set_state(state)
    again = list(resumed)
    resumed.close()
    _assert_same(rest, again)
