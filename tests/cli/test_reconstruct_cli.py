"""experiments/reconstruct.py writes the reconstruction alone (--noside_by_side, or
--out_reconstruction next to the side-by-side comparison): the fitted input's frame count and
size, and the PSNR it prints matches the written file (up to h264 at crf 18); a .gif only with
--gif; an existing output is refused (exit 4) before the VAE loads, untouched, unless
--overwrite. Shipped VAE."""

import os
import re
import subprocess
import sys

import numpy as np

from sora_jax.data import shapes
from sora_jax.evaluation import reconstruction as rec
from sora_jax.io.video import read_video, write_video
from tests.xla import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _psnr(a, b):
    """Mean over frames of the per-frame PSNR (as the CLI reports it)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2, axis=(1, 2, 3))
    return float(np.mean(10 * np.log10(255.0**2 / mse)))


def test_reconstruction_alone(tmp_path):
    frames = shapes.generate(3, 0, num_frames=9, height=34, width=42)['video']  # crop: 32x40
    src = tmp_path / 'in.mp4'
    write_video(src, frames)
    alone, also = tmp_path / 'recon.mp4', tmp_path / 'recon2.mp4'
    cmd = [
        sys.executable,
        os.path.join(ROOT, 'experiments/reconstruct.py'),
        '--checkpoint=' + os.path.join(ROOT, 'checkpoints/shapes/vae'),
        f'--input={src}',
        f'--out={alone}',
        '--noside_by_side',
        f'--out_reconstruction={also}',
        '--gif',
    ]
    env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=xla_flags(), PYTHONPATH=ROOT)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    fitted, _ = rec.fit_video(read_video(src), 1, 4)
    assert fitted.shape == (9, 32, 40, 3)
    printed = float(re.search(r'PSNR (\S+) dB', r.stdout).group(1))
    for path in (alone, also):
        out = read_video(path)
        assert out.shape == fitted.shape, (path, out.shape)
        assert read_video(path.with_suffix('.gif')).shape == fitted.shape
        assert abs(_psnr(out, fitted) - printed) < 2.0, (_psnr(out, fitted), printed)
    assert printed > 22.0  # shapes clips are what the shipped VAE was trained on

    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 4, (r.returncode, r.stderr[-2000:])
    assert 'exists; pass --overwrite' in r.stderr and 'PSNR' not in r.stdout
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing touched or added
