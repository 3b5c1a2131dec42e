"""TPU slices by the names users type, and the chip figures a roofline needs.

`resolve('v5p-64')` -> Slice(chip='v5p', chips=32, topology='v5p:2x4x4'): v5p slice names
count TensorCores (two per chip), v5e and v6e names count chips. Topology strings
('v5p:4x4x2', 'v6e:8x8') pass through. `devices(slice)` asks libtpu for the ahead-of-time
devices of that topology (no TPU needed; `pip install -e .[tpu]` or `[test]` brings libtpu).
The chip figures (peak FLOP/s, HBM, ICI) are `sora_jax.parallel.chips.CHIPS`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

from sora_jax.parallel.chips import CHIPS, Chip

# Chips whose slices `resolve` names (v4 is not: its public page gives no per-chip ICI figure).
SLICE_CHIPS = ('v5e', 'v5p', 'v6e')


@dataclasses.dataclass(frozen=True)
class Slice:
    chip: str
    chips: int
    topology: str  # libtpu topology string, e.g. 'v5p:2x4x4'

    @property
    def spec(self) -> Chip:
        return CHIPS[self.chip]


def _shape_for(chips: int, dims: int) -> tuple[int, ...]:
    """Most cubic power-of-two torus with `chips` chips (as Cloud TPU lays out slices)."""
    if chips < 1 or chips & (chips - 1):
        raise ValueError(
            f"{chips} chips is not a power of two; name a topology instead, e.g. 'v5p:2x2x3'."
        )
    shape = [1] * dims
    i = 0
    while math.prod(shape) < chips:
        shape[i % dims] *= 2
        i += 1
    return tuple(sorted(d for d in shape if d > 1)) + (1,) * shape.count(1)  # 2x2x1, 2x4x4


def resolve(name: str) -> Slice:
    """'v5p-64' | 'v5e-8' | 'v6e-256' | 'v5p:4x4x2' | 'v6e:8x8' -> Slice (v4 is not listed: its public
    page gives no per-chip ICI figure)."""
    name = name.strip().lower()
    m = re.fullmatch(r'(v5p|v5e|v5litepod|v6e)[-:](.+)', name)
    if not m:
        raise ValueError(
            f'--topology={name!r}: use a slice name (v5p-64, v5e-8, v6e-256) or '
            f'a topology (v5p:4x4x2, v6e:8x8); chips: {list(SLICE_CHIPS)}.'
        )
    chip = 'v5e' if m.group(1) == 'v5litepod' else m.group(1)
    spec = CHIPS[chip]
    rest = m.group(2)
    if 'x' in rest:
        dims = tuple(int(d) for d in rest.split('x'))
        if len(dims) != spec.dims or min(dims) < 1:
            raise ValueError(
                f'--topology={name!r}: a {chip} topology has {spec.dims} dimensions, '
                f"e.g. '{chip}:{'x'.join(['2'] * spec.dims)}'."
            )
        return Slice(chip, math.prod(dims), f'{chip}:{"x".join(map(str, dims))}')
    if not rest.isdigit():
        raise ValueError(f'--topology={name!r}: expected {chip}-<count>, e.g. {chip}-8.')
    count = int(rest)
    if count % spec.cores_in_name:
        raise ValueError(
            f'--topology={name!r}: {chip} slice names count TensorCores '
            f'({spec.cores_in_name} per chip); use an even count.'
        )
    chips = count // spec.cores_in_name
    dims = _shape_for(chips, spec.dims)
    return Slice(chip, chips, f'{chip}:{"x".join(map(str, dims))}')


def devices(sl: Slice):
    """The AOT devices of a slice (libtpu topology description; no TPU attached)."""
    os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')  # quiets libtpu's host lookup
    # No TPU is attached: several compiling processes (pytest workers, a sweep) may load libtpu
    # at once instead of queueing on its lockfile.
    os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
    try:
        from jax.experimental import topologies
    except ImportError as e:  # pragma: no cover
        raise ValueError('jax.experimental.topologies is missing; upgrade jax.') from e
    try:
        topo = topologies.get_topology_desc(sl.topology, 'tpu')
    except Exception as e:  # libtpu missing or the topology unknown to it
        raise ValueError(
            f'cannot describe TPU topology {sl.topology!r} ({e}); install libtpu '
            "(pip install -e '.[tpu]') and check the topology string."
        ) from e
    devs = list(topo.devices)
    kind = devs[0].device_kind
    if kind not in CHIPS[sl.chip].device_kinds:
        raise ValueError(
            f'libtpu describes {sl.topology!r} as {devs[0].device_kind!r}, not {sl.chip}.'
        )
    return devs
