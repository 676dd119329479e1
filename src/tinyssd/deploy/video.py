"""Videos for predict: decoded frame by frame with PyAV (FFmpeg), detected in batches, drawn into a new video.

PyAV is the ``video`` extra (in ``requirements.txt``); pictures need nothing of it. Frames are
decoded one at a time and detected ``batch_size`` at a time, so memory stays flat for any
length; ``vid_stride=N`` keeps every N-th frame. The annotated video holds the kept frames at
the source's frame rate divided by the stride, encoded as H.264 (``yuv420p``, which needs an
even width and height: an odd side gets one black row or column).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tinyssd.deploy.detector import Detections, Detector
from tinyssd.errors import DataError

__all__ = ["VIDEO_CODEC", "predict_video", "read_frames"]

VIDEO_CODEC = "libx264"


def _av() -> Any:
    try:
        import av
    except ImportError as err:
        raise DataError(
            "reading videos needs PyAV, which is not installed; pip install av (or the clone's requirements.txt, "
            "or tinyssd[video])."
        ) from err
    return av


def read_frames(path: Path, vid_stride: int = 1) -> Iterator[tuple[int, float, Tensor, Fraction]]:
    """``(frame index, time in seconds, (3, H, W) uint8 RGB, frame rate)`` for every ``vid_stride``-th frame."""
    av = _av()
    try:
        container = av.open(os.fspath(path))
    except (av.error.FFmpegError, OSError) as err:
        raise DataError(f"{path} cannot be opened as a video ({err}).") from err
    with container:
        if not container.streams.video:
            raise DataError(f"{path} holds no video stream.")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        index = -1
        try:
            for index, frame in enumerate(container.decode(stream)):
                if index % vid_stride:
                    continue
                time = float(frame.time) if frame.time is not None else index / float(rate)
                yield index, time, torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1), rate
        except av.error.FFmpegError as err:
            raise DataError(f"{path} could not be decoded after frame {index} ({err}).") from err


class _Writer:
    """An H.264 file written frame by frame (opened on the first frame, when its size is known)."""

    def __init__(self, path: Path, rate: Fraction) -> None:
        self.path, self.rate, self.container, self.stream = path, rate, None, None

    def write(self, image: Tensor) -> None:
        av = _av()
        height, width = image.shape[-2:]
        if self.container is None:
            self.container = av.open(os.fspath(self.path), mode="w", format="mp4")
            self.stream = self.container.add_stream(VIDEO_CODEC, rate=self.rate)
            self.stream.width, self.stream.height = width + width % 2, height + height % 2
            self.stream.pix_fmt = "yuv420p"
        pad = (0, self.stream.width - width, 0, self.stream.height - height)
        image = torch.nn.functional.pad(image, pad) if any(pad) else image
        frame = av.VideoFrame.from_ndarray(image.permute(1, 2, 0).contiguous().numpy(), format="rgb24")
        self.container.mux(self.stream.encode(frame))

    def close(self) -> None:
        if self.container is not None:
            self.container.mux(self.stream.encode())  # flush the encoder's delayed frames
            self.container.close()


def predict_video(
    detector: Detector,
    path: Path,
    annotated: Path | None,
    batch_size: int = 16,
    vid_stride: int = 1,
    on_frame: Callable[[int, Tensor, Detections], None] | None = None,
    entry: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Detect in every ``vid_stride``-th frame of ``path``; returns its report entry (``entry``, filled
    frame by frame when given: an interrupted run reports the frames it finished).

    ``annotated``: where the video with the detections drawn goes (written to a temporary name in
    the same folder and renamed when complete), or None. ``on_frame(index, frame, detections)``
    is called for each kept frame (labels, crops).
    """
    frames: list[dict[str, Any]] = []
    entry = {} if entry is None else entry
    entry.update(path=str(path), vid_stride=vid_stride, frames=frames)
    partial = annotated.with_name(f".{annotated.name}.partial") if annotated is not None else None
    writer = None
    batch: list[tuple[int, float, Tensor]] = []

    def flush() -> None:
        results = detector.predict([image for _, _, image in batch], batch_size=batch_size)
        for (index, time, image), dets in zip(batch, results, strict=True):
            frames.append(
                {
                    "frame": index,
                    "time": round(time, 4),
                    "width": dets.width,
                    "height": dets.height,
                    "detections": dets.to_list(),
                }
            )
            if writer is not None:
                writer.write(detector.draw(image, dets))
            if on_frame is not None:
                on_frame(index, image, dets)
        batch.clear()

    try:
        for index, time, image, rate in read_frames(path, vid_stride):
            if writer is None and partial is not None:
                entry["fps"] = float(rate)
                writer = _Writer(partial, rate / vid_stride)
            batch.append((index, time, image))
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
        if writer is not None:
            writer.close()
            os.replace(partial, annotated)
            entry["annotated"] = str(annotated)
    finally:
        if partial is not None and partial.exists():  # stopped or failed: no half-written video is left
            if writer is not None and writer.container is not None:
                writer.container.close()
            partial.unlink()
    if not frames:
        raise DataError(f"{path} holds no frames that could be decoded.")
    return entry
