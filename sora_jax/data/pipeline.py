"""grain input pipelines: tfds array_record source -> shuffled, sharded, bucketed batches.

  source = open_source(".../synthetic_shapes/tiny/1.0.0", "train")   # or a data source
  it = make_iterator(source, batch_size=8, seed=0, tokenize=byte_tokenize)
  batch = next(it)   # {'video': f32 [B,T,H,W,3] in [-1,1], 'text_ids': i32 [B,L], 'id': i64 [B]}
  state = it.get_state(); ...; it2 = make_iterator(...same args...); it2.set_state(state)

Order of operations (all deterministic from `seed`):
  source -> shard per host (strided: host i reads records i, i+n, ...)
         -> shuffle (grain index shuffle, reshuffled every epoch) -> repeat(num_epochs)
         -> per-example transform (decode, uint8 -> [-1, 1], pick caption language, tokenize)
         -> size-bucketed batching (every batch holds clips of one (T, H, W))
         -> optional worker processes (grain mp_prefetch)
The iterator's state (`get_state`/`set_state`, or orbax via grain's
`PyGrainCheckpointHandler` / `grain.checkpoint.CheckpointHandler`) is a small
JSON dict; a restored iterator yields exactly the batches the original would have.
Text dropout for classifier-free guidance is the train step's job, not this module's.

Worker processes (`worker_count > 0`) pickle the pipeline, so `tokenize` must be
picklable (a module-level function or a class instance), and scripts need an
`if __name__ == "__main__":` guard (with absl, flags parsed by `app.run`).
"""
from __future__ import annotations

import collections
import os
from typing import Any, Callable, Mapping, Sequence

from absl import flags
from absl import logging
import grain
import jax
import numpy as np

from sora_jax.io.video import to_float

Tokenize = Callable[[str], np.ndarray]  # caption -> int32 [L]
# Language codes recorded in examples: 0 = English, 1 = Spanish.
LANG_EN, LANG_ES = 0, 1


def open_source(path: str | os.PathLike, split: str = "train"):
    """Random-access data source of a built tfds dataset directory (the `.../1.0.0` folder)."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    path = os.fspath(path)
    if not os.path.isfile(os.path.join(path, "dataset_info.json")):
        raise ValueError(f"{path!r} is not a built tfds dataset (no dataset_info.json); pass "
                         "the version folder, e.g. DATA_DIR/synthetic_shapes/tiny/1.0.0.")
    return tfds.builder_from_directory(path).as_data_source(split=split)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return _text(value.item())
    return str(value)


def choose_language(seed: int, example_id: int, spanish_prob: float) -> int:
    """LANG_ES with probability `spanish_prob`, a pure function of (seed, id)."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 104729, int(example_id)])
    return LANG_ES if rng.random() < spanish_prob else LANG_EN


class ExampleTransform:
    """Raw tfds example -> {'video': f32 [T,H,W,3], 'text_ids': i32 [L], 'id': i64}
    ('latents' f32 [T',h,w,C] instead of 'video' for pre-encoded examples).

    The caption language is drawn from (seed, id); an empty caption in the chosen
    language (e.g. a video folder without Spanish captions) falls back to the other.
    """

    def __init__(self, tokenize: Tokenize, seed: int, spanish_prob: float):
        if not 0.0 <= spanish_prob <= 1.0:
            raise ValueError(f"spanish_prob must be in [0, 1], got {spanish_prob}.")
        self.tokenize, self.seed, self.spanish_prob = tokenize, seed, spanish_prob

    def __call__(self, ex: Mapping[str, Any]) -> dict[str, np.ndarray]:
        ex_id = int(ex["id"])
        captions = [_text(ex.get("caption_en", b"")), _text(ex.get("caption_es", b""))]
        lang = choose_language(self.seed, ex_id, self.spanish_prob)
        text = captions[lang] or captions[1 - lang]
        ids = np.asarray(self.tokenize(text))
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"tokenize must return an integer vector [L], got {ids.dtype} "
                             f"{ids.shape} for {text!r}.")
        out = {"text_ids": ids.astype(np.int32), "id": np.int64(ex_id)}
        if "latents" in ex:  # pre-encoded by a VAE (data/latents.py)
            out["latents"] = np.asarray(ex["latents"], np.float32)
        else:
            out["video"] = to_float(np.asarray(ex["video"]))
        return out


def stack_batch(elements: Sequence[Mapping[str, np.ndarray]], pad_id: int = 0) -> dict:
    """Stacks examples; text ids of unequal length are right-padded with `pad_id`."""
    lengths = {len(e["text_ids"]) for e in elements}
    length = max(lengths)
    text = np.full((len(elements), length), pad_id, np.int32)
    for i, e in enumerate(elements):
        text[i, :len(e["text_ids"])] = e["text_ids"]
    key = _data_key(elements[0])
    return {key: np.stack([e[key] for e in elements]),
            "text_ids": text,
            "id": np.asarray([e["id"] for e in elements], np.int64)}


def _data_key(element: Mapping[str, np.ndarray]) -> str:
    return "latents" if "latents" in element else "video"


def _bucket_key(element: Mapping[str, np.ndarray]) -> tuple[int, ...]:
    return tuple(int(d) for d in np.shape(element[_data_key(element)])[:3])  # (T, H, W)


class BucketBatchIterDataset(grain.IterDataset):
    """Batches a MapDataset so that each batch holds elements of one (T, H, W) bucket.

    Elements are read in order; each goes to its bucket's buffer and a full buffer
    is emitted as a batch. At the end of a finite parent the partial buffers are
    emitted oldest-first, or dropped with `drop_remainder`. The state is the next
    parent position plus the positions still waiting in buffers (re-read on
    restore), so checkpoints stay tiny and restores are exact.
    """

    def __init__(self, parent: grain.MapDataset, batch_size: int, drop_remainder: bool,
                 pad_id: int = 0):
        super().__init__(parent)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self._batch_size, self._drop_remainder, self._pad_id = batch_size, drop_remainder, pad_id

    def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
        """Called by mp_prefetch in each worker: read every n-th parent element."""
        del sequential_slice
        self._parents = (self._parent.slice(sl),)

    def __iter__(self) -> "_BucketBatchIterator":
        return _BucketBatchIterator(self._parent, self._batch_size, self._drop_remainder,
                                    self._pad_id)

    def __str__(self) -> str:
        return f"BucketBatchIterDataset(batch_size={self._batch_size})"


class _BucketBatchIterator(grain.DatasetIterator):

    def __init__(self, parent: grain.MapDataset, batch_size: int, drop_remainder: bool,
                 pad_id: int):
        super().__init__()
        self._map_parent = parent
        self._length = len(parent)
        self._batch_size, self._drop_remainder, self._pad_id = batch_size, drop_remainder, pad_id
        self._next_index = 0
        # bucket -> [(position, element)], dict keeps first-insertion order
        self._buffers: dict[tuple, list] = collections.OrderedDict()

    def _add(self, position: int, element) -> tuple | None:
        key = _bucket_key(element)
        self._buffers.setdefault(key, []).append((position, element))
        return key

    def _emit(self, key: tuple) -> dict:
        items = self._buffers.pop(key)
        return stack_batch([e for _, e in items], self._pad_id)

    def __next__(self) -> dict:
        while self._next_index < self._length:
            position = self._next_index
            element = self._map_parent[position]
            self._next_index += 1
            if element is None:  # filtered out upstream
                continue
            key = self._add(position, element)
            if len(self._buffers[key]) == self._batch_size:
                return self._emit(key)
        # End of a finite parent: flush partial buckets, oldest pending element first.
        if self._buffers and not self._drop_remainder:
            key = min(self._buffers, key=lambda k: self._buffers[k][0][0])
            return self._emit(key)
        self._buffers.clear()
        raise StopIteration

    def get_state(self) -> dict[str, Any]:
        pending = sorted(p for items in self._buffers.values() for p, _ in items)
        return {"next_index": int(self._next_index), "pending": [int(p) for p in pending]}

    def set_state(self, state: Mapping[str, Any]) -> None:
        next_index = int(state["next_index"])
        if not 0 <= next_index <= self._length:
            raise ValueError(f"Iterator state next_index={next_index} is outside the dataset "
                             f"(length {self._length}); was it saved for another dataset?")
        self._next_index = next_index
        self._buffers = collections.OrderedDict()
        for position in sorted(int(p) for p in state["pending"]):
            element = self._map_parent[position]
            if element is not None:
                self._add(position, element)

    def __str__(self) -> str:
        return f"_BucketBatchIterator(batch_size={self._batch_size})"


def make_dataset(source: Any, *, batch_size: int, seed: int, tokenize: Tokenize,
                 shuffle: bool = True, num_epochs: int | None = None,
                 spanish_prob: float = 0.5, drop_remainder: bool = True,
                 shard_index: int | None = None, shard_count: int | None = None,
                 worker_count: int = 0, worker_buffer_size: int = 2,
                 pad_id: int = 0) -> grain.IterDataset:
    """The training (or eval) pipeline as a grain IterDataset of batch dicts.

    Args:
      source: random-access data source (`len`, `__getitem__`) of tfds examples
        (e.g. `build_shapes(...)["train"]` or `open_source(dir, split)`).
      batch_size: examples per batch *on this host*.
      seed: shuffle seed and caption-language seed.
      tokenize: caption -> int32 [L]; must be picklable when `worker_count > 0`.
      shuffle: global per-epoch shuffle of this host's shard.
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
        raise ValueError(f"shard_index {shard_index} must be in [0, shard_count={shard_count}).")
    if len(source) < shard_count:
        raise ValueError(f"The source has {len(source)} records, fewer than shard_count="
                         f"{shard_count}; build a larger dataset.")
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs must be None (forever) or >= 1, got {num_epochs}.")
    if worker_count < 0:
        raise ValueError(f"worker_count must be >= 0, got {worker_count}.")
    sizes = _declared_sizes(source)
    if shard_count > 1 and len(sizes) > 1:
        logging.warning(
            "Dataset declares %d clip sizes %s and %d hosts: buckets are formed per host, "
            "so hosts may emit batches of different sizes at the same step. For multi-host "
            "training of one global batch, build one dataset per size.", len(sizes), sizes,
            shard_count)
    ds = grain.MapDataset.source(source)[shard_index::shard_count]
    if shuffle:
        ds = ds.shuffle(seed=int(seed) & 0xFFFFFFFF)
    ds = ds.repeat(num_epochs)
    ds = ds.map(ExampleTransform(tokenize, seed, spanish_prob))
    batches = BucketBatchIterDataset(ds, batch_size, drop_remainder, pad_id)
    if worker_count > 0:
        if not flags.FLAGS.is_parsed():
            # grain reads absl flags when it starts workers; outside app.run (tests,
            # notebooks) take the defaults rather than crash.
            logging.info("absl flags not parsed; marking them parsed with defaults for grain.")
            flags.FLAGS.mark_as_parsed()
        batches = batches.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=worker_count, per_worker_buffer_size=worker_buffer_size))
        # Workers hand back shared-memory arrays; copy them so callers hold plain
        # numpy arrays and no shared-memory segment outlives its batch.
        batches = batches.map(_to_plain_numpy)
    return batches


def _to_plain_numpy(batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.array(v, copy=True) for k, v in batch.items()}


def _declared_sizes(source: Any) -> list:
    """Clip sizes a tfds data source declares in its metadata ([] when unknown)."""
    info = getattr(source, "dataset_info", None)
    metadata = getattr(info, "metadata", None) or {}
    return list(metadata.get("sizes", []))


def make_iterator(source: Any, **kwargs: Any) -> grain.DatasetIterator:
    """`iter(make_dataset(source, **kwargs))`: a checkpointable iterator of batches."""
    return iter(make_dataset(source, **kwargs))
