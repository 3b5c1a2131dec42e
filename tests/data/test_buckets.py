"""Size buckets chosen per step: every host picks the same size at every step (2 simulated
hosts), also after a resume, weighted by each size's share of the data."""

import collections
import json

import numpy as np
import pytest

from sora_jax.data import pipeline as P
from sora_jax.data.builders import shapes as B

SIZES = ((4, 16, 16), (2, 8, 12), (6, 16, 8))
CONFIG = B.ShapesConfig(num_train=60, num_validation=6, sizes=SIZES, size_weights=(2, 1, 1))
KW = dict(batch_size=3, seed=5, tokenize=lambda s: np.frombuffer(s.encode()[:8], np.uint8) + 1)


@pytest.fixture(scope='module')
def source(tmp_path_factory):
    return B.build_shapes(tmp_path_factory.mktemp('tfds'), CONFIG)['train']


class _NoMetadata:
    """The same records without tfds metadata: the pipeline must read them to bucket."""

    def __init__(self, src):
        self._src = src

    def __len__(self):
        return len(self._src)

    def __getitem__(self, i):
        return self._src[i]


def _size(batch):
    return tuple(batch['video'].shape[1:4])


def test_metadata_counts_and_plan(source):
    want = collections.Counter(B.size_for_index(CONFIG, 'train', i) for i in range(60))
    counts = source.dataset_info.metadata['size_counts']['train']
    assert counts == [want[s] for s in SIZES] and sum(counts) == 60
    plans = [P.bucket_plan(source, h, 2) for h in range(2)]
    scanned = [P.bucket_plan(_NoMetadata(source), h, 2) for h in range(2)]
    assert plans[0].sizes == tuple(sorted(SIZES))  # one canonical order, however it is known
    assert plans[0].counts == plans[1].counts == tuple(want[s] for s in sorted(SIZES))
    for plan, scan in zip(plans, scanned):  # metadata + own shard == reading every record
        assert (plan.sizes, plan.counts) == (scan.sizes, scan.counts)
        for a, b in zip(plan.local, scan.local):
            np.testing.assert_array_equal(a, b)
    # the two hosts' records of each size are disjoint and cover that size
    for b, size in enumerate(plans[0].sizes):
        ids = np.concatenate([plans[0].local[b], plans[1].local[b]])
        assert len(set(ids.tolist())) == want[size]


def test_two_hosts_pick_the_same_size_every_step(source):
    its = [P.make_iterator(source, shard_index=h, shard_count=2, **KW) for h in range(2)]
    steps = 40  # ~4 epochs of the smaller buckets
    batches = [[next(it) for _ in range(steps)] for it in its]
    sizes = [[_size(b) for b in host] for host in batches]
    assert sizes[0] == sizes[1]
    plan = P.bucket_plan(source, 0, 2)
    assert sizes[0] == [plan.sizes[P.bucket_for_step(5, n, plan.counts)] for n in range(steps)]
    assert len(set(sizes[0])) == 3
    for n in range(steps):
        a, b = batches[0][n]['id'], batches[1][n]['id']
        assert len(a) == len(b) == 3 and not set(a.tolist()) & set(b.tolist())
        for ex_id in np.concatenate([a, b]):  # every clip really is of the step's size
            assert B.size_for_index(CONFIG, 'train', int(ex_id)) == sizes[0][n]
    # a source without metadata (every host reads all records) gives the same batches
    plain = P.make_iterator(_NoMetadata(source), shard_index=1, shard_count=2, **KW)
    for n in range(steps):
        np.testing.assert_array_equal(next(plain)['id'], batches[1][n]['id'])


def test_resume_repeats_the_sizes_and_clips(source):
    for host in range(2):
        it = P.make_iterator(source, shard_index=host, shard_count=2, **KW)
        head = [next(it) for _ in range(7)]
        state = json.loads(json.dumps(it.get_state()))
        tail = [next(it) for _ in range(15)]
        assert state['step'] == 7 and sum(state['consumed']) == 21
        resumed = P.make_iterator(source, shard_index=host, shard_count=2, **KW)
        resumed.set_state(state)
        again = [next(resumed) for _ in range(15)]
        assert [_size(b) for b in again] == [_size(b) for b in tail]
        for a, b in zip(tail, again):
            np.testing.assert_array_equal(a['id'], b['id'])
            np.testing.assert_array_equal(a['video'], b['video'])
        assert head[0]['id'].tolist() != tail[0]['id'].tolist()
    with pytest.raises(ValueError, match='size buckets'):  # a state of another dataset
        it.set_state({'step': 1, 'consumed': [3], 'sizes': [[8, 32, 32]]})


def test_size_draw_follows_the_share_of_data():
    counts = [30, 15, 15]
    draws = collections.Counter(P.bucket_for_step(0, n, counts) for n in range(3000))
    share = np.array([draws[b] for b in range(3)]) / 3000
    np.testing.assert_allclose(share, [0.5, 0.25, 0.25], atol=0.03)
    assert [P.bucket_for_step(0, n, counts) for n in range(50)] == [
        P.bucket_for_step(0, n, counts) for n in range(50)
    ]
    assert [P.bucket_for_step(0, n, counts) for n in range(50)] != [
        P.bucket_for_step(1, n, counts) for n in range(50)
    ]
    assert {P.bucket_for_step(3, n, [0, 4, 0]) for n in range(20)} == {1}


def test_worker_slices_interleave_to_the_single_process_order(source):
    it = P.make_iterator(source, shard_index=0, shard_count=1, **KW)
    whole = [next(it) for _ in range(9)]
    for worker in range(3):  # what mp_prefetch worker i of 3 emits: steps i, i + 3, ...
        ds = P.make_dataset(source, shard_index=0, shard_count=1, **KW)
        ds.set_slice(slice(worker, None, 3))
        it = iter(ds)
        for n in range(worker, 9, 3):
            np.testing.assert_array_equal(next(it)['id'], whole[n]['id'])


def test_bucket_smaller_than_a_host_batch_is_an_error(source):
    with pytest.raises(
        ValueError,
        match=r'Size bucket \(.*\) has \d+ examples in shard 1 of 2, '
        r'fewer than the per-host batch size 12',
    ):
        P.make_dataset(
            source, batch_size=12, seed=0, tokenize=KW['tokenize'], shard_index=1, shard_count=2
        )
