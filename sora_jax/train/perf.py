"""Throughput, model FLOPs utilisation (MFU) and memory figures for the training log.

  meter = Throughput(config, params)
  meter.perf(batch_shapes, steps=50, seconds=12.3)   # {'perf/steps_per_sec', 'perf/tokens_per_sec',
                                                     #  'perf/model_tflops_per_sec', 'perf/mfu'}
  memory_in_use()                                    # {'memory/device_bytes_in_use', ...}

Tokens: DiT tokens (latent T*H*W / patch volume) for configs with `model.patch_size`; input
positions (frames x height x width) otherwise (the VAE).
Model FLOPs per step (training = forward + backward): `train.flops_per_step` when set; else, for
the DiT, the PaLM-appendix estimate 6 N D + 12 L d S D (N DiT + text encoder params, D tokens per
step, L blocks, d width, S tokens per clip; self-attention only, cross-attention and the VAE
excluded); else (VAE) XLA's cost analysis of the lowered step, whose `flops` count a
`lax.scan` body once (an underestimate for scanned layers, so DiTs use the formula).
MFU = model FLOPs / second / (devices x peak FLOP/s per device): the peak is
`train.peak_tflops_per_device` when set, else from `PEAK_TFLOPS` by `device_kind` (dense bf16
figures of the vendors' data sheets); unknown (CPUs) -> 'perf/mfu' is not logged.
Memory: `Device.memory_stats()` (GPU / TPU: bytes in use and the peak, summed over this process's
devices); where it returns None (CPU), the process's resident set size (psutil, else the peak RSS
from `resource`).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import numpy as np

# Peak dense bf16 TFLOP/s per device (vendor data sheets), matched as substrings of device_kind.
PEAK_TFLOPS = {
    'TPU v4': 275.0,
    'TPU v5 lite': 197.0,
    'TPU v5e': 197.0,
    'TPU v5p': 459.0,
    'TPU v5': 459.0,
    'TPU v6 lite': 918.0,
    'TPU v6e': 918.0,
    'H100': 989.0,
    'H200': 989.0,
    'A100': 312.0,
    'L4': 121.0,
}


def peak_tflops(config, device=None) -> float | None:
    """Per-device peak TFLOP/s: train.peak_tflops_per_device, else the PEAK_TFLOPS entry for the
    device kind, else None."""
    given = float(config.train.get('peak_tflops_per_device', 0.0) or 0.0)
    if given > 0:
        return given
    kind = (device or jax.devices()[0]).device_kind
    for name, tflops in sorted(PEAK_TFLOPS.items(), key=lambda kv: -len(kv[0])):
        if name.lower() in kind.lower():
            return tflops
    return None


def tokens_per_example(config, shape: tuple[int, ...]) -> int:
    """DiT tokens of one clip [T, H, W, C] (patch volume from model.patch_size), or its T*H*W."""
    t, h, w = shape[:3]
    if 'model' in config and 'patch_size' in config.model:
        pt, ph, pw = config.model.patch_size
        return (t // pt) * (h // ph) * (w // pw)
    return t * h * w


def dit_flops_per_step(config, n_params: int, batch: int, seq: int) -> float:
    """6 N D + 12 L d S D: training FLOPs of a transformer over D = batch * seq tokens."""
    d_tokens = batch * seq
    return 6.0 * n_params * d_tokens + 12.0 * config.model.depth * config.model.dim * seq * d_tokens


class Throughput:
    """Steps/s, tokens/s, model TFLOP/s and MFU from step counts and wall time."""

    def __init__(self, config, n_params: int, lowered_flops: Callable[[], float] | None = None):
        self.config = config
        self.n_params = n_params
        self.peak = peak_tflops(config)
        self.n_devices = jax.device_count()
        self._lowered_flops = lowered_flops
        self._flops: dict[tuple, float] = {}

    def flops_per_step(self, shape: tuple[int, ...]) -> float:
        """Model FLOPs of one step over a global batch of `shape` [B, T, H, W, C]."""
        given = float(self.config.train.get('flops_per_step', 0.0) or 0.0)
        if given > 0:
            return given
        if shape not in self._flops:
            if 'model' in self.config and 'depth' in self.config.model:
                seq = tokens_per_example(self.config, shape[1:])
                self._flops[shape] = dit_flops_per_step(self.config, self.n_params, shape[0], seq)
            elif self._lowered_flops is not None:
                self._flops[shape] = float(self._lowered_flops())
            else:
                self._flops[shape] = math.nan
        return self._flops[shape]

    def perf(self, shape: tuple[int, ...], steps: int, seconds: float) -> dict[str, float]:
        """Figures for `steps` steps over global batches of `shape` in `seconds`."""
        seconds = max(seconds, 1e-9)
        out = {
            'perf/steps_per_sec': steps / seconds,
            'perf/tokens_per_sec': steps
            * shape[0]
            * tokens_per_example(self.config, shape[1:])
            / seconds,
        }
        flops = self.flops_per_step(shape)
        if np.isfinite(flops):
            out['perf/model_tflops_per_sec'] = steps * flops / seconds / 1e12
            if self.peak:
                out['perf/mfu'] = out['perf/model_tflops_per_sec'] / (self.peak * self.n_devices)
        return out


def memory_in_use() -> dict[str, float]:
    """Device memory in use (and peak) summed over local devices, or the process RSS."""
    stats = [d.memory_stats() for d in jax.local_devices()]
    if all(s for s in stats):
        return {
            'memory/device_bytes_in_use': float(sum(s.get('bytes_in_use', 0) for s in stats)),
            'memory/device_peak_bytes': float(sum(s.get('peak_bytes_in_use', 0) for s in stats)),
        }
    try:
        import psutil

        return {'memory/host_rss_bytes': float(psutil.Process().memory_info().rss)}
    except ImportError:
        import resource

        return {
            'memory/host_peak_rss_bytes': float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
            * 1024
        }


def batch_shape(inputs: dict[str, Any], n_proc: int = 1) -> tuple[int, ...]:
    """Global [B, T, H, W, C] of the video / latents input of a host-local batch."""
    x = inputs['latents'] if 'latents' in inputs else inputs['video']
    return (x.shape[0] * n_proc, *x.shape[1:])
