"""The tree keeps one style: `ruff check` and `ruff format --check` pass (settings in pyproject.toml)."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUFF = shutil.which('ruff', path=os.path.dirname(sys.executable)) or 'ruff'


@pytest.mark.parametrize('args', [['check', '.'], ['format', '--check', '.']])
def test_ruff(args):
    r = subprocess.run([RUFF, *args], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, f'ruff {" ".join(args)} (run `make lint`):\n{r.stdout}{r.stderr}'
