"""Accelerator figures from the vendors' data sheets: the one peak table MFU and rooflines use.

  chip = chips.for_device_kind(jax.devices()[0].device_kind)   # Chip or None (CPUs)
  chip.bf16_flops, chip.hbm_bytes, chip.hbm_bw, chip.ici_bw

`bf16_flops` is the dense (no sparsity) bf16 matmul peak per chip: the denominator of every MFU
in training logs, AOT reports and benchmarks. `ici_bw` is the chip's interconnect bandwidth
(TPU ICI, bidirectional over all ports; NVLink for GPUs), used as its collective bandwidth: an
optimistic bound.
"""

from __future__ import annotations

import dataclasses

GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    bf16_flops: float  # peak dense bf16 FLOP/s per chip
    hbm_bytes: float  # HBM per chip
    hbm_bw: float  # HBM bytes/s per chip
    ici_bw: float | None  # interconnect bytes/s per chip (None: no public per-chip figure)
    cores_in_name: int  # TensorCores counted per chip by a TPU slice name (v5p: 2)
    dims: int  # torus dimensions of a TPU slice (3: v4 / v5p, 2: v5e / v6e; 0: not a TPU)
    device_kinds: tuple[str, ...]  # jax `device_kind` strings (matched as substrings)
    source: str


CHIPS = {
    'v4': Chip(
        'v4',
        275e12,
        32 * GiB,
        1200e9,
        None,
        2,
        3,
        ('TPU v4',),
        'cloud.google.com/tpu/docs/v4: 275 TFLOP/s bf16, 32 GiB HBM2 at 1,200 GB/s',
    ),
    'v5e': Chip(
        'v5e',
        197e12,
        16e9,
        819e9,
        400e9,
        1,
        2,
        ('TPU v5 lite', 'TPU v5e'),
        'cloud.google.com/tpu/docs/v5e: 197 TFLOP/s bf16, 16 GB HBM2 at 819 GB/s, '
        'ICI 400 GB/s bidirectional per chip',
    ),
    'v5p': Chip(
        'v5p',
        459e12,
        95 * GiB,
        2765e9,
        1200e9,
        2,
        3,
        ('TPU v5', 'TPU v5p'),
        'cloud.google.com/tpu/docs/v5p: 459 TFLOP/s bf16, 95 GiB HBM2e at 2,765 GB/s, '
        'ICI 1,200 GB/s bidirectional per chip',
    ),
    'v6e': Chip(
        'v6e',
        918e12,
        32e9,
        1638e9,
        800e9,
        1,
        2,
        ('TPU v6 lite', 'TPU v6e'),
        'cloud.google.com/tpu/docs/v6e: 918 TFLOP/s bf16, 32 GB HBM at 1,638 GB/s, '
        'ICI 800 GB/s bidirectional per chip',
    ),
    'h100': Chip(
        'h100',
        989e12,
        80e9,
        3350e9,
        900e9,
        1,
        0,
        ('H100',),
        'NVIDIA H100 SXM data sheet: 989 TFLOP/s dense bf16, 80 GB HBM3 at 3.35 TB/s, '
        'NVLink 900 GB/s (the PCIe card is slower; its device_kind also says H100)',
    ),
    'h200': Chip(
        'h200',
        989e12,
        141e9,
        4800e9,
        900e9,
        1,
        0,
        ('H200',),
        'NVIDIA H200 SXM data sheet: 989 TFLOP/s dense bf16, 141 GB HBM3e at 4.8 TB/s, '
        'NVLink 900 GB/s',
    ),
    'a100': Chip(
        'a100',
        312e12,
        80e9,
        2039e9,
        600e9,
        1,
        0,
        ('A100',),
        'NVIDIA A100 80GB SXM data sheet: 312 TFLOP/s dense bf16, 80 GB HBM2e at 2,039 GB/s, '
        'NVLink 600 GB/s',
    ),
    'l4': Chip(
        'l4',
        121e12,
        24e9,
        300e9,
        None,
        1,
        0,
        ('L4',),
        'NVIDIA L4 data sheet: 121 TFLOP/s dense bf16 (242 with sparsity), 24 GB GDDR6 at '
        '300 GB/s, no NVLink',
    ),
}


def for_device_kind(kind: str) -> Chip | None:
    """The chip whose `device_kinds` match `kind` (exactly, else the longest substring match:
    'TPU v5 lite' is a v5e, not a v5p), or None (CPUs, unlisted chips)."""
    pairs = [(k, chip) for chip in CHIPS.values() for k in chip.device_kinds]
    for k, chip in pairs:
        if k == kind:
            return chip
    hits = [(len(k), chip) for k, chip in pairs if k.lower() in kind.lower()]
    return max(hits, key=lambda h: h[0])[1] if hits else None
