"""tfds builder over a folder of videos + captions, written as array_record.

  folder/
    a.mp4  b.webm  sub/c.gif ...
    captions.jsonl     {"file": "a.mp4", "caption": "...", "caption_es": "..."(optional),
                        "creator": "...", "license": "cc-by-4.0", "source": "https://..."(optional)}
    (or captions.csv   header: file,caption[,caption_es,creator,license,source])

  source = build_video_folder(data_dir, VideoFolderConfig(folder="folder", sizes=((8, 32, 32),)))
  source["train"][0]  # {'video': uint8 [T,H,W,3], 'caption_en': b'...', 'caption_es': b'',
                      #  'id': int, 'file': b'a.mp4'}

The layout matches the shapes builder (video, caption_en, caption_es, id), so the
grain pipeline serves both. `caption` goes to `caption_en`; `caption_es` is
empty unless given (the pipeline then falls back to the English caption).

Each clip goes to the first (T, H, W) in `sizes` it can fill: at least
(T - 1) * frame_stride + 1 frames and H x W pixels; it is centre-cropped to the
H:W aspect, resized, and its first T (strided) frames kept. Files that cannot
be used are skipped, never fatal: missing caption, unreadable (empty, not a
video, truncated), too short, too small, a symlink whose target lies outside the folder
(symlinked directories are not entered). Two caption rows for one file are an error naming
both lines (either would silently drop the other's credits). Each is logged with its path, and the
counts and paths are stored in `builder.info.metadata["skipped"]`; the clips kept
per size and split in `metadata["size_counts"]`.

Credits and consent: `creator`, `license` and `source` are optional per clip. With
`allowed_licenses` set, a clip whose license is not one of them (compared case-insensitively;
a clip without one is not allowed) is skipped as "license_not_allowed"; a clip whose creator,
file name (relative path or base name) or source is listed in the `exclude` file (one per line,
`#` comments; a removal request) is skipped as "opted_out". Both are checked before decoding
and counted with the other skips. Every kept clip's file and credits are stored per split in
`metadata["credits"]` ({split: [{"file", "creator", "license", "source"}]}), which
sora_jax/safety/record.py turns into the training-data record.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import pathlib
import zlib
from typing import Sequence

import mediapy
import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils

from sora_jax.io import video as video_io

VIDEO_EXTENSIONS = ('.mp4', '.webm', '.gif', '.mov', '.mkv', '.avi')
SKIP_REASONS = (
    'missing_caption',
    'opted_out',
    'license_not_allowed',
    'unreadable',
    'too_short',
    'too_small',
)  # and 'outside_folder' (a symlink whose target lies outside the folder), only when it occurs
CREDIT_FIELDS = ('creator', 'license', 'source')
_VERSION = tfds.core.Version('1.0.0')


@dataclasses.dataclass(eq=False)
class VideoFolderConfig(tfds.core.BuilderConfig):
    """Where the videos are and how clips are cut. `name` defaults to a content hash."""

    name: str = ''
    folder: str = ''  # folder holding the videos (searched recursively)
    captions: str = ''  # captions file; default folder/captions.{jsonl,csv}
    sizes: Sequence[Sequence[int]] = ((8, 32, 32),)  # (T, H, W) buckets, in order of preference
    frame_stride: int = 1  # keep every n-th frame
    validation_fraction: float = 0.0  # files hashed (by path) into the validation split
    allowed_licenses: Sequence[str] = ()  # keep only clips with one of these licenses (): any
    exclude: str = ''  # opt-out file: creators / file names / sources to drop

    def __post_init__(self):
        if not self.folder or not os.path.isdir(self.folder):
            raise ValueError(
                f'VideoFolderConfig.folder={self.folder!r} is not a directory; '
                'point it at the folder holding the videos.'
            )
        self.sizes = tuple(tuple(int(v) for v in s) for s in self.sizes)
        if not self.sizes or any(len(s) != 3 or min(s) < 1 for s in self.sizes):
            raise ValueError(f'sizes must be a non-empty list of (T, H, W) >= 1, got {self.sizes}.')
        if self.frame_stride < 1:
            raise ValueError(f'frame_stride must be >= 1, got {self.frame_stride}.')
        self.allowed_licenses = tuple(str(x).strip() for x in self.allowed_licenses)
        if any(not x for x in self.allowed_licenses):
            raise ValueError(
                f'allowed_licenses={self.allowed_licenses} holds an empty name; list '
                "license names such as 'cc-by-4.0', or () to allow any."
            )
        if self.exclude and not os.path.isfile(self.exclude):
            raise ValueError(
                f'VideoFolderConfig.exclude={self.exclude!r} is not a file; give a '
                "text file with one creator or file name per line, or '' for none."
            )
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(
                f'validation_fraction must be in [0, 1), got {self.validation_fraction}.'
            )
        if not self.captions:
            for candidate in ('captions.jsonl', 'captions.csv'):
                if os.path.isfile(os.path.join(self.folder, candidate)):
                    self.captions = os.path.join(self.folder, candidate)
                    break
            else:
                raise ValueError(
                    f'No captions.jsonl or captions.csv in {self.folder!r}; add one '
                    'or set VideoFolderConfig.captions.'
                )
        if not self.name:
            # The folder's listing (names, sizes, mtimes) is part of the name, so a
            # changed folder builds anew instead of reusing a stale build.
            listing = sorted(
                (str(p), p.stat().st_size, int(p.stat().st_mtime))
                for p in pathlib.Path(self.folder).rglob('*')
                if p.is_file()
            )
            # The captions and opt-out contents too: an edited exclude file rebuilds.
            contents = [_sha256(p) for p in (self.captions, self.exclude) if p]
            knobs = json.dumps(
                [
                    os.path.abspath(self.folder),
                    self.captions,
                    self.sizes,
                    self.frame_stride,
                    self.validation_fraction,
                    listing,
                    sorted(x.casefold() for x in self.allowed_licenses),
                    contents,
                ]
            )
            self.name = 'f' + hashlib.sha1(knobs.encode()).hexdigest()[:12]
        if not self.version:
            self.version = _VERSION

    @classmethod
    def from_data_config(cls, d) -> 'VideoFolderConfig':
        """From a training config's data section (data.name='folder')."""
        sizes = tuple(tuple(s) for s in d.sizes) or ((d.num_frames, d.height, d.width),)
        return cls(
            folder=d.get('folder', ''),
            captions=d.get('captions', ''),
            sizes=sizes,
            frame_stride=d.get('frame_stride', 1),
            validation_fraction=d.get('validation_fraction', 0.0),
            allowed_licenses=tuple(d.get('allowed_licenses', ())),
            exclude=d.get('exclude', ''),
        )


def _sha256(path: str) -> str:
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def read_exclude(path: str) -> set[str]:
    """The opt-out entries of an exclude file, case-folded: one creator, file name or source per
    line; blank lines and `#` comments ignored."""
    if not path:
        return set()
    with open(path, encoding='utf-8') as f:
        lines = (line.split('#', 1)[0].strip() for line in f)
        return {line.casefold() for line in lines if line}


def filter_reason(rel: str, entry: dict, allowed_licenses, excluded: set[str]) -> str | None:
    """ "opted_out" / "license_not_allowed" for a clip the data rules drop, else None."""
    names = {
        entry.get('creator', ''),
        entry.get('source', ''),
        os.path.normpath(rel),
        os.path.basename(rel),
    }
    if excluded & {n.casefold() for n in names if n}:
        return 'opted_out'
    if allowed_licenses and entry.get('license', '').casefold() not in {
        x.casefold() for x in allowed_licenses
    }:
        return 'license_not_allowed'
    return None


def read_captions(path: str) -> dict[str, dict[str, str]]:
    """{relative file: {"caption_en", "caption_es"[, "creator", "license", "source"]}} from a
    .jsonl or .csv file (credit fields only where given). Two rows for one file are a
    ValueError naming the captions file and both line numbers: keeping either would silently
    drop the other's caption and credits from the data record."""
    entries: dict[str, dict[str, str]] = {}
    lines: dict[str, int] = {}  # file -> line of its row
    rows: list[tuple[int, dict]] = []
    if path.endswith('.jsonl'):
        with open(path, encoding='utf-8') as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append((n, json.loads(line)))
                except json.JSONDecodeError as e:
                    logging.warning('%s:%d: skipping malformed caption line (%s)', path, n, e)
    elif path.endswith('.csv'):
        with open(path, encoding='utf-8', newline='') as f:
            reader = csv.DictReader(f)
            rows = [(reader.line_num, row) for row in reader]
    else:
        raise ValueError(f'Captions file {path!r} must end in .jsonl or .csv.')
    for n, row in rows:
        caption = str(row.get('caption') or '').strip() if isinstance(row, dict) else ''
        if not isinstance(row, dict) or not row.get('file') or not caption:
            logging.warning('%s: skipping caption row without file/caption: %r', path, row)
            continue
        key = os.path.normpath(row['file'])
        if key in lines:
            raise ValueError(
                f'{path}: lines {lines[key]} and {n} both describe {row["file"]!r}; keep one '
                'row per video (merge their captions and credits).'
            )
        lines[key] = n
        credits = {k: str(row.get(k) or '').strip() for k in CREDIT_FIELDS}
        entries[key] = {
            'caption_en': str(row['caption']).strip(),
            'caption_es': str(row.get('caption_es') or '').strip(),
            **{k: v for k, v in credits.items() if v},
        }
    return entries


def pick_size(num_frames: int, height: int, width: int, sizes, stride: int):
    """(size, None) for the first size the clip can fill, else (None, reason)."""
    for t, h, w in sizes:
        if num_frames >= (t - 1) * stride + 1 and height >= h and width >= w:
            return (t, h, w), None
    long_enough = any(num_frames >= (t - 1) * stride + 1 for t, _, _ in sizes)
    return None, ('too_small' if long_enough else 'too_short')


def cut_clip(video: np.ndarray, size, stride: int) -> np.ndarray:
    """First T strided frames, centre-cropped to H:W and resized: uint8 [T, H, W, 3]."""
    t, h, w = size
    frames = video[: (t - 1) * stride + 1 : stride]
    vh, vw = frames.shape[1:3]
    if vh * w > vw * h:  # too tall: crop rows
        ch = max(h, round(vw * h / w))
        top = (vh - ch) // 2
        frames = frames[:, top : top + ch]
    else:  # too wide: crop columns
        cw = max(w, round(vh * w / h))
        left = (vw - cw) // 2
        frames = frames[:, :, left : left + cw]
    if frames.shape[1:3] != (h, w):
        frames = mediapy.resize_video(frames, (h, w))
    return np.asarray(frames, np.uint8)


class VideoFolder(tfds.core.GeneratorBasedBuilder):
    """Captioned clips cut from a folder of video files."""

    VERSION = _VERSION
    RELEASE_NOTES = {'1.0.0': 'Initial release.'}

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
                    'video': tfds.features.Tensor(
                        shape=(None, None, None, 3), dtype=np.uint8, encoding='zlib'
                    ),
                    'caption_en': tfds.features.Text(),
                    'caption_es': tfds.features.Text(),
                    'id': np.int64,
                    'file': tfds.features.Text(),
                }
            ),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        c = self.builder_config
        folder = pathlib.Path(c.folder)
        self._skipped = {reason: [] for reason in SKIP_REASONS}
        inside = os.path.realpath(folder)
        files = []
        for p in sorted(folder.rglob('*')):  # rglob does not enter symlinked directories
            if not (p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS):
                continue
            target = os.path.realpath(p)
            if os.path.commonpath([target, inside]) != inside:  # a symlink out of the folder
                self._skip('outside_folder', str(p), f'a symlink to {target}, outside {inside}')
                continue
            files.append(str(p.relative_to(folder)))
        captions = read_captions(c.captions)
        missing_files = sorted(set(captions) - {os.path.normpath(f) for f in files})
        for f in missing_files:
            logging.warning('caption for %s but no such video in %s', f, c.folder)
        self._kept = {'train': 0, 'validation': 0}
        # clips per size of `sizes` and split (the pipeline weights its size buckets by them)
        self._size_counts = {'train': [0] * len(c.sizes), 'validation': [0] * len(c.sizes)}
        self._credits = {'train': [], 'validation': []}  # kept clips: file + credit fields
        self._excluded = read_exclude(c.exclude)
        self.info.metadata.update(
            files=len(files),
            captions_without_video=missing_files,
            skipped=self._skipped,
            kept=self._kept,
            sizes=[list(s) for s in c.sizes],
            size_counts=self._size_counts,
            credits=self._credits,
            allowed_licenses=list(c.allowed_licenses),
            exclude=c.exclude,
            exclude_entries=len(self._excluded),
        )
        splits = {'train': [], 'validation': []}
        for i, f in enumerate(files):
            val = zlib.crc32(f.encode()) % 10_000 < c.validation_fraction * 10_000
            splits['validation' if val else 'train'].append((i, f))
        gens = {'train': self._generate_examples(splits['train'], captions, 'train')}
        if c.validation_fraction > 0:
            gens['validation'] = self._generate_examples(
                splits['validation'], captions, 'validation'
            )
        return gens

    def _skip(self, reason: str, path: str, detail: str) -> None:
        self._skipped.setdefault(reason, []).append(path)
        logging.warning('skipping %s (%s): %s', path, reason, detail)

    def _generate_examples(self, items, captions, split):
        c = self.builder_config
        for index, rel in items:
            path = os.path.join(c.folder, rel)
            entry = captions.get(os.path.normpath(rel))
            if entry is None:
                self._skip('missing_caption', path, f'no entry in {c.captions}')
                continue
            reason = filter_reason(rel, entry, c.allowed_licenses, self._excluded)
            if reason is not None:
                self._skip(
                    reason,
                    path,
                    f'listed in {c.exclude}'
                    if reason == 'opted_out'
                    else f'license {entry.get("license")!r} not in {list(c.allowed_licenses)}',
                )
                continue
            try:
                video = video_io.read_video(path)
            except ValueError as e:
                self._skip('unreadable', path, str(e))
                continue
            size, reason = pick_size(*video.shape[:3], c.sizes, c.frame_stride)
            if size is None:
                self._skip(
                    reason,
                    path,
                    f'clip {video.shape[:3]} fits none of sizes {c.sizes} '
                    f'(frame_stride {c.frame_stride})',
                )
                continue
            self._kept[split] += 1
            self._size_counts[split][c.sizes.index(size)] += 1
            self._credits[split].append(
                {'file': rel, **{k: entry.get(k, '') for k in CREDIT_FIELDS}}
            )
            yield (
                index,
                {
                    'video': cut_clip(video, size, c.frame_stride),
                    'id': index,
                    'file': rel,
                    'caption_en': entry['caption_en'],
                    'caption_es': entry['caption_es'],
                },
            )
        logging.info(
            'video_folder %s split %s: kept %d; skipped %s',
            c.folder,
            split,
            self._kept[split],
            {k: len(v) for k, v in self._skipped.items()},
        )


def build_video_folder(data_dir: str | os.PathLike, config: VideoFolderConfig):
    """Builds (once per folder content + knobs) and returns `{split: data source}`."""
    builder = VideoFolder(config=config, data_dir=os.fspath(data_dir), file_format='array_record')
    try:
        builder.download_and_prepare()
    except AssertionError as e:  # tfds refuses to write an empty split
        if 'No examples were yielded' not in str(e):
            raise
        skipped = getattr(builder, '_skipped', {})
        raise ValueError(
            f'No usable clip in {config.folder!r} for a split ({e}); skipped '
            f'{ {k: len(v) for k, v in skipped.items()} }. Check the captions file, '
            f'the files, and sizes={config.sizes} (clips must be at least that long/large).'
        ) from e
    meta = builder.info.metadata
    logging.info(
        'video_folder %s -> %s: %d files, kept %s, skipped %s (%s)',
        config.folder,
        builder.data_dir,
        meta.get('files', 0),
        meta.get('kept'),
        {k: len(v) for k, v in meta.get('skipped', {}).items()},
        {k: v for k, v in meta.get('skipped', {}).items() if v},
    )
    return builder.as_data_source()
