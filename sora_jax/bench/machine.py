"""The machine a benchmark runs on: cores, pinning, load from other processes, peak memory.

pin_threads(2)                      # before jax / torch start their thread pools
others = OtherLoad(); ...timed work...; share = others.share()
warning = load_verdict(share, load_before, quiet_share=0.1, quiet_load=None)
"""

from __future__ import annotations

import os
import resource
import time


def cpu_threads() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0))


def pin_threads(n: int) -> None:
    """Pin to n cores before jax / torch start their thread pools (0: leave as is)."""
    cores = sorted(os.sched_getaffinity(0))
    if n < 0 or n > len(cores):
        raise ValueError(f'--threads={n} must be in [0, {len(cores)}] (the usable cores).')
    if n:
        os.sched_setaffinity(0, cores[:n])


def load_average() -> float:
    """The 1-minute load average (0.0 where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def rss_bytes() -> int:
    """Peak resident set size of this process."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class OtherLoad:
    """CPU time that *other* processes used while this one ran: the machine's busy time from
    /proc/stat minus this process's own CPU time, as a share of all cores x wall time. The load
    average cannot tell this: it counts the benchmark itself and lags by minutes."""

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample():
        try:
            with open('/proc/stat') as f:
                v = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        tick = os.sysconf('SC_CLK_TCK')
        busy = (sum(v) - v[3] - (v[4] if len(v) > 4 else 0)) / tick  # all but idle + iowait
        own = sum(os.times()[:4])
        return busy, own, time.perf_counter()

    def share(self) -> float | None:
        end = self._sample()
        if self.start is None or end is None:
            return None
        busy, own, wall = (b - a for a, b in zip(self.start, end))
        return max(busy - own, 0.0) / (wall * (os.cpu_count() or 1))


def load_verdict(
    other_share: float | None, before: float, quiet_share: float, quiet_load: float | None
) -> str | None:
    """A warning when other processes shared the machine during the timed rounds (or, without
    /proc/stat, when the load average was high before them); None when it was quiet."""
    if other_share is not None:
        if other_share > quiet_share:
            return (
                f'LOADED MACHINE: other processes used {100 * other_share:.0f}% of all cores '
                f'during the timed rounds (quiet: <= {100 * quiet_share:.0f}%). Compare only '
                'the ratios of interleaved runs; rerun on a quiet machine for absolute '
                'figures.'
            )
        return None
    quiet_load = float(os.cpu_count() or 1) if quiet_load is None else quiet_load
    if before > quiet_load:
        return (
            f'LOADED MACHINE: 1-minute load average {before:.2f} before the run (quiet: <= '
            f'{quiet_load:g}). Compare only the ratios of interleaved runs.'
        )
    return None
