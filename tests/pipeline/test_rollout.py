"""Chunked rollout (pipeline/rollout.py) on a tiny random causal shapes model: chunks come out one
by one through one compiled program, and each equals sampling the same chunk with the DiT
recomputed over the whole clean prefix (no cache) within 1e-4."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import shapes as shapes_config
from sora_jax.diffusion import flow, samplers
from sora_jax.pipeline import TextToVideo
from sora_jax.pipeline import rollout as rollout_lib

pytestmark = pytest.mark.slow  # compiles and samples or trains for tens of seconds

CHUNK = 2
STEPS = 2
GUIDANCE = 3.0


_PIPES = {}


def _pipe(prediction: str) -> TextToVideo:
    if prediction not in _PIPES:
        c = shapes_config.get_config('tiny')
        c.model.causal_chunk = CHUNK
        c.flow.prediction = prediction
        _PIPES[prediction] = TextToVideo.from_config(c, seed=0)
    return _PIPES[prediction]


@pytest.fixture(scope='module')
def pipe():
    return _pipe('velocity')


@pytest.mark.parametrize('prediction', ['velocity', 'data'])
def test_rollout_streams_chunks_equal_to_uncached_recomputation(prediction):
    """Also with an x0-predicting DiT (flow.prediction='data'): the rollout converts its output
    to a velocity as the full-clip sampler does."""
    pipe = _pipe(prediction)
    assert pipe.prediction == prediction
    opts = rollout_lib.RolloutOptions(
        num_chunks=3,
        window=0,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        sampler='euler',
        shift=1.0,
        negative_prompt='',
        progress=False,
    )
    before = rollout_lib.chunk_step._cache_size()
    chunks = list(rollout_lib.rollout(pipe, 'a red circle', opts))
    assert rollout_lib.chunk_step._cache_size() - before == 1  # one program for every chunk
    assert [c.index for c in chunks] == [0, 1, 2]
    h, w = pipe.config.sample.height, pipe.config.sample.width
    for c in chunks:
        assert c.frames.shape == (1, CHUNK, h, w, 3) and c.frames.dtype == np.uint8
    # reference: the same noise, each chunk denoised by the DiT over [clean past, x] uncached
    dit = nnx.merge(pipe.graphdef, pipe.params)
    ctx, mask = pipe.text(['a red circle', ''])
    key = jax.random.key(opts.seed)
    past = []
    for i, c in enumerate(chunks):
        noise = jax.random.normal(jax.random.fold_in(key, i), c.latents.shape, jnp.float32)
        prev = jnp.concatenate(past, 1) if past else None

        def model_fn(x2, t2, prev=prev):
            return flow.to_velocity(dit_fn(x2, t2, prev), x2, t2, prediction)

        def dit_fn(x2, t2, prev):
            if prev is None:
                return dit(x2, t2, ctx, mask)
            full = jnp.concatenate([jnp.concatenate([prev, prev], 0), x2], 1)
            n_tok = dit.check_input(full.shape)
            per_frame = np.prod(n_tok[1:])
            n_past = (prev.shape[1] // dit.cfg.patch_size[0]) * per_frame
            t_tok = jnp.concatenate(
                [
                    jnp.zeros((2, n_past)),
                    jnp.repeat(t2[:, None], np.prod(n_tok) - n_past, 1),
                ],
                1,
            )
            return dit(full, t_tok, ctx, mask)[:, prev.shape[1] :]

        ref = samplers.sample(
            model_fn, noise, method='euler', num_steps=STEPS, shift=1.0, guidance=GUIDANCE
        )
        err = float(jnp.abs(ref - c.latents).max())
        assert err < 1e-4, (i, err)
        past.append(ref)
    # later chunks depend on the earlier ones (the cache is read)
    assert float(jnp.abs(chunks[1].latents - chunks[2].latents).max()) > 1e-3


def test_rollout_needs_a_causal_model():
    c = shapes_config.get_config('tiny')
    full = TextToVideo.from_config(c, seed=0)
    with pytest.raises(ValueError, match='full-attention DiT'):
        next(rollout_lib.rollout(full, 'x', rollout_lib.RolloutOptions(num_chunks=2)))


def test_frame_counts():
    assert rollout_lib.frames_of(15, 3, 4) == 1 + 44 * 4
    n = rollout_lib.chunks_for_frames(961, 3, 4)
    assert rollout_lib.frames_of(n, 3, 4) >= 961 > rollout_lib.frames_of(n - 1, 3, 4)


def test_long_video_bench_memory_is_flat():
    """bench/long_video.py on 4 s: the arrays the rollout holds after 4 s are no more than
    after 2 s (the cache is a fixed ring; frames are handed out, not kept)."""
    from sora_jax.bench import long_video

    first, last = long_video.measure(4.0, (2.0, 4.0), window=2, steps=1, size=8)
    assert last.seconds >= 4.0 > first.seconds >= 2.0
    assert last.peak_live_bytes == first.peak_live_bytes
    assert first.s_per_video_s > 0 and last.s_per_video_s > 0
    assert first.cpu_s_per_video_s > 0 and last.cpu_s_per_video_s > 0


def test_stream_decoder_equals_whole_decode():
    """Latent chunks fed one after another through the causal VAE's feature cache decode to the
    frames a decode of the whole latent video gives (with the DiT's extra latent statistics)."""
    from sora_jax.models import vae as vae_lib
    from sora_jax.models.frozen_vae import FrozenVAE

    vae = vae_lib.WanVAE(vae_lib.tiny_config(), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(vae)
    frozen = FrozenVAE(graphdef, state, None).with_stats([0.1, -0.2, 0.3, 0.0], [1.5, 0.5, 1, 2])
    z = jax.random.normal(jax.random.key(0), (1, 6, 4, 4, 4))
    whole = frozen.decode(z)
    decoder = rollout_lib.StreamDecoder(frozen)
    parts = [decoder(z[:, i : i + 2]) for i in range(0, 6, 2)]
    assert [p.shape[1] for p in parts] == [5, 8, 8]  # 1 + 4, then 4 per latent frame
    got = jnp.concatenate(parts, 1)
    assert got.shape == whole.shape
    np.testing.assert_allclose(np.asarray(got), np.asarray(whole), atol=1e-5)


def _files(d):
    return sorted(p.name for p in d.iterdir())


def test_frames_cut_to_num_frames(pipe):
    opts = rollout_lib.RolloutOptions(num_chunks=1, window=2, num_inference_steps=1, progress=False)
    pieces = list(rollout_lib.frames(pipe, 'a red circle', 7, opts))
    assert [p.shape[1] for p in pieces] == [CHUNK, CHUNK, CHUNK, 1]  # 4 chunks, the last cut
    whole = rollout_lib.sample_frames(pipe, ['a red circle'], 7, opts)
    np.testing.assert_array_equal(whole, np.concatenate(pieces, 1))


def test_stream_to_file_commits_signed_segments_as_they_complete(tmp_path):
    """Segments of 3 frames appear (each sealed on its temporary name, then committed) while the
    pieces still come; the whole file comes last; decoded, the segments concatenate to the whole
    file within h264's tolerance, and no temporary or lock file is left."""
    from sora_jax.io import outputs
    from sora_jax.io import video as video_io

    t = np.arange(10)[:, None, None]
    y, x = np.mgrid[:32, :48]
    ramp = x[None] * 2 + y[None] + t * 3  # smooth, moving, no edge: h264 keeps it closely
    video = np.stack([ramp, ramp + 20, ramp + 40], -1).astype(np.uint8)  # [10, 32, 48, 3]
    out = outputs.reserve(tmp_path / 'long.mp4')
    sealed, seen = [], []

    def seal(paths):
        for p in paths:
            assert os.path.basename(p).startswith('.') and os.path.getsize(p) > 0  # temp, whole
            sealed.append(p)

    def pieces():
        for a in range(0, 10, 4):  # pieces of 4 frames, cut across segment borders
            yield video[None, a : a + 4]
            seen.append(_files(tmp_path))

    names = rollout_lib.segment_paths(out.path, 4)
    written = rollout_lib.stream_to_file(
        pieces(),
        out,
        8.0,
        segment_frames=3,
        reserve_segment=lambda k: outputs.reserve(names[k]),
        seal=seal,
    )
    assert written == names + [out.path]
    assert len(sealed) == 5
    # after the first piece (4 frames) segment 0 is in place; after the second (8), segment 1
    assert 'long_000.mp4' in seen[0] and 'long_001.mp4' not in seen[0]
    assert 'long_001.mp4' in seen[1] and 'long.mp4' not in seen[1]
    assert _files(tmp_path) == ['long.mp4'] + [os.path.basename(n) for n in names]
    segs = [video_io.read_video(n) for n in names]
    assert [len(s) for s in segs] == [3, 3, 3, 1]
    whole = video_io.read_video(out.path)
    assert whole.shape == video.shape
    joined = np.concatenate(segs, 0).astype(np.float32)
    assert np.abs(joined - whole.astype(np.float32)).mean() < 3.0
    assert np.abs(whole.astype(np.float32) - video).mean() < 3.0
    assert np.abs(joined - video[::-1]).mean() > 10.0  # frame order matters: the test can fail


def test_stream_to_file_removes_everything_on_error(tmp_path):
    from sora_jax.io import outputs

    out = outputs.reserve(tmp_path / 'v.mp4')
    names = rollout_lib.segment_paths(out.path, 3)

    def pieces():
        yield np.zeros((1, 2, 32, 32, 3), np.uint8)
        raise RuntimeError('sampler failed')

    with pytest.raises(RuntimeError, match='sampler failed'):
        rollout_lib.stream_to_file(
            pieces(),
            out,
            8.0,
            segment_frames=5,
            reserve_segment=lambda k: outputs.reserve(names[k]),
        )
    assert _files(tmp_path) == []


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHIPPED = os.path.join(ROOT, 'checkpoints', 'shapes')


@pytest.fixture(scope='module')
def causal_bundle(tmp_path_factory):
    """The shipped shapes bundle with `model.causal_chunk = 2` in its saved config: the same
    weights sampled block-causally (not trained so: the CLI plumbing is what is tested)."""
    import glob
    import json
    import shutil

    dst = tmp_path_factory.mktemp('causal') / 'shapes_causal'
    shutil.copytree(SHIPPED, dst)
    (meta,) = glob.glob(str(dst / 'checkpoints' / '*' / 'config' / 'metadata'))
    with open(meta) as f:
        config = json.load(f)
    config['model']['causal_chunk'] = 2
    with open(meta, 'w') as f:
        json.dump(config, f)
    return str(dst)


def _sample(*args):
    import subprocess
    import sys

    env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, 'experiments', 'sample.py'), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )


def test_causal_clip_is_read_before_loading(causal_bundle):
    assert rollout_lib.causal_clip(SHIPPED) == (0, 16)
    assert rollout_lib.causal_clip(causal_bundle) == (2, 16)


def test_cli_num_frames_beyond_the_clip_streams_signed_segments(causal_bundle, tmp_path):
    """sample.py --num_frames=20 on a causal checkpoint trained on 16-frame clips runs the
    chunked rollout; --segment_seconds=1 (8 frames at 8 fps) commits 3 signed segments and the
    signed whole file, and leaves nothing else in the output folder."""
    from sora_jax.io import video as video_io
    from sora_jax.safety import provenance

    out = tmp_path / 'long.mp4'
    r = _sample(
        f'--checkpoint={causal_bundle}',
        '--prompt=a red circle moving to the left',
        '--num_frames=20',
        '--steps=2',
        '--segment_seconds=1',
        '--noprogress',
        f'--out={out}',
    )
    assert r.returncode == 0, r.stderr[-3000:]
    names = ['long_000.mp4', 'long_001.mp4', 'long_002.mp4']
    assert _files(tmp_path) == ['long.mp4'] + names
    counts = [len(video_io.read_video(tmp_path / n)) for n in names]
    assert counts == [8, 8, 4]
    whole = video_io.read_video(out)
    assert whole.shape == (20, 128, 128, 3)  # 32x32 at display_scale 4
    for p in [out] + [tmp_path / n for n in names]:
        assert provenance.read(str(p))['valid'], p
        assert f'wrote {p}' in r.stdout
    joined = np.concatenate([video_io.read_video(tmp_path / n) for n in names], 0)
    assert np.abs(joined.astype(np.float32) - whole).mean() < 6.0


def test_cli_segments_need_a_rollout(tmp_path):
    r = _sample(
        f'--checkpoint={SHIPPED}',
        '--prompt=a red circle',
        '--segment_seconds=1',
        f'--out={tmp_path / "x.mp4"}',
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert '--segment_seconds cuts a chunked rollout' in r.stderr
    assert _files(tmp_path) == []
