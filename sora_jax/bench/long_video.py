"""Constant memory and time per second of video for chunked rollouts (`pipeline/rollout.py`).

One rollout of `seconds` of video on a tiny random causal model (configs/shapes.py:tiny with
model.causal_chunk), frames dropped as they come (as a streaming writer would). After every
chunk it records the wall time, the bytes of live JAX arrays (what the rollout holds on the
device: parameters, cache, chunk) and the process's peak resident memory (VmHWM: compiles and
the runtime included). It reports, at 5 s and at the end:

  peak_live_bytes   the most live-array bytes up to that point
  peak_rss_bytes    the process's peak resident memory up to that point
  s_per_video_s     chunk time x chunks per second of video over the 5 s before it (the first
                    chunk, which compiles, left out): the fastest chunk, as bench/timing's
                    best-of (on a shared machine the fastest chunk shows the cost without the
                    other processes' interference), and the median beside it
  cpu_s_per_video_s the median chunk's CPU time (user + system of this process) x chunks per
                    second: the work per second of video, which other processes' load moves far
                    less than the wall time

    python -m sora_jax.bench.long_video --seconds=60 --size=32 --json=/tmp/long_video.json
"""

from __future__ import annotations

import json
import time
from typing import NamedTuple

import numpy as np


class Mark(NamedTuple):
    """The figures at one point of the rollout (see the module docstring)."""

    seconds: float
    peak_live_bytes: int
    peak_rss_bytes: int
    s_per_video_s: float
    median_s_per_video_s: float
    cpu_s_per_video_s: float


def _rss_peak() -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) * 1024
    return 0


def _live_bytes() -> int:
    import jax

    return sum(a.nbytes for a in jax.live_arrays())


def tiny_causal_pipe(chunk: int = 2):
    """A random tiny causal shapes model (pixel space, 8 fps)."""
    from sora_jax import config_files
    from sora_jax.pipeline import TextToVideo

    c = config_files.load('configs/shapes.py:tiny')  # run from the checkout's root
    c.model.causal_chunk = chunk
    return TextToVideo.from_config(c, seed=0)


def measure(
    seconds: float = 60.0,
    marks=(5.0, 60.0),
    *,
    window: int = 4,
    steps: int = 4,
    size: int = 32,
    pipe=None,
) -> list[Mark]:
    """Run one rollout of `seconds` of video and return a Mark at each of `marks`."""
    from sora_jax.pipeline import rollout as rollout_lib

    pipe = tiny_causal_pipe() if pipe is None else pipe
    fps = float(pipe.config.sample.fps)
    chunk = rollout_lib.causal_chunk(pipe)
    n = rollout_lib.chunks_for_frames(int(round(seconds * fps)), chunk, pipe.temporal_factor)
    opts = rollout_lib.RolloutOptions(
        num_chunks=n,
        window=window,
        num_inference_steps=steps,
        height=size,
        width=size,
        moderation=False,  # the sampler's cost alone (the output check samples each chunk)
        progress=False,
    )
    done, times, cpu, live, rss = [], [], [], [], []
    t0, c0 = time.perf_counter(), time.process_time()
    frames = 0
    for c in rollout_lib.rollout(pipe, 'a red circle bouncing and a blue square falling', opts):
        frames += c.frames.shape[1]
        now, cnow = time.perf_counter(), time.process_time()
        times.append(now - t0)
        cpu.append(cnow - c0)
        t0, c0 = now, cnow
        done.append(frames / fps)
        live.append(_live_bytes())
        rss.append(_rss_peak())
    done = np.asarray(done)
    times = np.asarray(times)
    cpu = np.asarray(cpu)
    out = []
    for m in marks:
        upto = int(np.searchsorted(done, m - 1e-9)) + 1  # chunks up to second m
        recent = (done > m - 5.0) & (done <= m + 1e-9)
        recent[0] = False  # the compile
        per_chunk_s = float(np.min(times[recent]))
        video_s_per_chunk = float(np.median(np.diff(done)))
        out.append(
            Mark(
                float(done[upto - 1]),
                int(max(live[:upto])),
                int(max(rss[:upto])),
                per_chunk_s / video_s_per_chunk,
                float(np.median(times[recent])) / video_s_per_chunk,
                float(np.median(cpu[recent])) / video_s_per_chunk,
            )
        )
    return out


def main(argv=None) -> dict:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--seconds', type=float, default=60.0)
    p.add_argument('--window', type=int, default=4, help='past chunks in the cache')
    p.add_argument('--steps', type=int, default=4)
    p.add_argument('--size', type=int, default=32, help='frame height and width (pixels)')
    p.add_argument('--json', default=None)
    a = p.parse_args(argv)
    marks = measure(a.seconds, (5.0, a.seconds), window=a.window, steps=a.steps, size=a.size)
    first, last = marks
    result = {
        'marks': [m._asdict() for m in marks],
        'peak_live_ratio': last.peak_live_bytes / first.peak_live_bytes,
        'peak_rss_ratio': last.peak_rss_bytes / first.peak_rss_bytes,
        'time_per_second_ratio': last.s_per_video_s / first.s_per_video_s,
        'median_time_per_second_ratio': last.median_s_per_video_s / first.median_s_per_video_s,
        'cpu_per_second_ratio': last.cpu_s_per_video_s / first.cpu_s_per_video_s,
    }
    print(
        f'{"video s":>8} {"live MiB":>9} {"peak RSS MiB":>13} {"s / video s":>12} {"median":>8} '
        f'{"CPU-s / video s":>16}'
    )
    for m in marks:
        print(
            f'{m.seconds:8.2f} {m.peak_live_bytes / 2**20:9.3f} '
            f'{m.peak_rss_bytes / 2**20:13.1f} {m.s_per_video_s:12.4f} '
            f'{m.median_s_per_video_s:8.4f} {m.cpu_s_per_video_s:16.4f}'
        )
    print(
        f'ratios {first.seconds:.0f} s -> {last.seconds:.0f} s: live '
        f'{result["peak_live_ratio"]:.3f}, RSS {result["peak_rss_ratio"]:.3f}, time per second '
        f'{result["time_per_second_ratio"]:.3f} (median {result["median_time_per_second_ratio"]:.3f}, '
        f'CPU {result["cpu_per_second_ratio"]:.3f})'
    )
    if a.json:
        with open(a.json, 'w') as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == '__main__':
    main()
