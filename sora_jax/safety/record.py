"""The training-data record: what a model learned from, written beside its checkpoints.

    rec = build(dataset='video_folder', version='1.0.0', clips=[{'id': 'a.mp4', 'license':
                'cc-by-4.0', 'creator': 'Ana'}, ...], skipped={'license': 2, 'opted_out': 1})
    write(workdir, rec)          # <workdir>/data_record.json
    rec = load(checkpoint_dir)   # None when there is none
    write_for_run(workdir, for_config(config, sources))   # what train/loop.py does at start-up

Fields: dataset name and version, clip count, clips per license, every credited creator with
their clip count, counts of clips filtered out (license not allowed, opted out, ...), and the
sha256 of the sorted, newline-joined clip ids the run could draw from. `record_hash` (the
sha256 of the canonical JSON) is what Content Credentials and `experiments/credits.py` cite.
A removal request is honoured by adding the creator or file to `data.exclude` and retraining:
the new record no longer counts them, and its clip-id hash changes. A run resumed on data
that changed since it started keeps the earlier records inside the new one
(`earlier_records`): the model learned from those clips too.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os

from absl import logging
from etils import epath

FILENAME = 'data_record.json'


def build(
    dataset: str,
    version: str,
    clips,
    skipped: dict | None = None,
    synthetic: bool = False,
    note: str = '',
    filters: dict | None = None,
) -> dict:
    """clips: iterable of dicts with 'id' and optional 'license', 'creator', 'source'."""
    clips = list(clips)
    ids = sorted(str(c['id']) for c in clips)
    licenses = collections.Counter(c.get('license') or 'unspecified' for c in clips)
    creators = collections.Counter(c['creator'] for c in clips if c.get('creator'))
    return {
        'dataset': dataset,
        'version': version,
        'synthetic': bool(synthetic),
        'clips': len(ids),
        'licenses': dict(sorted(licenses.items())),
        'creators': [{'creator': k, 'clips': v} for k, v in sorted(creators.items())],
        'sources': sorted({c['source'] for c in clips if c.get('source')})[:1000],
        'skipped': dict(sorted((skipped or {}).items())),
        **({'filters': filters} if filters else {}),
        'clip_ids_sha256': hashlib.sha256('\n'.join(ids).encode()).hexdigest(),
        **({'note': note} if note else {}),
    }


def record_hash(rec: dict) -> str:
    return hashlib.sha256(json.dumps(rec, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def write(directory: str, rec: dict) -> str:
    directory = epath.Path(directory)  # any etils.epath path (gs://...), not only local
    directory.mkdir(parents=True, exist_ok=True)
    path, tmp = directory / FILENAME, directory / (FILENAME + '.tmp')
    tmp.write_text(
        json.dumps(rec, indent=1, sort_keys=True, ensure_ascii=False) + '\n', encoding='utf-8'
    )
    tmp.replace(path)
    return os.fspath(path)


def load(directory: str) -> dict | None:
    path = epath.Path(directory) / FILENAME
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding='utf-8'))


def for_config(config, sources: dict | None = None) -> dict:
    """The record of what a training config's data section draws from: the shapes generator
    (synthetic, no creators) or a video folder's train split (its captions file's credit fields,
    after data.allowed_licenses / data.exclude). `sources`: the folder's tfds data sources when
    already built (train/loop.py passes its own); otherwise the folder is built (or its build
    reused). A run warm-started with train.init_from also learned from that run's data: its
    record (or a note that it has none) is kept under `init_from`."""
    rec = _for_data(config, sources)
    base = config.train.get('init_from', '') if 'train' in config else ''
    if base:
        rec['init_from'] = load(base) or {
            'note': f'{os.path.basename(os.path.normpath(base))} has no data record'
        }
    return rec


def _for_data(config, sources) -> dict:
    name = str(config.data.get('name', 'shapes'))
    if name in ('folder', 'video_folder'):
        return _for_folder(config.data, sources)
    if name not in ('shapes', 'world'):
        raise ValueError(
            f"config.data.name={name!r}: no data record for it; use 'shapes', 'world' or 'folder'."
        )
    from sora_jax.data import shapes

    return build(
        f'{name} (synthetic, sora_jax.data.{name}, seed {config.get("seed", 0)})',
        version=getattr(shapes, 'VERSION', '1'),
        clips=[],
        synthetic=True,
        note='clips are drawn procedurally while training (none stored, no third-party '
        'content), so there are no clip ids, licenses or creators',
    )


def _for_folder(data, sources) -> dict:
    from sora_jax.data.builders import video_folder

    vc = video_folder.VideoFolderConfig.from_data_config(data)
    meta = _folder_metadata(sources)
    if meta is None:  # latent sources (or none given): the pixel build holds the credits
        from sora_jax.data import staging  # a gs:// data_dir: its local mirror holds the build

        local = staging.Mirror(data.data_dir, data.get('staging_dir', '')).local
        meta = _folder_metadata(video_folder.build_video_folder(local, vc))
    if meta is None:
        raise ValueError(
            f'the build of data.folder={data.folder!r} has no credits metadata '
            f'(built before credits existed); delete its tfds build under '
            f'{data.data_dir}/video_folder and rerun.'
        )
    clips = [
        {
            'id': c['file'],
            'license': c.get('license', '').lower(),  # SPDX: any case
            **{k: c[k] for k in ('creator', 'source') if c.get(k)},
        }
        for c in meta['credits'].get('train', [])
    ]
    held_out = len(meta['credits'].get('validation', []))
    return build(
        f'video_folder:{os.path.basename(os.path.normpath(vc.folder))}',
        version=f'{vc.version}+{vc.name}',
        clips=clips,
        skipped={k: len(v) for k, v in meta.get('skipped', {}).items()},
        filters={
            'allowed_licenses': sorted(vc.allowed_licenses) or 'any',
            'exclude_entries': int(meta.get('exclude_entries', 0)),
        },
        note=(
            f'{held_out} held-out validation clips (evaluation only) not counted'
            if held_out
            else ''
        ),
    )


def _folder_metadata(sources) -> dict | None:
    for src in (sources or {}).values():
        meta = getattr(getattr(src, 'dataset_info', None), 'metadata', None) or {}
        if 'credits' in meta:
            return meta
    return None


def write_for_run(workdir: str, rec: dict) -> str | None:
    """Writes a training run's record (process 0 only). Resuming on data that differs from the
    record already there keeps that one under `earlier_records` (its clips were trained on)."""
    import jax

    if jax.process_index() != 0:
        return None
    old = load(workdir)
    cdir = epath.Path(workdir) / 'checkpoints'
    resumed = cdir.is_dir() and any(True for _ in cdir.iterdir())
    if old is not None and resumed:
        earlier = old.pop('earlier_records', [])
        if old != rec:
            logging.warning(
                'data record: the data changed since this run started (clip ids '
                '%s -> %s); the new record keeps the earlier one: the checkpoints '
                'learned from it. Retrain from scratch to drop those clips.',
                old['clip_ids_sha256'][:12],
                rec['clip_ids_sha256'][:12],
            )
            earlier = earlier + [old]
        if earlier:
            rec = {**rec, 'earlier_records': earlier}
    path = write(workdir, rec)
    logging.info(
        'data record %s: %d clips, licenses %s, %d credited creators, sha256 %s',
        path,
        rec['clips'],
        rec['licenses'],
        len(rec['creators']),
        record_hash(rec)[:16],
    )
    return path


def describe(rec: dict) -> str:
    """A human-readable credits listing."""
    lines = [
        f'dataset: {rec["dataset"]} (version {rec["version"]})'
        + (' - synthetic data, no creators' if rec.get('synthetic') else ''),
        f'clips: {rec["clips"]}',
    ] + ([f'note: {rec["note"]}'] if rec.get('note') else [])
    if rec.get('licenses'):
        lines.append('licenses: ' + ', '.join(f'{k} {v}' for k, v in rec['licenses'].items()))
    if rec.get('skipped'):
        lines.append('filtered out: ' + ', '.join(f'{k} {v}' for k, v in rec['skipped'].items()))
    if rec.get('creators'):
        lines.append(f'credited creators ({len(rec["creators"])}):')
        lines += [
            f'  {c["creator"]}: {c["clips"]} clip{"s" if c["clips"] != 1 else ""}'
            for c in rec['creators']
        ]
    if rec.get('filters'):
        lines.append('filters: ' + ', '.join(f'{k} {v}' for k, v in rec['filters'].items()))
    lines.append(f'clip ids sha256: {rec["clip_ids_sha256"]}')
    if rec.get('init_from'):
        base = rec['init_from']
        lines.append(
            'warm-started from a run trained on: '
            + (
                f'{base["dataset"]} ({base["clips"]} clips, record sha256 {record_hash(base)[:16]})'
                if 'dataset' in base
                else base.get('note', 'unknown data')
            )
        )
    if rec.get('earlier_records'):
        lines.append(
            f'also trained on {len(rec["earlier_records"])} earlier version(s) of the '
            'data (the run resumed after its data changed): '
            + ', '.join(r['clip_ids_sha256'][:12] for r in rec['earlier_records'])
        )
    lines.append(f'record sha256: {record_hash(rec)}')
    return '\n'.join(lines)
