"""The CLIs' shared entry point: expected failures are one line on stderr with a documented exit
status; tracebacks only for real bugs, or for everything with --verbosity=1 or higher.

    if __name__ == '__main__':
        cli.run(main)                     # instead of absl's app.run(main)

Exit statuses (docs/guarantees.md has the table and the test of each row):
  0  done
  1  a bug: an unexpected exception, with its traceback
  2  bad input: a flag, a config key or value, an input file, a prompt that is not UTF-8
  3  the prompt was refused by the content policy
  4  the output exists (no --overwrite), or another process holds the path or workdir
  5  a checkpoint or weight file cannot be read (missing, truncated, corrupted)
  6  the disk is full, read-only or not writable
  7  the result holds non-finite values (NaN / Inf): nothing was written

An exception chooses its status with an `exit_code` attribute; otherwise by its type
(`ValueError` 2, `FloatingPointError` 7, `OSError` by errno). Code that reads a user's file
wraps the read in `reading(what, fix)`, so whatever the reader raises (Orbax, TensorStore,
safetensors, json) becomes one `UnreadableError` line naming the file and the fix.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import os
import sys
import threading

from absl import app, flags

EXIT = {
    'ok': 0,
    'bug': 1,
    'bad_input': 2,
    'refused_prompt': 3,
    'exists_or_locked': 4,
    'unreadable': 5,
    'disk': 6,
    'nonfinite': 7,
}
_DISK = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


class UnreadableError(ValueError):
    """A checkpoint or weight file cannot be read."""

    exit_code = EXIT['unreadable']


@contextlib.contextmanager
def reading(what: str, fix: str):
    """Any exception while reading `what` -> UnreadableError('cannot read WHAT: cause; FIX')
    (the original stays chained, and --verbosity=1 shows its traceback).

    In a CLI (`run`), a failed Orbax read leaves TensorStore reads in flight that report back,
    from their own threads, to an event loop the failure closed: each prints 'RuntimeError:
    Event loop is closed' with a traceback, around and after the one-line error. They say
    nothing about the file, so while reading, stderr takes writes from the main thread only,
    and after a failure nothing more (the error line goes to the stream it had)."""
    global _error_stream
    mute = _in_cli and not _verbose()
    saved = sys.stderr
    if mute:
        sys.stderr = _MainThreadOnly(saved)
    try:
        yield
    except (KeyboardInterrupt, SystemExit, MemoryError, UnreadableError):
        raise
    except Exception as e:  # noqa: BLE001 - every reader error is the file's, not ours
        if isinstance(e, OSError) and e.errno in _DISK - {errno.EACCES, errno.EPERM}:
            raise
        if mute:
            _error_stream = saved
            saved.flush()
            sys.stderr = open(os.devnull, 'w')  # noqa: SIM115 - this process is about to exit
            mute = False
        raise UnreadableError(f'cannot read {what}: {one_line(e)}; {fix}') from e
    finally:
        if mute:
            sys.stderr = saved


class _MainThreadOnly:
    """A stream that passes on the main thread's writes and drops other threads'."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        if threading.current_thread() is threading.main_thread():
            return self._stream.write(text)
        return len(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def one_line(e: BaseException, limit: int = 400) -> str:
    """The exception's message on one line (its type when it has none), at most `limit` chars."""
    text = ' '.join(str(e).split()) or type(e).__name__
    if isinstance(e, KeyError):
        text = f'missing {text}'
    return text if len(text) <= limit else text[: limit - 3] + '...'


def exit_code(e: BaseException) -> int | None:
    """The documented status of an expected failure; None for a bug."""
    code = getattr(e, 'exit_code', None)
    if isinstance(code, int):
        return code
    from sora_jax.safety.moderation import PromptRefused

    if isinstance(e, PromptRefused):
        return EXIT['refused_prompt']
    if isinstance(e, FloatingPointError):
        return EXIT['nonfinite']
    if isinstance(e, OSError):
        if e.errno in _DISK:
            return EXIT['disk']
        if isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
            return EXIT['bad_input']
        return None
    if isinstance(e, (ValueError, app.UsageError, UnicodeError)):
        return EXIT['bad_input']
    return None


def _verbose() -> bool:
    try:
        return flags.FLAGS['verbosity'].present and flags.FLAGS.verbosity >= 1
    except Exception:  # noqa: BLE001 - flags not parsed
        return False


_in_cli = False  # set by run(): only a CLI process mutes stderr after a failed read
_error_stream = None  # where `fail` writes once a failed read has muted stderr


def fail(code: int, message: str):
    print(f'ERROR: {message}', file=_error_stream or sys.stderr, flush=True)
    sys.exit(code)


def _fix_for(e: BaseException, code: int) -> str:
    if code == EXIT['disk']:
        return ' (free space or pass a path on a writable disk)'
    return ''


def guard(main):
    """`main(argv)` with expected failures turned into one line and their exit status."""

    def wrapped(argv):
        try:
            return main(argv)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:
            code = exit_code(e)
            if code is None or _verbose():
                raise  # a bug (status 1 with its traceback), or asked for with --verbosity
            fail(code, one_line(e, limit=1000) + _fix_for(e, code))

    return wrapped


def config_key_error(argv) -> str | None:
    """For a `--config.a.b=...` override naming no key: one line with the closest key."""
    for arg in argv[1:]:
        if not arg.startswith('--') or '.' not in arg.split('=', 1)[0]:
            continue
        name = arg[2:].split('=', 1)[0]
        root, *path = name.split('.')
        node = _config_of(root, argv)
        if node is None:
            continue
        done = [root]
        for part in path:
            keys = list(node.keys()) if hasattr(node, 'keys') else []
            if part not in keys:
                close = difflib.get_close_matches(part, [str(k) for k in keys], n=1)
                hint = (
                    f'did you mean --{".".join(done + close)}?'
                    if close
                    else f'keys of {".".join(done)}: {sorted(map(str, keys))[:20]}'
                )
                return f'--{name}: the config has no key {".".join(done[1:] + [part])}; {hint}'
            node = node[part]
            done.append(part)
    return None


def _config_of(root: str, argv):
    """The config that `--ROOT=FILE.py:ARG` loads, without its overrides (None: not a config)."""
    if root not in flags.FLAGS:
        return None
    value = None
    for i, arg in enumerate(argv):
        if arg.startswith(f'--{root}='):
            value = arg.split('=', 1)[1]
        elif arg == f'--{root}' and i + 1 < len(argv):
            value = argv[i + 1]
    try:
        node = flags.FLAGS[root].parser.parse(value) if value else flags.FLAGS[root].value
    except Exception:  # noqa: BLE001 - not a config flag, or a file that does not load
        return None
    return node if hasattr(node, 'keys') else None


def parse_flags(argv):
    """absl's flag parsing with one-line errors (status 2) instead of tracebacks."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(EXIT['bad_input'], f'{one_line(e)} (see --help)')
    except Exception as e:  # noqa: BLE001 - config_flags raises AttributeError / KeyError
        fail(EXIT['bad_input'], config_key_error(argv) or f'bad command line: {one_line(e)}')


def run(main):
    """app.run(main) with one-line errors for bad flags and expected failures."""
    global _in_cli
    _in_cli = True
    app.run(guard(main), flags_parser=parse_flags)
