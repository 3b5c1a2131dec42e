"""Sample a video from a checkpoint: text-to-video, image-to-video, extend, connect, loop, v2v.

  python experiments/sample.py --checkpoint=checkpoints/shapes --prompt="a red circle moving to the left" --out=outputs/red.mp4
  python experiments/sample.py --checkpoint=... --prompt=... --mode=i2v --image=first.png --out=...
  python experiments/sample.py --checkpoint=checkpoints/shapes --prompt="a green square" --mode=t2i --out=outputs/square.png

Quiet by default: the progress bar, the written paths and warnings; --verbosity=0 (absl) shows
the INFO logs too. Compiled programs are kept on disk (sora_jax/io/compile_cache.py), so a
second run with the same sizes skips most compiling (all of it with --noprogress: the progress
bar's host callback keeps the sampler out of the cache); --nocompilation_cache turns that off.
"""

import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sora_jax.io import host_memory  # noqa: E402

host_memory.retain_freed_memory()  # before jax starts its threads: no page faults per step

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from sora_jax.io import compile_cache  # noqa: E402  (defines --compilation_cache)
from sora_jax.io.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS  # noqa: E402

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
    'Output .mp4, .webm or .gif (a batch adds _0, _1, '
    '...; a .gif is written next to every video), or with --mode=t2i a .png / .jpg '
    'image.',
)
flags.DEFINE_integer(
    'num_frames', None, 'Frames (1 + 4k with a causal VAE); default from the config.'
)
flags.DEFINE_integer('height', None, 'Height in pixels; default from the config.')
flags.DEFINE_integer('width', None, 'Width in pixels; default from the config.')
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
    'mode', 't2v', 't2v | t2i | i2v | extend | extend_backward | connect | loop | v2v.'
)
flags.DEFINE_string('image', None, 'Image file for i2v / loop.')
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
flags.mark_flags_as_required(['checkpoint', 'prompt'])


def safeguards(pipe, F):
    """Applies the safeguard flags to the pipeline; returns the names of those turned off."""
    pipe.moderation_policy = F.moderation_policy
    if F.watermark_key is not None:
        pipe.user_key = F.watermark_key
    off = [
        name
        for name, on in (
            ('moderation', F.moderation),
            ('watermark', F.watermark),
            ('credentials', F.credentials),
        )
        if not on
    ]
    for name in off:
        print(f'WARNING: {name} is turned off (--no{name}).', flush=True)
    return off


def sign_outputs(pipe, paths, off, F, prompt_moderated=True):
    """Signs C2PA Content Credentials into each written file (unless --nocredentials)."""
    if 'credentials' in off:
        return
    from sora_jax.safety import provenance, record

    rec = record.load(pipe.checkpoint_path) if pipe.checkpoint_path else None
    info = provenance.manifest_info(
        checkpoint_hash=pipe.checkpoint_hash,
        config_name=str(
            pipe.config.get('config_name', os.path.basename(os.path.normpath(F.checkpoint)))
        ),
        data_record_hash=record.record_hash(rec) if rec else None,
        watermark_payload=None
        if 'watermark' in off
        else {'model_id': pipe.model_id, 'user_key': pipe.user_key},
        disabled=off,
        prompt_moderated=prompt_moderated,
    )
    dev = False
    for p in paths:
        dev |= provenance.sign(os.fspath(p), info, F.c2pa_cert, F.c2pa_key)
    print(
        f'signed Content Credentials into {len(paths)} file(s)'
        + (
            ' with DEVELOPMENT-ONLY credentials (a local CA under ~/.config/sora_jax/c2pa_dev: '
            'tamper-evident, but nobody else can tell who signed; pass --c2pa_cert/--c2pa_key)'
            if dev
            else ''
        ),
        flush=True,
    )


def check_out(out: str, mode: str) -> str:
    """The --out extension (lower case; none: .mp4), or a ValueError naming the ones allowed."""
    ext = os.path.splitext(out)[1].lower() or '.mp4'
    if ext not in VIDEO_EXTENSIONS + IMAGE_EXTENSIONS:
        raise ValueError(
            f'--out={out!r}: the extension {ext or "(none)"!r} is neither a video '
            f'{list(VIDEO_EXTENSIONS)} nor an image {list(IMAGE_EXTENSIONS)}.'
        )
    if ext in IMAGE_EXTENSIONS and mode != 't2i':
        raise ValueError(
            f'--out={out!r} is an image but --mode={mode} makes a video; pass '
            f'--mode=t2i for an image, or a video extension {list(VIDEO_EXTENSIONS)}.'
        )
    return ext


def main(argv):
    del argv
    F = flags.FLAGS
    if not F['verbosity'].present:  # quiet: no Orbax / JAX INFO chatter; --verbosity=0 shows it
        logging.set_verbosity(logging.WARNING)
    ext = check_out(F.out, F.mode)
    compile_cache.enable()
    import numpy as np

    from sora_jax.io import video as video_io
    from sora_jax.pipeline import TextToVideo

    if os.path.isfile(os.path.join(F.checkpoint, 'transformer', 'config.json')):
        config = F.config
        if config is None:
            from configs import wan21

            config = wan21.get_config('t2v_1.3b')
        pipe = TextToVideo.from_wan(F.checkpoint, config)
    else:
        pipe = TextToVideo.from_checkpoint(F.checkpoint, ema=F.ema)
    if F.lora:
        from sora_jax.convert.lora import parse_spec

        pipe.set_loras([parse_spec(s) for s in F.lora], merge=F.lora_merge)
    off = safeguards(pipe, F)
    s = pipe.config.sample
    height = F.height or s.height
    width = F.width or s.width
    image = video = None
    if F.image:
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
        video=video,
        strength=F.strength,
        skip_guidance_scale=F.skip_guidance_scale,
        skip_layers=None if F.skip_layers is None else [int(i) for i in F.skip_layers],
        moderation=F.moderation,
        watermark=F.watermark,
        progress=F.progress,
    )
    if F.profile_dir:
        import jax

        if F.profile_warmup:
            call()
        with (
            jax.profiler.trace(F.profile_dir),
            jax.profiler.StepTraceAnnotation('sample', step_num=0),
        ):
            frames = call()
        print(f'profile written to {F.profile_dir}', flush=True)
    else:
        frames = call()
    root = os.path.splitext(F.out)[0]
    # The mark is box-resampled, so a nearest upscale by an integer reads as the original.
    scale = int(F.display_scale or s.get('display_scale', 1))
    if scale > 1:  # nearest-neighbour upscale so tiny demo clips are watchable
        frames = np.repeat(np.repeat(frames, scale, axis=2), scale, axis=3)
    written = []
    for i, clip in enumerate(frames):
        base = root if len(frames) == 1 else f'{root}_{i}'
        if ext in IMAGE_EXTENSIONS:  # t2i: the first (only) frame
            path = video_io.write_image(base + ext, clip[0])
            written.append(path)
            print(f'wrote {path} ({clip.shape[1]}x{clip.shape[2]} image)', flush=True)
            continue
        path = video_io.write_video(base + ext, clip, fps=s.fps)
        written.append(path)
        print(f'wrote {path} ({clip.shape[0]} frames, {clip.shape[1]}x{clip.shape[2]})', flush=True)
        if ext != '.gif':
            gif = video_io.write_video(base + '.gif', clip, fps=s.fps)
            written.append(gif)
            print(f'wrote {gif}', flush=True)
    sign_outputs(pipe, written, off, F, prompt_moderated=F.moderation)


def run(argv):
    """main, with a bad --out (exit status 2) or a refused prompt (3) as a clear message and
    nothing written."""
    from sora_jax.safety.moderation import PromptRefused

    try:
        check_out(flags.FLAGS.out, flags.FLAGS.mode)
    except ValueError as e:  # before loading anything
        print(f'ERROR: {e}', file=sys.stderr, flush=True)
        sys.exit(2)
    try:
        main(argv)
    except PromptRefused as e:
        print(f'ERROR: {e}', file=sys.stderr, flush=True)
        sys.exit(3)


if __name__ == '__main__':
    app.run(run)
