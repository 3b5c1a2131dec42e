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

`hbm_traffic(hlo_text)` -> HBMTraffic: bytes each device reads and writes in HBM per step, counted
the same way (loop trip counts applied): every instruction of the sequential computations (the
entry, loop bodies, called computations; not the insides of fusions) reads its operands and
writes its result. A fusion that only slices an operand (the scan's dynamic-slice of one block's
weights out of the stacked [depth, ...] parameters) reads the slice; one that updates a buffer
in place (dynamic-update-slice) writes the update. Arrays in other memory spaces (VMEM, host)
are not HBM traffic; copies to and from pinned host memory are counted apart (`host`): whole
arrays (copy-start) and the slices remat 'offload' writes into and reads out of a host buffer
(dynamic-update-slice-start / dynamic-slice-start). Pallas
kernels (custom calls) are counted from their operands and results (`kernel`): what their
blocks re-read is not in the HLO, so the report replaces this part with an analytic count.
"""

from __future__ import annotations

import collections
import dataclasses
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


def _multiplicities(comps: dict[str, list[str]], entry: str | None) -> dict[str, float]:
    """Executions per step of every computation: the entry once, a loop body its trip count
    times its caller's."""
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
    return mult


def collectives(text: str, num_devices: int) -> dict[str, dict[str, float]]:
    comps, entry = _computations(text)
    mult = _multiplicities(comps, entry)
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


@dataclasses.dataclass
class HBMTraffic:
    """Bytes per device per step (module docstring)."""

    total: float  # HBM bytes read + written, `kernel` included
    kernel: float  # of which Pallas / custom-call operands and results
    host: float  # bytes copied between HBM and pinned host memory
    host_copies: float  # such copies executed per step
    by_op: dict  # {op kind: bytes}


# No data moves (views, tuples, control flow; an async op's '-done' half, counted at '-start').
_NO_TRAFFIC = {
    'parameter',
    'constant',
    'get-tuple-element',
    'tuple',
    'bitcast',
    'while',
    'call',
    'conditional',
    'after-all',
    'opt-barrier',
    'partition-id',
    'replica-id',
    'add-dependency',
    'copy-done',
    'send-done',
    'recv-done',
}
_SLICES = ('dynamic-slice', 'slice', 'gather')
_MEMSPACE = re.compile(r'S\((\d+)\)')


def _hbm_arrays(shape: str) -> int:
    """Bytes of the arrays in an HLO shape string that live in HBM (no memory-space mark, or
    S(0)); VMEM / SMEM / host arrays are skipped."""
    total = 0
    for m in re.finditer(r'\b(' + '|'.join(_BYTES) + r')\[([\d,]*)\](\{[^}]*\})?', shape):
        space = _MEMSPACE.search(m.group(3) or '')
        if space and space.group(1) != '0':
            continue
        total += math.prod(int(d) for d in m.group(2).split(',') if d) * _BYTES[m.group(1)]
    return total


def _operands(rest: str) -> list[str]:
    """Operand names of an instruction (the text after its opening parenthesis)."""
    return re.findall(r'%([\w.\-]+)', rest.split(')', 1)[0])


def _fusion_io(comps: dict, name: str, memo: dict) -> tuple[dict[int, int | None], int | None]:
    """({parameter index: bytes read, or None for the whole operand}, bytes written or None for
    the whole result) of the fused computation `name`: parameters used only through slices (also
    inside nested fusions) read the slices; the buffer a dynamic-update-slice root updates in
    place is neither read nor rewritten (only the update is written)."""
    if name in memo:
        return memo[name]
    memo[name] = ({}, None)  # (no recursion into itself)
    shapes, params, uses = {}, {}, collections.defaultdict(list)
    nested = {}  # instruction -> its fused computation
    root = None
    for line in comps[name]:
        op = _OP.match(line)
        if not op:
            continue
        iname = re.match(r'^\s*(?:ROOT )?%?([\w.\-]+) =', line).group(1)
        shapes[iname] = op.group(1)
        if op.group(2) == 'parameter':
            params[iname] = int(re.match(r'(\d+)', op.group(3)).group(1))
        if op.group(2) == 'fusion':
            callee = re.search(r'calls=%?([\w.\-]+)', line)
            if callee and callee.group(1) in comps:
                nested[iname] = callee.group(1)
        for i, o in enumerate(_operands(op.group(3))):
            uses[o].append((op.group(2), i, iname))
        if line.lstrip().startswith('ROOT'):
            root = (op.group(2), _operands(op.group(3)), iname)
    written = None
    in_place = set()
    if root and root[0] == 'dynamic-update-slice':
        in_place.add(root[1][0])
        written = _hbm_arrays(shapes.get(root[1][1], ''))

    def sliced(kind: str, i: int, user: str) -> int | None:
        """Bytes one use reads of its operand i, when it reads only a slice of it."""
        if kind in _SLICES and i == 0:
            return _hbm_arrays(shapes[user])
        if kind == 'fusion' and user in nested:
            return _fusion_io(comps, nested[user], memo)[0].get(i)
        return None

    read = {}
    for pname, idx in params.items():
        u = uses.get(pname, [])
        parts = [sliced(k, i, n) for k, i, n in u]
        if pname in in_place and all(k == 'dynamic-update-slice' and i == 0 for k, i, _ in u):
            read[idx] = 0
        elif u and all(p is not None for p in parts):
            read[idx] = sum(parts)
        else:
            read[idx] = None
    memo[name] = (read, written)
    return read, written


def hbm_traffic(text: str) -> HBMTraffic:
    comps, entry = _computations(text)
    mult = _multiplicities(comps, entry)
    inner = set()  # fusion bodies and reducers: their traffic is their caller's
    for lines in comps.values():
        for line in lines:
            op = _OP.match(line)
            if not op:
                continue
            for key in ('calls', 'to_apply'):
                if op.group(2) == 'call' or (key == 'calls' and op.group(2).endswith('-start')):
                    continue
                for callee in re.findall(key + r'=%?([\w.\-]+)', line):
                    inner.add(callee)
    fused = {}
    by_op = collections.Counter()
    kernel = host = copies = 0.0
    for name, lines in comps.items():
        m = mult.get(name, 0.0)
        if not m or name in inner:
            continue
        shapes = {}
        for line in lines:
            op = _OP.match(line)
            if not op:
                continue
            iname = re.match(r'^\s*(?:ROOT )?%?([\w.\-]+) =', line).group(1)
            shapes[iname] = op.group(1)
            kind = op.group(2)
            if kind in _NO_TRAFFIC or kind.endswith('-done'):
                continue
            operands = _operands(op.group(3))
            if kind == 'copy-start':
                arrays = _arrays(op.group(1))
                size = arrays[0] if arrays else 0
                if 'S(5)' in op.group(1) or 'S(5)' in shapes.get(operands[0], ''):
                    host += m * size
                    copies += m
                    by_op['host copy'] += m * size  # the HBM side of the copy
                else:
                    by_op['copy'] += m * 2 * size
                continue
            if kind in ('dynamic-update-slice-start', 'dynamic-slice-start') and 'S(5)' in (
                op.group(1)
            ):  # remat 'offload': one block's saved input written to / read from a host buffer
                size = sum(
                    math.prod(int(d) for d in dims.split(',')) * _BYTES[dt]
                    for dt, dims, layout in re.findall(
                        r'\b(' + '|'.join(_BYTES) + r')\[([\d,]+)\](\{[^}]*\})?', op.group(1)
                    )
                    if 'S(5)' not in (layout or '')
                )
                host += m * size
                copies += m
                by_op['host copy'] += m * size
                continue
            reads = [_hbm_arrays(shapes.get(o, '')) for o in operands]
            write = _hbm_arrays(op.group(1))
            if kind == 'fusion':
                callee = re.search(r'calls=%?([\w.\-]+)', line)
                if callee and callee.group(1) in comps:
                    read, written = _fusion_io(comps, callee.group(1), fused)
                    reads = [r if read.get(i) is None else read[i] for i, r in enumerate(reads)]
                    write = write if written is None else written
            b = m * (sum(reads) + write)
            by_op[kind] += b
            if kind == 'custom-call':
                kernel += b
    return HBMTraffic(
        total=float(sum(by_op.values())),
        kernel=kernel,
        host=host,
        host_copies=copies,
        by_op={k: float(v) for k, v in by_op.most_common()},
    )


def _dims(shape: str) -> list[int]:
    m = _ARRAY.search(shape)
    return [int(d) for d in m.group(2).split(',') if d] if m else []


def matmul_flops(text: str) -> float:
    """FLOPs per device per step of the module's convolutions and dots, each counted with the
    trip counts of the loops around it (XLA's cost analysis counts a loop body once):
    a convolution 2 x output elements x (kernel elements / output features), which covers grouped
    convolutions; a dot 2 x output elements x the contracted size. Pallas kernels (custom calls)
    are not seen. What a conv net's roofline (the VAE decode: its frame chunks are a lax.scan)
    divides by the chip's peak."""
    comps, entry = _computations(text)
    mult = _multiplicities(comps, entry)
    total = 0.0
    for name, lines in comps.items():
        m = mult.get(name, 0.0)
        if not m:
            continue
        shapes = {}
        for line in lines:
            op = _OP.match(line)
            if not op:
                continue
            shapes[re.match(r'^\s*(?:ROOT )?%?([\w.\-]+) =', line).group(1)] = op.group(1)
            kind = op.group(2)
            if kind not in ('convolution', 'dot'):
                continue
            out = math.prod(_dims(op.group(1)))
            lhs, rhs = ([_dims(shapes.get(o, '')) for o in _operands(op.group(3))] + [[], []])[:2]
            if kind == 'convolution':
                labels = re.search(r'dim_labels=\w+_(\w+)->', line)
                o = labels.group(1).index('o') if labels else len(rhs) - 1
                per_out = math.prod(rhs) // rhs[o] if o < len(rhs) and rhs[o] else 0
            else:
                cd = re.search(r'lhs_contracting_dims=\{([\d,]*)\}', line)
                idx = [int(i) for i in cd.group(1).split(',') if i] if cd else []
                per_out = math.prod(lhs[i] for i in idx) if all(i < len(lhs) for i in idx) else 0
            total += m * 2 * out * per_out
    return float(total)
