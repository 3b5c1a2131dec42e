"""Sample a video from a checkpoint: text-to-video, image-to-video, extend, connect, loop, v2v.

  python experiments/sample.py --checkpoint=checkpoints/shapes --prompt="a red circle moving to the left" --out=outputs/red.mp4
  python experiments/sample.py --checkpoint=... --prompt=... --mode=i2v --image=first.png --out=...
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

config_flags.DEFINE_config_file(
    'config', None, 'Sampling defaults for a converted Wan folder (default configs/wan21.py:t2v_1.3b); '
    'shapes-family checkpoints carry their own config.')
flags.DEFINE_string('checkpoint', None, 'Training workdir or shipped bundle (e.g. checkpoints/shapes).')
flags.DEFINE_multi_string('prompt', None, 'Prompt(s); repeat the flag for a batch.')
flags.DEFINE_string('out', 'outputs/sample.mp4', 'Output .mp4 or .gif (a batch adds _0, _1, ...); '
                    'a .gif is written next to every .mp4.')
flags.DEFINE_integer('num_frames', None, 'Frames (1 + 4k with a causal VAE); default from the config.')
flags.DEFINE_integer('height', None, 'Height in pixels; default from the config.')
flags.DEFINE_integer('width', None, 'Width in pixels; default from the config.')
flags.DEFINE_integer('steps', None, 'Sampling steps; default from the config.')
flags.DEFINE_float('guidance_scale', None, 'Classifier-free guidance scale.')
flags.DEFINE_float('skip_guidance_scale', None, 'Skip-layer guidance scale (0: off); default from '
                   'the config.')
flags.DEFINE_list('skip_layers', None, 'DiT blocks skipped by skip-layer guidance, e.g. 2,3.')
flags.DEFINE_string('negative_prompt', None, 'Negative prompt (default: the config\'s, else empty).')
flags.DEFINE_string('sampler', None, 'euler | heun | unipc | dpmpp_2m.')
flags.DEFINE_float('shift', None, 'Timestep shift.')
flags.DEFINE_integer('seed', 0, 'Random seed.')
flags.DEFINE_string('mode', 't2v', 't2v | t2i | i2v | extend | extend_backward | connect | loop | v2v.')
flags.DEFINE_string('image', None, 'Image file for i2v / loop.')
flags.DEFINE_multi_string('video', None, 'Video file for extend / v2v (twice for connect: head, tail).')
flags.DEFINE_float('strength', 0.7, 'v2v: how much of the input video is re-generated (0..1).')
flags.DEFINE_bool('ema', True, 'Sample the EMA parameters.')
flags.DEFINE_integer('display_scale', None, 'Upscale written videos (nearest); default config.sample.display_scale.')
flags.mark_flags_as_required(['checkpoint', 'prompt'])


def main(argv):
    del argv
    import numpy as np
    from sora_jax.io import video as video_io
    from sora_jax.pipeline import TextToVideo

    F = flags.FLAGS
    if os.path.isfile(os.path.join(F.checkpoint, 'transformer', 'config.json')):
        config = F.config
        if config is None:
            from configs import wan21
            config = wan21.get_config('t2v_1.3b')
        pipe = TextToVideo.from_wan(F.checkpoint, config)
    else:
        pipe = TextToVideo.from_checkpoint(F.checkpoint, ema=F.ema)
    s = pipe.config.sample
    height = F.height or s.height
    width = F.width or s.width
    image = video = None
    if F.image:
        image = video_io.read_image(F.image, height=height, width=width)
    if F.video:
        vids = [video_io.resize_video(video_io.read_video(v), height, width) for v in F.video]
        video = tuple(vids) if F.mode == 'connect' else vids[0]
    frames = pipe(F.prompt, num_frames=F.num_frames, height=height, width=width,
                  num_inference_steps=F.steps, guidance_scale=F.guidance_scale,
                  negative_prompt=F.negative_prompt, sampler=F.sampler, shift=F.shift,
                  seed=F.seed, mode=F.mode, image=image, video=video, strength=F.strength,
                  skip_guidance_scale=F.skip_guidance_scale,
                  skip_layers=None if F.skip_layers is None else [int(i) for i in F.skip_layers])
    root, ext = os.path.splitext(F.out)
    scale = int(F.display_scale or s.get('display_scale', 1))
    if scale > 1:  # nearest-neighbour upscale so tiny demo clips are watchable
        frames = np.repeat(np.repeat(frames, scale, axis=2), scale, axis=3)
    for i, clip in enumerate(frames):
        base = root if len(frames) == 1 else f'{root}_{i}'
        path = video_io.write_video(base + (ext or '.mp4'), clip, fps=s.fps)
        print(f'wrote {path} ({clip.shape[0]} frames, {clip.shape[1]}x{clip.shape[2]})', flush=True)
        if ext != '.gif':
            gif = video_io.write_video(base + '.gif', clip, fps=s.fps)
            print(f'wrote {gif}', flush=True)


if __name__ == '__main__':
    app.run(main)
