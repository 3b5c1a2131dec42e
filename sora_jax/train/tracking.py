"""Experiment tracking: one `Tracker` per run sends scalars, videos and the config to the
backends named by `config.train.log_to` ('tensorboard', 'wandb'), from process 0 only.

  tracker = Tracker(workdir, config)          # tensorboard: workdir/tb (tensorboardX)
  tracker.write_config(config)                # once: text summary 'config' + TensorBoard hparams
  tracker.scalars(step, {'loss': 0.12})       # also appended to workdir/metrics.jsonl
  tracker.videos(step, {'samples/0': frames}) # uint8 [T, H, W, 3] -> an animated GIF
  tracker.close()

Videos are animated GIFs in an image summary: TensorBoard's images tab shows the GIF, which the
browser animates (what tensorboardX's `add_video` writes, without its moviepy dependency). The
GIFs are also written to `workdir/samples/<step>/<name>.gif`, where wandb picks them up as
`wandb.Video` and notebooks read them. Weights & Biases is optional (not a core dependency):
`log_to` naming 'wandb' without it installed is a ValueError; its run lives in `workdir/wandb`
(set WANDB_MODE=offline to log without an account).
"""

from __future__ import annotations

import io
import json
import re
from typing import Any, Mapping

import numpy as np
from etils import epath

BACKENDS = ('tensorboard', 'wandb')


def backends_of(config) -> tuple[str, ...]:
    """config.train.log_to as a tuple of backend names (a string is one name); ValueError
    naming the key for an unknown backend."""
    log_to = config.train.get('log_to', ('tensorboard',))
    names = (log_to,) if isinstance(log_to, str) else tuple(log_to)
    for n in names:
        if n not in BACKENDS:
            raise ValueError(
                f'train.log_to={log_to!r}: {n!r} is not one of {BACKENDS}; use e.g. '
                "--config.train.log_to=\"('tensorboard', 'wandb')\"."
            )
    return names


def flat_config(config) -> dict[str, Any]:
    """{'train.learning_rate': 3e-4, ...}: every leaf as int / float / str / bool (tuples and
    None as their repr), the form TensorBoard hparams and wandb config take."""
    out: dict[str, Any] = {}

    def walk(d: Mapping, prefix: str):
        for k, v in d.items():
            key = f'{prefix}{k}'
            if isinstance(v, Mapping):
                walk(v, key + '.')
            elif isinstance(v, (bool, int, float, str)):
                out[key] = v
            else:
                out[key] = repr(v)

    walk(config.to_dict() if hasattr(config, 'to_dict') else config, '')
    return out


def gif_bytes(frames: np.ndarray, fps: int = 8, scale: int = 1) -> bytes:
    """uint8 [T, H, W, 3] -> an animated GIF that loops (nearest upscaling by `scale`)."""
    from PIL import Image

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f'frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}.')
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    images[0].save(
        buf,
        format='GIF',
        save_all=True,
        append_images=images[1:],
        duration=max(1, round(1000 / fps)),
        loop=0,
    )
    return buf.getvalue()


def _safe(name: str) -> str:
    return re.sub(r'[^A-Za-z0-9_.-]+', '_', name).strip('_') or 'video'


class Tracker:
    """Writes one run's scalars, videos and config to TensorBoard and/or wandb (process 0)."""

    def __init__(
        self,
        workdir,
        config,
        *,
        enabled: bool = True,
        run_name: str | None = None,
        start_step: int = 0,
    ):
        """`start_step`: the step the run resumes from; metrics.jsonl lines after it (logged by
        a run killed before its next checkpoint) are dropped, so the file follows the
        checkpoints as TensorBoard does."""
        self.workdir = epath.Path(workdir)
        self.backends = backends_of(config)
        self.enabled = enabled
        self._tb = self._wandb = None
        if not enabled:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        kept = [m for m in read_metrics(self.workdir) if m['step'] <= start_step]
        (self.workdir / 'metrics.jsonl').write_text(''.join(json.dumps(m) + '\n' for m in kept))
        if 'tensorboard' in self.backends:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.workdir / 'tb'))
        if 'wandb' in self.backends:
            try:
                import wandb
            except ImportError as e:
                raise ValueError(
                    "train.log_to names 'wandb' but wandb is not installed; "
                    'pip install wandb, or drop it from train.log_to.'
                ) from e
            (self.workdir / 'wandb').mkdir(parents=True, exist_ok=True)
            self._wandb = wandb.init(
                project=config.train.get('wandb_project', 'sora_jax') or 'sora_jax',
                name=run_name or self.workdir.name,
                dir=str(self.workdir),
                id=_wandb_id(self.workdir),
                resume='allow',
                config=flat_config(config),
            )

    def write_config(self, config, metrics: tuple[str, ...] = ('loss', 'eval/loss')) -> None:
        """The config once: as text ('config', the ConfigDict's repr) and as TensorBoard hparams
        (every flattened key, with `metrics` as the hparams metrics)."""
        if not self.enabled or self._tb is None:
            return
        from tensorboardX.summary import hparams

        self._tb.add_text('config', '```\n' + str(config) + '\n```', 0)
        exp, ssi, sei = hparams(flat_config(config), {m: 0.0 for m in metrics})
        for summary in (exp, ssi, sei):
            self._tb.file_writer.add_summary(summary)
        self._tb.flush()

    def scalars(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled or not metrics:
            return
        metrics = {k: float(v) for k, v in metrics.items()}
        with (self.workdir / 'metrics.jsonl').open('a') as f:
            f.write(json.dumps({'step': int(step), **metrics}) + '\n')
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(metrics, step=int(step))

    def videos(
        self,
        step: int,
        videos: Mapping[str, np.ndarray],
        *,
        fps: int = 8,
        scale: int = 1,
        captions: Mapping[str, str] | None = None,
    ) -> list[epath.Path]:
        """Each uint8 [T, H, W, 3] video as an animated GIF summary (tag = its name) and a file
        `samples/<step>/<name>.gif`; returns the files."""
        if not self.enabled or not videos:
            return []
        from tensorboardX.proto.summary_pb2 import Summary

        out_dir = self.workdir / 'samples' / str(int(step))
        out_dir.mkdir(parents=True, exist_ok=True)
        paths, logged = [], {}
        for name, frames in videos.items():
            gif = gif_bytes(frames, fps=fps, scale=scale)
            path = out_dir / f'{_safe(name)}.gif'
            path.write_bytes(gif)
            paths.append(path)
            t, h, w, _ = np.asarray(frames).shape
            if self._tb is not None:
                img = Summary.Image(
                    height=h * scale, width=w * scale, colorspace=3, encoded_image_string=gif
                )
                self._tb.file_writer.add_summary(
                    Summary(value=[Summary.Value(tag=name, image=img)]), step
                )
            if self._wandb is not None:
                import wandb

                logged[name] = wandb.Video(
                    str(path), format='gif', caption=(captions or {}).get(name)
                )
        if self._tb is not None and captions:
            self._tb.add_text(
                'samples/prompts', '\n\n'.join(f'{k}: {v}' for k, v in captions.items()), step
            )
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(logged, step=int(step))
        return paths

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        self._tb = self._wandb = None


def _wandb_id(workdir: epath.Path) -> str:
    """A stable run id per workdir (stored in workdir/wandb/run_id), so a resumed run continues
    the same wandb run."""
    f = workdir / 'wandb' / 'run_id'
    if f.exists():
        return f.read_text().strip()
    import uuid

    rid = uuid.uuid4().hex[:12]
    f.write_text(rid)
    return rid


def read_metrics(workdir) -> list[dict[str, float]]:
    """The run's metrics.jsonl as a list of {'step', ...} dicts ([] when absent)."""
    f = epath.Path(workdir) / 'metrics.jsonl'
    if not f.exists():
        return []
    return [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
