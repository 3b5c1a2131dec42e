"""Seconds per call: means, best of rounds, interleaved rounds, medians with their range."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def mean_s(fn: Callable[[], object], iters: int) -> float:
    """Mean seconds per call over `iters` calls."""
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


def best_s(fn: Callable[[], object], rounds: int, iters: int) -> float:
    """Best mean seconds per call over `rounds` rounds of `iters` calls."""
    return min(mean_s(fn, iters) for _ in range(rounds))


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, iters: int) -> dict:
    """{name: [seconds per call in each round]}: the callables take turns within every round, so
    load from other processes lands on all of them alike."""
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            times[k].append(mean_s(fn, iters))
    return times


def spread(xs) -> dict:
    """Median, min, max and (max - min) / median of a list of timings."""
    med = statistics.median(xs)
    return dict(median=med, min=min(xs), max=max(xs), spread=(max(xs) - min(xs)) / med)
