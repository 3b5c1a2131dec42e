"""TextToVideo seconds per clip: a trained checkpoint (its VAE decode included) or a randomly
initialised configs/shapes.py model.

  figures = run(SampleBench(checkpoint='checkpoints/shapes', steps=10))
"""

from __future__ import annotations

import dataclasses
import time

from sora_jax.bench import machine, timing


@dataclasses.dataclass(frozen=True)
class SampleBench:
    """What to time (the defaults are `experiments/benchmark.py sample`'s)."""

    config: str = 'dit_pixel'  # configs/shapes.py ARG of a random model (without `checkpoint`)
    checkpoint: str | None = None  # time this trained checkpoint instead
    steps: int = 10  # sampling steps
    frames: int = 0  # frames per clip (0: the config default)
    size: int = 0  # height = width in pixels (0: the config default)
    rounds: int = 5  # timed calls (the best counts)


PROMPT = 'a red circle moving to the left'


def run(opts: SampleBench) -> dict:
    """Compile time, then the best of `rounds` calls: seconds per clip and per step."""
    import jax

    from sora_jax import config_files
    from sora_jax.pipeline import TextToVideo

    if opts.checkpoint:
        pipe = TextToVideo.from_checkpoint(opts.checkpoint)
        name = opts.checkpoint
    else:
        config = config_files.load(f'configs/shapes.py:{opts.config}')
        pipe = TextToVideo.from_config(config, seed=0)
        name = f'configs/shapes.py:{opts.config} (random init)'
    config = pipe.config
    frames = opts.frames or config.sample.num_frames
    size = opts.size or config.sample.height
    kw = dict(
        num_frames=frames,
        height=size,
        width=size,
        num_inference_steps=opts.steps,
        seed=0,
        progress=False,
    )
    t0 = time.perf_counter()
    first = pipe(PROMPT, **kw)
    first_s = time.perf_counter() - t0
    clip_s = timing.best_s(lambda: pipe(PROMPT, **kw), opts.rounds, 1)
    n_params = sum(a.size for a in jax.tree.leaves(pipe.params))
    return dict(
        device=str(jax.devices()[0].device_kind),
        model=name,
        vae=pipe.vae is not None,
        params=int(n_params),
        frames=frames,
        size=size,
        steps=opts.steps,
        sampler=config.sample.sampler,
        output_shape=list(first.shape),
        first_call_s=first_s,
        compile_s=max(first_s - clip_s, 0.0),
        seconds_per_clip=clip_s,
        seconds_per_step=clip_s / opts.steps,
        rss_peak_bytes=machine.rss_bytes(),
    )
