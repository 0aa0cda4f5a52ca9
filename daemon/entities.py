"""Records passed between stages. Stages talk only through bounded queues carrying these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Frame", "EndOfStream", "FrameResult", "ImageShape", "release_image", "drop_pixels"]


@dataclass(slots=True)
class Frame:
    """One decoded frame. ``image`` is BGR uint8 HxWx3 owned by this frame (readers never reuse it), or a
    :class:`daemon.gpu.nvdec.DeviceImage` (NV12 in device memory) that must be released once used."""

    source_id: str
    index: int
    pts_ms: float | None
    image: np.ndarray
    t_captured: float  # wall clock (time.time()) for messages
    mono_captured: float  # monotonic seconds, for latency measurements


@dataclass(slots=True, frozen=True)
class EndOfStream:
    """A source has ended: no frame of it follows. ``reason``: end_of_file, error, max_frames, shutdown."""

    source_id: str
    reason: str
    detail: str | None = None


@dataclass(slots=True)
class FrameResult:
    """A frame's decoded results and the wall-clock time of each stage, ready to publish."""

    frame: Frame
    results: dict[str, Any]
    t_preprocessed: float
    t_inferred: float
    batch_size: int
    backend: str = ""
    artifact: str | None = None  # cache key of the engine that produced it; None for an uncached model


def release_image(frame: Frame) -> None:
    """Give a device image back to its pool (a no-op for host images)."""
    release = getattr(frame.image, "release", None)
    if release is not None:
        release()


@dataclass(slots=True, frozen=True)
class ImageShape:
    """What is left of a frame's image once its pixels are no longer needed: the shape the message
    reports. A result can wait in the publisher's queue; without this it would keep a whole decoded
    frame alive (6 MB at 1080p, times the queue's length under overload)."""

    shape: tuple[int, ...]
    is_device: bool = False


def drop_pixels(frame: Frame) -> None:
    """Release the frame's image and keep only its shape (for publishers that send no thumbnails)."""
    release_image(frame)
    if not isinstance(frame.image, ImageShape):
        frame.image = ImageShape(tuple(frame.image.shape))
