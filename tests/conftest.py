"""Test session setup: 8 simulated CPU devices so mesh tests run anywhere."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# CLIs started by tests compile afresh unless a test gives them a cache of its own
# (tests/test_sample_cli.py): no writes to the user's ~/.cache, no sharing between workers.
os.environ.setdefault("SORA_JAX_COMPILATION_CACHE", "off")

# As every CLI does: keep freed host memory (no page faults on XLA's buffers in every call), and
# hand the same malloc settings to the subprocesses tests start. Before anything imports jax.
from sora_jax.io import host_memory  # noqa: E402

host_memory.retain_freed_memory()
