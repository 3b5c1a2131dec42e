"""JAX's persistent compilation cache for the command-line tools: a second run with the same
sizes loads the compiled programs from disk instead of compiling them again.

    from sora_jax.io import compile_cache
    compile_cache.enable()        # first thing in main(), before anything is jitted

Where: `$SORA_JAX_COMPILATION_CACHE` when set (a directory; `0`, `off` or an empty value turn
the cache off), else `$XDG_CACHE_HOME/sora_jax/jax-<jax version>` (default `~/.cache/...`): one
directory per jax version, since a newer jax cannot use an older one's programs anyway.
`--nocompilation_cache` (the flag every CLI gets by importing this module) turns it off.
Programs that compiled in less than `min_compile_time_secs` are not written (loading those
costs about what compiling them does); the samplers' steps, the VAE decode and the text encoder
take longer than that. The cache grows with every new size (a few MB for the demo); delete the
directory to reclaim it. No size cap: jax's capped (LRU) mode fails on entries an uncapped run
wrote, so one directory could not serve both.
"""

from __future__ import annotations

import os

from absl import flags, logging

ENV = 'SORA_JAX_COMPILATION_CACHE'
MIN_COMPILE_TIME_SECS = 0.2

flags.DEFINE_bool(
    'compilation_cache',
    True,
    'Keep compiled XLA programs on disk (JAX persistent '
    f'compilation cache, ${ENV} or ~/.cache/sora_jax/jax-<version>) so a second run '
    'with the same sizes starts fast; --nocompilation_cache: off.',
)


def default_dir() -> str:
    """`$XDG_CACHE_HOME/sora_jax/jax-<version>` (`~/.cache` without XDG_CACHE_HOME)."""
    import jax

    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(base, 'sora_jax', f'jax-{jax.__version__}')


def cache_dir() -> str | None:
    """The directory the CLIs use, or None when the environment turns the cache off."""
    if ENV in os.environ:
        value = os.environ[ENV].strip()
        return (
            None if value.lower() in ('', '0', 'off', 'false', 'no') else os.path.expanduser(value)
        )
    return default_dir()


def enable(
    directory: str | None = None,
    *,
    on: bool | None = None,
    min_compile_time_secs: float = MIN_COMPILE_TIME_SECS,
) -> str | None:
    """Turns the persistent cache on (before the first compile); returns its directory or None.

    `on` defaults to the `--compilation_cache` flag (True when flags are not parsed, e.g. in a
    notebook); `directory` to `cache_dir()`.
    """
    if on is None:
        on = flags.FLAGS.compilation_cache if flags.FLAGS.is_parsed() else True
    directory = directory or (cache_dir() if on else None)
    if not on or directory is None:
        logging.info('JAX persistent compilation cache: off')
        return None
    import jax

    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        logging.warning(
            'JAX compilation cache off: cannot create %r (%s); set $%s to a writable '
            'directory or pass --nocompilation_cache.',
            directory,
            e,
            ENV,
        )
        return None
    jax.config.update('jax_compilation_cache_dir', directory)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', float(min_compile_time_secs))
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
    logging.info('JAX persistent compilation cache: %s', directory)
    return directory
