"""grain input pipelines: tfds array_record source -> shuffled, sharded, bucketed batches.

  source = open_source(".../synthetic_shapes/tiny/1.0.0", "train")   # or a data source
  it = make_iterator(source, batch_size=8, seed=0, tokenize=byte_tokenize)
  batch = next(it)   # {'video': f32 [B,T,H,W,3] in [-1,1], 'text_ids': i32 [B,L], 'id': i64 [B]}
  state = it.get_state(); ...; it2 = make_iterator(...same args...); it2.set_state(state)

Order of operations (all deterministic from `seed`):
  source -> shard per host (strided: host i reads records i, i+n, ...)
         -> split by clip size (T, H, W): one stream per size bucket
         -> shuffle each stream (grain index shuffle, reshuffled every epoch) -> repeat(num_epochs)
         -> per-example transform (decode, uint8 -> [-1, 1], pick caption language, tokenize)
         -> batch n: size `bucket_for_step(seed, n, counts)`, `batch_size` clips of this
            host's stream of that size
         -> optional worker processes (grain mp_prefetch)
Multi-host: the size of step n is drawn from (seed, n), weighted by each size's share of
the whole dataset (metadata `size_counts`, a latent cache's index, or one read of the
records), so every host emits a batch of the same size at every step, also after a
resume; each host fills its part from its own shard. With several sizes, each host's
shard must hold at least `batch_size` clips of every size (a ValueError names the one
that does not). One size batches exactly as a plain shuffled stream would.
The iterator's state (`get_state`/`set_state`, or orbax via grain's
`PyGrainCheckpointHandler` / `grain.checkpoint.CheckpointHandler`) is a small
JSON dict (step, clips consumed per size); a restored iterator yields exactly the
batches the original would have.
Text dropout for classifier-free guidance is the train step's job, not this module's.

Worker processes (`worker_count > 0`) pickle the pipeline, so `tokenize` must be
picklable (a module-level function or a class instance), and scripts need an
`if __name__ == "__main__":` guard (with absl, flags parsed by `app.run`).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Mapping, Sequence

import grain
import jax
import numpy as np
from absl import flags, logging

from sora_jax.io.video import to_float

Tokenize = Callable[[str], np.ndarray]  # caption -> int32 [L]
# Language codes recorded in examples: 0 = English, 1 = Spanish.
LANG_EN, LANG_ES = 0, 1


def open_source(path: str | os.PathLike, split: str = 'train'):
    """Random-access data source of a built tfds dataset directory (the `.../1.0.0` folder)."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    path = os.fspath(path)
    if not os.path.isfile(os.path.join(path, 'dataset_info.json')):
        raise ValueError(
            f'{path!r} is not a built tfds dataset (no dataset_info.json); pass '
            'the version folder, e.g. DATA_DIR/synthetic_shapes/tiny/1.0.0.'
        )
    return tfds.builder_from_directory(path).as_data_source(split=split)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode('utf-8')
    if isinstance(value, np.ndarray):
        return _text(value.item())
    return str(value)


def choose_language(seed: int, example_id: int, spanish_prob: float) -> int:
    """LANG_ES with probability `spanish_prob`, a pure function of (seed, id)."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 104729, int(example_id)])
    return LANG_ES if rng.random() < spanish_prob else LANG_EN


class ExampleTransform:
    """Raw tfds example -> {'video': f32 [T,H,W,3], 'text_ids': i32 [L], 'id': i64}
    ('latents' f32 [T',h,w,C] instead of 'video' for pre-encoded examples; plus 'context'
    f32 [L', D] when the source adds text features, data/text_features.py).

    The caption language is drawn from (seed, id); an empty caption in the chosen
    language (e.g. a video folder without Spanish captions) falls back to the other.
    """

    def __init__(self, tokenize: Tokenize, seed: int, spanish_prob: float):
        if not 0.0 <= spanish_prob <= 1.0:
            raise ValueError(f'spanish_prob must be in [0, 1], got {spanish_prob}.')
        self.tokenize, self.seed, self.spanish_prob = tokenize, seed, spanish_prob

    def __call__(self, ex: Mapping[str, Any]) -> dict[str, np.ndarray]:
        ex_id = int(ex['id'])
        captions = [_text(ex.get('caption_en', b'')), _text(ex.get('caption_es', b''))]
        lang = choose_language(self.seed, ex_id, self.spanish_prob)
        text = captions[lang] or captions[1 - lang]
        ids = np.asarray(self.tokenize(text))
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(
                f'tokenize must return an integer vector [L], got {ids.dtype} '
                f'{ids.shape} for {text!r}.'
            )
        out = {'text_ids': ids.astype(np.int32), 'id': np.int64(ex_id)}
        if 'context' in ex:  # precomputed text features (data/text_features.py)
            out['context'] = np.asarray(ex['context'], np.float32)
        if 'latents' in ex:  # pre-encoded by a VAE (data/latents.py)
            out['latents'] = np.asarray(ex['latents'], np.float32)
        else:
            out['video'] = to_float(np.asarray(ex['video']))
        return out


def stack_batch(elements: Sequence[Mapping[str, np.ndarray]], pad_id: int = 0) -> dict:
    """Stacks examples; text ids of unequal length are right-padded with `pad_id`."""
    lengths = {len(e['text_ids']) for e in elements}
    length = max(lengths)
    text = np.full((len(elements), length), pad_id, np.int32)
    for i, e in enumerate(elements):
        text[i, : len(e['text_ids'])] = e['text_ids']
    key = _data_key(elements[0])
    out = {
        key: np.stack([e[key] for e in elements]),
        'text_ids': text,
        'id': np.asarray([e['id'] for e in elements], np.int64),
    }
    if 'context' in elements[0]:
        out['context'] = np.stack([e['context'] for e in elements])
    return out


def _data_key(element: Mapping[str, np.ndarray]) -> str:
    return 'latents' if 'latents' in element else 'video'


def _bucket_key(element: Mapping[str, np.ndarray]) -> tuple[int, ...]:
    return tuple(int(d) for d in np.shape(element[_data_key(element)])[:3])  # (T, H, W)


# ----------------------------------------------------------------------------- size buckets


@dataclasses.dataclass(frozen=True)
class BucketPlan:
    """The size buckets of a source, the same on every host, and this host's part of each.

    sizes: (T, H, W) of each bucket (identical on every host).
    counts: examples of each bucket in the whole source (identical on every host); the
      per-step bucket choice is weighted by them, i.e. by each size's share of the data.
    local: per bucket, the record indices of the source in this host's shard.
    """

    sizes: tuple[tuple[int, ...], ...]
    counts: tuple[int, ...]
    local: tuple[np.ndarray, ...]


def bucket_plan(source: Any, shard_index: int = 0, shard_count: int = 1) -> BucketPlan:
    """Which records of `source` fall in which (T, H, W) bucket, from the cheapest place
    that knows: `source.record_sizes()` (latent caches), one declared size (no reading), or
    the declared `size_counts` metadata plus one pass over this host's shard. A source
    without counts is read in full on every host (logged), so all hosts weight alike."""
    n = len(source)
    mine = np.arange(shard_index, n, shard_count)
    record_sizes = getattr(source, 'record_sizes', None)
    if callable(record_sizes):
        every = [tuple(int(d) for d in s[:3]) for s in record_sizes()]
        if len(every) != n:
            raise ValueError(
                f'source.record_sizes() lists {len(every)} records but the source '
                f'has {n}; rebuild the source (e.g. delete its latent cache).'
            )
        return _plan_from(sorted(set(every)), every, mine)
    declared = [tuple(int(d) for d in s) for s in _declared_sizes(source)]
    if len(declared) == 1:
        return BucketPlan((declared[0],), (n,), (mine,))
    counts = _declared_counts(source, len(declared))
    t0 = time.time()
    if counts is not None:  # read this host's records only
        kept = sorted((s, c) for s, c in zip(declared, counts) if c > 0)  # sizes sorted, as a read
        sizes, counts = [s for s, _ in kept], [c for _, c in kept]
        index = {s: b for b, s in enumerate(sizes)}
        local = [_bucket_key(source[int(i)]) for i in mine]
        unknown = sorted(set(local) - set(sizes))
        if unknown:
            raise ValueError(
                f'Records of sizes {unknown} are not among the sizes {sizes} that '
                f"the source's metadata declares; rebuild the dataset."
            )
        which = np.asarray([index[s] for s in local], np.int64)
        logging.info(
            "size buckets: read this host's %d records in %.1f s", len(mine), time.time() - t0
        )
        return BucketPlan(
            tuple(sizes), tuple(counts), tuple(mine[which == b] for b in range(len(sizes)))
        )
    if shard_count > 1:
        logging.warning(
            'The source declares no per-size counts (metadata size_counts): every '
            'host reads all %d records once to weight the size buckets alike. '
            'Rebuild the dataset with the current builders to skip this.',
            n,
        )
    every = [_bucket_key(source[i]) for i in range(n)]
    logging.info('size buckets: read %d records in %.1f s', n, time.time() - t0)
    return _plan_from(sorted(set(every)), every, mine)


def _plan_from(sizes, record_sizes, mine) -> BucketPlan:
    """Plan from the sizes of all records (`record_sizes[i]`, global record i) and this
    host's record indices `mine`."""
    index = {s: b for b, s in enumerate(sizes)}
    every = np.asarray([index[s] for s in record_sizes], np.int64)
    counts = tuple(int(c) for c in np.bincount(every, minlength=len(sizes)))
    local = tuple(mine[every[mine] == b] for b in range(len(sizes)))
    return BucketPlan(tuple(sizes), counts, local)


def _declared_counts(source: Any, num_sizes: int) -> list[int] | None:
    """Examples per declared size in this source's split (metadata `size_counts`), or None."""
    info = getattr(source, 'dataset_info', None)
    metadata = getattr(info, 'metadata', None) or {}
    per_split = metadata.get('size_counts') or {}
    counts = per_split.get(str(getattr(source, 'split', '')))
    if counts is None or len(counts) != num_sizes or sum(counts) != len(source):
        return None  # e.g. a sub-split such as "train[:50%]"
    return [int(c) for c in counts]


def bucket_for_step(seed: int, step: int, weights: Sequence[float]) -> int:
    """The bucket of global step `step`: a draw weighted by `weights`, a pure function of
    (seed, step, weights), so every host (and a resumed run) picks the same one."""
    w = np.asarray(weights, np.float64)
    positive = np.flatnonzero(w > 0)
    if len(positive) == 0:
        raise ValueError(f'bucket weights {w.tolist()} have no positive entry.')
    if len(positive) == 1:
        return int(positive[0])
    u = np.random.default_rng([int(seed) & 0xFFFFFFFF, 15485863, int(step)]).random()
    cum = np.cumsum(w)
    return int(min(np.searchsorted(cum, u * cum[-1], side='right'), positive[-1]))


class _Records:
    """`source` restricted to the records `indices` (random access, picklable)."""

    def __init__(self, source: Any, indices: np.ndarray):
        self._source, self._indices = source, np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, i: int):
        return self._source[int(self._indices[i])]


class BucketBatchIterDataset(grain.IterDataset):
    """Batches of one (T, H, W) size each; the size of step n is the same on every host.

    One stream per size bucket (this host's records of that size, shuffled per epoch;
    MapDatasets). Batch n takes the next `batch_size` elements of the stream of bucket
    `bucket_for_step(seed, n, weights)`: the choice depends on (seed, step, the global
    per-size counts) only, never on what this host has read, so the hosts of a multi-host
    run assemble one global batch of one size at every step. The state is the step and
    the elements consumed per bucket: tiny, and a restore is exact.

    Finite streams (`num_epochs`): full batches first, drawn as above among the buckets
    that still hold one; then, unless `drop_remainder`, the partial remainders. Hosts
    agree while every host still has full batches of the drawn sizes (evaluation passes
    may end differently per host).
    """

    def __init__(
        self,
        streams: Sequence[grain.MapDataset],
        sizes: Sequence[tuple],
        weights: Sequence[float],
        batch_size: int,
        seed: int,
        drop_remainder: bool,
        pad_id: int = 0,
    ):
        super().__init__(list(streams))
        if batch_size < 1:
            raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
        if not len(streams) == len(sizes) == len(weights):
            raise ValueError(
                f'{len(streams)} streams, {len(sizes)} sizes and {len(weights)} '
                'weights: give one of each per bucket.'
            )
        self._streams, self._sizes = list(streams), [tuple(s) for s in sizes]
        self._weights = [float(w) for w in weights]
        self._batch_size, self._seed = batch_size, int(seed)
        self._drop_remainder, self._pad_id = drop_remainder, pad_id
        self._slice = (0, 1)  # (first step, stride): the steps this iterator emits

    def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
        """Called by mp_prefetch in each worker: worker i of n emits steps i, i + n, ...
        (grain interleaves the workers round-robin, so the order is that of 0 workers)."""
        del sequential_slice
        self._slice = (sl.start or 0, sl.step or 1)

    def __iter__(self) -> '_BucketBatchIterator':
        return _BucketBatchIterator(self)

    def __str__(self) -> str:
        return f'BucketBatchIterDataset(batch_size={self._batch_size}, sizes={self._sizes})'


class _BucketBatchIterator(grain.DatasetIterator):
    def __init__(self, ds: BucketBatchIterDataset):
        super().__init__()
        self._ds = ds
        self._lengths = [len(s) for s in ds._streams]  # sys.maxsize when repeating forever
        self._step = 0  # batches emitted by all workers
        self._consumed = [0] * len(ds._streams)  # elements taken per bucket

    def _next_bucket(self) -> tuple[int, int] | None:
        """(bucket, batch length) of the current step; None when every stream is spent."""
        left = [n - c for n, c in zip(self._lengths, self._consumed)]
        b = self._ds._batch_size
        full = [w if r >= b else 0.0 for w, r in zip(self._ds._weights, left)]
        if any(full):
            return bucket_for_step(self._ds._seed, self._step, full), b
        if self._ds._drop_remainder or not any(left):
            return None
        rest = next(i for i, r in enumerate(left) if r)  # partial remainders, in bucket order
        return rest, left[rest]

    def __next__(self) -> dict:
        first, stride = self._ds._slice
        while True:
            chosen = self._next_bucket()
            if chosen is None:
                raise StopIteration
            bucket, length = chosen
            step, start = self._step, self._consumed[bucket]
            self._step += 1
            self._consumed[bucket] += length
            if step >= first and (step - first) % stride == 0:
                stream = self._ds._streams[bucket]
                elements = [stream[start + k] for k in range(length)]
                return stack_batch(elements, self._ds._pad_id)

    def get_state(self) -> dict[str, Any]:
        return {
            'step': int(self._step),
            'consumed': [int(c) for c in self._consumed],
            'sizes': [list(s) for s in self._ds._sizes],
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        sizes = self._ds._sizes
        if 'next_index' in state:  # written before buckets were chosen per step
            if len(sizes) > 1 or state.get('pending'):
                raise ValueError(
                    f'Iterator state {dict(state)} (next_index / pending) was written by the '
                    f'per-host bucketing of an older version and cannot be mapped onto the '
                    f'per-step size buckets {sizes}; start a new workdir with '
                    'train.init_from=<old workdir> (the data position restarts).'
                )
            state = {
                'step': int(state['next_index']) // self._ds._batch_size,
                'consumed': [int(state['next_index'])],
                'sizes': [list(s) for s in sizes],
            }
        if [tuple(s) for s in state.get('sizes', ())] != sizes:
            raise ValueError(
                f'Iterator state for size buckets {state.get("sizes")} cannot '
                f'restore a pipeline over buckets {[list(s) for s in sizes]}; was '
                'it saved for another dataset?'
            )
        consumed = [int(c) for c in state['consumed']]
        for c, n, s in zip(consumed, self._lengths, sizes):
            if not 0 <= c <= n:
                raise ValueError(
                    f'Iterator state consumed={c} of bucket {s} is outside its '
                    f'stream (length {n}); was it saved for another dataset?'
                )
        self._step, self._consumed = int(state['step']), consumed

    def __str__(self) -> str:
        return f'_BucketBatchIterator(step={self._step})'


def make_dataset(
    source: Any,
    *,
    batch_size: int,
    seed: int,
    tokenize: Tokenize,
    shuffle: bool = True,
    num_epochs: int | None = None,
    spanish_prob: float = 0.5,
    drop_remainder: bool = True,
    shard_index: int | None = None,
    shard_count: int | None = None,
    worker_count: int = 0,
    worker_buffer_size: int = 2,
    pad_id: int = 0,
) -> grain.IterDataset:
    """The training (or eval) pipeline as a grain IterDataset of batch dicts.

    Args:
      source: random-access data source (`len`, `__getitem__`) of tfds examples
        (e.g. `build_shapes(...)["train"]`, `open_source(dir, split)` or a latent cache).
      batch_size: examples per batch *on this host*.
      seed: shuffle seed, caption-language seed and size-bucket seed.
      tokenize: caption -> int32 [L]; must be picklable when `worker_count > 0`.
      shuffle: per-epoch shuffle of this host's records of each size bucket.
      num_epochs: None repeats forever; an int stops after that many passes.
      spanish_prob: probability that an example's caption is the Spanish one.
      drop_remainder: drop partial batches at the end of a finite run.
      shard_index, shard_count: this host's shard; default jax.process_index()/count().
        Shards are strided and cover every record exactly once.
      worker_count: grain worker processes (0: read in this process).
      worker_buffer_size: batches each worker keeps ready.
      pad_id: fills text ids when captions tokenize to unequal lengths.
    """
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise ValueError(f'shard_index {shard_index} must be in [0, shard_count={shard_count}).')
    if len(source) < shard_count:
        raise ValueError(
            f'The source has {len(source)} records, fewer than shard_count='
            f'{shard_count}; build a larger dataset.'
        )
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f'num_epochs must be None (forever) or >= 1, got {num_epochs}.')
    if worker_count < 0:
        raise ValueError(f'worker_count must be >= 0, got {worker_count}.')
    if batch_size < 1:
        raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
    plan = bucket_plan(source, shard_index, shard_count)
    if num_epochs is None and len(plan.sizes) > 1:  # every step takes a full batch of its size
        for size, local in zip(plan.sizes, plan.local):
            if len(local) < batch_size:
                raise ValueError(
                    f'Size bucket {size} has {len(local)} examples in shard {shard_index} of '
                    f'{shard_count}, fewer than the per-host batch size {batch_size}, and every '
                    f'step drawn for that size takes a full batch from each host. Add clips of '
                    f'that size, drop it from data.sizes, or lower train.batch_size.'
                )
    if len(plan.sizes) > 1:
        logging.info(
            'size buckets %s: %s examples in all, %s in shard %d of %d',
            list(plan.sizes),
            list(plan.counts),
            [len(l) for l in plan.local],
            shard_index,
            shard_count,
        )
    transform = ExampleTransform(tokenize, seed, spanish_prob)
    streams = []
    for b, local in enumerate(plan.local):
        ds = grain.MapDataset.source(_Records(source, local))
        if shuffle:  # bucket 0 keeps the plain seed: one size shuffles as it always has
            ds = ds.shuffle(seed=(int(seed) + 7919 * b) & 0xFFFFFFFF)
        streams.append(ds.repeat(num_epochs).map(transform))
    batches = BucketBatchIterDataset(
        streams, plan.sizes, plan.counts, batch_size, seed, drop_remainder, pad_id
    )
    if worker_count > 0:
        if not flags.FLAGS.is_parsed():
            # grain reads absl flags when it starts workers; outside app.run (tests,
            # notebooks) take the defaults rather than crash.
            logging.info('absl flags not parsed; marking them parsed with defaults for grain.')
            flags.FLAGS.mark_as_parsed()
        batches = batches.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=worker_count, per_worker_buffer_size=worker_buffer_size
            )
        )
        # Workers hand back shared-memory arrays; copy them so callers hold plain
        # numpy arrays and no shared-memory segment outlives its batch.
        batches = batches.map(_to_plain_numpy)
    return batches


def _to_plain_numpy(batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.array(v, copy=True) for k, v in batch.items()}


def _declared_sizes(source: Any) -> list:
    """Clip sizes a tfds data source declares in its metadata ([] when unknown)."""
    info = getattr(source, 'dataset_info', None)
    metadata = getattr(info, 'metadata', None) or {}
    return list(metadata.get('sizes', []))


def make_iterator(source: Any, **kwargs: Any) -> grain.DatasetIterator:
    """`iter(make_dataset(source, **kwargs))`: a checkpointable iterator of batches."""
    return iter(make_dataset(source, **kwargs))
