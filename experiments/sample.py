"""Sample a video from a checkpoint: text-to-video, image-to-video, extend, connect, loop, v2v.

  python experiments/sample.py --checkpoint=checkpoints/shapes --prompt="a red circle moving to the left" --out=outputs/red.mp4
  python experiments/sample.py --checkpoint=... --prompt=... --mode=i2v --image=first.png --out=...
  python experiments/sample.py --checkpoint=WAN_FLF2V --config=configs/wan21.py:i2v_14b_720p \
      --prompt=... --mode=flf2v --image=first.png --last_image=last.png --out=...
  python experiments/sample.py --checkpoint=WAN --prompt=... --lora=LIGHTX2V.safetensors \
      --distill_preset=lightx2v_4step --out=...     (4 steps, guidance 1, no unconditional pass)
  python experiments/sample.py --checkpoint=checkpoints/shapes --prompt="a green square" --mode=t2i --out=outputs/square.png
  python experiments/sample.py --checkpoint=CAUSAL --seconds=60 --segment_seconds=10 --prompt=... \
      --out=outputs/minute.mp4    (a causal checkpoint, chunk by chunk: docs/long_video.md)

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
import glob
import os

from sora_jax.io import host_memory  # noqa: E402

host_memory.retain_freed_memory()  # before jax starts its threads: no page faults per step

from absl import flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from sora_jax import (  # noqa: E402
    cli,
    config_files,  # noqa: E402
    generate,
)
from sora_jax.io import (  # noqa: E402
    compile_cache,  # (defines --compilation_cache)
    outputs,
)

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
    'with a key/value cache (sora_jax/pipeline/rollout.py; t2v), written as the frames come. '
    '--num_frames beyond the clip length of a causal checkpoint does the same.',
)
flags.DEFINE_integer(
    'window',
    None,
    'Chunked rollouts: past chunks each chunk attends to (default 4, or what a converted causal '
    "checkpoint's causal.json says).",
)
flags.DEFINE_integer(
    'sink_frames', None, 'Chunked rollouts: first latent frames kept in the cache for ever.'
)
flags.DEFINE_float(
    'segment_seconds',
    None,
    'Chunked rollouts: also write OUT_000.mp4, OUT_001.mp4, ... of this many seconds each, '
    'each signed and in place as soon as it is complete (docs/long_video.md).',
)
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


def _rollout_wanted(F) -> bool:
    """--seconds, --num_frames beyond the clip of a causal checkpoint, or t2v on a converted
    causal generator (its causal.json: it is only ever sampled chunk by chunk): the chunked
    rollout (checked from the checkpoint's files, before any weight loads). A full-attention
    checkpoint samples any --num_frames in one call, as before."""
    from sora_jax.pipeline import rollout

    wanted = F.seconds is not None
    if not wanted and F.mode == 't2v' and rollout.sampling_defaults(F.checkpoint):
        wanted = True
    if not wanted and F.num_frames:
        try:
            chunk, clip = rollout.causal_clip(F.checkpoint, F.config)
        except Exception:  # unreadable: generate.load reports it, with its exit status
            chunk, clip = 0, 0
        wanted = chunk > 0 and F.num_frames > clip
    if wanted and (F.mode != 't2v' or F.gif):
        raise ValueError(
            f'a chunked rollout (--seconds, or --num_frames beyond a causal clip) runs --mode=t2v '
            f'without --gif; got --mode={F.mode}{" --gif" if F.gif else ""}.'
        )
    if F.segment_seconds is not None:
        if not wanted:
            raise ValueError(
                '--segment_seconds cuts a chunked rollout: pass --seconds, or --num_frames '
                'beyond the clip length of a causal checkpoint.'
            )
        if not F.segment_seconds > 0:
            raise ValueError(f'--segment_seconds={F.segment_seconds} must be > 0.')
        for out in generate.output_paths(
            F.out, os.path.splitext(F.out)[1] or '.mp4', len(F.prompt), False
        ):
            taken = sorted(glob.glob(glob.escape(os.path.splitext(out)[0]) + '_[0-9][0-9][0-9]*'))
            if taken and not F.overwrite:
                raise outputs.OutputExistsError(
                    f'--segment_seconds: {taken[0]} exists; pass --overwrite or another --out.'
                )
    return wanted


def _stream(F, checked) -> list[str]:
    """The chunked rollout of each prompt, written as its frames come (`rollout.stream_to_file`:
    an ffmpeg pipe onto the reserved temporary name; with --segment_seconds also segment files,
    each signed and committed when complete); the whole file is signed and committed last."""
    import time

    from sora_jax.pipeline import rollout

    ext, paths, loras = checked
    with outputs.reserved(paths, overwrite=F.overwrite) as held:
        pipe = generate.load(F)
        generate.apply_loras(pipe, loras, F.lora_merge)
        off = generate.safeguards(pipe, F)
        s = pipe.config.sample
        rollout.causal_chunk(pipe)  # a full-attention checkpoint: one line, before compiling
        height, width = F.height or s.height, F.width or s.width
        scale = int(F.display_scale or s.get('display_scale', 1))
        n = F.num_frames or s.num_frames
        if F.seconds is not None:
            n = rollout.frames_for_seconds(pipe, F.seconds)
        fps = float(s.get('fps', 16))
        seg = max(1, int(round(F.segment_seconds * fps))) if F.segment_seconds else 0
        opts = rollout.options_for(
            pipe,
            window=F.window,
            sink_frames=F.sink_frames,
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

        def seal(tmp_paths):
            generate.sign_outputs(pipe, tmp_paths, off, F, prompt_moderated=F.moderation)

        start, written = time.perf_counter(), []
        for prompt, r in zip(F.prompt, held):
            names = rollout.segment_paths(r.path, -(-n // seg)) if seg else []
            written += rollout.stream_to_file(
                rollout.frames(pipe, prompt, n, opts),
                r,
                fps,
                scale=scale,
                segment_frames=seg,
                reserve_segment=lambda k, names=names: outputs.reserve(
                    names[k], overwrite=F.overwrite
                ),
                seal=seal,
            )
        print(f'sampled in {time.perf_counter() - start:.2f} s', flush=True)
    for w in written:
        print(f'wrote {w}', flush=True)
    return written


def main(argv):
    del argv
    F = flags.FLAGS
    if not F['verbosity'].present:  # quiet: no Orbax / JAX INFO chatter; --verbosity=0 shows it
        logging.set_verbosity(logging.WARNING)
    checked = generate.check(F)  # before anything is loaded, compiled or cached
    stream = _rollout_wanted(F)
    compile_cache.enable()
    if stream:
        _stream(F, checked)
    else:
        generate.run(F, _call, checked)


if __name__ == '__main__':
    cli.run(main)
