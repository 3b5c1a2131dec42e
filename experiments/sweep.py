"""Run a config sweep: `get_sweep(ARG)` beside `get_config` in the config file expands into named
runs, each an experiments/train.py subprocess with its own workdir under --workdir.

  python experiments/sweep.py --config=configs/shapes.py:tiny --sweep=lr_seed --workdir=workdirs/sweep1
  python experiments/sweep.py ... --dry_run      # list the runs and their overrides
  python experiments/sweep.py ... --print_only   # one train command per run (cluster launchers)
  python experiments/sweep.py ... --parallel=4 --devices_per_run=2   # GPUs 0-1, 2-3, 4-5, 6-7
  python experiments/sweep.py ... --set=train.num_steps=8             # every run, not in names

Re-running the same command skips finished runs and resumes preempted ones. At the end:
--workdir/summary.csv and summary.md (one row per run), and --workdir/hparams (TensorBoard's
hparams view: `tensorboard --logdir=WORKDIR/hparams`; the runs' curves: `--logdir=WORKDIR`).
Exits 1 when some run failed (the others still ran).
"""

import os
import shlex

from absl import app, flags, logging  # noqa: E402

flags.DEFINE_string('config', None, 'Config file with get_config and get_sweep (FILE.py:ARG).')
flags.DEFINE_string('sweep', None, 'Argument of get_sweep (default: get_sweep()).')
flags.DEFINE_string('workdir', None, 'Sweep directory: one workdir per run, the summary.')
flags.DEFINE_bool('dry_run', False, 'List the runs; run nothing.')
flags.DEFINE_bool('print_only', False, 'Print one train command per run; run nothing.')
flags.DEFINE_integer('parallel', 1, 'Runs at a time.')
flags.DEFINE_integer('devices_per_run', 0, 'Devices each parallel run sees (0: all of them).')
flags.DEFINE_string(
    'visible_devices_env',
    'CUDA_VISIBLE_DEVICES',
    "Environment variable selecting a run's devices (with --devices_per_run).",
)
flags.DEFINE_multi_string(
    'set',
    [],
    "KEY=VALUE applied to every run, after the sweep's own "
    'overrides (e.g. --set=train.num_steps=8); not part of run names.',
)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
    del argv
    from sora_jax.sweep import runner, spec, summary

    f = flags.FLAGS
    _, overrides = spec.expand(f.config, f.sweep, spec.parse_sets(f.set))
    runs = runner.plan(f.workdir, overrides)
    if f.dry_run or f.print_only:
        for r in runs:
            if f.print_only:
                print(shlex.join(runner.command(f.config, r)))
            else:
                print(f'{r.name}  [{runner.read_status(r.workdir)["status"]}]  {r.overrides}')
        return 0
    os.makedirs(f.workdir, exist_ok=True)
    statuses = runner.Runner(
        f.config,
        runs,
        parallel=f.parallel,
        devices_per_run=f.devices_per_run,
        visible_devices_env=f.visible_devices_env,
    ).run()
    table = summary.write(f.workdir, runs)
    counts = {s: sum(r['status'] == s for r in table) for s in runner.STATUSES}
    logging.info('sweep: %s', counts)
    with open(os.path.join(f.workdir, 'summary.md')) as md:
        print(md.read(), flush=True)
    print(
        f'summary: {os.path.join(f.workdir, "summary.csv")} '
        + ' '.join(f'{k}={v}' for k, v in counts.items() if v),
        flush=True,
    )
    return 1 if any(s['status'] == 'failed' for s in statuses.values()) else 0


if __name__ == '__main__':
    app.run(main)
