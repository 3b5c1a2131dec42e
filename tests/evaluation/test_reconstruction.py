"""VAE reconstruction: fitting clips, the CLI on a real (tiny, GAN) training workdir, batching."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from sora_jax.data import shapes
from sora_jax.evaluation import reconstruction as rec
from sora_jax.io.video import read_video, write_video
from sora_jax.models.vae import VAEConfig, WanVAE
from tests.xla import xla_flags

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _env():
    return dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=xla_flags(), PYTHONPATH=ROOT)


@pytest.fixture(scope='session')
def workdir(tmp_path_factory):
    """A tiny VAE trained 2 steps with the in-model discriminator (vae.use_gan) by train.py."""
    tmp = tmp_path_factory.mktemp('recon')
    wd = tmp / 'vae'
    cmd = [
        sys.executable,
        os.path.join(ROOT, 'experiments/train.py'),
        '--config=' + os.path.join(ROOT, 'configs/shapes.py:tiny_vae'),
        f'--workdir={wd}',
        '--config.train.num_steps=2',
        f'--config.data.data_dir={tmp / "data"}',
        '--config.vae.use_gan=True',
        '--config.data.num_train=4',
        '--config.data.num_validation=1',
    ]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return wd


@pytest.fixture(scope='session')
def input_video(tmp_path_factory):
    """11 frames of 18x22 shapes: trimmed to 9 and cropped to 16x20 by the CLI."""
    frames = shapes.generate(3, 0, num_frames=11, height=18, width=22)['video']
    path = tmp_path_factory.mktemp('video') / 'in.mp4'
    write_video(path, frames)
    return path


def test_fit_video_trims_and_centre_crops():
    frames = np.arange(11 * 18 * 23 * 3, dtype=np.int64).reshape(11, 18, 23, 3).astype(np.uint8)
    out, notes = rec.fit_video(frames, 4, 4)
    assert out.shape == (9, 16, 20, 3) and len(notes) == 2
    np.testing.assert_array_equal(out, frames[:9, 1:17, 1:21])
    same, notes = rec.fit_video(frames[:5, :16, :20], 4, 4)
    assert same.shape == (5, 16, 20, 3) and notes == []
    with pytest.raises(ValueError, match='smaller than the spatial factor'):
        rec.fit_video(frames[:, :3], 4, 4)


def test_tile_plan():
    cfg = VAEConfig(tile_sample_min_size=64, tile_sample_stride=48)
    assert rec.tile_plan(cfg, 32, 64, None, 4) is None  # fits in one tile
    assert rec.tile_plan(cfg, 32, 72, None, 4) == (64, 48)  # larger than the tile
    assert rec.tile_plan(cfg, 32, 32, True, 4) == (64, 48)
    assert rec.tile_plan(cfg, 32, 32, 16, 4) == (16, 12)
    assert rec.tile_plan(cfg, 512, 512, False, 4) is None
    with pytest.raises(ValueError, match='multiple of the spatial factor'):
        rec.tile_plan(cfg, 32, 32, 10, 4)


def test_cli_round_trip_matches_library(workdir, input_video, tmp_path):
    out = tmp_path / 'out.mp4'
    cmd = [
        sys.executable,
        os.path.join(ROOT, 'experiments/reconstruct.py'),
        f'--checkpoint={workdir}',
        f'--input={input_video}',
        f'--out={out}',
    ]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'trimmed 11 -> 9 frames' in r.stdout and 'centre-cropped 18x22 -> 16x20' in r.stdout
    printed = float(re.search(r'PSNR (\S+) dB', r.stdout).group(1))
    printed_ssim = float(re.search(r'SSIM (\S+)', r.stdout).group(1))
    side = read_video(out)
    assert side.shape == (9, 16, 2 * 20 + 2, 3)
    assert not out.with_suffix('.gif').exists()  # no file that no flag names

    # The same round trip here: a GAN workdir loads as its plain WanVAE part.
    from sora_jax.models import frozen_vae

    vae = frozen_vae.load(workdir)
    assert isinstance(vae.module, WanVAE) and vae.step == 2
    frames, _ = rec.fit_video(read_video(input_video), 4, 4)
    recon, m = rec.reconstruct_video(vae, frames)
    assert recon.shape == frames.shape and recon.dtype == np.uint8
    mse = np.mean(
        (recon.astype(np.float64) / 255 - frames.astype(np.float64) / 255) ** 2, axis=(1, 2, 3)
    )
    recomputed = float(np.mean(-10 * np.log10(mse)))
    assert m['psnr'] == pytest.approx(recomputed, abs=1e-3)
    assert printed == pytest.approx(recomputed, abs=1e-3)
    assert printed_ssim == pytest.approx(m['ssim'], abs=1e-4)
    # Side by side: input | 2 px gap | reconstruction (up to h264 at crf 18).
    left, right = side[:, :, :20].astype(float), side[:, :, 22:].astype(float)
    assert np.mean(np.abs(left - frames)) < 0.5 * np.mean(np.abs(left - recon))
    assert np.mean(np.abs(right - recon)) < 0.5 * np.mean(np.abs(right - frames))

    # Tiled (8-px tiles, stride 4 on a 16x20 frame) gives a same-shape, close reconstruction.
    tiled, mt = rec.reconstruct_video(vae, frames, tile=8)
    assert tiled.shape == frames.shape and mt['tile'] == [8, 4]
    assert np.isfinite(mt['psnr']) and abs(mt['psnr'] - m['psnr']) < 3.0


def test_batched_clips_equal_one_by_one(workdir):
    from sora_jax.models import frozen_vae

    vae = frozen_vae.load(workdir)
    clips = rec.heldout_shapes(3, 9, 16, 20)  # the CLI test's shape: one compile reused
    assert clips.shape == (3, 9, 16, 20, 3)
    # The held-out stream is not a training stream (seed 0 -> streams 0 and 1).
    train0 = shapes.sample_scene(0, 0, num_frames=9, height=16, width=20, max_objects=2)
    assert not np.array_equal(clips[0], shapes.render(train0))
    recon, m = rec.reconstruct_video(vae, clips, batch_size=2)
    assert recon.shape == clips.shape and len(m['psnr_per_clip']) == 3
    one, m1 = rec.reconstruct_video(vae, clips[2])
    np.testing.assert_array_equal(recon[2], one)
    assert m['psnr_per_clip'][2] == pytest.approx(m1['psnr'], abs=1e-4)
    assert m['psnr'] == pytest.approx(np.mean(m['psnr_per_clip']), abs=1e-4)
    with pytest.raises(ValueError, match='not a valid video length'):
        rec.reconstruct_video(vae, clips[:, :4])


def test_heldout_world_clips_are_new_scenes():
    """--suite=world draws the training distribution from a stream no builder split uses."""
    from sora_jax.data import world
    from sora_jax.data.builders import world as world_builder

    clips = rec.heldout_world(2, 9, 48, 48)
    assert clips.shape == (2, 9, 48, 48, 3) and clips.dtype == np.uint8
    np.testing.assert_array_equal(clips, rec.heldout_world(2, 9, 48, 48))
    first = rec.heldout_world(1)[0]  # [33, 64, 64, 3], as the builder's defaults
    cfg = world_builder.WorldConfig(name='t')
    for split in ('train', 'validation'):
        assert not np.array_equal(world_builder.make_example(cfg, split, 0)['video'], first)
    assert world.render(world.sample_scene(rec.HELDOUT_SEED, 0)).shape == first.shape
