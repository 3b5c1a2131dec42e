"""tfds builder for the physics world (`sora_jax/data/world.py`), written as array_record.

  source = build_world(data_dir, WorldConfig(num_train=256, sizes=((33, 64, 64),)))
  source['train'][0]  # {'video': uint8 [T,H,W,3], 'caption_en': b'...', 'caption_es': b'...',
                      #  'id': int, 'num_objects': int, 'position': f32 [N,T,2],
                      #  'velocity': f32 [N,T,2], 'visibility': f32 [N,T], 'size': f32 [N],
                      #  'gravity': f32 [N], 'attributes': b'[["circle", "red", "bouncing"]]',
                      #  'occluder': b'["vertical", 30, 40]' or b'[]', 'background': b'gradient'}

Splits: 'train' and 'validation' (disjoint streams of training scenes: no held-out pair or
combination of `split_seed`'s split), and 'held_out' (scenes that each hold one). Every example
is a pure function of (config, split, index). A clip of T frames is T consecutive frames (from a
seeded offset) of a `scene_frames`-frame scene, so short clips and single frames (a VAE's
image stage) see every phase of the motion; the ground truth is cut the same way. `sizes` lists
(T, H, W) buckets as in builders/shapes.py (metadata `size_counts` per split).
"""

from __future__ import annotations

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

from sora_jax.data import world
from sora_jax.data.builders import shapes as shapes_builder

_SPLIT_IDS = {'train': 0, 'validation': 1, 'held_out': 2}
_VERSION = tfds.core.Version('1.0.0')


@dataclasses.dataclass(eq=False)
class WorldConfig(tfds.core.BuilderConfig):
    """Knobs of the world dataset. `name` defaults to a hash of the knobs."""

    name: str = ''
    num_train: int = 256  # train examples
    num_validation: int = 32  # validation examples (training distribution, another stream)
    num_held_out: int = 0  # examples holding a held-out pair or combination
    sizes: Sequence[Sequence[int]] = ((33, 64, 64),)  # (T, H, W) buckets
    size_weights: Sequence[float] = ()  # relative frequency of each size; default uniform
    scene_frames: int = 33  # frames of the scene a clip is cut from (>= every T)
    num_objects: Sequence[int] = (1, 2)  # object counts drawn from
    occluder_prob: float = 0.4  # chance of a bar
    motions: Sequence[str] = tuple(world.MOTIONS)  # motions drawn from
    backgrounds: Sequence[str] = world.BACKGROUNDS  # background kinds drawn from
    split_seed: int = 0  # world.holdout_split(split_seed) decides what is held out
    seed: int = 0  # stream seed; same seed -> identical dataset

    def __post_init__(self):
        self.sizes = tuple(tuple(int(v) for v in s) for s in self.sizes)
        for s in self.sizes:
            if len(s) != 3 or not 1 <= s[0] <= self.scene_frames or min(s[1:]) < 48:
                raise ValueError(
                    f'Each size must be (T, H, W) with 1 <= T <= scene_frames='
                    f'{self.scene_frames} and H, W >= 48; got {s}.'
                )
        if self.size_weights and len(self.size_weights) != len(self.sizes):
            raise ValueError(
                f'size_weights {tuple(self.size_weights)} must have one weight per size in '
                f'{self.sizes}.'
            )
        if min(self.num_train, self.num_validation, self.num_held_out) < 0:
            raise ValueError(
                f'num_train/num_validation/num_held_out must be >= 0, got {self.num_train}/'
                f'{self.num_validation}/{self.num_held_out}.'
            )
        self.num_objects = tuple(int(n) for n in self.num_objects)
        self.motions, self.backgrounds = tuple(self.motions), tuple(self.backgrounds)
        if not self.name:
            knobs = [
                self.num_train,
                self.num_validation,
                self.num_held_out,
                self.sizes,
                list(self.size_weights),
                self.scene_frames,
                list(self.num_objects),
                self.occluder_prob,
                list(self.motions),
                list(self.backgrounds),
                self.split_seed,
                self.seed,
            ]
            self.name = 'w' + hashlib.sha1(json.dumps(knobs).encode()).hexdigest()[:12]
        if not self.version:
            self.version = _VERSION


def size_for_index(config: WorldConfig, split: str, index: int) -> tuple[int, int, int]:
    """The (T, H, W) bucket of example `index` of `split` (deterministic)."""
    return shapes_builder.size_for_index(config, split, index, _SPLIT_IDS)


def make_example(config: WorldConfig, split: str, index: int) -> dict:
    """The feature dict of example `index` of `split`."""
    t, h, w = size_for_index(config, split, index)
    scene = world.sample_scene(
        config.seed * 3 + _SPLIT_IDS[split],  # disjoint streams per split
        index,
        num_frames=config.scene_frames,
        height=h,
        width=w,
        split=world.holdout_split(config.split_seed),
        subset='held_out' if split == 'held_out' else 'train',
        num_objects=config.num_objects,
        occluder_prob=config.occluder_prob,
        motions=config.motions,
        backgrounds=config.backgrounds,
    )
    rng = np.random.default_rng([config.seed & 0xFFFFFFFF, 5147, _SPLIT_IDS[split], index])
    s = int(rng.integers(0, config.scene_frames - t + 1))
    truth = world.truth_arrays(scene)
    return {
        'video': world.render(scene)[s : s + t],
        'caption_en': world.caption(scene, 'en'),
        'caption_es': world.caption(scene, 'es'),
        'id': index,
        'num_objects': len(scene.objects),
        'position': truth['position'][:, s : s + t],
        'velocity': truth['velocity'][:, s : s + t],
        'visibility': truth['visibility'][:, s : s + t],
        'size': truth['size'],
        'gravity': truth['gravity'],
        'attributes': json.dumps(list(zip(truth['shape'], truth['color'], truth['motion']))),
        'occluder': json.dumps(truth['occluder']),
        'background': truth['background'],
    }


class PhysicsWorld(tfds.core.GeneratorBasedBuilder):
    """Captioned (en + es) clips of objects moving, bouncing, falling and passing behind a bar,
    with per-frame ground truth."""

    VERSION = _VERSION
    RELEASE_NOTES = {'1.0.0': 'Initial release.'}
    BUILDER_CONFIGS = [WorldConfig(name='tiny', num_train=64, num_validation=8, num_held_out=8)]

    @tfds_utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)  # tfds' default probes `importlib_resources`

    def _info(self) -> tfds.core.DatasetInfo:
        f32 = np.float32
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    'video': tfds.features.Tensor(
                        shape=(None, None, None, 3), dtype=np.uint8, encoding='zlib'
                    ),
                    'caption_en': tfds.features.Text(),
                    'caption_es': tfds.features.Text(),
                    'id': np.int64,
                    'num_objects': np.int64,
                    'position': tfds.features.Tensor(
                        shape=(None, None, 2), dtype=f32, encoding='zlib'
                    ),
                    'velocity': tfds.features.Tensor(
                        shape=(None, None, 2), dtype=f32, encoding='zlib'
                    ),
                    'visibility': tfds.features.Tensor(
                        shape=(None, None), dtype=f32, encoding='zlib'
                    ),
                    'size': tfds.features.Tensor(shape=(None,), dtype=f32),
                    'gravity': tfds.features.Tensor(shape=(None,), dtype=f32),
                    'attributes': tfds.features.Text(),
                    'occluder': tfds.features.Text(),
                    'background': tfds.features.Text(),
                }
            ),
            metadata=tfds.core.MetadataDict(
                sizes=[list(s) for s in self.builder_config.sizes],
                split_seed=self.builder_config.split_seed,
                seed=self.builder_config.seed,
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        c = self.builder_config
        counts = {'train': c.num_train, 'validation': c.num_validation, 'held_out': c.num_held_out}
        self.info.metadata.update(
            size_counts={
                split: shapes_builder.size_counts(c, split, n, _SPLIT_IDS)
                for split, n in counts.items()
            }
        )
        return {split: self._generate_examples(split, n) for split, n in counts.items() if n}

    def _generate_examples(self, split: str, num: int):
        for i in range(num):
            yield i, make_example(self.builder_config, split, i)


def build_world(data_dir: str | os.PathLike, config: WorldConfig | str = 'tiny'):
    """Builds (once; reuses an existing build) and returns `{split: data source}`."""
    builder = PhysicsWorld(config=config, data_dir=os.fspath(data_dir), file_format='array_record')
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(verify_ssl=False))
    logging.info(
        'physics_world/%s at %s: %s',
        builder.builder_config.name,
        builder.data_dir,
        {k: v.num_examples for k, v in builder.info.splits.items()},
    )
    return builder.as_data_source()
