"""Exclusive ownership of a path on disk: a lock file created with O_EXCL that names its owner.

    with lock.hold(os.path.join(workdir, lock.WORKDIR_LOCK), what='training run'):
        ...                                    # a second holder gets a LockedError at once

The lock file is JSON `{"host", "pid", "started", "what", "argv"}`. Creating it with
`O_CREAT | O_EXCL` is atomic on a local filesystem (and on NFS v3+), so of two processes that
try at once exactly one wins; the other gets a `LockedError` naming the owner. A lock left
behind by a process that died (same host, pid no longer running) is stale: it is taken over
with a warning naming the dead owner. A lock from another host is never judged stale (its
pid means nothing here): the error says to delete the file once that host's run is gone.
Remote (gs://) paths are not locked: object stores have no exclusive create.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import json
import os
import socket
import sys

from absl import logging

WORKDIR_LOCK = '.sora_jax.lock'


class LockedError(ValueError):
    """The path is held by another live process (`owner` says which)."""

    exit_code = 4

    def __init__(self, message: str, owner: dict):
        super().__init__(message)
        self.owner = owner


@dataclasses.dataclass(frozen=True)
class Lock:
    """A held lock: the file and what it says about this process."""

    path: str
    owner: dict

    def release(self) -> None:
        """Removes the lock file if it is still this process's (a taken-over lock is not)."""
        if read_owner(self.path) == self.owner:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


def read_owner(path: str) -> dict | None:
    """The owner a lock file names; None when there is no file, {} when it is unreadable."""
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def describe(owner: dict) -> str:
    """'pid 123 on host h since 2026-01-01T00:00:00Z (training run)'."""
    if not owner:
        return 'an unreadable lock file'
    what = f' ({owner["what"]})' if owner.get('what') else ''
    return f'pid {owner.get("pid")} on host {owner.get("host")} since {owner.get("started")}{what}'


def acquire(path: str, what: str = '') -> Lock:
    """Creates the lock file `path` (O_EXCL) or raises LockedError naming its live owner; a
    stale lock (same host, dead pid) is taken over with a warning."""
    path = os.fspath(path)
    owner = {
        'host': socket.gethostname(),
        'pid': os.getpid(),
        'started': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'),
        'what': what,
        'argv': ' '.join(sys.argv)[:500],
    }
    for _ in range(3):  # a stale lock removed, then one retry (another taker may win)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            held = read_owner(path)
            if held is None:  # released between our open and our read
                continue
            stale = (
                held
                and held.get('host') == owner['host']
                and isinstance(held.get('pid'), int)
                and not _alive(held['pid'])
            )
            if not stale:
                fix = (
                    'wait for it to finish or stop it'
                    if held.get('host') == owner['host']
                    else f'if that run is gone, delete {path}'
                )
                raise LockedError(
                    f'{os.path.dirname(path) or "."} is in use by {describe(held)}; {fix}, or '
                    'use another directory.',
                    held,
                ) from None
            logging.warning(
                'Taking over the stale lock %s of %s (that process no longer runs).',
                path,
                describe(held),
            )
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            continue
        except OSError as e:
            if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise ValueError(
                    f'cannot create the lock file {path}: {e.strerror}; pass a directory you '
                    'can write to.'
                ) from None
            raise
        try:
            with os.fdopen(fd, 'w', encoding='utf-8') as f:
                json.dump(owner, f)
        except BaseException:  # e.g. a full disk: no empty lock file left behind
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        return Lock(path, owner)
    raise LockedError(f'{path}: lost the race for this lock three times; retry.', {})


@contextlib.contextmanager
def hold(path: str, what: str = ''):
    """`acquire` for the duration of a with-block; released however the block ends."""
    held = acquire(path, what)
    try:
        yield held
    finally:
        held.release()


@contextlib.contextmanager
def workdir(directory: str, what: str = 'training run', enabled: bool = True):
    """Holds `<directory>/.sora_jax.lock` (created along with the directory) for the block;
    `enabled=False` (other hosts of a multi-host run; remote paths) holds nothing."""
    directory = os.fspath(directory)
    if not enabled or '://' in directory:
        yield None
        return
    os.makedirs(directory, exist_ok=True)
    with hold(os.path.join(directory, WORKDIR_LOCK), what) as held:
        yield held
