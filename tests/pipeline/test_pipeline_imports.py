"""Inference needs nothing from the training package (DESIGN.md: `pipeline` imports nothing from
`train/`): importing `sora_jax.pipeline`, then loading the shipped bundle (DiT checkpoint + its
frozen VAE), in one fresh process leave no `sora_jax.train` module in sys.modules (checked after
each). LoRA runs are
checked the same way where their fixtures live (tests/train/test_lora_train.py,
tests/train/test_wan_lora.py), with `fresh_to_q_kernel`."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np

from tests.xla import xla_flags

ROOT = pathlib.Path(__file__).resolve().parents[2]
CKPT = ROOT / 'checkpoints' / 'shapes'


# Prints the `sora_jax.train*` modules imported so far, on one line of a fresh process's stdout.
SHOW_TRAIN_MODULES = (
    "print('train modules:', json.dumps(sorted(m for m in sys.modules if m == 'sora_jax.train' "
    "or m.startswith('sora_jax.train.'))))"
)


def train_modules_printed(code: str) -> list[list[str]]:
    """Runs `code` in a fresh Python process (json and sys imported) with SHOW_TRAIN_MODULES
    appended; one list of `sora_jax.train*` module names per SHOW_TRAIN_MODULES line it ran."""
    script = f'import json, sys\n{code}\n{SHOW_TRAIN_MODULES}'
    env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=xla_flags(), PYTHONPATH=str(ROOT))
    r = subprocess.run(
        [sys.executable, '-c', script],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    prefix = 'train modules: '
    return [
        json.loads(line[len(prefix) :]) for line in r.stdout.splitlines() if line.startswith(prefix)
    ]


def train_modules_after(code: str) -> list[str]:
    """The `sora_jax.train*` modules a fresh Python process has imported after running `code`."""
    return train_modules_printed(code)[-1]


def fresh_to_q_kernel(checkpoint: str, out) -> tuple[list[str], np.ndarray]:
    """(`sora_jax.train*` modules imported, first block's attn1 to_q kernel) of a fresh process
    that loads `checkpoint` for sampling with `TextToVideo.from_checkpoint`; the kernel goes
    through the file `out` (.npy)."""
    code = (
        'import numpy as np\nfrom sora_jax.pipeline import TextToVideo\n'
        f'pipe = TextToVideo.from_checkpoint({str(checkpoint)!r})\n'
        "q = pipe.params['blocks']['attn1']['to_q']['kernel'][...]\n"
        f'np.save({str(out)!r}, np.asarray(q))'
    )
    return train_modules_after(code), np.load(out)


def test_pipeline_and_the_shipped_bundle_import_no_train_module():
    """One fresh process: after `import sora_jax.pipeline`, then after loading the bundle (its own
    VAE included)."""
    code = (
        f'import sora_jax.pipeline\n{SHOW_TRAIN_MODULES}\n'
        'from sora_jax.pipeline import TextToVideo\n'
        f'pipe = TextToVideo.from_checkpoint({str(CKPT)!r})\n'
        'assert pipe.vae is not None and pipe.vae.step >= 0'
    )
    after_import, after_load = train_modules_printed(code)
    assert after_import == []
    assert after_load == []
