"""Sample a video from a checkpoint: text-to-video, image-to-video, extend, connect, loop, v2v.

  python experiments/sample.py --checkpoint=checkpoints/shapes --prompt="a red circle moving to the left" --out=outputs/red.mp4
  python experiments/sample.py --checkpoint=... --prompt=... --mode=i2v --image=first.png --out=...
  python experiments/sample.py --checkpoint=WAN_FLF2V --config=configs/wan21.py:i2v_14b_720p \
      --prompt=... --mode=flf2v --image=first.png --last_image=last.png --out=...
  python experiments/sample.py --checkpoint=WAN --prompt=... --lora=LIGHTX2V.safetensors \
      --distill_preset=lightx2v_4step --out=...     (4 steps, guidance 1, no unconditional pass)
  python experiments/sample.py --checkpoint=checkpoints/shapes --prompt="a green square" --mode=t2i --out=outputs/square.png

Every input is checked before any weight is loaded (sora_jax/generate.py: finite numbers, sizes
up to 4096 px a side and 1024 frames and within this machine's memory, UTF-8 prompts, LoRA
files, the output path); an existing --out is refused without --overwrite, and nothing is
written that --out does not name (--gif adds a .gif beside a video). Expected failures are one
ERROR line with an exit status (sora_jax/cli.py, docs/guarantees.md: 2 bad input, 3 refused
prompt, 4 output exists or busy, 5 unreadable checkpoint, 6 disk, 7 non-finite result).

Quiet by default: the progress bar, the written paths and warnings; --verbosity=0 (absl) shows
the INFO logs too, --verbosity=1 tracebacks. Compiled programs are kept on disk (sora_jax/io/compile_cache.py), so a
second run with the same sizes skips most compiling (all of it with --noprogress: the progress
bar's host callback keeps the sampler out of the cache); --nocompilation_cache turns that off.
"""

import functools

from sora_jax.io import host_memory  # noqa: E402

host_memory.retain_freed_memory()  # before jax starts its threads: no page faults per step

from absl import flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from sora_jax import (  # noqa: E402
    cli,
    config_files,  # noqa: E402
    generate,
)
from sora_jax.io import compile_cache  # noqa: E402  (defines --compilation_cache)

config_files.register_configs()  # config files outside configs/ may import configs.*
config_flags.DEFINE_config_file(
    'config',
    None,
    'Sampling defaults for a converted Wan folder (default configs/wan21.py:t2v_1.3b); '
    'shapes-family checkpoints carry their own config.',
)
flags.DEFINE_string(
    'checkpoint', None, 'Training workdir or shipped bundle (e.g. checkpoints/shapes).'
)
flags.DEFINE_multi_string('prompt', None, 'Prompt(s); repeat the flag for a batch.')
flags.DEFINE_string(
    'out',
    'outputs/sample.mp4',
    'Output .mp4 or .gif (.webm with --nocredentials: it cannot be signed; a batch adds _0, '
    '_1, ...), or with --mode=t2i a .png / .jpg image. An existing file is refused unless '
    '--overwrite; the file appears only once written whole and signed.',
)
flags.DEFINE_bool('overwrite', False, 'Replace --out (and its --gif) if it exists.')
flags.DEFINE_bool('gif', False, 'Also write a .gif beside each video (same name, .gif).')
flags.DEFINE_integer(
    'num_frames',
    None,
    f'Frames (1 + 4k with a causal VAE; at most {generate.MAX_FRAMES}); default from the config.',
)
flags.DEFINE_integer(
    'height', None, f'Height in pixels (1..{generate.MAX_SIDE}); default from the config.'
)
flags.DEFINE_integer(
    'width', None, f'Width in pixels (1..{generate.MAX_SIDE}); default from the config.'
)
flags.DEFINE_integer('steps', None, 'Sampling steps; default from the config.')
flags.DEFINE_float('guidance_scale', None, 'Classifier-free guidance scale.')
flags.DEFINE_float(
    'guidance_scale_2',
    None,
    'Wan 2.2 A14B: guidance of the low-noise expert '
    '(default: config.sample.guidance_scale_2, else --guidance_scale).',
)
flags.DEFINE_float(
    'skip_guidance_scale', None, 'Skip-layer guidance scale (0: off); default from the config.'
)
flags.DEFINE_list('skip_layers', None, 'DiT blocks skipped by skip-layer guidance, e.g. 2,3.')
flags.DEFINE_string('negative_prompt', None, "Negative prompt (default: the config's, else empty).")
flags.DEFINE_string('sampler', None, 'euler | heun | unipc | dpmpp_2m.')
flags.DEFINE_float('shift', None, 'Timestep shift.')
flags.DEFINE_integer('seed', 0, 'Random seed.')
flags.DEFINE_string(
    'mode', 't2v', 't2v | t2i | i2v | flf2v | extend | extend_backward | connect | loop | v2v.'
)
flags.DEFINE_string(
    'image',
    None,
    'Image file for i2v / flf2v (the first frame) / loop. A Wan I2V model takes any size (resized '
    'for the VAE, CLIP sees it as given; without --height/--width the size follows its aspect).',
)
flags.DEFINE_string('last_image', None, 'flf2v: image file of the last frame.')
flags.DEFINE_string(
    'distill_preset',
    None,
    'Sampling schedule of a step-distilled LoRA (sora_jax/pipeline/distill.py): lightx2v_4step '
    '(timesteps 1000/750/500/250, shift 5, Euler, guidance 1 with no unconditional pass).',
)
flags.DEFINE_multi_string(
    'video', None, 'Video file for extend / v2v (twice for connect: head, tail).'
)
flags.DEFINE_float('strength', 0.7, 'v2v: how much of the input video is re-generated (0..1).')
flags.DEFINE_bool('ema', True, 'Sample the EMA parameters.')
flags.DEFINE_multi_string(
    'lora',
    None,
    'LoRA safetensors FILE[:scale] (diffusers / PEFT or '
    'original-Wan layout; repeat for several; scale 1 by default).',
)
flags.DEFINE_bool(
    'lora_merge',
    True,
    'Merge LoRAs into the weights (--nolora_merge: keep them as separate adapters).',
)
flags.DEFINE_bool(
    'progress',
    True,
    'Per-step progress bar. It is a host callback inside the '
    'sampler, and JAX keeps no program with host callbacks in the compilation cache: '
    "--noprogress makes the sampler's compile cached too (a second run starts faster).",
)
flags.DEFINE_integer(
    'display_scale', None, 'Upscale written videos (nearest); default config.sample.display_scale.'
)
flags.DEFINE_bool(
    'moderation',
    True,
    'Refuse prompts the content policy names (--nomoderation: '
    'off, logged and recorded in the Content Credentials).',
)
flags.DEFINE_string(
    'moderation_policy',
    None,
    'Content policy JSON (default $SORA_JAX_POLICY or sora_jax/safety/policy.json).',
)
flags.DEFINE_string(
    'profile_dir',
    None,
    'Write a jax.profiler trace of the sampling call here '
    '(TensorBoard profile plugin / xprof: DIR/plugins/profile/*/*.xplane.pb).',
)
flags.DEFINE_bool(
    'profile_warmup',
    True,
    'With --profile_dir: run the call once untraced first, '
    'so the trace shows the compiled steps, not the compile.',
)
flags.DEFINE_bool('watermark', True, 'Invisible watermark in every frame (--nowatermark: off).')
flags.DEFINE_integer(
    'watermark_key',
    None,
    'User key (0..65535) in the watermark; default $SORA_JAX_WATERMARK_KEY or 0.',
)
flags.DEFINE_bool(
    'credentials',
    True,
    'Sign C2PA Content Credentials into every written file (--nocredentials: off).',
)
flags.DEFINE_string(
    'c2pa_cert',
    None,
    'PEM chain (ES256 end-entity cert, then its CA); default '
    '$SORA_JAX_C2PA_CERT, else a development CA under ~/.config/sora_jax.',
)
flags.DEFINE_string('c2pa_key', None, 'PEM private key of --c2pa_cert; default $SORA_JAX_C2PA_KEY.')
flags.DEFINE_float(
    'seconds',
    None,
    'Causal checkpoints (model.causal_chunk > 0): this many seconds of video, chunk by chunk '
    'with a key/value cache (sora_jax/pipeline/rollout.py; t2v).',
)
flags.DEFINE_integer('window', 4, 'With --seconds: past chunks each chunk attends to.')
flags.DEFINE_bool(
    'text_kv_cache',
    None,
    'Cross-attention keys/values of the prompts computed once per call, not at every step '
    '(default config.sample.text_kv_cache, on; --notext_kv_cache recomputes them per step).',
)
flags.DEFINE_string(
    'quantize',
    None,
    'int8 | fp8: sample with weight-only quantized DiT block kernels (qwix, per output '
    'channel; sora_jax/models/quantize.py, docs/fast_inference.md). Default: as loaded.',
)
flags.DEFINE_enum(
    'cache',
    None,
    ['none', 'magcache', 'firstblock', 'taylorseer'],
    'Step cache (sora_jax/pipeline/step_cache.py, docs/fast_inference.md): DiT evaluations '
    'skipped when a cached value stands in; default config.sample.cache (none).',
)
flags.DEFINE_float(
    'cache_threshold',
    None,
    'magcache: accumulated error bound; firstblock: relative L1 of the first block residual '
    '(default config.sample.cache_threshold, else 0.06 / 0.05).',
)
flags.DEFINE_integer('cache_max_skip', None, 'magcache: consecutive skips at most (3).')
flags.DEFINE_float(
    'cache_retention_ratio', None, 'magcache: leading fraction of steps never skipped (0.2).'
)
flags.DEFINE_list(
    'cache_mag_ratios',
    None,
    'magcache: the magnitude ratios of this model (default config.sample.cache_mag_ratios); '
    '--cache_calibrate prints them.',
)
flags.DEFINE_bool(
    'cache_calibrate', False, 'magcache: skip nothing, print the magnitude ratios of this run.'
)
flags.DEFINE_integer('cache_interval', None, 'taylorseer: evaluations between full ones (5).')
flags.DEFINE_integer('cache_warmup', None, 'taylorseer: first evaluations computed (3).')
flags.DEFINE_integer('cache_order', None, 'taylorseer: Taylor order (1).')
flags.mark_flags_as_required(['checkpoint', 'prompt'])


def _cache(pipe):
    """The --cache* flags as a `step_cache.StepCache` (None: config.sample's)."""
    from sora_jax.pipeline import step_cache

    F = flags.FLAGS
    kind = 'magcache' if F.cache_calibrate and F.cache is None else F.cache
    if kind is None:
        return None
    return step_cache.build(
        pipe.config.sample,
        kind,
        threshold=F.cache_threshold,
        max_skip=F.cache_max_skip,
        retention_ratio=F.cache_retention_ratio,
        mag_ratios=None if F.cache_mag_ratios is None else [float(r) for r in F.cache_mag_ratios],
        calibrate=F.cache_calibrate,
        interval=F.cache_interval,
        warmup=F.cache_warmup,
        order=F.cache_order,
    )


def _timed(pipe, call):
    """call() -> frames, printing its seconds (compiling included: a second run with
    --noprogress reads the compiled sampler from the cache) and what a step cache skipped."""
    import time

    start = time.perf_counter()
    frames = call()
    stats = pipe.last_cache_stats
    line = f'sampled in {time.perf_counter() - start:.2f} s'
    print(line + (f'; {stats}' if stats else ''), flush=True)
    if stats and stats.mag_ratios:
        print(
            'magcache ratios: --cache_mag_ratios='
            + ','.join(f'{r:.5f}' for r in stats.mag_ratios[0]),
            flush=True,
        )
    return frames


def _call(pipe, height, width):
    """The pipeline call the flags describe (under a profiler trace with --profile_dir)."""
    from sora_jax.io import video as video_io

    F = flags.FLAGS
    if F.seconds is not None:  # a causal checkpoint's chunked rollout
        from sora_jax.pipeline import rollout

        if F.mode != 't2v':
            raise ValueError(f'--seconds runs mode t2v only, got --mode={F.mode}.')
        opts = rollout.RolloutOptions(
            num_chunks=1,
            window=F.window,
            num_inference_steps=F.steps,
            guidance_scale=F.guidance_scale,
            shift=F.shift,
            sampler=F.sampler,
            height=height,
            width=width,
            seed=F.seed,
            negative_prompt=F.negative_prompt,
            moderation=F.moderation,
            watermark=F.watermark,
            progress=F.progress,
        )
        return rollout.sample_seconds(pipe, F.prompt, F.seconds, opts)
    image = video = last_image = None
    if pipe.wan_i2v:  # any size: resized for the VAE, CLIP sees the file as it is
        image = video_io.read_image(F.image) if F.image else None
        last_image = video_io.read_image(F.last_image) if F.last_image else None
        if F.height is None and F.width is None:  # the image's aspect ratio
            height = width = None
    elif F.image:
        image = video_io.read_image(F.image, height=height, width=width)
    if F.video:
        vids = [video_io.resize_video(video_io.read_video(v), height, width) for v in F.video]
        video = tuple(vids) if F.mode == 'connect' else vids[0]
    call = functools.partial(
        pipe,
        F.prompt,
        num_frames=F.num_frames,
        height=height,
        width=width,
        num_inference_steps=F.steps,
        guidance_scale=F.guidance_scale,
        guidance_scale_2=F.guidance_scale_2,
        negative_prompt=F.negative_prompt,
        sampler=F.sampler,
        shift=F.shift,
        seed=F.seed,
        mode=F.mode,
        image=image,
        last_image=last_image,
        distill_preset=F.distill_preset,
        video=video,
        strength=F.strength,
        skip_guidance_scale=F.skip_guidance_scale,
        skip_layers=None if F.skip_layers is None else [int(i) for i in F.skip_layers],
        moderation=F.moderation,
        watermark=F.watermark,
        progress=F.progress,
        cache=_cache(pipe),
        text_kv_cache=F.text_kv_cache,
    )
    if not F.profile_dir:
        return _timed(pipe, call)
    import jax

    if F.profile_warmup:
        call()
    with (
        jax.profiler.trace(F.profile_dir),
        jax.profiler.StepTraceAnnotation('sample', step_num=0),
    ):
        frames = call()
    print(f'profile written to {F.profile_dir}', flush=True)
    return frames


def main(argv):
    del argv
    F = flags.FLAGS
    if not F['verbosity'].present:  # quiet: no Orbax / JAX INFO chatter; --verbosity=0 shows it
        logging.set_verbosity(logging.WARNING)
    checked = generate.check(F)  # before anything is loaded, compiled or cached
    compile_cache.enable()
    generate.run(F, _call, checked)


if __name__ == '__main__':
    cli.run(main)
