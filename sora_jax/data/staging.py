"""A `data.data_dir` in a bucket (`gs://...`, any non-local etils.epath path), mirrored on disk.

The prepared datasets (tfds array_record shards) and the latent cache are array_record files,
which array_record opens only as local files. So a remote data directory is used through a local
mirror:

  pull   files under the remote directory that the mirror lacks (or holds at another size) are
         copied down, so a dataset prepared on one machine is reused on the next;
  build  the dataset builders and the latent encoder run on the mirror as on any local
         directory (tfds reuses what it finds, generates what is missing);
  push   files the remote directory lacks are copied up (process 0 only), so the next machine
         pulls them instead of building them again.

The mirror is `data.staging_dir` when set, else `$XDG_CACHE_HOME/sora_jax/data/<hash of the
URI>` (`~/.cache` without XDG_CACHE_HOME). It is kept between runs: a second run on the same
machine copies nothing. Work directories of tfds still being written (`incomplete.*`) and lock
files are never copied. Local paths are used as they are (no mirror, no copies).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from typing import Iterator

from absl import logging
from etils import epath

_SKIP_PREFIXES = ('incomplete.', '.')  # tfds work dirs, lock and hidden files
_SKIP_SUFFIXES = ('.lock', '.tmp')
_CHUNK = 16 << 20


def is_remote(path: str | os.PathLike) -> bool:
    """True for a URI with a scheme other than file:// (gs://bucket/x, s3://..., memory://...)."""
    text = os.fspath(path)
    return '://' in text and not text.startswith('file://')


def default_mirror(uri: str) -> str:
    """`$XDG_CACHE_HOME/sora_jax/data/<sha1(uri)[:16]>` (`~/.cache/...` by default)."""
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(base, 'sora_jax', 'data', hashlib.sha1(uri.encode()).hexdigest()[:16])


def _files(root: epath.Path) -> Iterator[tuple[str, epath.Path]]:
    """(relative posix path, path) of every file under root, skipping work / lock files."""
    if not root.exists():
        return
    stack = [root]
    while stack:
        d = stack.pop()
        for p in sorted(d.iterdir(), key=lambda q: q.name):
            if p.name.startswith(_SKIP_PREFIXES) or p.name.endswith(_SKIP_SUFFIXES):
                continue
            if p.is_dir():
                stack.append(p)
            else:
                yield str(p.relative_to(root)).replace(os.sep, '/'), p


def _size(p: epath.Path) -> int:
    return p.stat().length


def copy_missing(src: str | os.PathLike, dst: str | os.PathLike) -> list[str]:
    """Copies every file under src that dst lacks or holds at another size; returns their
    relative paths. Each file is written to `<name>.tmp` and renamed, so an interrupted copy
    never leaves a short file under the real name."""
    src, dst = epath.Path(src), epath.Path(dst)
    copied = []
    for rel, p in _files(src):
        q = dst / rel
        if q.exists() and _size(q) == _size(p):
            continue
        q.parent.mkdir(parents=True, exist_ok=True)
        tmp = q.parent / (q.name + '.tmp')
        with p.open('rb') as fin, tmp.open('wb') as fout:
            shutil.copyfileobj(fin, fout, _CHUNK)
        tmp.rename(q)
        copied.append(rel)
    return copied


class Mirror:
    """The local directory a (possibly remote) data_dir is read and built through.

    mirror = Mirror(config.data.data_dir, config.data.get('staging_dir', ''))
    mirror.pull()
    sources = build(mirror.local)    # tfds / latent cache on a local disk
    mirror.push()
    """

    def __init__(self, data_dir: str, staging_dir: str = ''):
        self.data_dir = os.fspath(data_dir)
        self.remote = is_remote(self.data_dir)
        if not self.remote:
            self.local = self.data_dir
        else:
            if is_remote(staging_dir):
                raise ValueError(
                    f'data.staging_dir={staging_dir!r} must be a local directory '
                    '(the mirror array_record reads); leave it empty for '
                    '~/.cache/sora_jax/data/<hash>.'
                )
            self.local = os.path.abspath(
                os.path.expanduser(staging_dir or default_mirror(self.data_dir))
            )

    def pull(self) -> list[str]:
        if not self.remote:
            return []
        os.makedirs(self.local, exist_ok=True)
        copied = copy_missing(self.data_dir, self.local)
        logging.info(
            'data_dir %s -> local mirror %s: %d file(s) pulled',
            self.data_dir,
            self.local,
            len(copied),
        )
        return copied

    def push(self) -> list[str]:
        if not self.remote:
            return []
        import jax

        if jax.process_index() != 0:
            return []
        copied = copy_missing(self.local, self.data_dir)
        logging.info(
            'local mirror %s -> data_dir %s: %d file(s) pushed',
            self.local,
            self.data_dir,
            len(copied),
        )
        return copied
