"""The docs' TPU table: experiments/aot.py over Wan sizes x slices x tasks, one process per
compile, written as docs/aot/<row>.json plus docs/aot/table.md.

  python experiments/aot_table.py --out=docs/aot [--only=14b_720p_train] [--force]

Rows, layouts and how one is kept: `sora_jax.aot.table`. Takes hours on a 2-core machine (each
14B train compile 1-3 min); rows can be run one by one.
"""

import os

from absl import app, flags

from sora_jax.aot import table

flags.DEFINE_string('out', 'docs/aot', 'Folder for the JSON reports and table.md.')
flags.DEFINE_string('only', '', 'Comma-separated row names to run (default: all).')
flags.DEFINE_bool('force', False, 'Re-run rows whose JSON exists.')
flags.DEFINE_bool('table_only', False, 'Only rebuild table.md from the JSON files.')


def main(argv):
    del argv
    f = flags.FLAGS
    os.makedirs(f.out, exist_ok=True)
    if not f.table_only:
        names = [n for n in f.only.split(',') if n] or (
            table.PRIORITY + [n for n in table.ROWS if n not in table.PRIORITY]
        )
        for n in names:
            if n not in table.ROWS:
                raise ValueError(f'--only: unknown row {n!r}; rows: {sorted(table.ROWS)}')
            table.run_row(n, f.out, f.force)
    table.table(f.out)


if __name__ == '__main__':
    app.run(main)
