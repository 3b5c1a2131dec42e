"""The table a benchmark prints: one figure a line, bytes in MiB, FLOP counts in GFLOP."""

from __future__ import annotations


def _fmt(v) -> str:
    if isinstance(v, float):
        return f'{v:.4g}'
    if isinstance(v, list):
        return '[' + ', '.join(_fmt(a) for a in v) + ']'
    return str(v)


def format_table(name: str, figures: dict) -> str:
    """`== benchmark NAME ==` then one aligned line per figure (profiles as per-op-kind rows; the
    warning is left to the caller)."""
    width = max(len(k) for k in figures)
    lines = [f'== benchmark {name} ==']
    for k, v in figures.items():
        if k.startswith('profile_'):
            lines.append(f'{k}: {v["total_ms"]:.0f} ms of op time per step, by op kind:')
            lines.extend(f'    {ms:9.1f} ms  {op}' for op, ms in v['kinds_ms'].items())
            continue
        if k == 'warning':
            continue
        if k.endswith('_bytes'):
            v = f'{v / 2**20:.1f} MiB'
        elif k.endswith('flops') and isinstance(v, float):
            v = f'{v / 1e9:.2f} GFLOP' + ('' if 'per_step' in k else '/s')
        lines.append(f'{k:<{width}}  {_fmt(v)}')
    return '\n'.join(lines)
