"""Video files in and out: mediapy over the ffmpeg binary shipped by imageio-ffmpeg.

Frames are uint8 `[T, H, W, 3]` on disk and in memory; models work in float
`[-1, 1]` (`to_float` / `to_uint8` convert). Containers are chosen by file
extension: `.mp4` (h264, lossy), `.gif` (palette, lossy in colour), `.webm`
(vp9); `VideoStream` writes a video piece by piece as its frames come (a long rollout);
`write_image` writes one frame as `.png` (lossless) or `.jpg`. Reading anything that is not a decodable video raises `ValueError`
naming the file and ffmpeg's complaint.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import re
from typing import Any

import imageio_ffmpeg
import mediapy
import numpy as np

_CODECS = {'.mp4': 'h264', '.gif': 'gif', '.webm': 'vp9'}
VIDEO_EXTENSIONS = tuple(_CODECS)
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')
_ffmpeg_configured = False


def _configure_ffmpeg() -> None:
    """Points mediapy at imageio-ffmpeg's static ffmpeg (once per process)."""
    global _ffmpeg_configured
    if not _ffmpeg_configured:
        mediapy.set_ffmpeg(imageio_ffmpeg.get_ffmpeg_exe())
        _ffmpeg_configured = True


def _ffmpeg_complaint(err: Exception) -> str:
    """The informative last line(s) of an ffmpeg failure, without the banner."""
    lines = [l.strip() for l in str(err).splitlines() if l.strip()]
    # ffmpeg puts the actual error after the banner and the input description.
    useful = [
        l
        for l in lines
        if not re.match(r'(ffmpeg version|built with|configuration:|lib\w+\s+\d|Copyright)', l)
    ]
    tail = useful[-2:] if useful else lines[-1:]
    return ' | '.join(tail)[-300:]


def to_float(video: np.ndarray) -> np.ndarray:
    """uint8 `[..., 3]` in [0, 255] -> float32 in [-1, 1]."""
    video = np.asarray(video)
    if video.dtype != np.uint8:
        raise ValueError(
            f'to_float expects uint8 frames, got dtype {video.dtype}; pass the raw decoded frames.'
        )
    return video.astype(np.float32) * (2.0 / 255.0) - 1.0


def to_uint8(video: Any) -> np.ndarray:
    """float in [-1, 1] (numpy or jax array) -> uint8 in [0, 255], clipped, rounded."""
    video = np.asarray(video, dtype=np.float32)
    return np.clip(np.round((video + 1.0) * 127.5), 0, 255).astype(np.uint8)


def _check_frames(frames: Any) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f'frames must be [T, H, W, 3] with T >= 1, got shape {frames.shape}.')
    if frames.dtype != np.uint8:
        if np.issubdtype(frames.dtype, np.floating) and frames.min() >= -1.0 - 1e-3:
            raise ValueError(
                f'frames must be uint8, got {frames.dtype}; convert float '
                '[-1, 1] frames with sora_jax.io.video.to_uint8 first.'
            )
        raise ValueError(f'frames must be uint8, got dtype {frames.dtype}.')
    return frames


_FFMPEG_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


@contextlib.contextmanager
def _disk_errors(path: pathlib.Path):
    """ffmpeg reports a full (or read-only, over-quota) disk as text in mediapy's RuntimeError
    or as a broken pipe: re-raised as the OSError it is, so the CLIs say so in one line."""
    try:
        yield
    except (RuntimeError, BrokenPipeError) as e:
        text = str(e)
        for code in _FFMPEG_DISK_ERRORS:
            if os.strerror(code) in text:
                raise OSError(code, f'{os.strerror(code)} while writing {path}', str(path)) from e
        raise


def write_video(path: str | os.PathLike, frames: Any, fps: float = 8.0) -> pathlib.Path:
    """Writes uint8 `[T, H, W, 3]` frames; codec from the extension; makes parent dirs."""
    path = pathlib.Path(path)
    codec = _CODECS.get(path.suffix.lower())
    if codec is None:
        raise ValueError(
            f'Unsupported video extension {path.suffix!r} for {path}; use one of {sorted(_CODECS)}.'
        )
    if fps <= 0:
        raise ValueError(f'fps must be > 0, got {fps}.')
    frames = _check_frames(frames)
    _configure_ffmpeg()
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {} if codec == 'h264' else {'codec': codec}
    if codec == 'h264':
        kwargs['crf'] = 18  # near-transparent quality; tiny clips stay small anyway
    with _disk_errors(path):
        mediapy.write_video(path, frames, fps=fps, **kwargs)
    return path


class VideoStream:
    """A video written as its frames come: an open ffmpeg pipe (`mediapy.VideoWriter`, the
    encoder `write_video` uses, with the same codec and quality), so a long rollout never holds
    its frames. `add` takes uint8 [T, H, W, 3] pieces (T may vary); `close` finishes the file
    and returns the frames written; `abort` stops ffmpeg and removes the file.

        with VideoStream(tmp, fps=16) as out:    # a reserved temporary name (io/outputs.py)
            for piece in pieces:
                out.add(piece)
    """

    def __init__(self, path: str | os.PathLike, fps: float = 8.0):
        self.path = pathlib.Path(path)
        self.codec = _CODECS.get(self.path.suffix.lower())
        if self.codec is None:
            raise ValueError(
                f'Unsupported video extension {self.path.suffix!r} for {self.path}; use one of '
                f'{sorted(_CODECS)}.'
            )
        if fps <= 0:
            raise ValueError(f'fps must be > 0, got {fps}.')
        self.fps = float(fps)
        self.frames = 0
        self._writer = None
        self._shape = None

    def add(self, frames: Any) -> None:
        frames = _check_frames(frames)
        if self._writer is None:
            _configure_ffmpeg()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            kwargs = {'crf': 18} if self.codec == 'h264' else {}
            self._shape = frames.shape[1:3]
            self._writer = mediapy.VideoWriter(
                self.path, self._shape, codec=self.codec, fps=self.fps, **kwargs
            )
            self._writer.__enter__()
        if frames.shape[1:3] != self._shape:
            raise ValueError(
                f'frames of {frames.shape[1:3]} px added to a {self._shape} video {self.path}.'
            )
        with _disk_errors(self.path):
            for frame in frames:
                self._writer.add_image(frame)
        self.frames += len(frames)

    def close(self) -> int:
        """Finishes the file (ValueError if no frame was added); returns its frame count."""
        if self._writer is None:
            raise ValueError(f'no frame was added to {self.path}; nothing to write.')
        writer, self._writer = self._writer, None
        with _disk_errors(self.path):
            writer.close()
        return self.frames

    def abort(self) -> None:
        """Stops the encoder and removes the file."""
        writer, self._writer = self._writer, None
        if writer is not None:
            proc = getattr(writer, '_proc', None)
            if proc is not None:
                proc.kill()
            with contextlib.suppress(Exception):  # ffmpeg was killed: its error is expected
                writer.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> 'VideoStream':
        return self

    def __exit__(self, exc_type, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_image(path: str | os.PathLike, image: Any) -> pathlib.Path:
    """Writes a uint8 `[H, W, 3]` image (`.png` lossless, `.jpg` quality 95); makes parent dirs."""
    path = pathlib.Path(path)
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise ValueError(
            f'Unsupported image extension {path.suffix!r} for {path}; '
            f'use one of {list(IMAGE_EXTENSIONS)}.'
        )
    image = _check_frames(np.asarray(image)[None])[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == '.png':
        mediapy.write_image(path, image, fmt='png')
    else:
        mediapy.write_image(path, image, fmt='jpeg', quality=95)
    return path


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Reads a video file into uint8 `[T, H, W, 3]`.

    Raises:
      ValueError: if the file is missing, empty, or ffmpeg cannot decode it
        (not a video, truncated container, ...).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f'Video file {str(path)!r} does not exist; check the path.')
    if path.stat().st_size == 0:
        raise ValueError(f'Video file {str(path)!r} is empty (0 bytes); re-export it.')
    _configure_ffmpeg()
    try:
        video = mediapy.read_video(path)
    except (RuntimeError, OSError, ValueError) as e:
        raise ValueError(
            f'Cannot decode video {str(path)!r} (corrupt, truncated or '
            f'not a video): {_ffmpeg_complaint(e)}'
        ) from e
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[0] == 0:
        raise ValueError(
            f'Video {str(path)!r} decoded to no frames (shape {video.shape}); '
            'the file is probably truncated.'
        )
    return video.astype(np.uint8, copy=False)


def video_fps(path: str | os.PathLike) -> float:
    """Frame rate stored in the container header."""
    path = pathlib.Path(path)
    _configure_ffmpeg()
    try:
        with mediapy.VideoReader(path) as reader:
            return float(reader.fps)
    except (RuntimeError, OSError) as e:
        raise ValueError(f'Cannot read the header of {str(path)!r}: {_ffmpeg_complaint(e)}') from e


def show_video(
    frames: Any, *, fps: float = 8.0, title: str | None = None, codec: str = 'h264', **kwargs: Any
) -> str | None:
    """Displays uint8 (or float [-1, 1]) frames inline in a notebook (mediapy)."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        frames = to_uint8(frames)
    _configure_ffmpeg()
    return mediapy.show_video(frames, fps=fps, title=title, codec=codec, **kwargs)


def show_videos(
    videos: Any, *, fps: float = 8.0, titles: Any = None, codec: str = 'h264', **kwargs: Any
) -> str | None:
    """Displays several videos side by side (uint8 or float [-1, 1])."""
    videos = [np.asarray(v) if np.asarray(v).dtype == np.uint8 else to_uint8(v) for v in videos]
    _configure_ffmpeg()
    return mediapy.show_videos(videos, fps=fps, titles=titles, codec=codec, **kwargs)


def read_image(
    path: str | os.PathLike, *, height: int | None = None, width: int | None = None
) -> np.ndarray:
    """Reads an image (png/jpg/...) into uint8 `[H, W, 3]`, resized to (height, width) if given."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f'Image file {str(path)!r} does not exist; check the path.')
    try:
        image = np.asarray(mediapy.read_image(path))
    except Exception as e:  # PIL raises several types for undecodable files
        raise ValueError(f'Cannot decode image {str(path)!r}: {e}') from e
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, -1)
    image = image[..., :3]
    if height and width and image.shape[:2] != (height, width):
        image = to_uint8(mediapy.resize_image(to_float(image), (height, width)))
    return image.astype(np.uint8, copy=False)


def resize_video(frames: Any, height: int, width: int) -> np.ndarray:
    """uint8 `[T, H, W, 3]` -> uint8 `[T, height, width, 3]` (Lanczos via mediapy)."""
    frames = np.asarray(frames)
    if frames.shape[1:3] == (height, width):
        return frames
    return to_uint8(mediapy.resize_video(to_float(frames), (height, width)))
