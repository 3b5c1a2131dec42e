"""XLA flags of the test processes (tests/conftest.py) and of the processes tests start.

The tests run tiny models, so XLA's compile time dominates them. LLVM optimisation level 0 and
no expensive LLVM passes halve it (e.g. two train-step tests: 117 s -> 56 s on 2 cores); the
programs run a little slower, and their float results may differ from an optimised build in the
last bits (sum orders), which the tolerances allow. Benchmarks and the CLIs users run keep
XLA's defaults: only the test suite sets these.
"""

COMPILE_FAST = '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'


def xla_flags(devices: int | None = None) -> str:
    """XLA_FLAGS for a test process: `devices` simulated CPU devices (None: one) + COMPILE_FAST."""
    count = f'--xla_force_host_platform_device_count={devices} ' if devices else ''
    return count + COMPILE_FAST
