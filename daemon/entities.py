"""Records passed between stages. Stages talk only through bounded queues carrying these."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Frame", "EndOfStream", "FrameResult", "ImageShape", "PooledImage", "DeviceFrame", "release_image", "drop_pixels"]


class PooledImage(abc.ABC):
    """An image whose memory belongs to a pool (pinned host buffers, device buffers): ``release()`` gives
    it back once its batch completed or the queue dropped it. :class:`daemon.pinned.PinnedImage`
    registers as one; :class:`DeviceFrame` is one."""

    @abc.abstractmethod
    def release(self) -> None: ...


class DeviceFrame(PooledImage):
    """A decoded frame in device memory, NV12: the luma plane at ``y_ptr`` (``height`` rows of ``pitch``
    bytes) and the interleaved chroma plane at ``uv_ptr``. ``shape`` is (height, width, 3), the frame's
    size as pipelines see it. Only a backend with ``capabilities.device_frames`` takes it. ``ready``: an
    event (:class:`daemon.cuda.Event`) recorded after the frame was written on its producer's stream,
    which a consumer's stream waits for before reading it; None when it was written already."""

    width: int
    height: int
    pitch: int
    shape: tuple[int, int, int]
    ready: Any = None

    @property
    @abc.abstractmethod
    def y_ptr(self) -> int: ...

    @property
    @abc.abstractmethod
    def uv_ptr(self) -> int: ...


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
    inferred: bool = True  # False: the model skipped this frame (sources[].infer_every); the tracker predicted it


def release_image(frame: Frame) -> None:
    """Give a pooled image back to its pool (a no-op for other images)."""
    if isinstance(frame.image, PooledImage):
        frame.image.release()


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
        frame.image = ImageShape(tuple(frame.image.shape), isinstance(frame.image, DeviceFrame))
