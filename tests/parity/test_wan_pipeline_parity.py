"""End to end: `TextToVideo.from_wan` samples a converted Wan 2.1 folder like diffusers' `WanPipeline`.

A tiny random Wan folder (tests/parity/wan_fixture.py) is converted by the real CLI; the diffusers
reference and sora_jax then sample it with the same prompt, negative prompt, guidance, steps,
flow shift and initial noise. The comparison covers the whole chain: prompt cleaning, UMT5
tokenization and encoding with Wan's rule (pad to max length, zero past the end), CFG, UniPC
with Wan's integer timesteps, the DiT and the VAE decode.
"""

import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests.parity.wan_fixture import load_reference_pipeline, make_tiny_wan_folder, tiny_config

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
LATENT_ATOL = 1e-3  # max |ours - diffusers| over the sampled latents (measured ~1e-6)
FRAME_ATOL = (
    1.5 / 255
)  # decoded frames in [0, 1]: ours is uint8 (rounding <= 0.5/255) + float error
FLOAT_FRAME_ATOL = 1e-4  # the same frames before rounding (measured ~1e-6)

CASES = {  # name -> (prompts, negative prompts, num_frames, height, width, steps, guidance, shift)
    'one_5x32x32': (
        ['A red circle moves to the left across a blue background.'],
        ['static, blurred details'],
        5,
        32,
        32,
        4,
        5.0,
        3.0,
    ),
    'two_9x48x32': (
        [
            'Un cuadrado verde gira  lentamente &amp; para.',
            'Two yellow triangles bounce up and down, then stop.',
        ],
        ['', 'ugly, worst quality'],
        9,
        48,
        32,
        3,
        4.0,
        5.0,
    ),
}


@pytest.fixture(scope='module')
def wan(tmp_path_factory):
    """(diffusers folder, converted folder, reference WanPipeline, our TextToVideo)."""
    torch.set_num_threads(1)
    from sora_jax.pipeline import TextToVideo

    src = make_tiny_wan_folder(str(tmp_path_factory.mktemp('wan_src')))
    dst = str(tmp_path_factory.mktemp('wan_dst'))
    proc = subprocess.run(
        [sys.executable, 'experiments/convert_wan.py', f'--src={src}', f'--dst={dst}'],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return src, dst, load_reference_pipeline(src), TextToVideo.from_wan(dst, tiny_config())


def test_config_feeds_wan_integer_timesteps(load_config):
    """diffusers' UniPC (and Wan's own solver) hand the DiT int64(1000 sigma)."""
    for arg in ('t2v_1.3b', 't2v_14b', 't2v_14b,480p', 'tiny'):
        assert load_config(f'configs/wan21.py:{arg}').sample.timestep_quantization == 1000


@pytest.mark.parametrize('case', sorted(CASES))
def test_sample_matches_diffusers_wan_pipeline(wan, case):
    _, _, ref_pipe, pipe = wan
    prompts, negs, frames, height, width, steps, guidance, shift = CASES[case]
    c = tiny_config()
    # The fixture's scheduler carries c.sample.shift; other shifts need a scheduler with that shift.
    ref_pipe.scheduler = ref_pipe.scheduler.from_config(ref_pipe.scheduler.config, flow_shift=shift)
    b, ch = len(prompts), c.model.in_channels
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(b, ch, 1 + (frames - 1) // 4, height // 8, width // 8, generator=gen)
    kw = dict(
        prompt=prompts,
        negative_prompt=negs,
        num_frames=frames,
        height=height,
        width=width,
        num_inference_steps=steps,
        guidance_scale=guidance,
    )
    with torch.no_grad():
        ref_lat = ref_pipe(
            **kw, latents=noise, output_type='latent', max_sequence_length=c.text.max_length
        ).frames.numpy()
        ref_np = ref_pipe(
            **kw, latents=noise, output_type='np', max_sequence_length=c.text.max_length
        ).frames
    ours_kw = dict(
        prompt=prompts,
        negative_prompt=negs,
        num_frames=frames,
        height=height,
        width=width,
        num_inference_steps=steps,
        guidance_scale=guidance,
        shift=shift,
        sampler='unipc',
        latents=noise.permute(0, 2, 3, 4, 1).numpy(),
        progress=False,
        watermark=False,
    )  # the mark changes pixels on purpose (tests/safety check it)
    lat = pipe(**ours_kw, output_type='latent')
    vid = pipe(**ours_kw, output_type='np')

    ref_lat = ref_lat.transpose(0, 2, 3, 4, 1)  # [B, T', h, w, C] like ours
    assert lat.shape == ref_lat.shape == (b, 1 + (frames - 1) // 4, height // 8, width // 8, ch)
    lat_err = np.abs(lat - ref_lat).max()
    moved = np.abs(ref_lat - noise.permute(0, 2, 3, 4, 1).numpy()).max()
    print(
        f'{case}: latents max|err| {lat_err:.2e} (|latents| max {np.abs(ref_lat).max():.2f}, '
        f'moved {moved:.2f} from the noise)'
    )
    assert moved > 0.1  # the sampler did change the noise (the comparison is not vacuous)
    assert lat_err < LATENT_ATOL

    assert vid.dtype == np.uint8 and vid.shape == (b, frames, height, width, 3)
    assert ref_np.shape == vid.shape and ref_np.dtype == np.float32
    frame_err = np.abs(vid.astype(np.float32) / 255.0 - ref_np).max()
    # before the uint8 rounding: our decode of our latents, mapped to [0, 1] as diffusers does
    ours_f = np.clip(np.asarray(pipe.vae.decode(jnp.asarray(lat))) / 2 + 0.5, 0.0, 1.0)
    float_err = np.abs(ours_f - ref_np).max()
    print(
        f'{case}: frames max|err| uint8 {frame_err * 255:.3f}/255, float {float_err:.2e} '
        f'(std {ref_np.std():.3f})'
    )
    assert ref_np.std() > 0.01  # not a constant frame
    assert frame_err < FRAME_ATOL
    assert float_err < FLOAT_FRAME_ATOL

    # The comparison is sharp enough to see Wan's text rule: another padded length moves the result.
    with torch.no_grad():
        other = ref_pipe(
            **kw, latents=noise, output_type='latent', max_sequence_length=c.text.max_length // 2
        ).frames.numpy()
    other_err = np.abs(lat - other.transpose(0, 2, 3, 4, 1)).max()
    print(f'{case}: vs diffusers at max_sequence_length={c.text.max_length // 2}: {other_err:.2e}')
    assert other_err > 100 * LATENT_ATOL


@pytest.fixture(scope='module')
def cli_run(wan, tmp_path_factory):
    """experiments/sample.py on the converted folder: (CompletedProcess, mp4 path)."""
    _, dst, _, _ = wan
    out = tmp_path_factory.mktemp('cli') / 'wan.mp4'
    proc = subprocess.run(
        [
            sys.executable,
            'experiments/sample.py',
            f'--checkpoint={dst}',
            '--config=configs/wan21.py:tiny',
            '--prompt=A red circle moves to the left.',
            '--num_frames=9',
            '--height=32',
            '--width=48',
            '--steps=2',
            f'--out={out}',
            '--gif',
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    return proc, out


def test_sample_cli_writes_the_mp4(cli_run):
    from sora_jax.io.video import read_video

    proc, out = cli_run
    assert os.path.isfile(out), proc.stderr[-3000:]
    frames = read_video(out)
    assert frames.shape == (9, 32, 48, 3) and frames.dtype == np.uint8
    assert frames.std() > 1.0  # a random tiny model still gives non-constant frames
    assert os.path.isfile(out.with_suffix('.gif'))
    assert f'wrote {out} (9 frames, 32x48)' in proc.stdout


def test_sample_cli_exits_zero(cli_run):
    proc, _ = cli_run
    assert proc.returncode == 0, proc.stderr[-300:]
