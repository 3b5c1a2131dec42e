"""Per-op time of one step, summed by op kind: JAX's profiler trace (XLA:CPU op events) and
torch's profiler (self CPU time of aten ops)."""

from __future__ import annotations

import collections
import glob
import os
import re
from typing import Callable

# XLA:CPU emits one trace event per executed op only with this flag in XLA_FLAGS before jax starts.
XLA_CPU_TRACE_FLAG = '--xla_cpu_enable_xprof_traceme=true'


def op_kind(name: str) -> str:
    """An XLA op or fusion name -> its kind ('ynn_fusion.63' -> 'ynn_fusion')."""
    return re.sub(r'(\.\d+)+$', '', name)


def profile_jax(fn: Callable[[], object], directory: str, steps: int = 2) -> dict:
    """Per-op-kind milliseconds per step of `fn` (one step per call) from a JAX profiler trace.

    XLA:CPU emits one event per executed op only with XLA_CPU_TRACE_FLAG, which must be in
    XLA_FLAGS before jax starts (the benchmark adds it when --profile is given). The ops of one
    step run on up to `threads` threads at once, so the sum exceeds the step time."""
    import jax

    with jax.profiler.trace(directory):
        for _ in range(steps):
            fn()
    path = sorted(glob.glob(os.path.join(directory, '**', '*.xplane.pb'), recursive=True))[-1]
    kinds, ops = collections.Counter(), collections.Counter()
    for plane in jax.profiler.ProfileData.from_file(path).planes:
        for line in plane.lines:
            if not line.name.startswith('tf_XLAEigen'):  # XLA:CPU's op threads
                continue
            for ev in line.events:
                if ev.name.startswith(('ThunkExecutor', 'SlinkyThreadPool', 'while', 'end:')):
                    continue
                kinds[op_kind(ev.name)] += ev.duration_ns / 1e6 / steps
                ops[ev.name] += ev.duration_ns / 1e6 / steps
    return dict(
        trace=path,
        total_ms=sum(kinds.values()),
        kinds_ms=dict(kinds.most_common(15)),
        top_ops_ms=dict(ops.most_common(15)),
    )


def profile_torch(fn: Callable[[], object], steps: int = 2) -> dict:
    """Per-op milliseconds per step of `fn` from torch's profiler (self CPU time, aten ops)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
    rows = collections.Counter()
    for e in prof.key_averages():
        rows[e.key] += e.self_cpu_time_total / 1e3 / steps
    return dict(total_ms=sum(rows.values()), kinds_ms=dict(rows.most_common(15)))
