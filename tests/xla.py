"""XLA flags of the test processes (tests/conftest.py) and of the processes tests start.

The tests run tiny models, so XLA's compile time dominates them. Each flag cuts it (figures in
docs/testing.md): LLVM optimisation level 0 without its expensive passes; XLA:CPU's classic
loop emitters instead of its MLIR fusion emitters (which compile several times slower for the
many small fusions a tiny model has); and one LLVM module per program instead of splitting
codegen into parallel parts (two tests share two cores already). The programs run a little
slower, and their float results may differ from an optimised build in the last bits (sum
orders), which the tolerances allow. Benchmarks and the CLIs users run keep XLA's defaults:
only the test suite sets these.
"""

COMPILE_FAST = (
    '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true '
    '--xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1'
)


def xla_flags(devices: int | None = None) -> str:
    """XLA_FLAGS for a test process: `devices` simulated CPU devices (None: one) + COMPILE_FAST."""
    count = f'--xla_force_host_platform_device_count={devices} ' if devices else ''
    return count + COMPILE_FAST
