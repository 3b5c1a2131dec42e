"""The sweep's summary: one row per run (overrides, status, final train / eval loss, the shapes
judge's scores, steps/s, wall time), as summary.csv, summary.md and a TensorBoard hparams view
(`<sweep>/hparams/<run>`: the swept keys as hparams, the final figures as metrics).

Figures come from each run's `metrics.jsonl` (train/tracking.py): the last logged `loss`,
`eval/loss` and `judge/*`; steps/s is the median of the logged intervals after the first (the
first holds the compile).
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from sora_jax.sweep.runner import Run, read_status
from sora_jax.train.tracking import read_metrics

METRICS = (
    'train_loss',
    'eval_loss',
    'judge/color',
    'judge/shape',
    'judge/motion',
    'judge/all',
    'steps_per_sec',
)


def _last(lines, key):
    vals = [m[key] for m in lines if key in m]
    return vals[-1] if vals else None


def row(run: Run) -> dict[str, Any]:
    st = read_status(run.workdir)
    lines = read_metrics(run.workdir)
    sps = [m['steps_per_sec'] for m in lines if 'steps_per_sec' in m]
    r = {
        'name': run.name,
        'status': st['status'],
        **run.overrides,
        'step': _last(lines, 'step') if lines else None,
        'train_loss': _last(lines, 'loss'),
        'eval_loss': _last(lines, 'eval/loss'),
    }
    for k in ('judge/color', 'judge/shape', 'judge/motion', 'judge/all'):
        r[k] = _last(lines, k)
    r['steps_per_sec'] = float(np.median(sps[1:] if len(sps) > 1 else sps)) if sps else None
    r['wall_s'] = round(float(st.get('wall_s', 0.0)), 1)
    r['attempts'] = st.get('attempts', 0)
    r['error'] = st.get('error', '') or ''
    return r


def rows(runs: list[Run]) -> list[dict[str, Any]]:
    out = [row(r) for r in runs]
    # judge columns only when some run has them (the shapes suite)
    empty = [k for k in out[0] if k.startswith('judge/') and all(r[k] is None for r in out)]
    return [{k: v for k, v in r.items() if k not in empty} for r in out]


def _cell(v) -> str:
    if v is None:
        return ''
    if isinstance(v, float):
        return f'{v:.4g}'
    return str(v).replace('|', '\\|')


def write(sweep_dir, runs: list[Run]) -> list[dict[str, Any]]:
    """summary.csv, summary.md and hparams/ under sweep_dir; returns the rows."""
    sweep_dir = Path(sweep_dir)
    table = rows(runs)
    swept = list(dict.fromkeys(k for r in runs for k in r.overrides))
    cols = list(dict.fromkeys(['name', 'status', *swept, *(k for r in table for k in r)]))
    with open(sweep_dir / 'summary.csv', 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(table)
    md = ['| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)]
    md += ['| ' + ' | '.join(_cell(r.get(c)) for c in cols) + ' |' for r in table]
    (sweep_dir / 'summary.md').write_text('\n'.join(md) + '\n')
    _hparams(sweep_dir, runs, table)
    return table


def _hparams(sweep_dir: Path, runs: list[Run], table: list[dict]) -> None:
    from tensorboardX import SummaryWriter
    from tensorboardX.summary import hparams

    for run, r in zip(runs, table):
        hp = {
            k: (v if isinstance(v, (int, float, str, bool)) else repr(v))
            for k, v in run.overrides.items()
        }
        hp['status'] = r['status']
        metrics = {f'final/{k}': r[k] for k in METRICS if r.get(k) is not None}
        d = sweep_dir / 'hparams' / run.name
        shutil.rmtree(d, ignore_errors=True)  # rewritten whole at every summary
        with SummaryWriter(str(d)) as w:
            exp, ssi, sei = hparams(hp, {f'final/{k}': 0.0 for k in METRICS})
            for s in (exp, ssi, sei):
                w.file_writer.add_summary(s)
            for k, v in metrics.items():
                w.add_scalar(k, float(v), int(r['step'] or 0))
