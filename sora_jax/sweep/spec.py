"""Sweep specs: lists of override dicts, built the way big_vision / `hyper` sweeps are.

  from sora_jax.sweep.spec import sweep, product, zipit
  def get_sweep(arg):          # beside get_config in a config file
      return product(sweep('train.learning_rate', [1e-3, 3e-4]),
                     zipit(sweep('model.dim', [32, 64]), sweep('model.ffn_dim', [64, 128])))
  # -> 4 dicts {'train.learning_rate': 0.001, 'model.dim': 32, 'model.ffn_dim': 64}, ...

`run_names(overrides)` gives each run a readable, filesystem-safe name from the overridden keys
that vary across the sweep (the last part of the key unless two keys share it), prefixed with
its index so the runs sort in sweep order: '00_learning_rate=0.001,dim=32,ffn_dim=64'.
"""

from __future__ import annotations

import itertools
import re
from typing import Any, Sequence

from sora_jax import config_files

Overrides = dict[str, Any]


def sweep(key: str, values: Sequence[Any]) -> list[Overrides]:
    """One key over values: [{key: v} for v in values]."""
    if not isinstance(key, str) or not key:
        raise ValueError(
            f'sweep key {key!r} must be a dotted config key, e.g. train.learning_rate.'
        )
    return [{key: v} for v in values]


def product(*sweeps: list[Overrides]) -> list[Overrides]:
    """Every combination (the first sweep varies slowest)."""
    return [_merge(combo) for combo in itertools.product(*sweeps)]


def zipit(*sweeps: list[Overrides]) -> list[Overrides]:
    """Element-wise: the i-th run takes the i-th entry of each sweep (equal lengths)."""
    lengths = {len(s) for s in sweeps}
    if len(lengths) > 1:
        raise ValueError(f'zipit needs sweeps of one length, got lengths {sorted(lengths)}.')
    return [_merge(combo) for combo in zip(*sweeps)]


def _merge(dicts) -> Overrides:
    out: Overrides = {}
    for d in dicts:
        clash = set(out) & set(d)
        if clash:
            raise ValueError(f'keys {sorted(clash)} are swept twice in one combination.')
        out.update(d)
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f'{v:g}'
    if isinstance(v, (tuple, list)):
        return 'x'.join(_fmt(x) for x in v)
    return str(v)


def run_names(overrides: list[Overrides]) -> list[str]:
    """'<index>_<key>=<value>,...' per run, unique and safe as a directory name."""
    keys = [
        k for o in overrides for k in o if len({repr(p.get(k, '<unset>')) for p in overrides}) > 1
    ]  # keys that vary
    leaves = [k.split('.')[-1] for k in dict.fromkeys(keys)]
    short = {
        k: (k.split('.')[-1] if leaves.count(k.split('.')[-1]) == 1 else k)
        for k in dict.fromkeys(keys)
    }
    width = max(2, len(str(len(overrides) - 1)))
    names = []
    for i, o in enumerate(overrides):
        body = ','.join(f'{short[k]}={_fmt(v)}' for k, v in o.items() if k in short) or 'base'
        names.append(f'{i:0{width}d}_' + re.sub(r'[^A-Za-z0-9_.,=+-]+', '-', body)[:120])
    return names


def flag_value(v: Any) -> str:
    """A value as `--config.KEY=` takes it (ml_collections parses tuples and numbers)."""
    if isinstance(v, (tuple, list)):
        return repr(tuple(v))
    return str(v)


def load_config_module(config_arg: str):
    """(module, arg) of '--config=FILE.py[:ARG]' (`sora_jax.config_files` finds and imports it)."""
    path, arg = config_files.split(config_arg)
    return config_files.load_module(path), arg


def parse_sets(sets: Sequence[str]) -> Overrides:
    """['train.num_steps=8', ...] -> {'train.num_steps': 8} (values as Python literals when
    they parse as one, else strings)."""
    import ast

    out: Overrides = {}
    for s in sets:
        key, eq, value = s.partition('=')
        if not eq or not key:
            raise ValueError(f'--set={s!r} must be KEY=VALUE, e.g. train.num_steps=8.')
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def expand(
    config_arg: str, sweep_arg: str | None, common: Overrides | None = None
) -> tuple[Any, list[Overrides]]:
    """(base config, overrides per run) of get_config(ARG) / get_sweep(sweep_arg) in the config
    file, each run's overrides followed by `common` (the same for every run, so not in the run
    names); every key must exist in the config (ValueError naming it)."""
    module, arg = load_config_module(config_arg)
    config = module.get_config(arg) if arg is not None else module.get_config()
    if not hasattr(module, 'get_sweep'):
        raise ValueError(
            f'{config_arg.partition(":")[0]} has no get_sweep(arg); define one beside '
            'get_config returning a list of override dicts.'
        )
    runs = module.get_sweep(sweep_arg) if sweep_arg is not None else module.get_sweep()
    if not runs:
        raise ValueError(f'get_sweep({sweep_arg!r}) returned no runs.')
    runs = [{**o, **(common or {})} for o in runs]
    for o in runs:
        for k in o:
            node = config
            for part in k.split('.'):
                if not hasattr(node, 'keys') or part not in node:
                    raise ValueError(
                        f'swept key {k!r} is not in the config {config_arg}; check '
                        'its spelling (e.g. train.learning_rate).'
                    )
                node = node[part]
    return config, runs
