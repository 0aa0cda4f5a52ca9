"""The child of :mod:`daemon.cpudecodeproc` (``python -m daemon.cpudecodechild``): an OpenCV decoding process
that serves up to ``CAMERAS_PER_PROCESS`` cameras, each on a thread of its own, opened exactly as the
daemon opens them (:func:`daemon.capture.open_producer`: the same FFmpeg options, timeouts and decoder
threads), each frame converted to BGR straight into a slot of the camera's shared memory
(``VideoCapture.retrieve(slot)`` writes into the given array: no copy). :mod:`daemon.decodechild` holds the
wire format and the camera loop every decoding process shares.

A camera's shared memory is the ``memfd`` of its slot bytes: when the first frame's size is known the
daemon grows that file and answers ``{"pool": {"offset": N}}``; the frames are ``slots`` BGR images from
byte ``N`` on.
"""

from __future__ import annotations

import json
import mmap
import socket
import sys
from typing import Any

import numpy as np

from .childproc import EXIT_FINAL, EXIT_RETRYABLE, child_stdio
from .decodechild import CAMERAS_PER_PROCESS, CameraFailure, SlotHandover, serve_camera, serve_cameras

__all__ = ["CAMERAS_PER_PROCESS", "main"]


class _Handover(SlotHandover):
    """One camera's side: its frame slots in the shared memory the daemon made for them."""

    def __init__(self, settings: dict[str, Any], records: int, commands: int, flags_fd: int):
        super().__init__(settings, records, commands, flags_fd)
        self._frames: np.ndarray | None = None  # slots x height x width x 3
        self._map: mmap.mmap | None = None

    def frame(self, producer: Any) -> None:
        """The frame ``producer`` grabbed, converted into a free slot (the first one also makes the pool)."""
        if self._frames is None:
            image, _ = producer.retrieve()  # OpenCV's own memory, once: its size makes the pool
            if image is None:
                raise CameraFailure("OpenCV grabbed a frame it could not convert", EXIT_RETRYABLE)
            height, width = image.shape[:2]
            self._open_pool(width, height)
            slot = self.free_slot()
            self._frames[slot][...] = image
        else:
            slot = self.free_slot()
            if not producer.retrieve_into(self._frames[slot]):
                width, height = producer.width, producer.height
                raise CameraFailure(f"the stream changed its frame size from {self._size[0]}x{self._size[1]} to {width}x{height} "
                                    "(or OpenCV converted no picture)", EXIT_RETRYABLE)
        self.announce(slot, *self._size)

    def close(self) -> None:
        self._frames = None
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a view of a frame is still alive somewhere: the mapping goes with it
                pass
        super().close()

    def _open_pool(self, width: int, height: int) -> None:
        message = self.ask_for_pool(width, height)
        try:
            offset = int(message["pool"]["offset"])
            self._map = mmap.mmap(self._flags_fd, self._slots * width * height * 3, offset=offset)
        except (KeyError, TypeError, ValueError, OSError) as exc:
            raise CameraFailure(f"the daemon's frame pool cannot be mapped ({exc})", EXIT_RETRYABLE) from None
        self._frames = np.frombuffer(self._map, np.uint8).reshape(self._slots, height, width, 3)


def _decode(settings: dict[str, Any], handover: _Handover) -> None:
    """Open the camera as the daemon would, then grab, convert and hand over until it ends; a file waits at
    its end for the daemon's rewind."""
    from .capture import open_producer
    from .config import SourceConfig
    from .errors import SourceError

    source = SourceConfig.model_validate(settings["source"])
    try:
        producer = open_producer(source)
    except SourceError as exc:
        raise CameraFailure(str(exc), EXIT_RETRYABLE if exc.retryable else EXIT_FINAL) from None
    try:
        handover.header(producer.fps, producer.width, producer.height)
        while True:
            if producer.grab():
                handover.frame(producer)
                continue
            if settings["stream"]:
                raise CameraFailure("the stream stopped delivering frames", EXIT_RETRYABLE)
            if not handover.end():
                return
            if not producer.rewind():
                raise CameraFailure("OpenCV cannot rewind it", EXIT_RETRYABLE)
    finally:
        producer.close()


def main() -> int:
    """``python -m daemon.cpudecodechild``: its settings as one JSON line on stdin (the control socket's
    descriptor), then cameras over that socket until it closes."""
    child_stdio()
    settings = json.loads(sys.stdin.readline())
    control = socket.socket(fileno=int(settings["control_fd"]))
    return serve_cameras(control, lambda camera, fds: serve_camera(camera, fds, _Handover, _decode))


if __name__ == "__main__":
    sys.exit(main())
