"""experiments/sample.py's run as one library call: every input checked before any weight is
read, the outputs reserved, the pipeline called, the files written whole, signed, then moved
into place.

    generate.run(flags.FLAGS)      # what experiments/sample.py does

Refused before loading (each a one-line ValueError naming the flag, the value and the fix):
non-finite or negative numbers (--guidance_scale=nan, --shift=inf), sizes <= 0 or above
`MAX_SIDE` pixels a side / `MAX_FRAMES` frames, a size whose output alone (float32 frames)
needs more than half this machine's memory (`memory_bytes`), prompts that are not valid UTF-8,
a --quantize that is not int8 / fp8, LoRA files that do not parse or hold NaN values
(`convert/lora.py` check_file / read; their shapes are checked against the model as soon as
it is loaded, before anything compiles), an --out that is a directory, in an unwritable place,
exists (without --overwrite), is being written by another process, or cannot carry Content
Credentials (.webm, unless --nocredentials). Nothing is written that the user did not name:
the .gif beside a video only with --gif. A checkpoint that cannot be read is one
`cli.UnreadableError` line (exit status 5).
"""

from __future__ import annotations

import math
import os

from sora_jax import cli
from sora_jax.io import outputs
from sora_jax.io.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

MAX_SIDE = 4096  # pixels, height and width (before --display_scale)
MAX_FRAMES = 1024  # the pipeline's own limit (pipeline.MAX_FRAMES)
SIGNABLE = ('.mp4', '.gif', '.png', '.jpg', '.jpeg')  # formats C2PA signs here (provenance)


def check_out(out: str, mode: str, credentials: bool = True) -> str:
    """The --out extension (lower case; none: .mp4), or a ValueError naming the ones allowed."""
    if os.path.isdir(out) or out.endswith(os.sep):
        raise ValueError(f'--out={out!r} is a directory; give a file name, e.g. {out}/a.mp4.')
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
    if credentials and ext not in SIGNABLE:
        raise ValueError(
            f'--out={out!r}: a {ext} file cannot carry Content Credentials; write one of '
            f'{list(SIGNABLE)}, or pass --nocredentials.'
        )
    return ext


def output_paths(out: str, ext: str, n: int, gif: bool) -> list[str]:
    """The files a run writes: OUT (or OUT_0, OUT_1, ... for a batch), and with `gif` a .gif
    beside each video."""
    root = os.path.splitext(out)[0]
    if not os.path.splitext(out)[1]:
        root = out
    bases = [root] if n == 1 else [f'{root}_{i}' for i in range(n)]
    paths = [b + ext for b in bases]
    if gif and ext in VIDEO_EXTENSIONS and ext != '.gif':
        paths += [b + '.gif' for b in bases]
    return paths


def check_numbers(F) -> None:
    """Finite guidance / shift / strength; sizes and steps > 0 and within the maxima."""
    for name in ('guidance_scale', 'guidance_scale_2', 'skip_guidance_scale', 'shift', 'strength'):
        v = getattr(F, name, None)
        if v is not None and not math.isfinite(v):
            raise ValueError(f'--{name}={v}: not a finite number; pass e.g. --{name}=5.')
    if getattr(F, 'skip_guidance_scale', None) is not None and F.skip_guidance_scale < 0:
        raise ValueError(f'--skip_guidance_scale={F.skip_guidance_scale} must be >= 0 (0: off).')
    for name, top in (('height', MAX_SIDE), ('width', MAX_SIDE), ('num_frames', MAX_FRAMES)):
        v = getattr(F, name, None)
        if v is not None and not 1 <= v <= top:
            raise ValueError(
                f'--{name}={v}: must be in [1, {top}] (leave it out for the config default).'
            )
    if getattr(F, 'steps', None) is not None and not 1 <= F.steps <= 1000:
        raise ValueError(f'--steps={F.steps}: must be in [1, 1000].')
    if getattr(F, 'display_scale', None) is not None and not 1 <= F.display_scale <= 16:
        raise ValueError(f'--display_scale={F.display_scale}: must be in [1, 16].')


def check_prompts(prompts) -> None:
    """Every prompt is text a tokenizer can encode (valid UTF-8 on the command line)."""
    for i, p in enumerate(prompts or ()):
        for label, text in (('--prompt', p),):
            try:
                text.encode('utf-8')
            except UnicodeEncodeError:
                raise ValueError(
                    f'{label} #{i + 1} is not valid UTF-8 ({text.encode("utf-8", "replace")[:60]!r}'
                    '); pass the prompt as UTF-8 text.'
                ) from None


def check_loras(specs) -> list[tuple[str, float]]:
    """--lora FILE[:scale] specs, each file read and checked (header, shapes, finite values)."""
    from sora_jax.convert import lora as lora_files

    loras = [lora_files.parse_spec(s) for s in specs or ()]
    for path, scale in loras:
        lora_files.read(path, scale)
    return loras


def memory_bytes(batch: int, frames: int, height: int, width: int, scale: int = 1) -> int:
    """A lower bound on a run's host memory: its output as float32 frames (decoded video, then
    upscaled by `scale`), the sampler's latents and activations not counted."""
    return 4 * 3 * batch * frames * height * width * max(1, scale) ** 2


def check_memory(batch: int, frames: int, height: int, width: int, scale: int = 1) -> None:
    need = memory_bytes(batch, frames, height, width, scale)
    try:
        total = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    except (ValueError, OSError, AttributeError):  # not Linux / macOS
        return
    if need > total // 2:
        raise ValueError(
            f'{batch} x {frames} frames of {height}x{width} (display scale {scale}) need at '
            f'least {need / 2**30:.1f} GiB for the output alone; this machine has '
            f'{total / 2**30:.1f} GiB. Ask for fewer frames or a smaller size.'
        )


def load(F):
    """The pipeline for --checkpoint (a converted Wan folder or a workdir / bundle), with the
    checked LoRAs applied; whatever the readers raise is one UnreadableError line."""
    from sora_jax.convert import checkpoint as converted
    from sora_jax.pipeline import TextToVideo

    fix = 'pass a complete checkpoint (a training --workdir, checkpoints/shapes, or a folder '
    fix += 'written by experiments/convert_wan.py); copy or export it again if it was damaged'
    if not os.path.isdir(F.checkpoint) and '://' not in F.checkpoint:
        raise ValueError(f'--checkpoint={F.checkpoint!r} is not a directory; {fix}.')
    with cli.reading(f'checkpoint {F.checkpoint}', fix):
        _check_complete(F.checkpoint)
        if converted.is_converted(F.checkpoint):
            config = F.config
            if config is None:
                from configs import wan21

                config = wan21.get_config('t2v_1.3b')
            pipe = TextToVideo.from_wan(F.checkpoint, config, quantize=F.quantize)
        else:
            pipe = TextToVideo.from_checkpoint(F.checkpoint, ema=F.ema, quantize=F.quantize)
    return pipe


def _check_complete(path: str) -> None:
    """The newest step of a workdir / bundle has the files Orbax needs to restore its arrays
    (`state/_METADATA`, `state/manifest.ocdbt`), so a damaged copy is named plainly."""
    cdir = os.path.join(path, 'checkpoints')
    steps = sorted(int(d) for d in os.listdir(cdir) if d.isdigit()) if os.path.isdir(cdir) else []
    if not steps:
        return
    state = os.path.join(cdir, str(steps[-1]), 'state')
    for name in ('_METADATA', 'manifest.ocdbt'):
        if os.path.isdir(state) and not os.path.isfile(os.path.join(state, name)):
            raise ValueError(f'step {steps[-1]} is incomplete: {state}/{name} is missing')


def apply_loras(pipe, loras, merge: bool) -> None:
    """Checks each file's shapes against the loaded DiT (the file named in the error), then
    applies them."""
    if not loras:
        return
    from sora_jax.convert import lora as lora_files

    kernels = lora_files.kernel_shapes(pipe.params)
    for path, scale in loras:
        lora_files.check_fits(lora_files.read(path, scale), kernels, f'LoRA file {path}')
    pipe.set_loras(loras, merge=merge)


def safeguards(pipe, F) -> list[str]:
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


def sign_outputs(pipe, paths, off, F, prompt_moderated: bool = True) -> None:
    """Signs C2PA Content Credentials into each file (unless --nocredentials): the checkpoint
    hash (covering its VAE and the LoRAs), the LoRA files and scales, the data record."""
    if 'credentials' in off:
        return
    from sora_jax.safety import moderation, provenance, record

    rec = record.load(pipe.checkpoint_path) if pipe.checkpoint_path else None
    vae = provenance.autoencoder_dir(pipe.checkpoint_path) if pipe.checkpoint_path else None
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
        loras=provenance.lora_entries(pipe.loras),
        autoencoder=vae,
        consent=moderation.consent_entries(F.prompt, F.moderation_policy, F.mode)
        if prompt_moderated
        else None,
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


def check(F) -> tuple[str, list[str], list[tuple[str, float]]]:
    """Everything checkable before loading: (extension, output paths, LoRAs)."""
    ext = check_out(F.out, F.mode, F.credentials)
    check_numbers(F)
    from sora_jax.models import quantize

    quantize.check(F.quantize)  # before the weights load
    check_prompts(F.prompt)
    if F.negative_prompt is not None:
        check_prompts([F.negative_prompt])
    paths = output_paths(F.out, ext, len(F.prompt), F.gif)
    for p in paths:
        outputs.check(p, overwrite=F.overwrite)
    if F.num_frames and F.height and F.width:
        check_memory(len(F.prompt), F.num_frames, F.height, F.width, F.display_scale or 1)
    for name in ('image', 'last_image'):
        path = getattr(F, name, None)
        if path and not os.path.isfile(path):
            raise ValueError(f'--{name}={path!r} does not exist.')
        if path:  # decodable, before any weight loads
            from sora_jax.io import video as video_io

            video_io.read_image(path)
    for v in F.video or ():
        if not os.path.isfile(v):
            raise ValueError(f'--video={v!r} does not exist.')
    return ext, paths, check_loras(F.lora)


def run(F, call_pipeline, checked=None) -> list[str]:
    """Checks (or takes `check(F)`'s result), reserves the outputs, loads, samples
    (`call_pipeline(pipe, height, width)` -> uint8 frames [B, T, H, W, 3]), writes, signs and
    commits; returns the paths written."""
    import numpy as np

    from sora_jax.io import video as video_io

    ext, paths, loras = checked or check(F)
    with outputs.reserved(paths, overwrite=F.overwrite) as held:
        pipe = load(F)
        apply_loras(pipe, loras, F.lora_merge)
        off = safeguards(pipe, F)
        s = pipe.config.sample
        height, width = F.height or s.height, F.width or s.width
        scale = int(F.display_scale or s.get('display_scale', 1))
        check_memory(len(F.prompt), F.num_frames or s.get('num_frames', 1), height, width, scale)
        frames = call_pipeline(pipe, height, width)
        if scale > 1:  # nearest upscale so tiny demo clips are watchable; the mark survives it
            frames = np.repeat(np.repeat(frames, scale, axis=2), scale, axis=3)
        n = len(frames)
        for i, clip in enumerate(frames):
            r = held[i]
            if ext in IMAGE_EXTENSIONS:  # t2i: the first (only) frame
                video_io.write_image(r.tmp, clip[0])
                continue
            video_io.write_video(r.tmp, clip, fps=s.fps)
            if len(held) > n:
                video_io.write_video(held[n + i].tmp, clip, fps=s.fps)
        sign_outputs(pipe, [r.tmp for r in held], off, F, prompt_moderated=F.moderation)
        for r in held:
            r.commit()
    clip = frames[0]
    for r in held:
        if r.path.endswith(tuple(IMAGE_EXTENSIONS)):
            print(f'wrote {r.path} ({clip.shape[1]}x{clip.shape[2]} image)', flush=True)
        elif r.path.endswith('.gif') and ext != '.gif':
            print(f'wrote {r.path}', flush=True)
        else:
            print(
                f'wrote {r.path} ({clip.shape[0]} frames, {clip.shape[1]}x{clip.shape[2]})',
                flush=True,
            )
    return [r.path for r in held]
