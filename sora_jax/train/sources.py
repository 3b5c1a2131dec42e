"""The data a training run trains and evaluates on: `make_sources` assembles {split: source}
from `config.data` (the shapes generator or a video folder, built once with tfds), encoded into
cached VAE latents when `config.autoencoder` names one, or (objective='flow_context') into the
converted Wan folder's latents and caption features (`train/wan_frozen.py`); `make_data` makes
one split's grain dataset (tokenised, optionally shuffled, batched). `train/loop.py` calls both.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from absl import logging

from sora_jax.data import pipeline as data_pipeline
from sora_jax.models.text import ByteTokenizer
from sora_jax.train import wan_frozen


def make_sources(config) -> dict[str, Any]:
    """{split: random-access source} for config.data; VAE latents when config.autoencoder is set
    (encoded once into a cache, process i of n encoding records i::n; normalised by
    config.latent_mean/std, from the cache's train statistics when unset). With
    objective='flow_context', latents and caption features come from the converted Wan folder
    config.checkpoint (train/wan_frozen.py).

    A remote `data.data_dir` (gs://...) is built and read through a local mirror
    (`sora_jax/data/staging.py`): what the bucket holds is pulled first, what was built here is
    pushed back, so the next machine reuses it."""
    from sora_jax.data import staging

    mirror = staging.Mirror(config.data.data_dir, config.data.get('staging_dir', ''))
    mirror.pull()
    sources = _pixel_sources(config, mirror.local)
    if wan_frozen.uses_wan(config):  # latents + UMT5 features from the converted Wan folder
        sources = wan_frozen.make_sources(config, sources, mirror.local)
        mirror.push()
        return sources
    if config.get('autoencoder', 'none') in ('none', '', None):
        mirror.push()
        return sources
    from sora_jax.data import latents as latents_lib
    from sora_jax.models import frozen_vae

    vae = frozen_vae.load(config.autoencoder)
    out = latents_lib.cache_dir(mirror.local, config.data.to_dict(), config.autoencoder, vae.step)
    latents_lib.encode_dataset(sources, vae.encode, out, batch_size=8)
    mirror.push()
    if not len(config.latent_mean):
        stats = latents_lib.load_stats(out)
        config.latent_mean, config.latent_std = tuple(stats['mean']), tuple(stats['std'])
        logging.info(
            'latent stats: mean %s std %s', np.round(stats['mean'], 3), np.round(stats['std'], 3)
        )
    return {
        s: latents_lib.open_split(out, s, config.latent_mean, config.latent_std) for s in sources
    }


def _pixel_sources(config, data_dir: str) -> dict[str, Any]:
    d = config.data
    if d.name == 'shapes':
        from sora_jax.data import shapes as shapes_lib
        from sora_jax.data.builders.shapes import ShapesConfig, build_shapes

        sc = ShapesConfig(
            num_train=d.num_train,
            num_validation=d.num_validation,
            num_frames=d.num_frames,
            height=d.height,
            width=d.width,
            sizes=tuple(tuple(s) for s in d.sizes),
            size_weights=tuple(d.get('size_weights', ())),
            holdout=tuple(d.holdout),
            max_objects=d.max_objects,
            seed=config.seed,
            backgrounds=tuple(d.get('backgrounds', shapes_lib.BACKGROUNDS)),
            size_scale=float(d.get('size_scale', 1.0)),
        )
        return build_shapes(data_dir, sc)
    if d.name == 'world':
        from sora_jax.data.builders.world import WorldConfig, build_world

        sizes = tuple(tuple(s) for s in d.sizes) or ((d.num_frames, d.height, d.width),)
        wc = WorldConfig(
            num_train=d.num_train,
            num_validation=d.num_validation,
            sizes=sizes,
            size_weights=tuple(d.get('size_weights', ())),
            num_objects=tuple(d.get('num_objects', (1, 2))),
            occluder_prob=float(d.get('occluder_prob', 0.4)),
            split_seed=int(d.get('split_seed', 0)),
            seed=config.seed,
        )
        return build_world(data_dir, wc)
    if d.name in ('folder', 'video_folder'):
        from sora_jax.data.builders.video_folder import VideoFolderConfig, build_video_folder

        vc = VideoFolderConfig.from_data_config(d)
        return dict(build_video_folder(data_dir, vc))  # 'validation' only if a fraction is set
    raise ValueError(f"config.data.name={d.name!r} is not 'shapes', 'world' or 'folder'.")


def skipped_files(sources: dict[str, Any]) -> dict[str, list[str]]:
    """{reason: [paths]} of the files the dataset build skipped (video folders; {} otherwise)."""
    for src in sources.values():
        info = getattr(src, 'dataset_info', None)
        meta = getattr(info, 'metadata', None) or {}
        if 'skipped' in meta:
            return {k: list(v) for k, v in meta['skipped'].items()}
    return {}


def make_data(
    config,
    split: str,
    *,
    batch_size: int,
    shuffle: bool,
    num_epochs=None,
    sources: dict[str, Any] | None = None,
):
    sources = make_sources(config) if sources is None else sources
    if split not in sources:
        raise ValueError(f'the dataset has no {split!r} split (splits: {sorted(sources)}).')
    tok = ByteTokenizer(config.text.max_length) if 'text' in config else ByteTokenizer()
    tokenize = tok.encode_one
    if wan_frozen.uses_wan(config):  # the caption is in 'context' (its UMT5 features)
        tokenize = functools.partial(tok.encode_one, warn=False)
    return data_pipeline.make_dataset(
        sources[split],
        batch_size=batch_size,
        seed=config.seed,
        tokenize=tokenize,
        shuffle=shuffle,
        num_epochs=num_epochs,
        spanish_prob=config.data.spanish_prob,
        worker_count=config.data.worker_count if split == 'train' else 0,
    )
