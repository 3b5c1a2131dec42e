"""Reports of `world_long` results: a markdown table per result (per 10-s bucket: pass rate,
drift; then the first and last 10 s and all windows) and a plot of the per-window pass rate and
colour drift against time, one line per result (baseline vs autoregressive in one figure).

  print(table(result))
  plot([rollout_result, extend_result], 'docs/world_long.png')
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from sora_jax.evaluation.world_long import LongResult


def _fmt(x, spec: str) -> str:
    return '-' if x is None else format(x, spec)


def table(result: LongResult) -> str:
    """Markdown: one row per time bucket (pass rate, drift), then the first / last / overall
    (and for the truth, the windows where its objects never touch and those where they do)."""
    s = result.summary
    lines = [
        f'{result.label}: {len(result.prompts)} prompts, {result.num_frames} frames at '
        f'{result.fps:g} fps, windows of {result.window} frames',
        '',
        '| seconds | windows | pass rate | colour drift | background drift | sharpness ratio |',
        '|---|---|---|---|---|---|',
    ]
    rows = [(f'{r["start_s"]:g}-{r["stop_s"]:g}', r) for r in s['buckets']]
    rows += [
        (f'first {s["edge_windows"]} windows', s['first']),
        (f'last {s["edge_windows"]} windows', s['last']),
        ('all', s['overall']),
    ]
    if s.get('apart') is not None:  # the truth: windows by whether its objects touch
        rows += [('objects never touch', s['apart']), ('objects touch', s['touching'])]
    for name, r in rows:
        lines.append(
            f'| {name} | {r["n"]} | {_fmt(r["pass_rate"], ".2f")} | '
            f'{_fmt(r["color_drift"], ".1f")} | {_fmt(r["background_drift"], ".1f")} | '
            f'{_fmt(r["sharpness_ratio"], ".2f")} |'
        )
    return '\n'.join(lines)


def plot(results: Sequence[LongResult], path: str) -> str:
    """Per-window pass rate and colour drift against time (window centres), one line per
    result, written to `path` (PNG). Needs matplotlib (the [test] extra)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, (ax_pass, ax_drift) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    for r in results:
        w = r.summary['per_window']
        x = [(p['index'] + 0.5) * r.window / r.fps for p in w]
        ax_pass.plot(x, [p['pass_rate'] for p in w], marker='o', ms=3, label=r.label)
        drift = [np.nan if p['color_drift'] is None else p['color_drift'] for p in w]
        ax_drift.plot(x, drift, marker='o', ms=3, label=r.label)
    ax_pass.set_ylabel('windows passed')
    ax_pass.set_ylim(-0.05, 1.05)
    ax_drift.set_ylabel('colour drift (0..255)')
    ax_drift.set_xlabel('seconds of video (window centre)')
    ax_pass.legend(loc='lower left', fontsize=8)
    for ax in (ax_pass, ax_drift):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
