"""Keep freed host memory in the process, so XLA:CPU's buffers do not page-fault every step.

    from sora_jax.io import host_memory
    host_memory.retain_freed_memory()   # first thing, before jax runs anything

Why: XLA:CPU allocates one temporary buffer per executable run (912 MiB for the benchmark's
train step, `experiments/benchmark.py dit`) with `malloc`. glibc serves any request over 32 MiB
with a fresh `mmap` and unmaps it on `free`, so every run touches brand-new pages: 233,580
minor page faults per train step, and about half a CPU-second per step in the kernel zeroing
them (measured with `getrusage`; `--profile` in the benchmark shows the same time inside the
first ops that write each buffer). PyTorch's CPU allocator reuses its memory instead.

What: `mallopt` (glibc only; a no-op returning False elsewhere) so the process keeps what it
frees: no `mmap` for large blocks (`M_MMAP_MAX=0`), no trimming of the heap top
(`M_TRIM_THRESHOLD`), one arena for all threads (`M_ARENA_MAX=1`; a thread's own arena cannot
hold a block over 64 MiB and would fall back to `mmap`). The same settings go into the
environment (`MALLOC_*`) so subprocesses (pytest workers, CLIs started by a sweep) start with
them. After the first step the train step makes no page faults at all.

Cost: the process's resident memory stays at its peak instead of shrinking between steps (the
peak itself is unchanged). Call it before jax starts its thread pools (`jax.devices()`, the
first jit): a thread that already has an arena keeps it. Opt out with
`SORA_JAX_HOST_MEMORY=system` (glibc's defaults).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from absl import logging

ENV = 'SORA_JAX_HOST_MEMORY'
# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
TRIM_THRESHOLD = 2**31 - 1  # bytes: the largest value mallopt takes (int)
CHILD_ENV = {
    'MALLOC_MMAP_MAX_': '0',
    'MALLOC_TRIM_THRESHOLD_': str(TRIM_THRESHOLD),
    'MALLOC_ARENA_MAX': '1',
}

_done: bool | None = None


def _libc():
    if not ctypes.util.find_library('c'):
        return None
    try:
        libc = ctypes.CDLL('libc.so.6')
        libc.gnu_get_libc_version  # glibc only (musl and macOS have no such mallopt)
    except (OSError, AttributeError):
        return None
    return libc


def retain_freed_memory() -> bool:
    """Configures glibc's malloc to keep freed memory (see the module doc). Idempotent.

    Returns True when the settings are in effect, False on another libc or with
    `SORA_JAX_HOST_MEMORY=system`."""
    global _done
    if _done is not None:
        return _done
    if os.environ.get(ENV, '').strip().lower() == 'system':
        _done = False
        return _done
    libc = _libc()
    if libc is None:
        logging.info('host memory: not glibc; malloc left as it is')
        _done = False
        return _done
    ok = all(
        libc.mallopt(p, v) == 1
        for p, v in ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_ARENA_MAX, 1))
    )
    for k, v in CHILD_ENV.items():
        os.environ.setdefault(k, v)
    _done = ok
    return ok
