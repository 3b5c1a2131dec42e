"""experiments/sample.py as a user runs it (subprocesses on the shipped model): --mode=t2i writes
a signed PNG of the right size, the output is quiet (no Orbax / absl INFO lines) unless
--verbosity asks, the persistent compilation cache gets the compiled programs on the first run
and a second process loads every one of them, and a bad --out extension is a clear error.
Two sampling processes of a 2-step t2i image."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLE = os.path.join(ROOT, 'experiments', 'sample.py')
ARGS = [
    '--checkpoint=' + os.path.join(ROOT, 'checkpoints', 'shapes'),
    '--prompt=a red circle',
    '--mode=t2i',
    '--steps=2',
]
INFO = re.compile(r'^I\d{4} ', re.M)  # absl's INFO prefix (Orbax logs through absl)
HIT = re.compile(r"Persistent compilation cache hit for '([^']+)'")


def _run(args, cache, **env):
    # XLA's default (optimised) build, not tests/xla.py's: which programs take longer than the
    # cache's minimum compile time is what these tests count.
    env = dict(
        os.environ,
        JAX_PLATFORMS='cpu',
        XLA_FLAGS='',
        PYTHONPATH=ROOT,
        SORA_JAX_COMPILATION_CACHE=str(cache),
        **env,
    )
    return subprocess.run(
        [sys.executable, SAMPLE, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )


def _entries(cache):
    return sorted(p for p in os.listdir(cache) if p.endswith('-cache'))


@pytest.fixture(scope='module')
def first(tmp_path_factory):
    """One t2i sample into a fresh cache directory: (process, png path, cache dir, entries)."""
    tmp = tmp_path_factory.mktemp('sample_cli')
    cache, png = tmp / 'cache', tmp / 'cat.png'
    r = _run(ARGS + [f'--out={png}'], cache)
    assert r.returncode == 0, r.stderr[-3000:]
    return r, png, cache, _entries(cache)


def test_t2i_writes_a_signed_png(first):
    r, png, _, _ = first
    from PIL import Image

    from sora_jax.safety import provenance

    with Image.open(png) as im:
        assert im.format == 'PNG' and im.size == (128, 128)  # 32x32, display_scale 4
        pixels = np.asarray(im.convert('RGB'))
    assert pixels.std() > 5.0  # an image, not a blank frame
    assert f'wrote {png} (128x128 image)' in r.stdout
    assert not png.with_suffix('.gif').exists() and not png.with_suffix('.mp4').exists()
    c2pa = provenance.read(str(png))
    assert c2pa['valid'] and c2pa['generation']['config'] == 'shapes', c2pa


def test_quiet_by_default(first):
    r, _, _, _ = first
    out = r.stdout + r.stderr
    assert len(INFO.findall(out)) == 0 and 'orbax' not in out.lower(), out[-3000:]
    assert 'sampling: 100%' in r.stderr  # the progress bar stays


def test_second_process_loads_from_the_cache_and_verbosity_brings_info_back(first, tmp_path):
    _, _, cache, entries = first
    names = {e.rsplit('-', 2)[0] for e in entries}
    assert len(entries) >= 3 and 'jit__decode' in names, entries
    r = _run(
        ARGS + [f'--out={tmp_path / "again.png"}', '--verbosity=0'],
        cache,
        JAX_DEBUG_LOG_MODULES='jax._src.compiler',
    )
    assert r.returncode == 0, r.stderr[-3000:]
    hits = set(HIT.findall(r.stderr))
    assert names <= hits, f'not loaded from the cache: {sorted(names - hits)}'
    assert len(_entries(cache)) <= len(entries) + 2  # at most borderline programs added
    assert len(INFO.findall(r.stderr)) >= 10  # Orbax's restore chatter is back with --verbosity
    assert 'JAX persistent compilation cache: ' + str(cache) in r.stderr
    # The progress bar's host callback keeps the sampler itself out of the cache (--noprogress).
    assert "Not writing persistent cache entry for 'jit_denoise' because it uses host" in r.stderr


def test_off_switches(tmp_path):
    from sora_jax.io import compile_cache

    assert compile_cache.enable(on=False) is None
    env = dict(os.environ)
    try:
        os.environ[compile_cache.ENV] = 'off'
        assert compile_cache.cache_dir() is None
        os.environ[compile_cache.ENV] = str(tmp_path / 'c')
        assert compile_cache.cache_dir() == str(tmp_path / 'c')
        del os.environ[compile_cache.ENV]
        import jax

        assert compile_cache.cache_dir().endswith(
            os.path.join('sora_jax', f'jax-{jax.__version__}')
        )
    finally:
        os.environ.clear()
        os.environ.update(env)


@pytest.mark.parametrize(
    'out,mode,message',
    [
        (
            'x.txt',
            't2i',
            "'.txt' is neither a video ['.mp4', '.gif', '.webm'] nor an image "
            "['.png', '.jpg', '.jpeg']",
        ),
        ('x.png', 't2v', 'is an image but --mode=t2v makes a video; pass --mode=t2i'),
    ],
)
def test_bad_out_extension_is_a_clear_error(tmp_path, out, mode, message):
    r = _run(
        [
            '--checkpoint=' + os.path.join(ROOT, 'checkpoints', 'shapes'),
            '--prompt=x',
            f'--mode={mode}',
            f'--out={tmp_path / out}',
        ],
        tmp_path / 'cache',
    )
    assert r.returncode == 2 and message in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / out).exists() and not (tmp_path / 'cache').exists()


def test_profile_dir_writes_a_trace(first, tmp_path):
    _, _, cache, _ = first
    prof = tmp_path / 'prof'
    r = _run(
        ARGS + [f'--out={tmp_path / "p.png"}', f'--profile_dir={prof}', '--noprofile_warmup'], cache
    )
    assert r.returncode == 0, r.stderr[-3000:]
    traces = list(prof.glob('plugins/profile/*/*.xplane.pb'))
    assert len(traces) == 1 and traces[0].stat().st_size > 1000
    assert f'profile written to {prof}' in r.stdout


def test_lora_flag(first, tmp_path):
    """--lora=FILE:0 gives the base model's image exactly; --lora=FILE (scale 1) changes it."""
    from PIL import Image
    from safetensors.numpy import save_file

    _, png, cache, _ = first
    rng = np.random.default_rng(0)
    sd = {}
    for i in range(6):  # the shipped DiT: 6 blocks of width 256
        sd[f'transformer.blocks.{i}.attn2.to_v.lora_A.weight'] = rng.standard_normal(
            (4, 256)
        ).astype(np.float32)
        sd[f'transformer.blocks.{i}.attn2.to_v.lora_B.weight'] = rng.standard_normal(
            (256, 4)
        ).astype(np.float32)
    lora = str(tmp_path / 'lora.safetensors')
    save_file(sd, lora)
    pixels = {}
    for name, spec in (('off', f'{lora}:0'), ('on', lora)):
        out = tmp_path / f'{name}.png'
        r = _run(ARGS + [f'--out={out}', f'--lora={spec}'], cache)
        assert r.returncode == 0, r.stderr[-3000:]
        with Image.open(out) as im:
            pixels[name] = np.asarray(im.convert('RGB')).astype(int)
    with Image.open(png) as im:
        base = np.asarray(im.convert('RGB')).astype(int)
    np.testing.assert_array_equal(pixels['off'], base)
    assert np.abs(pixels['on'] - base).mean() > 1.0
    # the manifest names the LoRA file and scale, and its cited hash covers them
    from sora_jax.safety import provenance

    g = provenance.read(str(tmp_path / 'on.png'))['generation']
    assert g['loras'] == [
        {'file': 'lora.safetensors', 'sha256': provenance.file_hash(lora), 'scale': 1.0}
    ]
    base_g = provenance.read(str(png))['generation']
    assert g['base_checkpoint_sha256'] == base_g['checkpoint_sha256'] != g['checkpoint_sha256']
