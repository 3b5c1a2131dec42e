"""sora_jax.io.host_memory: with it, a repeated XLA:CPU program stops page-faulting on its
large buffers; with glibc's defaults (SORA_JAX_HOST_MEMORY=system) every call faults anew."""

import json
import os
import subprocess
import sys

import pytest

from sora_jax.io import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROGRAM = r"""
import json, resource, sys
from sora_jax.io import host_memory
on = host_memory.retain_freed_memory()
import jax, jax.numpy as jnp
f = jax.jit(lambda a, b: a @ b)                     # a 64 MiB result: over glibc's mmap threshold
a, b = jnp.ones((16384, 256)), jnp.ones((256, 1024))
for _ in range(10):                                  # the heap grows to its working size
    f(a, b).block_until_ready()
windows = []                                         # faults per call in 5 windows of 2 calls
for _ in range(5):
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(2):
        f(a, b).block_until_ready()
    windows.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 2)
faults = min(windows)  # a busy machine can delay a free now and then and grow the heap once more
print(json.dumps(dict(on=on, faults=faults)))
"""


def _faults(mode: str) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in host_memory.CHILD_ENV and k != host_memory.ENV
    }
    env.update(JAX_PLATFORMS='cpu', XLA_FLAGS='', PYTHONPATH=ROOT)
    if mode == 'system':
        env[host_memory.ENV] = 'system'
    proc = subprocess.run(
        [sys.executable, '-c', PROGRAM], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(host_memory._libc() is None, reason='glibc only')
def test_retained_memory_stops_page_faults():
    default, system = _faults('retain'), _faults('system')
    assert default['on'] is True and system['on'] is False
    pages = 64 * 2**20 / 4096
    assert system['faults'] > 0.5 * pages, system  # each call maps and touches a new buffer
    assert default['faults'] < 0.02 * pages, default  # each call reuses the freed one


def test_idempotent_and_sets_child_environment():
    first = host_memory.retain_freed_memory()
    assert host_memory.retain_freed_memory() is first
    if first:
        for k in host_memory.CHILD_ENV:
            assert k in os.environ
