"""The training-data record: what a model learned from, written beside its checkpoints.

    rec = build(dataset='video_folder', version='1.0.0', clips=[{'id': 'a.mp4', 'license':
                'cc-by-4.0', 'creator': 'Ana'}, ...], skipped={'license': 2, 'opted_out': 1})
    write(workdir, rec)          # <workdir>/data_record.json
    rec = load(checkpoint_dir)   # None when there is none

Fields: dataset name and version, clip count, clips per license, every credited creator with
their clip count, counts of clips filtered out (license not allowed, opted out, ...), and the
sha256 of the sorted, newline-joined clip ids the run could draw from. `record_hash` (the
sha256 of the canonical JSON) is what Content Credentials and `experiments/credits.py` cite.
A removal request is honoured by adding the creator or file to `data.exclude` and retraining:
the new record no longer counts them, and its clip-id hash changes.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os

FILENAME = 'data_record.json'


def build(dataset: str, version: str, clips, skipped: dict | None = None,
          synthetic: bool = False, note: str = '') -> dict:
    """clips: iterable of dicts with 'id' and optional 'license', 'creator', 'source'."""
    clips = list(clips)
    ids = sorted(str(c['id']) for c in clips)
    licenses = collections.Counter(c.get('license') or 'unspecified' for c in clips)
    creators = collections.Counter(c['creator'] for c in clips if c.get('creator'))
    return {
        'dataset': dataset, 'version': version, 'synthetic': bool(synthetic),
        'clips': len(ids),
        'licenses': dict(sorted(licenses.items())),
        'creators': [{'creator': k, 'clips': v} for k, v in sorted(creators.items())],
        'sources': sorted({c['source'] for c in clips if c.get('source')})[:1000],
        'skipped': dict(sorted((skipped or {}).items())),
        'clip_ids_sha256': hashlib.sha256('\n'.join(ids).encode()).hexdigest(),
        **({'note': note} if note else {}),
    }


def record_hash(rec: dict) -> str:
    return hashlib.sha256(json.dumps(rec, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def write(directory: str, rec: dict) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, FILENAME)
    with open(path + '.tmp', 'w', encoding='utf-8') as f:
        json.dump(rec, f, indent=1, sort_keys=True, ensure_ascii=False)
        f.write('\n')
    os.replace(path + '.tmp', path)
    return path


def load(directory: str) -> dict | None:
    path = os.path.join(os.fspath(directory), FILENAME)
    if not os.path.isfile(path):
        return None
    with open(path, encoding='utf-8') as f:
        return json.load(f)


def for_config(config) -> dict:
    """The record of what a training config's data section draws from: the shapes generator
    (synthetic, no creators) or a video folder (its captions file's fields, after filtering)."""
    if str(config.data.get('name', 'shapes')) != 'shapes':
        raise ValueError(f"data records for data.name={config.data.get('name')!r} need the video "
                         "folder's creator/license fields (not wired yet); build one with "
                         "record.build(...) from the captions file.")
    from sora_jax.data import shapes
    return build(f'shapes (synthetic, sora_jax.data.shapes, seed {config.get("seed", 0)})',
                 version=getattr(shapes, 'VERSION', '1'), clips=[], synthetic=True,
                 note='clips are drawn procedurally while training (none stored, no third-party '
                      'content), so there are no clip ids, licenses or creators')


def describe(rec: dict) -> str:
    """A human-readable credits listing."""
    lines = [f"dataset: {rec['dataset']} (version {rec['version']})" +
             (' - synthetic data, no creators' if rec.get('synthetic') else ''),
             f"clips: {rec['clips']}"] + ([f"note: {rec['note']}"] if rec.get('note') else [])
    if rec.get('licenses'):
        lines.append('licenses: ' + ', '.join(f'{k} {v}' for k, v in rec['licenses'].items()))
    if rec.get('skipped'):
        lines.append('filtered out: ' + ', '.join(f'{k} {v}' for k, v in rec['skipped'].items()))
    if rec.get('creators'):
        lines.append(f"credited creators ({len(rec['creators'])}):")
        lines += [f"  {c['creator']}: {c['clips']} clip{'s' if c['clips'] != 1 else ''}"
                  for c in rec['creators']]
    lines.append(f"clip ids sha256: {rec['clip_ids_sha256']}")
    lines.append(f'record sha256: {record_hash(rec)}')
    return '\n'.join(lines)
