"""Speed benchmarks and the machinery they share (`experiments/benchmark.py` is their CLI).

  machine.py  cores, pinning, load from other processes during a measurement, peak RSS
  timing.py   seconds per call, interleaved rounds, medians and ranges
  peak.py     the matmul peak a CPU run measures MFU against
  profile.py  per-op-kind time of one step (JAX profiler, torch profiler)
  dit.py      one DiT train step (and forward) of sora_jax against diffusers, MFU
  sample.py   TextToVideo seconds per clip
  fast_inference.py  step caches, the text K/V cache, int8 / fp8 weights: speedups, judge, bytes
  table.py    the printed table
The VAE benchmark is `sora_jax.evaluation.vae_bench`.
"""
