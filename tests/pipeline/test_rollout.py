"""Chunked rollout (pipeline/rollout.py) on a tiny random causal shapes model: chunks come out one
by one through one compiled program, and each equals sampling the same chunk with the DiT
recomputed over the whole clean prefix (no cache) within 1e-4."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import shapes as shapes_config
from sora_jax.diffusion import samplers
from sora_jax.pipeline import TextToVideo
from sora_jax.pipeline import rollout as rollout_lib

pytestmark = pytest.mark.slow

pytestmark = pytest.mark.slow  # compiles and samples or trains for tens of seconds

CHUNK = 2
STEPS = 2
GUIDANCE = 3.0


@pytest.fixture(scope='module')
def pipe():
    c = shapes_config.get_config('tiny')
    c.model.causal_chunk = CHUNK
    return TextToVideo.from_config(c, seed=0)


def test_rollout_streams_chunks_equal_to_uncached_recomputation(pipe):
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
