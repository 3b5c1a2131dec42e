"""VAE round trip of a video file (or of held-out shapes clips); prints PSNR / SSIM.

  python experiments/reconstruct.py --checkpoint=workdirs/shapes_vae --input=IN.mp4 --out=OUT.mp4
  python experiments/reconstruct.py --checkpoint=checkpoints/shapes/vae --input=IN.mp4 \
      --out=RECON.mp4 --noside_by_side
  python experiments/reconstruct.py --checkpoint=workdirs/shapes_vae --suite=shapes --num=32 \
      --json=outputs/vae_shapes.json [--out=outputs/vae_shapes.mp4]

The input is trimmed to 1 + 4k frames and centre-cropped to multiples of the spatial factor, then
encoded and decoded chunked (memory flat in length), tiled when the frame is larger than the
config's tile or with --tile. OUT.mp4 shows input | reconstruction side by side (--gif adds OUT.gif);
with --noside_by_side OUT.mp4 holds the reconstruction alone (the fitted input's frame count and
size), and --out_reconstruction=FILE writes the reconstruction alone as well as the comparison.
Outputs are checked before the VAE loads and written whole (temporary name, then renamed); an
existing file is refused without --overwrite, and nothing is written that no flag names.
Metrics compare the uint8 reconstruction with the fitted uint8 input (before mp4 compression).
`--suite=shapes` scores `--num` clips of 17x32x32 from a scene stream training never saw, drawn
like the VAE's training data (its config's data.backgrounds / size_scale / max_objects);
`--suite=world` 33x64x64 clips of the physics world (`--size=1,64,64`: single frames).
"""

import json
import pathlib

from sora_jax.io import host_memory  # noqa: E402

host_memory.retain_freed_memory()  # before jax starts its threads: no page faults per step

from absl import app, flags, logging  # noqa: E402

from sora_jax import cli  # noqa: E402
from sora_jax.io import compile_cache  # noqa: E402  (defines --compilation_cache)

flags.DEFINE_string('checkpoint', None, 'VAE training workdir (holds checkpoints/).')
flags.DEFINE_string('input', None, 'Video file to reconstruct.')
flags.DEFINE_string(
    'out',
    None,
    'Side-by-side video (.mp4 / .webm / .gif); the reconstruction alone with --noside_by_side.',
)
flags.DEFINE_bool(
    'side_by_side',
    True,
    '--out shows input | reconstruction (--noside_by_side: the reconstruction alone).',
)
flags.DEFINE_string(
    'out_reconstruction',
    None,
    'Also write the reconstruction alone here (.mp4 / .webm / .gif).',
)
flags.DEFINE_bool('gif', False, 'Also write a .gif beside each video output (same name, .gif).')
flags.DEFINE_bool('overwrite', False, 'Replace the outputs (--out, --out_reconstruction, --json).')
flags.DEFINE_bool(
    'tile', False, 'Force spatial tiling (else only when the frame is larger than the tile).'
)
flags.DEFINE_integer('tile_size', 0, 'Tile size in pixels (0: the VAE config tile).')
flags.DEFINE_bool(
    'chunked',
    True,
    'Chunked causal encode/decode (always on; kept for the documented command line).',
)
flags.DEFINE_enum(
    'suite',
    None,
    ['shapes', 'world'],
    'Evaluate on held-out generated clips instead: shapes (data/shapes.py) or the physics world '
    '(data/world.py).',
)
flags.DEFINE_integer('num', 32, 'Clips for --suite.')
flags.DEFINE_list(
    'size', None, 'T,H,W of the --suite clips (default: 17,32,32 shapes; 33,64,64 world).'
)
flags.DEFINE_integer('samples', 4, 'Side-by-side sample clips written for --suite.')
flags.DEFINE_string('json', None, 'Write the metrics to this JSON file.')
flags.DEFINE_float('fps', 8.0, 'Frames per second of the written videos.')
flags.mark_flags_as_required(['checkpoint'])
FLAGS = flags.FLAGS


def _outputs(out: str | None) -> list[str]:
    """The files one video flag writes: the video, and with --gif a .gif beside it."""
    if not out:
        return []
    gif = str(pathlib.Path(out).with_suffix('.gif'))
    return [out, gif] if FLAGS.gif and gif != out else [out]


def _write(out: str, frames) -> None:
    """Writes `out` (and its --gif) whole: all reserved first, each renamed into place."""
    from sora_jax.io import outputs
    from sora_jax.io.video import write_video

    with outputs.reserved(_outputs(out), overwrite=FLAGS.overwrite) as reserved:
        for r in reserved:
            write_video(r.tmp, frames, fps=FLAGS.fps)
        written = [r.commit() for r in reserved]
    print(
        f'wrote {" and ".join(written)} ({frames.shape[0]} frames, '
        f'{frames.shape[1]}x{frames.shape[2]})'
    )


def _tile():
    return FLAGS.tile_size if FLAGS.tile_size else (True if FLAGS.tile else None)


def reconstruct_file(vae) -> dict:
    from sora_jax.evaluation import reconstruction as rec
    from sora_jax.io.video import read_video

    frames = read_video(FLAGS.input)
    frames, notes = rec.fit_video(frames, vae.temporal_factor, vae.spatial_factor)
    for note in notes:
        print(f'note: {note}')
        logging.info(note)
    recon, metrics = rec.reconstruct_video(vae, frames, tile=_tile())
    if FLAGS.out:
        _write(FLAGS.out, rec.side_by_side(frames, recon) if FLAGS.side_by_side else recon)
    if FLAGS.out_reconstruction:
        _write(FLAGS.out_reconstruction, recon)
    return dict(
        input=FLAGS.input,
        num_frames=int(frames.shape[0]),
        height=int(frames.shape[1]),
        width=int(frames.shape[2]),
        psnr=metrics['psnr'],
        ssim=metrics['ssim'],
        tile=metrics['tile'],
    )


def reconstruct_suite(vae) -> dict:
    import numpy as np

    from sora_jax.evaluation import reconstruction as rec

    size = FLAGS.size or (['33', '64', '64'] if FLAGS.suite == 'world' else ['17', '32', '32'])
    t, h, w = (int(x) for x in size)
    data = vae.config.data if 'data' in vae.config else {}
    if FLAGS.suite == 'world':
        clips = rec.heldout_world(FLAGS.num, t, h, w)
    else:
        clips = rec.heldout_shapes(  # the distribution the VAE was trained on, unseen scenes
            FLAGS.num,
            t,
            h,
            w,
            max_objects=int(data.get('max_objects', 2)),
            backgrounds=tuple(data.get('backgrounds', ())) or None,
            size_scale=float(data.get('size_scale', 1.0)),
        )
    clips = np.stack([rec.fit_video(c, vae.temporal_factor, vae.spatial_factor)[0] for c in clips])
    recon, metrics = rec.reconstruct_video(vae, clips, tile=_tile())
    out = FLAGS.out or (str(pathlib.Path(FLAGS.json).with_suffix('.mp4')) if FLAGS.json else None)
    if out and FLAGS.samples:
        k = min(FLAGS.samples, len(clips))
        rows = [
            rec.side_by_side(clips[i], recon[i]) if FLAGS.side_by_side else recon[i]
            for i in range(k)
        ]
        _write(out, np.concatenate(rows, axis=1))  # stacked vertically: one row per clip
    if FLAGS.out_reconstruction and FLAGS.samples:
        k = min(FLAGS.samples, len(clips))
        _write(FLAGS.out_reconstruction, np.concatenate(list(recon[:k]), axis=1))
    return dict(
        suite=FLAGS.suite,
        seed=rec.HELDOUT_SEED,
        num=int(len(clips)),
        size=list(clips.shape[1:4]),
        psnr=metrics['psnr'],
        ssim=metrics['ssim'],
        psnr_min=float(min(metrics['psnr_per_clip'])),
        psnr_per_clip=metrics['psnr_per_clip'],
        ssim_per_clip=metrics['ssim_per_clip'],
        tile=metrics['tile'],
    )


def main(argv):
    del argv
    if (FLAGS.input is None) == (FLAGS.suite is None):
        raise app.UsageError('give exactly one of --input=VIDEO or --suite=shapes|world.')
    from sora_jax.io import outputs
    from sora_jax.io.video import VIDEO_EXTENSIONS

    for name in ('out', 'out_reconstruction'):  # refused before the VAE loads
        for path in _outputs(FLAGS[name].value):
            outputs.check(
                path, overwrite=FLAGS.overwrite, formats=VIDEO_EXTENSIONS, flag=f'--{name}'
            )
    if FLAGS.json:
        outputs.check(FLAGS.json, overwrite=FLAGS.overwrite, flag='--json')
    if FLAGS.suite and not FLAGS.out and FLAGS.json and FLAGS.samples:
        outputs.check(
            pathlib.Path(FLAGS.json).with_suffix('.mp4'), overwrite=FLAGS.overwrite, flag='--json'
        )
    compile_cache.enable()
    from sora_jax.models import frozen_vae

    with cli.reading(f'checkpoint {FLAGS.checkpoint}', 'pass a VAE workdir or a bundle/vae'):
        vae = frozen_vae.load(FLAGS.checkpoint)
    result = reconstruct_file(vae) if FLAGS.input else reconstruct_suite(vae)
    result.update(checkpoint=FLAGS.checkpoint, step=int(vae.step))
    if FLAGS.input:
        what = f'{result["num_frames"]}x{result["height"]}x{result["width"]}'
    else:
        what = f'{result["num"]} clips of {"x".join(map(str, result["size"]))}'
    tiled = f', tiles {result["tile"][0]}/{result["tile"][1]} px' if result['tile'] else ''
    print(
        f'PSNR {result["psnr"]:.4f} dB  SSIM {result["ssim"]:.4f}  ({what}{tiled}, step '
        f'{result["step"]})',
        flush=True,
    )
    if FLAGS.json:
        outputs.write_text(FLAGS.json, json.dumps(result, indent=2), overwrite=FLAGS.overwrite)
        print(f'wrote {FLAGS.json}')


if __name__ == '__main__':
    cli.run(main)  # one-line errors, documented exit statuses (docs/guarantees.md)
