"""Collectives of an optimized HLO module, counted as they execute (loop trip counts applied).

`collectives(hlo_text, num_devices)` -> {kind: {'ops', 'executed', 'bytes', 'traffic'}}:
  ops       collective instructions in the module
  executed  instructions run per step: each op times the trip counts of the loops around it
            (read from the loop conditions' bound: scans over blocks, XLA's windowed einsums)
  bytes     result bytes per device summed over executions (for a reduce-scatter: its input)
  traffic   bytes each device sends or receives for it on a ring of the group
            (all-gather / all-to-all (g-1)/g, reduce-scatter (g-1)/g of the input,
            all-reduce 2 (g-1)/g, collective-permute 1): what the roofline divides by ICI
Async pairs count once (the '-start' half).
"""

from __future__ import annotations

import collections
import math
import re

KINDS = ('all-gather', 'reduce-scatter', 'all-reduce', 'all-to-all', 'collective-permute')
_BYTES = {
    'pred': 1,
    's8': 1,
    'u8': 1,
    'bf16': 2,
    'f16': 2,
    's16': 2,
    'u16': 2,
    'f32': 4,
    's32': 4,
    'u32': 4,
    'f64': 8,
    's64': 8,
    'u64': 8,
    'f8e4m3fn': 1,
    'f8e5m2': 1,
}
_ARRAY = re.compile(r'\b(' + '|'.join(_BYTES) + r')\[([\d,]*)\]')
_HEADER = re.compile(r'^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$')
_OP = re.compile(r'^\s*(?:ROOT )?%?[\w.\-]+ = (.+?) ([a-z][a-z0-9\-]*)\((.*)$')
_CALLS = re.compile(
    r'\b(?:calls|body|condition|to_apply|branch_computations)=\{?([^,}\s]+(?:, ?%[\w.\-]+)*)'
)


def _arrays(shape: str) -> list[int]:
    out = []
    for dt, dims in _ARRAY.findall(shape):
        out.append(math.prod(int(d) for d in dims.split(',') if d) * _BYTES[dt])
    return out


def _computations(text: str) -> tuple[dict[str, list[str]], str | None]:
    comps: dict[str, list[str]] = {}
    entry = None
    name = None
    for line in text.splitlines():
        if name is None:
            m = _HEADER.match(line)
            if m and not line.startswith(' '):
                name = m.group(1)
                comps[name] = []
                if line.startswith('ENTRY'):
                    entry = name
            continue
        if line.rstrip() == '}':
            name = None
            continue
        comps[name].append(line)
    return comps, entry


def _trip_count(cond: list[str]) -> int:
    """Loop bound: the largest integer constant in the condition computation (i < N)."""
    consts = [
        int(c)
        for line in cond
        for c in re.findall(r'[su](?:32|64)\[\](?:\{[^}]*\})? constant\((\d+)\)', line)
    ]
    return max(consts) if consts else 1


def _group_size(line: str, num_devices: int) -> int:
    m = re.search(r'replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}', line)
    if m:
        sizes = dict((k.strip("'"), int(v)) for k, v in re.findall(r"'?(\w+)'?=(\d+)", m.group(1)))
        names = [n.strip(" '") for n in m.group(2).split(',') if n.strip(" '")]
        return math.prod(sizes.get(n, 1) for n in names) or 1
    m = re.search(r'replica_groups=\[(\d+),(\d+)\]<=', line)
    if m:
        return int(m.group(2))
    m = re.search(r'replica_groups=\{\{([\d,]*)\}', line)
    if m:
        return max(1, len(m.group(1).split(',')))
    if 'source_target_pairs' in line:
        return 2
    return num_devices


def collectives(text: str, num_devices: int) -> dict[str, dict[str, float]]:
    comps, entry = _computations(text)
    order = list(comps)
    mult = collections.defaultdict(float)
    mult[entry or order[-1]] = 1.0
    # Callees are printed before their callers: walk callers first.
    for name in reversed(order):
        m = mult.get(name, 0.0)
        if not m:
            continue
        for line in comps[name]:
            op = _OP.match(line)
            if not op:
                continue
            trip = 1
            if op.group(2) == 'while':
                cm = re.search(r'condition=%?([\w.\-]+)', line)
                trip = _trip_count(comps.get(cm.group(1), [])) if cm else 1
            for group in _CALLS.findall(line):
                for callee in re.findall(r'%?([\w.\-]+)', group):
                    if callee in comps:
                        mult[callee] += m * trip
    out = {k: dict(ops=0, executed=0.0, bytes=0.0, traffic=0.0) for k in KINDS}
    for name, lines in comps.items():
        m = mult.get(name, 0.0)
        for line in lines:
            op = _OP.match(line)
            if not op:
                continue
            kind = op.group(2)
            if kind.endswith('-done'):
                continue
            kind = kind[: -len('-start')] if kind.endswith('-start') else kind
            if kind not in out:
                continue
            arrays = _arrays(op.group(1))
            if not arrays:
                continue
            size = max(arrays) if kind in ('all-gather', 'collective-permute') else sum(arrays)
            g = _group_size(line, num_devices)
            if kind == 'reduce-scatter':
                size *= g  # the input: g times the scattered result
            factor = {
                'all-gather': (g - 1) / g,
                'reduce-scatter': (g - 1) / g,
                'all-reduce': 2 * (g - 1) / g,
                'all-to-all': (g - 1) / g,
                'collective-permute': 1.0,
            }[kind]
            rec = out[kind]
            rec['ops'] += 1
            rec['executed'] += m
            rec['bytes'] += m * size
            rec['traffic'] += m * size * factor
    return out


def custom_kernels(text: str) -> dict[str, int]:
    """Pallas / custom-call kernels in the module by name prefix, e.g. {'splash_mha_fwd': 2}."""
    out: dict[str, int] = collections.Counter()
    for line in text.splitlines():
        op = _OP.match(line)
        if op and op.group(2) == 'custom-call':
            name = re.search(r'(splash_\w+|flash_\w+)', line)
            if name:
                out[re.sub(r'(_segmented|_residuals|_no_residuals)', '', name.group(1))] += 1
    return dict(out)
