"""Throughput, model FLOPs utilisation (MFU) and memory figures for the training log.

  meter = Throughput(config, params)
  meter.perf(batch_shapes, steps=50, seconds=12.3)   # {'perf/steps_per_sec', 'perf/tokens_per_sec',
                                                     #  'perf/model_tflops_per_sec', 'perf/mfu'}
  memory_in_use()                                    # {'memory/device_bytes_in_use', ...}

Tokens: DiT tokens (latent T*H*W / patch volume) for configs with `model.patch_size`; input
positions (frames x height x width) otherwise (the VAE).
Model FLOPs per step (training = forward + backward): `train.flops_per_step` when set; else, for
the DiT, `models/flops.dit_flops(...).mfu_flops`: 6 N tokens for the DiT's matmul weights plus
attention, over `text.max_length` text tokens (the count AOT reports and benchmarks use; the text
encoder and the VAE are not counted); else (VAE) XLA's cost analysis of the lowered step, whose
`flops` count a `lax.scan` body once (an underestimate for scanned layers, so DiTs use the count).
MFU = model FLOPs / second / (devices x peak FLOP/s per device): the peak is
`train.peak_tflops_per_device` when set, else the dense bf16 peak of the device kind in
`parallel/chips.CHIPS`; unknown (CPUs) -> 'perf/mfu' is not logged.
Memory: `Device.memory_stats()` (GPU / TPU: bytes in use and the peak, summed over this process's
devices); where it returns None (CPU), the process's resident set size (psutil, else the peak RSS
from `resource`).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import numpy as np

from sora_jax.models import flops
from sora_jax.parallel import chips


def peak_tflops(config, device=None) -> float | None:
    """Per-device peak TFLOP/s: train.peak_tflops_per_device, else the dense bf16 peak of the
    device kind (parallel/chips.py), else None."""
    given = float(config.train.get('peak_tflops_per_device', 0.0) or 0.0)
    if given > 0:
        return given
    chip = chips.for_device_kind((device or jax.devices()[0]).device_kind)
    return chip.bf16_flops / 1e12 if chip else None


def tokens_per_example(config, shape: tuple[int, ...]) -> int:
    """DiT tokens of one clip [T, H, W, C] (patch volume from model.patch_size), or its T*H*W."""
    t, h, w = shape[:3]
    if 'model' in config and 'patch_size' in config.model:
        pt, ph, pw = config.model.patch_size
        return (t // pt) * (h // ph) * (w // pw)
    return t * h * w


def text_length(config) -> int:
    """Text tokens the DiT cross-attends to: `text.max_length` (0 when the config has none)."""
    return int(config.get('text', {}).get('max_length', 0) or 0)


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
                fl = flops.dit_flops(self.config.model, seq, shape[0], text_length(self.config))
                self._flops[shape] = fl.mfu_flops
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
