"""The matmul peak a CPU benchmark divides by for its MFU (no data-sheet figure exists for a
CPU slice shared with other processes, so it is measured in the same run)."""

from __future__ import annotations

from typing import Callable

from sora_jax.bench.timing import best_s


def matmul_peak(n: int) -> Callable[[float], float]:
    """A callable `peak(window_s)` -> FLOP/s of a jitted [n, n] @ [n, n] float32 matmul.

    Each of 3 samples repeats the matmul for about `window_s` (the step time), and the best
    counts: called next to each timed round with the same window, load from other processes
    hits the peak and the step alike (a short window would catch quiet moments the step can't)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(jnp.matmul)
    f(a, b).block_until_ready()
    one = best_s(lambda: f(a, b).block_until_ready(), 3, 1)

    def peak(window_s: float = 0.0) -> float:
        reps = max(1, round(window_s / one))
        return 2 * n**3 / best_s(lambda: f(a, b).block_until_ready(), 3, reps)

    return peak
