"""tfds builder for the synthetic shapes videos, written as array_record (no TensorFlow).

  source = build_shapes(data_dir, ShapesConfig(num_train=256, num_frames=8, height=32, width=32))
  source["train"][0]  # {'video': uint8 [T,H,W,3], 'caption_en': b'...', 'caption_es': b'...',
                      #  'id': int, 'shape': b'circle', 'color': b'red', 'motion': b'growing',
                      #  'num_objects': int}

Every example is a pure function of (config.seed, split, index): rebuilding gives
identical bytes. `sizes` lists several (T, H, W) clip sizes (buckets); example i
gets one of them by a seeded draw weighted by `size_weights`. The dataset's metadata
records `sizes` and `size_counts` ({split: examples per size}), which the grain pipeline
uses to weight its per-step size choice.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
from typing import Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils

from sora_jax.data import shapes

_SPLIT_IDS = {'train': 0, 'validation': 1}
_VERSION = tfds.core.Version('1.0.0')


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
    """Knobs of the synthetic dataset. `name` defaults to a hash of the knobs."""

    name: str = ''
    num_train: int = 256  # train examples
    num_validation: int = 32  # validation examples
    num_frames: int = 8  # T, used when `sizes` is empty
    height: int = 32  # H, used when `sizes` is empty
    width: int = 32  # W, used when `sizes` is empty
    sizes: Sequence[Sequence[int]] = ()  # several (T, H, W) buckets; overrides the three above
    size_weights: Sequence[float] = ()  # relative frequency of each size; default uniform
    # attribute combos never generated, e.g. (("red", "triangle"),)
    holdout: Sequence[Sequence[str]] = ()
    max_objects: int = 3  # 1..max_objects shapes per clip
    backgrounds: Sequence[str] = shapes.BACKGROUNDS  # background kinds drawn from
    size_scale: float = 1.0  # multiplies every shape radius
    seed: int = 0  # stream seed; same seed -> identical dataset

    def __post_init__(self):
        self.sizes = tuple(tuple(int(v) for v in s) for s in self.sizes) or (
            (self.num_frames, self.height, self.width),
        )
        for s in self.sizes:
            if len(s) != 3 or min(s) < 1 or min(s[1:]) < 4:
                raise ValueError(f'Each size must be (T, H, W) with T >= 1 and H, W >= 4; got {s}.')
        if self.size_weights and len(self.size_weights) != len(self.sizes):
            raise ValueError(
                f'size_weights {tuple(self.size_weights)} must have one weight per '
                f'size in {self.sizes}.'
            )
        if self.size_weights and (min(self.size_weights) < 0 or sum(self.size_weights) <= 0):
            raise ValueError(
                f'size_weights {tuple(self.size_weights)} must be >= 0 with a positive sum.'
            )
        self.holdout = tuple(tuple(c) for c in self.holdout)
        shapes._check_holdout(self.holdout)  # pylint: disable=protected-access
        if self.num_train < 0 or self.num_validation < 0:
            raise ValueError(
                f'num_train/num_validation must be >= 0, got '
                f'{self.num_train}/{self.num_validation}.'
            )
        self.backgrounds = tuple(self.backgrounds)
        if not self.name:
            knobs = [
                self.num_train,
                self.num_validation,
                self.sizes,
                list(self.size_weights),
                self.holdout,
                self.max_objects,
                self.seed,
            ]
            if self.backgrounds != shapes.BACKGROUNDS or self.size_scale != 1.0:
                knobs += [list(self.backgrounds), self.size_scale]  # older names stay valid
            knobs = json.dumps(knobs)
            self.name = 'c' + hashlib.sha1(knobs.encode()).hexdigest()[:12]
        if not self.version:
            self.version = _VERSION


def size_for_index(config, split: str, index: int, split_ids=_SPLIT_IDS) -> tuple[int, int, int]:
    """The (T, H, W) bucket of example `index` of `split` (deterministic). `config` is any
    builder config with `sizes`, `size_weights` and `seed` (the shapes and world builders)."""
    if len(config.sizes) == 1:
        return config.sizes[0]
    w = np.asarray(config.size_weights or [1.0] * len(config.sizes), np.float64)
    rng = np.random.default_rng([config.seed & 0xFFFFFFFF, 7919, split_ids[split], index])
    return config.sizes[int(rng.choice(len(w), p=w / w.sum()))]


def size_counts(config, split: str, num: int, split_ids=_SPLIT_IDS) -> list[int]:
    """How many of examples 0..num-1 of `split` get each size of `config.sizes`."""
    drawn = collections.Counter(size_for_index(config, split, i, split_ids) for i in range(num))
    return [drawn[s] for s in config.sizes]


def make_example(config: ShapesConfig, split: str, index: int) -> dict:
    """The feature dict of example `index` of `split`."""
    t, h, w = size_for_index(config, split, index)
    # Distinct, disjoint scene streams per split: validation is not train.
    stream = config.seed * 2 + _SPLIT_IDS[split]
    scene = shapes.sample_scene(
        stream,
        index,
        num_frames=t,
        height=h,
        width=w,
        holdout=config.holdout,
        max_objects=config.max_objects,
        backgrounds=config.backgrounds,
        size_scale=config.size_scale,
    )
    first = scene.objects[0]
    return {
        'video': shapes.render(scene),
        'caption_en': shapes.caption(scene.objects, 'en'),
        'caption_es': shapes.caption(scene.objects, 'es'),
        'id': index,
        'shape': first['shape'],
        'color': first['color'],
        'motion': first['motion'],
        'num_objects': len(scene.objects),
    }


class SyntheticShapes(tfds.core.GeneratorBasedBuilder):
    """Captioned (en + es) videos of coloured shapes moving, growing and shrinking."""

    VERSION = _VERSION
    RELEASE_NOTES = {'1.0.0': 'Initial release.'}
    BUILDER_CONFIGS = [
        ShapesConfig(
            name='tiny', num_train=256, num_validation=32, num_frames=8, height=32, width=32
        ),
        ShapesConfig(
            name='small', num_train=4096, num_validation=256, num_frames=16, height=64, width=64
        ),
    ]

    @tfds_utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # tfds' default probes `importlib_resources`, which is not installed here.
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    # zlib: flat synthetic frames compress ~10x; shape varies with the bucket.
                    'video': tfds.features.Tensor(
                        shape=(None, None, None, 3), dtype=np.uint8, encoding='zlib'
                    ),
                    'caption_en': tfds.features.Text(),
                    'caption_es': tfds.features.Text(),
                    'id': np.int64,
                    'shape': tfds.features.Text(),
                    'color': tfds.features.Text(),
                    'motion': tfds.features.Text(),
                    'num_objects': np.int64,
                }
            ),
            metadata=tfds.core.MetadataDict(
                sizes=[list(s) for s in self.builder_config.sizes],
                holdout=[list(c) for c in self.builder_config.holdout],
                seed=self.builder_config.seed,
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        c = self.builder_config
        counts = {'train': c.num_train, 'validation': c.num_validation}
        # Examples per size, so the pipeline weights its size buckets without reading records.
        self.info.metadata.update(
            size_counts={split: size_counts(c, split, n) for split, n in counts.items()}
        )
        return {split: self._generate_examples(split, n) for split, n in counts.items() if n}

    def _generate_examples(self, split: str, num: int):
        for i in range(num):
            yield i, make_example(self.builder_config, split, i)


def build_shapes(data_dir: str | os.PathLike, config: ShapesConfig | str = 'tiny'):
    """Builds (once; reuses an existing build) and returns `{split: data source}`."""
    builder = SyntheticShapes(
        config=config, data_dir=os.fspath(data_dir), file_format='array_record'
    )
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(verify_ssl=False))
    logging.info(
        'synthetic_shapes/%s at %s: %s',
        builder.builder_config.name,
        builder.data_dir,
        {k: v.num_examples for k, v in builder.info.splits.items()},
    )
    return builder.as_data_source()
