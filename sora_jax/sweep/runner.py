"""Runs a sweep: one `experiments/train.py` subprocess per run, each in its own workdir.

Subprocesses, not in-process calls: a run that crashes (a config error, FloatingPointError, an
out-of-memory abort or a segfault in a kernel) ends only itself, every run starts with fresh JAX
state, SIGTERM reaches the run as it would on a cluster (it checkpoints and exits, see
train/loop.py), and the command run is the one `--print_only` prints. The cost is one JAX start
and compile per run; a persistent compilation cache (`JAX_COMPILATION_CACHE_DIR`, on by default
in the CLIs) makes same-shaped runs compile once.

Resumable: each run's state is `<workdir>/sweep_run.json` (status pending / done / failed /
preempted, attempts, wall time). A second invocation skips `done` runs and re-runs the others:
a preempted run resumes from its newest checkpoint, a failed one is tried again. SIGTERM to the
sweep is forwarded to the running runs; they checkpoint, the sweep records them as preempted,
writes the summary and exits without starting more runs.

`parallel=N` runs N at a time; with `devices_per_run=K` run slot i sees devices
[i K, (i + 1) K) through `visible_devices_env` (CUDA_VISIBLE_DEVICES on GPUs), so runs use
disjoint devices. On CPU the N processes share the host's cores.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from absl import logging

from sora_jax.sweep import spec

REPO = Path(__file__).resolve().parents[2]
STATUS_FILE = 'sweep_run.json'
STATUSES = ('pending', 'running', 'done', 'failed', 'preempted')


@dataclasses.dataclass
class Run:
    name: str
    overrides: dict[str, Any]
    workdir: Path


def plan(sweep_dir, overrides: list[dict]) -> list[Run]:
    names = spec.run_names(overrides)
    return [Run(n, o, Path(sweep_dir) / n) for n, o in zip(names, overrides)]


def command(config_arg: str, run: Run, extra_args=()) -> list[str]:
    """The train command of one run (absolute config path: it runs from the repository root)."""
    path, sep, arg = config_arg.partition(':')
    cfg = str(Path(path).resolve()) + (sep + arg if sep else '')
    return [
        sys.executable,
        str(REPO / 'experiments' / 'train.py'),
        f'--config={cfg}',
        f'--workdir={run.workdir}',
        *extra_args,
        *(f'--config.{k}={spec.flag_value(v)}' for k, v in run.overrides.items()),
    ]


def read_status(workdir) -> dict[str, Any]:
    f = Path(workdir) / STATUS_FILE
    return (
        json.loads(f.read_text())
        if f.exists()
        else {'status': 'pending', 'attempts': 0, 'wall_s': 0.0}
    )


def _write_status(run: Run, **fields) -> dict[str, Any]:
    st = read_status(run.workdir)
    st.update(name=run.name, overrides=run.overrides, **fields)
    run.workdir.mkdir(parents=True, exist_ok=True)
    (run.workdir / STATUS_FILE).write_text(json.dumps(st, indent=1, default=str))
    return st


def _final_metrics(log_text: str) -> dict[str, float]:
    """The 'final k=v ...' line experiments/train.py prints last ({} when absent)."""
    for line in reversed(log_text.splitlines()):
        if line.startswith('final '):
            out = {}
            for kv in line[len('final ') :].split():
                k, _, v = kv.partition('=')
                try:
                    out[k] = float(v)
                except ValueError:
                    pass
            return out
    return {}


def _error_line(log_text: str) -> str:
    """The last error line of a run's log: the CLIs' one-line `ERROR: ...` or a traceback's."""
    lines = [
        ln
        for ln in log_text.splitlines()
        if ln.startswith('ERROR:') or 'Error' in ln or 'error:' in ln
    ]
    return lines[-1].strip()[:300] if lines else ''


class Runner:
    def __init__(
        self,
        config_arg: str,
        runs: list[Run],
        *,
        parallel: int = 1,
        devices_per_run: int = 0,
        visible_devices_env: str = 'CUDA_VISIBLE_DEVICES',
        env: dict | None = None,
        extra_args=(),
    ):
        if parallel < 1:
            raise ValueError(f'--parallel={parallel} must be >= 1.')
        self.config_arg, self.runs, self.parallel = config_arg, runs, parallel
        self.devices_per_run, self.visible_env = devices_per_run, visible_devices_env
        self.env = dict(os.environ if env is None else env)
        self.extra_args = tuple(extra_args)
        self.stop_requested = False
        self._active: list[tuple[subprocess.Popen, Run, int, float, int]] = []

    def _on_sigterm(self, signum, frame):
        logging.warning(
            'SIGTERM: forwarding to %d running runs; no new runs start.', len(self._active)
        )
        self.stop_requested = True
        for proc, *_ in self._active:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def _start(self, run: Run, slot: int) -> None:
        env = dict(self.env)
        if self.devices_per_run:
            k = self.devices_per_run
            env[self.visible_env] = ','.join(str(d) for d in range(slot * k, (slot + 1) * k))
        run.workdir.mkdir(parents=True, exist_ok=True)
        log = run.workdir / 'train.log'
        offset = log.stat().st_size if log.exists() else 0
        st = read_status(run.workdir)
        _write_status(run, status='running', attempts=st['attempts'] + 1)
        with open(log, 'a') as f:
            f.write(
                f'\n# sweep attempt {st["attempts"] + 1}: {" ".join(command(self.config_arg, run, self.extra_args))}\n'
            )
            proc = subprocess.Popen(
                command(self.config_arg, run, self.extra_args),
                cwd=REPO,
                env=env,
                stdout=f,
                stderr=subprocess.STDOUT,
            )
        logging.info('started %s (slot %d, pid %d)', run.name, slot, proc.pid)
        self._active.append((proc, run, slot, time.time(), offset))

    def _finish(self, proc, run: Run, t0: float, offset: int) -> dict[str, Any]:
        with open(run.workdir / 'train.log') as f:
            f.seek(offset)
            text = f.read()
        final = _final_metrics(text)
        if proc.returncode == 0 and final.get('preempted', 0) == 0 and final:
            status = 'done'
        elif proc.returncode == 0 or self.stop_requested:
            status = 'preempted'
        else:
            status = 'failed'
        st = read_status(run.workdir)
        st = _write_status(
            run,
            status=status,
            returncode=proc.returncode,
            wall_s=st.get('wall_s', 0.0) + time.time() - t0,
            step=final.get('step'),
            error=_error_line(text) if status == 'failed' else '',
        )
        logging.log(
            logging.WARNING if status == 'failed' else logging.INFO,
            '%s: %s%s',
            run.name,
            status,
            f' ({st["error"]})' if st['error'] else '',
        )
        print(f'{run.name}: {status}', flush=True)
        return st

    def run(self) -> dict[str, dict[str, Any]]:
        """Runs every run not yet done; returns {name: status dict}."""
        todo = [r for r in self.runs if read_status(r.workdir)['status'] != 'done']
        for r in self.runs:
            if r not in todo:
                print(f'{r.name}: done (skipped)', flush=True)
        old = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            while (todo and not self.stop_requested) or self._active:
                used = {slot for *_, slot, _, _ in self._active}
                free = [s for s in range(self.parallel) if s not in used]
                while todo and free and not self.stop_requested:
                    self._start(todo.pop(0), free.pop(0))
                time.sleep(0.2)
                for item in list(self._active):
                    proc, run, _, t0, offset = item
                    if proc.poll() is not None:
                        self._active.remove(item)
                        self._finish(proc, run, t0, offset)
        finally:
            signal.signal(signal.SIGTERM, old)
        return {r.name: read_status(r.workdir) for r in self.runs}
