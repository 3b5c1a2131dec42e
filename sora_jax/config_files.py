"""Config files (`configs/FILE.py`, each with `get_config(arg)`) loaded by path from anywhere.

  config = config_files.load('configs/wan21.py:tiny')    # get_config('tiny')
  wan21 = config_files.load_module('configs/wan21.py')   # the module (HOLDOUT, get_sweep, ...)

A relative path is looked up in the working directory first, then in the checkout this package
is installed from (`pip install -e .` of a clone: the directory above `sora_jax/`), so
`configs/shapes.py` resolves the same from the CLIs, notebooks, tests and library code. A file of
a package directory (`configs/` has an `__init__.py`) is imported as a module of that package
(`configs.wan21`): the module that `from configs import wan21` gives where the repository root
is on sys.path (pytest), so both ways share one module object. Other files are executed afresh
on every call, with this checkout's `configs` package importable (`from configs import shapes`
in a config file of one's own).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import ml_collections

# The checkout above the package: where `configs/` lives in a clone or an editable install.
REPO_ROOT = Path(__file__).resolve().parents[1]


def resolve(path: str | os.PathLike) -> Path:
    """The config file `path` names: as given (absolute or from the working directory), else
    relative to REPO_ROOT."""
    p = Path(path)
    candidates = [p] if p.is_absolute() else [p, REPO_ROOT / p]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    raise ValueError(
        f'config file {os.fspath(path)!r} is neither in {os.getcwd()} nor in {REPO_ROOT}; give '
        'FILE.py relative to the repository root (e.g. configs/shapes.py) or an absolute path.'
    )


def _package(directory: Path) -> ModuleType | None:
    """The package `directory` is (registered under its name when first asked), or None when it
    is not a package or another module already holds that name."""
    name = directory.name
    if not (directory / '__init__.py').is_file() or not name.isidentifier():
        return None
    pkg = sys.modules.get(name)
    if pkg is None:
        spec = importlib.util.spec_from_file_location(
            name, directory / '__init__.py', submodule_search_locations=[str(directory)]
        )
        pkg = importlib.util.module_from_spec(spec)
        sys.modules[name] = pkg
        spec.loader.exec_module(pkg)
    paths = [Path(d).resolve() for d in getattr(pkg, '__path__', ())]
    return pkg if directory in paths else None


def register_configs() -> None:
    """Makes this checkout's `configs` package importable (`from configs import shapes`) for
    config files that absl's --config flag loads by path from anywhere (the CLIs call it)."""
    if (REPO_ROOT / 'configs').is_dir():
        _package(REPO_ROOT / 'configs')


def load_module(path: str | os.PathLike) -> ModuleType:
    """The module of config file `path` (see the module docstring for how it is found)."""
    p = resolve(path)
    pkg = _package(p.parent)
    if pkg is not None:
        return importlib.import_module(f'{pkg.__name__}.{p.stem}')
    register_configs()  # a config file elsewhere may build on `configs.*`
    spec = importlib.util.spec_from_file_location(f'_config_file_{p.stem}', p)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def split(spec: str) -> tuple[str, str | None]:
    """'FILE.py:ARG' -> ('FILE.py', 'ARG'); 'FILE.py' -> ('FILE.py', None)."""
    path, _, arg = spec.partition(':')
    if not path.endswith('.py'):
        raise ValueError(f'config {spec!r}: give FILE.py[:ARG], e.g. configs/shapes.py:tiny.')
    return path, (arg or None)


def load(spec: str) -> ml_collections.ConfigDict:
    """`get_config(ARG)` of 'FILE.py:ARG' (`get_config()` without ':ARG'), as --config= gives."""
    path, arg = split(spec)
    module = load_module(path)
    return module.get_config(arg) if arg is not None else module.get_config()
