"""Output checks: a sample of every generated video's frames goes through an image classifier
before anything is written; a refusal names the category and nothing is written.

    check = configured()                    # $SORA_JAX_OUTPUT_CHECK: auto | nudenet | FOLDER | off
    enforce(frames, check)                  # frames: uint8 [B, T, H, W, 3]; raises OutputRefused

Detectors (`FrameClassifier.check(images) -> list[FrameVerdict]`, images uint8 [N, H, W, 3]):
- `NudeNetDetector`: NudeNet 3.4 (pip install nudenet, or sora_jax[nsfw]); its YOLOv8 weights
  ship inside the package. Its licence file is the AGPL-3.0 (the package metadata says MIT),
  so it stays an optional extra and is never a core dependency. A frame is refused when an
  exposed-nudity class scores >= `threshold` (category 'sexual_content').
- `ImageClassifierFolder`: any transformers image-classification folder the user downloaded
  (e.g. Falconsai/nsfw_image_detection, Apache-2.0: labels 'normal' / 'nsfw'); a frame is
  refused when an unsafe label's probability is >= `threshold`.

`configured()` reads $SORA_JAX_OUTPUT_CHECK: 'auto' (the default) uses NudeNet when it is
installed and otherwise returns None after one warning (the core install ships no detector);
'nudenet'; a folder path; 'off'. `sample_indices` picks the frames checked: `frames_per_clip`
evenly spaced, first and last included. docs/moderation.md has the false-positive and cost
figures.
"""

from __future__ import annotations

import functools
import os
import time
from typing import NamedTuple, Protocol

import numpy as np
from absl import logging

from sora_jax.safety.moderation import PromptRefused

OUTPUT_CHECK_ENV = 'SORA_JAX_OUTPUT_CHECK'
NUDENET_UNSAFE = frozenset(
    {
        'FEMALE_GENITALIA_EXPOSED',
        'MALE_GENITALIA_EXPOSED',
        'FEMALE_BREAST_EXPOSED',
        'BUTTOCKS_EXPOSED',
        'ANUS_EXPOSED',
    }
)
DEFAULT_UNSAFE_LABELS = frozenset({'nsfw', 'porn', 'hentai', 'sexy', 'unsafe', 'gore', 'violence'})


class OutputRefused(PromptRefused):
    """A generated video the output check refuses; nothing was written."""

    def __init__(self, category: str, clip: int, frame: int, label: str, score: float, by: str):
        self.category, self.clip, self.frame, self.label, self.score = (
            category,
            clip,
            frame,
            label,
            score,
        )
        self.description, self.match = f'output check ({by})', f'{label} {score:.2f}'
        ValueError.__init__(
            self,
            f'Output refused by the output check ({by}): category {category!r}, clip {clip} '
            f'frame {frame}: {label} scored {score:.2f}. Nothing was written; rephrase the '
            f'prompt (or set ${OUTPUT_CHECK_ENV}=off to turn the check off, logged).',
        )


class FrameVerdict(NamedTuple):
    allowed: bool
    category: str | None = None
    label: str | None = None
    score: float = 0.0


class FrameClassifier(Protocol):
    name: str

    def check(self, images: np.ndarray) -> list[FrameVerdict]: ...


class NudeNetDetector:
    """NudeNet's shipped detector (AGPL-3.0 licence file: an optional extra only)."""

    name = 'nudenet'

    def __init__(self, threshold: float = 0.5, unsafe: frozenset = NUDENET_UNSAFE):
        try:
            from nudenet import NudeDetector
        except ImportError as e:
            raise ValueError(
                f'the NudeNet output check needs the nudenet package ({e}); pip install nudenet '
                f'(AGPL-3.0, optional), or set ${OUTPUT_CHECK_ENV} to a transformers '
                'image-classification folder or to off.'
            ) from e
        self.detector, self.threshold, self.unsafe = NudeDetector(), threshold, unsafe

    def check(self, images: np.ndarray) -> list[FrameVerdict]:
        # NudeNet's own path reads files with OpenCV (BGR): give it the frames the same way.
        dets = self.detector.detect_batch([np.ascontiguousarray(im[..., ::-1]) for im in images])
        out = []
        for d in dets:
            bad = [x for x in d if x['class'] in self.unsafe and x['score'] >= self.threshold]
            if bad:
                top = max(bad, key=lambda x: x['score'])
                out.append(FrameVerdict(False, 'sexual_content', top['class'], top['score']))
            else:
                out.append(FrameVerdict(True, score=max((x['score'] for x in d), default=0.0)))
        return out


class ImageClassifierFolder:
    """A transformers image-classification model from a local folder (torch, lazily)."""

    name = 'image_classifier'

    def __init__(
        self,
        path: str | os.PathLike,
        threshold: float = 0.5,
        unsafe_labels: frozenset = DEFAULT_UNSAFE_LABELS,
        device: str = 'cpu',
    ):
        path = os.fspath(path)
        if not os.path.isfile(os.path.join(path, 'config.json')):
            raise ValueError(
                f'output classifier folder {path!r} has no config.json; download an image-'
                'classification model (e.g. Falconsai/nsfw_image_detection) to a folder and '
                f'pass it (${OUTPUT_CHECK_ENV}=FOLDER).'
            )
        try:
            import torch
            from transformers import AutoImageProcessor, AutoModelForImageClassification
        except ImportError as e:
            raise ValueError(
                f'the output classifier needs torch and transformers ({e}); pip install -e '
                f'".[test]", or set ${OUTPUT_CHECK_ENV}=off.'
            ) from e
        self.torch, self.device, self.threshold = torch, device, threshold
        self.processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForImageClassification.from_pretrained(path, local_files_only=True)
        self.model.to(device).eval()
        labels = {int(i): str(n).lower() for i, n in self.model.config.id2label.items()}
        self.unsafe = {i: n for i, n in labels.items() if n in unsafe_labels}
        if not self.unsafe:
            raise ValueError(
                f'output classifier {path!r}: none of its labels {sorted(labels.values())} is an '
                f'unsafe label {sorted(unsafe_labels)}; pass unsafe_labels=.'
            )

    def check(self, images: np.ndarray) -> list[FrameVerdict]:
        inputs = self.processor(images=list(images), return_tensors='pt').to(self.device)
        with self.torch.no_grad():
            probs = self.torch.softmax(self.model(**inputs).logits.float(), dim=-1).numpy()
        out = []
        for p in probs:
            i = max(self.unsafe, key=lambda k: p[k])
            if p[i] >= self.threshold:
                out.append(
                    FrameVerdict(False, _category(self.unsafe[i]), self.unsafe[i], float(p[i]))
                )
            else:
                out.append(FrameVerdict(True, score=float(p[i])))
        return out


def _category(label: str) -> str:
    return 'graphic_violence' if label in ('gore', 'violence') else 'sexual_content'


def sample_indices(num_frames: int, frames_per_clip: int = 4) -> list[int]:
    """`frames_per_clip` frame indices evenly spaced over [0, num_frames - 1], ends included."""
    if num_frames < 1 or frames_per_clip < 1:
        raise ValueError(
            f'num_frames={num_frames} and frames_per_clip={frames_per_clip} must be >= 1.'
        )
    k = min(frames_per_clip, num_frames)
    return sorted({int(round(x)) for x in np.linspace(0, num_frames - 1, k)})


class ClipVerdict(NamedTuple):
    allowed: bool
    frames: tuple  # the checked frame indices
    verdicts: tuple  # FrameVerdict per checked frame


def check_videos(frames: np.ndarray, detector: FrameClassifier, frames_per_clip: int = 4):
    """One ClipVerdict per clip of uint8 frames [B, T, H, W, 3] (or one clip [T, H, W, 3])."""
    frames = np.asarray(frames)
    if frames.ndim == 4:
        frames = frames[None]
    if frames.ndim != 5 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(
            f'output check needs uint8 frames [B, T, H, W, 3], got {frames.dtype} {frames.shape}.'
        )
    idx = sample_indices(frames.shape[1], frames_per_clip)
    flat = frames[:, idx].reshape(-1, *frames.shape[2:])  # [B * k, H, W, 3]
    vs = detector.check(flat)
    k = len(idx)
    out = []
    for b in range(frames.shape[0]):
        mine = tuple(vs[b * k : (b + 1) * k])
        out.append(ClipVerdict(all(v.allowed for v in mine), tuple(idx), mine))
    return out


def enforce(frames: np.ndarray, detector: FrameClassifier | None, frames_per_clip: int = 4):
    """Raises OutputRefused for the first refused clip; returns the ClipVerdicts ([] when
    `detector` is None, i.e. no output check configured)."""
    if detector is None:
        return []
    t0 = time.perf_counter()
    verdicts = check_videos(frames, detector, frames_per_clip)
    logging.info('output check (%s): %.3f s', detector.name, time.perf_counter() - t0)
    for b, cv in enumerate(verdicts):
        if not cv.allowed:
            j = next(i for i, v in enumerate(cv.verdicts) if not v.allowed)
            v = cv.verdicts[j]
            raise OutputRefused(v.category, b, cv.frames[j], v.label, v.score, detector.name)
    return verdicts


@functools.lru_cache(maxsize=4)
def _build(spec: str) -> FrameClassifier | None:
    if spec == 'off':
        logging.warning('The output check is OFF ($%s=off).', OUTPUT_CHECK_ENV)
        return None
    if spec == 'auto':
        try:
            import nudenet  # noqa: F401
        except ImportError:
            logging.warning(
                'No output classifier is installed, so generated frames are not checked: '
                'pip install nudenet (AGPL-3.0, optional) or set $%s to a transformers '
                'image-classification folder.',
                OUTPUT_CHECK_ENV,
            )
            return None
        return NudeNetDetector()
    if spec == 'nudenet':
        return NudeNetDetector()
    return ImageClassifierFolder(spec)


def configured(spec: str | None = None) -> FrameClassifier | None:
    """The output classifier `spec` (else $SORA_JAX_OUTPUT_CHECK, else 'auto') names, built
    once; None when off or when 'auto' finds none installed."""
    return _build(spec or os.environ.get(OUTPUT_CHECK_ENV) or 'auto')


def check_output(frames: np.ndarray, spec: str | None = None, frames_per_clip: int = 4):
    """The one call for the pipeline's finish stage / the CLI before writing: `enforce` with
    the configured detector."""
    return enforce(frames, configured(spec), frames_per_clip)
