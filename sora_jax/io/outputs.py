"""Output files the CLIs write: checked before any work, reserved, written whole, never clobbered.

    out = outputs.reserve('outputs/red.mp4', overwrite=False)   # before loading any weights
    video.write_video(out.tmp, frames)                           # .red.mp4.partial-XXXX.mp4
    provenance.sign(out.tmp, info)                               # signed before it is visible
    out.commit()                                                 # appears whole, or not at all

`check` refuses, before anything is computed: a path that is a directory, a parent that is a
file or not writable, an existing file (unless `overwrite`), an extension outside the allowed
formats. `reserve` also takes an exclusive lock beside the file (`.<name>.lock`, `io/lock.py`),
so a second process writing the same path refuses at once instead of both reporting success;
the data goes to a temporary name in the same directory (same filesystem, same extension), and
`commit` moves it into place: `os.link` (fails if the name appeared meanwhile) without
`overwrite`, `os.replace` with it. A crash leaves at most the temporary file, never a half
written output under the user's name. `write_text` does all of this for small text outputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import tempfile

from sora_jax.io import lock as lock_lib


class OutputExistsError(ValueError):
    """The output exists and overwriting was not asked for."""

    exit_code = 4


def check(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    formats: tuple[str, ...] | None = None,
    flag: str = '--out',
) -> str:
    """The absolute path, or a ValueError naming `flag`, the path and the fix."""
    path = os.fspath(path)
    if not path or path.endswith(os.sep):
        raise ValueError(f'{flag}={path!r} names a directory; give a file name.')
    ext = os.path.splitext(path)[1].lower()
    if formats is not None and ext not in formats:
        raise ValueError(
            f'{flag}={path!r}: the extension {ext or "(none)"!r} is not one of {list(formats)}.'
        )
    full = os.path.abspath(path)
    if os.path.isdir(full):
        raise ValueError(f'{flag}={path!r} is a directory; give a file name inside it.')
    parent = os.path.dirname(full)
    existing = parent
    while not os.path.exists(existing):  # the nearest ancestor that exists
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f'{flag}={path!r}: {existing} is a file, not a directory.')
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f'{flag}={path!r}: cannot write in {existing} (read-only or no permission); '
            'pass a path in a writable directory.'
        )
    if os.path.lexists(full) and not overwrite:
        raise OutputExistsError(
            f'{flag}={path!r} exists; pass --overwrite to replace it, or another name.'
        )
    return full


@dataclasses.dataclass
class Reserved:
    """An output being written: `tmp` (same directory and extension) until `commit`."""

    path: str
    tmp: str
    overwrite: bool
    lock: lock_lib.Lock | None

    def commit(self) -> str:
        """Moves `tmp` to `path` (never over a file that appeared meanwhile, unless
        `overwrite`) and releases the lock; returns `path`."""
        try:
            if self.overwrite:
                os.replace(self.tmp, self.path)
            else:
                try:
                    os.link(self.tmp, self.path)
                except FileExistsError:
                    raise OutputExistsError(
                        f'{self.path} appeared while it was being written; the new result is '
                        f'kept as {self.tmp}. Pass --overwrite to replace it.'
                    ) from None
                except OSError as e:  # a filesystem without hard links
                    if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                        raise
                    if os.path.lexists(self.path):
                        raise OutputExistsError(f'{self.path} appeared meanwhile.') from None
                    os.replace(self.tmp, self.path)
                else:
                    os.unlink(self.tmp)
        finally:
            self.release()
        return self.path

    def abort(self) -> None:
        """Removes the temporary file and releases the lock (the output stays as it was)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)
        self.release()

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def reserve(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    formats: tuple[str, ...] | None = None,
    flag: str = '--out',
) -> Reserved:
    """`check`, create the parent directories, lock the name; raises LockedError when another
    process is writing the same file."""
    full = check(path, overwrite=overwrite, formats=formats, flag=flag)
    parent, name = os.path.split(full)
    os.makedirs(parent, exist_ok=True)
    held = lock_lib.acquire(os.path.join(parent, f'.{name}.lock'), what=f'writing {name}')
    fd, tmp = tempfile.mkstemp(
        prefix=f'.{name}.partial-', suffix=os.path.splitext(name)[1], dir=parent
    )
    os.close(fd)  # created exclusively (O_EXCL): unique even within one process
    return Reserved(full, tmp, overwrite, held)


@contextlib.contextmanager
def reserved(paths, *, overwrite: bool = False, formats=None, flag: str = '--out'):
    """Reserves every path first (nothing is locked when one is refused), yields the
    reservations, and aborts all of them if the block raises; the block commits."""
    done: list[Reserved] = []
    try:
        for p in paths:
            done.append(reserve(p, overwrite=overwrite, formats=formats, flag=flag))
        yield done
    except BaseException:
        for r in done:
            r.abort()
        raise


def write_text(path: str | os.PathLike, text: str, *, overwrite: bool = True) -> str:
    """Writes a small text file (JSON reports) whole: temporary name, then renamed into place."""
    r = reserve(path, overwrite=overwrite, flag=os.fspath(path))
    try:
        with open(r.tmp, 'w', encoding='utf-8') as f:
            f.write(text)
    except BaseException:
        r.abort()
        raise
    return r.commit()
