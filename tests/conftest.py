"""Test session setup: 8 simulated CPU devices so mesh tests run anywhere, XLA flags that halve
compile times (tests/xla.py), and one persistent compilation cache for the whole session.

The cache is a fresh temporary directory made by the first process (pytest itself, before its
xdist workers start, so they inherit it) and removed when that process ends: a program compiled
by one test, worker or CLI subprocess is loaded from disk by the next one that compiles the same
program (the tiny configs recur across files), and nothing is written to the user's ~/.cache.
Tests of the cache itself give their CLIs a directory of their own (tests/cli/test_sample_cli.py).
"""

import atexit
import contextlib
import importlib.util
import os
import shutil
import subprocess
import tempfile

import pytest

# tests/xla.py by path: while pytest imports this conftest, `tests` is not importable yet.
_spec = importlib.util.spec_from_file_location(
    'tests_xla', os.path.join(os.path.dirname(__file__), 'xla.py')
)
_xla = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_xla)

os.environ.setdefault('XLA_FLAGS', _xla.xla_flags(8))
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

if 'SORA_JAX_TEST_CACHE' not in os.environ:
    _cache = tempfile.mkdtemp(prefix='sora_jax_test_cache_')
    os.environ['SORA_JAX_TEST_CACHE'] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
# This process and the workers (jax reads these when it is imported), and the CLIs tests start.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.environ['SORA_JAX_TEST_CACHE'])
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
os.environ.setdefault('SORA_JAX_COMPILATION_CACHE', os.environ['SORA_JAX_TEST_CACHE'])

# As every CLI does: keep freed host memory (no page faults on XLA's buffers in every call), and
# hand the same malloc settings to the subprocesses tests start. Before anything imports jax.
from sora_jax.io import host_memory  # noqa: E402

host_memory.retain_freed_memory()


def pytest_collection_modifyitems(items):
    """Everything under tests/parity/ carries the `parity` marker (make test-fast leaves it out)."""
    for item in items:
        if 'parity' in item.path.parts:
            item.add_marker(pytest.mark.parity)


@pytest.fixture(scope='session')
def load_config():
    """`load_config('configs/FILE.py:ARG')` -> that ConfigDict, fresh on every call
    (sora_jax.config_files.load). `from configs import wan21` gives the module itself."""
    from sora_jax import config_files

    return config_files.load


@contextlib.contextmanager
def _tmpfs(path, options: str):
    """`path` (an empty directory) mounted as a tmpfs with `options` for the block; skips the
    test where mounting is not possible (not root, no mount)."""
    if os.geteuid() != 0:
        pytest.skip('mounting a filesystem needs root')
    r = subprocess.run(
        ['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', str(path)], capture_output=True, text=True
    )
    if r.returncode != 0:
        pytest.skip(f'no tmpfs mount here: {r.stderr.strip()}')
    try:
        yield path
    finally:
        subprocess.run(['umount', str(path)], check=True)


@pytest.fixture
def tmpfs():
    """`with tmpfs(path, 'size=256k'):` mounts a tmpfs on the empty directory `path` for the block
    (skips the test where mounting is not possible)."""
    return _tmpfs


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory nothing can be written in: a read-only tmpfs mount when running as root (root
    ignores permission bits, not a read-only filesystem), else a 0555 directory."""
    ro = tmp_path / 'ro'
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o555)
        yield ro
        ro.chmod(0o755)
        return
    with _tmpfs(ro, 'ro,size=64k'):
        yield ro
